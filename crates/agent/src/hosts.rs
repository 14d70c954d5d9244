//! hosts.yaml, apart from the versions: one file in the instance directory that every version
//! reads (`--hosts=<dir>/hosts.yaml`), so that a membership change reaches a running binary
//! without a new version.
//!
//! A change is staged, then swapped:
//! 1. [`stage`]: the manifest's hosts artifact is downloaded to `hosts.yaml.partial` and
//!    verified (size, SHA-256). A failure leaves the current file as it was.
//! 2. [`swap`]: the current file is hard-linked as `hosts.previous.yaml`, then the staged one is
//!    renamed over `hosts.yaml`. The rename is atomic, so a binary that rereads the file finds
//!    either the old membership or the new one, never a missing or half-written file.
//! 3. [`restore_previous`]: when what followed the swap failed (the binary did not become
//!    healthy with it), `hosts.previous.yaml` is renamed back, atomically too.
//!
//! The installed membership is the digest of `hosts.yaml` itself ([`digest`]), so an agent that
//! restarts knows it without a state file of its own.

use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;

use flotilla_spec::manifest::Artifact;
use flotilla_spec::tree::{Node, NodeValue};
use sha2::{Digest, Sha256};

use crate::artifacts::{DOWNLOAD_TIMEOUT, verify_artifact};
use crate::fetch::Fetchers;
use crate::instance_dir::{InstanceDir, PRIVATE_FILE_MODE};

/// Downloads and verifies `artifact` into `hosts.yaml.partial`; the current file is untouched.
pub(crate) async fn stage(
    fetchers: &Fetchers,
    dir: &InstanceDir,
    artifact: &Artifact,
) -> Result<(), String> {
    let partial = dir.partial_hosts();
    let fetch = fetchers.fetch_to_file(&artifact.url, &partial);
    match tokio::time::timeout(DOWNLOAD_TIMEOUT, fetch).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(format!("could not download the hosts.yaml: {error}")),
        Err(_) => {
            return Err(format!(
                "could not download the hosts.yaml from {} within {}",
                artifact.url,
                humantime::format_duration(DOWNLOAD_TIMEOUT)
            ));
        }
    }
    fs_err::tokio::set_permissions(&partial, std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))
        .await
        .map_err(|e| e.to_string())?;
    if let Err(error) = verify_artifact(partial.clone(), artifact.clone(), "hosts.yaml").await {
        discard_staged(dir);
        return Err(error);
    }
    Ok(())
}

/// Puts the staged file in place, keeping the current one as the previous.
pub(crate) fn swap(dir: &InstanceDir) -> std::io::Result<()> {
    let (current, previous) = (dir.hosts(), dir.previous_hosts());
    remove_if_present(&previous)?;
    match fs_err::hard_link(&current, &previous) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    fs_err::rename(dir.partial_hosts(), &current)?;
    sync_dir(dir);
    Ok(())
}

/// Puts the previous file back (or removes the current one when there was none before).
pub(crate) fn restore_previous(dir: &InstanceDir) -> std::io::Result<()> {
    let (current, previous) = (dir.hosts(), dir.previous_hosts());
    if fs_err::metadata(&previous).is_ok() {
        fs_err::rename(&previous, &current)?;
    } else {
        remove_if_present(&current)?;
    }
    sync_dir(dir);
    Ok(())
}

/// Removes a staged file that will not be used.
pub(crate) fn discard_staged(dir: &InstanceDir) {
    if let Err(error) = remove_if_present(&dir.partial_hosts()) {
        tracing::warn!("could not remove a staged hosts.yaml: {error}");
    }
}

/// The SHA-256 (hex) of the current hosts.yaml, or `None` when there is none (or it cannot be
/// read, which the next change mends).
pub(crate) fn digest(dir: &InstanceDir) -> Option<String> {
    let mut file = fs_err::File::open(dir.hosts()).ok()?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = file.read(&mut buffer).ok()?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Some(hex::encode(hasher.finalize()))
}

/// This machine's own address in the hosts.yaml in place: the `ip` of the entry of `name`
/// under `hosts:`, or `None` when the file, the entry or its address is missing (the monitoring
/// machine has no entry; a machine before its first hosts.yaml has no file).
///
/// `FLOTILLA_IP` is defined as this address, and it is read each time the binary starts rather
/// than taken from the identity the agent loaded: a machine stopped and started (a capture's
/// `--stop`) comes back at a new public address, which reaches the agent as a hosts-only change
/// before its binary starts again, while the agent's identity, loaded at its own start, keeps
/// the old one.
pub(crate) fn own_address(dir: &InstanceDir, name: &str) -> Option<IpAddr> {
    let text = fs_err::read_to_string(dir.hosts()).ok()?;
    let document = flotilla_spec::yaml::parse_single_document(&text).ok()?;
    let NodeValue::Sequence(hosts) = &field(&document, "hosts")?.value else { return None };
    let own = hosts.iter().find(|host| field(host, "name").and_then(scalar_text) == Some(name))?;
    scalar_text(field(own, "ip")?)?.parse().ok()
}

