//! The anti-spoofing table: on a cloud's bridge, an instance can send and receive only as itself.
//!
//! The metadata service, the gateway and every other instance know an instance by its source
//! addresses, so an instance that could send as another could read that one's user-data and
//! identity document, enrol as it, or poison ARP caches and sit in the middle of its traffic.
//! One bridge-family table per cloud (`bridge stratus-NET`) prevents that. It is an
//! **allow-list**, evaluated before the bridge learns a source MAC or hands a frame to the
//! host's IP stack (hook `prerouting`, priority -200, ahead of `br_netfilter` at 0):
//!
//! ```text
//!  frame entering a bridge from port P
//!    ├─ P not pinned (not one of this cloud's instance ports)                           → accept
//!    ├─ ether type ip  AND (P, ether saddr, ip saddr)                       ∈ ip_ok   → accept
//!    ├─ ether type arp AND IPv4-over-Ethernet (htype 1, ptype ip, hlen 6, plen 4)
//!    │                 AND operation request|reply
//!    │                 AND (P, ether saddr, arp sender MAC, arp sender IP)   ∈ arp_ok  → accept
//!    └─ anything else                                                                   → drop
//!
//!  frame leaving a bridge to port P (hooks forward and output: other instances, the host)
//!    ├─ P not pinned                                                                    → accept
//!    ├─ ether type not ip/arp                                                           → drop
//!    ├─ (P, ether daddr) ∈ mac_ok                              (unicast for P's instance) → accept
//!    ├─ ether daddr is broadcast/multicast                                              → accept
//!    └─ anything else (unicast for another MAC, flooded while the bridge relearns)      → drop
//! ```
//!
//! So dropped from an instance: 802.1Q frames of any VLAN id (id 0, "priority tagged", would
//! otherwise reach the host and the other instances as plain IPv4/ARP), 802.1ad / QinQ,
//! IPv6 entirely (instances have no IPv6: no NDP, router advertisements or link-local
//! traffic), unknown ether types, another instance's MAC or IPv4 address, ARP whose sender
//! fields are not its own.
//!
//! A port is pinned (`pin`) at launch before its veth exists and stays pinned while the
//! instance exists (stopped included: its namespace and veth are kept); terminate removes the
//! namespace, which takes the veth with it, and then unpins the port, so no port of the cloud's
//! bridge is ever up and unpinned. The hooks of the bridge family see every bridge on the host,
//! so ports that are not pinned are left alone (other clouds' bridges, the host's own); there
//! is no bridge-name match to scope by in this kernel (`CONFIG_NFT_BRIDGE_META` is off).
//!
//! The whole decision is in this table; it does not depend on the bridge's `vlan_filtering`
//! or on the `net.bridge.bridge-nf-call-*` settings (the kernel here has `br_netfilter` built
//! in, with them on: bridged IPv4 also passes the `ip` hooks, after this table).
//! `tests/spoofing.rs` sends every frame form above from a real instance, and checks each one
//! is taken when this table is removed.
//!
//! The elements are per instance (`pin`), so launching or terminating one instance is one
//! element change in one transaction; the table itself is rewritten whole with the NAT table
//! (`Network::apply_nat`) from the records, which is how a restart restores it. The driver
//! pins and rewrites under one lock, and pins after the record is in place (unpins after it is
//! gone), so a rewrite from an older snapshot of the records can never drop a live port's
//! elements; every boot (launch, start, a resumed launch) pins again before the veth is made.

use std::fmt::Write as _;

use crate::cmd::{CommandError, run};
use crate::net::{Link, Network};

/// The sets and what each element is made of.
const SETS: &[(&str, &str)] = &[
    ("ports", "ifname"),
    ("mac_ok", "ifname . ether_addr"),
    ("ip_ok", "ifname . ether_addr . ipv4_addr"),
    ("arp_ok", "ifname . ether_addr . ether_addr . ipv4_addr"),
];

