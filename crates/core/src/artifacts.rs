//! What the machines receive: file digests and the deployer's `hosts.yaml`.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::provider::LocalArtifact;

/// Hashes a file (SHA-256, streamed) into a [`LocalArtifact`].
pub fn hash_file(path: &Path) -> std::io::Result<LocalArtifact> {
    let mut file = fs_err::File::open(path)?;
    let (sha256, size) = copy_hashing(&mut file, &mut std::io::sink())?;
    Ok(LocalArtifact { path: path.to_path_buf(), sha256, size })
}

/// Copies `input` to `output` and returns the SHA-256 (hex) and size of what was copied.
pub fn copy_hashing(
    input: &mut impl Read,
    output: &mut impl std::io::Write,
) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = input.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        size += read as u64;
        hasher.update(&buffer[..read]);
        output.write_all(&buffer[..read])?;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// The SHA-256 (hex) of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One entry of `hosts:` in hosts.yaml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEntry {
    pub name: String,
    pub region: String,
    pub ip: IpAddr,
}

/// Renders hosts.yaml in the deployer's format, byte for byte as its serde_yaml output:
///
/// ```yaml
/// monitoring:
///   public: 3.91.10.20
///   private: 10.1.0.37
/// hosts:
/// - name: worker-0
///   region: us-east-1
///   ip: 54.80.1.2
/// ```
///
/// `hosts` is in spec order (the deployer's order is a hash map's; a stable order is
/// compatible and makes the file's digest, and so the version, reproducible).
pub fn render_hosts_yaml(
    monitoring_public: IpAddr,
    monitoring_private: IpAddr,
    hosts: &[HostEntry],
) -> String {
    let mut out =
        format!("monitoring:\n  public: {monitoring_public}\n  private: {monitoring_private}\n");
    if hosts.is_empty() {
        out.push_str("hosts: []\n");
        return out;
    }
    out.push_str("hosts:\n");
    for host in hosts {
        out.push_str(&format!(
            "- name: {}\n  region: {}\n  ip: {}\n",
            yaml_string(&host.name),
            yaml_string(&host.region),
            host.ip
        ));
    }
    out
}

/// A YAML plain scalar when it reads back as the same string, else single-quoted.
fn yaml_string(value: &str) -> String {
    if needs_quotes(value) { format!("'{}'", value.replace('\'', "''")) } else { value.to_owned() }
}

fn needs_quotes(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    let lower = value.to_ascii_lowercase();
    // Words YAML 1.1 or 1.2 readers resolve to booleans or null.
    const SPECIAL: &[&str] = &[
        "null", "~", "true", "false", "yes", "no", "y", "n", "on", "off", ".inf", "-.inf", "+.inf",
        ".nan",
    ];
    if SPECIAL.contains(&lower.as_str()) {
        return true;
    }
    // Anything a reader could take for a number.
    let looks_numeric = {
        let digits = lower.trim_start_matches(['+', '-']);
        digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
            && digits.chars().all(|c| {
                c.is_ascii_hexdigit() || matches!(c, '.' | '_' | 'x' | 'o' | 'e' | '+' | '-' | ':')
            })
    };
    if looks_numeric {
        return true;
    }
    let first = value.chars().next().expect("checked non-empty");
    !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        || matches!(first, '-' | '.' | '/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_yaml_has_the_deployer_shape() {
        let hosts = [
            HostEntry {
                name: "worker-0".into(),
                region: "us-east-1".into(),
                ip: "54.80.1.2".parse().unwrap(),
            },
            HostEntry {
                name: "123".into(),
                region: "eu-west-1".into(),
                ip: "54.80.1.3".parse().unwrap(),
            },
        ];
        let yaml =
            render_hosts_yaml("3.91.10.20".parse().unwrap(), "10.1.0.37".parse().unwrap(), &hosts);
        assert_eq!(
            yaml,
            "monitoring:\n  public: 3.91.10.20\n  private: 10.1.0.37\nhosts:\n\
             - name: worker-0\n  region: us-east-1\n  ip: 54.80.1.2\n\
             - name: '123'\n  region: eu-west-1\n  ip: 54.80.1.3\n"
        );
    }

    #[test]
    fn ambiguous_names_are_quoted_and_plain_ones_are_not() {
        for quoted in ["123", "true", "no", "1e5", "0x1f", "null", "-x", "1_000"] {
            assert!(needs_quotes(quoted), "{quoted}");
        }
        for plain in ["node-0", "abc", "a1b2", "fffff-x"] {
            assert!(!needs_quotes(plain), "{plain}");
        }
    }

    #[test]
    fn hashes_files() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("f");
        fs_err::write(&path, b"abc").unwrap();
        let artifact = hash_file(&path).unwrap();
        assert_eq!(artifact.size, 3);
        assert_eq!(
            artifact.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
