//! The spoofing suite: from instance A, raw frames in every form (untagged, 802.1Q with VLAN id 0,
//! a priority tag and another id, 802.1ad, QinQ, IPv6 neighbour discovery and router
//! advertisements, gratuitous ARP and ARP replies in B's and the gateway's name, forged source
//! IP and MAC, an unknown ether type) must never let the gateway, the metadata service or
//! instance B see A as anyone but A.
//!
//! Real instances of a real local cloud (busybox image), the real nftables tables, frames sent
//! with AF_PACKET from A's namespace by `support/frames.py` (python's stdlib: the workspace
//! forbids `unsafe`), observed by AF_PACKET sockets and UDP sockets on the host's bridge and in
//! B's namespace, and by the neighbour tables. Each test also runs its attack with the cloud's
//! bridge table removed, and checks it then succeeds: the frames are well-formed and would be
//! taken, so their absence under the rules is the rules' doing. Needs root, iproute2, nftables,
//! busybox-static and python3.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};

use stratus_cloud::CloudDriver;
use support::TestCloud;

const FRAMES_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/frames.py");
const UDP_PORT: u16 = 47_123;

/// A and B of one cloud, with what the frames need to know about them.
struct Pair {
    t: TestCloud,
    a_ns: String,
    b_ns: String,
    a_id: String,
    b_id: String,
    a_ip: Ipv4Addr,
    b_ip: Ipv4Addr,
    a_mac: String,
    b_mac: String,
    gw_ip: Ipv4Addr,
    gw_mac: String,
    bridge: String,
}

impl Pair {
    async fn new() -> Self {
        let t = TestCloud::new().await;
        let a = t.cloud.launch(t.request("spoof-a")).await.expect("launch a");
        let b = t.cloud.launch(t.request("spoof-b")).await.expect("launch b");
        let ip = |i: &stratus_cloud::Instance| match i.private_ip {
            Some(std::net::IpAddr::V4(v)) => v,
            other => panic!("no private IPv4: {other:?}"),
        };
        let (a_ns, b_ns) = (t.cloud.netns(&a.id).expect("ns"), t.cloud.netns(&b.id).expect("ns"));
        let bridge = t.cloud.network().bridge();
        Self {
            a_mac: ns_mac(&a_ns),
            b_mac: ns_mac(&b_ns),
            gw_mac: std::fs::read_to_string(format!("/sys/class/net/{bridge}/address"))
                .expect("bridge MAC")
                .trim()
                .to_string(),
            gw_ip: t.cloud.network().gateway(),
            a_ip: ip(&a),
            b_ip: ip(&b),
            a_id: a.id,
            b_id: b.id,
            a_ns,
            b_ns,
            bridge,
            t,
        }
    }

    fn params(&self, nonce: &str) -> String {
        serde_json::json!({
            "a_mac": self.a_mac, "a_ip": self.a_ip.to_string(),
            "b_mac": self.b_mac, "b_ip": self.b_ip.to_string(),
            "gw_mac": self.gw_mac, "gw_ip": self.gw_ip.to_string(),
            "port": UDP_PORT, "nonce": nonce,
        })
        .to_string()
    }

    /// The host and B know each other's MAC (so a poisoning reply would have an entry to change).
    fn prime_neighbours(&self) {
        sh(&format!("ip neigh flush dev {}", self.bridge));
        sh(&format!("ip -n {} neigh flush dev eth0", self.b_ns));
        sh(&format!(
            "ip netns exec {} busybox ping -c 1 -W 2 {}",
            self.b_ns, self.gw_ip
        ));
        sh(&format!("busybox ping -c 1 -W 2 {}", self.b_ip));
    }

    /// Remove the cloud's anti-spoofing table: the control runs.
    fn without_rules(&self) {
        let table = self.t.cloud.network().table();
        assert!(
            sh(&format!("nft delete table bridge {table}")).0,
            "remove the bridge table"
        );
    }

