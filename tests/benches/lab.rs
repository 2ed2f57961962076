//! Lab timings, as medians over several runs on this machine:
//! POST to `ready` with 1 and with 3 control planes, and for 3 control
//! planes the time to notice a lost member (`degraded`) and to be `ready`
//! again. The real job engine runs as in `kubeforge serve` (LISTEN/NOTIFY,
//! its own requeue delays); nothing is hurried.
//!
//!     cargo bench -p kubeforge-tests --bench lab            # 5 and 3 runs
//!     KF_BENCH_RUNS=9 cargo bench -p kubeforge-tests --bench lab
//!
//! Needs root and the artifacts of scripts/build-lab-image and scripts/build-kube.

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge::engine::jobs::EngineConfig;
use kubeforge_tests::lab::{power_off, Bridge};
use kubeforge_tests::TestApp;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn phase(app: &TestApp, token: &str, name: &str) -> Option<String> {
    let r = app
        .call(
            Method::GET,
            &format!("/v1/clusters/{name}"),
            Some(token),
            None,
            &[],
        )
        .await;
    r.body["phase"].as_str().map(str::to_string)
}

async fn wait_phase(
    app: &TestApp,
    token: &str,
    name: &str,
    want: Option<&str>,
    limit: Duration,
) -> Duration {
    let t = Instant::now();
    loop {
        let p = phase(app, token, name).await;
        if p.as_deref() == want {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "{name}: still {p:?} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("KF_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&tmp).unwrap();
    let bridge = Bridge("kfbench0".into(), tmp.clone(), None);
    let app = TestApp::with_lab(&tmp, &bridge.0, "10.77.250.0/24").await;
    let engine = kubeforge::server::build_engine(&app.app, EngineConfig::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let engine_task = tokio::spawn(engine.run(stop_rx, Duration::from_secs(5)));
    let token = app.token("bench", Role::Admin);

    let mut single = Vec::new();
    let mut triple = Vec::new();
    let mut detect = Vec::new();
    let mut repair = Vec::new();
    for (replicas, n) in [(1u32, runs), (3u32, runs.div_ceil(2).max(3))] {
        for i in 0..n {
            let name = format!("b{replicas}x{i}");
            let t = Instant::now();
            let r = app
                .call(
                    Method::POST,
                    "/v1/clusters",
                    Some(&token),
                    Some(json!({"name": name, "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
                                "control_plane": {"replicas": replicas}})),
                    &[],
                )
                .await;
            assert_eq!(r.status, 202, "{}", r.text);
            wait_phase(&app, &token, &name, Some("ready"), Duration::from_secs(300)).await;
            let took = t.elapsed().as_secs_f64();
            println!("run {i}: {replicas} control plane(s): POST to ready {took:.1} s");
            if replicas == 1 {
                single.push(took);
            } else {
                triple.push(took);
                let lost = Instant::now();
                power_off(&format!("{name}-cp-1"));
                wait_phase(
                    &app,
                    &token,
                    &name,
                    Some("degraded"),
                    Duration::from_secs(120),
                )
                .await;
                let d = lost.elapsed().as_secs_f64();
                wait_phase(&app, &token, &name, Some("ready"), Duration::from_secs(300)).await;
                let rr = lost.elapsed().as_secs_f64();
                println!(
                    "run {i}: lost member: degraded after {d:.1} s, ready again after {rr:.1} s"
                );
                detect.push(d);
                repair.push(rr);
            }
            let r = app
                .call(
                    Method::DELETE,
                    &format!("/v1/clusters/{name}"),
                    Some(&token),
                    None,
                    &[],
                )
                .await;
            assert_eq!(r.status, 202, "{}", r.text);
            wait_phase(&app, &token, &name, None, Duration::from_secs(120)).await;
        }
    }
    let _ = stop_tx.send(true);
    let _ = engine_task.await;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_default();
    println!(
        "\nmachine: {cores} cores, MemTotal {mem} kB; lab machines are systemd-nspawn containers"
    );
    println!(
        "POST to ready, 1 control plane:  median {:.1} s over {} runs",
        median(single.clone()),
        single.len()
    );
    println!(
        "POST to ready, 3 control planes: median {:.1} s over {} runs",
        median(triple.clone()),
        triple.len()
    );
    println!(
        "lost member noticed (degraded):  median {:.1} s",
        median(detect)
    );
    println!(
        "lost member repaired (ready):    median {:.1} s",
        median(repair)
    );
    drop(bridge);
    let _ = std::fs::remove_dir_all(&tmp);
}
