//! Serving the API over TCP with limits, on the main listener and on every local cloud's
//! gateway listener alike.
//!
//! ```text
//!  accept ──► per-client and total connection caps ──► hyper http1 (head timeout) ──► router
//!               │ over a cap: `503` written without reading, connection closed, one log line
//! ```
//!
//! - **Head timeout** ([`Limits::header_read_timeout`], default 10 s): a client that has not sent
//!   a whole request head within it is disconnected (slow-header clients). hyper restarts the
//!   same timer whenever a kept-alive connection waits for its next request, so it is also the
//!   **idle keep-alive timeout**.
//! - **Connections per client address** ([`Limits::max_connections_per_ip`], default 64; IPv6
//!   clients counted per /64, the block one host usually holds) and **in total**
//!   ([`Limits::max_connections`], default 4096). A connection over a cap gets `503` and is
//!   closed at once; a warning is logged once per episode (until the client drops below the cap
//!   again), not per refused connection. 0 turns a cap off: behind a load balancer every
//!   connection comes from its address, so cap per client there (HAProxy `maxconn`, a
//!   `stick-table` on `conn_cur`) and raise or turn off the cap here.
//! - A connection that becomes an agent's WebSocket leaves these counts when it is upgraded: the
//!   agent sessions have their own bound (one per agent credential, a total; see
//!   `app::hub`), and many instances may reach the control plane through one NAT
//!   address.
//! - **Body idle timeout** (the same [`Limits::header_read_timeout`]): once a handler reads a
//!   request body, a client that sends no part of it for that long gets an error answer and is
//!   disconnected (a head with `content-length: 5000` and no body no longer holds its
//!   connection). The timer restarts with every piece of body that arrives, so large artifact
//!   uploads over slow links still work; it applies to every route on every listener.
//! - Request bodies are bounded in size by the router (`http::BODY_MAX`; artifact uploads by
//!   the artifact size limit). Not in total time: a client that trickles a body (a byte within
//!   every timeout) or reads an answer slowly holds its connection, within the caps above; a
//!   load balancer in front bounds that (HAProxy `timeout http-request`, `timeout client`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

/// The connection limits of the API listeners (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A client must send a whole request head within this (and a kept-alive connection is
    /// closed after this long without a new request).
    pub header_read_timeout: Duration,
    /// Open connections from one client address (IPv6: one /64); 0: no cap.
    pub max_connections_per_ip: usize,
    /// Open connections in total; 0: no cap.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections_per_ip: 64,
            max_connections: 4096,
        }
    }
}

/// What a refused connection is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 86\r\n\r\nthe control plane has too many connections from this address or in total; retry later\n";

/// Serve `router` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, router: axum::Router, limits: Limits) {
    let counts = Counts::new(limits);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            // Out of file descriptors and the like: back off instead of spinning.
            Err(e) => {
                tracing::warn!(error = %e, "the API listener cannot accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = counts.admit(peer) else {
            // Not read, not waited on: the answer fits the fresh socket's buffer or is lost.
            let _ = stream.try_write(REFUSAL);
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, router, limits.header_read_timeout).await;
            drop(slot);
        });
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, router: axum::Router, header_read_timeout: Duration) {
    // Handlers see the peer's address as axum's `ConnectInfo` (agent enrolment checks it).
    let service = tower::ServiceExt::map_request(
        router,
        move |mut req: axum::extract::Request<tower_http::timeout::TimeoutBody<Incoming>>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            req
        },
    );
    // A body that stops arriving fails the handler's read; hyper then closes the connection,
    // whose body it never saw the end of.
    let service = tower_http::timeout::RequestBodyTimeout::new(service, header_read_timeout);
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        // An agent's WebSocket: the future ends when the connection is handed over.
        .with_upgrades()
        .await;
}

/// The client a connection counts against: its address, an IPv6 one's /64.
fn client_key(peer: SocketAddr) -> IpAddr {
    match peer.ip().to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The open connections, per client and in total.
#[derive(Debug)]
struct Counts {
    limits: Limits,
    inner: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Whether the total cap's warning was logged in the current episode.
    total_warned: bool,
    /// Per client: open connections, and whether the warning was logged in this episode.
    per_client: HashMap<IpAddr, (usize, bool)>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
struct Slot {
    counts: Arc<Counts>,
    client: IpAddr,
}

impl Counts {
    fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            inner: Mutex::default(),
        })
    }

    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Slot> {
        let client = client_key(peer);
        let mut open = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Limits {
            max_connections: total_cap,
            max_connections_per_ip: client_cap,
            ..
        } = self.limits;
        if total_cap != 0 && open.total >= total_cap {
            if !std::mem::replace(&mut open.total_warned, true) {
                tracing::warn!(%client, limit = total_cap, "the API has as many connections as it takes (--max-connections); refusing new ones until some close");
            }
            return None;
        }
        let entry = open.per_client.entry(client).or_default();
        if client_cap != 0 && entry.0 >= client_cap {
            if !std::mem::replace(&mut entry.1, true) {
                tracing::warn!(%client, limit = client_cap, "a client address holds as many API connections as one may (--max-connections-per-ip); refusing more from it until some close");
            }
            return None;
        }
        entry.0 += 1;
        open.total += 1;
        Some(Slot {
            counts: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.counts.inner.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        open.total_warned = false;
        if let Some(entry) = open.per_client.get_mut(&self.client) {
            entry.0 = entry.0.saturating_sub(1);
            entry.1 = false;
            if entry.0 == 0 {
                open.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn caps_count_per_client_and_in_total_and_free_on_drop() {
        let counts = Counts::new(Limits {
            max_connections_per_ip: 2,
            max_connections: 3,
            ..Limits::default()
        });
        let a1 = counts.admit(addr("192.0.2.1:1000")).expect("first");
        let _a2 = counts.admit(addr("192.0.2.1:1001")).expect("second");
        assert!(
            counts.admit(addr("192.0.2.1:1002")).is_none(),
            "a third from one client"
        );
        let _b1 = counts.admit(addr("192.0.2.2:1000")).expect("another client");
        assert!(counts.admit(addr("192.0.2.3:1000")).is_none(), "over the total");
        drop(a1);
        assert!(counts.admit(addr("192.0.2.1:1003")).is_some(), "a place freed");
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            client_key(addr("[2001:db8:1:2:aaaa::1]:1")),
            client_key(addr("[2001:db8:1:2:bbbb::9]:1"))
        );
        assert_ne!(
            client_key(addr("[2001:db8:1:2::1]:1")),
            client_key(addr("[2001:db8:1:3::1]:1"))
        );
        assert_eq!(
            client_key(addr("[::ffff:192.0.2.7]:1")),
            client_key(addr("192.0.2.7:1"))
        );
    }

    #[test]
    fn the_refusal_is_a_whole_http_response() {
        let text = std::str::from_utf8(REFUSAL).expect("text");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 "));
        let length = format!("content-length: {}", body.len());
        assert!(head.split("\r\n").any(|l| l == length), "{head}");
    }

    #[test]
    fn zero_turns_a_cap_off() {
        let counts = Counts::new(Limits {
            max_connections_per_ip: 0,
            max_connections: 0,
            ..Limits::default()
        });
        let held: Vec<_> = (0..500)
            .map(|i| counts.admit(addr(&format!("192.0.2.1:{i}"))))
            .collect();
        assert!(held.iter().all(Option::is_some));
    }
}
