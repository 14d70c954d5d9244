//! Route 53: an `update-route53` entry points a name at this machine, and is undone at stop,
//! on interruption or as a rollback.
//!
//! An upsert first saves the record set of that name and type (`A` for an IPv4 address,
//! `AAAA` for IPv6), comparing names without case and with trailing dots normalised (Route 53
//! answers `www.example.com.`; ec2fleetd compared it with the name as written and so never
//! found a record written without the dot). Then it UPSERTs the record with the TTL and, when
//! asked, waits for `INSYNC` ([`super::waits`]). A record that already points here (a re-run)
//! is not changed, and its hold says the name held nothing else (the engine keeps the hold of
//! the first upsert, which knows what was there before).
//!
//! A restore acts only while the record still points at this machine's address: it UPSERTs the
//! saved record back, or DELETEs the record (with its exact current TTL and values, as DELETE
//! requires) when the name held nothing before. A record another machine has taken over since,
//! or one already gone, is left as it is. Alias records and records of other routing policies
//! (a set identifier) are never touched: an upsert over one is refused before any change.

use std::net::IpAddr;

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use flotilla_agent::{CloudError, PreviousRecord, RecordChange, RecordHold};

use super::waits::{INSYNC_WAIT, Poll, Poller};
use super::{AwsMachineCloud, ROUTE53_REGION, own_error, sdk_error};

/// See the module's description.
pub(crate) async fn upsert(
    cloud: &AwsMachineCloud,
    change: &RecordChange,
) -> Result<RecordHold, CloudError> {
    let record_type = record_type(change.address);
    let name = absolute(&change.name);
    let zone = zone_id(&change.hosted_zone);
    let address = change.address.to_string();
    let operation = format!("UPSERT {record_type} {name} in hosted zone {zone}");
    let current = find(cloud, zone, &name, &record_type).await?;
    let previous = match &current {
        Some(set) if set.alias_target().is_some() || set.set_identifier().is_some() => {
            return Err(own_error(
                operation,
                "the name holds an alias or a record with a routing policy; flotilla replaces only simple records",
                false,
            ));
        }
        Some(set) if values(set) == [address.clone()] => {
            // A re-run: the record already points here.
            if set.ttl() != Some(i64::from(change.ttl)) {
                send(
                    cloud,
                    zone,
                    ChangeAction::Upsert,
                    record(&name, &record_type, Some(change.ttl), &[address]),
                    change.wait_in_sync,
                    &operation,
                )
                .await?;
            }
            return Ok(RecordHold { change: change.clone(), previous: None });
        }
        Some(set) => Some(PreviousRecord {
            record_type: record_type.clone(),
            ttl: set.ttl().and_then(|t| u32::try_from(t).ok()),
            values: values(set),
        }),
        None => None,
    };
    send(
        cloud,
        zone,
        ChangeAction::Upsert,
        record(&name, &record_type, Some(change.ttl), &[address]),
        change.wait_in_sync,
        &operation,
    )
    .await?;
    Ok(RecordHold { change: change.clone(), previous })
}

/// See the module's description.
pub(crate) async fn restore(cloud: &AwsMachineCloud, hold: &RecordHold) -> Result<(), CloudError> {
    let change = &hold.change;
    let record_type = record_type(change.address);
    let name = absolute(&change.name);
    let zone = zone_id(&change.hosted_zone);
    let Some(current) = find(cloud, zone, &name, &record_type).await? else {
        return Ok(()); // restored (or removed) already
    };
    if values(&current) != [change.address.to_string()] {
        return Ok(()); // another machine holds the name now
    }
    match &hold.previous {
        Some(previous) => {
            let operation =
                format!("UPSERT {} {name} back in hosted zone {zone}", previous.record_type);
            let set = record(&name, &previous.record_type, previous.ttl, &previous.values);
            send(cloud, zone, ChangeAction::Upsert, set, change.wait_in_sync, &operation).await
        }
        None => {
            let operation = format!("DELETE {record_type} {name} in hosted zone {zone}");
            let ttl = current.ttl().and_then(|t| u32::try_from(t).ok());
            let set = record(&name, &record_type, ttl, &values(&current));
            match send(cloud, zone, ChangeAction::Delete, set, change.wait_in_sync, &operation)
                .await
            {
                // Deleted by someone else between the read and the change.
                Err(error)
                    if error.code.as_deref() == Some("InvalidChangeBatch")
                        && error.message.contains("not found") =>
                {
                    Ok(())
                }
                other => other,
            }
        }
    }
}

