//! The HTTP face: one handler for every method and path, and EC2's status codes decided in one
//! place ([`Reply`]'s `IntoResponse`).
//!
//! Routing is not axum's: the router has only a fallback, and [`Imds::respond`] dispatches on
//! the method and the parsed path (see the crate docs for the order of checks). That keeps the
//! EC2 quirks — 301 for directories, values for leaves with a trailing slash, 405 for the wrong
//! method on any path, percent-decoded tag keys — in plain code instead of route patterns.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::Request as HttpRequest;
type Request<B = axum::body::Body> = HttpRequest<B>;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use crate::identity::{IdentityDocument, IdentityKey};
use crate::path::{self, RequestPath};
use crate::token::{self, TokenError, TokenKey};
use crate::tree::{self, Leaf, Node};
use crate::{InstanceMetadata, MetadataSource};

const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Longest path + query answered; EC2 paths are under 100 bytes.
const MAX_URI_BYTES: usize = 4096;
/// Most header bytes (names + values) answered; hyper's own limit is ~400 KiB.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The versions `GET /` lists (EC2's, oldest first, then `latest`). Each is served exactly like
/// `latest`.
pub(crate) const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "2024-04-11",
    "latest",
];

/// EC2's default `HttpPutResponseHopLimit`: a token response reaches the instance itself but
/// not a container or proxy one routed hop behind it.
pub const DEFAULT_PUT_RESPONSE_HOP_LIMIT: u8 = 1;

/// The metadata service: who is asking (the source), what signs identity documents (the key),
/// the per-process token key, and the IP TTL of token responses.
pub struct Imds {
    source: Arc<dyn MetadataSource>,
    key: IdentityKey,
    tokens: TokenKey,
    put_response_hop_limit: u8,
}

impl fmt::Debug for Imds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imds")
            .field("identity_key", &self.key)
            .field("tokens", &self.tokens)
            .field("put_response_hop_limit", &self.put_response_hop_limit)
            .finish_non_exhaustive()
    }
}

impl Imds {
    /// A service answering for the instances `source` knows, signing with `key`. IMDSv2 tokens
    /// are keyed per `Imds`: those of a previous process (or another `Imds`) are refused.
    pub fn new(source: Arc<dyn MetadataSource>, key: IdentityKey) -> Self {
        Self {
            source,
            key,
            tokens: TokenKey::random(),
            put_response_hop_limit: DEFAULT_PUT_RESPONSE_HOP_LIMIT,
        }
    }

    /// EC2's `HttpPutResponseHopLimit` (1–64, default [`DEFAULT_PUT_RESPONSE_HOP_LIMIT`]): the
    /// IP TTL (IPv6 hop limit) of the packets carrying a token response, so each routed hop
    /// between the service and the caller (a container bridge, a proxy) costs one. The rest of
    /// that connection keeps the limit. Applies to connections accepted by [`serve`], which
    /// hands the socket to the handler; a router served some other way sends tokens without
    /// it. If the limit cannot be set on a connection, its token request gets 500, no token.
    pub fn with_put_response_hop_limit(mut self, hops: u8) -> Self {
        self.put_response_hop_limit = hops.clamp(1, 64);
        self
    }

