//! `[fleet]`: the appliances that share one upstream fetch per object (`peers`, `node`,
//! `peer_timeout`), checked at load like every other key; see `proxy/peer.rs` for what they do.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Validator;
use super::values::parse_timeout;

/// `peer_timeout` when not given.
const DEFAULT_PEER_TIMEOUT: &str = "10s";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    #[serde(default)]
    pub(super) peers: Vec<Spanned<String>>,
    pub(super) node: Option<Spanned<String>>,
    pub(super) peer_timeout: Option<Spanned<String>>,
}

/// The `[fleet]` table. No peers: no fleet (every cold object is fetched upstream here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// `host:port` of every appliance's HTTPS listener, this one's included; no duplicates.
    pub peers: Vec<String>,
    /// This appliance's own entry of `peers` (empty when `peers` is).
    pub node: String,
    /// Bounds the connection to a peer and each wait for its bytes; then this appliance takes
    /// over from the upstream.
    pub peer_timeout: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            node: String::new(),
            peer_timeout: Duration::from_secs(10),
        }
    }
}

impl FleetConfig {
    /// Whether this appliance is one of a fleet.
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty()
    }
}

/// Why a peer address was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum PeerError {
    #[error("write host:port, e.g. \"10.0.0.11:443\" or \"[fd00::11]:443\"")]
    Form,
    #[error("listed twice")]
    Twice,
}

/// `host:port` with a port from 1 to 65535 (an IPv6 host in brackets).
fn parse_peer(s: &str) -> Result<String, PeerError> {
    let (host, port) = s.rsplit_once(':').ok_or(PeerError::Form)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => !host.is_empty() && !host.contains([':', '/', ' ', '@']),
    };
    match port_ok && host_ok {
        true => Ok(s.to_ascii_lowercase()),
        false => Err(PeerError::Form),
    }
}

impl Validator<'_> {
    pub(super) fn fleet(&mut self, raw: RawFleet) -> FleetConfig {
        let RawFleet {
            peers,
            node,
            peer_timeout,
        } = raw;
        let mut seen: Vec<String> = Vec::new();
        for item in &peers {
            let checked = parse_peer(item.get_ref()).and_then(|peer| match seen.contains(&peer) {
                true => Err(PeerError::Twice),
                false => Ok(peer),
            });
            match checked {
                Ok(peer) => seen.push(peer),
                Err(e) => self.problem(item, format!("fleet.peers: {:?}: {e}", item.get_ref())),
            }
        }
        let node_text = node.as_ref().map(|n| n.get_ref().to_ascii_lowercase());
        match (&node, node_text.filter(|n| !n.is_empty()), peers.first()) {
            (_, None, Some(first)) => self.problem(
                first,
                "fleet.peers: set fleet.node to this appliance's own entry".into(),
            ),
            (Some(at), Some(_), None) => self.problem(
                at,
                "fleet.node: fleet.peers is empty: list every appliance there".into(),
            ),
            (Some(at), Some(n), Some(_)) if !seen.contains(&n) && seen.len() == peers.len() => {
                let text = format!("fleet.node: {n:?} is not one of fleet.peers");
                self.problem(at, text);
            }
            _ => {}
        }
        let timeout = self.value(
            "fleet.peer_timeout",
            peer_timeout,
            DEFAULT_PEER_TIMEOUT,
            parse_timeout,
        );
        let node = node.map(|n| n.into_inner().to_ascii_lowercase());
        FleetConfig {
            node: node.unwrap_or_default(),
            peers: seen,
            peer_timeout: timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::problems;
    use crate::config::{parse, Source};

    #[test]
    fn no_fleet_unless_configured() {
        let c = parse("", Source::Embedded).unwrap();
        assert!(!c.fleet.enabled());
        assert_eq!(c.fleet.peer_timeout.as_secs(), 10);
    }

    #[test]
    fn a_fleet_is_read() {
        let text =
            "[fleet]\npeers = [\"10.0.0.11:443\", \"Cache-2.site:443\", \"[fd00::3]:8443\"]\n\
                    node = \"cache-2.site:443\"\npeer_timeout = \"3s\"\n";
        let c = parse(text, Source::Embedded).unwrap();
        assert!(c.fleet.enabled());
        let peers = ["10.0.0.11:443", "cache-2.site:443", "[fd00::3]:8443"];
        assert_eq!(c.fleet.peers, peers);
        assert_eq!(c.fleet.node, "cache-2.site:443");
        assert_eq!(c.fleet.peer_timeout.as_secs(), 3);
    }

    #[test]
    fn every_bad_value_names_its_line() {
        let text = "[fleet]\npeers = [\n\"10.0.0.1:443\",\n\"nonsense\",\n\"10.0.0.1:443\",\n\
                    \"[fd00::1:443\",\n\"h:0\"]\nnode = \"10.0.0.9:443\"\npeer_timeout = \"0s\"\n";
        let p = problems(text);
        let lines: Vec<usize> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, [4, 5, 6, 7, 9], "{p:?}");
        assert!(p[0].message.contains("host:port"), "{}", p[0].message);
        assert!(p[1].message.contains("listed twice"), "{}", p[1].message);
        assert!(
            p[4].message.contains("fleet.peer_timeout"),
            "{}",
            p[4].message
        );
        // Only once the peers are valid can a node be said to be missing from them.
        let p = problems("[fleet]\npeers = [\"a:1\", \"b:1\"]\nnode = \"c:1\"\n");
        assert_eq!((p.len(), p[0].line), (1, 3), "{p:?}");
        assert!(p[0].message.contains("not one of fleet.peers"), "{p:?}");
    }

    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../README.md");
        let section = readme.split("(`[fleet]`)").nth(1).unwrap();
        let example = section.split("```toml\n").nth(1).unwrap();
        let example = example.split("```").next().unwrap();
        let c = parse(example, Source::Embedded).unwrap();
        assert_eq!(
            (c.fleet.peers.len(), c.fleet.node.as_str()),
            (3, "10.0.0.12:443")
        );
        assert!(c.access.allows("10.0.0.11".parse().unwrap()));
    }

    #[test]
    fn peers_and_node_go_together() {
        let p = problems("[fleet]\npeers = [\"a:1\"]\n");
        assert_eq!(p[0].line, 2);
        assert!(p[0].message.contains("fleet.node"), "{p:?}");
        let p = problems("[fleet]\nnode = \"a:1\"\n");
        assert_eq!(p[0].line, 2);
        assert!(p[0].message.contains("peers is empty"), "{p:?}");
        assert!(!parse("[fleet]\nnode = \"\"\n", Source::Embedded)
            .unwrap()
            .fleet
            .enabled());
    }
}
