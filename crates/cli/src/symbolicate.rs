//! Names for a profile's frames in the machine's binary, from a local build of it that keeps
//! its symbols (`flotilla profile --binary PATH`): a deployed binary is often stripped, and
//! `perf script` on the machine then writes its frames as `[unknown]`.
//!
//! `perf script` writes each frame of a user-space object as `<offset> <symbol> (<object>)`,
//! the offset being into the object's file (not the address the code runs at, nor the ELF
//! virtual address when the two differ). The machine's binary is the object the agent runs
//! from its versions directory, a file named `binary` (`flotilla_agent`'s layout). For each of
//! its frames, the offset is turned into the local build's virtual address through the build's
//! loadable segments (stripping keeps them, so a stripped copy and its unstripped original agree)
//! and named by the build's symbol table: the function that contains it, demangled, with the
//! offset into it (`fleet_app::gossip::round+0x4c`), as perf names frames it resolves itself.
//! Every other line is kept as it is, so the file stays what the Firefox Profiler loads.

use std::path::Path;

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// The file name the agent gives the binary it runs.
pub const MACHINE_BINARY_FILE: &str = "binary";

/// A local build's loadable segments and function symbols.
#[derive(Debug)]
pub struct Symbols {
    /// `(file offset, file size, virtual address)` of each loadable segment.
    segments: Vec<(u64, u64, u64)>,
    /// `(address, size, demangled name)` of each function, by address.
    functions: Vec<(u64, u64, String)>,
}

/// How many of the binary's frames a profile had, and how many got a name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Named {
    pub frames: usize,
    pub named: usize,
}

impl Symbols {
    /// Reads the segments and function symbols of the ELF file at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Symbols> {
        let data = fs_err::read(path)?;
        let file = object::File::parse(&*data).map_err(|e| {
            anyhow::anyhow!("{} is not an ELF binary this profile can use: {e}", path.display())
        })?;
        let segments = file
            .segments()
            .filter_map(|segment| {
                let (offset, size) = segment.file_range();
                (size > 0).then_some((offset, size, segment.address()))
            })
            .collect();
        let mut functions: Vec<(u64, u64, String)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.address() != 0)
            .filter_map(|symbol| {
                let name = symbol.name().ok()?;
                Some((symbol.address(), symbol.size(), demangle(name)))
            })
            .collect();
        functions.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        functions.dedup_by_key(|f| f.0);
        if functions.is_empty() {
            anyhow::bail!(
                "{} has no function symbols (it is stripped): give the build before stripping",
                path.display()
            );
        }
        Ok(Symbols { segments, functions })
    }

    /// The function containing file offset `offset`, and the offset into it.
    pub fn name_at(&self, offset: u64) -> Option<(&str, u64)> {
        let address = self.segments.iter().find_map(|&(start, size, address)| {
            (start..start + size).contains(&offset).then(|| address + (offset - start))
        })?;
        let index = self.functions.partition_point(|f| f.0 <= address).checked_sub(1)?;
        let (start, size, name) = &self.functions[index];
        // A symbol without a size (hand-written assembly) covers up to the next one.
        let end = match size {
            0 => self.functions.get(index + 1).map_or(u64::MAX, |next| next.0),
            size => start + size,
        };
        (address < end).then(|| (name.as_str(), address - start))
    }
}

/// `text` (perf script output) with the frames in the machine's binary named by `symbols`.
pub fn symbolicate(text: &str, symbols: &Symbols) -> (String, Named) {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut named = Named::default();
    for line in text.split_inclusive('\n') {
        match binary_frame(line) {
            Some(frame) => {
                named.frames += 1;
                match u64::from_str_radix(frame.offset, 16).ok().and_then(|o| symbols.name_at(o)) {
                    Some((name, into)) => {
                        named.named += 1;
                        out.push_str(frame.before_symbol);
                        out.push_str(&format!("{name}+0x{into:x} ({})", frame.object));
                        out.push_str(frame.line_end);
                    }
                    None => out.push_str(line),
                }
            }
            None => out.push_str(line),
        }
    }
    (out, named)
}

