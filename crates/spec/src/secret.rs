//! Values that must never reach a log, an error message or a terminal by accident.

use serde::{Deserialize, Serialize};

/// A secret string (a private key in PEM, a token). `Debug` and `Display` print `<redacted>`;
/// the value is reachable only through [`Secret::expose`], which names the intent at the call.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Call only where it is used (TLS setup, a 0600 file).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let secret = Secret::new("-----BEGIN PRIVATE KEY-----abc");
        assert!(!format!("{secret:?}").contains("abc"));
        assert!(!format!("{secret}").contains("abc"));
        assert_eq!(secret.expose(), "-----BEGIN PRIVATE KEY-----abc");
    }
}
