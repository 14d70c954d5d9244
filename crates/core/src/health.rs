//! Health-aware rollouts: before each batch of an `update`, the provider's health service is
//! asked for open issues in the batch's regions, and an open issue holds the update there.
//!
//! What "held" means for a command run at a terminal or in CI: the update stops before the
//! held batch with exit status 1 and a message naming every open issue (event type, region,
//! start time, ARN) and the two ways on (run `update` again once the issue is closed, or pass
//! `--ignore-health`). It does not wait and re-check. Cloud health issues last from tens of
//! minutes to many hours, so a wait short enough for a person at a terminal would rarely see
//! one end, and a longer one would hold the deployment's lock (blocking `status`-adjacent
//! commands and `watch`'s replacements) while showing nothing but a spinner; a CI pipeline
//! wants the verdict at once so that it can page someone or schedule a retry. Stopping is
//! cheap: batches already rolled keep their version (they were healthy), and `update`
//! converges, so running it again rolls only what is left.
//!
//! The check is made per batch, not once per update: an issue that opens in the middle of a
//! long rollout holds the batches after it. A batch is held only by issues in its own
//! regions, so a fleet in two regions rolls its batches in the healthy one up to the first
//! batch with a machine in the other (batches keep their order; the message says which
//! region is held).
//!
//! A provider with no health service (the local one) has nothing to check. One whose service
//! cannot be asked for a reason that is the account's and not the moment's (AWS Health needs a
//! Business or Enterprise support plan) is reported once per update as a warning, and the
//! rollout goes on unchecked; any other failure to ask stops the update, as a held batch does,
//! naming `--ignore-health`.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::CoreError;
use crate::progress::Progress;
use crate::provider::{HealthIssue, HealthReading, Machine, Provider};

/// Whether `update` asks the health service before each batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthGate {
    /// Ask before each batch; an open issue in a batch's regions holds the update.
    Check,
    /// `--ignore-health` (and `watch`, whose replacements heal a fleet and must not wait for
    /// the cloud's own recovery): roll without asking.
    Ignore,
}

/// The gate of one update: the provider to ask, each machine's region, and whether the
/// "cannot be checked" warning was given.
pub struct BatchHealthCheck<'a, P> {
    provider: &'a P,
    gate: HealthGate,
    /// Machine name → its region.
    regions: BTreeMap<String, String>,
    warned: bool,
}

impl<P> std::fmt::Debug for BatchHealthCheck<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchHealthCheck")
            .field("gate", &self.gate)
            .field("regions", &self.regions)
            .field("warned", &self.warned)
            .finish_non_exhaustive()
    }
}

