//! Capturing the binary's output: each line of its stdout and stderr goes into the binary's log
//! (`binary_log`), cut at [`MAX_LINE_BYTES`] so that a binary writing without newlines cannot
//! grow the agent's memory; after an exit the capture gets [`OUTPUT_DRAIN_TIMEOUT`] to reach the
//! end of what the binary wrote (members of its group may still hold the pipes).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

use crate::binary_log::{BinaryLog, MAX_LINE_BYTES};
use crate::deadline;

/// How long the agent waits for the binary's output to drain after it exited.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts copying `stream`'s lines into `log`, until it closes; [`drain_output`] waits for it.
pub(crate) fn capture(
    stream: impl AsyncRead + Unpin + Send + 'static,
    log: Arc<BinaryLog>,
) -> JoinHandle<()> {
    tokio::spawn(capture_lines(stream, log))
}

/// Copies lines of one output stream into the log until it closes.
async fn capture_lines(stream: impl AsyncRead + Unpin, log: Arc<BinaryLog>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_capped(&mut reader, &mut line, MAX_LINE_BYTES).await {
            Ok(0) => break,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                log.binary_line(&String::from_utf8_lossy(&line));
            }
            Err(error) => {
                log.event(&format!("could not read the binary's output: {error}"));
                break;
            }
        }
    }
}

/// Reads up to and including the next newline, or `cap` bytes, whichever comes first.
async fn read_line_capped(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
    cap: usize,
) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let room = cap - line.len();
        let take = match available.iter().position(|&byte| byte == b'\n') {
            Some(index) => (index + 1).min(room),
            None => available.len().min(room),
        };
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        total += take;
        if line.last() == Some(&b'\n') || line.len() >= cap {
            return Ok(total);
        }
    }
}

/// Waits for the capture tasks to reach the end of the output, then gives up on them.
pub(crate) async fn drain_output(capture: Vec<JoinHandle<()>>) {
    let deadline = deadline::from_now(OUTPUT_DRAIN_TIMEOUT);
    for mut task in capture {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_up_to_the_cap() {
        let input: &[u8] = b"short\nlonger line\r\nno newline at the end";
        let mut reader = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        loop {
            line.clear();
            if read_line_capped(&mut reader, &mut line, 8).await.unwrap() == 0 {
                break;
            }
            lines.push(String::from_utf8(line.clone()).unwrap());
        }
        let expected = ["short\n", "longer l", "ine\r\n", "no newli", "ne at th", "e end"];
        assert_eq!(lines, expected.map(String::from).to_vec());
    }
}
