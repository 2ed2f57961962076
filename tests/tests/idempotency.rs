//! `Idempotency-Key` (API.md, "Idempotency and concurrency"): the same key
//! and body replay the first response byte for byte, even when the twins
//! race; the same key with another body is 422 `idempotency_mismatch` and
//! writes nothing; keys are per tenant. Without a key a name clash is 409.

use axum::http::Method;
use futures::future::join_all;
use kubeforge::context::Role;
use kubeforge_tests::{cluster_body, Resp, TestApp};
use serde_json::{json, Value};

const A: &str = "acme";
const B: &str = "globex";
const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIECs8RC9oOFHzT7eV0hhVjweTNpUKq72quyZrEZ+4sYV";

async fn post(app: &TestApp, path: &str, tok: &str, body: Value, key: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    app.call(Method::POST, path, Some(tok), Some(body), &headers)
        .await
}

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

fn assert_problem(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["code"], code, "{}", r.text);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    for f in ["type", "title", "status", "code", "detail", "retryable"] {
        assert!(!r.body[f].is_null(), "problem lacks {f}: {}", r.text);
    }
}

#[tokio::test]
async fn fifty_concurrent_identical_creates_make_one_cluster() {
    let app = TestApp::new().await;
    let tok = app.token(A, Role::Editor);
    let body = cluster_body("idem-web");
    // A client retries what the service calls retryable (a 503 when its
    // database pool is exhausted, as 50 requests at once on a loaded
    // two-core machine can make it) with the same key; every request must
    // then end in the one and same 202.
    let calls = (0..50).map(|_| async {
        let mut r = post(&app, "/v1/clusters", &tok, body.clone(), Some("key-1")).await;
        for _ in 0..20 {
            if !(r.status == 503 && r.body["retryable"] == true) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            r = post(&app, "/v1/clusters", &tok, body.clone(), Some("key-1")).await;
        }
        r
    });
    let resps = join_all(calls).await;

    for (i, r) in resps.iter().enumerate() {
        assert_eq!(r.status, 202, "response {i}: {}", r.text);
        assert_eq!(r.text, resps[0].text, "response {i} differs from the first");
    }
    assert_eq!(resps[0].body["cluster"]["name"], "idem-web");
    assert_eq!(resps[0].body["cluster"]["tenant"], A);
    assert_eq!(resps[0].body["operation"]["type"], "cluster_create");

    assert_eq!(scalar(&app, "SELECT count(*) FROM clusters").await, 1);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM operations WHERE type = 'cluster_create'"
        )
        .await,
        1
    );
    assert_eq!(scalar(&app, "SELECT count(*) FROM operations").await, 1);
    assert_eq!(scalar(&app, "SELECT count(*) FROM node_pools").await, 1);
    assert_eq!(scalar(&app, "SELECT count(*) FROM jobs").await, 1);
    assert_eq!(scalar(&app, "SELECT count(*) FROM events").await, 1);
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM idempotency_keys").await,
        1
    );

    // A later sequential replay is the same bytes too.
    let again = post(&app, "/v1/clusters", &tok, body, Some("key-1")).await;
    assert_eq!((again.status.as_u16(), &again.text), (202, &resps[0].text));
}

