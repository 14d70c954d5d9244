//! How the binary's run ended, as the status records it ([`ExitInfo`]) and as the log says it
//! ("exited with code 1", "was ended by signal 9 (SIGKILL)").

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use flotilla_spec::api::ExitInfo;

use crate::time::unix_now;

/// The exit record and its words for the result of waiting for the binary.
pub(crate) fn describe_exit(result: &io::Result<ExitStatus>) -> (ExitInfo, String) {
    let at = unix_now();
    match result {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (
                ExitInfo { code: Some(code), signal: None, at },
                format!("exited with code {code}"),
            ),
            (None, Some(signal)) => (
                ExitInfo { code: None, signal: Some(signal), at },
                format!("was ended by signal {signal}{}", signal_name(signal)),
            ),
            (None, None) => (ExitInfo { code: None, signal: None, at }, format!("ended: {status}")),
        },
        Err(error) => {
            (ExitInfo { code: None, signal: None, at }, format!("could not be waited for: {error}"))
        }
    }
}

/// The name of the common signals, for the log.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        3 => " (SIGQUIT)",
        4 => " (SIGILL)",
        6 => " (SIGABRT)",
        7 => " (SIGBUS)",
        8 => " (SIGFPE)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        13 => " (SIGPIPE)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described() {
        let (info, text) = describe_exit(&Ok(ExitStatus::from_raw(1 << 8)));
        assert_eq!((info.code, info.signal, text.as_str()), (Some(1), None, "exited with code 1"));
        let (info, text) = describe_exit(&Ok(ExitStatus::from_raw(9)));
        assert_eq!(info.signal, Some(9));
        assert_eq!(text, "was ended by signal 9 (SIGKILL)");
    }
}
