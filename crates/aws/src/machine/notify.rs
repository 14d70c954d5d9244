//! Notifications: SNS Publish and SQS SendMessage, one attempt per call (the engine retries on
//! its own schedule), in the notification's region.
//!
//! SNS's `Subject` must be ASCII, start with a letter, a digit or punctuation, hold no line
//! break or control character, and be under 100 characters: [`sns_subject`] makes it so
//! (control characters become spaces, other non-ASCII characters `?`, then it is trimmed and
//! cut), and an empty one is left out. On SQS the subject goes as the String message attribute
//! `subject` (ec2fleetd dropped it), left out when empty, as SQS refuses empty values.

use aws_sdk_sqs::types::MessageAttributeValue;
use flotilla_agent::{CloudError, Notification};
use flotilla_spec::fleetd::NotifyBackend;

use super::{AwsMachineCloud, own_error, sdk_error};

/// SNS's limit on a subject, in characters.
pub const SNS_SUBJECT_LIMIT: usize = 99;

/// See the module's description.
pub(crate) async fn send(
    cloud: &AwsMachineCloud,
    notification: &Notification,
) -> Result<(), CloudError> {
    let region = notification.region.as_str();
    match notification.backend {
        NotifyBackend::Sns => {
            let Some(topic) = notification.topic.as_deref() else {
                return Err(own_error("SNS Publish", "the notification has no topic", false));
            };
            let subject = sns_subject(&notification.subject);
            cloud
                .sns(region)
                .publish()
                .topic_arn(topic)
                .set_subject((!subject.is_empty()).then_some(subject))
                .message(&notification.body)
                .send()
                .await
                .map_err(|e| sdk_error(region, format!("SNS Publish to {topic}"), e))?;
        }
        NotifyBackend::Sqs => {
            let Some(queue) = notification.queue_url.as_deref() else {
                return Err(own_error(
                    "SQS SendMessage",
                    "the notification has no queue-url",
                    false,
                ));
            };
            let mut request =
                cloud.sqs(region).send_message().queue_url(queue).message_body(&notification.body);
            if !notification.subject.is_empty() {
                let attribute = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(&notification.subject)
                    .build()
                    .map_err(|e| own_error("SQS SendMessage", e.to_string(), false))?;
                request = request.message_attributes("subject", attribute);
            }
            request
                .send()
                .await
                .map_err(|e| sdk_error(region, format!("SQS SendMessage to {queue}"), e))?;
        }
    }
    Ok(())
}

/// The subject as SNS takes it (see the module's description).
pub fn sns_subject(subject: &str) -> String {
    let cleaned: String = subject
        .chars()
        .map(|c| match c {
            c if c.is_control() => ' ',
            c if c.is_ascii() => c,
            _ => '?',
        })
        .collect();
    cleaned.trim().chars().take(SNS_SUBJECT_LIMIT).collect::<String>().trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_made_acceptable_to_sns() {
        assert_eq!(
            sns_subject("Fleetd db on i-1 state changed to [started]"),
            "Fleetd db on i-1 state changed to [started]"
        );
        assert_eq!(sns_subject("  two\nlines\ttab  "), "two lines tab");
        assert_eq!(sns_subject("café ✓"), "caf? ?");
        assert_eq!(sns_subject(&"x".repeat(300)).len(), SNS_SUBJECT_LIMIT);
        assert_eq!(sns_subject(" \n "), "");
    }
}
