//! End to end: workers on bring-your-own hosts. Four lab machines WITHOUT
//! the service's binaries bound in (standing in for a platform team's own
//! servers) are registered through `POST /v1/hosts`; one tenant's cluster
//! on the `ssh` provider takes a control plane and a pool of two workers
//! from them, another tenant's control plane the fourth. Pods run on both
//! workers. Scaling the pool to one wipes the freed host back to exactly
//! the state it had before it joined (compared section by section, a
//! unified diff on failure), returns it to the pool, and the other tenant's
//! new pool claims it and joins it as a Ready node. Deleting both clusters
//! leaves every host free and as it was.
//!
//! Needs root and the artifacts of `scripts/build-lab-image`,
//! `scripts/build-kube` and `scripts/build-lab-pause`. Traffic goes only to
//! the test's own bridge.

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge::ssh::ClientKey;
use kubeforge_tests::hosts::{
    assert_same_state, boot, byo_lab, host_state, list, register, register_with, ByoHost, HostState,
};
use kubeforge_tests::lab::{
    delete_cluster, drive, drive_until, kubectl_run, run_pod_on, sandbox, write_kubeconfig,
};
use kubeforge_tests::TestApp;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

const POOL: &str = "byo";

fn cluster_body(name: &str, pool_size: Option<u64>) -> Value {
    let mut body = json!({
        "name": name, "kubernetes_version": "1.20.2", "provider": {"kind": "ssh"},
        "control_plane": {"replicas": 1, "machine_type": "small"}
    });
    if let Some(size) = pool_size {
        body["node_pools"] = json!([{"name": POOL, "machine_type": "small", "size": size,
                                     "host_selector": {"gpu": "false"}}]);
    }
    body
}

/// Host id -> the cluster id of the machine claiming it (None: free).
async fn claims(app: &TestApp, admin: &str) -> BTreeMap<String, Option<Uuid>> {
    let mut out = BTreeMap::new();
    for h in list(app, admin).await {
        let cluster = match h["claimed_by"].as_str() {
            Some(m) => Some(
                sqlx::query_scalar::<_, Uuid>("SELECT cluster_id FROM machines WHERE id = $1")
                    .bind(Uuid::parse_str(m).unwrap())
                    .fetch_one(&app.pool)
                    .await
                    .unwrap(),
            ),
            None => None,
        };
        out.insert(h["id"].as_str().unwrap().to_string(), cluster);
    }
    out
}

/// Node name -> Ready, as kubectl sees them.
fn nodes(kc: &Path) -> BTreeMap<String, bool> {
    let (ok, out) = kubectl_run(kc, &["get", "nodes", "-o", "json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (n["metadata"]["name"].as_str().unwrap().to_string(), ready)
        })
        .collect()
}

fn pool_ready(body: &Value, n: u64) -> bool {
    body["ready_nodes"] == n
        && body["nodes"].as_array().map(Vec::len) == Some(n as usize)
        && body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["state"] == "ready")
}

