//! Which client addresses the appliance serves: the `[access] allow` list.
//!
//! A leaf: DNS, HTTPS and admin listeners all ask [`AccessList::allows`] before doing any work, so the
//! appliance is never an open resolver or an open proxy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

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

/// A list of client networks; an address is served when any network contains it. The list holds
/// for IPv4 and IPv6 clients alike: a family with no entry is refused entirely.
#[derive(Clone, Debug)]
pub struct AccessList {
    /// Never empty: an empty configured list is replaced by [`DEFAULT_ALLOW`]. Canonical: an
    /// IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it maps.
    nets: Vec<IpNet>,
}

impl AccessList {
    /// The list `nets`, or the default list when `nets` is empty.
    pub fn new(nets: Vec<IpNet>) -> Self {
        if nets.is_empty() {
            Self::default()
        } else {
            let nets = nets.into_iter().map(canonical).collect();
            Self { nets }
        }
    }

    /// Whether a client at `ip` is served (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The networks.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// The list as hickory's `Server::with_access(handler, deny, allow)` needs it, so that hickory
    /// refuses exactly what [`AccessList::allows`] refuses.
    ///
    /// Hickory allows every address of a family that has no allow entry (an IPv4-only list would
    /// leave IPv6 clients an open resolver), so such a family gets a `/0` deny. A family that has
    /// allow entries gets no deny: hickory refuses the rest of it by itself, and an allow `/0`
    /// beside a deny `/0` of equal length would be denied.
    pub fn hickory_rules(&self) -> HickoryRules {
        let has_v4 = self.nets.iter().any(|n| matches!(n, IpNet::V4(_)));
        let has_v6 = self.nets.iter().any(|n| matches!(n, IpNet::V6(_)));
        let mut deny = Vec::new();
        if !has_v4 {
            deny.push(IpNet::V4(
                Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid"),
            ));
        }
        if !has_v6 {
            deny.push(IpNet::V6(
                Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).expect("/0 is valid"),
            ));
        }
        HickoryRules {
            deny,
            allow: self.nets.clone(),
        }
    }
}

/// Deny and allow networks for hickory's access control (see [`AccessList::hickory_rules`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HickoryRules {
    pub deny: Vec<IpNet>,
    pub allow: Vec<IpNet>,
}

/// `net`, or the IPv4 network it maps when it lies inside `::ffff:0:0/96` with a prefix of at
/// least 96 (peers are compared as IPv4 after [`IpAddr::to_canonical`]).
fn canonical(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else {
        return net;
    };
    match (
        v6.network().to_ipv4_mapped(),
        v6.prefix_len().checked_sub(96),
    ) {
        (Some(v4), Some(len)) => IpNet::V4(Ipv4Net::new(v4, len).expect("len <= 32")),
        _ => net,
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
    fn a_list_of_one_family_refuses_the_other() {
        let v4 = AccessList::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(v4.allows("127.0.0.1".parse().unwrap()));
        assert!(v4.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!v4.allows("::1".parse().unwrap()));
        let v6 = AccessList::new(vec!["::1/128".parse().unwrap()]);
        assert!(v6.allows("::1".parse().unwrap()));
        assert!(!v6.allows("127.0.0.1".parse().unwrap()));
        assert!(!v6.allows("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn mapped_networks_count_as_ipv4() {
        let acl = AccessList::new(vec!["::ffff:10.0.0.0/104".parse().unwrap()]);
        assert_eq!(acl.nets(), ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert!(acl.allows("10.1.2.3".parse().unwrap()));
        assert!(acl.allows("::ffff:10.1.2.3".parse().unwrap()));
        // A wider IPv6 net that only contains the mapped range stays IPv6.
        let wide = AccessList::new(vec!["::/0".parse().unwrap()]);
        assert!(wide.allows("2001:db8::1".parse().unwrap()));
        assert!(!wide.allows("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn hickory_rules_deny_each_family_without_allow_entries() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let v4 = AccessList::new(vec![net("127.0.0.1/32")]).hickory_rules();
        assert_eq!(v4.deny, [net("::/0")]);
        assert_eq!(v4.allow, [net("127.0.0.1/32")]);
        let v6 = AccessList::new(vec![net("::1/128")]).hickory_rules();
        assert_eq!(v6.deny, [net("0.0.0.0/0")]);
        // An allow /0 never meets a deny /0 of its own family.
        let all = AccessList::new(vec![net("0.0.0.0/0"), net("::/0")]).hickory_rules();
        assert!(all.deny.is_empty());
        let all_v4 = AccessList::new(vec![net("0.0.0.0/0")]).hickory_rules();
        assert_eq!(all_v4.deny, [net("::/0")]);
        assert!(AccessList::default().hickory_rules().deny.is_empty());
    }

    #[test]
    fn explicit_list_replaces_default() {
        let acl = AccessList::new(vec!["198.51.100.0/24".parse().unwrap()]);
        assert!(acl.allows("198.51.100.7".parse().unwrap()));
        assert!(!acl.allows("127.0.0.1".parse().unwrap()));
    }
}
