//! End to end on the lab: real systemd-nspawn machines, real etcd and
//! Kubernetes v1.20.2 binaries, real kubectl. A cluster goes from POST to
//! `ready`; kubeconfigs are minted for admin and viewer and honoured by the
//! apiserver as such; an expired one is refused; another tenant cannot get
//! one; deleting the cluster leaves no machine, process or mount behind.
//!
//! Needs root and the artifacts of `scripts/build-lab-image` and
//! `scripts/build-kube` (the test command builds both).

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge_tests::lab::{assert_machines_gone, drive, kubectl_run, Bridge};
use kubeforge_tests::TestApp;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[tokio::test]
async fn one_control_plane_from_post_to_kubectl_and_back() {
    let tmp =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&tmp).unwrap();
    let octet = 100 + (Uuid::new_v4().as_u128() % 100) as u8;
    let bridge = Bridge(format!("kfe{octet}"), tmp.clone());
    let app = TestApp::with_lab(&tmp, &bridge.0, &format!("10.77.{octet}.0/24")).await;
    let owner = app.token("acme", Role::Admin);
    let viewer = app.token("acme", Role::Viewer);
    let other = app.token("globex", Role::Admin);
    let name = format!("e2e{octet}");

    let started = Instant::now();
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(
                json!({"name": name, "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
                        "control_plane": {"replicas": 1, "machine_type": "small"}}),
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let op = r.body["operation"]["id"].as_str().unwrap().to_string();
    let cluster = drive(&app, &owner, &name, Some("ready"), Duration::from_secs(240)).await;
    eprintln!("POST to ready: {:.1} s", started.elapsed().as_secs_f64());
    assert!(cluster["endpoint"]
        .as_str()
        .unwrap()
        .starts_with(&format!("https://10.77.{octet}.")));
    assert!(
        cluster["certificates"]["ca_expires_at"].is_string(),
        "{cluster}"
    );
    for cond in [
        "MachinesReady",
        "EtcdReady",
        "ControlPlaneReady",
        "EndpointReady",
        "Ready",
    ] {
        let c = cluster["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == cond);
        assert_eq!(
            c.map(|c| c["status"].clone()),
            Some(json!("True")),
            "{cond}: {cluster}"
        );
    }
    let o = app
        .call(
            Method::GET,
            &format!("/v1/operations/{op}"),
            Some(&owner),
            None,
            &[],
        )
        .await;
    assert_eq!(o.body["state"], "succeeded", "{}", o.text);
    for step in o.body["steps"].as_array().unwrap() {
        assert_eq!(step["state"], "succeeded");
        assert!(
            step["started_at"].is_string() && step["finished_at"].is_string(),
            "{step}"
        );
    }

    // The bootstrap is idempotent: run again on the machine, it changes nothing.
    let m: (String, String) = sqlx::query_as(
        "SELECT address, host_key FROM machines WHERE cluster_id = $1 AND role = 'control_plane'",
    )
    .bind(Uuid::parse_str(cluster["id"].as_str().unwrap()).unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let access = app.app.access.clone().expect("machine access");
    let mut lines = Vec::new();
    let code = access
        .ssh
        .run(
            &kubeforge::ssh::SshTarget::new(m.0, "root", m.1),
            &access.client_key.auth(),
            "bash /opt/kubeforge/bootstrap-controlplane.sh",
            Duration::from_secs(120),
            &kubeforge::ssh::Redactor::none(),
            |_, l| lines.push(l.to_string()),
        )
        .await
        .expect("second bootstrap run");
    assert_eq!(code, 0, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("no changes")),
        "second run changed something: {lines:?}"
    );

    // Admin kubeconfig: readyz, and a namespace created and deleted.
    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{name}/kubeconfig"),
            Some(&owner),
            Some(json!({"role": "admin", "ttl_seconds": 600})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let admin_kc = tmp.join("admin.kubeconfig");
    std::fs::write(&admin_kc, &r.text).unwrap();
    let (ok, out) = kubectl_run(&admin_kc, &["get", "--raw", "/readyz"]);
    assert!(ok && out.trim() == "ok", "readyz: {out}");
    let (ok, out) = kubectl_run(&admin_kc, &["create", "namespace", "team-a"]);
    assert!(ok, "create namespace: {out}");
    let (ok, out) = kubectl_run(
        &admin_kc,
        &["delete", "namespace", "team-a", "--wait=false"],
    );
    assert!(ok, "delete namespace: {out}");

    // Viewer kubeconfig: may list, may not create.
    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{name}/kubeconfig"),
            Some(&viewer),
            Some(json!({"role": "viewer", "ttl_seconds": 600})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let viewer_kc = tmp.join("viewer.kubeconfig");
    std::fs::write(&viewer_kc, &r.text).unwrap();
    let (ok, out) = kubectl_run(&viewer_kc, &["get", "namespaces"]);
    assert!(ok && out.contains("kube-system"), "viewer list: {out}");
    let (ok, out) = kubectl_run(&viewer_kc, &["create", "namespace", "nope"]);
    assert!(!ok && out.contains("forbidden"), "viewer create: {out}");

    // Each issue is audited; nothing secret is stored.
    let audits: Vec<String> =
        sqlx::query_scalar("SELECT message FROM events WHERE reason = 'KubeconfigIssued'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(audits.len(), 2, "{audits:?}");
    assert!(audits
        .iter()
        .all(|m| m.contains("serial") && m.contains("ttl 600s")));
    let leaked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM secrets WHERE name LIKE '%kubeconfig%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(leaked, 0);

    // An expired kubeconfig is refused.
    let c = kubeforge::store::cluster::get_any(
        &app.pool,
        Uuid::parse_str(cluster["id"].as_str().unwrap()).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let (short, _) = kubeforge::engine::controlplane::issue_kubeconfig(
        &app.app,
        &c,
        "short",
        true,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let short_kc = tmp.join("short.kubeconfig");
    std::fs::write(&short_kc, short).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, out) = kubectl_run(&short_kc, &["get", "namespaces"]);
    assert!(
        !ok && out.to_lowercase().contains("unauthorized"),
        "expired kubeconfig: {out}"
    );

    // Another tenant cannot reach the kubeconfig endpoint of this cluster.
    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{name}/kubeconfig"),
            Some(&other),
            Some(json!({"role": "admin"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);

    // Delete: nothing of the cluster remains.
    let machines: Vec<(String, Uuid)> =
        sqlx::query_as("SELECT name, id FROM machines WHERE cluster_id = $1")
            .bind(c.id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(machines.len(), 1);
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/clusters/{name}"),
            Some(&owner),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    drive(&app, &owner, &name, None, Duration::from_secs(60)).await;
    assert_machines_gone(&tmp, &machines);
    let secrets: i64 = sqlx::query_scalar("SELECT count(*) FROM secrets WHERE cluster_id = $1")
        .bind(c.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(secrets, 0, "the cluster's secrets were not removed");
    drop(bridge);
    let _ = std::fs::remove_dir_all(&tmp);
}