/// The element of `set` for `link`.
fn element(set: &str, l: &Link) -> String {
    let (v, mac, ip) = (&l.veth, &l.mac, l.ip);
    match set {
        "ports" => format!("\"{v}\""),
        "mac_ok" => format!("\"{v}\" . {mac}"),
        "ip_ok" => format!("\"{v}\" . {mac} . {ip}"),
        _ => format!("\"{v}\" . {mac} . {mac} . {ip}"),
    }
}

/// Hooks of the bridge family see the frames of every bridge on the host, so each chain first
/// lets through what is not about this cloud's ports (there is no `meta ibrname` in a kernel
/// without `CONFIG_NFT_BRIDGE_META`, as here): a policy of drop would cut every other bridge off.
const CHAINS: &str = "  chain from_instances {
    type filter hook prerouting priority -200; policy accept;
    iifname != @ports accept
    ether type ip iifname . ether saddr . ip saddr @ip_ok accept
    ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp operation { request, reply } iifname . ether saddr . arp saddr ether . arp saddr ip @arp_ok accept
    drop
  }
  chain to_instance {
    oifname != @ports accept
    ether type != { ip, arp } drop
    oifname . ether daddr @mac_ok accept
    ether daddr & 01:00:00:00:00:00 == 01:00:00:00:00:00 accept
    drop
  }
  chain forwarded { type filter hook forward priority -200; policy accept; jump to_instance; }
  chain from_host { type filter hook output priority -200; policy accept; jump to_instance; }
";

impl Network {
    /// The whole anti-spoofing table for these instances' links (see the module docs).
    pub(crate) fn spoof_ruleset(&self, links: &[Link]) -> String {
        let t = self.table();
        let mut s = format!("table bridge {t} {{}}\ndelete table bridge {t}\ntable bridge {t} {{\n");
        for (set, ty) in SETS {
            let items: Vec<String> = links.iter().map(|l| element(set, l)).collect();
            let elements = if items.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", items.join(", "))
            };
            writeln!(s, "  set {set} {{ type {ty};{elements} }}").ok();
        }
        s.push_str(CHAINS);
        s.push_str("}\n");
        s
    }

    /// Let the instance's port send and receive as the instance (`on`), or nothing at all.
    pub async fn pin(&self, link: &Link, on: bool) -> Result<(), CommandError> {
        let t = self.table();
        let verb = if on { "add" } else { "delete" };
        let mut script = String::new();
        for (set, _) in SETS {
            writeln!(script, "{verb} element bridge {t} {set} {{ {} }}", element(set, link)).ok();
        }
        run("nft", &["-f", "-"], Some(&script)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        Network {
            name: "t1".into(),
            subnet: "10.77.0.0/24".parse().unwrap(),
            pools: vec![],
            outbound_nat: false,
        }
    }

    #[test]
    fn the_table_allows_each_port_only_its_own_addresses() {
        let link = Link {
            netns: "ns".into(),
            veth: "sv1".into(),
            mac: "02:00:00:00:00:01".into(),
            ip: "10.77.0.5".parse().unwrap(),
        };
        let s = net().spoof_ruleset(&[link]);
        assert!(s.contains("set ports { type ifname; elements = { \"sv1\" }; }"));
        assert!(s.contains("elements = { \"sv1\" . 02:00:00:00:00:01 . 10.77.0.5 }"));
        assert!(s.contains("elements = { \"sv1\" . 02:00:00:00:00:01 . 02:00:00:00:00:01 . 10.77.0.5 }"));
        assert!(
            s.contains("iifname != @ports accept\n"),
            "other bridges' ports are not ours"
        );
        assert!(s.contains("@arp_ok accept\n    drop\n"), "an allow-list");
        let empty = net().spoof_ruleset(&[]);
        assert!(empty.contains("set ports { type ifname; }"));
        assert!(empty.contains("set arp_ok { type ifname . ether_addr . ether_addr . ipv4_addr; }"));
    }
}
