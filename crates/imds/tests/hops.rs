//! The token response's hop limit, over a real routed path: the service in one network
//! namespace, a router namespace next to it, a client namespace behind the router.
//!
//! ```text
//!   service ns  10.9.0.1 ── 10.9.0.2  router ns (forwarding)  10.9.1.1 ── 10.9.1.2  client ns
//! ```
//!
//! With the default limit (1, as EC2) the router gets a token and the client, one routed hop
//! further, does not (the response dies at the router), while its plain reads still work; with
//! a limit of 2 the client gets one. Needs root, iproute2 and python3 (the clients).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;

use common::{TestSource, instance};
use stratus_imds::{IdentityKey, Imds, serve};

const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 2);

/// Three namespaces with names unique to this test run; removed on drop, panics included.
struct Topology {
    prefix: String,
}

impl Topology {
    fn new() -> Self {
        let mut r = [0u8; 3];
        getrandom::fill(&mut r).expect("random");
        let t = Self {
            prefix: format!("imdshop-{}-{}", std::process::id(), hex::encode(r)),
        };
        let (s, r, c) = (t.ns("s"), t.ns("r"), t.ns("c"));
        let script = format!(
            "set -e
             ip netns add {s}; ip netns add {r}; ip netns add {c}
             ip link add s0 netns {s} type veth peer name r0 netns {r}
             ip link add r1 netns {r} type veth peer name c0 netns {c}
             ip -n {s} link set lo up; ip -n {s} link set s0 up; ip -n {s} addr add {SERVICE}/24 dev s0
             ip -n {s} route add 10.9.1.0/24 via {ROUTER}
             ip -n {r} link set lo up; ip -n {r} link set r0 up; ip -n {r} link set r1 up
             ip -n {r} addr add {ROUTER}/24 dev r0; ip -n {r} addr add 10.9.1.1/24 dev r1
             ip netns exec {r} sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
             ip -n {c} link set lo up; ip -n {c} link set c0 up; ip -n {c} addr add {CLIENT}/24 dev c0
             ip -n {c} route add default via 10.9.1.1"
        );
        let out = Command::new("sh").args(["-c", &script]).output().expect("sh");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        t
    }

    fn ns(&self, which: &str) -> String {
        format!("{}-{which}", self.prefix)
    }

    /// A listener on the service address, made by a thread that enters the service namespace
    /// (the socket stays there; the rest of the test process does not move).
    fn listener(&self) -> tokio::net::TcpListener {
        let path = format!("/run/netns/{}", self.ns("s"));
        let std_listener = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("namespace file");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            let l = std::net::TcpListener::bind((SERVICE, 0)).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
        .join()
        .expect("thread");
        tokio::net::TcpListener::from_std(std_listener).expect("tokio listener")
    }

    /// `PUT /latest/api/token` (or a plain GET) from a namespace: the status and body, or
    /// "no answer".
    fn request(&self, which: &str, port: u16, token: bool) -> String {
        let script = format!(
            "import urllib.request as u\n\
             m = 'PUT' if {token} else 'GET'\n\
             p = '/latest/api/token' if {token} else '/latest/meta-data/instance-id'\n\
             r = u.Request('http://{SERVICE}:{port}' + p, method=m, headers={{'X-aws-ec2-metadata-token-ttl-seconds': '60'}})\n\
             try:\n    x = u.urlopen(r, timeout=4); print(x.status, x.read().decode())\n\
             except Exception as e:\n    print('no answer', e)\n",
            token = if token { "True" } else { "False" }
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(which), "python3", "-c", &script])
            .output()
            .expect("python3");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for which in ["s", "r", "c"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(which)]).output();
        }
    }
}

/// Serve on a listener in the service namespace; the port.
fn start(topo: &Topology, imds: Imds) -> u16 {
    let listener = topo.listener();
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(serve(listener, Arc::new(imds), std::future::pending()));
    port
}

fn source() -> Arc<TestSource> {
    let source = Arc::new(TestSource::default());
    source.set(IpAddr::V4(ROUTER), instance("i-0000000000000router"));
    source.set(IpAddr::V4(CLIENT), instance("i-0000000000000client"));
    source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_does_not_reach_past_the_put_response_hop_limit() {
    let topo = Topology::new();
    let port = start(&topo, Imds::new(source(), IdentityKey::generate()));
    let near = topo.request("r", port, true);
    assert!(
        near.starts_with("200 "),
        "the router, next to the service, gets a token: {near}"
    );
    let far = topo.request("c", port, true);
    assert!(
        far.starts_with("no answer"),
        "the client one routed hop away gets no token: {far}"
    );
    let read = topo.request("c", port, false);
    assert_eq!(
        read, "200 i-0000000000000client",
        "the path works: the client's plain reads are answered"
    );

    let port = start(
        &topo,
        Imds::new(source(), IdentityKey::generate()).with_put_response_hop_limit(2),
    );
    let far = topo.request("c", port, true);
    assert!(
        far.starts_with("200 "),
        "with a limit of 2 the client gets a token: {far}"
    );
}
