//! The `ssh` provider's claims against the real database: a machine's
//! host selector picks among free registered hosts by label, a miss says
//! which selector found nothing, and hosts recently found unfit are
//! skipped until their recheck time.
//!
//! No host is reached: the registered hosts are pointed at closed ports on
//! 127.0.0.1, so `create` claims a host (the claim commits first) and then
//! fails to connect, which is `Retryable` and leaves the claim in place
//! for the test to read.

use axum::http::Method;
use kubeforge::artifacts::Artifacts;
use kubeforge::context::Role;
use kubeforge::providers::ssh::SshProvider;
use kubeforge::providers::{MachineRequest, Provider, ProviderError};
use kubeforge::ssh::{SshExecutor, SshSettings};
use kubeforge_cluster::pools::MachineRole;
use kubeforge_cluster::{MachineType, ProviderSpec};
use kubeforge_tests::{cluster_body, TestApp};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIECs8RC9oOFHzT7eV0hhVjweTNpUKq72quyZrEZ+4sYV";

fn provider(app: &TestApp) -> SshProvider {
    SshProvider::new(
        app.pool.clone(),
        // The key TestApp seals host credentials with.
        kubeforge::crypto::SecretBox::new(&[9u8; 32]).unwrap(),
        SshExecutor::with_settings(
            2,
            SshSettings {
                connect_timeout: Duration::from_secs(2),
                retries: 0,
                ..SshSettings::default()
            },
        ),
        format!("{HOST_KEY} kubeforge-test"),
        Artifacts {
            kubernetes_version: "1.20.2".into(),
            host_dir: "/nonexistent".into(),
            guest_dir: "/nonexistent".into(),
            etcd_bin: "/usr/bin/etcd".into(),
            pause_archive: None,
            etcd_sha256: "0".repeat(64),
        },
    )
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Registers a host through the API and points it at a closed loopback port.
async fn register(app: &TestApp, admin: &str, address: &str, labels: Value, extra: Value) -> Uuid {
    let mut body = json!({
        "address": address,
        "user": "root",
        "credentials": {"password": "pw"},
        "host_key": HOST_KEY,
        "labels": labels,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = app
        .call(Method::POST, "/v1/hosts", Some(admin), Some(body), &[])
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = Uuid::parse_str(r.body["host"]["id"].as_str().unwrap()).unwrap();
    sqlx::query("UPDATE hosts SET address = '127.0.0.1', port = $2 WHERE id = $1")
        .bind(id)
        .bind(i32::from(closed_port()))
        .execute(&app.pool)
        .await
        .unwrap();
    id
}

/// A worker ledger row of `cluster`, as the engine commits before calling
/// the provider.
async fn ledger_row(app: &TestApp, cluster: Uuid, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO machines (id, tenant, cluster_id, role, name, provider, machine_type, state)
         VALUES ($1, 'acme', $2, 'worker', $3, 'ssh', 'small', 'pending')",
    )
    .bind(id)
    .bind(cluster)
    .bind(name)
    .execute(&app.pool)
    .await
    .unwrap();
    id
}

fn request(id: Uuid, cluster: Uuid, name: &str, selector: &[(&str, &str)]) -> MachineRequest {
    let mut req = MachineRequest::new(
        id,
        name,
        "acme",
        cluster,
        MachineRole::Worker,
        MachineType::SMALL,
        Some("default"),
        ProviderSpec::Ssh {},
    );
    req.host_selector = selector
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
    req
}

async fn claimed_by(app: &TestApp, host: Uuid) -> Option<Uuid> {
    sqlx::query_scalar("SELECT claimed_by FROM hosts WHERE id = $1")
        .bind(host)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn claims_follow_the_host_selector_and_skip_unfit_hosts() {
    let app = TestApp::with_double_kind(
        "ssh",
        kubeforge::app::Config {
            rate_limits: kubeforge::ratelimit::RateLimits::UNLIMITED,
            ..Default::default()
        },
    )
    .await;
    let admin = app.token("platform", Role::PlatformAdmin);
    let owner = app.token("acme", Role::Admin);
    // Registered in this order, so the gpu=false host has the lower id and
    // an unselective claim would take it first.
    let plain = register(
        &app,
        &admin,
        "192.0.2.41",
        json!({"gpu": "false"}),
        json!({}),
    )
    .await;
    let gpu = register(
        &app,
        &admin,
        "192.0.2.42",
        json!({"gpu": "true", "zone": "a"}),
        json!({"capacity": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "2"}}),
    )
    .await;
    let mut body = cluster_body("byo");
    body["provider"] = json!({"kind": "ssh"});
    let r = app
        .call(Method::POST, "/v1/clusters", Some(&owner), Some(body), &[])
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cluster = Uuid::parse_str(r.body["cluster"]["id"].as_str().unwrap()).unwrap();
    let p = provider(&app);

    // gpu=true claims the gpu host, though the other one comes first.
    let m1 = ledger_row(&app, cluster, "w1").await;
    let err = p
        .create(&request(m1, cluster, "w1", &[("gpu", "true")]))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Retryable(_)), "{err:?}");
    assert_eq!(claimed_by(&app, gpu).await, Some(m1));
    assert_eq!(claimed_by(&app, plain).await, None);
    // Asked again, the same id keeps its host.
    let _ = p
        .create(&request(m1, cluster, "w1", &[("gpu", "true")]))
        .await;
    assert_eq!(claimed_by(&app, gpu).await, Some(m1));
    // The engine reads the host's declared capacity through the machine.
    let cap = p.capacity(m1).await.unwrap().expect("a capacity");
    assert_eq!(cap.cpu_millis, 16_000);
    assert_eq!(cap.memory_bytes, 64 << 30);
    assert_eq!(cap.extended.get("nvidia.com/gpu"), Some(&2));
    assert!(p.capacity(Uuid::now_v7()).await.unwrap().is_none());

    // No free gpu host left: NoCapacity naming the selector; nothing claimed.
    let m2 = ledger_row(&app, cluster, "w2").await;
    let err = p
        .create(&request(m2, cluster, "w2", &[("gpu", "true")]))
        .await
        .unwrap_err();
    match &err {
        ProviderError::NoCapacity(m) => assert_eq!(
            m, "no free host matching gpu=true (1 free host does not match)",
            "{err:?}"
        ),
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    assert!(err.is_retryable());
    let err = p
        .create(&request(m2, cluster, "w2", &[("zone", "b")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::NoCapacity(m) if m.starts_with("no free host matching zone=b")),
        "{err:?}"
    );
    assert_eq!(claimed_by(&app, plain).await, None);

    // A host found unfit a moment ago is skipped, and the message says so.
    let problem = "host 127.0.0.1 lacks runc: install the runc package";
    sqlx::query(
        "UPDATE hosts SET problem = $2, problem_at = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(plain)
    .bind(json!({"code": "host_prerequisites_missing", "message": problem}))
    .execute(&app.pool)
    .await
    .unwrap();
    let err = p
        .create(&request(m2, cluster, "w2", &[]))
        .await
        .unwrap_err();
    match &err {
        ProviderError::NoCapacity(m) => assert_eq!(
            m,
            &format!("no free host in the pool, 1 host skipped: {problem}"),
            "{err:?}"
        ),
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    assert_eq!(claimed_by(&app, plain).await, None);
    // The problem shows on the host.
    let r = app
        .call(Method::GET, "/v1/hosts", Some(&admin), None, &[])
        .await;
    let shown = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == plain.to_string())
        .unwrap()
        .clone();
    assert_eq!(shown["problem"]["code"], "host_prerequisites_missing");
    assert_eq!(shown["problem"]["message"], problem);
    assert!(shown["problem"]["since"].is_string(), "{shown}");

    // Past the recheck time it is claimed again (and checked again).
    sqlx::query("UPDATE hosts SET problem_at = now() - interval '11 minutes' WHERE id = $1")
        .bind(plain)
        .execute(&app.pool)
        .await
        .unwrap();
    let err = p
        .create(&request(m2, cluster, "w2", &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Retryable(_)), "{err:?}");
    assert_eq!(claimed_by(&app, plain).await, Some(m2));
}
