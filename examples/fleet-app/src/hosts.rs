//! `hosts.yaml`: the fleet's members, in the commonware deployer's format.
//!
//! ```yaml
//! monitoring:
//!   public: 3.91.10.20
//!   private: 10.1.0.37
//! hosts:
//! - name: node-0
//!   region: us-east-1
//!   ip: 54.80.1.2
//! ```
//!
//! The file is written by the deployer, not by people, so keys this program does not use are
//! ignored (as the deployer's own serde types do) while missing keys, wrong types, bad addresses
//! and repeated names are errors that name their line.

use std::net::IpAddr;

use saphyr::{LoadableYamlNode, MarkedYaml};

use crate::error::FileError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hosts {
    pub monitoring: MonitoringIps,
    pub hosts: Vec<Host>,
}

/// The monitoring instance's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitoringIps {
    pub public: IpAddr,
    pub private: IpAddr,
}

/// One binary instance of the fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub region: String,
    /// The address peers reach it at (public on EC2).
    pub ip: IpAddr,
}

impl Hosts {
    pub fn find(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|host| host.name == name)
    }

    /// The names listed, for messages: `node-0, node-1` or `no hosts`.
    pub fn names_listed(&self) -> String {
        if self.hosts.is_empty() {
            return "no hosts".to_owned();
        }
        let names: Vec<&str> = self.hosts.iter().map(|host| host.name.as_str()).collect();
        names.join(", ")
    }
}

/// Hosts named `names`, the `i`-th at 127.0.0.`i + 1`, for other modules' unit tests.
#[cfg(test)]
pub fn test_hosts(names: &[&str]) -> Vec<Host> {
    names
        .iter()
        .zip(1u8..)
        .map(|(name, last)| Host {
            name: (*name).to_owned(),
            region: "local".to_owned(),
            ip: IpAddr::from([127, 0, 0, last]),
        })
        .collect()
}

/// Parses the text of a `hosts.yaml`.
pub fn parse_hosts(text: &str) -> Result<Hosts, FileError> {
    let documents = MarkedYaml::load_from_str(text).map_err(|error| {
        FileError::at_line(error.marker().line(), format!("not valid YAML: {}", error.info()))
    })?;
    let root = match documents.as_slice() {
        [] => return Err(FileError::whole_file("the file is empty")),
        [root] => root,
        [_, second, ..] => {
            return Err(FileError::at_line(line_of(second), "expected one YAML document"));
        }
    };
    let monitoring = required(root, "monitoring", "")?;
    let monitoring = MonitoringIps {
        public: ip_field(monitoring, "public", "monitoring.")?,
        private: ip_field(monitoring, "private", "monitoring.")?,
    };
    let entries = required(root, "hosts", "")?;
    let Some(entries) = entries.data.as_vec() else {
        return Err(FileError::at_line(line_of(entries), "hosts: expected a list of hosts"));
    };
    let mut hosts: Vec<Host> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let context = format!("hosts[{index}].");
        let host = Host {
            name: string_field(entry, "name", &context)?,
            region: string_field(entry, "region", &context)?,
            ip: ip_field(entry, "ip", &context)?,
        };
        if host.name.is_empty() {
            return Err(FileError::at_line(line_of(entry), format!("{context}name is empty")));
        }
        if hosts.iter().any(|earlier| earlier.name == host.name) {
            return Err(FileError::at_line(
                line_of(entry),
                format!("{context}name: {:?} is listed twice", host.name),
            ));
        }
        hosts.push(host);
    }
    Ok(Hosts { monitoring, hosts })
}

fn line_of(node: &MarkedYaml<'_>) -> usize {
    node.span.start.line()
}

/// The value of `key` in the mapping `node`; `context` is the path to `node` for messages.
fn required<'a, 'input>(
    node: &'a MarkedYaml<'input>,
    key: &str,
    context: &str,
) -> Result<&'a MarkedYaml<'input>, FileError> {
    let Some(mapping) = node.data.as_mapping() else {
        let what = if context.is_empty() { "the document" } else { context.trim_end_matches('.') };
        return Err(FileError::at_line(line_of(node), format!("{what}: expected a mapping")));
    };
    mapping
        .iter()
        .find_map(|(name, value)| (name.data.as_str() == Some(key)).then_some(value))
        .ok_or_else(|| FileError::at_line(line_of(node), format!("{context}{key} is missing")))
}

fn string_field(node: &MarkedYaml<'_>, key: &str, context: &str) -> Result<String, FileError> {
    let value = required(node, key, context)?;
    value.data.as_str().map(str::to_owned).ok_or_else(|| {
        FileError::at_line(line_of(value), format!("{context}{key}: expected a string"))
    })
}

