//! The tags flotilla puts on every AWS resource it makes, and the helpers that write and read
//! them. Tags are the truth: `destroy --tag` finds everything by [`TAG_DEPLOYMENT`], and a
//! re-run after a crash finds its instances by deployment, group and machine name.
//!
//! Beside flotilla's own tags, every resource carries the spec's `tags` ([`UserTags`], set once
//! per command by `prepare` with [`set_user_tags`]): a resource of one capacity group (its
//! instances, volumes, fleets and launch templates, recognised by the [`TAG_GROUP`] tag their
//! tag specification carries) gets that group's merged tags; everything the deployment shares
//! (VPCs, subnets, gateways, the main route table of a VPC it made, security groups, peerings,
//! the role and its instance profile, the deployment's S3 objects) gets the spec's top-level
//! `tags`, which are also the monitoring machine's. The bucket is shared by every deployment of a
//! `$FLOTILLA_HOME`, so it carries no deployment's tags. flotilla's own tags win
//! a clash (the spec already refuses `Name`, `flotilla:` and `aws:` keys). Kept per deployment
//! tag in the process, so every helper below applies them without each caller passing them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

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
/// Tag key naming the dedicated host pool (`host_pools:`) a host was allocated for.
pub const TAG_HOST_POOL: &str = "flotilla:host-pool";

/// The spec's extra tags of one deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserTags {
    /// On what the deployment shares: the spec's top-level `tags`.
    pub shared: BTreeMap<String, String>,
    /// Capacity group → its merged tags (the top's with the entry's over them).
    pub groups: BTreeMap<String, BTreeMap<String, String>>,
}

impl UserTags {
    /// The extra tags of a resource whose own tags are `own`: its group's when `own` names
    /// one, else the shared ones; a key flotilla sets itself is left out.
    pub fn for_resource<'t>(&'t self, own: &[(&str, &str)]) -> Vec<(&'t str, &'t str)> {
        let group = own.iter().find(|(key, _)| *key == TAG_GROUP).map(|(_, value)| *value);
        let tags = group.and_then(|g| self.groups.get(g)).unwrap_or(&self.shared);
        tags.iter()
            .filter(|(key, _)| !is_own_key(key) && !own.iter().any(|(k, _)| k == key))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// Whether flotilla sets tag `key` itself.
fn is_own_key(key: &str) -> bool {
    key == "Name" || key.starts_with("flotilla:") || key.starts_with("aws:")
}

fn registry() -> &'static Mutex<HashMap<String, UserTags>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, UserTags>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Sets the spec's extra tags of deployment `tag` for the rest of the process.
pub fn set_user_tags(tag: &str, tags: UserTags) {
    registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(tag.to_owned(), tags);
}

/// The spec's extra tags of deployment `tag` (none before `prepare` set them).
pub fn user_tags(tag: &str) -> UserTags {
    registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(tag)
        .cloned()
        .unwrap_or_default()
}

/// The shared extra tags of deployment `tag`, as pairs (for IAM and S3, which have their own
/// tag types).
pub fn shared_user_tags(tag: &str) -> Vec<(String, String)> {
    let tags = user_tags(tag);
    tags.for_resource(&[]).into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// A tag specification with the deployment tag, a `Name` (`name`, shortened with a hash when it
/// is longer than a tag value may be), `extra` tags and the spec's extra tags (see the module
/// documentation).
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
    let user = user_tags(tag);
    for (key, value) in user.for_resource(extra) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(spec: &TagSpecification) -> Vec<(String, String)> {
        spec.tags()
            .iter()
            .map(|t| {
                (t.key().unwrap_or_default().to_owned(), t.value().unwrap_or_default().to_owned())
            })
            .collect()
    }

    #[test]
    fn group_resources_get_their_groups_tags_and_shared_ones_the_top_level_tags() {
        let tag = "tags-unit-test";
        let pairs = |items: &[(&str, &str)]| -> BTreeMap<String, String> {
            items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        set_user_tags(
            tag,
            UserTags {
                shared: pairs(&[("Team", "infra")]),
                groups: [("worker".to_owned(), pairs(&[("Team", "core"), ("CostCenter", "4711")]))]
                    .into(),
            },
        );
        let vpc = tag_spec(ResourceType::Vpc, tag, "flotilla-x", &[]);
        assert!(keys(&vpc).contains(&("Team".into(), "infra".into())), "{:?}", keys(&vpc));
        assert!(keys(&vpc).contains(&(TAG_DEPLOYMENT.into(), tag.into())));
        let instance = tag_spec(ResourceType::Instance, tag, "n", &[(TAG_GROUP, "worker")]);
        let got = keys(&instance);
        assert!(got.contains(&("Team".into(), "core".into())), "{got:?}");
        assert!(got.contains(&("CostCenter".into(), "4711".into())), "{got:?}");
        assert!(!got.contains(&("Team".into(), "infra".into())), "{got:?}");
        // flotilla's own tags win a clash.
        set_user_tags(
            tag,
            UserTags {
                shared: pairs(&[("Name", "mine"), ("flotilla:group", "x")]),
                groups: BTreeMap::new(),
            },
        );
        let got = keys(&tag_spec(ResourceType::Vpc, tag, "flotilla-x", &[]));
        assert_eq!(got.iter().filter(|(k, _)| k == "Name").count(), 1, "{got:?}");
        assert!(!got.iter().any(|(k, _)| k == "flotilla:group"), "{got:?}");
    }
}
