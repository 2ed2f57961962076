//! High availability on the lab: three control-plane members behind a
//! HAProxy load-balancer machine. Losing one member keeps the API
//! answering through the endpoint with etcd at 2 of 3; the cluster goes
//! `degraded`, the machine is restarted, and the cluster returns to `ready`.
//!
//! Needs root and the artifacts of `scripts/build-lab-image` and
//! `scripts/build-kube` (the test command builds both).

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge_tests::lab::{
    delete_cluster, drive, kubectl_run, power_off, processes_mentioning, run_on_machine, sandbox,
    wait_readyz,
};
use kubeforge_tests::TestApp;
use serde_json::json;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[tokio::test]
async fn three_control_planes_survive_losing_one() {
    let (tmp, octet, bridge) = sandbox(env!("CARGO_TARGET_TMPDIR"), "ha", "kfh");
    let app = TestApp::with_lab(&tmp, &bridge.0, &format!("10.77.{octet}.0/24")).await;
    let owner = app.token("acme", Role::Admin);
    let name = format!("ha{octet}");

    let started = Instant::now();
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(
                json!({"name": name, "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
                        "control_plane": {"replicas": 3, "machine_type": "small"}}),
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cluster = drive(&app, &owner, &name, Some("ready"), Duration::from_secs(300)).await;
    eprintln!(
        "POST to ready (3 control planes): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let id = Uuid::parse_str(cluster["id"].as_str().unwrap()).unwrap();
    let machines: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT name, role, address, host_key FROM machines WHERE cluster_id = $1 AND deleted_at IS NULL ORDER BY name",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        machines.iter().filter(|m| m.1 == "control_plane").count(),
        3,
        "{machines:?}"
    );
    let lb = machines
        .iter()
        .find(|m| m.1 == "load_balancer")
        .expect("a load balancer machine");
    assert_eq!(
        cluster["endpoint"],
        format!("https://{}:6443", lb.2),
        "the endpoint is the load balancer"
    );

    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{name}/kubeconfig"),
            Some(&owner),
            Some(json!({"role": "admin", "ttl_seconds": 3600})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let kc = tmp.join("admin.kubeconfig");
    std::fs::write(&kc, &r.text).unwrap();
    let (ok, out) = kubectl_run(&kc, &["get", "--raw", "/readyz"]);
    assert!(ok && out.trim() == "ok", "readyz: {out}");

    // The load balancer's bootstrap is idempotent, and a run cut off after
    // installing HAProxy's files but before restarting it (its stamp names
    // other files) is finished by the next run.
    let (code, lines) =
        run_on_machine(&app, &lb.2, &lb.3, "bash /opt/kubeforge/lb/bootstrap-lb.sh").await;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines, ["load balancer: no changes"], "{lines:?}");
    let (code, lines) = run_on_machine(
        &app,
        &lb.2,
        &lb.3,
        "echo cut-off > /var/lib/kubeforge/lb/haproxy.sha256 && bash /opt/kubeforge/lb/bootstrap-lb.sh",
    )
    .await;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(
        lines,
        ["load balancer: configuration installed, HAProxy restarted"],
        "{lines:?}"
    );
    wait_readyz(
        &kc,
        Duration::from_secs(30),
        "no answer after HAProxy restarted",
    )
    .await;

    // Lose one member.
    let lost = format!("{name}-cp-1");
    let lost_at = Instant::now();
    power_off(&lost);

    // The API still answers through the endpoint (HAProxy drops the dead backend).
    wait_readyz(
        &kc,
        Duration::from_secs(30),
        "the endpoint stopped answering",
    )
    .await;
    // Writes need etcd quorum (2 of 3); if the lost member led etcd, the
    // survivors elect a new leader first, so allow a few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = kubectl_run(&kc, &["create", "namespace", "still-writable"]);
        if ok || out.contains("AlreadyExists") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes failed with 2 of 3 members: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // etcd: 2 of 3 healthy, asked from a surviving member.
    let survivor = machines
        .iter()
        .find(|m| m.0 == format!("{name}-cp-0"))
        .unwrap();
    let endpoints: Vec<String> = machines
        .iter()
        .filter(|m| m.1 == "control_plane")
        .map(|m| format!("https://{}:2379", m.2))
        .collect();
    let cmd = format!(
        "ETCDCTL_API=3 etcdctl --endpoints={} --cacert /etc/kubernetes/pki/etcd/ca.crt \
         --cert /etc/kubernetes/pki/etcd/healthcheck-client.crt \
         --key /etc/kubernetes/pki/etcd/healthcheck-client.key --command-timeout=3s endpoint health",
        endpoints.join(",")
    );
    // (etcdctl exits non-zero while a member is unhealthy.)
    let (_, lines) = run_on_machine(&app, &survivor.2, &survivor.3, &cmd).await;
    let healthy = lines.iter().filter(|l| l.contains("is healthy")).count();
    let unhealthy = lines.iter().filter(|l| l.contains("is unhealthy")).count();
    assert_eq!((healthy, unhealthy), (2, 1), "{lines:?}");

    // Noticed: degraded; repaired: ready again.
    let degraded = drive(
        &app,
        &owner,
        &name,
        Some("degraded"),
        Duration::from_secs(60),
    )
    .await;
    let detected = lost_at.elapsed();
    let cp = degraded["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned();
    assert_eq!(cp.map(|c| c["status"].clone()), Some(json!("False")));
    drive(&app, &owner, &name, Some("ready"), Duration::from_secs(240)).await;
    eprintln!(
        "lost control-plane member: degraded after {:.1} s, ready again after {:.1} s",
        detected.as_secs_f64(),
        lost_at.elapsed().as_secs_f64()
    );
    let events: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM events WHERE cluster_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    for reason in ["MachineStopped", "ClusterDegraded", "ClusterReady"] {
        assert!(
            events.iter().any(|e| e == reason),
            "no {reason} event: {events:?}"
        );
    }
    let (ok, out) = kubectl_run(&kc, &["get", "namespace", "still-writable"]);
    assert!(ok, "data written while degraded survives: {out}");

    delete_cluster(&app, &owner, &name, Duration::from_secs(90)).await;
    for m in &machines {
        assert_eq!(
            processes_mentioning(&format!("--hostname={}", m.0)),
            0,
            "{} still runs",
            m.0
        );
    }
    drop(bridge);
    let _ = std::fs::remove_dir_all(&tmp);
}
