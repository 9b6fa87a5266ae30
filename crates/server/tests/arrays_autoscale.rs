//! Arrays that scale by their members' votes (`array:vote=grow|shrink` tags), within their
//! bounds and calm time, on the fake cloud.

mod common;

use common::{TestServer, assert_error, error_fields};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn members(t: &TestServer, array: &str) -> Vec<Value> {
    t.list_all("/servers?deployment=example")
        .await
        .into_iter()
        .filter(|s| s["array"] == array && s["state"] == "operational")
        .collect()
}

async fn members_when(t: &TestServer, array: &str, n: usize) -> Vec<Value> {
    t.wait_for(&format!("{n} operational members of {array}"), async |t| {
        let m = members(t, array).await;
        (m.len() == n).then_some(m)
    })
    .await
}

async fn vote(t: &TestServer, server: &Value, how: &str) {
    let key = format!("example%2F{}", server["name"].as_str().unwrap());
    let (s, v) = t
        .post(
            &format!("/servers/{key}/tags"),
            json!({ "add": [format!("array:vote={how}")] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn votes_grow_and_shrink_an_array_within_bounds_and_calm_time() {
    let t = TestServer::start().await;
    t.example().await;
    // Refused: thresholds out of range, steps of zero; nothing is created.
    for (auto, field) in [
        (json!({ "threshold_percent": 0 }), "autoscale.threshold_percent"),
        (json!({ "threshold_percent": 101 }), "autoscale.threshold_percent"),
        (json!({ "grow_by": 0 }), "autoscale"),
        (json!({ "calm_secs": 100000 }), "autoscale.calm_secs"),
        (json!({ "nonsense": 1 }), "autoscale"),
    ] {
        let (s, v) = t
            .post(
                "/arrays",
                json!({ "name": "bad", "deployment": "example", "template": "app", "max": 3, "desired": 1, "autoscale": auto }),
            )
            .await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
        let fields = error_fields(&v).join(" ") + &v.to_string();
        assert!(fields.contains(field), "{field}: {v}");
    }
    assert!(t.list_all("/arrays").await.is_empty());

    let auto = json!({ "threshold_percent": 50, "calm_secs": 3600 });
    let (s, v) = t
        .post(
            "/arrays",
            json!({ "name": "up", "deployment": "example", "template": "app", "min": 1, "max": 3, "desired": 2, "autoscale": auto }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let two = members_when(&t, "up", 2).await;
    // No votes, no change; one of two voting grow is half: the array grows by one, once.
    vote(&t, &two[0], "grow").await;
    members_when(&t, "up", 3).await;
    let a = t.get("/arrays/example/up").await;
    assert_eq!(a["desired"], 3, "{a}");
    assert!(a["last_scaled_at"].is_string(), "{a}");
    let audit = t.audit("action=array.autoscale").await;
    assert_eq!(audit[0]["detail"]["from"], 2, "{audit:?}");
    assert_eq!(audit[0]["detail"]["to"], 3, "{audit:?}");

    // Shrinking: two of three vote shrink; the calm time of this array is zero, so it shrinks
    // to its minimum and stops there.
    let (s, v) = t
        .post(
            "/arrays",
            json!({ "name": "down", "deployment": "example", "template": "app", "min": 2, "max": 4, "desired": 3,
                    "autoscale": { "threshold_percent": 60, "calm_secs": 0 } }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let three = members_when(&t, "down", 3).await;
    vote(&t, &three[1], "shrink").await;
    vote(&t, &three[2], "shrink").await;
    members_when(&t, "down", 2).await;
    let a = t.get("/arrays/example/down").await;
    assert_eq!(a["desired"], 2, "never below min: {a}");
    // The calm array did not move again although its vote stands.
    assert_eq!(t.get("/arrays/example/up").await["desired"], 3);
}
