//! Validation rules shared by the spec and the agent's configs.

use crate::names::MAX_TAG_BYTES;

/// Names and tags: `[A-Za-z0-9_-]+`, as commonware-deployer 2026.10.0 requires.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A deployment tag: a valid name of at most [`MAX_TAG_BYTES`] bytes (it names a directory).
pub fn is_valid_tag(tag: &str) -> bool {
    is_valid_name(tag) && tag.len() <= MAX_TAG_BYTES
}
