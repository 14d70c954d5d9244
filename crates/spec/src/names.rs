//! Names flotilla derives from a deployment's tag and its machines' names.
//!
//! The commonware deployer accepts any `[A-Za-z0-9_-]+` as a tag or a machine name, of any
//! length: its users name machines by 64-hex-digit public keys, and leading or trailing dashes
//! and underscores are legal. Each place flotilla puts such a value has its own rules (a DNS
//! label: lower-case letters, digits and inner hyphens, 63 bytes; an IAM role: 64 characters;
//! a security group: 255; a file name: 255 bytes; an EC2 tag value: 256), so every name is made
//! here, by one rule per place:
//!
//! - a value that is already valid there is used as it is, so common names stay readable
//!   (`node-3.my-fleet.flotilla`, role `flotilla-my-fleet`);
//! - any other value becomes a readable prefix, a separator that no verbatim value can contain,
//!   and 16 hex digits of the value's SHA-256 (`validator--5f0c9a2e4b1d7e3a`). Because a
//!   verbatim name never contains the separator, two different values never share a derived
//!   name (up to a 64-bit hash collision).
//!
//! The only limit that stays is the one the deployer itself has: a tag names a directory
//! (`~/.flotilla/deployments/<tag>`, the deployer's `~/.commonware_deployer/<tag>`), so it is
//! at most [`MAX_TAG_BYTES`] bytes.
//!
//! Everything here is pure: the same value always gives the same name, on every machine and in
//! every version, because resources found again by name (roles, security groups, directories)
//! depend on it.

use sha2::{Digest, Sha256};

/// The longest tag: a tag is a directory name, and Linux file names are at most 255 bytes.
pub const MAX_TAG_BYTES: usize = 255;

/// The suffix of every agent's DNS name: `<name label>.<tag label>.flotilla`.
pub const AGENT_DNS_SUFFIX: &str = "flotilla";

/// Hex digits of the hash in a derived name: 64 bits.
const HASH_HEX_DIGITS: usize = 16;
/// The longest DNS label (RFC 1035).
const MAX_DNS_LABEL: usize = 63;
/// Characters kept from the value in a hashed DNS label.
const DNS_PREFIX_CHARS: usize = 40;
/// The longest IAM role or instance profile name.
const MAX_IAM_NAME: usize = 64;
/// The longest EC2 security group name.
const MAX_SECURITY_GROUP_NAME: usize = 255;
/// The longest EC2 tag value.
const MAX_TAG_VALUE: usize = 256;
/// The longest machine name kept verbatim as a directory name; longer ones are hashed so that
/// the directory and the files made beside it stay within the 255-byte file name limit.
const MAX_VERBATIM_FILE_NAME: usize = 128;

/// The first [`HASH_HEX_DIGITS`] hex digits of the SHA-256 of `value`.
fn short_hash(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    let mut text = hex::encode(digest);
    text.truncate(HASH_HEX_DIGITS);
    text
}

/// Whether `label` is a DNS label that flotilla uses as it is: 1 to 63 lower-case letters,
/// digits and hyphens, starting and ending with a letter or digit, without `--` (the separator
/// of hashed labels; also what IDNA's `xn--` labels have).
fn is_verbatim_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_DNS_LABEL
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
        && bytes.iter().all(|b| alphanumeric(b) || *b == b'-')
        && !label.contains("--")
}

/// A DNS label for a tag or machine name.
///
/// The value in lower case when that is a label as [`is_verbatim_dns_label`] describes (names
/// are unique ignoring case within a deployment, so lower-casing keeps them apart); otherwise
/// `<prefix>--<hash>`, the prefix being the value in lower case with `_` as `-`, runs of `-`
/// merged and outer ones trimmed, at most 40 characters (`x` when nothing is left).
pub fn dns_label(value: &str) -> String {
    let lowered = value.to_ascii_lowercase();
    if is_verbatim_dns_label(&lowered) {
        return lowered;
    }
    let mut prefix = String::with_capacity(DNS_PREFIX_CHARS);
    for c in lowered.chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if c == '-' && (prefix.is_empty() || prefix.ends_with('-')) {
            continue;
        }
        if prefix.len() == DNS_PREFIX_CHARS {
            break;
        }
        prefix.push(c);
    }
    while prefix.ends_with('-') {
        prefix.pop();
    }
    if prefix.is_empty() {
        prefix.push('x');
    }
    format!("{prefix}--{}", short_hash(value))
}

/// The DNS name an agent's certificate carries and the CLI verifies:
/// `<name label>.<tag label>.flotilla`, each label from [`dns_label`].
///
/// The CLI connects to whatever address the provider reports but verifies this name, so a
/// certificate issued to one machine is refused when presented by another.
pub fn agent_dns_name(name: &str, tag: &str) -> String {
    format!("{}.{}.{AGENT_DNS_SUFFIX}", dns_label(name), dns_label(tag))
}

/// The IAM role and instance profile of deployment `tag`: `flotilla-<tag>` when that fits in
/// 64 characters, else `flotilla-<first 38 characters>.<hash>` (a tag has no `.`).
pub fn iam_role_name(tag: &str) -> String {
    let verbatim = format!("flotilla-{tag}");
    if verbatim.len() <= MAX_IAM_NAME {
        return verbatim;
    }
    let room = MAX_IAM_NAME - "flotilla-".len() - 1 - HASH_HEX_DIGITS;
    format!("flotilla-{}.{}", prefix_bytes(tag, room), short_hash(tag))
}

