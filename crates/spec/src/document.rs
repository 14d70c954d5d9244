//! Loading a fleet spec: [`parse_fleet_spec`] and [`load_fleet_spec`], and the
//! [`SpecDocument`] they return, which remembers where each key was so that checks made later
//! (in other crates, e.g. "binary file not found") can point at the right line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::decode::Decoder;
use crate::diagnostic::{Diagnostic, Location, Severity, SpecErrors};
use crate::fleet::FleetSpec;
use crate::yaml::parse_single_document;

/// A fleet spec that decoded without errors, with its warnings and the place of every key.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecDocument {
    pub spec: FleetSpec,
    /// The file the spec came from, as given to the parser.
    pub path: PathBuf,
    /// Findings that do not stop the spec from being used (unknown keys), in file order.
    pub warnings: Vec<Diagnostic>,
    /// Where the `lifecycle` configs written in the spec are read differently from ec2fleetd.
    pub lifecycle_differences: Vec<crate::fleetd::Difference>,
    /// The location of each key's value, by field path (`instances[3].binary`); the root is `""`.
    locations: BTreeMap<String, Location>,
}

impl SpecDocument {
    /// Where the value of `field` (e.g. `instances[3].binary`, `ports[0]`, `monitoring`) starts,
    /// when the key is in the file.
    pub fn location(&self, field: &str) -> Option<Location> {
        self.locations.get(field).copied()
    }

    /// A diagnostic about `field`, placed at its value; when the key is not in the file (an
    /// optional key left out), at the closest enclosing key that is (`instances[3]`).
    pub fn diagnostic(&self, severity: Severity, field: &str, message: String) -> Diagnostic {
        let location = enclosing_fields(field).find_map(|candidate| self.location(candidate));
        Diagnostic {
            severity,
            file: self.path.clone(),
            location,
            field: field.to_owned(),
            message,
            help: None,
        }
    }
}

/// `field`, then each enclosing field: `a[1].b.c`, `a[1].b`, `a[1]`, `a`, ``.
fn enclosing_fields(field: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(field);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind(['.', '[']) {
            Some(position) => Some(&current[..position]),
            None if current.is_empty() => None,
            None => Some(""),
        };
        Some(current)
    })
}

/// Parses and validates a fleet spec. `file` names the file in diagnostics; nothing is read.
///
/// On error, every problem of the file is reported at once, in file order, warnings included.
pub fn parse_fleet_spec(source: &str, file: &Path) -> Result<SpecDocument, SpecErrors> {
    let root = parse_single_document(source).map_err(|syntax| SpecErrors {
        diagnostics: vec![
            Diagnostic::error(file, Some(syntax.location), "", syntax.message)
                .with_help(syntax.help),
        ],
    })?;
    let mut decoder = Decoder::new(file);
    let spec = decoder.decode_fleet(&root);
    let lifecycle_differences = decoder.take_lifecycle_differences();
    let (mut diagnostics, locations) = decoder.finish();
    let has_errors = diagnostics.iter().any(|d| d.severity == Severity::Error);
    match spec {
        Some(spec) if !has_errors => Ok(SpecDocument {
            spec,
            path: file.to_path_buf(),
            warnings: diagnostics,
            lifecycle_differences,
            locations,
        }),
        _ => {
            if !has_errors {
                // Every decoder step that gives up reports an error first; this is a safety net
                // so that a bug there cannot turn into an empty error list.
                diagnostics.push(
                    Diagnostic::error(file, None, "", "the spec could not be decoded".to_owned())
                        .with_help("this is a bug in flotilla: please report it with the file"),
                );
            }
            Err(SpecErrors { diagnostics })
        }
    }
}

/// Reads the host pools of `source`: a fleet spec's `host_pools` (the whole spec is checked), a
/// document holding only `host_pools:`, or one pool's mapping alone (named `pool`), for
/// `flotilla simulate --pool`. `file` names the file in diagnostics; nothing is read.
pub fn parse_host_pools(
    source: &str,
    file: &Path,
) -> Result<BTreeMap<String, crate::host_pool::HostPoolSpec>, SpecErrors> {
    let root = parse_single_document(source).map_err(|syntax| SpecErrors {
        diagnostics: vec![
            Diagnostic::error(file, Some(syntax.location), "", syntax.message)
                .with_help(syntax.help),
        ],
    })?;
    let is_fleet_spec = match &root.value {
        crate::tree::NodeValue::Mapping(entries) => entries.iter().any(|entry| {
            entry.key.as_scalar().is_some_and(|key| key.text == "instances" || key.text == "tag")
        }),
        _ => false,
    };
    if is_fleet_spec {
        return parse_fleet_spec(source, file).map(|document| document.spec.host_pools);
    }
    let mut decoder = Decoder::new(file);
    let pools = decoder.decode_host_pools_document(&root);
    let (diagnostics, _) = decoder.finish();
    match pools {
        Some(pools) if !diagnostics.iter().any(|d| d.severity == Severity::Error) => Ok(pools),
        _ => Err(SpecErrors { diagnostics }),
    }
}

