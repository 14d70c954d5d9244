//! `config.conf`: the program's settings as `key = value` lines.
//!
//! Blank lines and lines starting with `#` are ignored, and an unquoted value ends at a `#`.
//! A value may be quoted: `"..."` understands the escapes `\"`, `\\`, `\n` and `\t`; `'...'` is
//! taken literally. Every key may appear once; an unknown key, a repeated key or a bad value is
//! an error that names its line.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `port` | TCP port of the HTTP server (the same on every node) | `9090` |
//! | `greeting` | a string shown in logs, `/health` and `fleet_app_info` | required |
//! | `interval` | milliseconds between gossip rounds | `1000` |
//! | `fanout` | peers contacted per round, taken in turn (all of them when there are fewer) | `8` |

use std::time::Duration;

use crate::error::FileError;

pub const DEFAULT_PORT: u16 = 9090;
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);
/// Peers contacted per round: enough that a counter reaches a 200-node fleet in about three
/// rounds (each exchange is push-pull), few enough that the fleet's traffic grows as n, not n².
pub const DEFAULT_FANOUT: usize = 8;
pub const MAX_FANOUT: usize = 10_000;
/// Bounds of `interval`: faster would flood the fleet, slower makes "seen" meaningless.
pub const MIN_INTERVAL_MS: u64 = 10;
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
/// Longest greeting, in bytes: it is a metric label and part of every status line.
pub const MAX_GREETING_BYTES: usize = 200;

const KNOWN_KEYS: [&str; 4] = ["port", "greeting", "interval", "fanout"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub port: u16,
    pub greeting: String,
    pub interval: Duration,
    pub fanout: usize,
}

/// Parses the text of a `config.conf`.
pub fn parse_config(text: &str) -> Result<Config, FileError> {
    let mut port = None;
    let mut greeting = None;
    let mut interval = None;
    let mut fanout = None;
    for (index, raw_line) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw_value)) = line.split_once('=') else {
            return Err(FileError::at_line(
                line_number,
                format!("expected `key = value`, found {line:?}"),
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(FileError::at_line(line_number, "missing key before `=`"));
        }
        if !KNOWN_KEYS.contains(&key) {
            return Err(FileError::at_line(
                line_number,
                format!("unknown key {key:?} (known keys: {})", KNOWN_KEYS.join(", ")),
            ));
        }
        let value = parse_value(raw_value)
            .map_err(|message| FileError::at_line(line_number, format!("{key}: {message}")))?;
        match key {
            "port" => fill_once(&mut port, parse_port(&value), key, line_number)?,
            "greeting" => fill_once(&mut greeting, check_greeting(value), key, line_number)?,
            "interval" => fill_once(&mut interval, parse_interval(&value), key, line_number)?,
            _ => fill_once(&mut fanout, parse_fanout(&value), key, line_number)?,
        }
    }
    let greeting = greeting.ok_or_else(|| {
        FileError::whole_file(r#"greeting is missing: add a line like `greeting = "hello"`"#)
    })?;
    Ok(Config {
        port: port.unwrap_or(DEFAULT_PORT),
        greeting,
        interval: interval.unwrap_or(DEFAULT_INTERVAL),
        fanout: fanout.unwrap_or(DEFAULT_FANOUT),
    })
}

/// Stores a parsed value for `key`, refusing a bad value or a key set twice.
fn fill_once<T>(
    slot: &mut Option<T>,
    parsed: Result<T, String>,
    key: &str,
    line_number: usize,
) -> Result<(), FileError> {
    let value =
        parsed.map_err(|message| FileError::at_line(line_number, format!("{key}: {message}")))?;
    if slot.replace(value).is_some() {
        return Err(FileError::at_line(line_number, format!("{key} is set a second time")));
    }
    Ok(())
}

/// The value after `=`: a quoted string, or bare text up to an optional `# comment`.
fn parse_value(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let mut chars = raw.chars();
    let (value, rest) = match chars.next() {
        Some('"') => parse_double_quoted(chars.as_str())?,
        Some('\'') => {
            let inner = chars.as_str();
            let end = inner.find('\'').ok_or("the single-quoted value has no closing '")?;
            (inner[..end].to_owned(), &inner[end + 1..])
        }
        _ => {
            let bare = raw.split('#').next().unwrap_or_default().trim_end();
            if bare.is_empty() {
                return Err("the value is empty".to_owned());
            }
            return Ok(bare.to_owned());
        }
    };
    let rest = rest.trim_start();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(format!("unexpected {rest:?} after the closing quote"));
    }
    Ok(value)
}

/// The inside of a `"..."` value and what follows the closing quote.
fn parse_double_quoted(inner: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = inner.char_indices();
    while let Some((position, character)) = chars.next() {
        match character {
            '"' => return Ok((value, &inner[position + 1..])),
            '\\' => match chars.next() {
                Some((_, '"')) => value.push('"'),
                Some((_, '\\')) => value.push('\\'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, 't')) => value.push('\t'),
                Some((_, other)) => {
                    return Err(format!(r#"unknown escape \{other} (known: \" \\ \n \t)"#));
                }
                None => break,
            },
            other => value.push(other),
        }
    }
    Err("the double-quoted value has no closing \"".to_owned())
}

fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{value:?} is not a port number (1-65535)")),
        Ok(port) => Ok(port),
    }
}

