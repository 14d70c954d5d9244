//! Validation rules shared by the spec and the agent's configs.

/// Names and tags: `[A-Za-z0-9_-]+`, as commonware-deployer 2026.10.0 requires.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