fn ip_field(node: &MarkedYaml<'_>, key: &str, context: &str) -> Result<IpAddr, FileError> {
    let value = required(node, key, context)?;
    let text = value.data.as_str().ok_or_else(|| {
        FileError::at_line(line_of(value), format!("{context}{key}: expected an IP address"))
    })?;
    text.parse().map_err(|_| {
        FileError::at_line(line_of(value), format!("{context}{key}: {text:?} is not an IP address"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
monitoring:
  public: 3.91.10.20
  private: 10.1.0.37
hosts:
- name: node-0
  region: us-east-1
  ip: 54.80.1.2
- name: node-1
  region: eu-west-1
  ip: 2001:db8::1
  extra: ignored
";

    #[test]
    fn the_deployer_format_parses() {
        let hosts = parse_hosts(GOOD).unwrap();
        assert_eq!(
            hosts.monitoring,
            MonitoringIps {
                public: "3.91.10.20".parse().unwrap(),
                private: "10.1.0.37".parse().unwrap(),
            }
        );
        assert_eq!(
            hosts.hosts,
            vec![
                Host {
                    name: "node-0".to_owned(),
                    region: "us-east-1".to_owned(),
                    ip: "54.80.1.2".parse().unwrap(),
                },
                Host {
                    name: "node-1".to_owned(),
                    region: "eu-west-1".to_owned(),
                    ip: "2001:db8::1".parse().unwrap(),
                },
            ]
        );
        assert_eq!(hosts.find("node-1").map(|host| host.region.as_str()), Some("eu-west-1"));
        assert_eq!(hosts.find("node-2"), None);
    }

    #[test]
    fn flow_style_and_an_empty_list_parse() {
        let text = "{monitoring: {public: 127.0.0.1, private: 127.0.0.1}, hosts: []}";
        assert_eq!(parse_hosts(text).unwrap().hosts, vec![]);
    }

    #[test]
    fn bad_inputs_name_their_line() {
        let monitoring = "monitoring: {public: 1.2.3.4, private: 10.0.0.1}\n";
        let cases = [
            (String::new(), "the file is empty".to_owned()),
            ("- a\n- b\n".to_owned(), "line 1: the document: expected a mapping".to_owned()),
            ("hosts: []\n".to_owned(), "line 1: monitoring is missing".to_owned()),
            (
                "monitoring: {public: 1.2.3.4}\nhosts: []\n".to_owned(),
                "line 1: monitoring.private is missing".to_owned(),
            ),
            (
                "monitoring: {public: 1.2.3.4, private: nope}\nhosts: []\n".to_owned(),
                r#"line 1: monitoring.private: "nope" is not an IP address"#.to_owned(),
            ),
            (
                "monitoring: 3\nhosts: []\n".to_owned(),
                "line 1: monitoring: expected a mapping".to_owned(),
            ),
            (monitoring.to_owned(), "line 1: hosts is missing".to_owned()),
            (
                format!("{monitoring}hosts: 7\n"),
                "line 2: hosts: expected a list of hosts".to_owned(),
            ),
            (
                format!("{monitoring}hosts:\n- name: a\n  region: r\n  ip: 1.2.3.999\n"),
                r#"line 5: hosts[0].ip: "1.2.3.999" is not an IP address"#.to_owned(),
            ),
            (
                format!("{monitoring}hosts:\n- name: a\n  region: r\n  ip: 7\n"),
                "line 5: hosts[0].ip: expected an IP address".to_owned(),
            ),
            (
                format!("{monitoring}hosts:\n- name: a\n  ip: 1.2.3.4\n"),
                "line 3: hosts[0].region is missing".to_owned(),
            ),
            (
                format!("{monitoring}hosts:\n- name: [a]\n  region: r\n  ip: 1.2.3.4\n"),
                "line 3: hosts[0].name: expected a string".to_owned(),
            ),
            (
                format!("{monitoring}hosts:\n- name: ''\n  region: r\n  ip: 1.2.3.4\n"),
                "line 3: hosts[0].name is empty".to_owned(),
            ),
            (
                format!(
                    "{monitoring}hosts:\n- {{name: a, region: r, ip: 1.2.3.4}}\n- {{name: a, region: r, ip: 1.2.3.5}}\n"
                ),
                r#"line 4: hosts[1].name: "a" is listed twice"#.to_owned(),
            ),
            (
                format!("{monitoring}hosts: [\n"),
                "line 3: not valid YAML: while parsing a node, did not find expected node content"
                    .to_owned(),
            ),
            (
                format!("{monitoring}hosts: []\n---\nmore: 1\n"),
                "line 4: expected one YAML document".to_owned(),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_hosts(&text).unwrap_err().to_string(),
                expected,
                "hosts.yaml: {text:?}"
            );
        }
    }
}