fn parse_fanout(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(fanout) if (1..=MAX_FANOUT).contains(&fanout) => Ok(fanout),
        _ => Err(format!("{value:?} is not a number of peers between 1 and {MAX_FANOUT}")),
    }
}

fn parse_interval(value: &str) -> Result<Duration, String> {
    let range = MIN_INTERVAL_MS..=MAX_INTERVAL_MS;
    match value.parse::<u64>() {
        Ok(ms) if range.contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "{value:?} is not a number of milliseconds between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS}"
        )),
    }
}

fn check_greeting(value: String) -> Result<String, String> {
    if value.is_empty() {
        Err("the greeting is empty".to_owned())
    } else if value.chars().any(char::is_control) {
        // It must stay on one line in logs, /health and the metric label.
        Err("the greeting contains a control character (newline, tab, ...)".to_owned())
    } else if value.len() > MAX_GREETING_BYTES {
        Err(format!("the greeting is longer than {MAX_GREETING_BYTES} bytes"))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        parse_config(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_config_with_comments_parses() {
        let text = "# the example config\n\nport = 9191\ngreeting = \"hello # not a comment\" # a comment\ninterval = 250  # ms\nfanout = 3\n";
        assert_eq!(
            parse_config(text).unwrap(),
            Config {
                port: 9191,
                greeting: "hello # not a comment".to_owned(),
                interval: Duration::from_millis(250),
                fanout: 3,
            }
        );
    }

    #[test]
    fn port_and_interval_have_defaults() {
        let config = parse_config("greeting = hi there").unwrap();
        assert_eq!(config.port, DEFAULT_PORT);
        assert_eq!(config.interval, DEFAULT_INTERVAL);
        assert_eq!(config.fanout, DEFAULT_FANOUT);
        assert_eq!(config.greeting, "hi there");
    }

    #[test]
    fn quoting_styles() {
        let greeting = |line: &str| parse_config(line).unwrap().greeting;
        assert_eq!(greeting(r#"greeting = "say \"hi\" \\ bye""#), r#"say "hi" \ bye"#);
        assert_eq!(greeting(r"greeting = 'C:\temp'"), r"C:\temp");
        assert_eq!(greeting("  greeting=bonjour  "), "bonjour");
        assert_eq!(greeting("greeting = \"\u{e7}a va\""), "\u{e7}a va");
    }

    #[test]
    fn bad_inputs_name_their_line() {
        let cases = [
            (
                "greeting = a\nprot = 1\n",
                r#"line 2: unknown key "prot" (known keys: port, greeting, interval, fanout)"#,
            ),
            ("greeting = a\nport = 0\n", r#"line 2: port: "0" is not a port number (1-65535)"#),
            (
                "greeting = a\n\nport = 70000\n",
                r#"line 3: port: "70000" is not a port number (1-65535)"#,
            ),
            (
                "greeting = a\ninterval = 1s\n",
                r#"line 2: interval: "1s" is not a number of milliseconds between 10 and 3600000"#,
            ),
            (
                "greeting = a\ninterval = 5\n",
                r#"line 2: interval: "5" is not a number of milliseconds between 10 and 3600000"#,
            ),
            ("# c\ngreeting\n", r#"line 2: expected `key = value`, found "greeting""#),
            ("= 3\n", "line 1: missing key before `=`"),
            ("greeting = \n", "line 1: greeting: the value is empty"),
            ("greeting = # only a comment\n", "line 1: greeting: the value is empty"),
            ("greeting = \"open\n", "line 1: greeting: the double-quoted value has no closing \""),
            ("greeting = 'open\n", "line 1: greeting: the single-quoted value has no closing '"),
            ("greeting = \"a\" b\n", r#"line 1: greeting: unexpected "b" after the closing quote"#),
            (
                "greeting = \"a\\qb\"\n",
                r#"line 1: greeting: unknown escape \q (known: \" \\ \n \t)"#,
            ),
            (
                "greeting = \"two\\nlines\"\n",
                "line 1: greeting: the greeting contains a control character (newline, tab, ...)",
            ),
            ("greeting = \"\"\n", "line 1: greeting: the greeting is empty"),
            ("greeting = a\ngreeting = b\n", "line 2: greeting is set a second time"),
            ("port = 1\n", r#"greeting is missing: add a line like `greeting = "hello"`"#),
        ];
        for (text, expected) in cases {
            assert_eq!(error_of(text), expected, "config text: {text:?}");
        }
    }

    #[test]
    fn a_long_greeting_is_refused() {
        let text = format!("greeting = {}", "x".repeat(MAX_GREETING_BYTES + 1));
        assert_eq!(error_of(&text), "line 1: greeting: the greeting is longer than 200 bytes");
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let error = parse_config("greeting = a\nfoo = 1\n").unwrap_err();
        assert_eq!(
            error.in_file(std::path::Path::new("dir/config.conf")),
            r#"dir/config.conf:2: unknown key "foo" (known keys: port, greeting, interval, fanout)"#
        );
    }

    #[test]
    fn the_example_configs_parse() {
        let v1 = parse_config(include_str!("../config.conf")).unwrap();
        let v2 = parse_config(include_str!("../config-v2.conf")).unwrap();
        assert_eq!((v1.greeting.as_str(), v2.greeting.as_str()), ("hello", "bonjour"));
        assert_eq!((v1.port, v2.port), (9090, 9090));
    }
}