/// A frame line split into its parts: `<indent><offset> <symbol> (<object>)<newline>`.
struct Frame<'a> {
    /// The indent, the offset and the space after it.
    before_symbol: &'a str,
    offset: &'a str,
    object: &'a str,
    line_end: &'a str,
}

/// The line as a frame in the machine's binary, or `None` for any other line.
fn binary_frame(line: &str) -> Option<Frame<'_>> {
    if !line.starts_with(char::is_whitespace) {
        return None;
    }
    let body = line.trim_end_matches(['\n', '\r']);
    let line_end = &line[body.len()..];
    let indent = body.len() - body.trim_start().len();
    let rest = &body[indent..];
    let (offset, after) = rest.split_once(' ')?;
    if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let object = after.strip_suffix(')')?.rsplit_once(" (")?.1;
    let file_name = Path::new(object).file_name()?;
    if file_name != MACHINE_BINARY_FILE {
        return None;
    }
    let before_symbol = &body[..indent + offset.len() + 1];
    Some(Frame { before_symbol, offset, object, line_end })
}

/// A Rust symbol demangled without its hash; any other name as it is.
fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(demangled) => format!("{demangled:#}"),
        Err(_) => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols() -> Symbols {
        Symbols {
            segments: vec![(0, 0x1000, 0), (0x12db0, 0x3d650, 0x13db0)],
            functions: vec![
                (0x13f40, 0x80, "spin::work".to_owned()),
                (0x14000, 0, "asm_helper".to_owned()),
                (0x14100, 0x10, "spin::main".to_owned()),
            ],
        }
    }

    #[test]
    fn file_offsets_are_named_through_the_segment_that_holds_them() {
        let symbols = symbols();
        // 0x12f98 in the file is 0x13f98 in memory: 0x58 into `work`.
        assert_eq!(symbols.name_at(0x12f98), Some(("spin::work", 0x58)));
        assert_eq!(symbols.name_at(0x12f40), Some(("spin::work", 0)));
        // Past `work`'s end and before the next symbol: no name rather than a wrong one.
        assert_eq!(symbols.name_at(0x12fc0), None);
        // A symbol without a size reaches the next one.
        assert_eq!(symbols.name_at(0x13050), Some(("asm_helper", 0x50)));
        // An offset outside every segment.
        assert_eq!(symbols.name_at(0x900000), None);
    }

    #[test]
    fn only_the_binarys_frames_are_rewritten() {
        let text = "rbin 24375 45113.182208:   10101010 cpu-clock:ppp: \n\t           12f98 [unknown] (/var/lib/flotilla/agent/versions/3/binary)\n\t           26000 __libc_start_main+0x80 (/usr/lib/x86_64-linux-gnu/libc.so.6)\n\t          900000 [unknown] (/var/lib/flotilla/agent/versions/3/binary)\n\n";
        let (out, named) = symbolicate(text, &symbols());
        assert_eq!(named, Named { frames: 2, named: 1 });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "rbin 24375 45113.182208:   10101010 cpu-clock:ppp: ");
        assert_eq!(
            lines[1],
            "\t           12f98 spin::work+0x58 (/var/lib/flotilla/agent/versions/3/binary)"
        );
        assert_eq!(
            lines[2],
            "\t           26000 __libc_start_main+0x80 (/usr/lib/x86_64-linux-gnu/libc.so.6)"
        );
        assert_eq!(
            lines[3],
            "\t          900000 [unknown] (/var/lib/flotilla/agent/versions/3/binary)"
        );
        assert!(out.ends_with("\n\n"), "blank lines between samples stay");
    }

    #[test]
    fn a_stripped_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-elf");
        fs_err::write(&path, b"#!/bin/sh\n").unwrap();
        let error = Symbols::read(&path).unwrap_err().to_string();
        assert!(error.contains("is not an ELF binary"), "{error}");
    }
}
