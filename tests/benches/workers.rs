//! Worker pool timings on this machine, with the real job engine as in
//! `kubeforge serve` (nothing hurried):
//!
//! - `PATCH size` to the new node Ready, one node at a time from 1 up to
//!   `KF_BENCH_MAX_WORKERS` (default 8), with the host's load and free
//!   memory and each worker machine's memory at every step: how many lab
//!   workers fit before joins slow down;
//! - a powered-off worker: time until its repair starts (pool threshold
//!   `auto_repair.after_seconds` = 20 s) and until its replacement is Ready,
//!   `KF_BENCH_RUNS` times (default 3).
//!
//!     cargo bench -p kubeforge-tests --bench workers
//!
//! Needs root and the lab artifacts (scripts/build-lab-image,
//! scripts/build-lab-pause, scripts/build-kube).

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge::engine::jobs::EngineConfig;
use kubeforge_tests::lab::{power_off, Bridge};
use kubeforge_tests::TestApp;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

const THRESHOLD: u64 = 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

async fn get(app: &TestApp, token: &str, path: &str) -> Value {
    app.call(Method::GET, path, Some(token), None, &[])
        .await
        .body
}

/// Waits until `done` holds for the pool; returns the pool.
async fn wait_pool(
    app: &TestApp,
    token: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let t = Instant::now();
    loop {
        let p = get(app, token, "/v1/clusters/bw/node-pools/work").await;
        if done(&p) {
            return p;
        }
        assert!(t.elapsed() < limit, "pool not {what} after {limit:?}: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready(p: &Value, n: u64) -> bool {
    p["ready_nodes"] == n && p["nodes"].as_array().map(Vec::len) == Some(n as usize)
}

fn load_and_free() -> (String, u64) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let avail = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    (load, avail / 1024)
}

/// Memory charged to each worker machine's cgroup (its kubelet, containerd,
/// kube-proxy, systemd and pods), MiB.
fn worker_memory(p: &Value) -> Vec<u64> {
    p["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["machine"].as_str())
        .filter_map(|id| {
            std::fs::read_to_string(format!(
                "/sys/fs/cgroup/memory/kubeforge/{id}/memory.usage_in_bytes"
            ))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .map(|b| b >> 20)
        .collect()
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("KF_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let max: u64 = std::env::var("KF_BENCH_MAX_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-workers-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&tmp).unwrap();
    let bridge = Bridge("kfbenchw0".into(), tmp.clone(), None);
    let app = TestApp::with_lab(&tmp, &bridge.0, "10.77.251.0/24").await;
    let engine = kubeforge::server::build_engine(&app.app, EngineConfig::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let engine_task = tokio::spawn(engine.run(stop_rx, Duration::from_secs(5)));
    let token = app.token("bench", Role::Admin);

    let t = Instant::now();
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&token),
            Some(json!({"name": "bw", "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
                        "node_pools": [{"name": "work", "size": 1,
                                        "auto_repair": {"enabled": true, "after_seconds": THRESHOLD}}]})),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_pool(&app, &token, "1 ready", Duration::from_secs(300), |p| {
        ready(p, 1)
    })
    .await;
    println!(
        "POST (1 control plane, pool of 1) to the node Ready: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut joins = Vec::new();
    let mut steps = Vec::new();
    for size in 2..=max {
        let t = Instant::now();
        let r = app
            .call(
                Method::PATCH,
                "/v1/clusters/bw/node-pools/work",
                Some(&token),
                Some(json!({ "size": size })),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let p = wait_pool(&app, &token, "scaled", Duration::from_secs(600), |p| {
            ready(p, size)
        })
        .await;
        let took = t.elapsed().as_secs_f64();
        let (load, free) = load_and_free();
        let mem = worker_memory(&p);
        println!(
            "size {size:>2}: PATCH to new node Ready {took:5.1} s; load {load}; host MemAvailable {free} MiB; worker memory MiB {mem:?}"
        );
        joins.push(took);
        steps.push((size, took));
    }

    let mut detect = Vec::new();
    let mut replace = Vec::new();
    for i in 0..runs {
        let p = get(&app, &token, "/v1/clusters/bw/node-pools/work").await;
        let victim = p["nodes"][0]["name"].as_str().unwrap().to_string();
        let before: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE reason = 'NodeRepair'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        let t = Instant::now();
        power_off(&victim);
        loop {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM events WHERE reason = 'NodeRepair'")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            if n > before {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(300), "no repair started");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let d = t.elapsed().as_secs_f64();
        let v = victim.clone();
        wait_pool(
            &app,
            &token,
            "repaired",
            Duration::from_secs(600),
            move |p| {
                ready(p, max)
                    && !p["nodes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|n| n["name"] == v.as_str())
            },
        )
        .await;
        let r = t.elapsed().as_secs_f64();
        println!("run {i}: worker {victim} powered off: repair started after {d:.1} s, replacement Ready after {r:.1} s");
        detect.push(d);
        replace.push(r);
    }

    let r = app
        .call(Method::DELETE, "/v1/clusters/bw", Some(&token), None, &[])
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let t = Instant::now();
    while get(&app, &token, "/v1/clusters/bw").await["phase"].is_string() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "cluster not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(true);
    let _ = engine_task.await;

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let inotify =
        std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances").unwrap_or_default();
    println!(
        "\nmachine: {cores} cores; fs.inotify.max_user_instances {}; lab machines are systemd-nspawn containers; real engine, not hurried",
        inotify.trim()
    );
    println!(
        "PATCH size +1 to the new node Ready: median {:.1} s over {} steps (1 -> {max} workers)",
        median(joins),
        steps.len()
    );
    println!(
        "dead worker: repair started after median {:.1} s (threshold {THRESHOLD} s), replacement Ready after median {:.1} s, over {} runs",
        median(detect),
        median(replace),
        runs
    );
    drop(bridge);
    let _ = std::fs::remove_dir_all(&tmp);
}