    /// The router. Each request needs a `ConnectInfo<SocketAddr>` extension (the TCP peer):
    /// [`serve`] adds it per connection, `into_make_service_with_connect_info::<SocketAddr>()`
    /// works too; without it every request gets 500. Only [`serve`] limits the hops of token
    /// responses (see [`Imds::with_put_response_hop_limit`]).
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().fallback(handle).with_state(self)
    }

    fn respond(&self, peer: IpAddr, method: &Method, uri: &Uri, headers: &HeaderMap) -> Reply {
        if uri.path().len() + uri.query().map_or(0, str::len) > MAX_URI_BYTES {
            return Reply::UriTooLong;
        }
        let header_bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if header_bytes > MAX_HEADER_BYTES {
            return Reply::HeadersTooLarge;
        }
        let path = path::parse(uri.path());
        let is_token_path = path.as_ref().is_some_and(|p| p.segments == ["latest", "api", "token"]);
        let is_read = *method == Method::GET || *method == Method::HEAD;
        match (is_token_path, *method == Method::PUT, is_read) {
            (true, true, _) => self.issue_token(peer, headers),
            (false, _, true) => self.read(peer, path, headers),
            (true, _, _) => Reply::MethodNotAllowed("PUT"),
            (false, _, _) => Reply::MethodNotAllowed("GET, HEAD"),
        }
    }

    fn issue_token(&self, peer: IpAddr, headers: &HeaderMap) -> Reply {
        if headers.contains_key("x-forwarded-for") {
            return Reply::Forbidden;
        }
        let Some(ttl) = headers.get(TTL_HEADER).and_then(|v| token::parse_ttl(v.as_bytes())) else {
            return Reply::BadRequest;
        };
        let Some(meta) = self.source.lookup(peer) else {
            return Reply::UnknownPeer(peer);
        };
        let token = self.tokens.issue(&meta.instance_id, ttl, self.tokens.now_ms());
        Reply::Token { token, ttl }
    }

    fn read(&self, peer: IpAddr, path: Option<RequestPath>, headers: &HeaderMap) -> Reply {
        let Some(meta) = self.source.lookup(peer) else {
            return Reply::UnknownPeer(peer);
        };
        if let Err(reason) = self.check_token(&meta, headers) {
            tracing::debug!(instance = %meta.instance_id, reason, "metadata token refused");
            return Reply::Unauthorized;
        }
        match path {
            Some(path) => self.resolve(&meta, &path),
            None => Reply::NotFound,
        }
    }

    fn check_token(&self, meta: &InstanceMetadata, headers: &HeaderMap) -> Result<(), &'static str> {
        let Some(value) = headers.get(TOKEN_HEADER) else {
            return if meta.tokens_required {
                Err("no token, and the instance requires one")
            } else {
                Ok(())
            };
        };
        let token = value.to_str().map_err(|_| "malformed")?;
        self.tokens
            .validate(token, &meta.instance_id, self.tokens.now_ms())
            .map_err(|e| match e {
                TokenError::Malformed => "malformed",
                TokenError::NotForThisInstance => "not issued to this instance by this process",
                TokenError::Expired => "expired",
            })
    }

    fn resolve(&self, meta: &InstanceMetadata, path: &RequestPath) -> Reply {
        let Some((version, rest)) = path.segments.split_first() else {
            return Reply::Text(VERSIONS.join("\n"));
        };
        if !VERSIONS.contains(&version.as_str()) {
            return Reply::NotFound;
        }
        match tree::version_root(meta).find(rest) {
            None => Reply::NotFound,
            Some(Node::Dir(entries)) if path.trailing_slash => Reply::Text(tree::listing(entries)),
            Some(Node::Dir(_)) => Reply::Redirect(format!("{}/", path.canonical)),
            Some(Node::Leaf(leaf)) => self.value(meta, leaf),
        }
    }

    fn value(&self, meta: &InstanceMetadata, leaf: &Leaf) -> Reply {
        match leaf {
            Leaf::Text(text) => Reply::Text(text.clone()),
            Leaf::UserData(data) => Reply::Bytes(data.clone(), "application/octet-stream"),
            Leaf::IdentityDocument => Reply::Bytes(IdentityDocument::for_instance(meta).to_bytes(), "text/plain"),
            Leaf::IdentitySignature => Reply::Text(self.key.sign(&IdentityDocument::for_instance(meta).to_bytes())),
        }
    }
}

/// Serve until `shutdown` resolves, then finish the requests under way.
pub async fn serve(
    listener: TcpListener,
    imds: Arc<Imds>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "instance metadata service listening");
    }
    let router = imds.router();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "metadata service cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        // A second handle on the socket, so the handler can set a token response's TTL. Every
        // connection is marked as served here, even when the duplicate cannot be made (out of
        // descriptors): its token requests are then refused, never answered without the limit.
        let socket = ConnSocket(stream.as_fd().try_clone_to_owned().ok().map(Arc::new));
        let service = tower::ServiceExt::map_request(router.clone(), move |mut r: Request<hyper::body::Incoming>| {
            r.extensions_mut().insert(ConnectInfo(peer));
            r.extensions_mut().insert(socket.clone());
            r
        });
        tokio::spawn(async move {
            // Half-closed clients are fine (`printf ... | nc` shuts its write side before the
            // answer comes); a client that sends no complete head within the timeout is dropped.
            let _ = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(service),
                )
                .await;
        });
    }
}

