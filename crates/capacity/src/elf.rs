//! The architecture of a binary, from its ELF header: a Graviton type for an x86-64 binary is
//! refused before anything is launched.

use crate::catalog::Architecture;

/// Bytes of a file that [`binary_architecture`] needs.
pub const HEADER_BYTES: usize = 20;

/// What a binary runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    /// A Linux ELF executable for this architecture.
    Elf(Architecture),
    /// An ELF file for an architecture EC2 has no Linux instances for (its `e_machine`).
    OtherElf(u16),
    /// A script (`#!`): it runs wherever its interpreter does.
    Script,
    /// Neither: nothing can be said.
    Unknown,
}

/// The kind of a binary whose first bytes are `header` (at least [`HEADER_BYTES`] of them for
/// an ELF file).
pub fn binary_architecture(header: &[u8]) -> BinaryKind {
    if header.starts_with(b"#!") {
        return BinaryKind::Script;
    }
    if header.len() < HEADER_BYTES || !header.starts_with(b"\x7fELF") {
        return BinaryKind::Unknown;
    }
    // e_machine: two bytes at offset 18, in the byte order EI_DATA (offset 5) gives.
    let bytes = [header[18], header[19]];
    let machine = match header[5] {
        1 => u16::from_le_bytes(bytes),
        2 => u16::from_be_bytes(bytes),
        _ => return BinaryKind::Unknown,
    };
    match machine {
        0x3e => BinaryKind::Elf(Architecture::X86_64),
        0xb7 => BinaryKind::Elf(Architecture::Arm64),
        0x03 => BinaryKind::Elf(Architecture::I386),
        other => BinaryKind::OtherElf(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16) -> Vec<u8> {
        let mut header = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        header.resize(18, 0);
        header.extend_from_slice(&machine.to_le_bytes());
        header
    }

    #[test]
    fn elf_headers_name_their_architecture() {
        assert_eq!(binary_architecture(&elf(0x3e)), BinaryKind::Elf(Architecture::X86_64));
        assert_eq!(binary_architecture(&elf(0xb7)), BinaryKind::Elf(Architecture::Arm64));
        assert_eq!(binary_architecture(&elf(0xf3)), BinaryKind::OtherElf(0xf3));
        assert_eq!(binary_architecture(b"#!/bin/sh\nexec foo\n"), BinaryKind::Script);
        assert_eq!(binary_architecture(b"\x7fEL"), BinaryKind::Unknown);
        assert_eq!(binary_architecture(b"just text, not a program"), BinaryKind::Unknown);
    }

    #[test]
    fn this_test_binary_is_read_as_what_it_is() {
        let path = std::env::current_exe().expect("a test knows its executable");
        let bytes = fs_err::read(path).expect("the test binary is readable");
        let expected = match std::env::consts::ARCH {
            "x86_64" => Architecture::X86_64,
            "aarch64" => Architecture::Arm64,
            other => panic!("untested architecture {other}"),
        };
        assert_eq!(binary_architecture(&bytes[..HEADER_BYTES]), BinaryKind::Elf(expected));
    }
}
