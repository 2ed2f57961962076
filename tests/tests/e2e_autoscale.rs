//! End to end on the lab: the builtin autoscaler against the real
//! scheduler, real kubelets and real kubectl, with two service replicas
//! (two job engines on one database) as `serve` runs them.
//!
//! One cluster (1 control plane) with an autoscaling pool `auto`
//! (min 1, max 4) and a pool `zero` (min 0, max 2, tainted) that starts
//! empty:
//! - pods that do not fit -> one scale-up written, new nodes Ready, the
//!   pods running (the lab's sandbox image stands in for an app image);
//! - a pod whose nodeSelector no pool satisfies -> no scale-up for it,
//!   and its explanation names each pool's misfit;
//! - the replica holding the cluster's watch is killed right after pods
//!   arrive -> the other replica takes the lease over and decides, once;
//! - a pod for the tainted pool -> it scales up from zero.
//!
//! Beside it, a second cluster is driven by an upstream cluster-autoscaler's
//! calls (the externalgrpc provider over mTLS, a client generated from
//! Kubeforge's `.proto`): template node, scale-up to a Ready node, a named
//! node deleted.
//!
//! Needs root and the artifacts of `scripts/build-lab-image` and
//! `scripts/build-kube` (the test command builds both).

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge::engine::jobs::EngineConfig;
use kubeforge_tests::lab::{kubectl_run, sandbox, write_kubeconfig};
use kubeforge_tests::{lab_engine_config, TestApp};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

const IMAGE: &str = kubeforge_cluster::worker::PAUSE_IMAGE;

/// One service replica: a job engine of its own, run in the background
/// until stopped or killed.
struct Replica {
    id: Uuid,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _stop: watch::Sender<bool>,
}

fn replica(app: &TestApp) -> Replica {
    let id = Uuid::new_v4();
    let engine = kubeforge::server::build_engine(
        &app.app,
        EngineConfig {
            worker_id: id,
            // Lab jobs on a busy machine: see `lab_engine_config`. With
            // the 2 s test lease a replica gave up its jobs whenever the
            // machine stalled for a second, and a pool's join ran again
            // and again (a CI run beside the conformance cluster).
            ..lab_engine_config()
        },
    );
    let (stop, rx) = watch::channel(false);
    Replica {
        id,
        task: tokio::spawn(engine.run(rx, Duration::from_secs(1))),
        _stop: stop,
    }
}

async fn get(app: &TestApp, token: &str, path: &str) -> Value {
    let r = app.call(Method::GET, path, Some(token), None, &[]).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text);
    r.body
}

/// Polls `check` every half second until it gives a value, or panics
/// naming `what` after `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not after {within:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn apply(kc: &Path, dir: &Path, name: &str, yaml: &str) {
    let f = dir.join(format!("{name}.yaml"));
    std::fs::write(&f, yaml).unwrap();
    let (ok, out) = kubectl_run(kc, &["apply", "-f", f.to_str().unwrap()]);
    assert!(ok, "apply {name}: {out}");
}

/// A Deployment of `replicas` pods asking `cpu` each, with extra pod spec
/// lines (`nodeSelector`, tolerations) indented for the spec.
fn deployment(name: &str, replicas: u32, cpu: &str, extra: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n{extra}      containers:\n      - name: c\n        image: {IMAGE}\n        imagePullPolicy: Never\n        resources:\n          requests:\n            cpu: {cpu}\n            memory: 64Mi\n"
    )
}

