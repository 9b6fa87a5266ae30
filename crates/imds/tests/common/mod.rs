//! Shared helpers: a switchable metadata source, sample instances, and the service started on
//! 127.0.0.1:0 with `serve`.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use stratus_imds::{IdentityKey, IdentityVerifier, Imds, InstanceMetadata, MetadataSource, serve};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Maps peer addresses to instances; tests change the mapping between requests.
#[derive(Debug, Default)]
pub struct TestSource {
    map: Mutex<HashMap<IpAddr, InstanceMetadata>>,
    lookups: Mutex<usize>,
}

impl TestSource {
    pub fn set(&self, peer: IpAddr, meta: InstanceMetadata) {
        self.map.lock().unwrap().insert(peer, meta);
    }

    pub fn remove(&self, peer: IpAddr) {
        self.map.lock().unwrap().remove(&peer);
    }

    pub fn update(&self, peer: IpAddr, change: impl FnOnce(&mut InstanceMetadata)) {
        change(self.map.lock().unwrap().get_mut(&peer).expect("a mapped peer"));
    }

    pub fn lookups(&self) -> usize {
        *self.lookups.lock().unwrap()
    }
}

impl MetadataSource for TestSource {
    fn lookup(&self, peer: IpAddr) -> Option<InstanceMetadata> {
        *self.lookups.lock().unwrap() += 1;
        self.map.lock().unwrap().get(&peer).cloned()
    }
}

/// A plain instance: no elastic IP, no keys, no tags, no user-data, tokens optional.
pub fn instance(id: &str) -> InstanceMetadata {
    InstanceMetadata {
        instance_id: id.into(),
        image_id: "ami-0abcdef1234567890".into(),
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
        launched_at: chrono::DateTime::parse_from_rfc3339("2024-05-01T12:00:00.250Z")
            .unwrap()
            .into(),
        tokens_required: false,
    }
}

/// An instance with everything optional present.
pub fn full_instance(id: &str) -> InstanceMetadata {
    InstanceMetadata {
        public_ipv4: Some(Ipv4Addr::new(198, 51, 100, 7)),
        public_keys: vec![
            (
                "alice".into(),
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@laptop".into(),
            ),
            ("bob".into(), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB bob@desk".into()),
        ],
        tags: vec![
            ("Name".into(), "web-1".into()),
            ("stratus:deployment".into(), "prod".into()),
            ("team name".into(), "platform".into()),
        ],
        user_data: Some(b"#!/bin/sh\n\xff\x00binary".to_vec()),
        ..instance(id)
    }
}

/// The service on 127.0.0.1:0, with the source mapping 127.0.0.1 to `meta` (if given).
pub struct Server {
    pub base: String,
    pub source: Arc<TestSource>,
    pub verifier: IdentityVerifier,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start(meta: Option<InstanceMetadata>) -> Self {
        let source = Arc::new(TestSource::default());
        if let Some(meta) = meta {
            source.set(LOCALHOST, meta);
        }
        let key = IdentityKey::generate();
        let verifier = key.verifier();
        let imds = Arc::new(Imds::new(source.clone(), key));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, imds, async {
            let _ = rx.await;
        }));
        Self {
            base,
            source,
            verifier,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stop the service and check it ended cleanly.
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// A client that neither follows redirects nor uses proxies.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// GET `path`, returning the status and the body as text.
pub async fn get(server: &Server, path: &str) -> (u16, String) {
    let response = client().get(server.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// GET `path`, expecting 200, returning the body.
pub async fn get_ok(server: &Server, path: &str) -> String {
    let (status, body) = get(server, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// PUT /latest/api/token with the given TTL header value.
pub async fn put_token(server: &Server, ttl: &str) -> reqwest::Response {
    client()
        .put(server.url("/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", ttl)
        .send()
        .await
        .unwrap()
}

/// A fresh token with a six-hour TTL.
pub async fn token(server: &Server) -> String {
    let response = put_token(server, "21600").await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// GET `path` with `X-aws-ec2-metadata-token`.
pub async fn get_with_token(server: &Server, path: &str, token: &str) -> (u16, String) {
    let response = client()
        .get(server.url(path))
        .header("X-aws-ec2-metadata-token", token)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Send `GET <path>` exactly as written (no client-side normalisation of `..` or `%2E`),
/// returning the status and the body.
pub async fn raw_get(server: &Server, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"));
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}
