//! End to end on the lab: worker node pools with real kubelet, containerd
//! and kube-proxy on systemd-nspawn machines, the real scheduler and real
//! kubectl. Nodes join with per-machine bootstrap tokens and CSRs the
//! service approves; pools grow and shrink (draining through the Eviction
//! API, a PodDisruptionBudget holding a drain until the pool's timeout); a
//! powered-off worker is replaced; deleting the pool and then the cluster
//! leaves no machine behind. While the pool grows, a tenant impersonating
//! the joining machine's bootstrap user files a CSR named like a shell
//! command and one for another node: nothing runs, the second is denied.
//!
//! Images cannot be pulled offline, so pods are asserted bound, not running.
//! Needs root and the artifacts of `scripts/build-lab-image` and
//! `scripts/build-kube` (the test command builds both).

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge_tests::lab::{
    assert_machines_gone, delete_cluster, drive, drive_until, hurry_and_run, kubectl_run,
    power_off, processes_mentioning, run_on_machine, sandbox,
};
use kubeforge_tests::TestApp;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

const POOL: &str = "work";

/// The CSR name a tenant might pick to run a command where it is pasted
/// into a shell (a CSR's name is not restricted to DNS names).
const HOSTILE_CSR: &str = "x;touch kubeforge-pwned";
const INTRUDER_CSR: &str = "kubeforge-intruder";

/// As the cluster's admin, impersonating the bootstrap user of the newest
/// worker `machine` (its token id follows from its ledger id), files two
/// CSRs for the kubelet client signer: one named [`HOSTILE_CSR`] for the
/// node's own name, one named [`INTRUDER_CSR`] for another node.
fn file_hostile_csrs(kc: &Path, dir: &Path, machine: &str, node: &str) {
    let user = format!(
        "system:bootstrap:{}",
        kubeforge_cluster::join::token_id_for(machine)
    );
    let mut docs = Vec::new();
    for (name, cn) in [
        (HOSTILE_CSR, format!("system:node:{node}")),
        (INTRUDER_CSR, "system:node:intruder".to_string()),
    ] {
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-keyout", "/dev/null", "-subj"])
            .arg(format!("/O=system:nodes/CN={cn}"))
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        use base64::Engine;
        let request = base64::engine::general_purpose::STANDARD.encode(&out.stdout);
        docs.push(json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {
                "request": request,
                "signerName": kubeforge_cluster::join::KUBELET_CLIENT_SIGNER,
                "usages": ["digital signature", "key encipherment", "client auth"],
            },
        }));
    }
    let path = dir.join("hostile-csrs.json");
    std::fs::write(
        &path,
        json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string(),
    )
    .unwrap();
    let (ok, out) = kubectl_run(
        kc,
        &[
            "create",
            "-f",
            path.to_str().unwrap(),
            "--as",
            &user,
            "--as-group",
            kubeforge_cluster::join::BOOTSTRAP_GROUP,
            "--as-group",
            "system:authenticated",
        ],
    );
    assert!(ok, "filing the hostile CSRs: {out}");
}

