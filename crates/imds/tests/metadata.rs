//! The metadata tree over HTTP, as EC2 clients see it: listings, values, user-data, redirects,
//! 404s, methods, unknown peers, hostile paths.

mod common;

use common::{LOCALHOST, Server, client, full_instance, get, get_ok, instance, raw_get};

const META_DATA_FULL: &str = "ami-id\nami-launch-index\nhostname\ninstance-action\ninstance-id\n\
    instance-life-cycle\ninstance-type\nlocal-hostname\nlocal-ipv4\nmac\nnetwork/\nplacement/\n\
    public-hostname\npublic-ipv4\npublic-keys/\nreservation-id\nsecurity-groups\nservices/\ntags/";

#[tokio::test]
async fn versions_and_the_latest_directory() {
    let server = Server::start(Some(full_instance("i-0123456789abcdef0"))).await;
    let versions = get_ok(&server, "/").await;
    let lines: Vec<&str> = versions.lines().collect();
    assert_eq!(lines.first(), Some(&"1.0"));
    assert_eq!(lines.last(), Some(&"latest"));
    assert!(lines.contains(&"2009-04-04") && lines.contains(&"2021-03-23"));
    assert!(!versions.ends_with('\n'));
    assert_eq!(get_ok(&server, "/latest/").await, "dynamic\nmeta-data\nuser-data");
    // Dated versions are served like latest.
    for version in ["2009-04-04", "2016-09-02", "2021-03-23"] {
        assert_eq!(
            get_ok(&server, &format!("/{version}/meta-data/instance-id")).await,
            "i-0123456789abcdef0"
        );
    }
    server.stop().await;

    let server = Server::start(Some(instance("i-1"))).await;
    assert_eq!(get_ok(&server, "/latest/").await, "dynamic\nmeta-data");
    server.stop().await;
}