/// The security group of deployment `tag` for machines of `role` (`binary`, `monitoring`):
/// `<tag>-<role>` when that fits in 255 characters, else `<prefix>.<hash>-<role>`.
pub fn security_group_name(tag: &str, role: &str) -> String {
    let verbatim = format!("{tag}-{role}");
    if verbatim.len() <= MAX_SECURITY_GROUP_NAME {
        return verbatim;
    }
    let room = MAX_SECURITY_GROUP_NAME - role.len() - 2 - HASH_HEX_DIGITS;
    format!("{}.{}-{role}", prefix_bytes(tag, room), short_hash(tag))
}

/// A value for an EC2 `Name` tag, which people read in the console: `text` when it fits in
/// 256 characters, else its start, `.` and its hash.
pub fn ec2_name_tag(text: &str) -> String {
    if text.len() <= MAX_TAG_VALUE {
        return text.to_owned();
    }
    let room = MAX_TAG_VALUE - 1 - HASH_HEX_DIGITS;
    format!("{}.{}", prefix_bytes(text, room), short_hash(text))
}

/// The directory name of machine `name`: the name itself when it has at most 128 bytes, else
/// its first 100 bytes, `.` and its hash (a machine name has no `.`).
pub fn machine_file_name(name: &str) -> String {
    if name.len() <= MAX_VERBATIM_FILE_NAME && !name.is_empty() && !name.contains(['/', '.']) {
        return name.to_owned();
    }
    format!("{}.{}", prefix_bytes(name, 100), short_hash(name))
}

/// The longest prefix of `text` of at most `bytes` bytes that ends on a character boundary.
fn prefix_bytes(text: &str, bytes: usize) -> &str {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values the deployer accepts and that broke flotilla's names before they were derived.
    const HOSTILE: &[&str] = &[
        "-rf",
        "demo-",
        "--help",
        "_",
        "-",
        "a--b",
        "xn--abc",
        "Node_A",
        "UPPER",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ];

    fn is_dns_label(label: &str) -> bool {
        let bytes = label.as_bytes();
        let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        (1..=63).contains(&bytes.len())
            && bytes.first().is_some_and(alphanumeric)
            && bytes.last().is_some_and(alphanumeric)
            && bytes.iter().all(|b| alphanumeric(b) || *b == b'-')
    }

    #[test]
    fn common_names_stay_readable() {
        assert_eq!(dns_label("node-3"), "node-3");
        assert_eq!(dns_label("Node-3"), "node-3");
        assert_eq!(agent_dns_name("node-3", "my-fleet"), "node-3.my-fleet.flotilla");
        assert_eq!(iam_role_name("my-fleet"), "flotilla-my-fleet");
        assert_eq!(security_group_name("my-fleet", "binary"), "my-fleet-binary");
        assert_eq!(machine_file_name("node-3"), "node-3");
    }

    #[test]
    fn every_deployer_name_gives_a_valid_dns_label() {
        let long = "a".repeat(300);
        for value in HOSTILE.iter().copied().chain([long.as_str()]) {
            let label = dns_label(value);
            assert!(is_dns_label(&label), "{value:?} → {label:?}");
            let name = agent_dns_name(value, value);
            assert!(name.len() <= 253, "{name}");
            rustls_name_is_valid(&name);
        }
        assert!(dns_label("-rf").starts_with("rf--"), "{}", dns_label("-rf"));
        assert!(dns_label("_").starts_with("x--"), "{}", dns_label("_"));
    }

    /// What rustls accepts as a server name is what the CLI verifies.
    fn rustls_name_is_valid(name: &str) {
        // The spec crate does not depend on rustls; the same rules, spelled out: labels of 1 to
        // 63 letters, digits and hyphens, not starting or ending with a hyphen.
        assert!(name.split('.').all(is_dns_label), "{name}");
    }

    #[test]
    fn different_values_never_share_a_derived_name() {
        let mut values: Vec<String> = HOSTILE.iter().map(|v| (*v).to_owned()).collect();
        // A hashed label written out as a name must not meet the value it was derived from.
        values.push(dns_label("-rf"));
        values.push("rf".to_owned());
        values.push("a-b".to_owned());
        for (i, a) in values.iter().enumerate() {
            for b in &values[i + 1..] {
                if a.eq_ignore_ascii_case(b) {
                    continue;
                }
                assert_ne!(dns_label(a), dns_label(b), "{a:?} and {b:?}");
                assert_ne!(iam_role_name(a), iam_role_name(b), "{a:?} and {b:?}");
                assert_ne!(machine_file_name(a), machine_file_name(b), "{a:?} and {b:?}");
            }
        }
    }

    #[test]
    fn long_tags_get_distinct_bounded_names() {
        // Two tags that agree on their first 64 characters shared one IAM role before.
        let first = format!("{}-one", "t".repeat(70));
        let second = format!("{}-two", "t".repeat(70));
        let (a, b) = (iam_role_name(&first), iam_role_name(&second));
        assert_ne!(a, b);
        assert!(a.len() <= 64 && b.len() <= 64, "{a} {b}");
        assert!(a.contains('.'), "a hashed role name has the separator: {a}");
        let max = "x".repeat(MAX_TAG_BYTES);
        assert!(security_group_name(&max, "monitoring").len() <= 255);
        assert_ne!(security_group_name(&first, "binary"), security_group_name(&second, "binary"));
        assert!(ec2_name_tag(&format!("flotilla-{max}-us-east-1a")).len() <= 256);
        let file = machine_file_name(&"n".repeat(300));
        assert!(file.len() <= 120, "{file}");
    }

    #[test]
    fn derived_names_do_not_change() {
        // Resources are found again by these names: a change would orphan them.
        assert_eq!(dns_label("-rf"), format!("rf--{}", short_hash("-rf")));
        assert_eq!(short_hash("-rf").len(), 16);
        assert_eq!(short_hash(""), "e3b0c44298fc1c14");
    }
}
