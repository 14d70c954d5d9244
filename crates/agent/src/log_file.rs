//! A log file rotated by size, shared by the binary's log (`binary_log`) and the agent's own log
//! (`agent_log`): when a write would take `<path>` past `max_bytes`, `<path>` becomes
//! `<path>.1`, the older files move up one number, and the one past `keep` is removed (with
//! `keep` 0, `<path>` is emptied instead). Every file is 0600.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fs_err::os::unix::fs::OpenOptionsExt;

use crate::instance_dir::PRIVATE_FILE_MODE;

#[derive(Debug)]
pub(crate) struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// `None` after a failed rotation, until a rotation succeeds.
    file: Option<fs_err::File>,
    size: u64,
}

impl RotatingFile {
    /// Opens (appends to) `path`.
    pub(crate) fn open(path: PathBuf, max_bytes: u64, keep: u32) -> io::Result<RotatingFile> {
        let file = open_for_append(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { path, max_bytes, keep, file: Some(file), size })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Rotated files kept.
    pub(crate) fn keep(&self) -> u32 {
        self.keep
    }

    /// Bytes in the current file.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The `n`-th rotated file, `<path>.<n>`.
    pub(crate) fn rotated(&self, n: u32) -> PathBuf {
        let mut path = self.path.as_os_str().to_owned();
        path.push(format!(".{n}"));
        PathBuf::from(path)
    }

    /// Appends `bytes` (whole lines, with their newlines) in one write, after a rotation when
    /// they would take the file past `max_bytes` (a write larger than that goes into a file of
    /// its own).
    pub(crate) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let length = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if self.file.is_none()
            || (self.size > 0 && self.size.saturating_add(length) > self.max_bytes)
        {
            self.rotate()?;
        }
        let file = self.file.as_mut().ok_or_else(|| io::Error::other("no file after rotating"))?;
        file.write_all(bytes)?;
        self.size = self.size.saturating_add(length);
        Ok(())
    }

    /// Moves the files up one number and starts an empty file.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let file = if self.keep == 0 {
            open_truncated(&self.path)?
        } else {
            remove_if_present(&self.rotated(self.keep))?;
            for n in (1..self.keep).rev() {
                rename_if_present(&self.rotated(n), &self.rotated(n + 1))?;
            }
            rename_if_present(&self.path, &self.rotated(1))?;
            open_for_append(&self.path)?
        };
        self.file = Some(file);
        self.size = 0;
        Ok(())
    }
}

fn open_for_append(path: &Path) -> io::Result<fs_err::File> {
    let file =
        fs_err::OpenOptions::new().create(true).append(true).mode(PRIVATE_FILE_MODE).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
    Ok(file)
}

fn open_truncated(path: &Path) -> io::Result<fs_err::File> {
    fs_err::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs_err::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match fs_err::rename(from, to) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_keeps_the_newest_files_and_appends_to_an_existing_one() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("some.log");
        fs_err::write(&path, "old\n").unwrap();
        let mut file = RotatingFile::open(path.clone(), 10, 2).unwrap();
        assert_eq!(file.size(), 4);
        for line in ["aaaa\n", "bbbb\n", "cccc\n", "dddd\n", "a line longer than ten bytes\n"] {
            file.append(line.as_bytes()).unwrap();
        }
        let read = |name: &str| fs_err::read_to_string(temp.path().join(name)).unwrap();
        assert_eq!(read("some.log"), "a line longer than ten bytes\n");
        assert_eq!(read("some.log.1"), "dddd\n");
        assert_eq!(read("some.log.2"), "bbbb\ncccc\n");
        assert!(!temp.path().join("some.log.3").exists());
        for name in ["some.log", "some.log.1", "some.log.2"] {
            let mode = fs_err::metadata(temp.path().join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }

        let mut unkept = RotatingFile::open(temp.path().join("unkept.log"), 10, 0).unwrap();
        for line in ["aaaa\n", "bbbb\n", "cccc\n"] {
            unkept.append(line.as_bytes()).unwrap();
        }
        assert_eq!(read("unkept.log"), "cccc\n");
        assert!(!temp.path().join("unkept.log.1").exists());
    }
}