/// Checks the spec's machine total against `provider`'s limit (`--provider` may name another
/// provider than the spec, whose own limit [`parse_fleet_spec`] already checked).
pub fn check_machine_total(
    document: &SpecDocument,
    provider: crate::ProviderKind,
) -> Result<(), SpecErrors> {
    match crate::decode::machine_total_problem(&document.spec.instances, provider) {
        None => Ok(()),
        Some((message, help)) => Err(SpecErrors {
            diagnostics: vec![
                document.diagnostic(Severity::Error, "instances", message).with_help(help),
            ],
        }),
    }
}

/// The largest fleet spec read: 16 MiB, far above 10,000 machines written out one by one.
pub const MAX_SPEC_BYTES: u64 = 16 * 1024 * 1024;

/// Reads `file` and parses it with [`parse_fleet_spec`]. Only a regular file of at most
/// [`MAX_SPEC_BYTES`] is read (not a FIFO, which would block, nor `/dev/zero`, which never
/// ends); a file that cannot be read, or is not UTF-8, is one diagnostic naming the file.
pub fn load_fleet_spec(file: &Path) -> Result<SpecDocument, SpecErrors> {
    let source = read_source(file, "the fleet spec", "--config", "a YAML file")?;
    parse_fleet_spec(&source, file)
}

/// Reads `file` (a regular file of at most [`MAX_SPEC_BYTES`], UTF-8) for a parser; what
/// cannot be read is one diagnostic naming the file. `what` names the document in messages
/// ("the fleet spec"), `option` the command-line option that gave the path and `kind` what the
/// file should be ("a YAML file").
pub(crate) fn read_source(
    file: &Path,
    what: &str,
    option: &str,
    kind: &str,
) -> Result<String, SpecErrors> {
    let refuse = |cause: String, help: String| SpecErrors {
        diagnostics: vec![
            Diagnostic::error(file, None, "", format!("cannot read {what}: {cause}"))
                .with_help(help),
        ],
    };
    let bytes = read_regular_file(file, MAX_SPEC_BYTES).map_err(|problem| match problem {
        ReadProblem::Io(error) => {
            // fs_err's message repeats the path, which the diagnostic already names.
            let cause = match error.kind() {
                std::io::ErrorKind::NotFound => "the file does not exist".to_owned(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
                _ => error.to_string(),
            };
            refuse(cause, format!("check the path given with {option}"))
        }
        ReadProblem::NotRegular(file_kind) => refuse(
            format!("it is {file_kind}, not a regular file"),
            format!("give the path of {kind} with {option}"),
        ),
        ReadProblem::TooLarge => refuse(
            format!("it is larger than {} MiB", MAX_SPEC_BYTES / (1024 * 1024)),
            format!("{what} is a small file: check the path given with {option}"),
        ),
    })?;
    String::from_utf8(bytes).map_err(|error| {
        let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        let valid = std::str::from_utf8(valid).expect("the bytes before valid_up_to are UTF-8");
        let line = valid.matches('\n').count() + 1;
        let column = valid.rsplit('\n').next().map_or(0, |last| last.chars().count()) + 1;
        SpecErrors {
            diagnostics: vec![
                Diagnostic::error(
                    file,
                    Some(Location { line, column }),
                    "",
                    "the file is not valid UTF-8".to_owned(),
                )
                .with_help("save the file as UTF-8"),
            ],
        }
    })
}

/// Why [`read_regular_file`] read nothing.
#[derive(Debug)]
pub enum ReadProblem {
    Io(std::io::Error),
    /// What the path is instead (`a directory`, `a FIFO`, …).
    NotRegular(&'static str),
    TooLarge,
}

/// Reads `path` when it is a regular file (after symbolic links) of at most `max_bytes`.
/// Anything else is refused before it is opened, so a FIFO cannot block and a device cannot
/// feed bytes forever; the size is checked again while reading, in case the file grows.
pub fn read_regular_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ReadProblem> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;

    let metadata = fs_err::metadata(path).map_err(ReadProblem::Io)?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        return Err(ReadProblem::NotRegular(if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "not a file"
        }));
    }
    if metadata.len() > max_bytes {
        return Err(ReadProblem::TooLarge);
    }
    let file = fs_err::File::open(path).map_err(ReadProblem::Io)?;
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(max_bytes + 1).read_to_end(&mut bytes).map_err(ReadProblem::Io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ReadProblem::TooLarge);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enclosing_fields_walk_up_to_the_root() {
        let fields: Vec<&str> = enclosing_fields("instances[3].health.http.port").collect();
        assert_eq!(
            fields,
            [
                "instances[3].health.http.port",
                "instances[3].health.http",
                "instances[3].health",
                "instances[3]",
                "instances",
                ""
            ]
        );
        assert_eq!(enclosing_fields("").collect::<Vec<_>>(), [""]);
    }
}
