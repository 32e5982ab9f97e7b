//! Which client addresses the appliance serves: the `[access] allow` list.
//!
//! A leaf: DNS, HTTPS and admin listeners all ask [`AccessList::allows`] before doing any work, so the
//! appliance is never an open resolver or an open proxy.

use std::net::IpAddr;

use ipnet::IpNet;

/// The networks served when `access.allow` is empty: loopback and private ranges.
pub const DEFAULT_ALLOW: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
];

/// A list of client networks; an address is served when any network contains it.
#[derive(Clone, Debug)]
pub struct AccessList {
    /// Never empty: an empty configured list is replaced by [`DEFAULT_ALLOW`].
    nets: Vec<IpNet>,
}

impl AccessList {
    /// The list `nets`, or the default list when `nets` is empty.
    pub fn new(nets: Vec<IpNet>) -> Self {
        if nets.is_empty() {
            Self::default()
        } else {
            Self { nets }
        }
    }

    /// Whether a client at `ip` is served (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The networks, for hickory's access control.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

impl Default for AccessList {
    fn default() -> Self {
        let nets = DEFAULT_ALLOW
            .iter()
            .map(|net| net.parse().expect("DEFAULT_ALLOW entries are valid CIDRs"))
            .collect();
        Self { nets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_serves_loopback_and_private_ranges_only() {
        let acl = AccessList::new(vec![]);
        for ok in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(acl.allows(ok.parse().unwrap()), "{ok} should be allowed");
        }
        for no in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "198.51.100.1"] {
            assert!(!acl.allows(no.parse().unwrap()), "{no} should be refused");
        }
    }

    #[test]
    fn explicit_list_replaces_default() {
        let acl = AccessList::new(vec!["198.51.100.0/24".parse().unwrap()]);
        assert!(acl.allows("198.51.100.7".parse().unwrap()));
        assert!(!acl.allows("127.0.0.1".parse().unwrap()));
    }
}
