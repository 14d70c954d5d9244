//! Rereading hosts.yaml on SIGHUP: the flotilla agent replaces the file in place (a rename, so
//! it is read whole, old or new) when the fleet's membership changes, and with
//! `on_hosts_change: {signal: SIGHUP}` signals the program instead of restarting it.
//!
//! A reread that succeeds replaces the view's membership ([`crate::view::View::set_hosts`]) and
//! logs one line: `node-0 reloaded hosts.yaml: 7 peers (added node-5, node-6; removed node-2)`.
//! One that fails (the file cannot be read, is not valid, or no longer lists this node) is
//! logged with the reason and changes nothing: the node keeps gossiping with its old peers and
//! stays healthy. Both are counted in `fleet_app_hosts_reloads_total{outcome}`.

use std::path::Path;

use crate::app::App;
use crate::hosts::{Host, parse_hosts};
use crate::log::log;
use crate::metrics::ReloadOutcome;
use crate::view::HostsChange;

/// Rereads the hosts file `app` was started with and applies it, or logs why not.
pub fn reload_hosts(app: &App) {
    // Read and check outside the lock: the file is small, but gossip should not wait on a disk.
    match read_hosts(&app.hosts_path, &app.name) {
        Ok(hosts) => {
            let (change, peers) = {
                let mut view = app.view();
                let change = view.set_hosts(&hosts);
                (change, view.peer_count())
            };
            app.metrics.count_reload(ReloadOutcome::Ok);
            log!("{}", reloaded_line(&app.name, peers, &change));
        }
        Err(reason) => {
            app.metrics.count_reload(ReloadOutcome::Failed);
            let peers = app.view().peer_count();
            log!("{} cannot reload hosts.yaml, keeping its {peers} peers: {reason}", app.name);
        }
    }
}

/// Every host in the file at `path`, if it is a valid hosts.yaml that still lists `me`.
pub fn read_hosts(path: &Path, me: &str) -> Result<Vec<Host>, String> {
    let text = fs_err::read_to_string(path).map_err(|error| error.to_string())?;
    let hosts = parse_hosts(&text).map_err(|error| error.in_file(path))?;
    if hosts.find(me).is_none() {
        return Err(format!(
            "{} no longer lists {me} (it lists: {})",
            path.display(),
            hosts.names_listed()
        ));
    }
    Ok(hosts.hosts)
}

/// `node-0 reloaded hosts.yaml: 7 peers (added node-5, node-6; removed node-2)`.
pub fn reloaded_line(me: &str, peers: usize, change: &HostsChange) -> String {
    let noun = if peers == 1 { "peer" } else { "peers" };
    format!("{me} reloaded hosts.yaml: {peers} {noun} ({change})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn the_reload_line_names_the_count_and_the_change() {
        let change = HostsChange {
            added: names(&["node-5", "node-6"]),
            removed: names(&["node-2"]),
            moved: vec![],
        };
        assert_eq!(
            reloaded_line("node-0", 7, &change),
            "node-0 reloaded hosts.yaml: 7 peers (added node-5, node-6; removed node-2)"
        );
        assert_eq!(
            reloaded_line("node-3", 1, &HostsChange::default()),
            "node-3 reloaded hosts.yaml: 1 peer (unchanged)"
        );
    }

    #[test]
    fn a_file_that_no_longer_lists_this_node_is_refused() {
        let dir = std::env::temp_dir().join(format!("fleet-app-reload-{}", std::process::id()));
        fs_err::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts.yaml");
        fs_err::write(
            &path,
            "monitoring: {public: 127.0.0.9, private: 127.0.0.9}\nhosts:\n\
             - {name: n0, region: local, ip: 127.0.0.1}\n\
             - {name: n1, region: local, ip: 127.0.0.2}\n",
        )
        .unwrap();
        let listed = read_hosts(&path, "n1").map(|hosts| hosts.len());
        let refused = read_hosts(&path, "n7");
        fs_err::write(&path, "monitoring: {public: 127.0.0.9, private: 127.0.0.9}\nhosts: 7\n")
            .unwrap();
        let invalid = read_hosts(&path, "n1");
        fs_err::remove_dir_all(&dir).unwrap();
        let missing = read_hosts(&path, "n1");

        assert_eq!(listed, Ok(2));
        assert_eq!(
            refused,
            Err(format!("{} no longer lists n7 (it lists: n0, n1)", path.display()))
        );
        assert_eq!(invalid, Err(format!("{}:2: hosts: expected a list of hosts", path.display())));
        let missing = missing.unwrap_err();
        assert!(missing.contains(&path.display().to_string()), "names the path: {missing}");
    }
}
