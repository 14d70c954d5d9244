//! A machine whose agent never answered while its instance ran: what it booted and what that
//! must hold.
//!
//! flotilla's boot script reaches an instance as its user data; cloud-init runs it, and it
//! installs the agent as a systemd unit. An image without cloud-init boots, runs, and never
//! runs the script; one without systemd runs it and has nothing to start the agent with.
//! Either way nothing fails that EC2 can see: the instance runs and its agent never answers.
//! So when the wait for an agent runs out, the failure names the instance, its image (id, and
//! name: from `prepare`'s resolution when this command resolved it, else from
//! DescribeImages), says what the image needs, and how to read the instance's boot output.
//! Read-only, and never an error of its own: what cannot be read is said as such.

use flotilla_core::provider::Machine;

use crate::AwsProvider;
use crate::instances::describe;

/// What an image must hold for flotilla's boot to start an agent, and how to look.
fn requirement(instance_id: &str, region: &str) -> String {
    format!(
        "flotilla's boot script comes as the instance's user data and needs cloud-init (to run it) and systemd (to run the agent) in the image; read the instance's boot output with `aws ec2 get-console-output --instance-id {instance_id} --region {region} --latest --output text`"
    )
}

/// The explanation for `machine` ([`flotilla_core::provider::Provider::explain_silent_agent`]).
pub async fn explain(provider: &AwsProvider, machine: &Machine) -> String {
    let (id, region) = (machine.id.as_str(), machine.region.as_str());
    let ids = [machine.id.clone()];
    let image = match describe(&provider.clients, region, &provider.tag, None, Some(&ids)).await {
        Ok(found) => match found.into_iter().find(|f| f.id == id).and_then(|f| f.image_id) {
            Some(image_id) => describe_image(provider, region, &image_id).await,
            None => "an image DescribeInstances does not name".to_owned(),
        },
        Err(error) => format!("an image that could not be read ({error})"),
    };
    format!("it booted {image} in {region}; {}", requirement(id, region))
}

/// `image ami-… (NAME)`, or the id alone with why the name is unknown.
async fn describe_image(provider: &AwsProvider, region: &str, image_id: &str) -> String {
    let known = provider.prepared().ok().and_then(|s| s.image_names.get(image_id).cloned());
    let name = match known {
        Some(name) => Ok(name),
        None => crate::images::by_id(&provider.clients.ec2(region), region, image_id)
            .await
            .map(|facts| facts.name),
    };
    match name {
        Ok(name) if !name.is_empty() => format!("image {image_id} ({name})"),
        Ok(_) => format!("image {image_id} (without a name)"),
        Err(error) => format!("image {image_id} (its name could not be read: {error})"),
    }
}
