//! The tags flotilla puts on every AWS resource it makes, and the helpers that write and read
//! them. Tags are the truth: `destroy --tag` finds everything by [`TAG_DEPLOYMENT`], and a
//! re-run after a crash finds its instances by deployment, group and machine name.

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use flotilla_spec::names::ec2_name_tag;

/// Tag key naming the deployment on every resource.
pub const TAG_DEPLOYMENT: &str = "flotilla:deployment";
/// Tag key naming the role (`binary` or `monitoring`) on instances.
pub const TAG_ROLE: &str = "flotilla:role";
/// Tag key naming the capacity group (the instance entry, or `monitoring`) on instances,
/// volumes, fleets and launch templates.
pub const TAG_GROUP: &str = "flotilla:group";
/// Tag key naming the fleet request that launched an instance, so that an answer lost to a
/// timeout is found again instead of launched twice.
pub const TAG_REQUEST: &str = "flotilla:request";
/// Tag key naming the machine an instance is, set once the name is journaled.
pub const TAG_MACHINE: &str = "flotilla:machine";

/// A tag specification with the deployment tag, a `Name` (`name`, shortened with a hash when it
/// is longer than a tag value may be) and `extra` tags.
pub fn tag_spec(
    resource: ResourceType,
    tag: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> TagSpecification {
    let mut spec = TagSpecification::builder()
        .resource_type(resource)
        .tags(tag_of(TAG_DEPLOYMENT, tag))
        .tags(tag_of("Name", &ec2_name_tag(name)));
    for (key, value) in extra {
        spec = spec.tags(tag_of(key, value));
    }
    spec.build()
}

/// One EC2 tag.
pub fn tag_of(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// The filter matching resources of deployment `tag`.
pub fn tag_filter(tag: &str) -> Filter {
    filter(&format!("tag:{TAG_DEPLOYMENT}"), tag)
}

/// A filter on `name` with one value.
pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// Whether `tags` carry deployment `tag`. Every deletion and adoption checks it on top of the
/// Describe call's filter: acting on another deployment's resource because an API (or an
/// emulator) ignored a filter must not be possible.
pub fn tagged(tags: &[Tag], tag: &str) -> bool {
    tags.iter().any(|t| t.key() == Some(TAG_DEPLOYMENT) && t.value() == Some(tag))
}

/// The value of tag `key` in `tags`.
pub fn value_of<'t>(tags: &'t [Tag], key: &str) -> Option<&'t str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}