/// How long a client has to send its request head.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The accepted connection's socket (a duplicate descriptor), put on each request by [`serve`];
/// `None` when the duplicate could not be made, so the connection is still known to be a real
/// one whose token responses must be limited.
#[derive(Debug, Clone)]
struct ConnSocket(Option<Arc<OwnedFd>>);

/// Limit what is sent on this connection from now on to `hops` routed hops: IPv4 TTL and IPv6
/// hop limit (a dual-stack socket may carry either).
fn limit_hops(socket: &ConnSocket, peer: SocketAddr, hops: u8) -> io::Result<()> {
    let Some(fd) = &socket.0 else {
        return Err(io::Error::other(
            "no handle on the connection's socket (out of descriptors?)",
        ));
    };
    let fd = fd.as_fd();
    match peer {
        SocketAddr::V4(_) => rustix::net::sockopt::set_ip_ttl(fd, hops.into())?,
        SocketAddr::V6(v6) => {
            rustix::net::sockopt::set_ipv6_unicast_hops(fd, Some(hops))?;
            if v6.ip().to_ipv4_mapped().is_some() {
                rustix::net::sockopt::set_ip_ttl(fd, hops.into())?;
            }
        }
    }
    Ok(())
}

async fn handle(State(imds): State<Arc<Imds>>, request: Request) -> Response {
    let Some(ConnectInfo(addr)) = request.extensions().get::<ConnectInfo<SocketAddr>>().copied() else {
        return Reply::NoConnectInfo.into_response();
    };
    let peer = addr.ip().to_canonical();
    let reply = imds.respond(peer, request.method(), request.uri(), request.headers());
    if matches!(reply, Reply::Token { .. }) {
        // Before the response is written: its packets leave with the limited TTL. On a real
        // connection, a token is never sent without the limit in place.
        // Without a socket (the router driven in-process, as the fuzz target does) there are
        // no packets to limit. A connection from `serve` always carries a `ConnSocket`; one
        // without a descriptor is refused by `limit_hops`.
        let socket = request.extensions().get::<ConnSocket>();
        if let Some(Err(e)) = socket.map(|s| limit_hops(s, addr, imds.put_response_hop_limit)) {
            tracing::warn!(%peer, error = %e, "cannot set the token response's hop limit; refusing the token");
            return Reply::HopLimitUnavailable.into_response();
        }
    }
    let response = reply.into_response();
    // The path, never the headers: those carry tokens. Bodies (user-data) are never logged.
    let path = request.uri().path();
    tracing::debug!(
        %peer,
        method = %request.method(),
        path = path.get(..200).unwrap_or(path),
        status = response.status().as_u16(),
        "metadata request"
    );
    response
}