#[tokio::test]
async fn same_key_other_body_is_mismatch_and_writes_nothing() {
    let app = TestApp::new().await;
    let tok = app.token(A, Role::Editor);
    let first = post(
        &app,
        "/v1/clusters",
        &tok,
        cluster_body("idem-web"),
        Some("key-1"),
    )
    .await;
    assert_eq!(first.status, 202, "{}", first.text);
    let before = app.counts().await;

    // Another body.
    let r = post(
        &app,
        "/v1/clusters",
        &tok,
        cluster_body("other-web"),
        Some("key-1"),
    )
    .await;
    assert_problem(&r, 422, "idempotency_mismatch");
    assert_eq!(app.counts().await, before, "a mismatch wrote something");

    // The same key on another path is another request too.
    let cid = first.body["cluster"]["id"].as_str().unwrap();
    let r = post(
        &app,
        &format!("/v1/clusters/{cid}/node-pools"),
        &tok,
        json!({"name": "extra", "size": 1}),
        Some("key-1"),
    )
    .await;
    assert_problem(&r, 422, "idempotency_mismatch");
    assert_eq!(app.counts().await, before);

    // Concurrent mismatches all fail and write nothing.
    let calls = (0..10).map(|i| {
        post(
            &app,
            "/v1/clusters",
            &tok,
            cluster_body(&format!("racer-{i}")),
            Some("key-1"),
        )
    });
    for r in join_all(calls).await {
        assert_problem(&r, 422, "idempotency_mismatch");
    }
    assert_eq!(app.counts().await, before);

    // The original still replays.
    let replay = post(
        &app,
        "/v1/clusters",
        &tok,
        cluster_body("idem-web"),
        Some("key-1"),
    )
    .await;
    assert_eq!(replay.text, first.text);
}

#[tokio::test]
async fn same_key_in_another_tenant_is_independent() {
    let app = TestApp::new().await;
    let ta = app.token(A, Role::Editor);
    let tb = app.token(B, Role::Admin);
    let body = cluster_body("idem-web");
    let a = post(&app, "/v1/clusters", &ta, body.clone(), Some("shared-key")).await;
    assert_eq!(a.status, 202, "{}", a.text);
    // B with A's key and body: its own cluster, not A's replayed.
    let b = post(&app, "/v1/clusters", &tb, body.clone(), Some("shared-key")).await;
    assert_eq!(b.status, 202, "{}", b.text);
    assert_eq!(b.body["cluster"]["tenant"], B);
    assert_ne!(b.body["cluster"]["id"], a.body["cluster"]["id"]);
    assert_ne!(b.body["operation"]["id"], a.body["operation"]["id"]);
    assert!(
        !b.text.contains(a.body["cluster"]["id"].as_str().unwrap()),
        "B's response mentions A's cluster"
    );
    assert_eq!(scalar(&app, "SELECT count(*) FROM clusters").await, 2);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM operations WHERE type = 'cluster_create'"
        )
        .await,
        2
    );
    // Each replays its own.
    let a2 = post(&app, "/v1/clusters", &ta, body.clone(), Some("shared-key")).await;
    let b2 = post(&app, "/v1/clusters", &tb, body.clone(), Some("shared-key")).await;
    assert_eq!(a2.text, a.text);
    assert_eq!(b2.text, b.text);
    // B's other body under the shared key is a mismatch only for B.
    let b3 = post(
        &app,
        "/v1/clusters",
        &tb,
        cluster_body("b-other"),
        Some("shared-key"),
    )
    .await;
    assert_problem(&b3, 422, "idempotency_mismatch");
    assert_eq!(scalar(&app, "SELECT count(*) FROM clusters").await, 2);

    // Racing tenants with one key: one cluster each.
    let c = app.token("initech", Role::Editor);
    let d = app.token("umbrella", Role::Editor);
    let calls = (0..20).map(|i| {
        let t = if i % 2 == 0 { &c } else { &d };
        post(
            &app,
            "/v1/clusters",
            t,
            cluster_body("race"),
            Some("race-key"),
        )
    });
    let resps = join_all(calls).await;
    for (i, r) in resps.iter().enumerate() {
        assert_eq!(r.status, 202, "{}", r.text);
        assert_eq!(r.text, resps[i % 2].text);
    }
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM clusters WHERE tenant IN ('initech', 'umbrella')"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn node_pool_create_replays() {
    let app = TestApp::new().await;
    let tok = app.token(A, Role::Editor);
    let c = post(&app, "/v1/clusters", &tok, cluster_body("web"), None).await;
    assert_eq!(c.status, 202, "{}", c.text);
    let cid = c.body["cluster"]["id"].as_str().unwrap().to_string();
    let path = format!("/v1/clusters/{cid}/node-pools");
    let body = json!({"name": "extra", "machine_type": "small", "size": 1});
    let pools_before = app.count("node_pools").await;

    let resps =
        join_all((0..10).map(|_| post(&app, &path, &tok, body.clone(), Some("np-key")))).await;
    for r in &resps {
        assert_eq!(r.status, 202, "{}", r.text);
        assert_eq!(r.text, resps[0].text);
    }
    assert_eq!(resps[0].body["node_pool"]["name"], "extra");
    assert_eq!(app.count("node_pools").await, pools_before + 1);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM operations WHERE type = 'node_pool_create'"
        )
        .await,
        1
    );
    let before = app.counts().await;
    let again = post(&app, &path, &tok, body.clone(), Some("np-key")).await;
    assert_eq!(again.text, resps[0].text);
    let other = post(
        &app,
        &path,
        &tok,
        json!({"name": "extra", "machine_type": "small", "size": 2}),
        Some("np-key"),
    )
    .await;
    assert_problem(&other, 422, "idempotency_mismatch");
    assert_eq!(app.counts().await, before);

    // Without a key the same pool name is a conflict.
    let dup = post(&app, &path, &tok, body, None).await;
    assert_problem(&dup, 409, "conflict");
    assert_eq!(app.counts().await, before);
}

