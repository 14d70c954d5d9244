//! Progress bars on stderr (indicatif). Hidden when stderr is not a terminal, so logs and pipes
//! stay clean; each stage is logged at info level either way.

use std::time::Duration;

use flotilla_core::progress::{Progress, Stage};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bars for one command.
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
    /// The checkpoint at which to kill this process ([`crate::env::TEST_HALT_AT`]).
    halt_at: Option<String>,
}

impl Bars {
    pub fn new(halt_at: Option<String>) -> Bars {
        Bars { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), halt_at }
    }
}

struct Bar {
    bar: ProgressBar,
    label: String,
}

impl Stage for Bar {
    fn advance(&self, steps: u64) {
        self.bar.inc(steps);
    }

    fn note(&self, message: &str) {
        tracing::info!(stage = %self.label, "{message}");
        self.bar.set_message(message.to_owned());
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish();
        tracing::info!(stage = %self.label, elapsed = ?self.bar.elapsed(), "done");
    }
}

impl Progress for Bars {
    fn notice(&self, text: &str) {
        tracing::info!("{text}");
        // A line for people, above the bars, whether or not stderr is a terminal.
        if self.multi.is_hidden() {
            let mut stderr = std::io::stderr().lock();
            let _ = std::io::Write::write_all(&mut stderr, format!("{text}\n").as_bytes());
        } else {
            let _ = self.multi.println(text);
        }
    }

    fn checkpoint(&self, point: &str) {
        tracing::debug!(point, "checkpoint");
        if self.halt_at.as_deref() == Some(point) {
            // A crash at exactly this point, as `kill -9` would make it: nothing is flushed or
            // cleaned up.
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    }

    fn stage(&self, label: &str, total: u64) -> Box<dyn Stage + '_> {
        tracing::info!(stage = label, total, "starting");
        let bar = if total == 0 {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
                    .expect("the template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        } else {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>22} [{bar:30}] {pos}/{len} {msg} [{elapsed}]",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            bar
        };
        bar.set_prefix(label.to_owned());
        let bar = self.multi.add(bar);
        Box::new(Bar { bar, label: label.to_owned() })
    }
}