#[tokio::test]
async fn meta_data_listing_is_exact() {
    let server = Server::start(Some(full_instance("i-1"))).await;
    assert_eq!(get_ok(&server, "/latest/meta-data/").await, META_DATA_FULL);
    // Without an elastic IP and keys, those entries are not listed (and 404).
    server.source.set(LOCALHOST, instance("i-1"));
    let plain = META_DATA_FULL.replace("public-hostname\npublic-ipv4\npublic-keys/\n", "");
    assert_eq!(get_ok(&server, "/latest/meta-data/").await, plain);
    for path in [
        "public-ipv4",
        "public-hostname",
        "public-keys/",
        "public-keys/0/openssh-key",
    ] {
        assert_eq!(
            get(&server, &format!("/latest/meta-data/{path}")).await.0,
            404,
            "{path}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn every_leaf_has_its_value() {
    let server = Server::start(Some(full_instance("i-0123456789abcdef0"))).await;
    let mac = "/latest/meta-data/network/interfaces/macs/02:00:0a:4d:00:05";
    let expected = [
        ("/latest/meta-data/ami-id", "ami-0abcdef1234567890"),
        ("/latest/meta-data/ami-launch-index", "0"),
        ("/latest/meta-data/hostname", "web-1"),
        ("/latest/meta-data/instance-action", "none"),
        ("/latest/meta-data/instance-id", "i-0123456789abcdef0"),
        ("/latest/meta-data/instance-life-cycle", "on-demand"),
        ("/latest/meta-data/instance-type", "small"),
        ("/latest/meta-data/local-hostname", "web-1"),
        ("/latest/meta-data/local-ipv4", "10.77.0.5"),
        ("/latest/meta-data/mac", "02:00:0a:4d:00:05"),
        ("/latest/meta-data/placement/availability-zone", "local-1a"),
        ("/latest/meta-data/placement/region", "local-1"),
        ("/latest/meta-data/public-hostname", "198.51.100.7"),
        ("/latest/meta-data/public-ipv4", "198.51.100.7"),
        ("/latest/meta-data/reservation-id", "r-0123456789abcdef0"),
        ("/latest/meta-data/security-groups", "default"),
        ("/latest/meta-data/services/domain", "amazonaws.com"),
        ("/latest/meta-data/services/partition", "aws"),
        ("/latest/meta-data/network/", "interfaces/"),
        ("/latest/meta-data/network/interfaces/", "macs/"),
        ("/latest/meta-data/network/interfaces/macs/", "02:00:0a:4d:00:05/"),
        ("/latest/meta-data/placement/", "availability-zone\nregion"),
        ("/latest/meta-data/services/", "domain\npartition"),
        ("/latest/meta-data/tags/", "instance/"),
    ];
    for (path, value) in expected {
        assert_eq!(get_ok(&server, path).await, value, "{path}");
    }
    let interface = [
        ("device-number", "0"),
        ("interface-id", "eni-0123456789abcdef0"),
        ("ipv4-associations/198.51.100.7", "10.77.0.5"),
        ("local-hostname", "web-1"),
        ("local-ipv4s", "10.77.0.5"),
        ("mac", "02:00:0a:4d:00:05"),
        ("owner-id", "000000000000"),
        ("public-hostname", "198.51.100.7"),
        ("public-ipv4s", "198.51.100.7"),
        ("security-groups", "default"),
        ("subnet-ipv4-cidr-block", "10.77.0.0/24"),
    ];
    for (leaf, value) in interface {
        assert_eq!(get_ok(&server, &format!("{mac}/{leaf}")).await, value, "{leaf}");
    }
    assert_eq!(
        get_ok(&server, &format!("{mac}/")).await,
        "device-number\ninterface-id\nipv4-associations/\nlocal-hostname\nlocal-ipv4s\nmac\n\
         owner-id\npublic-hostname\npublic-ipv4s\nsecurity-groups\nsubnet-ipv4-cidr-block"
    );
    let response = client()
        .get(server.url("/latest/meta-data/instance-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/plain");
    server.stop().await;
}

#[tokio::test]
async fn public_keys_like_ec2() {
    let server = Server::start(Some(full_instance("i-1"))).await;
    assert_eq!(
        get_ok(&server, "/latest/meta-data/public-keys/").await,
        "0=alice\n1=bob"
    );
    assert_eq!(get_ok(&server, "/latest/meta-data/public-keys/1/").await, "openssh-key");
    assert_eq!(
        get_ok(&server, "/latest/meta-data/public-keys/1/openssh-key").await,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB bob@desk"
    );
    assert_eq!(get(&server, "/latest/meta-data/public-keys/2/").await.0, 404);
    assert_eq!(get(&server, "/latest/meta-data/public-keys/0=alice").await.0, 404);
    server.stop().await;
}

#[tokio::test]
async fn tags_with_percent_encoded_keys() {
    let server = Server::start(Some(full_instance("i-1"))).await;
    assert_eq!(
        get_ok(&server, "/latest/meta-data/tags/instance/").await,
        "Name\nstratus:deployment\nteam name"
    );
    assert_eq!(get_ok(&server, "/latest/meta-data/tags/instance/Name").await, "web-1");
    for path in ["stratus:deployment", "stratus%3Adeployment", "stratus%3adeployment"] {
        let url = format!("/latest/meta-data/tags/instance/{path}");
        assert_eq!(get_ok(&server, &url).await, "prod", "{path}");
    }
    assert_eq!(
        get_ok(&server, "/latest/meta-data/tags/instance/team%20name").await,
        "platform"
    );
    assert_eq!(get(&server, "/latest/meta-data/tags/instance/name").await.0, 404);
    server.stop().await;
}

#[tokio::test]
async fn user_data_is_raw_bytes() {
    let server = Server::start(Some(full_instance("i-1"))).await;
    for path in ["/latest/user-data", "/latest/user-data/", "/2009-04-04/user-data"] {
        let response = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/octet-stream");
        assert_eq!(&response.bytes().await.unwrap()[..], b"#!/bin/sh\n\xff\x00binary");
    }
    server.source.set(LOCALHOST, instance("i-1"));
    assert_eq!(get(&server, "/latest/user-data").await.0, 404);
    server.stop().await;
}

#[tokio::test]
async fn directories_without_a_slash_redirect_and_leaves_with_one_answer() {
    let server = Server::start(Some(full_instance("i-1"))).await;
    let redirects = [
        ("/latest", "/latest/"),
        ("/latest/meta-data", "/latest/meta-data/"),
        ("/latest/meta-data/placement", "/latest/meta-data/placement/"),
        ("//latest//meta-data", "/latest/meta-data/"),
        (
            "/latest/meta-data/tags/instance?x=1",
            "/latest/meta-data/tags/instance/",
        ),
    ];
    for (path, location) in redirects {
        let response = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 301, "{path}");
        assert_eq!(response.headers()["location"], location, "{path}");
        assert_eq!(response.text().await.unwrap(), "");
    }
    // A client that follows redirects gets the listing.
    let following = reqwest::Client::builder().no_proxy().build().unwrap();
    let listing = following.get(server.url("/latest/meta-data")).send().await.unwrap();
    assert_eq!(listing.text().await.unwrap(), META_DATA_FULL);
    // botocore's region fetcher asks for the availability zone with a trailing slash.
    assert_eq!(
        get_ok(&server, "/latest/meta-data/placement/availability-zone/").await,
        "local-1a"
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_404_with_ec2s_page() {
    let server = Server::start(Some(full_instance("i-1"))).await;
    let long = format!("/latest/meta-data/{}", "a".repeat(3000));
    let many_slashes = format!("/latest{}", "/".repeat(2000));
    let deep = "/latest/meta-data".to_string() + &"/x".repeat(40);
    let missing = [
        "/latest/meta-data/nope",
        "/latest/meta-data/ami-id/extra",
        "/latest/meta-data/iam/security-credentials/",
        "/1999-01-01/meta-data/",
        "/latest/meta-data/..",
        "/latest/meta-data/../user-data",
        "/latest/meta-data/%2E%2E/",
        "/latest/meta-data/placement%2Fregion",
        "/latest/meta-data/%FF%FE",
        "/latest/meta-data/%C3",
        "/latest/dynamic/instance-identity/pkcs7",
        "/latest/api/",
        "/latest/meta-data/public-keys/0=alice/openssh-key",
        long.as_str(),
        deep.as_str(),
    ];
    for path in missing {
        let (status, body) = raw_get(&server, path).await;
        assert_eq!(status, 404, "{path}");
        assert!(body.contains("<h1>404 - Not Found</h1>"), "{path}: {body}");
    }
    let response = client().get(server.url("/latest/nope")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/html");
    // Many slashes collapse: still the latest directory.
    assert_eq!(
        raw_get(&server, &many_slashes).await,
        (200, "dynamic\nmeta-data\nuser-data".into())
    );
    server.stop().await;
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let server = Server::start(Some(full_instance("i-1"))).await;
    let long = format!("/latest/meta-data/{}", "a".repeat(5000));
    assert_eq!(get(&server, &long).await.0, 414);
    let response = client()
        .get(server.url("/latest/meta-data/"))
        .header("x-padding", "p".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    // The service is still fine afterwards.
    assert_eq!(get(&server, "/latest/meta-data/ami-id").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn head_is_get_without_a_body() {
    let server = Server::start(Some(full_instance("i-1"))).await;
    let response = client()
        .head(server.url("/latest/meta-data/instance-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "3");
    assert_eq!(response.bytes().await.unwrap().len(), 0);
    let response = client().head(server.url("/latest/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn other_methods_are_not_allowed() {
    let server = Server::start(Some(full_instance("i-1"))).await;
    let http = client();
    let cases = [
        (http.post(server.url("/latest/meta-data/")), "GET, HEAD"),
        (http.delete(server.url("/latest/meta-data/ami-id")), "GET, HEAD"),
        (http.put(server.url("/latest/meta-data/")), "GET, HEAD"),
        (http.patch(server.url("/latest/api/token")), "PUT"),
        (http.get(server.url("/latest/api/token")), "PUT"),
        (http.post(server.url("/latest/api/token")), "PUT"),
    ];
    for (request, allow) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()["allow"], allow);
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_peers_are_forbidden_with_an_explanation() {
    let server = Server::start(None).await;
    for path in ["/", "/latest/meta-data/", "/latest/user-data", "/nope"] {
        let response = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 403, "{path}");
        assert_eq!(response.headers()["content-type"], "text/plain");
        let body = response.text().await.unwrap();
        assert!(body.contains("127.0.0.1 is not the address of an instance"), "{body}");
    }
    // What the caller claims does not matter: only the TCP peer does.
    let response = client()
        .get(server.url("/latest/meta-data/"))
        .header("x-forwarded-for", "10.77.0.5")
        .header("host", "169.254.169.254")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    server.stop().await;
}

#[tokio::test]
async fn the_source_is_asked_on_every_request() {
    let server = Server::start(Some(instance("i-1"))).await;
    assert_eq!(get(&server, "/latest/meta-data/public-ipv4").await.0, 404);
    server.source.update(LOCALHOST, |m| {
        m.public_ipv4 = Some([203, 0, 113, 9].into());
        m.tags = vec![("role".into(), "db".into())];
    });
    assert_eq!(get_ok(&server, "/latest/meta-data/public-ipv4").await, "203.0.113.9");
    assert_eq!(get_ok(&server, "/latest/meta-data/tags/instance/role").await, "db");
    server.source.remove(LOCALHOST);
    assert_eq!(get(&server, "/latest/meta-data/instance-id").await.0, 403);
    assert!(server.source.lookups() >= 4);
    server.stop().await;
}

/// Crawl like cloud-init: every listed entry resolves; directories to listings, the
/// `public-keys` `N=name` lines via `N/openssh-key`.
#[tokio::test]
async fn everything_listed_resolves() {
    let server = Server::start(Some(full_instance("i-1"))).await;
    // The version directory lists its sub-directories bare, like EC2.
    assert_eq!(get_ok(&server, "/latest/").await, "dynamic\nmeta-data\nuser-data");
    get_ok(&server, "/latest/user-data").await;
    let mut pending = vec!["/latest/meta-data/".to_string(), "/latest/dynamic/".to_string()];
    let mut leaves = 0;
    while let Some(dir) = pending.pop() {
        for line in get_ok(&server, &dir).await.lines() {
            let line = line.replace(' ', "%20");
            match line.split_once('=') {
                Some((n, _)) if dir.ends_with("public-keys/") => {
                    pending.push(format!("{dir}{n}/"));
                }
                _ if line.ends_with('/') => pending.push(format!("{dir}{line}")),
                _ => {
                    get_ok(&server, &format!("{dir}{line}")).await;
                    leaves += 1;
                }
            }
        }
    }
    assert!(leaves >= 35, "{leaves} leaves");
    server.stop().await;
}
