//! Everything the program is told at start, resolved into one [`Settings`] value.
//!
//! Arguments: `--hosts=PATH` and `--config=PATH` (also as `--hosts PATH`), `--help`,
//! `--version`. Anything else is refused. The environment variables the flotilla agent sets
//! are listed below; only `FLOTILLA_NAME` is required.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::config::{Config, parse_config};
use crate::hosts::{Host, Hosts, parse_hosts};

/// This node's name, as in hosts.yaml. Required.
pub const ENV_NAME: &str = "FLOTILLA_NAME";
/// The address hosts.yaml gives for this node; defaults to that entry's `ip`.
pub const ENV_IP: &str = "FLOTILLA_IP";
/// The machine's private address: where to listen if `FLOTILLA_IP` cannot be bound.
pub const ENV_PRIVATE_IP: &str = "FLOTILLA_PRIVATE_IP";
/// Region and deployment tag: only shown in the start-up line.
pub const ENV_REGION: &str = "FLOTILLA_REGION";
pub const ENV_TAG: &str = "FLOTILLA_TAG";

pub const USAGE: &str = "\
usage: fleet-app --hosts=<hosts.yaml> --config=<config.conf>

An example program for flotilla: the nodes listed in hosts.yaml gossip a counter and serve
GET /health, GET /metrics, GET /peers and POST /gossip on the config's port.

signals: SIGHUP rereads hosts.yaml and gossips with the nodes it then lists (a file that cannot
be used is logged and the old peers kept); SIGTERM or SIGINT stop the node.

environment: FLOTILLA_NAME (required: this node's name in hosts.yaml), FLOTILLA_IP,
FLOTILLA_PRIVATE_IP, FLOTILLA_REGION, FLOTILLA_TAG";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Run { hosts: PathBuf, config: PathBuf },
    Help,
    Version,
}

#[derive(Debug)]
pub struct Settings {
    pub name: String,
    /// Where to listen first (and what the status lines show).
    pub ip: IpAddr,
    pub private_ip: Option<IpAddr>,
    pub region: Option<String>,
    pub tag: Option<String>,
    pub config: Config,
    /// The `--hosts` file, reread on SIGHUP.
    pub hosts_path: PathBuf,
    /// Every node in hosts.yaml, this one included, in the file's order.
    pub hosts: Vec<Host>,
}

/// Parses the arguments after the program name.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, String> {
    let mut hosts = None;
    let mut config = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.into_string().map_err(|arg| format!("argument {arg:?} is not UTF-8"))?;
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let slot = match flag {
            "--help" | "-h" => return Ok(Invocation::Help),
            "--version" | "-V" => return Ok(Invocation::Version),
            "--hosts" => &mut hosts,
            "--config" => &mut config,
            _ => return Err(format!("unknown argument {arg:?}")),
        };
        let value = match inline_value {
            Some(value) => value,
            None => args
                .next()
                .and_then(|value| value.into_string().ok())
                .ok_or_else(|| format!("{flag} needs a path"))?,
        };
        if value.is_empty() {
            return Err(format!("{flag} needs a path"));
        }
        if slot.replace(PathBuf::from(value)).is_some() {
            return Err(format!("{flag} is given twice"));
        }
    }
    match (hosts, config) {
        (Some(hosts), Some(config)) => Ok(Invocation::Run { hosts, config }),
        (None, _) => Err("--hosts=<hosts.yaml> is required".to_owned()),
        (_, None) => Err("--config=<config.conf> is required".to_owned()),
    }
}