/// The pods labelled `app=<app>`, as kubectl shows them.
fn pod_objects(kc: &Path, app: &str) -> Vec<Value> {
    let (ok, out) = kubectl_run(
        kc,
        &["get", "pods", "-l", &format!("app={app}"), "-o", "json"],
    );
    assert!(ok, "get pods: {out}");
    serde_json::from_str::<Value>(&out).unwrap()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `(name, phase, node)` of the pods labelled `app=<app>`.
fn pods(kc: &Path, app: &str) -> Vec<(String, String, String)> {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    pod_objects(kc, app)
        .iter()
        .map(|p| {
            (
                text(&p["metadata"]["name"]),
                text(&p["status"]["phase"]),
                text(&p["spec"]["nodeName"]),
            )
        })
        .collect()
}

/// When the first pod labelled `app=<app>` was found unschedulable.
fn first_unschedulable(kc: &Path, app: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    pod_objects(kc, app)
        .iter()
        .flat_map(|p| {
            p["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
        .filter_map(|c| c["lastTransitionTime"].as_str()?.parse().ok())
        .min()
}

async fn events(app: &TestApp, reason: &str) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as("SELECT message, created_at FROM events WHERE reason = $1 ORDER BY id")
        .bind(reason)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn snapshot(app: &TestApp, cluster: Uuid) -> kubeforge_cluster::api::AutoscalerSnapshot {
    kubeforge::store::autoscaler::get_snapshot(&app.pool, cluster)
        .await
        .unwrap()
        .unwrap_or_default()
}

async fn pool_ready(app: &TestApp, token: &str, cluster: &str, pool: &str, n: u64) -> Value {
    let path = format!("/v1/clusters/{cluster}/node-pools/{pool}");
    wait_for(
        &format!("pool {pool} with {n} ready nodes"),
        Duration::from_secs(300),
        || async {
            let p = get(app, token, &path).await;
            // Exactly n nodes: none still on its way out either.
            (p["size"] == n
                && p["ready_nodes"] == n
                && p["nodes"].as_array().map(Vec::len) == Some(n as usize))
            .then_some(p)
        },
    )
    .await
}

async fn all_running(kc: &Path, app: &str, n: usize) -> Vec<(String, String, String)> {
    wait_for(
        &format!("{n} pods of {app} running"),
        Duration::from_secs(180),
        || async {
            let p = pods(kc, app);
            (p.len() == n && p.iter().all(|(_, phase, _)| phase == "Running")).then_some(p)
        },
    )
    .await
}

#[tokio::test]
async fn pending_pods_grow_pools_once_each_explained_across_replicas() {
    let (tmp, octet, bridge) = sandbox(env!("CARGO_TARGET_TMPDIR"), "e2e-autoscale", "kfa");
    let app = TestApp::with_lab(&tmp, &bridge.0, &format!("10.80.{octet}.0/24")).await;
    let owner = app.token("acme", Role::Admin);
    let name = format!("a{octet}");
    let replicas = [replica(&app), replica(&app)];

    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(json!({
                "name": name, "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
                "control_plane": {"replicas": 1, "machine_type": "small"},
                "node_pools": [
                    {"name": "auto", "machine_type": "small", "size": 1,
                     "autoscaling": {"min": 1, "max": 4}},
                    {"name": "zero", "machine_type": "small", "size": 0,
                     "autoscaling": {"min": 0, "max": 2},
                     "labels": {"tier": "zero"},
                     "taints": [{"key": "zero", "value": "true", "effect": "NoSchedule"}]}
                ]
            })),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cluster_id = Uuid::parse_str(r.body["cluster"]["id"].as_str().unwrap()).unwrap();
    pool_ready(&app, &owner, &name, "auto", 1).await;
    let kc = tmp.join("admin.kubeconfig");
    write_kubeconfig(&app, &owner, &name, "admin", 3600, &kc).await;
    // Ready is not yet schedulable: the node lifecycle controller lifts the
    // not-ready taint a moment later (longer on a busy machine), and pods
    // that arrive before it see no node that takes them.
    wait_for(
        "the first node rid of its not-ready taint",
        Duration::from_secs(60),
        || async {
            let nodes = node_objects(&kc);
            (!nodes.is_empty()
                && nodes.iter().all(|n| {
                    ready(n)
                        && !n["spec"]["taints"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|t| t["key"] == "node.kubernetes.io/not-ready")
                }))
            .then_some(())
        },
    )
    .await;

    // The autoscaler watches the cluster on one replica.
    let holder: Uuid = wait_for(
        "the autoscale job claimed",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar(
            "SELECT lease_owner FROM jobs WHERE kind = 'autoscale_cluster' AND state = 'running'",
        )
        .fetch_optional(&app.pool)
        .await
        .unwrap()
        .flatten()
        },
    )
    .await;
    let snap = wait_for("a first round", Duration::from_secs(60), || async {
        let s = snapshot(&app, cluster_id).await;
        s.observed_at.is_some().then_some(s)
    })
    .await;
    assert_eq!(snap.pending_pods, 0, "{snap:?}");

    // Three pods of 600m: the one small node (900m) takes one; two more
    // nodes are needed. A pod asking for an SSD node fits no pool.
    apply(&kc, &tmp, "web", &deployment("web", 3, "600m", ""));
    apply(
        &kc,
        &tmp,
        "ssd",
        &deployment(
            "ssd",
            1,
            "100m",
            "      nodeSelector:\n        disktype: ssd\n",
        ),
    );
    // Kill the replica holding the watch while the pods arrive: the other
    // takes the lease over (once it expires, 20 s) and decides.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = replicas
        .iter()
        .find(|r| r.id == holder)
        .expect("the holder is one of the replicas");
    killed.task.abort();
    let killed_id = killed.id;
    let t_kill = Instant::now();
    let taken_over: Uuid = wait_for("the watch taken over", Duration::from_secs(60), || async {
        let owner: Option<Uuid> = sqlx::query_scalar(
            "SELECT lease_owner FROM jobs WHERE kind = 'autoscale_cluster' AND state = 'running'",
        )
        .fetch_optional(&app.pool)
        .await
        .unwrap()
        .flatten();
        owner.filter(|o| *o != killed_id)
    })
    .await;
    eprintln!(
        "watch taken over by {taken_over} {:.1} s after the kill",
        t_kill.elapsed().as_secs_f64()
    );

    let ups = wait_for("a scale-up", Duration::from_secs(60), || async {
        let e = events(&app, "ScaleUp").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    let unschedulable = first_unschedulable(&kc, "web").expect("web pods were unschedulable");
    eprintln!(
        "pod unschedulable -> new size written: {:.2} s ({})",
        (ups[0].1 - unschedulable).num_milliseconds() as f64 / 1000.0,
        ups[0].0
    );
    assert!(
        ups[0].0.contains("node pool auto scales up from 1 to 3"),
        "{ups:?}"
    );
    let t_up = Instant::now();
    pool_ready(&app, &owner, &name, "auto", 3).await;
    let web = all_running(&kc, "web", 3).await;
    eprintln!(
        "pod unschedulable -> all 3 running: {:.1} s (nodes Ready {:.1} s after the decision)",
        (chrono::Utc::now() - unschedulable).num_milliseconds() as f64 / 1000.0,
        t_up.elapsed().as_secs_f64()
    );
    let on: std::collections::BTreeSet<&str> = web.iter().map(|(_, _, n)| n.as_str()).collect();
    assert_eq!(on.len(), 3, "one web pod per node: {web:?}");
    // Once: however many rounds ran on however many replicas.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ups = events(&app, "ScaleUp").await;
    assert_eq!(ups.len(), 1, "{ups:?}");
    let pool = get(
        &app,
        &owner,
        &format!("/v1/clusters/{name}/node-pools/auto"),
    )
    .await;
    assert_eq!(pool["size"], 3, "{pool}");

    // The SSD pod is explained: no pool takes it, and each pool says why.
    let snap = wait_for("the SSD pod explained", Duration::from_secs(30), || async {
        let s = snapshot(&app, cluster_id).await;
        (s.pending_pods == 1
            && s.pending
                .iter()
                .any(|p| p.name.starts_with("ssd-") && p.outcome == "no_pool"))
        .then_some(s)
    })
    .await;
    let ssd = snap
        .pending
        .iter()
        .find(|p| p.name.starts_with("ssd-"))
        .unwrap();
    let reasons: Vec<(&str, &str)> = ssd
        .reasons
        .iter()
        .map(|r| (r.pool.as_str(), r.reason.as_str()))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|(p, r)| *p == "auto" && r.contains("node selector"))
            && reasons.iter().any(|(p, _)| *p == "zero"),
        "{reasons:?}"
    );
    assert_eq!(snap.pending_pods, 1, "{snap:?}");
    let no = events(&app, "NoScaleUp").await;
    assert!(
        no.iter()
            .any(|(m, _)| m.contains("ssd-") && m.contains("node selector")),
        "{no:?}"
    );

    // The pods were told too, as kubectl shows them (cluster-autoscaler's
    // event reasons, from the kubeforge-autoscaler component).
    let told = wait_for("pods told", Duration::from_secs(30), || async {
        let (ok, out) = kubectl_run(&kc, &["get", "events", "-o", "json"]);
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let of = |reason: &str| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| {
                    e["reason"] == reason && e["source"]["component"] == "kubeforge-autoscaler"
                })
                .map(|e| format!("{} {}", e["involvedObject"]["name"], e["message"]))
                .collect()
        };
        let (up, not) = (of("TriggeredScaleUp"), of("NotTriggerScaleUp"));
        (up.len() == 2 && !not.is_empty()).then_some((up, not))
    })
    .await;
    assert!(
        told.0
            .iter()
            .all(|m| m.contains("web-") && m.contains("node pool auto from 1 to 3 (max 4)")),
        "{told:?}"
    );
    assert!(
        told.1
            .iter()
            .all(|m| m.contains("ssd-") && m.contains("node selector")),
        "{told:?}"
    );
    let (ok, out) = kubectl_run(&kc, &["describe", "pod", "-l", "app=ssd"]);
    assert!(ok && out.contains("NotTriggerScaleUp"), "{out}");

    // Scale from zero: a pod for the tainted pool.
    apply(
        &kc,
        &tmp,
        "batch",
        &deployment(
            "batch",
            1,
            "100m",
            "      nodeSelector:\n        tier: zero\n      tolerations:\n      - key: zero\n        value: \"true\"\n        effect: NoSchedule\n",
        ),
    );
    pool_ready(&app, &owner, &name, "zero", 1).await;
    let batch = all_running(&kc, "batch", 1).await;
    let zero = get(
        &app,
        &owner,
        &format!("/v1/clusters/{name}/node-pools/zero"),
    )
    .await;
    assert!(
        zero["nodes"][0]["name"] == batch[0].2,
        "batch runs on {}, not the zero pool: {zero}",
        batch[0].2
    );
    let ups = events(&app, "ScaleUp").await;
    assert_eq!(ups.len(), 2, "{ups:?}");
    assert!(
        ups[1].0.contains("node pool zero scales up from 0 to 1"),
        "{ups:?}"
    );

    // The status API tells the same story as the snapshot.
    let status = get(&app, &owner, &format!("/v1/clusters/{name}/autoscaler")).await;
    assert_eq!(status["mode"], "builtin", "{status}");
    let auto = status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "auto")
        .cloned()
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(auto["recent_decisions"][0]["kind"], "scale_up", "{status}");
    assert_eq!(auto["recent_decisions"][0]["to"], 3, "{status}");
    // The scale-up's operation shows where each new node's time went.
    let op = auto["recent_decisions"][0]["operation"].as_str().unwrap();
    let op = get(&app, &owner, &format!("/v1/operations/{op}")).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let join = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "join")
        .unwrap_or_else(|| panic!("{op}"));
    let timeline = join["message"].as_str().unwrap();
    eprintln!("scale-up join: {timeline}");
    assert_eq!(timeline.matches(": running +").count(), 2, "{timeline}");
    assert_eq!(
        timeline.matches(", bootstrap +").count()
            + timeline.matches(", registered +").count()
            + timeline.matches(", Ready +").count(),
        6,
        "{timeline}"
    );
    assert!(
        status["pending"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["outcome"] == "no_pool" && p["name"].as_str().unwrap().starts_with("ssd-")),
        "{status}"
    );

    // Scale down, with a short unneeded time: without the web pods the
    // pool goes back to its min, one ScaleDown per node.
    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/clusters/{name}"),
            Some(&owner),
            Some(json!({"autoscaler": {"scale_down_unneeded_seconds": 10}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (ok, out) = kubectl_run(&kc, &["delete", "deployment", "web", "ssd"]);
    assert!(ok, "{out}");
    let t_down = Instant::now();
    pool_ready(&app, &owner, &name, "auto", 1).await;
    eprintln!(
        "web deleted -> pool auto back to 1: {:.1} s (unneeded time 10 s)",
        t_down.elapsed().as_secs_f64()
    );
    let downs = events(&app, "ScaleDown").await;
    assert_eq!(downs.len(), 2, "{downs:?}");
    assert!(
        downs
            .iter()
            .all(|(m, _)| m.contains("node pool auto scales down")),
        "{downs:?}"
    );

    // A budget keeps a node its pod could leave: with min 0, the last
    // auto node holds a guarded pod that would fit on the zero pool's
    // node; it stays while the budget allows no disruption, and goes
    // once the budget is gone (its pod moves).
    apply(
        &kc,
        &tmp,
        "guarded",
        &format!(
            "{}---\napiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata:\n  name: guarded\nspec:\n  minAvailable: 1\n  selector:\n    matchLabels:\n      app: guarded\n",
            deployment(
                "guarded",
                1,
                "100m",
                "      tolerations:\n      - key: zero\n        value: \"true\"\n        effect: NoSchedule\n      affinity:\n        nodeAffinity:\n          preferredDuringSchedulingIgnoredDuringExecution:\n          - weight: 100\n            preference:\n              matchExpressions:\n              - key: kubeforge.io/node-pool\n                operator: In\n                values: [auto]\n",
            )
        ),
    );
    let guarded = all_running(&kc, "guarded", 1).await;
    let auto_pool = get(
        &app,
        &owner,
        &format!("/v1/clusters/{name}/node-pools/auto"),
    )
    .await;
    assert_eq!(auto_pool["nodes"][0]["name"], guarded[0].2, "{auto_pool}");
    // Only now may the pool go to 0: lowered before the guarded pod ran,
    // the empty node could be removed before the pod and its budget
    // reached it (seen on a loaded machine).
    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/clusters/{name}/node-pools/auto"),
            Some(&owner),
            Some(json!({"autoscaling": {"min": 0, "max": 4}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let note = wait_for("the budget named", Duration::from_secs(60), || async {
        let s = get(&app, &owner, &format!("/v1/clusters/{name}/autoscaler")).await;
        s["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "auto")
            .and_then(|p| p["hold"].as_str().map(str::to_string))
            .filter(|h| h.contains("default/guarded") && h.contains("PDB default/guarded"))
    })
    .await;
    eprintln!("auto pool: {note}");
    tokio::time::sleep(Duration::from_secs(25)).await;
    let auto_pool = get(
        &app,
        &owner,
        &format!("/v1/clusters/{name}/node-pools/auto"),
    )
    .await;
    assert_eq!(
        auto_pool["size"], 1,
        "the budget did not keep the node: {auto_pool}"
    );
    let (ok, out) = kubectl_run(&kc, &["delete", "pdb", "guarded"]);
    assert!(ok, "{out}");
    wait_for("pool auto at 0", Duration::from_secs(180), || async {
        let p = get(
            &app,
            &owner,
            &format!("/v1/clusters/{name}/node-pools/auto"),
        )
        .await;
        (p["size"] == 0 && p["nodes"].as_array().is_some_and(Vec::is_empty)).then_some(())
    })
    .await;
    let guarded = all_running(&kc, "guarded", 1).await;
    assert_eq!(
        zero["nodes"][0]["name"], guarded[0].2,
        "guarded moved to the zero pool"
    );
    let downs = events(&app, "ScaleDown").await;
    assert_eq!(downs.len(), 3, "{downs:?}");

    // Metrics: the decisions by kind, and how long pods waited for them.
    let r = app.call(Method::GET, "/metrics", None, None, &[]).await;
    assert_eq!(r.status, 200);
    let metric = |name: &str| -> f64 {
        r.text
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    assert!(metric("kubeforge_autoscaler_decisions_total{kind=\"scale_up\"}") >= 2.0);
    assert!(metric("kubeforge_autoscaler_decisions_total{kind=\"scale_down\"}") >= 3.0);
    assert!(
        metric("kubeforge_autoscaler_decision_latency_seconds_count{kind=\"scale_up\"}") >= 2.0
    );

    // What the replica kill left: one autoscale job, no other owner.
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'autoscale_cluster'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(jobs, 1);
    for r in &replicas {
        r.task.abort();
    }
}

/// `runtime.Unknown`, the envelope of Kubernetes' protobuf encoding (after
/// the `k8s\0` magic): what a client sends the API server with
/// `Content-Type: application/vnd.kubernetes.protobuf`.
#[derive(Clone, PartialEq, prost::Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// Has the tenant's real API server decode `node` (a serialized v1.Node)
/// from protobuf, in a dry run, and returns the Node it understood as
/// JSON: Kubernetes' own decoder is the judge of the template's bytes.
async fn decoded_by_the_api_server(kc: &Path, node: &[u8]) -> Value {
    use prost::Message;
    use tokio::io::AsyncBufReadExt;
    let mut proxy = tokio::process::Command::new(kubeforge_tests::lab::kubectl())
        .arg("--kubeconfig")
        .arg(kc)
        .args(["proxy", "--port=0", "--address=127.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl proxy");
    let mut lines = tokio::io::BufReader::new(proxy.stdout.take().unwrap()).lines();
    let line = lines
        .next_line()
        .await
        .unwrap()
        .expect("kubectl proxy says where");
    let at = line
        .rsplit(' ')
        .next()
        .expect("Starting to serve on HOST:PORT")
        .to_string();
    let mut body = b"k8s\0".to_vec();
    body.extend(
        Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
            }),
            raw: Some(node.to_vec()),
        }
        .encode_to_vec(),
    );
    let r = reqwest::Client::new()
        .post(format!("http://{at}/api/v1/nodes?dryRun=All"))
        .header("Content-Type", "application/vnd.kubernetes.protobuf")
        .header("Accept", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST through kubectl proxy");
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(
        status, 201,
        "the API server did not take the template: {text}"
    );
    serde_json::from_str(&text).unwrap()
}

fn node_objects(kc: &Path) -> Vec<Value> {
    let (ok, out) = kubectl_run(kc, &["get", "nodes", "-o", "json"]);
    assert!(ok, "{out}");
    serde_json::from_str::<Value>(&out).unwrap()["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn ready(n: &Value) -> bool {
    n["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An upstream cluster-autoscaler's view, through the client generated
/// from Kubeforge's `.proto` over mTLS: the template node (decoded by the
/// tenant's own API server), a scale-up to a Ready node whose providerID
/// maps back to its group, a decrease refused because it would remove a
/// joined node, and that node deleted by name: drained and gone. Prints
/// each call's median time against the lab cluster.
#[tokio::test]
async fn an_upstream_cluster_autoscaler_drives_a_pool_over_grpc() {
    use kubeforge::externalgrpc::proto::ca;
    let (tmp, octet, bridge) = sandbox(env!("CARGO_TARGET_TMPDIR"), "e2e-grpc", "kfg");
    let (listener, address) = kubeforge_tests::grpc::bind().await;
    let app = TestApp::with_lab_config(
        &tmp,
        &bridge.0,
        &format!("10.81.{octet}.0/24"),
        kubeforge::app::Config {
            grpc_address: Some(address),
            ..kubeforge::app::Config::default()
        },
    )
    .await;
    let _server = kubeforge_tests::grpc::start(&app.app, listener).await;
    let _engine = replica(&app);
    let owner = app.token("acme", Role::Admin);
    let name = format!("g{octet}");
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(json!({
                "name": name, "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
                "control_plane": {"replicas": 1, "machine_type": "small"},
                "autoscaler": {"mode": "external"},
                "node_pools": [
                    {"name": "auto", "machine_type": "small", "size": 1,
                     "autoscaling": {"min": 1, "max": 3}, "labels": {"tier": "web"},
                     "taints": [{"key": "dedicated", "value": "ca", "effect": "NoSchedule"}]}
                ]
            })),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    pool_ready(&app, &owner, &name, "auto", 1).await;
    let kc = tmp.join("admin.kubeconfig");
    write_kubeconfig(&app, &owner, &name, "admin", 3600, &kc).await;
    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{name}/autoscaler/credentials"),
            Some(&owner),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut c = kubeforge_tests::grpc::client(&r.body)
        .await
        .expect("connects");

    // Each read call, 30 times: the medians.
    let mut timings: Vec<(&str, f64)> = Vec::new();
    macro_rules! time {
        ($name:literal, $call:expr) => {{
            let mut v = Vec::new();
            for _ in 0..30 {
                let t = Instant::now();
                $call.await.expect($name);
                v.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            timings.push((concat!($name, " (median of 30)"), median_ms(v)));
        }};
    }
    let existing = node_objects(&kc)
        .into_iter()
        .find(|n| n["metadata"]["labels"]["kubeforge.io/node-pool"] == "auto")
        .expect("the pool's node");
    let existing_id = existing["spec"]["providerID"].as_str().unwrap().to_string();
    assert!(existing_id.starts_with("kubeforge://"), "{existing}");
    let for_node = || ca::NodeGroupForNodeRequest {
        node: Some(ca::ExternalGrpcNode {
            provider_id: existing_id.clone(),
            ..Default::default()
        }),
    };
    time!("NodeGroups", c.node_groups(ca::NodeGroupsRequest {}));
    time!("NodeGroupForNode", c.node_group_for_node(for_node()));
    time!(
        "NodeGroupTargetSize",
        c.node_group_target_size(ca::NodeGroupTargetSizeRequest { id: "auto".into() })
    );
    time!(
        "NodeGroupNodes",
        c.node_group_nodes(ca::NodeGroupNodesRequest { id: "auto".into() })
    );
    time!(
        "NodeGroupTemplateNodeInfo",
        c.node_group_template_node_info(ca::NodeGroupTemplateNodeInfoRequest { id: "auto".into() })
    );
    time!(
        "NodeGroupGetOptions",
        c.node_group_get_options(ca::NodeGroupAutoscalingOptionsRequest {
            id: "auto".into(),
            defaults: None
        })
    );
    time!("GPULabel", c.gpu_label(ca::GpuLabelRequest {}));
    time!("Refresh", c.refresh(ca::RefreshRequest {}));
    let group = c
        .node_group_for_node(for_node())
        .await
        .unwrap()
        .into_inner()
        .node_group
        .unwrap();
    assert_eq!(
        (group.id.as_str(), group.min_size, group.max_size),
        ("auto", 1, 3)
    );

    // The template, judged by the tenant's API server: what a new node of
    // the pool is, as a joined node of the pool shows it.
    let bytes = c
        .node_group_template_node_info(ca::NodeGroupTemplateNodeInfoRequest { id: "auto".into() })
        .await
        .unwrap()
        .into_inner()
        .node_bytes;
    let template = decoded_by_the_api_server(&kc, &bytes).await;
    for key in [
        "kubeforge.io/node-pool",
        "tier",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
    ] {
        assert_eq!(
            template["metadata"]["labels"][key], existing["metadata"]["labels"][key],
            "label {key}: template {template}, node {existing}"
        );
    }
    for r in ["cpu", "memory", "pods"] {
        assert_eq!(
            template["status"]["allocatable"][r], existing["status"]["allocatable"][r],
            "allocatable {r}: template {template}, node {existing}"
        );
    }
    assert_eq!(
        template["status"]["allocatable"]["cpu"], "900m",
        "{template}"
    );
    // The pool's taints, as the node registered them (leaving out the
    // lifecycle controller's own, which come and go).
    let pool_taints = |n: &Value| -> Vec<(String, String, String)> {
        n["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                !t["key"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("node.kubernetes.io/")
            })
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap_or("").to_string();
                (s("key"), s("value"), s("effect"))
            })
            .collect()
    };
    assert_eq!(
        pool_taints(&template),
        vec![(
            "dedicated".to_string(),
            "ca".to_string(),
            "NoSchedule".to_string()
        )]
    );
    assert_eq!(pool_taints(&template), pool_taints(&existing), "{existing}");

    // Scale up by one: a new node, Ready, whose providerID maps back.
    let before: Vec<String> = node_objects(&kc)
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let asked = Instant::now();
    c.node_group_increase_size(ca::NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "auto".into(),
    })
    .await
    .expect("increase");
    timings.push((
        "NodeGroupIncreaseSize (one call)",
        asked.elapsed().as_secs_f64() * 1000.0,
    ));
    let new = wait_for("the new node Ready", Duration::from_secs(300), || async {
        node_objects(&kc)
            .into_iter()
            .find(|n| !before.iter().any(|b| n["metadata"]["name"] == b.as_str()) && ready(n))
    })
    .await;
    let to_ready = asked.elapsed();
    let new_id = new["spec"]["providerID"].as_str().unwrap().to_string();
    let group = c
        .node_group_for_node(ca::NodeGroupForNodeRequest {
            node: Some(ca::ExternalGrpcNode {
                provider_id: new_id.clone(),
                name: new["metadata"]["name"].as_str().unwrap().into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .node_group
        .unwrap();
    assert_eq!(group.id, "auto");
    let machines = get(&app, &owner, &format!("/v1/clusters/{name}/machines")).await;
    assert!(
        machines["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["node_provider_id"] == new_id.as_str()
                && m["name"] == new["metadata"]["name"]),
        "the API's machine view shows the same provider id: {machines}"
    );
    pool_ready(&app, &owner, &name, "auto", 2).await;

    // Both nodes joined: a decrease would remove one, so it is refused.
    let s = c
        .node_group_decrease_target_size(ca::NodeGroupDecreaseTargetSizeRequest {
            delta: -1,
            id: "auto".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");

    // Delete that node by name: drained, gone, the size back to 1.
    let asked = Instant::now();
    c.node_group_delete_nodes(ca::NodeGroupDeleteNodesRequest {
        nodes: vec![ca::ExternalGrpcNode {
            provider_id: new_id.clone(),
            ..Default::default()
        }],
        id: "auto".into(),
    })
    .await
    .expect("delete");
    timings.push((
        "NodeGroupDeleteNodes (one call)",
        asked.elapsed().as_secs_f64() * 1000.0,
    ));
    let new_name = new["metadata"]["name"].as_str().unwrap().to_string();
    wait_for(
        "the deleted node gone",
        Duration::from_secs(180),
        || async {
            (!node_objects(&kc)
                .iter()
                .any(|n| n["metadata"]["name"] == new_name.as_str()))
            .then_some(())
        },
    )
    .await;
    let gone = asked.elapsed();
    let p = pool_ready(&app, &owner, &name, "auto", 1).await;
    assert_eq!(p["nodes"][0]["name"], existing["metadata"]["name"], "{p}");
    let events = get(
        &app,
        &owner,
        &format!("/v1/clusters/{name}/events?limit=200"),
    )
    .await;
    assert!(
        events
            .to_string()
            .contains(&format!("node {new_name} removed by cluster-autoscaler")),
        "{events}"
    );

    // The cluster served all along with an autoscaling pool, in mode
    // external: the builtin autoscaler kept out (no job ever watched it).
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'autoscale_cluster'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        jobs, 0,
        "the builtin autoscaler must leave an external cluster alone"
    );

    for (call, ms) in &timings {
        eprintln!("externalgrpc {call}: {ms:.1} ms");
    }
    eprintln!(
        "externalgrpc NodeGroupIncreaseSize -> node Ready: {:.1} s; NodeGroupDeleteNodes -> node gone: {:.1} s",
        to_ready.as_secs_f64(),
        gone.as_secs_f64()
    );
}
