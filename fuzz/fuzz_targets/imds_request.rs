//! The metadata service's request handling: any method, path and token header from an
//! instance gets an EC2 status, never a panic or a 5xx.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use stratus_imds::{IdentityKey, Imds, InstanceMetadata, MetadataSource};
use tower::ServiceExt;

struct One;

impl MetadataSource for One {
    fn lookup(&self, peer: IpAddr) -> Option<InstanceMetadata> {
        (peer == IpAddr::V4(Ipv4Addr::LOCALHOST)).then(|| InstanceMetadata {
            instance_id: "i-0123456789abcdef0".into(),
            image_id: "img-1".into(),
            instance_type: "small".into(),
            hostname: "web-1".into(),
            local_ipv4: Ipv4Addr::new(10, 77, 0, 2),
            public_ipv4: Some(Ipv4Addr::new(10, 78, 0, 2)),
            mac: "02:00:00:00:00:01".into(),
            subnet_cidr: "10.77.0.0/22".into(),
            region: "local".into(),
            availability_zone: "local-a".into(),
            public_keys: vec![("k".into(), "ssh-ed25519 AAAA k".into())],
            tags: vec![("lb:pool".into(), "www".into())],
            user_data: Some(b"#!/bin/sh".to_vec()),
            launched_at: chrono::DateTime::UNIX_EPOCH,
            tokens_required: false,
        })
    }
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());
static ROUTER: LazyLock<axum::Router> =
    LazyLock::new(|| Arc::new(Imds::new(Arc::new(One), IdentityKey::generate())).router());

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    let method = ["GET", "HEAD", "PUT", "POST", "DELETE"][usize::from(m) % 5];
    let text = String::from_utf8_lossy(rest);
    let (path, header) = text.split_once('\n').unwrap_or((&text, ""));
    let Ok(uri) = path.parse::<axum::http::Uri>() else { return };
    let mut b = Request::builder().method(method).uri(uri);
    if let Some((name, value)) = header.split_once(':') {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(name.trim().as_bytes()),
            axum::http::HeaderValue::from_str(value.trim()),
        ) {
            b = b.header(n, v);
        }
    }
    let Ok(mut request) = b.body(Body::empty()) else { return };
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000))));
    let status = RUNTIME.block_on(async { ROUTER.clone().oneshot(request).await.unwrap().status() });
    assert!(status.as_u16() < 500, "{method} {path}: {status}");
});
