//! The local cloud's network, built with `ip` and `nft`.
//!
//! ```text
//!   host ── bridge st-NET (gateway, e.g. 10.77.0.1/22) ──┬── veth svXXXX ══ eth0 (instance A, 10.77.0.2)
//!                  │                                      └── veth svYYYY ══ eth0 (instance B, 10.77.0.3)
//!                  └─ routes to the elastic-IP pools
//! ```
//!
//! One nftables table per cloud (`ip stratus-NET`) holds the NAT rules, regenerated whole and
//! replaced atomically on every change (`nft -f` applies a file as one transaction):
//! - the metadata service: `169.254.169.254:80` from the bridge is DNAT'ed to the control
//!   plane's listener on the gateway address (a private port per cloud, so several clouds and
//!   test runs coexist); the service sees the instance's own source address;
//! - elastic IPs: a map public → private, applied in prerouting (traffic from instances) and
//!   output (traffic from the host); moving an address is one map update;
//! - masquerade for instances reaching an elastic IP of their own network (hairpin) and,
//!   when enabled, for outbound traffic to the world.
//!
//! A bridge-family table (`bridge stratus-NET`, [`crate::antispoof`]) lets each instance's port
//! send only IPv4 and ARP from its own MAC and IPv4 address, and receive only what is for it:
//! an instance cannot send as another one. The NAT table adds the layer-3 half: a packet from
//! the subnet's addresses is dropped unless it came in on the bridge (or is the host's own), so
//! nothing off the bridge can pose as an instance either.
//!
//! Firewall rules live in a table inside each instance's network namespace (`inet
//! stratus-fw`): inbound is dropped unless a rule, loopback or an established flow allows it.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use ipnet::{IpNet, Ipv4Net};
use stratus_types::template::{FirewallRule, Protocol};

use crate::cmd::{CommandError, run};

pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Names and addresses of one cloud's network.
#[derive(Debug, Clone)]
pub struct Network {
    /// Short tag in every host-side name: `st-NET`, `stratus-NET`.
    pub name: String,
    pub subnet: Ipv4Net,
    pub pools: Vec<Ipv4Net>,
    pub outbound_nat: bool,
}

/// One instance's link: names and addresses.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Link {
    pub netns: String,
    pub veth: String,
    pub mac: String,
    pub ip: Ipv4Addr,
}

impl Network {
    pub fn bridge(&self) -> String {
        format!("st-{}", self.name)
    }

    pub fn table(&self) -> String {
        format!("stratus-{}", self.name)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.hosts().next().unwrap_or(self.subnet.addr())
    }

