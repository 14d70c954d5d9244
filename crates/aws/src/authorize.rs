//! `flotilla authorize`: another address let in to (or, with `--revoke`, shut out of) the agent
//! port of every security group of a deployment, and remembered so that `prepare` keeps it.

use std::net::Ipv4Addr;

use flotilla_core::provider::ProviderError;
use flotilla_spec::bootstrap::DEFAULT_API_PORT;

use crate::clients::Clients;
use crate::error::AwsError;
use crate::journal::Journal;
use crate::network;
use crate::tags::{tag_filter, tagged};

/// Adds (or with `revoke`, removes) the agent port rule for `ip` on every security group of
/// deployment `tag` in `regions`, and records it among the addresses `prepare` keeps (or forgets
/// it). The record changes first, so a crash in between leaves the intent, which the next
/// `authorize` or `prepare` carries out. Returns the groups changed.
pub async fn authorize(
    clients: &Clients,
    journal: &Journal,
    tag: &str,
    regions: &[String],
    ip: Ipv4Addr,
    revoke: bool,
) -> Result<usize, ProviderError> {
    journal.update(|r| {
        if revoke {
            r.authorized.remove(&ip);
        } else {
            r.authorized.insert(ip);
        }
    })?;
    let cidr = format!("{ip}/32");
    let port = Some(i32::from(DEFAULT_API_PORT));
    let rule = network::Rule::new("tcp", port, port, &cidr);
    let mut changed = 0;
    for region in regions {
        let ec2 = clients.ec2(region);
        let groups =
            ec2.describe_security_groups().filters(tag_filter(tag)).send().await.map_err(|e| {
                AwsError::from_sdk(region, "DescribeSecurityGroups", format!("deployment {tag}"), e)
            })?;
        for group in groups.security_groups().iter().filter(|g| tagged(g.tags(), tag)) {
            let Some(id) = group.group_id() else { continue };
            let present = group.ip_permissions().iter().any(|p| {
                let protocol = p.ip_protocol().unwrap_or("-1");
                p.ip_ranges()
                    .iter()
                    .filter_map(|r| r.cidr_ip())
                    .any(|c| network::Rule::new(protocol, p.from_port(), p.to_port(), c) == rule)
            });
            let change = match (revoke, present) {
                (true, true) => network::Change::Revoke,
                (false, false) => network::Change::Authorize,
                _ => continue,
            };
            let permission = network::permission(
                "tcp",
                DEFAULT_API_PORT,
                &cidr,
                network::AGENT_RULE_DESCRIPTION,
            );
            network::change_ingress(&ec2, region, id, change, vec![permission]).await?;
            changed += 1;
        }
    }
    Ok(changed)
}