#[tokio::test]
async fn host_create_replays() {
    let app = TestApp::new().await;
    let tok = app.token("ops", Role::PlatformAdmin);
    let body = json!({
        "address": "192.0.2.7",
        "credentials": {"password": "hunter2"},
        "host_key": HOST_KEY,
        "labels": {"rack": "r1"},
    });
    let resps =
        join_all((0..10).map(|_| post(&app, "/v1/hosts", &tok, body.clone(), Some("h-1")))).await;
    for r in &resps {
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.text, resps[0].text);
    }
    assert_eq!(resps[0].body["host"]["address"], "192.0.2.7");
    assert!(
        !resps[0].text.contains("hunter2"),
        "credentials must never be returned"
    );
    assert_eq!(app.count("hosts").await, 1);
    let before = app.counts().await;

    let again = post(&app, "/v1/hosts", &tok, body.clone(), Some("h-1")).await;
    assert_eq!((again.status.as_u16(), &again.text), (201, &resps[0].text));
    let mut other_body = body.clone();
    other_body["port"] = json!(2222);
    let other = post(&app, "/v1/hosts", &tok, other_body, Some("h-1")).await;
    assert_problem(&other, 422, "idempotency_mismatch");
    // Without a key the same address:port is a conflict.
    let dup = post(&app, "/v1/hosts", &tok, body, None).await;
    assert_problem(&dup, 409, "conflict");
    assert_eq!(app.counts().await, before);
}

#[tokio::test]
async fn name_conflict_without_key_is_409() {
    let app = TestApp::new().await;
    let tok = app.token(A, Role::Editor);
    let first = post(&app, "/v1/clusters", &tok, cluster_body("web"), None).await;
    assert_eq!(first.status, 202, "{}", first.text);
    let before = app.counts().await;

    let dup = post(&app, "/v1/clusters", &tok, cluster_body("web"), None).await;
    assert_problem(&dup, 409, "conflict");
    assert_eq!(app.counts().await, before, "a conflict wrote something");

    // A fresh key does not bypass the clash, and the failure is not stored
    // under the key (`counts` includes idempotency_keys).
    let keyed = post(
        &app,
        "/v1/clusters",
        &tok,
        cluster_body("web"),
        Some("late-key"),
    )
    .await;
    assert_problem(&keyed, 409, "conflict");
    assert_eq!(app.counts().await, before);

    // Concurrent creates of one new name without keys: one wins.
    let resps = join_all(
        (0..10).map(|_| post(&app, "/v1/clusters", &tok, cluster_body("contended"), None)),
    )
    .await;
    let won = resps.iter().filter(|r| r.status == 202).count();
    let lost: Vec<&Resp> = resps.iter().filter(|r| r.status != 202).collect();
    assert_eq!(
        won,
        1,
        "{:?}",
        resps.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    for r in lost {
        assert_problem(r, 409, "conflict");
    }
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM clusters WHERE name = 'contended'"
        )
        .await,
        1
    );
}