/// Every answer the service gives; the status codes live in `into_response` only.
#[derive(Debug)]
enum Reply {
    /// A value or a listing.
    Text(String),
    /// Bytes with their content type.
    Bytes(Vec<u8>, &'static str),
    Token {
        token: String,
        ttl: u32,
    },
    /// A directory asked for without its trailing slash.
    Redirect(String),
    /// Token request without a valid TTL.
    BadRequest,
    /// Token missing (when required), malformed, expired or for another instance.
    Unauthorized,
    /// Token request through a proxy (`X-Forwarded-For`).
    Forbidden,
    UnknownPeer(IpAddr),
    NotFound,
    /// The methods the path allows.
    MethodNotAllowed(&'static str),
    UriTooLong,
    HeadersTooLarge,
    NoConnectInfo,
    /// A token was due but its response's hop limit could not be set.
    HopLimitUnavailable,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Text(text) => plain(StatusCode::OK, text),
            Reply::Bytes(body, content_type) => {
                (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
            }
            Reply::Token { token, ttl } => {
                let mut response = plain(StatusCode::OK, token);
                response.headers_mut().insert(TTL_HEADER, HeaderValue::from(ttl));
                response
            }
            Reply::Redirect(location) => match HeaderValue::try_from(location) {
                Ok(location) => (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, location)]).into_response(),
                Err(_) => ec2_page(StatusCode::NOT_FOUND),
            },
            Reply::BadRequest => ec2_page(StatusCode::BAD_REQUEST),
            Reply::Unauthorized => ec2_page(StatusCode::UNAUTHORIZED),
            Reply::Forbidden => ec2_page(StatusCode::FORBIDDEN),
            Reply::UnknownPeer(peer) => plain(
                StatusCode::FORBIDDEN,
                format!(
                    "403 - Forbidden: {peer} is not the address of an instance this metadata \
                     service knows. It answers only instances of this host's cloud, by their \
                     private or elastic IP.\n"
                ),
            ),
            Reply::NotFound => ec2_page(StatusCode::NOT_FOUND),
            Reply::MethodNotAllowed(allow) => {
                let mut response = ec2_page(StatusCode::METHOD_NOT_ALLOWED);
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                response
            }
            Reply::UriTooLong => plain(
                StatusCode::URI_TOO_LONG,
                format!("414 - URI Too Long: the limit is {MAX_URI_BYTES} bytes\n"),
            ),
            Reply::HeadersTooLarge => plain(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("431 - Headers Too Large: the limit is {MAX_HEADER_BYTES} bytes\n"),
            ),
            Reply::HopLimitUnavailable => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500 - the metadata service cannot limit the hops of a token response on this \
                 connection, so it gives no token; serve it with stratus_imds::serve\n"
                    .into(),
            ),
            Reply::NoConnectInfo => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500 - the metadata service cannot see the peer address: serve the router \
                 with into_make_service_with_connect_info::<SocketAddr>()\n"
                    .into(),
            ),
        }
    }
}

fn plain(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// EC2's XHTML error page, e.g. "404 - Not Found".
fn ec2_page(status: StatusCode) -> Response {
    let title = format!("{} - {}", status.as_u16(), status.canonical_reason().unwrap_or("Error"));
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
         <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
         \t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
         <head>\n  <title>{title}</title>\n </head>\n \
         <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    );
    (status, [(header::CONTENT_TYPE, "text/html")], body).into_response()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener as StdListener, TcpStream};

    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    /// Every peer is the one instance.
    struct One;

    impl MetadataSource for One {
        fn lookup(&self, _peer: IpAddr) -> Option<InstanceMetadata> {
            Some(InstanceMetadata {
                instance_id: "i-1".into(),
                image_id: "ami-1".into(),
                instance_type: "small".into(),
                hostname: "web-1".into(),
                local_ipv4: Ipv4Addr::new(10, 77, 0, 5),
                public_ipv4: None,
                mac: "02:00:0a:4d:00:05".into(),
                subnet_cidr: "10.77.0.0/24".into(),
                region: "local-1".into(),
                availability_zone: "local-1a".into(),
                public_keys: vec![],
                tags: vec![],
                user_data: None,
                launched_at: chrono::Utc::now(),
                tokens_required: false,
            })
        }
    }

    /// A token `PUT` as `serve` hands it over, with `socket` as the connection's handle.
    async fn token_put(socket: ConnSocket) -> Response {
        let router = Arc::new(Imds::new(Arc::new(One), IdentityKey::generate())).router();
        let mut request = Request::builder()
            .method("PUT")
            .uri("/latest/api/token")
            .header(TTL_HEADER, "60")
            .body(Body::empty())
            .unwrap();
        let peer: SocketAddr = (Ipv4Addr::LOCALHOST, 40_000).into();
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(socket);
        router.oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn a_served_connection_without_its_socket_gets_no_token() {
        let response = token_put(ConnSocket(None)).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(TTL_HEADER).is_none());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.starts_with("500 - "), "{body}");
    }

    #[tokio::test]
    async fn a_served_connection_with_its_socket_gets_a_token_with_the_limit_set() {
        let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let fd = Arc::new(OwnedFd::from(server));
        let response = token_put(ConnSocket(Some(fd.clone()))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers().get(TTL_HEADER).unwrap(), "60");
        assert_eq!(rustix::net::sockopt::ip_ttl(fd.as_fd()).unwrap(), 1);
    }
}
