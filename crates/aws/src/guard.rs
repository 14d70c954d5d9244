//! The emulator address guard: under an emulator, the provider never hands the CLI a machine
//! address it must not send traffic to (an invented public address).

use std::net::{IpAddr, Ipv4Addr};

use flotilla_core::provider::{Machine, ProviderError};

use crate::clients::ADDRESS_MAP_VARIABLE;

/// Under an emulator, refuses machine addresses the CLI must not send traffic to: outside the
/// emulator's address map when one is given, else any address that is not loopback when the
/// endpoint is on this machine. An emulator's invented public addresses are never contacted.
pub fn check_reachable(
    endpoint: Option<&str>,
    address_map: Option<&str>,
    machine: &Machine,
) -> Result<(), ProviderError> {
    let address = machine.public_ip;
    if address.is_unspecified() {
        return Ok(()); // Not running yet: nothing to contact.
    }
    if let Some(map) = address_map {
        let mut inside = false;
        for block in map.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            inside |= cidr_contains(block, address).ok_or_else(|| {
                ProviderError::new(format!(
                    "{ADDRESS_MAP_VARIABLE}: `{block}` is not a CIDR block such as 127.201.0.0/24"
                ))
            })?;
        }
        if !inside {
            return Err(ProviderError::new(format!(
                "{}: machine {} has the address {address}, outside the emulator's address map ({ADDRESS_MAP_VARIABLE}={map}); refusing to connect",
                machine.region, machine.name
            )));
        }
        return Ok(());
    }
    let Some(endpoint) = endpoint else { return Ok(()) };
    let host =
        endpoint.split("://").nth(1).unwrap_or(endpoint).split(['/', ':']).next().unwrap_or("");
    let local_endpoint =
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if local_endpoint && !address.is_loopback() {
        return Err(ProviderError::new(format!(
            "{}: the emulator at {endpoint} gave machine {} the address {address}, which is not on this machine; refusing to connect (start the emulator with `flotilla-emulator up`, which hands out loopback addresses)",
            machine.region, machine.name
        )));
    }
    Ok(())
}

/// Whether the IPv4 block `cidr` (`a.b.c.d/n`) holds `address`; `None` if `cidr` is malformed.
pub fn cidr_contains(cidr: &str, address: IpAddr) -> Option<bool> {
    let (network, bits) = cidr.split_once('/')?;
    let network: Ipv4Addr = network.parse().ok()?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 32)?;
    let IpAddr::V4(address) = address else { return Some(false) };
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    Some(u32::from(address) & mask == u32::from(network) & mask)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use flotilla_core::provider::{MachineState, Role};
    use flotilla_spec::bootstrap::DEFAULT_API_PORT;

    use super::*;

    fn machine(ip: &str) -> Machine {
        let public_ip: IpAddr = ip.parse().unwrap();
        Machine {
            name: "n".into(),
            role: Role::Binary,
            region: "r".into(),
            id: "i-1".into(),
            public_ip,
            private_ip: public_ip,
            agent_endpoint: SocketAddr::new(public_ip, DEFAULT_API_PORT),
            state: MachineState::Running,
            state_reason: None,
            placement: None,
        }
    }

    #[test]
    fn an_emulator_on_loopback_may_only_hand_out_loopback_addresses() {
        let emulator = Some("http://127.0.0.1:5000");
        assert!(check_reachable(emulator, None, &machine("127.150.0.7")).is_ok());
        assert!(check_reachable(emulator, None, &machine("0.0.0.0")).is_ok(), "not yet running");
        let refused = check_reachable(emulator, None, &machine("54.214.1.2")).unwrap_err();
        assert!(
            refused.to_string().contains("not on this machine; refusing to connect"),
            "{refused}"
        );
        assert!(
            check_reachable(Some("http://localhost:5000/"), None, &machine("54.214.1.2")).is_err()
        );
        assert!(check_reachable(None, None, &machine("54.214.1.2")).is_ok(), "real AWS");
        assert!(
            check_reachable(Some("https://ec2.example.com"), None, &machine("54.214.1.2")).is_ok()
        );
    }

    #[test]
    fn an_address_map_admits_only_its_blocks() {
        let map = Some("127.201.3.0/24, 127.202.0.0/16");
        let emulator = Some("http://127.0.0.1:5000");
        assert!(check_reachable(emulator, map, &machine("127.201.3.9")).is_ok());
        assert!(check_reachable(emulator, map, &machine("127.202.77.1")).is_ok());
        assert!(check_reachable(emulator, map, &machine("0.0.0.0")).is_ok(), "not yet running");
        let refused = check_reachable(emulator, map, &machine("127.201.4.9")).unwrap_err();
        assert!(refused.to_string().contains("outside the emulator's address map"), "{refused}");
        assert!(check_reachable(None, map, &machine("54.214.1.2")).is_err());
        let bad = check_reachable(emulator, Some("127.201.3.0"), &machine("127.201.3.9"));
        assert!(bad.unwrap_err().to_string().contains("is not a CIDR block"));
        assert_eq!(cidr_contains("0.0.0.0/0", "8.8.8.8".parse().unwrap()), Some(true));
        assert_eq!(cidr_contains("10.0.0.1/32", "10.0.0.1".parse().unwrap()), Some(true));
        assert_eq!(cidr_contains("10.0.0.1/33", "10.0.0.1".parse().unwrap()), None);
    }
}
