//! IMDSv2 over HTTP: the token PUT and its refusals, tokens on reads, `tokens_required`.

mod common;

use std::time::Duration;

use common::{LOCALHOST, Server, client, full_instance, get, get_with_token, instance, put_token, token};

#[tokio::test]
async fn a_token_unlocks_reads_and_echoes_its_ttl() {
    let server = Server::start(Some(full_instance("i-1"))).await;
    let response = put_token(&server, "21600").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-aws-ec2-metadata-token-ttl-seconds"], "21600");
    assert_eq!(response.headers()["content-type"], "text/plain");
    let token = response.text().await.unwrap();
    assert_eq!(token.len(), 54);
    assert_eq!(
        get_with_token(&server, "/latest/meta-data/instance-id", &token).await,
        (200, "i-1".into())
    );
    // Trailing slash on the token path, as some clients send it.
    let response = client()
        .put(server.url("/latest/api/token/"))
        .header("x-aws-ec2-metadata-token-ttl-seconds", "60")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_bad_ttl_is_400() {
    let server = Server::start(Some(instance("i-1"))).await;
    for ttl in ["0", "21601", "-1", "abc", "", "1.5", "99999999999999"] {
        assert_eq!(put_token(&server, ttl).await.status(), 400, "{ttl:?}");
    }
    let response = client().put(server.url("/latest/api/token")).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("400 - Bad Request"));
    assert_eq!(put_token(&server, "1").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_proxied_token_request_is_403() {
    let server = Server::start(Some(instance("i-1"))).await;
    let response = client()
        .put(server.url("/latest/api/token"))
        .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
        .header("X-Forwarded-For", "203.0.113.1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_peer_gets_no_token() {
    let server = Server::start(None).await;
    assert_eq!(put_token(&server, "21600").await.status(), 403);
    server.stop().await;
}

#[tokio::test]
async fn invalid_tokens_are_401_even_when_tokens_are_optional() {
    let server = Server::start(Some(instance("i-1"))).await;
    let good = token(&server).await;
    let mut flipped = good.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for bad in ["", "x", "not-a-token", &"A".repeat(54), &flipped, &format!("{good}x")] {
        let (status, body) = get_with_token(&server, "/latest/meta-data/", bad).await;
        assert_eq!(status, 401, "{bad:?}");
        assert!(body.contains("401 - Unauthorized"));
    }
    // Without a token, IMDSv1 still works for this instance.
    assert_eq!(get(&server, "/latest/meta-data/instance-id").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_token_is_bound_to_its_instance() {
    let server = Server::start(Some(instance("i-1"))).await;
    let token_1 = token(&server).await;
    // The address now belongs to another instance (e.g. the elastic IP moved).
    server.source.set(LOCALHOST, instance("i-2"));
    assert_eq!(get_with_token(&server, "/latest/meta-data/", &token_1).await.0, 401);
    let token_2 = token(&server).await;
    assert_eq!(
        get_with_token(&server, "/latest/meta-data/instance-id", &token_2).await,
        (200, "i-2".into())
    );
    // And back: the first token is good again for its own instance.
    server.source.set(LOCALHOST, instance("i-1"));
    assert_eq!(get_with_token(&server, "/latest/meta-data/", &token_1).await.0, 200);
    assert_eq!(get_with_token(&server, "/latest/meta-data/", &token_2).await.0, 401);
    server.stop().await;
}

#[tokio::test]
async fn a_token_expires_after_its_ttl() {
    let server = Server::start(Some(instance("i-1"))).await;
    let response = put_token(&server, "1").await;
    assert_eq!(response.headers()["x-aws-ec2-metadata-token-ttl-seconds"], "1");
    let short = response.text().await.unwrap();
    assert_eq!(get_with_token(&server, "/latest/meta-data/", &short).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get_with_token(&server, "/latest/meta-data/", &short).await.0, 401);
    server.stop().await;
}

#[tokio::test]
async fn tokens_do_not_survive_a_restart() {
    let first = Server::start(Some(instance("i-1"))).await;
    let old = token(&first).await;
    first.stop().await;
    let second = Server::start(Some(instance("i-1"))).await;
    assert_eq!(get_with_token(&second, "/latest/meta-data/", &old).await.0, 401);
    second.stop().await;
}

#[tokio::test]
async fn tokens_required_refuses_imdsv1() {
    let server = Server::start(Some(instance("i-1"))).await;
    server.source.update(LOCALHOST, |m| m.tokens_required = true);
    for path in ["/", "/latest/meta-data/", "/latest/meta-data/instance-id", "/nope"] {
        let (status, body) = get(&server, path).await;
        assert_eq!(status, 401, "{path}");
        assert!(body.contains("401 - Unauthorized"));
    }
    // The token PUT itself needs no token.
    let token = token(&server).await;
    assert_eq!(
        get_with_token(&server, "/latest/meta-data/instance-id", &token).await,
        (200, "i-1".into())
    );
    // HEAD too.
    let response = client()
        .head(server.url("/latest/meta-data/instance-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    server.stop().await;
}
