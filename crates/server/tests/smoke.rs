mod common;

use common::*;
use reqwest::StatusCode;

#[tokio::test]
async fn example_deployment_becomes_operational() {
    let t = TestServer::start().await;
    example_credential(&t, "s3cret-stats-pw").await;
    let (s, plan) = t.apply_toml(EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    for name in ["lb-1", "app-1", "app-2"] {
        let v = t.wait_state(&format!("example/{name}"), "operational").await;
        assert!(v["private_ip"].is_string(), "{v}");
    }
}
