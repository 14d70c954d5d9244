//! What the lifecycle engine knows about the machine it runs on, read from IMDS: only the
//! paths it needs (ec2fleetd walked ~54 of them, credentials included), each with the
//! client's timeout, so a broken IMDS fails the read instead of hanging it.

use std::net::IpAddr;

use crate::imds::ImdsClient;

/// The machine's metadata, as IMDS gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ImdsFacts {
    pub(crate) instance_id: String,
    pub(crate) instance_type: String,
    pub(crate) region: String,
    pub(crate) zone: String,
    pub(crate) public_ipv4: Option<IpAddr>,
    pub(crate) private_ipv4: Option<IpAddr>,
    pub(crate) ipv6: Option<String>,
    pub(crate) launch_index: Option<u32>,
    pub(crate) hypervisor: String,
}

impl ImdsFacts {
    /// The macro values these facts give (ec2fleetd's names).
    pub(crate) fn macro_values(&self) -> Vec<(&'static str, String)> {
        let public = self.public_ipv4.map(|ip| ip.to_string()).unwrap_or_default();
        let ipv6 = self.ipv6.clone().unwrap_or_default();
        vec![
            ("instance_id", self.instance_id.clone()),
            ("instance_type", self.instance_type.clone()),
            ("placement_region", self.region.clone()),
            ("placement_zone", self.zone.clone()),
            ("hypervisor", self.hypervisor.clone()),
            ("primary_public_ipv4", public.clone()),
            ("public_ipv4_list", public),
            ("primary_public_ipv6", ipv6.clone()),
            ("public_ipv6_list", ipv6),
        ]
    }
}

/// Reads the facts. The instance id and the zone are required (every cloud call names them);
/// the rest may be missing (no public address, no IPv6).
pub(crate) async fn read_facts(client: &mut ImdsClient) -> Result<ImdsFacts, String> {
    let mut get = async |path: &str| -> Result<Option<String>, String> {
        client
            .get(&format!("/latest/meta-data/{path}"))
            .await
            .map(|body| body.map(|b| b.trim().to_owned()).filter(|b| !b.is_empty()))
            .map_err(|e| e.to_string())
    };
    let instance_id = get("instance-id").await?.ok_or("IMDS has no instance-id")?;
    let zone = get("placement/availability-zone").await?.ok_or("IMDS has no availability zone")?;
    let region = match get("placement/region").await? {
        Some(region) => region,
        // The zone is the region and a letter.
        None => zone.trim_end_matches(|c: char| c.is_ascii_alphabetic()).to_owned(),
    };
    Ok(ImdsFacts {
        instance_id,
        instance_type: get("instance-type").await?.unwrap_or_default(),
        region,
        zone,
        public_ipv4: get("public-ipv4").await?.and_then(|ip| ip.parse().ok()),
        private_ipv4: get("local-ipv4").await?.and_then(|ip| ip.parse().ok()),
        ipv6: get("ipv6").await?,
        launch_index: get("ami-launch-index").await?.and_then(|i| i.parse().ok()),
        hypervisor: get("system").await?.unwrap_or_default(),
    })
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), shortened: with the machine's name it
/// makes the transaction id of a fleet machine, the same for every agent run of one boot.
pub(crate) fn boot_id() -> String {
    fs_err::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().replace('-', "").chars().take(12).collect())
        .unwrap_or_else(|_| "boot".to_owned())
}