    /// Send every case from A; what the host's bridge and B's eth0 saw.
    fn exchange(&self, nonce: &str) -> (Seen, Seen) {
        let params = self.params(nonce);
        let host = Listener::start(
            Command::new("python3").args([FRAMES_PY, "listen", &self.bridge, &self.gw_ip.to_string()]),
            nonce,
        );
        let b = Listener::start(
            Command::new("ip")
                .args(["netns", "exec", &self.b_ns, "python3", FRAMES_PY, "listen", "eth0"])
                .arg(self.b_ip.to_string()),
            nonce,
        );
        let sent = Command::new("ip")
            .args([
                "netns", "exec", &self.a_ns, "python3", FRAMES_PY, "send", "eth0", &params,
            ])
            .output()
            .expect("python3");
        assert!(sent.status.success(), "send: {}", String::from_utf8_lossy(&sent.stderr));
        (host.finish(), b.finish())
    }

    fn cases(&self) -> BTreeMap<String, Vec<String>> {
        let out = Command::new("python3")
            .args([FRAMES_PY, "cases", &self.params("x")])
            .output()
            .expect("python3");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("cases: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    }

    /// The bridge port the bridge's forwarding table puts `mac` on.
    fn port_of(&self, mac: &str) -> Option<String> {
        let fdb = sh(&format!("bridge fdb show br {} | grep -i '^{mac} '", self.bridge)).1;
        fdb.split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
            .map(str::to_string)
    }

    /// The host-side name of an instance's veth (`sv` + 13 digits of its id, see the driver).
    fn port_of_instance(&self, id: &str) -> Option<String> {
        Some(format!("sv{}", &id[2..15]))
    }

    /// Neighbour entries (`ip neigh` lines) of the host's bridge or B's eth0 that hold A's MAC.
    fn entries_with_a_mac(&self, b_side: bool, family: &str) -> Vec<String> {
        let cmd = if b_side {
            format!("ip -n {} {family} neigh show dev eth0", self.b_ns)
        } else {
            format!("ip {family} neigh show dev {}", self.bridge)
        };
        sh(&cmd)
            .1
            .lines()
            .filter(|l| l.contains(&self.a_mac))
            .map(str::to_string)
            .collect()
    }
}

#[derive(Debug, serde::Deserialize)]
struct Seen {
    frames: Vec<String>,
    udp: Vec<(String, String)>,
    complete: bool,
}

struct Listener(Child);

impl Listener {
    /// Start a listener and wait until its sockets are open.
    fn start(cmd: &mut Command, nonce: &str) -> Self {
        let mut child = cmd
            .args([&UDP_PORT.to_string(), nonce])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.as_mut().expect("stdout"));
        out.read_line(&mut line).expect("read");
        if line.trim() != "ready" {
            let mut err = String::new();
            let _ = child.stderr.as_mut().expect("stderr").read_to_string(&mut err);
            panic!("listener did not start: {line}{err}");
        }
        Self(child)
    }

    fn finish(self) -> Seen {
        let out = self.0.wait_with_output().expect("listener");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "listener output {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ns_mac(ns: &str) -> String {
    let (ok, out) = sh(&format!("ip netns exec {ns} cat /sys/class/net/eth0/address"));
    assert!(ok, "{out}");
    out.trim().to_string()
}

fn nonce() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("random");
    hex::encode(b)
}

/// The forged cases an observer saw, and the legitimate cases it missed.
fn verdict(cases: &BTreeMap<String, Vec<String>>, seen: &Seen, who: &str) -> (Vec<String>, Vec<String>) {
    let forged = seen
        .frames
        .iter()
        .filter(|c| c.as_str() != "END" && !c.starts_with("legit/"))
        .cloned()
        .collect();
    let missed = cases
        .iter()
        .filter(|(c, obs)| c.starts_with("legit/") && obs.iter().any(|o| o == who) && !seen.frames.contains(c))
        .map(|(c, _)| c.clone())
        .collect();
    (forged, missed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_frame_from_an_instance_passes_it_for_another() {
    let p = Pair::new().await;
    let cases = p.cases();
    assert!(cases.len() > 150, "every form in every encapsulation: {}", cases.len());

    // With the rules: nothing forged reaches the host or B; what A may send does.
    p.prime_neighbours();
    let (host, b) = p.exchange(&nonce());
    assert!(host.complete && b.complete, "the END frames arrived: {host:?} {b:?}");
    for (who, seen) in [("host", &host), ("b", &b)] {
        let (forged, missed) = verdict(&cases, seen, who);
        assert!(forged.is_empty(), "{who} received forged frames: {forged:#?}");
        assert!(missed.is_empty(), "{who} missed A's legitimate frames: {missed:#?}");
        let strangers: Vec<_> = seen.udp.iter().filter(|(src, _)| *src != p.a_ip.to_string()).collect();
        assert!(
            strangers.is_empty(),
            "{who}'s socket got datagrams not from A: {strangers:?}"
        );
    }
    let host_v4 = p.entries_with_a_mac(false, "-4");
    assert!(
        host_v4.iter().all(|l| l.starts_with(&format!("{} ", p.a_ip))),
        "the host maps only A's address to A's MAC: {host_v4:?}"
    );
    let b_v4 = p.entries_with_a_mac(true, "-4");
    assert!(
        b_v4.iter().all(|l| l.starts_with(&format!("{} ", p.a_ip))),
        "B maps only A's address to A's MAC: {b_v4:?}"
    );
    assert_eq!(
        p.port_of(&p.b_mac),
        p.port_of_instance(&p.b_id),
        "the bridge still finds B on B's port"
    );
    assert_eq!(
        p.entries_with_a_mac(false, "-6"),
        Vec::<String>::new(),
        "no IPv6 neighbour on the host"
    );
    assert_eq!(
        p.entries_with_a_mac(true, "-6"),
        Vec::<String>::new(),
        "no IPv6 neighbour in B"
    );

    // The control: without the bridge table, every frame reaches whom it is addressed to, and
    // the ARP forms do poison the host's and B's caches.
    p.without_rules();
    p.prime_neighbours();
    let (host, b) = p.exchange(&nonce());
    for (who, seen) in [("host", &host), ("b", &b)] {
        let missing: Vec<_> = cases
            .iter()
            .filter(|(c, obs)| obs.iter().any(|o| o == who) && !seen.frames.contains(c))
            .map(|(c, _)| c.clone())
            .collect();
        assert!(
            missing.is_empty(),
            "control: {who} should have received these: {missing:#?}"
        );
    }
    assert!(
        host.udp.iter().any(|(src, _)| *src == p.b_ip.to_string()),
        "control: the host's socket takes a datagram from B's address: {:?}",
        host.udp
    );
    assert!(
        p.entries_with_a_mac(false, "-4")
            .iter()
            .any(|l| l.starts_with(&format!("{} ", p.b_ip))),
        "control: the host's entry for B points at A: {:?}",
        sh(&format!("ip neigh show dev {}", p.bridge)).1
    );
    assert!(
        p.entries_with_a_mac(true, "-4")
            .iter()
            .any(|l| l.starts_with(&format!("{} ", p.gw_ip))),
        "control: B's entry for the gateway points at A: {:?}",
        sh(&format!("ip -n {} neigh", p.b_ns)).1
    );
}

/// How A asks the metadata service as B, over a TCP connection it makes by hand from B's
/// address: in each encapsulation, either from its own MAC after telling the gateway (by ARP
/// in the same encapsulation) that B's address is there, or from B's MAC.
const METADATA_ATTACKS: &[(&str, &str)] = &[
    ("untagged", "arp"),
    ("untagged", "mac"),
    ("dot1q-0", "arp"),
    ("dot1q-0", "mac"),
    ("dot1q-0-prio5", "arp"),
    ("dot1ad-0", "arp"),
    ("dot1ad-0", "mac"),
    ("qinq-0-0", "arp"),
];

/// What the metadata service answered A posing as B (empty: nothing).
fn attack_metadata(p: &Pair, tag: &str, how: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &p.a_ns, "python3", FRAMES_PY, "get", "eth0"])
        .args([&p.params(&nonce()), tag, how])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{tag}/{how}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Whatever the attempt changed: the host's cache, the bridge's idea of where B is.
    sh(&format!("ip neigh flush dev {}", p.bridge));
    sh(&format!("ip netns exec {} busybox ping -c 1 -W 2 {}", p.b_ns, p.gw_ip));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_reads_another_ones_metadata_by_posing_as_it() {
    let p = Pair::new().await;
    // A, as itself, is answered (the set-up works).
    assert_eq!(
        p.t.http_from(&p.a_id, "169.254.169.254", 80, "/latest/meta-data/instance-id")
            .as_deref(),
        Some(p.a_id.as_str())
    );
    // Root in A turns forwarding off, so its kernel does not pass B's replies on to B.
    let (ok, out) = sh(&format!(
        "ip netns exec {} sh -c 'echo 0 > /proc/sys/net/ipv4/ip_forward'",
        p.a_ns
    ));
    assert!(ok, "{out}");
    for (tag, how) in METADATA_ATTACKS {
        let got = attack_metadata(&p, tag, how);
        assert!(!got.contains(&p.b_id), "{tag}/{how}: A read B's metadata: {got}");
        assert!(got.is_empty(), "{tag}/{how}: the service answered A posing as B: {got}");
    }
    // B is still answered as B.
    assert_eq!(
        p.t.http_from(&p.b_id, "169.254.169.254", 80, "/latest/meta-data/instance-id")
            .as_deref(),
        Some(p.b_id.as_str())
    );
    // The control: without the bridge table, each attack gets B's instance id.
    p.without_rules();
    for (tag, how) in METADATA_ATTACKS {
        let got = attack_metadata(&p, tag, how);
        assert!(
            got.ends_with(&p.b_id),
            "control: {tag}/{how} works without the rules: {got:?}"
        );
    }
}

/// What the host sends to B while the bridge does not know where B is (B's port does not
/// learn, its entry is gone): flooded to every port. With the rules, only B's port lets it out.
fn host_sends_to_b_while_flooding(p: &Pair) -> Seen {
    let b_port = p.port_of_instance(&p.b_id).expect("port");
    sh(&format!("bridge link set dev {b_port} learning off"));
    sh(&format!("bridge fdb del {} dev {b_port} master", p.b_mac));
    let nonce = nonce();
    let a = Listener::start(
        Command::new("ip")
            .args(["netns", "exec", &p.a_ns, "python3", FRAMES_PY, "listen", "eth0"])
            .arg(p.a_ip.to_string()),
        &nonce,
    );
    let send = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.sendto(b'SPOOF{nonce}:for-b;', ('{b}', {UDP_PORT}))\n\
         for _ in range(3):\n    s.sendto(b'SPOOF{nonce}:END;', ('{a}', {UDP_PORT})); time.sleep(0.2)\n",
        a = p.a_ip,
        b = p.b_ip,
    );
    let out = Command::new("python3").args(["-c", &send]).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    a.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_never_receives_what_the_bridge_floods_for_another() {
    let p = Pair::new().await;
    // The host knows B's MAC, so its datagram goes to B's MAC; the bridge floods it.
    sh(&format!("busybox ping -c 1 -W 2 {}", p.b_ip));
    let seen = host_sends_to_b_while_flooding(&p);
    assert!(seen.complete, "A got the host's datagrams for itself: {seen:?}");
    assert!(
        !seen.frames.contains(&"for-b".to_string()),
        "A saw B's traffic: {seen:?}"
    );
    // The control: without the rules, A's port gets B's frame too.
    p.without_rules();
    let seen = host_sends_to_b_while_flooding(&p);
    assert!(
        seen.frames.contains(&"for-b".to_string()),
        "control: flooded to A: {seen:?}"
    );
}

/// The ports attached to `bridge` that are not in the `ports` set of the cloud's bridge table
/// `table` (those the allow-list lets through unfiltered), and how many ports there are.
fn unpinned_ports(bridge: &str, table: &str) -> (Vec<String>, usize) {
    let (ok, out) = sh(&format!("ip -j link show master {bridge}"));
    assert!(ok, "{out}");
    let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    let ports: Vec<String> = links
        .as_array()
        .expect("links")
        .iter()
        .map(|l| l["ifname"].as_str().expect("ifname").to_string())
        .collect();
    let (ok, out) = sh(&format!("nft -j list set bridge {table} ports"));
    assert!(ok, "{out}");
    let set: serde_json::Value = serde_json::from_str(&out).expect("nft -j");
    let pinned: Vec<String> = set["nftables"]
        .as_array()
        .expect("nftables")
        .iter()
        .filter_map(|o| o["set"]["elem"].as_array())
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    let n = ports.len();
    (ports.into_iter().filter(|p| !pinned.contains(p)).collect(), n)
}

/// A launch running alongside a rewrite of the tables (an elastic IP moved on and off another
/// instance) ends with its port pinned: a rewrite from a snapshot of the records taken before
/// the launch's record was in cannot drop the port's elements after the launch pinned it.
/// The rewrite starts at a different moment each round to sweep the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_alongside_a_table_rewrite_stays_pinned() {
    let t = TestCloud::new().await;
    let anchor = t.cloud.launch(t.request("anchor")).await.expect("launch anchor");
    let eip = t.pool_address(3);
    let (bridge, table) = (t.cloud.network().bridge(), t.cloud.network().table());
    for round in 0..16u64 {
        let (cloud, id) = (t.cloud.clone(), anchor.id.clone());
        let rewrite = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_micros((round % 8) * 700)).await;
            if round % 2 == 0 {
                cloud.associate_address(&id, eip.into()).await
            } else {
                cloud.disassociate_address(eip.into()).await
            }
        });
        t.cloud
            .launch(t.request(&format!("race-{round}")))
            .await
            .expect("launch");
        rewrite.await.expect("join").expect("rewrite");
        let (unpinned, ports) = unpinned_ports(&bridge, &table);
        assert_eq!(ports as u64, round + 2, "every instance has its port on the bridge");
        assert!(
            unpinned.is_empty(),
            "round {round}: ports on the bridge missing from the allow-list: {unpinned:?}"
        );
    }
}

/// Every way up pins the port again: an instance whose port lost its pin (taken out of the
/// `ports` set here) is pinned once more when it is started, before its init runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_pins_the_port_again() {
    let t = TestCloud::new().await;
    let a = t.cloud.launch(t.request("repin")).await.expect("launch");
    let (bridge, table) = (t.cloud.network().bridge(), t.cloud.network().table());
    t.cloud.stop(&a.id).await.expect("stop");
    let (unpinned, ports) = unpinned_ports(&bridge, &table);
    assert!(unpinned.is_empty() && ports == 1, "{unpinned:?} of {ports}");
    let (ok, out) = sh(&format!("ip -j link show master {bridge}"));
    assert!(ok, "{out}");
    let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    let port = links[0]["ifname"].as_str().expect("ifname").to_string();
    let (ok, out) = sh(&format!("nft delete element bridge {table} ports '{{ \"{port}\" }}'"));
    assert!(ok, "{out}");
    assert_eq!(unpinned_ports(&bridge, &table).0, vec![port.clone()], "the pin is gone");
    t.cloud.start(&a.id).await.expect("start");
    let (unpinned, _) = unpinned_ports(&bridge, &table);
    assert!(unpinned.is_empty(), "{port} is pinned again on start: {unpinned:?}");
}
