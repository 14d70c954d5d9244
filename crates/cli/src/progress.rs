//! Progress bars on stderr (indicatif). Hidden when stderr is not a terminal, so logs and pipes
//! stay clean; each stage is logged at info level either way.

use std::time::Duration;

use flotilla_core::progress::{Progress, Stage};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bars for one command.
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
}

impl Bars {
    pub fn new() -> Bars {
        Bars { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()) }
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
