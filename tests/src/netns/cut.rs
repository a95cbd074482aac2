//! What a partition cuts, as one nftables table inside the namespace: its `input` and `output`
//! hooks see every packet the namespace sends or receives (loopback inside excepted), so one
//! table per namespace cuts it off without touching the root namespace's rules.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

/// The table every cut lives in (in the namespace's own nftables, so other namespaces and the
/// root namespace are untouched, and it goes away with the namespace).
pub const TABLE: &str = "presence_cut";

/// Which traffic of a namespace to cut, and how. Both directions are cut: what the namespace
/// sends to a target and what it receives from it.
///
/// ```
/// use presence_tests::netns::Cut;
/// use std::net::{Ipv4Addr, SocketAddr};
/// let etcd = SocketAddr::from((Ipv4Addr::new(10, 213, 0, 1), 2379));
/// // Off etcd and another node, still reachable by clients of the root namespace:
/// let cut = Cut::new().socket(etcd).host(Ipv4Addr::new(10, 213, 0, 6).into());
/// // Off everything, and failing fast instead of hanging:
/// let cut = Cut::everything().reject();
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    everything: bool,
    hosts: Vec<IpAddr>,
    sockets: Vec<SocketAddr>,
    own_ports: Vec<u16>,
    reject: bool,
}

impl Cut {
    /// Nothing cut yet: add targets with [`Cut::host`] and [`Cut::socket`].
    pub fn new() -> Cut {
        Cut::default()
    }

    /// Every packet in and out of the namespace (its own loopback excepted): off etcd, its
    /// peers and the root namespace's clients alike.
    pub fn everything() -> Cut {
        Cut {
            everything: true,
            ..Cut::default()
        }
    }

    /// All traffic with `ip` (e.g. another namespace's [`addr`](super::Netns::addr)). The
    /// namespace's own [`host_addr`](super::Netns::host_addr) is also the source of every
    /// root-namespace client: cutting it cuts them too; cut a service's socket instead.
    pub fn host(mut self, ip: IpAddr) -> Cut {
        self.hosts.push(ip);
        self
    }

    /// TCP and UDP with one service: packets the namespace sends to `addr` and packets it
    /// receives from `addr` (the service's answers).
    pub fn socket(mut self, addr: SocketAddr) -> Cut {
        self.sockets.push(addr);
        self
    }

    /// TCP and UDP with the namespace's own port `port` (a listener inside, e.g. a node's peer
    /// port): whoever connects to it, from wherever, while the namespace's other ports (e.g.
    /// its client port) stay reachable.
    pub fn own_port(mut self, port: u16) -> Cut {
        self.own_ports.push(port);
        self
    }

    /// Refuse instead of dropping (TCP reset, ICMP admin-prohibited otherwise): connections
    /// fail at once rather than hang. A partition drops silently; this is for tests that want
    /// the fast failure.
    pub fn reject(mut self) -> Cut {
        self.reject = true;
        self
    }

    /// An `nft -f` script that replaces the table with this cut in one transaction.
    pub(crate) fn script(&self) -> String {
        let mut input = Vec::new();
        let mut output = Vec::new();
        if self.everything {
            input.push(String::new());
            output.push(String::new());
        }
        for ip in &self.hosts {
            let family = family(ip);
            input.push(format!("{family} saddr {ip} "));
            output.push(format!("{family} daddr {ip} "));
        }
        for addr in &self.sockets {
            let (ip, port) = (addr.ip(), addr.port());
            let family = family(&ip);
            for proto in ["tcp", "udp"] {
                input.push(format!("{family} saddr {ip} {proto} sport {port} "));
                output.push(format!("{family} daddr {ip} {proto} dport {port} "));
            }
        }
        for port in &self.own_ports {
            for proto in ["tcp", "udp"] {
                input.push(format!("{proto} dport {port} "));
                output.push(format!("{proto} sport {port} "));
            }
        }
        let mut s = heal_script();
        let _ = writeln!(s, "table inet {TABLE} {{");
        for (chain, lo, matches) in [("input", "iifname", input), ("output", "oifname", output)] {
            let _ = writeln!(s, "  chain {chain} {{");
            let _ = writeln!(
                s,
                "    type filter hook {chain} priority filter; policy accept;"
            );
            let _ = writeln!(s, "    {lo} \"lo\" accept");
            for m in matches {
                if self.reject {
                    let _ = writeln!(s, "    {m}meta l4proto tcp reject with tcp reset");
                    let _ = writeln!(s, "    {m}reject with icmpx type admin-prohibited");
                } else {
                    let _ = writeln!(s, "    {m}drop");
                }
            }
            let _ = writeln!(s, "  }}");
        }
        let _ = writeln!(s, "}}");
        s
    }
}

/// An `nft -f` script that removes the table if it is there (adding an empty one first makes
/// the delete succeed either way; nft 1.0.6 has no `destroy`).
pub(crate) fn heal_script() -> String {
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
}

fn family(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ip6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_socket_cut_drops_both_directions_of_that_service_only() {
        let etcd = SocketAddr::from((Ipv4Addr::new(10, 213, 0, 1), 2379));
        let s = Cut::new().socket(etcd).script();
        assert!(s.starts_with(&heal_script()));
        assert!(s.contains("ip saddr 10.213.0.1 tcp sport 2379 drop"), "{s}");
        assert!(s.contains("ip daddr 10.213.0.1 tcp dport 2379 drop"), "{s}");
        assert!(s.contains("ip daddr 10.213.0.1 udp dport 2379 drop"), "{s}");
        assert!(!s.contains("reject"), "{s}");
    }

    #[test]
    fn everything_rejected_keeps_loopback() {
        let s = Cut::everything().reject().script();
        assert!(s.contains("iifname \"lo\" accept"), "{s}");
        assert!(s.contains("oifname \"lo\" accept"), "{s}");
        assert!(
            s.contains("\n    meta l4proto tcp reject with tcp reset\n"),
            "{s}"
        );
        assert!(!s.contains("drop"), "{s}");
    }
}