/// The record set of exactly `name` and `record_type`, if there is one.
async fn find(
    cloud: &AwsMachineCloud,
    zone: &str,
    name: &str,
    record_type: &str,
) -> Result<Option<ResourceRecordSet>, CloudError> {
    let answer = cloud
        .route53()
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .start_record_name(name)
        .start_record_type(RrType::from(record_type))
        .max_items(10)
        .send()
        .await
        .map_err(|e| {
            sdk_error(
                ROUTE53_REGION,
                format!("ListResourceRecordSets {name} in hosted zone {zone}"),
                e,
            )
        })?;
    Ok(answer
        .resource_record_sets()
        .iter()
        .find(|set| same_name(set.name(), name) && set.r#type().as_str() == record_type)
        .cloned())
}

/// ChangeResourceRecordSets with one change; then, when asked, the wait for `INSYNC`.
async fn send(
    cloud: &AwsMachineCloud,
    zone: &str,
    action: ChangeAction,
    set: Result<ResourceRecordSet, CloudError>,
    wait_in_sync: bool,
    operation: &str,
) -> Result<(), CloudError> {
    let invalid =
        |e: aws_sdk_route53::error::BuildError| own_error(operation, e.to_string(), false);
    let change =
        Change::builder().action(action).resource_record_set(set?).build().map_err(invalid)?;
    let batch = ChangeBatch::builder().changes(change).build().map_err(invalid)?;
    let answer = cloud
        .route53()
        .change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(batch)
        .send()
        .await
        .map_err(|e| sdk_error(ROUTE53_REGION, operation, e))?;
    let Some(info) = answer.change_info() else { return Ok(()) };
    if !wait_in_sync || info.status() == &ChangeStatus::Insync {
        return Ok(());
    }
    let id = info.id().to_owned();
    let mut poller = Poller::new(cloud.schedule(), Poll::Change, INSYNC_WAIT);
    loop {
        if !poller.next().await {
            return Err(own_error(
                operation,
                format!(
                    "change {id} was not INSYNC within {}",
                    humantime::format_duration(INSYNC_WAIT)
                ),
                true,
            ));
        }
        let status =
            cloud.route53().get_change().id(&id).send().await.map_err(|e| {
                sdk_error(ROUTE53_REGION, format!("GetChange {id} ({operation})"), e)
            })?;
        if status.change_info().is_some_and(|c| c.status() == &ChangeStatus::Insync) {
            return Ok(());
        }
    }
}

fn record(
    name: &str,
    record_type: &str,
    ttl: Option<u32>,
    values: &[String],
) -> Result<ResourceRecordSet, CloudError> {
    let invalid = |e: aws_sdk_route53::error::BuildError| {
        own_error(format!("{record_type} {name}"), e.to_string(), false)
    };
    let mut records = Vec::new();
    for value in values {
        records.push(ResourceRecord::builder().value(value).build().map_err(invalid)?);
    }
    ResourceRecordSet::builder()
        .name(name)
        .r#type(RrType::from(record_type))
        .set_ttl(ttl.map(i64::from))
        .set_resource_records(Some(records))
        .build()
        .map_err(invalid)
}

fn values(set: &ResourceRecordSet) -> Vec<String> {
    set.resource_records().iter().map(|r| r.value().to_owned()).collect()
}

/// `A` for an IPv4 address, `AAAA` for IPv6.
pub fn record_type(address: IpAddr) -> String {
    match address {
        IpAddr::V4(_) => "A".to_owned(),
        IpAddr::V6(_) => "AAAA".to_owned(),
    }
}

/// The name with exactly one trailing dot.
pub fn absolute(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// Whether two record names are the same: without case, trailing dots normalised.
pub fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// The hosted zone's id without the `/hostedzone/` prefix Route 53 sometimes gives it.
pub fn zone_id(zone: &str) -> &str {
    zone.trim_start_matches("/hostedzone/").trim_start_matches("hostedzone/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_with_trailing_dots_normalised() {
        assert!(same_name("www.example.com.", "www.example.com"));
        assert!(same_name("WWW.Example.com", "www.example.com."));
        assert!(!same_name("www.example.com.", "ww.example.com."));
        assert_eq!(absolute("a.example.com"), "a.example.com.");
        assert_eq!(absolute("a.example.com.."), "a.example.com.");
        assert_eq!(zone_id("/hostedzone/Z123"), "Z123");
        assert_eq!(zone_id("Z123"), "Z123");
        assert_eq!(record_type("10.0.0.1".parse().unwrap()), "A");
        assert_eq!(record_type("2001:db8::1".parse().unwrap()), "AAAA");
    }
}