#[tokio::test]
async fn workers_join_registered_hosts_and_leave_them_as_they_were() {
    let started = Instant::now();
    let (tmp, octet, bridge) = sandbox(env!("CARGO_TARGET_TMPDIR"), "e2e-ssh-workers", "kfh");
    let subnet = format!("10.79.{octet}.0/24");
    let app = TestApp::with_lab_and_ssh(&tmp.join("svc"), &bridge.0, &subnet).await;
    let admin = app.token("platform", Role::PlatformAdmin);

    // Four hosts, their state before anything joined, registered.
    let owner_key = ClientKey::generate().unwrap();
    let lab = byo_lab(&tmp.join("hostlab"), &bridge.0, &subnet, &owner_key);
    let mut hosts: Vec<ByoHost> = Vec::new();
    for i in 0..4 {
        hosts.push(boot(&lab, &format!("kfh{octet}-h{i}"), &owner_key).await);
    }
    let mut before: BTreeMap<String, (usize, HostState)> = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        let state = host_state(h).await;
        // Taken twice: the picture itself is stable.
        assert_same_state(
            &format!("{} read twice", h.name),
            &state,
            &host_state(h).await,
        );
        let id = register(&app, &admin, h, json!({"rack": "lab", "gpu": "false"})).await;
        before.insert(id, (i, state));
    }
    eprintln!(
        "4 hosts booted and registered: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Tenant acme: a control plane and a pool of two; tenant globex: a
    // control plane (the fourth host).
    let acme = app.token("acme", Role::Admin);
    let globex = app.token("globex", Role::Admin);
    let (a, b) = (format!("wa{octet}"), format!("wb{octet}"));
    for (token, body) in [
        (&acme, cluster_body(&a, Some(2))),
        (&globex, cluster_body(&b, None)),
    ] {
        let r = app
            .call(Method::POST, "/v1/clusters", Some(token), Some(body), &[])
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let t = Instant::now();
    let ca = drive(&app, &acme, &a, Some("ready"), Duration::from_secs(420)).await;
    let cb = drive(&app, &globex, &b, Some("ready"), Duration::from_secs(120)).await;
    drive_until(
        &app,
        &acme,
        &format!("/v1/clusters/{a}/node-pools/{POOL}"),
        "acme's pool of 2 Ready",
        Duration::from_secs(300),
        |s, body| (s == 200 && pool_ready(body, 2)).then_some(()),
    )
    .await;
    eprintln!(
        "both clusters ready (pool of 2 joined): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (a_id, b_id) = (
        Uuid::parse_str(ca["id"].as_str().unwrap()).unwrap(),
        Uuid::parse_str(cb["id"].as_str().unwrap()).unwrap(),
    );
    let claimed = claims(&app, &admin).await;
    assert_eq!(
        claimed.values().filter(|c| **c == Some(a_id)).count(),
        3,
        "{claimed:?}"
    );
    assert_eq!(
        claimed.values().filter(|c| **c == Some(b_id)).count(),
        1,
        "{claimed:?}"
    );

    // Both nodes Ready, a pod running on each.
    let kca = tmp.join("a.kubeconfig");
    write_kubeconfig(&app, &acme, &a, "admin", 900, &kca).await;
    let a_nodes = nodes(&kca);
    assert_eq!(a_nodes.len(), 2, "{a_nodes:?}");
    assert!(a_nodes.values().all(|r| *r), "{a_nodes:?}");
    for node in a_nodes.keys() {
        run_pod_on(&kca, &tmp, node).await;
    }
    // The binaries and the sandbox image were uploaded by the join.
    let uploads: Vec<String> = sqlx::query_scalar(
        "SELECT message FROM events WHERE cluster_id = $1 AND reason = 'BinariesUploaded'",
    )
    .bind(a_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        uploads
            .iter()
            .filter(|m| m.ends_with("3 Kubernetes binaries and the sandbox image uploaded"))
            .count(),
        2,
        "{uploads:?}"
    );

    // A pool that wants a GPU host waits for one, saying so, while the
    // rest of the cluster carries on; a host labelled gpu=true with a GPU
    // declared is registered, claimed, and its node shows the GPU.
    let t = Instant::now();
    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{a}/node-pools"),
            Some(&acme),
            Some(json!({"name": "gpu", "machine_type": "small", "size": 1,
                        "host_selector": {"gpu": "true"}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let gpu_op = r.body["operation"]["id"].as_str().unwrap().to_string();
    let waiting = drive_until(
        &app,
        &acme,
        &format!("/v1/clusters/{a}/node-pools/gpu"),
        "the gpu pool waiting for a matching host",
        Duration::from_secs(60),
        |s, body| {
            let c = body["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "MachinesReady")?;
            (s == 200 && c["reason"] == "WaitingForCapacity").then(|| c["message"].clone())
        },
    )
    .await;
    assert!(
        waiting
            .as_str()
            .unwrap()
            .contains("no free host matching gpu=true"),
        "{waiting}"
    );
    let r = app
        .call(
            Method::GET,
            &format!("/v1/operations/{gpu_op}"),
            Some(&acme),
            None,
            &[],
        )
        .await;
    assert_eq!(
        r.body["state"], "running",
        "waiting is not failing: {}",
        r.text
    );
    let gpu_host = boot(&lab, &format!("kfh{octet}-gpu"), &owner_key).await;
    let gpu_before = host_state(&gpu_host).await;
    let gpu_id = register_with(
        &app,
        &admin,
        &gpu_host,
        json!({"labels": {"rack": "lab", "gpu": "true"},
               "capacity": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}}),
    )
    .await;
    drive_until(
        &app,
        &acme,
        &format!("/v1/clusters/{a}/node-pools/gpu"),
        "the gpu pool Ready on the new host",
        Duration::from_secs(240),
        |s, body| (s == 200 && pool_ready(body, 1)).then_some(()),
    )
    .await;
    assert_eq!(claims(&app, &admin).await[&gpu_id], Some(a_id));
    let gpu_node = drive_until(
        &app,
        &acme,
        &format!("/v1/clusters/{a}/node-pools/gpu"),
        "the gpu node's name",
        Duration::from_secs(10),
        |_, body| body["nodes"][0]["name"].as_str().map(str::to_string),
    )
    .await;
    // The GPU is advertised on the node by the engine's pass; drive until
    // kubectl sees it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = kubectl_run(
            &kca,
            &[
                "get",
                "node",
                &gpu_node,
                "-o",
                "jsonpath={.status.capacity.nvidia\\.com/gpu}",
            ],
        );
        if ok && out.trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no nvidia.com/gpu on {gpu_node}: {out}"
        );
        kubeforge_tests::lab::hurry_and_run(&app).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "gpu pool waited, then joined the registered gpu host: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Scale to one: the freed host returns to the pool as it was before.
    let t = Instant::now();
    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/clusters/{a}/node-pools/{POOL}"),
            Some(&acme),
            Some(json!({"size": 1})),
            &[],
        )
        .await;
    assert!(r.status == 200 || r.status == 202, "{}", r.text);
    drive_until(
        &app,
        &acme,
        &format!("/v1/clusters/{a}/node-pools/{POOL}"),
        "pool scaled to 1",
        Duration::from_secs(180),
        |s, body| (s == 200 && pool_ready(body, 1)).then_some(()),
    )
    .await;
    let claimed = claims(&app, &admin).await;
    let freed: Vec<&String> = claimed
        .iter()
        .filter(|(_, c)| c.is_none())
        .map(|(h, _)| h)
        .collect();
    assert_eq!(freed.len(), 1, "{claimed:?}");
    let freed = freed[0].clone();
    eprintln!(
        "PATCH size 1 to the host free: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (index, was) = &before[&freed];
    let freed_host = &hosts[*index];
    assert_same_state(
        &format!("{} after it left {a}", freed_host.name),
        was,
        &host_state(freed_host).await,
    );

    // Another tenant's new pool claims it, and its node is Ready there.
    let t = Instant::now();
    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{b}/node-pools"),
            Some(&globex),
            Some(json!({"name": POOL, "machine_type": "small", "size": 1})),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    drive_until(
        &app,
        &globex,
        &format!("/v1/clusters/{b}/node-pools/{POOL}"),
        "globex's pool Ready",
        Duration::from_secs(240),
        |s, body| (s == 200 && pool_ready(body, 1)).then_some(()),
    )
    .await;
    eprintln!(
        "freed host joined another tenant: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(claims(&app, &admin).await[&freed], Some(b_id));
    let kcb = tmp.join("b.kubeconfig");
    write_kubeconfig(&app, &globex, &b, "admin", 900, &kcb).await;
    let b_nodes = nodes(&kcb);
    assert_eq!(b_nodes.len(), 1, "{b_nodes:?}");
    assert!(b_nodes.values().all(|r| *r), "{b_nodes:?}");
    run_pod_on(&kcb, &tmp, b_nodes.keys().next().unwrap()).await;

    // Both clusters deleted: every host free and as it was.
    let t = Instant::now();
    delete_cluster(&app, &acme, &a, Duration::from_secs(180)).await;
    delete_cluster(&app, &globex, &b, Duration::from_secs(180)).await;
    eprintln!("both clusters deleted: {:.1} s", t.elapsed().as_secs_f64());
    let claimed = claims(&app, &admin).await;
    assert!(claimed.values().all(Option::is_none), "{claimed:?}");
    assert_same_state(
        &format!("{} after both clusters", gpu_host.name),
        &gpu_before,
        &host_state(&gpu_host).await,
    );
    for (index, was) in before.values() {
        let h = &hosts[*index];
        assert_same_state(
            &format!("{} after both clusters", h.name),
            was,
            &host_state(h).await,
        );
    }
    eprintln!(
        "e2e_ssh_workers total: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
