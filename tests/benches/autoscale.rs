//! Autoscaler timings on this machine, with the real job engine as in
//! `kubeforge serve` (nothing hurried), against the real scheduler:
//!
//! - a pod found `Unschedulable` to the new pool size written (the
//!   decision: the watch, the batch, the simulation, the write);
//! - the same pod to `Running` on its new node;
//! - the pods deleted to the pool back at its min (unneeded time 10 s);
//! - `PATCH size` +1 to the new node Ready while the autoscaler watches
//!   the cluster (a node's Ready wakes the reconciler).
//!
//! `KF_BENCH_RUNS` rounds (default 3), medians and maxima printed.
//!
//!     cargo bench -p kubeforge-tests --bench autoscale
//!
//! Needs root and the lab artifacts (scripts/build-lab-image,
//! scripts/build-lab-pause, scripts/build-kube).

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge::engine::jobs::EngineConfig;
use kubeforge_tests::lab::{kubectl_run, write_kubeconfig, Bridge};
use kubeforge_tests::TestApp;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

const POOL: &str = "/v1/clusters/ba/node-pools/auto";

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let median = match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    format!(
        "median {median:.2} s, max {:.2} s ({} runs: {})",
        v.last().copied().unwrap_or(f64::NAN),
        v.len(),
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    )
}

async fn pool(app: &TestApp, token: &str) -> Value {
    app.call(Method::GET, POOL, Some(token), None, &[])
        .await
        .body
}

async fn wait_pool(app: &TestApp, token: &str, size: u64) {
    let t = Instant::now();
    loop {
        let p = pool(app, token).await;
        if p["size"] == size
            && p["ready_nodes"] == size
            && p["nodes"].as_array().map(Vec::len) == Some(size as usize)
        {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "pool not at {size}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pods(kc: &Path, app: &str) -> Vec<Value> {
    let (ok, out) = kubectl_run(
        kc,
        &["get", "pods", "-l", &format!("app={app}"), "-o", "json"],
    );
    assert!(ok, "{out}");
    serde_json::from_str::<Value>(&out).unwrap()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn unschedulable_since(p: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")?
        ["lastTransitionTime"]
        .as_str()?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("KF_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-autoscale-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&tmp).unwrap();
    let bridge = Bridge("kfbencha0".into(), tmp.clone(), None);
    let app = TestApp::with_lab(&tmp, &bridge.0, "10.77.252.0/24").await;
    let engine = kubeforge::server::build_engine(&app.app, EngineConfig::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let engine_task = tokio::spawn(engine.run(stop_rx, Duration::from_secs(5)));
    let token = app.token("bench", Role::Admin);

    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&token),
            Some(
                json!({"name": "ba", "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
                        "autoscaler": {"scale_down_unneeded_seconds": 10},
                        "node_pools": [{"name": "auto", "size": 1,
                                        "autoscaling": {"min": 1, "max": 3}}]}),
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_pool(&app, &token, 1).await;
    let kc = tmp.join("admin.kubeconfig");
    write_kubeconfig(&app, &token, "ba", "admin", 7200, &kc).await;
    let image = kubeforge_cluster::worker::PAUSE_IMAGE;

    let (mut decide, mut running, mut back, mut patch) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        // Two pods of 600m: the one node (900m) takes one, the other needs
        // a new node.
        let app_name = format!("load{i}");
        let f = tmp.join(format!("{app_name}.yaml"));
        std::fs::write(
            &f,
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app_name}\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: {app_name}\n  template:\n    metadata:\n      labels:\n        app: {app_name}\n    spec:\n      containers:\n      - name: c\n        image: {image}\n        imagePullPolicy: Never\n        resources:\n          requests:\n            cpu: 600m\n"
            ),
        )
        .unwrap();
        let before: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE reason = 'ScaleUp'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        let (ok, out) = kubectl_run(&kc, &["apply", "-f", f.to_str().unwrap()]);
        assert!(ok, "{out}");
        let t = Instant::now();
        let written: chrono::DateTime<chrono::Utc> = loop {
            let at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
                "SELECT created_at FROM events WHERE reason = 'ScaleUp' ORDER BY id OFFSET $1 LIMIT 1",
            )
            .bind(before)
            .fetch_optional(&app.pool)
            .await
            .unwrap();
            if let Some(at) = at {
                break at;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "no scale-up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let since = loop {
            if let Some(s) = pods(&kc, &app_name)
                .iter()
                .filter_map(unschedulable_since)
                .min()
            {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let d = (written - since).num_milliseconds() as f64 / 1000.0;
        loop {
            let p = pods(&kc, &app_name);
            if p.len() == 2 && p.iter().all(|p| p["status"]["phase"] == "Running") {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(300), "pods not running");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = (chrono::Utc::now() - since).num_milliseconds() as f64 / 1000.0;
        println!("run {i}: unschedulable -> size written {d:.2} s; -> running {r:.1} s");
        decide.push(d);
        running.push(r);

        let (ok, out) = kubectl_run(&kc, &["delete", "deployment", &app_name]);
        assert!(ok, "{out}");
        let t = Instant::now();
        wait_pool(&app, &token, 1).await;
        back.push(t.elapsed().as_secs_f64());
        println!(
            "run {i}: pods deleted -> back at min 1: {:.1} s",
            t.elapsed().as_secs_f64()
        );

        let t = Instant::now();
        let r = app
            .call(
                Method::PATCH,
                POOL,
                Some(&token),
                Some(json!({"size": 2})),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        wait_pool(&app, &token, 2).await;
        patch.push(t.elapsed().as_secs_f64());
        println!(
            "run {i}: PATCH size 2 -> node Ready: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        // The idle node goes again after the unneeded time.
        wait_pool(&app, &token, 1).await;
    }

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cpus} cores; unneeded time 10 s; small nodes (900m allocatable)");
    println!("pod unschedulable -> new size written: {}", stats(decide));
    println!(
        "pod unschedulable -> running on its new node: {}",
        stats(running)
    );
    println!("pods deleted -> pool back at its min: {}", stats(back));
    println!(
        "PATCH size +1 -> node Ready (autoscaler watching): {}",
        stats(patch)
    );
    let _ = stop_tx.send(true);
    let _ = engine_task.await;
}