impl Settings {
    /// Reads both files and resolves the environment (looked up through `env`).
    pub fn load(
        hosts_path: &Path,
        config_path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, String> {
        let config_text = fs_err::read_to_string(config_path).map_err(|error| error.to_string())?;
        let config = parse_config(&config_text).map_err(|error| error.in_file(config_path))?;
        let hosts_text = fs_err::read_to_string(hosts_path).map_err(|error| error.to_string())?;
        let hosts = parse_hosts(&hosts_text).map_err(|error| error.in_file(hosts_path))?;
        Settings::resolve(config, hosts, hosts_path, env)
    }

    fn resolve(
        config: Config,
        hosts: Hosts,
        hosts_path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, String> {
        let env = |key: &str| env(key).filter(|value| !value.is_empty());
        let name = env(ENV_NAME).ok_or_else(|| {
            format!("{ENV_NAME} is not set: it names this node in hosts.yaml (the flotilla agent sets it)")
        })?;
        let Some(own_entry) = hosts.find(&name) else {
            return Err(format!(
                "{ENV_NAME}={name} is not in {} (it lists: {})",
                hosts_path.display(),
                hosts.names_listed()
            ));
        };
        let ip_from = |key: &str| -> Result<Option<IpAddr>, String> {
            env(key)
                .map(|value| {
                    value.parse().map_err(|_| format!("{key}={value} is not an IP address"))
                })
                .transpose()
        };
        Ok(Settings {
            ip: ip_from(ENV_IP)?.unwrap_or(own_entry.ip),
            private_ip: ip_from(ENV_PRIVATE_IP)?,
            region: env(ENV_REGION),
            tag: env(ENV_TAG),
            config,
            hosts_path: hosts_path.to_owned(),
            hosts: hosts.hosts,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Invocation, String> {
        parse_args(list.iter().map(OsString::from))
    }

    #[test]
    fn both_flag_forms_parse() {
        let expected =
            Invocation::Run { hosts: PathBuf::from("h.yaml"), config: PathBuf::from("c.conf") };
        assert_eq!(args(&["--hosts=h.yaml", "--config=c.conf"]), Ok(expected));
        let expected =
            Invocation::Run { hosts: PathBuf::from("h.yaml"), config: PathBuf::from("c.conf") };
        assert_eq!(args(&["--config", "c.conf", "--hosts", "h.yaml"]), Ok(expected));
        assert_eq!(args(&["--hosts=h", "--help"]), Ok(Invocation::Help));
        assert_eq!(args(&["-V"]), Ok(Invocation::Version));
    }

    #[test]
    fn bad_arguments_are_refused() {
        let cases: [(&[&str], &str); 6] = [
            (&[], "--hosts=<hosts.yaml> is required"),
            (&["--hosts=h"], "--config=<config.conf> is required"),
            (&["--hosts=h", "--config=c", "--verbose"], r#"unknown argument "--verbose""#),
            (&["--hosts=h", "--hosts=i"], "--hosts is given twice"),
            (&["--config"], "--config needs a path"),
            (&["--config="], "--config needs a path"),
        ];
        for (list, expected) in cases {
            assert_eq!(args(list), Err(expected.to_owned()), "arguments {list:?}");
        }
    }

    fn fleet() -> Hosts {
        parse_hosts(
            "monitoring: {public: 127.0.0.9, private: 127.0.0.9}\nhosts:\n\
             - {name: n0, region: local, ip: 127.0.0.1}\n\
             - {name: n1, region: local, ip: 127.0.0.2}\n\
             - {name: n2, region: local, ip: 127.0.0.3}\n",
        )
        .unwrap()
    }

    fn resolve(env: &[(&str, &str)]) -> Result<Settings, String> {
        let config = parse_config("greeting = hi").unwrap();
        let lookup = |key: &str| {
            env.iter().find(|(name, _)| *name == key).map(|(_, value)| (*value).to_owned())
        };
        Settings::resolve(config, fleet(), Path::new("d/hosts.yaml"), lookup)
    }

    #[test]
    fn the_environment_picks_this_node() {
        let settings = resolve(&[(ENV_NAME, "n1"), (ENV_PRIVATE_IP, "10.0.0.2")]).unwrap();
        assert_eq!(settings.ip, "127.0.0.2".parse::<IpAddr>().unwrap(), "from hosts.yaml");
        assert_eq!(settings.private_ip, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(settings.hosts, fleet().hosts);
        assert_eq!(settings.hosts_path, Path::new("d/hosts.yaml"));
        let settings = resolve(&[(ENV_NAME, "n1"), (ENV_IP, "127.0.5.5")]).unwrap();
        assert_eq!(settings.ip, "127.0.5.5".parse::<IpAddr>().unwrap(), "FLOTILLA_IP wins");
    }

    #[test]
    fn a_bad_environment_is_explained() {
        assert_eq!(
            resolve(&[]).unwrap_err(),
            "FLOTILLA_NAME is not set: it names this node in hosts.yaml (the flotilla agent sets it)"
        );
        assert_eq!(
            resolve(&[(ENV_NAME, "n7")]).unwrap_err(),
            "FLOTILLA_NAME=n7 is not in d/hosts.yaml (it lists: n0, n1, n2)"
        );
        assert_eq!(
            resolve(&[(ENV_NAME, "n0"), (ENV_IP, "localhost")]).unwrap_err(),
            "FLOTILLA_IP=localhost is not an IP address"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let error = Settings::load(
            Path::new("/nonexistent/hosts.yaml"),
            Path::new("/nonexistent/c.conf"),
            |_| None,
        )
        .unwrap_err();
        assert!(error.contains("/nonexistent/c.conf"), "{error}");
    }
}