/// Runs the engine until the pool satisfies `done`; returns the pool JSON.
async fn drive_pool(
    app: &TestApp,
    token: &str,
    cluster: &str,
    pool: &str,
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        hurry_and_run(app).await;
        let r = app
            .call(
                Method::GET,
                &format!("/v1/clusters/{cluster}/node-pools/{pool}"),
                Some(token),
                None,
                &[],
            )
            .await;
        if r.status == 200 && done(&r.body) {
            return r.body;
        }
        if Instant::now() >= deadline {
            let jobs: Vec<(String, String, i32, Option<String>)> = sqlx::query_as(
                "SELECT kind, state, attempts, last_error FROM jobs ORDER BY id DESC LIMIT 5",
            )
            .fetch_all(&app.pool)
            .await
            .unwrap_or_default();
            panic!(
                "pool not {what} after {within:?}: {}\nlatest jobs: {jobs:?}",
                serde_json::to_string_pretty(&r.body).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes a pool and runs the engine until the API no longer has it.
async fn delete_pool(app: &TestApp, token: &str, cluster: &str, pool: &str) {
    let path = format!("/v1/clusters/{cluster}/node-pools/{pool}");
    let r = app
        .call(Method::DELETE, &path, Some(token), None, &[])
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        hurry_and_run(app).await;
        let r = app.call(Method::GET, &path, Some(token), None, &[]).await;
        if r.status == 404 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pool {pool} not deleted: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ready_nodes(p: &Value, n: u64) -> bool {
    p["ready_nodes"] == n
        && p["nodes"].as_array().map(Vec::len) == Some(n as usize)
        && p["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["state"] == "ready")
}

/// The pool's nodes as kubectl sees them: name -> Ready.
fn kubectl_nodes(kc: &Path) -> Vec<(String, bool, Value)> {
    let (ok, out) = kubectl_run(
        kc,
        &[
            "get",
            "nodes",
            "-l",
            &format!("kubeforge.io/node-pool={POOL}"),
            "-o",
            "json",
        ],
    );
    assert!(ok, "get nodes: {out}");
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
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                ready,
                n.clone(),
            )
        })
        .collect()
}

fn names(p: &Value) -> BTreeSet<String> {
    p["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

fn apply(kc: &Path, dir: &Path, name: &str, yaml: &str) {
    let f = dir.join(format!("{name}.yaml"));
    std::fs::write(&f, yaml).unwrap();
    let (ok, out) = kubectl_run(kc, &["apply", "-f", f.to_str().unwrap()]);
    assert!(ok, "apply {name}: {out}");
}

/// The `/metrics` text.
async fn scrape(app: &TestApp) -> String {
    let r = app.call(Method::GET, "/metrics", None, None, &[]).await;
    assert_eq!(r.status, 200);
    r.text
}

/// The value of the sample `name` whose labels are exactly `labels` (the
/// text format as rendered; tests/tests/metrics.rs checks it parses).
#[track_caller]
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let found: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, ls) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let have: BTreeSet<String> = ls
                .split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect();
            (n == name && have == want).then(|| value.parse().ok())?
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?} in:\n{text}");
    found[0]
}

async fn events(app: &TestApp, reason: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT message FROM events WHERE reason = $1 ORDER BY created_at")
        .bind(reason)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn wait_bound(kc: &Path, pod: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = kubectl_run(kc, &["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]);
        if ok && !out.trim().is_empty() {
            return out.trim().to_string();
        }
        assert!(Instant::now() < deadline, "pod {pod} not bound: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the pod runs: the node's containerd, runc and CNI work.
async fn wait_running(kc: &Path, pod: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (ok, out) = kubectl_run(kc, &["get", "pod", pod, "-o", "jsonpath={.status.phase}"]);
        if ok && out.trim() == "Running" {
            return;
        }
        if Instant::now() >= deadline {
            let (_, describe) = kubectl_run(kc, &["describe", "pod", pod]);
            panic!("pod {pod} not Running: {out}\n{describe}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The operation `id` as the API shows it, and its step `step` (null
/// when it has none).
async fn operation_step(app: &TestApp, token: &str, id: &str, step: &str) -> (Value, Value) {
    let r = app
        .call(
            Method::GET,
            &format!("/v1/operations/{id}"),
            Some(token),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let found = r.body["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == step)
        .cloned()
        .unwrap_or(Value::Null);
    (r.body, found)
}

#[tokio::test]
async fn worker_pools_join_scale_drain_repair_and_leave_nothing() {
    let (tmp, octet, bridge) = sandbox(env!("CARGO_TARGET_TMPDIR"), "e2e-workers", "kfw");
    let app = TestApp::with_lab(&tmp, &bridge.0, &format!("10.78.{octet}.0/24")).await;
    let owner = app.token("acme", Role::Admin);
    let name = format!("w{octet}");

    // A cluster with a pool of two.
    let started = Instant::now();
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(json!({
                "name": name, "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
                "control_plane": {"replicas": 1, "machine_type": "small"},
                "node_pools": [{
                    "name": POOL, "machine_type": "small", "size": 2,
                    "labels": {"tier": "batch"},
                    "taints": [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}],
                    "drain_timeout_seconds": 40,
                    "auto_repair": {"enabled": true, "after_seconds": 20}
                }]
            })),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let create_op = r.body["operation"]["id"].as_str().unwrap().to_string();
    drive(&app, &owner, &name, Some("ready"), Duration::from_secs(240)).await;
    // The creation succeeds only once its pool's nodes are Ready, and says
    // so in the pool's own step.
    let o = drive_until(
        &app,
        &owner,
        &format!("/v1/operations/{create_op}"),
        "the creation ended",
        Duration::from_secs(240),
        |_, o| (o["state"] != "running" && o["state"] != "pending").then(|| o.clone()),
    )
    .await;
    assert_eq!(o["state"], "succeeded", "{o}");
    let (_, pool_step) =
        operation_step(&app, &owner, &create_op, &format!("node_pool/{POOL}")).await;
    assert_eq!(pool_step["state"], "succeeded", "{o}");
    assert_eq!(
        pool_step["message"],
        "2 of 2 machines running; 2 of 2 nodes ready"
    );
    let seen = app
        .call(
            Method::GET,
            &format!("/v1/clusters/{name}"),
            Some(&owner),
            None,
            &[],
        )
        .await
        .body;
    let summary = seen["node_pools"]
        .as_array()
        .unwrap_or_else(|| panic!("clusters get shows no pools: {seen}"))
        .iter()
        .find(|p| p["name"] == POOL)
        .cloned()
        .unwrap_or_else(|| panic!("clusters get shows no {POOL}: {seen}"));
    assert_eq!(
        (&summary["size"], &summary["ready_nodes"], &summary["phase"]),
        (&json!(2), &json!(2), &json!("ready")),
        "{summary}"
    );
    let p = drive_pool(
        &app,
        &owner,
        &name,
        POOL,
        "2 ready",
        Duration::from_secs(240),
        |p| ready_nodes(p, 2),
    )
    .await;
    eprintln!(
        "POST to 2 ready workers: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(p["phase"], "ready", "{p}");

    // The metrics agree: two joins timed (each within the wait above),
    // the pool 2 of 2, the cluster ready with its certificates' expiries.
    let m = scrape(&app).await;
    let cluster_id = p["cluster"].as_str().unwrap().to_string();
    let pool_id = p["id"].as_str().unwrap().to_string();
    assert_eq!(metric(&m, "kubeforge_node_join_seconds_count", &[]), 2.0);
    let joins = metric(&m, "kubeforge_node_join_seconds_sum", &[]);
    assert!(
        joins > 0.0 && joins < 2.0 * started.elapsed().as_secs_f64(),
        "{joins}"
    );
    let pool_labels = [("cluster", cluster_id.as_str()), ("pool", pool_id.as_str())];
    assert_eq!(
        metric(&m, "kubeforge_node_pool_desired_nodes", &pool_labels),
        2.0
    );
    assert_eq!(
        metric(&m, "kubeforge_node_pool_ready_nodes", &pool_labels),
        2.0
    );
    assert_eq!(metric(&m, "kubeforge_clusters", &[("phase", "ready")]), 1.0);
    let now = chrono::Utc::now().timestamp() as f64;
    for cert in ["ca", "apiserver"] {
        let at = metric(
            &m,
            "kubeforge_cluster_certificate_expiry_timestamp_seconds",
            &[("cluster", cluster_id.as_str()), ("certificate", cert)],
        );
        assert!(at > now + 86_400.0, "{cert} expires at {at}");
    }

    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{name}/kubeconfig"),
            Some(&owner),
            Some(json!({"role": "admin", "ttl_seconds": 1800})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let kc = tmp.join("admin.kubeconfig");
    std::fs::write(&kc, &r.text).unwrap();

    // kubectl and the API agree; nodes carry the pool's labels.
    let nodes = kubectl_nodes(&kc);
    assert_eq!(
        nodes.iter().map(|n| n.0.clone()).collect::<BTreeSet<_>>(),
        names(&p),
        "{p}"
    );
    // What a node offers pods is what its machine type promises (a lab
    // machine sees the whole host; kubelet reserves the difference).
    let offer = kubeforge_cluster::worker::NodeOffer::of(kubeforge_cluster::MachineType::SMALL);
    for (n, ready, obj) in &nodes {
        assert!(ready, "{n} not Ready");
        let alloc = &obj["status"]["allocatable"];
        assert_eq!(
            kubeforge_cluster::nodes::cpu_millis(alloc["cpu"].as_str().unwrap()),
            Some(offer.cpu_millis),
            "{n}: {alloc}"
        );
        assert_eq!(
            kubeforge_cluster::simulate::quantity_bytes(alloc["memory"].as_str().unwrap()),
            Some(offer.memory_bytes),
            "{n}: {alloc}"
        );
        assert_eq!(obj["metadata"]["labels"]["tier"], "batch", "{obj}");
        assert!(
            obj["spec"]["taints"].as_array().is_some_and(|t| t
                .iter()
                .any(|t| t["key"] == "dedicated"
                    && t["value"] == "batch"
                    && t["effect"] == "NoSchedule")),
            "{obj}"
        );
    }

    // Joined without long-lived secrets: the CSRs were approved by the
    // service for exactly the expected names, the tokens are gone, and no
    // node holds the CA key or an admin credential.
    let approved = events(&app, "CsrApproved").await;
    assert_eq!(approved.len(), 2, "{approved:?}");
    for n in names(&p) {
        assert!(
            approved
                .iter()
                .any(|m| m.contains(&format!("system:node:{n}"))),
            "{approved:?}"
        );
    }
    let (ok, out) = kubectl_run(
        &kc,
        &[
            "-n",
            "kube-system",
            "get",
            "secrets",
            "--field-selector",
            "type=bootstrap.kubernetes.io/token",
            "-o",
            "name",
        ],
    );
    assert!(ok && out.trim().is_empty(), "bootstrap tokens left: {out}");
    let worker: (String, String) = sqlx::query_as(
        "SELECT address, host_key FROM machines WHERE role = 'worker' AND deleted_at IS NULL LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let (code, lines) = run_on_machine(
        &app,
        &worker.0,
        &worker.1,
        "find / -xdev \\( -name 'ca.key' -o -name 'admin.conf' \\) -print; \
         grep -l 'system:masters' -r /etc/kubernetes /var/lib/kubelet 2>/dev/null; \
         bash /opt/kubeforge/bootstrap-worker.sh",
    )
    .await;
    assert_eq!(code, 0, "{lines:?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("ca.key") || l.contains("admin.conf") || l.starts_with('/')),
        "a node holds a CA key or admin credential: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("no changes")),
        "the worker bootstrap is not idempotent: {lines:?}"
    );
    // A run cut off after installing kube-proxy's files but before
    // restarting it (its stamp still names the old files) is finished by
    // the next run, which restarts kube-proxy and nothing else.
    let (code, lines) = run_on_machine(
        &app,
        &worker.0,
        &worker.1,
        &format!(
            "echo cut-off > {}/kube-proxy.sha256 && bash /opt/kubeforge/bootstrap-worker.sh",
            kubeforge_cluster::worker::paths::STAMP_DIR
        ),
    )
    .await;
    assert_eq!(code, 0, "{lines:?}");
    let summary = lines
        .iter()
        .find(|l| l.starts_with("bootstrap-worker: node "))
        .unwrap_or_else(|| panic!("no summary: {lines:?}"));
    assert!(
        summary.ends_with("; restarted: kube-proxy.service"),
        "{summary}"
    );

    // A pod for the pool is bound to one of its nodes.
    apply(
        &kc,
        &tmp,
        "p1",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\nspec:\n  nodeSelector:\n    kubeforge.io/node-pool: {POOL}\n  tolerations:\n  - key: dedicated\n    value: batch\n    effect: NoSchedule\n  containers:\n  - name: c\n    image: kubeforge.invalid/pause:1\n    imagePullPolicy: IfNotPresent\n"
        ),
    );
    let bound = wait_bound(&kc, "p1").await;
    assert!(
        names(&p).contains(&bound),
        "p1 bound to {bound}, not the pool"
    );
    wait_running(&kc, "p1").await;
    // The pool's taint keeps out a pod that does not tolerate it.
    apply(
        &kc,
        &tmp,
        "p2",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p2\nspec:\n  nodeSelector:\n    kubeforge.io/node-pool: {POOL}\n  containers:\n  - name: c\n    image: kubeforge.invalid/pause:1\n"
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = kubectl_run(
            &kc,
            &[
                "get",
                "pod",
                "p2",
                "-o",
                "jsonpath={.spec.nodeName}/{.status.conditions[0].reason}",
            ],
        );
        assert!(ok, "{out}");
        assert!(
            out.starts_with('/'),
            "p2 was bound despite the taint: {out}"
        );
        if out.trim() == "/Unschedulable" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "p2 not reported unschedulable: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, out) = kubectl_run(&kc, &["delete", "pod", "p2", "--wait=false"]);
    assert!(ok, "{out}");

    // The service's own node watch (kube-rs against the 1.20 API server,
    // as the least-privileged service identity), open before the scale-up.
    let c = kubeforge::store::cluster::get_any(
        &app.pool,
        Uuid::parse_str(p["cluster"].as_str().unwrap()).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let api = kubeforge::engine::tenant_api(&app.app, &c, c.endpoint.as_deref().unwrap())
        .await
        .unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn(async move {
        use futures::StreamExt;
        let mut events = api.watch_nodes();
        while let Some(e) = events.next().await {
            if seen_tx.send(e).is_err() {
                break;
            }
        }
    });

    // Scale to 3: a third Ready node.
    let t = Instant::now();
    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/clusters/{name}/node-pools/{POOL}"),
            Some(&owner),
            Some(json!({"size": 3})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let up_op = r.body["operation"]["id"].as_str().unwrap().to_string();
    // The third machine's row, then the hostile CSRs before it joins.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (third_id, third_name) = loop {
        hurry_and_run(&app).await;
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, name FROM machines WHERE role = 'worker' AND deleted_at IS NULL ORDER BY created_at",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        if rows.len() == 3 {
            break rows[2].clone();
        }
        assert!(Instant::now() < deadline, "no third worker row: {rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    file_hostile_csrs(&kc, &tmp, &third_id.to_string(), &third_name);
    let p3 = drive_pool(
        &app,
        &owner,
        &name,
        POOL,
        "3 ready",
        Duration::from_secs(180),
        |p| ready_nodes(p, 3),
    )
    .await;
    eprintln!(
        "PATCH size 3 to the new node Ready: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let op = app
        .call(
            Method::GET,
            &format!("/v1/operations/{up_op}"),
            Some(&owner),
            None,
            &[],
        )
        .await;
    assert_eq!(op.body["state"], "succeeded", "{}", op.text);
    assert_eq!(kubectl_nodes(&kc).len(), 3);
    // The watch listed the two nodes, then saw the third become Ready.
    let mut listed = None;
    let mut third_ready = false;
    while let Ok(e) = seen_rx.try_recv() {
        match e {
            Ok(kubeforge::tenant::NodeEvent::Listed(nodes)) if listed.is_none() => {
                listed = Some(nodes.len())
            }
            Ok(kubeforge::tenant::NodeEvent::Applied(n)) if n.name == third_name && n.ready => {
                third_ready = true
            }
            _ => {}
        }
    }
    watch.abort();
    assert_eq!(listed, Some(2), "the watch's first list");
    assert!(third_ready, "the watch never saw {third_name} Ready");
    // The hostile CSRs: the one named like a command was left alone (the
    // service does not use names that are not DNS names), the one for
    // another node was denied, and nothing ran on any machine.
    let csr = |name: &str| {
        let (ok, out) = kubectl_run(&kc, &["get", "csr", name, "-o", "json"]);
        assert!(ok, "{out}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let hostile = csr(HOSTILE_CSR);
    assert!(
        hostile["status"]["conditions"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{hostile}"
    );
    let intruder = csr(INTRUDER_CSR);
    assert_eq!(
        intruder["status"]["conditions"][0]["type"], "Denied",
        "{intruder}"
    );
    let denied = events(&app, "CsrDenied").await;
    assert!(
        denied
            .iter()
            .any(|m| m.contains(INTRUDER_CSR) && m.contains("system:node:intruder")),
        "{denied:?}"
    );
    let everyone: Vec<(String, String)> = sqlx::query_as(
        "SELECT address, host_key FROM machines WHERE deleted_at IS NULL AND state = 'running'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(everyone.len(), 4, "one control plane and three workers");
    for (address, host_key) in &everyone {
        let (code, out) = run_on_machine(
            &app,
            address,
            host_key,
            "find / -xdev -name kubeforge-pwned 2>/dev/null; true",
        )
        .await;
        assert_eq!(code, 0);
        assert!(out.is_empty(), "{address}: {out:?}");
    }

    let newest: String = sqlx::query_scalar(
        "SELECT name FROM machines WHERE role = 'worker' AND deleted_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    // A budget that forbids evicting the pod on the newest node holds its
    // drain until the pool's drain timeout.
    apply(
        &kc,
        &tmp,
        "guarded",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: guarded\n  labels:\n    app: guarded\nspec:\n  nodeName: {newest}\n  containers:\n  - name: c\n    image: kubeforge.invalid/pause:1\n    imagePullPolicy: IfNotPresent\n---\napiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata:\n  name: guarded\nspec:\n  minAvailable: 1\n  selector:\n    matchLabels:\n      app: guarded\n"
        ),
    );

    wait_running(&kc, "guarded").await;

    // Scale to 1: two nodes drained and removed, their machines gone.
    let before: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT name, id FROM machines WHERE role = 'worker' AND deleted_at IS NULL",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let t = Instant::now();
    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/clusters/{name}/node-pools/{POOL}"),
            Some(&owner),
            Some(json!({"size": 1})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let down_op = r.body["operation"]["id"].as_str().unwrap().to_string();
    // While the budget holds the drain, the pool's MachinesReady condition
    // and the operation's drain step name the pod and the budget.
    let names_both = |m: &str| {
        m.contains(&newest)
            && m.contains("pod default/guarded")
            && m.contains("disruption budget guarded")
    };
    let condition = drive_until(
        &app,
        &owner,
        &format!("/v1/clusters/{name}/node-pools/{POOL}"),
        "the waiting drain explained on the pool",
        Duration::from_secs(90),
        |_, p| {
            p["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| {
                    c["type"] == "MachinesReady"
                        && c["reason"] == "Draining"
                        && names_both(c["message"].as_str().unwrap_or(""))
                })
                .cloned()
        },
    )
    .await;
    let (op, drain) = operation_step(&app, &owner, &down_op, "drain").await;
    assert_eq!(op["state"], "running", "{op}");
    let step = drain["message"].as_str().unwrap_or("").to_string();
    assert!(
        names_both(&step),
        "the drain step does not say what it waits for: {step:?} (pool: {condition})"
    );
    let p1 = drive_pool(
        &app,
        &owner,
        &name,
        POOL,
        "1 ready",
        Duration::from_secs(180),
        |p| ready_nodes(p, 1),
    )
    .await;
    let took = t.elapsed();
    eprintln!(
        "PATCH size 1 to two nodes gone: {:.1} s",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_secs(40),
        "the budget did not hold the drain"
    );
    assert!(
        !names(&p1).contains(&newest),
        "the newest node should have gone"
    );
    let timed_out = events(&app, "DrainTimedOut").await;
    assert_eq!(timed_out.len(), 1, "{timed_out:?}");
    assert!(
        timed_out[0].contains(&newest) && timed_out[0].contains("disruption budget"),
        "{timed_out:?}"
    );
    assert_eq!(events(&app, "NodeDrained").await.len(), 1);
    let (op, drain_step) = operation_step(&app, &owner, &down_op, "drain").await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(drain_step["state"], "succeeded", "{op}");
    assert_eq!(kubectl_nodes(&kc).len(), 1);
    let removed: Vec<(String, Uuid)> = before
        .iter()
        .filter(|(n, _)| !names(&p1).contains(n))
        .cloned()
        .collect();
    assert_eq!(removed.len(), 2);
    assert_machines_gone(&tmp, &removed);
    let _ = p3;

    // Power off the last worker: it is replaced after the threshold.
    let victim = names(&p1).into_iter().next().unwrap();
    let t = Instant::now();
    power_off(&victim);
    let repaired = drive_pool(
        &app,
        &owner,
        &name,
        POOL,
        "repaired",
        Duration::from_secs(240),
        |p| ready_nodes(p, 1) && !names(p).contains(&victim),
    )
    .await;
    eprintln!(
        "worker powered off to replacement Ready: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let repairs = events(&app, "NodeRepair").await;
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    assert!(
        repairs[0].contains(&victim) && repairs[0].contains("MachineStopped"),
        "{repairs:?}"
    );
    let m = scrape(&app).await;
    assert_eq!(
        metric(
            &m,
            "kubeforge_repairs_total",
            &[("reason", "MachineStopped")]
        ),
        1.0
    );
    let nodes = kubectl_nodes(&kc);
    assert_eq!(nodes.len(), 1);
    assert_eq!(BTreeSet::from([nodes[0].0.clone()]), names(&repaired));

    // A pool added to the running cluster joins; deleted, it leaves nothing.
    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{name}/node-pools"),
            Some(&owner),
            Some(json!({"name": "extra", "size": 1})),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let extra = drive_pool(
        &app,
        &owner,
        &name,
        "extra",
        "1 ready",
        Duration::from_secs(180),
        |p| ready_nodes(p, 1),
    )
    .await;
    let extra_node = names(&extra).into_iter().next().unwrap();
    let (ok, out) = kubectl_run(
        &kc,
        &[
            "get",
            "node",
            &extra_node,
            "-o",
            "jsonpath={.metadata.labels}",
        ],
    );
    assert!(
        ok && out.contains("\"kubeforge.io/node-pool\":\"extra\""),
        "{out}"
    );
    delete_pool(&app, &owner, &name, "extra").await;
    let (ok, out) = kubectl_run(&kc, &["get", "node", &extra_node]);
    assert!(!ok && out.contains("NotFound"), "{out}");
    assert_eq!(processes_mentioning(&format!("--hostname={extra_node}")), 0);

    // Delete the pool, then the cluster: no machine remains.
    delete_pool(&app, &owner, &name, POOL).await;
    assert!(kubectl_nodes(&kc).is_empty());
    let all: Vec<(String, Uuid)> = sqlx::query_as("SELECT name, id FROM machines")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    delete_cluster(&app, &owner, &name, Duration::from_secs(60)).await;
    assert_machines_gone(&tmp, &all);
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM machines WHERE deleted_at IS NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(live, 0);
    drop(bridge);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The network namespace of the pod with address `ip` on this node (the
/// CRI names each pod's namespace under /var/run/netns).
fn netns_of(ip: &str) -> String {
    format!(
        "for ns in $(ip netns list | cut -d' ' -f1); do \
           if ip netns exec \"$ns\" ip -4 -o addr show | grep -q ' {ip}/'; then echo \"$ns\"; fi; \
         done"
    )
}

/// Runs `script` on the worker named `node`; returns its output lines.
async fn on_node(app: &TestApp, node: &str, script: &str) -> Vec<String> {
    let (code, lines) = try_on_node(app, node, script).await;
    assert_eq!(code, 0, "{node}: {script}: {lines:?}");
    lines
}

/// Runs `script` on the machine named `machine` (a worker or a
/// control-plane member); returns its exit status and output lines.
async fn try_on_node(app: &TestApp, machine: &str, script: &str) -> (i32, Vec<String>) {
    let (address, host_key): (String, String) = sqlx::query_as(
        "SELECT address, host_key FROM machines WHERE name = $1 AND tenant = 'acme' \
         AND deleted_at IS NULL",
    )
    .bind(machine)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    run_on_machine(app, &address, &host_key, script).await
}

/// The routes Kubeforge put on a node: `DESTINATION via ADDRESS`.
async fn routes_on(app: &TestApp, node: &str) -> BTreeSet<String> {
    on_node(app, node, "ip -4 route show proto 77")
        .await
        .iter()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect()
}

fn jsonpath(kc: &Path, args: &[&str]) -> String {
    let (ok, out) = kubectl_run(kc, args);
    assert!(ok, "{args:?}: {out}");
    out.trim().to_string()
}

/// Cluster DNS, as pod a sees it: the resolv.conf kubelet gave it (the
/// cluster DNS address and the search path), and `dig` (an independent
/// client, from the lab image) in its network namespace with that file:
/// a Service by short name and by FQDN, a headless Service's pod, its
/// hostname record, SRV records, PTR, a missing name, and a name outside
/// the cluster (forwarded to the test's upstream on loopback).
async fn cluster_dns(
    app: &TestApp,
    kc: &Path,
    tmp: &Path,
    node: &str,
    ip_a: &str,
    ip_b: &str,
    cluster_ip: &str,
) {
    apply(
        kc,
        tmp,
        "headless",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  clusterIP: None\n  selector:\n    app: net-b\n  ports:\n  - name: pg\n    port: 5432\n",
    );
    let setup = format!(
        "ns=$({}); [ -n \"$ns\" ] || exit 3; \
         f=$(grep -lx a {}/io.containerd.grpc.v1.cri/sandboxes/*/hostname | head -n1); \
         [ -n \"$f\" ] || exit 4; mkdir -p /etc/netns/$ns; \
         cp \"${{f%/hostname}}/resolv.conf\" /etc/netns/$ns/resolv.conf",
        netns_of(ip_a),
        kubeforge_cluster::worker::CONTAINERD_ROOT
    );
    let resolv = on_node(
        app,
        node,
        &format!("{setup}; cat /etc/netns/$ns/resolv.conf"),
    )
    .await;
    assert!(
        resolv.iter().any(|l| l == "nameserver 10.96.0.10")
            && resolv.iter().any(|l| l
                .starts_with("search default.svc.cluster.local svc.cluster.local cluster.local")),
        "pod a's resolv.conf: {resolv:?}"
    );
    let dig = |args: String| {
        let script = format!("{setup}; ip netns exec \"$ns\" dig +time=3 +tries=2 {args}");
        async move { try_on_node(app, node, &script).await }
    };
    // The first answer waits for kube-dns's Endpoints and kube-proxy.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        hurry_and_run(app).await;
        let (code, lines) = dig("+search +short net-b".into()).await;
        if code == 0 && lines == [cluster_ip] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "net-b by short name from pod a: {code} {lines:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let want: [(&str, Vec<String>); 8] = [
        (
            "+short net-b.default.svc.cluster.local",
            vec![cluster_ip.to_string()],
        ),
        ("+search +short db", vec![ip_b.to_string()]),
        (
            "+short b0.db.default.svc.cluster.local",
            vec![ip_b.to_string()],
        ),
        (
            "+short SRV _http._tcp.net-b.default.svc.cluster.local",
            vec!["0 100 80 net-b.default.svc.cluster.local.".into()],
        ),
        (
            "+short SRV _pg._tcp.db.default.svc.cluster.local",
            vec!["0 100 5432 b0.db.default.svc.cluster.local.".into()],
        ),
        (
            &format!("+short -x {cluster_ip}"),
            vec!["net-b.default.svc.cluster.local.".into()],
        ),
        (
            "+short kube-dns.kube-system.svc.cluster.local",
            vec!["10.96.0.10".into()],
        ),
        (
            &format!("+short {}", kubeforge_tests::dns::OUTSIDE_NAME),
            vec![kubeforge_tests::dns::OUTSIDE_ADDRESS.to_string()],
        ),
    ];
    for (args, expected) in want {
        let (code, lines) = dig(args.to_string()).await;
        assert_eq!((code, &lines), (0, &expected), "dig {args}");
    }
    let (_, lines) = dig("nope.default.svc.cluster.local | grep -o 'status: [A-Z]*'".into()).await;
    assert_eq!(lines, ["status: NXDOMAIN"], "a missing name");
}

/// The pod network: two pods on two nodes reach each other over TCP with
/// their own addresses (routes between nodes, no masquerade between
/// pods), through a ClusterIP Service and a NodePort from every node; the
/// routes follow the nodes (a node that leaves takes its route off the
/// others). The lab's only image has no tools, so the checks run socat
/// from the nodes, inside the pods' network namespaces.
#[tokio::test]
async fn pods_reach_pods_and_services_across_nodes() {
    let (tmp, octet, bridge) = sandbox(env!("CARGO_TARGET_TMPDIR"), "e2e-net", "kfn");
    let app = TestApp::with_lab(&tmp, &bridge.0, &format!("10.82.{octet}.0/24")).await;
    let owner = app.token("acme", Role::Admin);
    let name = format!("n{octet}");
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(json!({
                "name": name, "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
                "control_plane": {"replicas": 1, "machine_type": "small"},
                "node_pools": [{"name": "net", "machine_type": "small", "size": 2}]
            })),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    // Another tenant's cluster on the same lab bridge, made alongside,
    // with the same name (and so the same machine names): nothing on the
    // host may be named after them (nspawn machines, veths, cgroups).
    let intruder = app.token("globex", Role::Admin);
    let other = name.clone();
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&intruder),
            Some(json!({
                "name": other, "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
                "control_plane": {"replicas": 1, "machine_type": "small"},
                "network": {"pod_cidr": "10.245.0.0/16", "service_cidr": "10.97.0.0/16"},
                "node_pools": [{"name": "net", "machine_type": "small", "size": 1}]
            })),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    drive(&app, &owner, &name, Some("ready"), Duration::from_secs(240)).await;
    let p = drive_pool(
        &app,
        &owner,
        &name,
        "net",
        "2 ready",
        Duration::from_secs(240),
        |p| ready_nodes(p, 2),
    )
    .await;
    let nodes: Vec<String> = names(&p).into_iter().collect();
    let kc = tmp.join("admin.kubeconfig");
    kubeforge_tests::lab::write_kubeconfig(&app, &owner, &name, "admin", 1800, &kc).await;

    // A lab machine's bounding set holds what its node needs and not what
    // would let a pod change the host's kernel (providers::lab).
    let cap_bnd = on_node(&app, &nodes[0], "grep ^CapBnd: /proc/1/status").await;
    let bits = u64::from_str_radix(cap_bnd[0].split_whitespace().nth(1).unwrap(), 16).unwrap();
    for (cap, bit, want) in [
        ("CAP_SYS_ADMIN", 21, true),
        ("CAP_NET_ADMIN", 12, true),
        ("CAP_SYSLOG", 34, true),
        ("CAP_SYS_MODULE", 16, false),
        ("CAP_SYS_RAWIO", 17, false),
        ("CAP_SYS_TIME", 25, false),
        ("CAP_PERFMON", 38, false),
        ("CAP_BPF", 39, false),
    ] {
        assert_eq!(bits & (1 << bit) != 0, want, "{cap} in {cap_bnd:?}");
    }

    // Each node routes the other's pod range through the other's address.
    let cidr_of = |n: &str| jsonpath(&kc, &["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"]);
    let addr_of = |n: &str| {
        p["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .and_then(|x| x["address"].as_str())
            .unwrap()
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        hurry_and_run(&app).await;
        let mut all = true;
        for (me, other) in [(&nodes[0], &nodes[1]), (&nodes[1], &nodes[0])] {
            let want = format!("{} via {}", cidr_of(other), addr_of(other));
            all &= routes_on(&app, me).await == BTreeSet::from([want]);
        }
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "routes not in place: {:?} / {:?}",
            routes_on(&app, &nodes[0]).await,
            routes_on(&app, &nodes[1]).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Two pods, one on each node; b also answers for a Service.
    // b is also `b0.db`: a hostname under the headless Service `db`.
    for (pod, node, host) in [
        ("a", &nodes[0], ""),
        ("b", &nodes[1], "  hostname: b0\n  subdomain: db\n"),
    ] {
        apply(
            &kc,
            &tmp,
            pod,
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  labels:\n    app: net-{pod}\nspec:\n  nodeName: {node}\n{host}  containers:\n  - name: c\n    image: kubeforge.invalid/pause:1\n    imagePullPolicy: IfNotPresent\n"
            ),
        );
    }
    wait_running(&kc, "a").await;
    wait_running(&kc, "b").await;
    let ip_a = jsonpath(&kc, &["get", "pod", "a", "-o", "jsonpath={.status.podIP}"]);
    let ip_b = jsonpath(&kc, &["get", "pod", "b", "-o", "jsonpath={.status.podIP}"]);
    // In b's namespace, a listener that answers with who it sees.
    on_node(
        &app,
        &nodes[1],
        &format!(
            "ns=$({}); [ -n \"$ns\" ] || exit 3; \
             systemd-run --unit=kf-net-echo --quiet ip netns exec \"$ns\" \
               socat TCP-LISTEN:7777,fork,reuseaddr SYSTEM:'echo \"$SOCAT_PEERADDR\"'; \
             for i in $(seq 50); do ip netns exec \"$ns\" ss -ltn | grep -q ':7777' && exit 0; sleep 0.1; done; exit 4",
            netns_of(&ip_b)
        ),
    )
    .await;
    let from_a = |target: String| {
        let app = &app;
        let node = nodes[0].clone();
        let ns = netns_of(&ip_a);
        async move {
            on_node(
                app,
                &node,
                &format!(
                    "ns=$({ns}); [ -n \"$ns\" ] || exit 3; \
                     ip netns exec \"$ns\" socat -T5 - TCP:{target},connect-timeout=5 </dev/null"
                ),
            )
            .await
        }
    };
    // Pod to pod across nodes: b sees a's own address.
    assert_eq!(
        from_a(format!("{ip_b}:7777")).await,
        std::slice::from_ref(&ip_a)
    );
    // And ICMP: a pings b.
    let ping = on_node(
        &app,
        &nodes[0],
        &format!(
            "ns=$({}); ip netns exec \"$ns\" ping -c 3 -W 2 -q {ip_b}",
            netns_of(&ip_a)
        ),
    )
    .await;
    assert!(
        ping.iter().any(|l| l.contains("3 received")),
        "ping b from a: {ping:?}"
    );
    // The control plane reaches pods too (webhooks, aggregated APIs).
    let cp = format!("{name}-cp-0");
    let cp_address: String =
        sqlx::query_scalar("SELECT address FROM machines WHERE name = $1 AND tenant = 'acme'")
            .bind(&cp)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        hurry_and_run(&app).await;
        let (code, lines) = try_on_node(
            &app,
            &cp,
            &format!("socat -T5 - TCP:{ip_b}:7777,connect-timeout=5 </dev/null"),
        )
        .await;
        if code == 0 && lines == [cp_address.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod b from the control plane: {code} {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Another tenant's node on the same bridge has no way to b.
    drive_pool(
        &app,
        &intruder,
        &other,
        "net",
        "1 ready",
        Duration::from_secs(240),
        |p| ready_nodes(p, 1),
    )
    .await;
    // Same-named machines of two tenants (the control-plane members,
    // `<cluster>-cp-0`), each in a cgroup of its own.
    let workers: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, name FROM machines WHERE state = 'running' AND deleted_at IS NULL",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let distinct: BTreeSet<&str> = workers.iter().map(|(_, n)| n.as_str()).collect();
    assert!(
        distinct.len() < workers.len(),
        "no machine name shared by the two tenants: {workers:?}"
    );
    for (id, name) in &workers {
        let limit = format!("/sys/fs/cgroup/memory/kubeforge/{id}/memory.limit_in_bytes");
        assert!(
            Path::new(&limit).exists(),
            "{name} ({id}) has no cgroup of its own"
        );
    }
    let (their_address, their_key): (String, String) = sqlx::query_as(
        "SELECT address, host_key FROM machines WHERE name LIKE $1 AND role = 'worker' \
         AND tenant = 'globex' AND deleted_at IS NULL",
    )
    .bind(format!("{other}-net-%"))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let (code, lines) = run_on_machine(
        &app,
        &their_address,
        &their_key,
        &format!(
            "ip -4 route show proto 77; \
             socat -T3 - TCP:{ip_b}:7777,connect-timeout=3 </dev/null && echo REACHED"
        ),
    )
    .await;
    // Not even with a route of its own through b's node (as root on its
    // node, a hostile tenant may add one): b's node drops what does not
    // come from its own cluster.
    let (hostile, hostile_lines) = run_on_machine(
        &app,
        &their_address,
        &their_key,
        &format!(
            "ip route replace {} via {}; \
             socat -T3 - TCP:{ip_b}:7777,connect-timeout=3 </dev/null && echo REACHED; \
             r=$?; ip route del {} via {}; exit $r",
            cidr_of(&nodes[1]),
            addr_of(&nodes[1]),
            cidr_of(&nodes[1]),
            addr_of(&nodes[1])
        ),
    )
    .await;
    assert!(
        hostile != 0 && !hostile_lines.iter().any(|l| l.contains("REACHED")),
        "another tenant's node reached pod b through a route of its own: {hostile} {hostile_lines:?}"
    );
    assert!(
        code != 0
            && !lines
                .iter()
                .any(|l| l.contains("REACHED") || l.starts_with("10.244.")),
        "another tenant's node reached pod b or routes to it: {code} {lines:?}"
    );

    // A ClusterIP Service whose endpoint is on the other node.
    apply(
        &kc,
        &tmp,
        "svc",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: net-b\nspec:\n  type: NodePort\n  selector:\n    app: net-b\n  ports:\n  - name: http\n    port: 80\n    targetPort: 7777\n",
    );
    let cluster_ip = jsonpath(
        &kc,
        &["get", "svc", "net-b", "-o", "jsonpath={.spec.clusterIP}"],
    );
    let node_port = jsonpath(
        &kc,
        &[
            "get",
            "svc",
            "net-b",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // kube-proxy programs the Service within its sync period.
        let (code, lines) = try_on_node(
            &app,
            &nodes[0],
            &format!(
                "ns=$({}); ip netns exec \"$ns\" socat -T5 - TCP:{cluster_ip}:80,connect-timeout=5 </dev/null",
                netns_of(&ip_a)
            ),
        )
        .await;
        if code == 0 && lines == [ip_a.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ClusterIP {cluster_ip} from pod a: {code} {lines:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The NodePort, from each node's own network to each node's address.
    for from in &nodes {
        for to in &nodes {
            let lines = on_node(
                &app,
                from,
                &format!(
                    "socat -T5 - TCP:{}:{node_port},connect-timeout=5 </dev/null",
                    addr_of(to)
                ),
            )
            .await;
            assert_eq!(lines.len(), 1, "NodePort {to} from {from}: {lines:?}");
        }
    }

    cluster_dns(&app, &kc, &tmp, &nodes[0], &ip_a, &ip_b, &cluster_ip).await;
    // Another tenant's node asks its own cluster DNS for this cluster's
    // names, and the DNS server directly: none is answered to it.
    for server in [
        "10.97.0.10",
        &app.dns.as_ref().unwrap().address.ip().to_string(),
    ] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            hurry_and_run(&app).await;
            let (_, lines) = run_on_machine(
                &app,
                &their_address,
                &their_key,
                &format!(
                    "dig @{server} +time=3 +tries=1 net-b.default.svc.cluster.local \
                     | grep -o 'status: [A-Z]*'"
                ),
            )
            .await;
            // No answer yet (their kube-dns not programmed) is retried;
            // an answer must be NXDOMAIN.
            if !lines.is_empty() {
                assert_eq!(
                    lines,
                    ["status: NXDOMAIN"],
                    "another tenant asking {server}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{server} never answered their node"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    // A node leaves: its route goes from the other.
    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/clusters/{name}/node-pools/net"),
            Some(&owner),
            Some(json!({"size": 1})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let p1 = drive_pool(
        &app,
        &owner,
        &name,
        "net",
        "1 ready",
        Duration::from_secs(180),
        |p| ready_nodes(p, 1),
    )
    .await;
    let left: Vec<String> = names(&p1).into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        hurry_and_run(&app).await;
        let routes = routes_on(&app, &left[0]).await;
        if routes.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: routes to a node that left: {routes:?}",
            left[0]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let applied = events(&app, "NetworkRoutesApplied").await;
    assert!(!applied.is_empty(), "no NetworkRoutesApplied event");
    assert!(events(&app, "NetworkRoutesFailed").await.is_empty());
}