    /// Addresses instances may get: the subnet's hosts but the gateway.
    pub fn instance_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.subnet.hosts().skip(1)
    }

    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pools.iter().any(|p| p.contains(&ip))
    }

    /// Create the bridge (idempotent) with the gateway address and routes to the pools.
    pub async fn ensure_bridge(&self) -> Result<(), CommandError> {
        let br = self.bridge();
        let exists = run("ip", &["link", "show", "dev", &br], None).await.is_ok();
        let mut batch = String::new();
        if !exists {
            writeln!(batch, "link add {br} type bridge").ok();
        }
        writeln!(
            batch,
            "addr replace {}/{} dev {br}",
            self.gateway(),
            self.subnet.prefix_len()
        )
        .ok();
        writeln!(batch, "link set {br} up").ok();
        for p in &self.pools {
            writeln!(batch, "route replace {p} dev {br}").ok();
        }
        run("ip", &["-batch", "-"], Some(&batch)).await?;
        if self.outbound_nat || !self.pools.is_empty() {
            // Forwarding is needed for instances reaching elastic IPs and the outside world.
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| CommandError {
                command: "sysctl net.ipv4.ip_forward=1".into(),
                stderr: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Remove the bridge, its routes and the cloud's nftables table.
    pub async fn remove(&self) -> Result<(), CommandError> {
        let _ = run("nft", &["delete", "table", "ip", &self.table()], None).await;
        let _ = run("nft", &["delete", "table", "bridge", &self.table()], None).await;
        match run("ip", &["link", "del", "dev", &self.bridge()], None).await {
            Ok(_) => Ok(()),
            Err(e) if e.stderr.contains("Cannot find device") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Replace the cloud's host rules in one transaction: the NAT table (metadata redirect,
    /// elastic IPs public → private, subnet sources only from the bridge) and the
    /// anti-spoofing table ([`crate::antispoof`]: each instance's port may only send IPv4 and
    /// ARP from its own MAC and IPv4 address, so no instance can pass for another to the
    /// metadata service or anyone else).
    pub async fn apply_nat(
        &self,
        metadata: Option<SocketAddrV4>,
        eips: &[(Ipv4Addr, Ipv4Addr)],
        links: &[Link],
    ) -> Result<(), CommandError> {
        let rules = format!("{}{}", self.nat_ruleset(metadata, eips), self.spoof_ruleset(links));
        run("nft", &["-f", "-"], Some(&rules)).await.map(drop)
    }

    fn nat_ruleset(&self, metadata: Option<SocketAddrV4>, eips: &[(Ipv4Addr, Ipv4Addr)]) -> String {
        let (t, br, net) = (self.table(), self.bridge(), self.subnet);
        let mut s = format!("table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n");
        s.push_str("  map eip { type ipv4_addr : ipv4_addr;");
        if !eips.is_empty() {
            let items: Vec<String> = eips.iter().map(|(p, i)| format!("{p} : {i}")).collect();
            write!(s, " elements = {{ {} }};", items.join(", ")).ok();
        }
        s.push_str(" }\n  chain sources { type filter hook prerouting priority raw; policy accept;\n");
        writeln!(s, "    ip saddr {net} iifname != {{ \"{br}\", \"lo\" }} drop\n  }}").ok();
        s.push_str("  chain prerouting { type nat hook prerouting priority dstnat; policy accept;\n");
        if let Some(m) = metadata {
            writeln!(
                s,
                "    iifname \"{br}\" ip daddr {METADATA_ADDR} tcp dport 80 dnat to {m}"
            )
            .ok();
        }
        s.push_str("    dnat to ip daddr map @eip\n  }\n");
        s.push_str("  chain output { type nat hook output priority -100; policy accept;\n");
        s.push_str("    dnat to ip daddr map @eip\n  }\n");
        s.push_str("  chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n");
        writeln!(s, "    ip saddr {net} ip daddr {net} ct status dnat masquerade").ok();
        if self.outbound_nat {
            writeln!(s, "    ip saddr {net} oifname != \"{br}\" masquerade").ok();
        }
        s.push_str("  }\n}\n");
        s
    }

    /// Create the instance's namespace and veth pair and address it (idempotent).
    pub async fn attach(&self, link: &Link) -> Result<(), CommandError> {
        let (ns, veth, br) = (&link.netns, &link.veth, self.bridge());
        if run("ip", &["netns", "pids", ns], None).await.is_err() {
            run("ip", &["netns", "add", ns], None).await?;
        }
        let mut host = String::new();
        if run("ip", &["link", "show", "dev", veth], None).await.is_err() {
            writeln!(host, "link add {veth} type veth peer name eth0 netns {ns}").ok();
        }
        writeln!(host, "link set {veth} master {br} up").ok();
        run("ip", &["-batch", "-"], Some(&host)).await?;
        let mut inside = String::new();
        writeln!(inside, "link set lo up").ok();
        writeln!(inside, "link set eth0 address {}", link.mac).ok();
        writeln!(inside, "addr replace {}/{} dev eth0", link.ip, self.subnet.prefix_len()).ok();
        writeln!(inside, "link set eth0 up").ok();
        writeln!(inside, "route replace default via {}", self.gateway()).ok();
        run("ip", &["-n", ns, "-batch", "-"], Some(&inside)).await.map(drop)
    }

    /// Remove the namespace (which takes the veth pair with it) and any stray host end.
    pub async fn detach(link: &Link) -> Result<(), CommandError> {
        if let Err(e) = run("ip", &["netns", "del", &link.netns], None).await
            && !e.stderr.contains("No such file")
        {
            return Err(e);
        }
        let _ = run("ip", &["link", "del", "dev", &link.veth], None).await;
        Ok(())
    }
}

/// Replace the instance's inbound firewall. No rules: everything is allowed (the table is
/// removed); otherwise inbound is dropped unless a rule allows it.
pub async fn apply_firewall(netns: &str, rules: &[FirewallRule]) -> Result<(), CommandError> {
    run(
        "ip",
        &["netns", "exec", netns, "nft", "-f", "-"],
        Some(&firewall_ruleset(rules)),
    )
    .await
    .map(drop)
}

pub fn firewall_ruleset(rules: &[FirewallRule]) -> String {
    let mut s = String::from("table inet stratus-fw {}\ndelete table inet stratus-fw\n");
    if rules.is_empty() {
        return s;
    }
    s.push_str("table inet stratus-fw {\n  chain input { type filter hook input priority 0; policy drop;\n");
    s.push_str("    iif \"lo\" accept\n    ct state established,related accept\n    ct state invalid drop\n");
    for r in rules {
        let family = match r.source {
            IpNet::V4(_) => "ip",
            IpNet::V6(_) => "ip6",
        };
        let from = if r.source.prefix_len() == 0 {
            String::new()
        } else {
            format!("{family} saddr {} ", r.source)
        };
        let line = match (r.protocol, r.ports) {
            (Protocol::Icmp, _) if family == "ip" => format!("{from}meta l4proto icmp accept"),
            (Protocol::Icmp, _) => format!("{from}meta l4proto ipv6-icmp accept"),
            (Protocol::Tcp | Protocol::Udp, ports) => {
                let proto = if r.protocol == Protocol::Tcp { "tcp" } else { "udp" };
                let dport = ports.map_or(String::new(), |p| {
                    if p.first == p.last {
                        format!(" dport {}", p.first)
                    } else {
                        format!(" dport {}-{}", p.first, p.last)
                    }
                });
                // A v4 rule must not admit v6 traffic and vice versa.
                let fam = if from.is_empty() {
                    format!("meta nfproto ipv{} ", if family == "ip" { 4 } else { 6 })
                } else {
                    String::new()
                };
                format!("{fam}{from}{proto}{dport} accept")
            }
        };
        writeln!(s, "    {line}").ok();
    }
    s.push_str("  }\n}\n");
    s
}

/// The MAC of an instance: locally administered, derived from its id.
pub fn mac_for(id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(id.as_bytes());
    format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3], h[4])
}

pub fn is_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratus_types::template::Ports;

    #[test]
    fn firewall_rules_render_per_family_and_port_range() {
        let rules = vec![
            FirewallRule {
                protocol: Protocol::Tcp,
                ports: Some(Ports { first: 80, last: 80 }),
                source: "0.0.0.0/0".parse().unwrap(),
            },
            FirewallRule {
                protocol: Protocol::Udp,
                ports: Some(Ports {
                    first: 8000,
                    last: 8100,
                }),
                source: "10.0.0.0/8".parse().unwrap(),
            },
            FirewallRule {
                protocol: Protocol::Icmp,
                ports: None,
                source: "192.0.2.0/24".parse().unwrap(),
            },
        ];
        let s = firewall_ruleset(&rules);
        assert!(s.contains("policy drop"));
        assert!(s.contains("meta nfproto ipv4 tcp dport 80 accept"));
        assert!(s.contains("ip saddr 10.0.0.0/8 udp dport 8000-8100 accept"));
        assert!(s.contains("ip saddr 192.0.2.0/24 meta l4proto icmp accept"));
        assert!(!firewall_ruleset(&[]).contains("policy drop"), "no rules: no filtering");
    }

    #[test]
    fn nat_ruleset_maps_elastic_ips_and_metadata() {
        let n = Network {
            name: "t1".into(),
            subnet: "10.77.0.0/24".parse().unwrap(),
            pools: vec!["10.78.0.0/28".parse().unwrap()],
            outbound_nat: false,
        };
        let s = n.nat_ruleset(
            Some("10.77.0.1:4567".parse().unwrap()),
            &[("10.78.0.2".parse().unwrap(), "10.77.0.5".parse().unwrap())],
        );
        assert!(s.contains("ip saddr 10.77.0.0/24 iifname != { \"st-t1\", \"lo\" } drop"));
        assert!(s.contains("elements = { 10.78.0.2 : 10.77.0.5 }"));
        assert!(s.contains("ip daddr 169.254.169.254 tcp dport 80 dnat to 10.77.0.1:4567"));
        assert!(!s.contains("oifname"), "no outbound NAT unless asked");
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(n.instance_addresses().next(), Some(Ipv4Addr::new(10, 77, 0, 2)));
    }

    #[test]
    fn macs_are_local_and_stable() {
        assert_eq!(mac_for("i-1"), mac_for("i-1"));
        assert!(mac_for("i-1").starts_with("02:"));
        assert_ne!(mac_for("i-1"), mac_for("i-2"));
    }
}