impl<'a, P: Provider> BatchHealthCheck<'a, P> {
    pub fn new(provider: &'a P, gate: HealthGate, machines: &[Machine]) -> BatchHealthCheck<'a, P> {
        let regions = machines.iter().map(|m| (m.name.clone(), m.region.clone())).collect();
        BatchHealthCheck { provider, gate, regions, warned: false }
    }

    /// The regions of the machines named `batch`, sorted, each once.
    pub fn regions_of(&self, batch: &[String]) -> Vec<String> {
        let regions: BTreeSet<&String> =
            batch.iter().filter_map(|name| self.regions.get(name)).collect();
        regions.into_iter().cloned().collect()
    }

    /// Asks the provider for open issues in the regions of `batch` (batch `number` of
    /// `total`, counted from 1); `Err` holds the update.
    pub async fn before_batch(
        &mut self,
        batch: &[String],
        (number, total): (usize, usize),
        progress: &dyn Progress,
    ) -> Result<(), CoreError> {
        let regions = self.regions_of(batch);
        if self.gate == HealthGate::Ignore || regions.is_empty() {
            return Ok(());
        }
        let reading = self.provider.open_health_issues(&regions).await.map_err(|error| {
            CoreError::Held(format!(
                "update stopped before batch {number} of {total}: could not ask the health service about {} ({}); run update again, or pass --ignore-health to roll out without asking",
                regions.join(", "),
                crate::client::error_chain(&error)
            ))
        })?;
        match reading {
            HealthReading::NotApplicable => Ok(()),
            HealthReading::Unavailable { reason } => {
                if !self.warned {
                    self.warned = true;
                    progress.notice(&format!(
                        "health not checked before the batches: {reason} (pass --ignore-health to say so and silence this)"
                    ));
                }
                Ok(())
            }
            HealthReading::Issues(issues) => {
                match held_message(&issues, &regions, (number, total)) {
                    Some(message) => Err(CoreError::Held(message)),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The message that holds batch `number` of `total` for the issues among `issues` that are in
/// `regions`; `None` when none is.
pub fn held_message(
    issues: &[HealthIssue],
    regions: &[String],
    (number, total): (usize, usize),
) -> Option<String> {
    let mut open: Vec<&HealthIssue> =
        issues.iter().filter(|issue| regions.contains(&issue.region)).collect();
    if open.is_empty() {
        return None;
    }
    open.sort_by(|a, b| {
        (&a.region, &a.start_time, &a.arn).cmp(&(&b.region, &b.start_time, &b.arn))
    });
    let mut held: Vec<&str> = open.iter().map(|issue| issue.region.as_str()).collect();
    held.dedup();
    let before = match number {
        0 | 1 => "no batch was rolled out".to_owned(),
        2 => "batch 1 was rolled out and keeps its version".to_owned(),
        n => format!("batches 1 to {} were rolled out and keep their version", n - 1),
    };
    let mut message = format!(
        "update held before batch {number} of {total}: {} open health {} in {} (region{} held: {}); {before}",
        open.len(),
        if open.len() == 1 { "issue" } else { "issues" },
        held.join(", "),
        if held.len() == 1 { "" } else { "s" },
        held.join(", "),
    );
    for issue in open {
        message.push_str(&format!(
            "\n  {} in {} since {} ({})",
            issue.event_type,
            issue.region,
            issue.start_time.as_deref().unwrap_or("an unknown time"),
            issue.arn
        ));
    }
    message.push_str(
        "\nrun update again once the issue is closed (batches already rolled are left alone), or pass --ignore-health to roll out now",
    );
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(region: &str, arn: &str) -> HealthIssue {
        HealthIssue {
            event_type: "AWS_EC2_OPERATIONAL_ISSUE".to_owned(),
            region: region.to_owned(),
            start_time: Some("2026-12-03T19:00:00Z".to_owned()),
            arn: arn.to_owned(),
        }
    }

    fn regions(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn an_issue_holds_only_batches_with_a_machine_in_its_region() {
        let issues = [issue("us-west-2", "arn:aws:health:us-west-2::event/EC2/1")];
        assert_eq!(held_message(&issues, &regions(&["us-east-1"]), (1, 2)), None);
        let message = held_message(&issues, &regions(&["us-east-1", "us-west-2"]), (2, 2))
            .expect("the batch in us-west-2 is held");
        assert!(message.starts_with("update held before batch 2 of 2: 1 open health issue in us-west-2 (region held: us-west-2)"), "{message}");
        assert!(
            message.contains(
                "AWS_EC2_OPERATIONAL_ISSUE in us-west-2 since 2026-12-03T19:00:00Z (arn:aws:health:us-west-2::event/EC2/1)"
            ),
            "{message}"
        );
        assert!(message.contains("--ignore-health"), "{message}");
        assert!(message.contains("); batch 1 was rolled out and keeps its version\n"), "{message}");
        let first = held_message(&issues, &regions(&["us-west-2"]), (1, 3)).expect("held");
        assert!(first.contains("); no batch was rolled out\n"), "{first}");
        let third = held_message(&issues, &regions(&["us-west-2"]), (3, 3)).expect("held");
        assert!(
            third.contains("); batches 1 to 2 were rolled out and keep their version\n"),
            "{third}"
        );
    }

    #[test]
    fn every_open_issue_of_the_batch_is_named_grouped_by_region() {
        let issues = [
            issue("us-west-2", "arn:b"),
            issue("eu-west-1", "arn:a"),
            issue("us-west-2", "arn:c"),
            issue("ap-south-1", "arn:elsewhere"),
        ];
        let message =
            held_message(&issues, &regions(&["us-west-2", "eu-west-1"]), (1, 1)).expect("held");
        assert!(
            message.contains("3 open health issues in eu-west-1, us-west-2 (regions held"),
            "{message}"
        );
        assert!(!message.contains("arn:elsewhere"), "{message}");
        let lines: Vec<&str> = message.lines().filter(|l| l.starts_with("  ")).collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].contains("arn:a") && lines[1].contains("arn:b") && lines[2].contains("arn:c")
        );
    }
}
