//! Defaults taken from the host: its primary IPv4 address and the resolvers of /etc/resolv.conf.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;

/// The address this host uses to reach the outside: the source address the kernel picks for a
/// route to a documentation address (a UDP `connect` sends nothing). `None` without a route.
pub fn primary_ipv4() -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:53").ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// The `nameserver` lines of a resolv.conf, as port-53 addresses, skipping any for which
/// `is_ours` says the address is this appliance (forwarding to ourselves would loop).
pub fn resolv_conf_nameservers(path: &Path, is_ours: impl Fn(IpAddr) -> bool) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    parse_nameservers(&text)
        .into_iter()
        .filter(|ip| !is_ours(*ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| ip.split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameserver_lines_only() {
        let text = "# comment\nsearch lan\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\n\
                    nameserver bogus\noptions ndots:2\n";
        let ips = parse_nameservers(text);
        assert_eq!(
            ips,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn our_own_addresses_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 127.0.0.1\nnameserver 10.9.9.9\n").unwrap();
        let got = resolv_conf_nameservers(&path, |ip| ip.is_loopback());
        assert_eq!(got, ["10.9.9.9:53".parse().unwrap()]);
    }
}