/// The value of `key` in a mapping node.
fn field<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    let NodeValue::Mapping(entries) = &node.value else { return None };
    entries.iter().find(|entry| scalar_text(&entry.key) == Some(key)).map(|entry| &entry.value)
}

fn scalar_text(node: &Node) -> Option<&str> {
    node.as_scalar().map(|scalar| scalar.text.as_str())
}

fn remove_if_present(path: &std::path::Path) -> std::io::Result<()> {
    match fs_err::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Makes the renames durable; a failure only costs durability, so it is logged.
fn sync_dir(dir: &InstanceDir) {
    if let Err(error) = fs_err::File::open(dir.root()).and_then(|d| d.sync_all()) {
        tracing::debug!("could not sync the instance directory: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &std::path::Path, text: &str) {
        fs_err::write(path, text).expect("writing a test file");
    }

    #[test]
    fn own_address_is_the_entry_of_this_name_in_the_file_in_place() {
        let temp = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(temp.path().to_path_buf());
        assert_eq!(own_address(&dir, "node-0"), None, "no file yet");
        write(
            &dir.hosts(),
            "monitoring:\n  public: 10.0.0.9\n  private: 10.1.0.9\nhosts:\n- name: node-1\n  region: us-east-1\n  ip: 10.0.0.2\n- name: 'yes'\n  region: us-east-1\n  ip: 10.0.0.3\n- name: node-0\n  region: eu-west-1\n  ip: 10.0.0.1\n",
        );
        assert_eq!(own_address(&dir, "node-0"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(own_address(&dir, "yes"), Some("10.0.0.3".parse().unwrap()), "quoted name");
        assert_eq!(own_address(&dir, "monitoring"), None, "the monitoring machine has no entry");
        assert_eq!(own_address(&dir, "node-2"), None);
        write(&dir.hosts(), "monitoring:\n  public: 10.0.0.9\n  private: 10.1.0.9\nhosts: []\n");
        assert_eq!(own_address(&dir, "node-0"), None);
        write(&dir.hosts(), "hosts:\n- name: node-0\n  ip: [\n");
        assert_eq!(own_address(&dir, "node-0"), None, "a broken file gives nothing");
    }

    #[test]
    fn a_swap_keeps_the_old_file_to_restore_and_digest_follows_the_content() {
        let temp = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(temp.path().to_path_buf());
        assert_eq!(digest(&dir), None);

        write(&dir.partial_hosts(), "hosts: [a]\n");
        swap(&dir).unwrap();
        let first = digest(&dir).unwrap();
        assert_eq!(first, hex::encode(Sha256::digest(b"hosts: [a]\n")));
        assert!(fs_err::metadata(dir.partial_hosts()).is_err(), "the staged file moved in");

        write(&dir.partial_hosts(), "hosts: [a, b]\n");
        swap(&dir).unwrap();
        assert_eq!(fs_err::read_to_string(dir.hosts()).unwrap(), "hosts: [a, b]\n");
        assert_eq!(fs_err::read_to_string(dir.previous_hosts()).unwrap(), "hosts: [a]\n");

        restore_previous(&dir).unwrap();
        assert_eq!(digest(&dir).unwrap(), first);
        assert!(fs_err::metadata(dir.previous_hosts()).is_err());
    }

    #[test]
    fn restoring_the_first_file_leaves_none() {
        let temp = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(temp.path().to_path_buf());
        write(&dir.partial_hosts(), "hosts: []\n");
        swap(&dir).unwrap();
        restore_previous(&dir).unwrap();
        assert_eq!(digest(&dir), None);
    }

    #[test]
    fn a_reader_always_finds_a_whole_file_while_swaps_go_on() {
        let temp = tempfile::tempdir().unwrap();
        let dir = InstanceDir::new(temp.path().to_path_buf());
        let (old, new) = ("a".repeat(4096), "b".repeat(8192));
        write(&dir.partial_hosts(), &old);
        swap(&dir).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop, old, new) = (dir.hosts(), stop.clone(), old.clone(), new.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = fs_err::read_to_string(&path).expect("the file is always there");
                    assert!(text == old || text == new, "a torn read of {} bytes", text.len());
                    reads += 1;
                }
                reads
            })
        };
        for round in 0..200 {
            write(&dir.partial_hosts(), if round % 2 == 0 { &new } else { &old });
            swap(&dir).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }
}
