//! End to end on the lab: real systemd-nspawn machines, real etcd and
//! Kubernetes v1.20.2 binaries, real kubectl. A cluster goes from POST to
//! `ready`; kubeconfigs are minted for admin, editor and viewer and
//! honoured by the apiserver as such (`kubectl auth can-i`); an expired one
//! is refused; another tenant cannot get one; kubectl works through an
//! exec-credential kubeconfig (`kubeforge credentials exec`); revoking the cluster's
//! credentials makes every earlier kubeconfig Forbidden while a new one
//! works; a crashing kube-apiserver, restarted by systemd within seconds, is
//! an event and a metric, and repeated crashes degrade the cluster until
//! they leave the restart window; deleting the cluster leaves no machine,
//! process or mount behind.
//!
//! Needs root and the artifacts of `scripts/build-lab-image` and
//! `scripts/build-kube` (the test command builds both).

use axum::http::Method;
use kubeforge::app::Config;
use kubeforge::context::Role;
use kubeforge_tests::lab::{
    assert_machines_gone, delete_cluster, drive, drive_until, kubectl_run, run_on_machine, sandbox,
    write_kubeconfig,
};
use kubeforge_tests::TestApp;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[tokio::test]
async fn one_control_plane_from_post_to_kubectl_and_back() {
    let (tmp, octet, bridge) = sandbox(env!("CARGO_TARGET_TMPDIR"), "e2e", "kfe");
    // Restarts count towards degrading the cluster for RESTART_WINDOW (10
    // minutes) in the service; here for long enough to see three, short
    // enough to see the cluster recover.
    let config = Config {
        control_plane_restart_window: RESTART_WINDOW,
        ..Config::default()
    };
    let app =
        TestApp::with_lab_config(&tmp, &bridge.0, &format!("10.77.{octet}.0/24"), config).await;
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
            &kubeforge::ssh::SshTarget::new(m.0.clone(), "root", m.1.clone()),
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
    let short = app
        .app
        .issue_kubeconfig(
            &c,
            "short",
            kubeforge_cluster::credentials::KubeconfigRole::Admin,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let short_kc = tmp.join("short.kubeconfig");
    std::fs::write(&short_kc, short.yaml).unwrap();
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

    // kubectl through an exec-credential kubeconfig: `kubeforge clusters
    // get-credentials --exec` (the real binary, against the service on
    // loopback), kubectl running `kubeforge credentials exec` for its
    // certificate.
    {
        let (url, stop) = kubeforge_tests::cli::serve_on_loopback(app.router.clone()).await;
        let exec_kc = tmp.join("exec.kubeconfig");
        let cache = tmp.join("exec-cache");
        // Awaited, not blocking: this test's runtime has one thread, and
        // it serves the API the binary and kubectl's plugin call.
        let out = tokio::process::Command::new(kubeforge_tests::cli::kubeforge_bin())
            .args([
                "clusters",
                "get-credentials",
                &name,
                "--exec",
                "--role",
                "viewer",
            ])
            .arg("--kubeconfig")
            .arg(&exec_kc)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KUBEFORGE_URL", &url)
            .env("KUBEFORGE_TOKEN", &viewer)
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // No cached certificate: kubectl's plugin run mints its own.
        std::fs::remove_dir_all(&cache).unwrap();
        let out = tokio::process::Command::new(kubeforge_tests::lab::kubectl())
            .arg(format!("--kubeconfig={}", exec_kc.display()))
            .args(["get", "nodes", "--request-timeout=30s"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            // kubectl keeps its discovery cache under $HOME/.kube: the
            // test's directory, not the working tree.
            .env("HOME", &tmp)
            .env("KUBEFORGE_TOKEN", &viewer)
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .await
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubectl get nodes via exec: {said}");
        assert_eq!(
            std::fs::read_dir(cache.join("kubeforge/credentials"))
                .unwrap()
                .count(),
            1,
            "the plugin cached its certificate"
        );
        stop.send(true).unwrap();
    }

    // Roles in the cluster (issue 13 point 12): what each kubeconfig role
    // may, asked of the API server itself; then a revocation takes every
    // kubeconfig minted before it back.
    let editor = app.token("acme", Role::Editor);
    let editor_kc = tmp.join("editor.kubeconfig");
    write_kubeconfig(&app, &editor, &name, "editor", 600, &editor_kc).await;
    let can = |kc: &std::path::Path, verb: &str, what: &str| {
        let (yes, out) = kubectl_run(kc, &["auth", "can-i", verb, what]);
        // stdout's answer first; kubectl may warn on stderr after it.
        let answer = out.lines().next().unwrap_or_default().trim();
        assert!(
            answer == "yes" || answer.starts_with("no"),
            "can-i {verb} {what}: {out}"
        );
        yes
    };
    for (who, kc, configmaps, nodes, bindings) in [
        ("viewer", &viewer_kc, false, true, false),
        ("editor", &editor_kc, true, true, false),
        ("admin", &admin_kc, true, true, true),
    ] {
        if can(kc, "create", "configmaps") != configmaps {
            // What the cluster holds, for the failure message.
            let (_, bindings) = kubectl_run(
                &admin_kc,
                &[
                    "get",
                    "clusterrolebindings",
                    "-l",
                    "kubeforge.io/managed",
                    "-o",
                    "yaml",
                ],
            );
            let (_, edit) = kubectl_run(&admin_kc, &["get", "clusterrole", "edit", "-o", "yaml"]);
            let (_, list) = kubectl_run(kc, &["auth", "can-i", "--list"]);
            panic!("{who} create configmaps: want {configmaps}\n{bindings}\n{edit}\n{list}");
        }
        assert_eq!(can(kc, "list", "nodes"), nodes, "{who} list nodes");
        assert_eq!(
            can(kc, "create", "clusterrolebindings"),
            bindings,
            "{who} create clusterrolebindings"
        );
    }
    assert!(
        !can(&viewer_kc, "get", "secrets"),
        "viewers read no secrets"
    );
    let (ok, out) = kubectl_run(&editor_kc, &["create", "configmap", "by-editor"]);
    assert!(ok, "editor create configmap: {out}");
    let (ok, out) = kubectl_run(&viewer_kc, &["create", "configmap", "by-viewer"]);
    assert!(
        !ok && out.contains("forbidden"),
        "viewer create configmap: {out}"
    );
    let revoked_at = Instant::now();
    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{name}/credentials/revoke"),
            Some(&owner),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["credential_generation"], 2, "{}", r.text);
    let revoke_op = r.body["operation"]["id"].as_str().unwrap().to_string();
    drive_until(
        &app,
        &owner,
        &format!("/v1/operations/{revoke_op}"),
        "the revocation to succeed",
        Duration::from_secs(120),
        |status, body| (status == 200 && body["state"] == "succeeded").then_some(()),
    )
    .await;
    eprintln!(
        "revoke to applied: {:.1} s",
        revoked_at.elapsed().as_secs_f64()
    );
    for (who, kc) in [
        ("viewer", &viewer_kc),
        ("editor", &editor_kc),
        ("admin", &admin_kc),
    ] {
        let (ok, out) = kubectl_run(kc, &["get", "namespaces"]);
        assert!(
            !ok && out.contains("forbidden"),
            "the revoked {who} kubeconfig still lists namespaces: {out}"
        );
        assert!(!can(kc, "create", "configmaps"), "revoked {who}");
    }
    let new_admin_kc = tmp.join("admin-2.kubeconfig");
    write_kubeconfig(&app, &owner, &name, "admin", 600, &new_admin_kc).await;
    let (ok, out) = kubectl_run(&new_admin_kc, &["create", "configmap", "after-revoke"]);
    assert!(ok, "a kubeconfig minted after the revocation: {out}");
    let (ok, out) = kubectl_run(
        &new_admin_kc,
        &["delete", "configmap", "by-editor", "after-revoke"],
    );
    assert!(ok, "{out}");

    // kube-apiserver crashes; systemd has it back within seconds, and
    // Kubeforge sees it all the same: an event naming member and
    // component, and the metric.
    let member = format!("{name}-cp-0");
    let crash_started = Instant::now();
    let apiserver_before = restart_metric(&app, Some("kube-apiserver")).await;
    let all_before = restart_metric(&app, None).await;
    let (code, out) = run_on_machine(&app, &m.0, &m.1, SEGFAULT_APISERVER).await;
    assert_eq!(code, 0, "{out:?}");
    let first = wait_for_event(&app, &owner, &name, |e| {
        e["reason"] == "ControlPlaneComponentRestarted"
            && e["type"] == "Warning"
            && e["message"]
                .as_str()
                .is_some_and(|msg| msg.starts_with(&format!("{member}: kube-apiserver restarted")))
    })
    .await;
    eprintln!("crash seen: {}", first["message"]);
    assert!(
        restart_metric(&app, Some("kube-apiserver")).await >= apiserver_before + 1.0,
        "the kube-apiserver restart metric did not rise"
    );
    // Two more crashes (each once it is back): three within the window
    // degrade the cluster, with the reason and who restarted. (A lone
    // member's controller manager and scheduler elect no leader, so they
    // wait out the API server's absence; where they do exit, they count.)
    let (code, out) = run_on_machine(
        &app,
        &m.0,
        &m.1,
        &format!(
            "for i in 1 2; do
               for t in $(seq 60); do [ \"$(systemctl is-active kube-apiserver)\" = active ] && break; sleep 0.5; done
               {SEGFAULT_APISERVER}
             done"
        ),
    )
    .await;
    assert_eq!(code, 0, "{out:?}");
    let degraded = wait_for_cluster(&app, &owner, &name, |c| {
        c["phase"] == "degraded"
            && condition(c, "ControlPlaneReady")["reason"] == "ComponentRestarting"
    })
    .await;
    let cp = condition(&degraded, "ControlPlaneReady");
    assert_eq!(cp["status"], "False", "{degraded}");
    let msg = cp["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("kube-apiserver on {member} restarted")),
        "{msg}"
    );
    eprintln!("degraded: {msg}");
    assert!(
        restart_metric(&app, None).await >= all_before + 3.0,
        "the restart metric did not count three restarts"
    );
    // The crashes stop; once they leave the window the cluster is ready.
    // Every crash was counted, none twice (whether a pass saw it down or
    // only the counter risen, or both).
    let back = drive(&app, &owner, &name, Some("ready"), Duration::from_secs(120)).await;
    assert_eq!(
        restart_metric(&app, Some("kube-apiserver")).await,
        apiserver_before + 3.0,
        "kube-apiserver crashed three times"
    );
    assert_eq!(
        condition(&back, "ControlPlaneReady")["status"],
        "True",
        "{back}"
    );
    eprintln!(
        "crash, degraded and ready again: {:.1} s",
        crash_started.elapsed().as_secs_f64()
    );

    // Delete: nothing of the cluster remains.
    let machines: Vec<(String, Uuid)> =
        sqlx::query_as("SELECT name, id FROM machines WHERE cluster_id = $1")
            .bind(c.id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(machines.len(), 1);
    delete_cluster(&app, &owner, &name, Duration::from_secs(60)).await;
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

/// kube-apiserver's main process dies of a segfault, as in the incident
/// (`systemctl kill` cannot signal a lab container's units: it fails on
/// their cgroups); returns once the process is gone.
const SEGFAULT_APISERVER: &str = "pid=$(systemctl show -p MainPID --value kube-apiserver) \
    && [ \"$pid\" -gt 0 ] && kill -s SEGV \"$pid\" \
    && for t in $(seq 150); do \
         [ \"$(systemctl show -p MainPID --value kube-apiserver)\" = \"$pid\" ] || break; sleep 0.2; \
       done";

/// The control-plane restart window for this test (the service's is
/// `kubeforge_cluster::restarts::RESTART_WINDOW`).
const RESTART_WINDOW: Duration = Duration::from_secs(40);

/// A condition of a cluster (JSON), or null.
fn condition<'a>(cluster: &'a Value, type_: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    cluster["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&NULL)
}

/// `kubeforge_control_plane_component_restarts_total` from `/metrics`:
/// of one component, or of all (0 before the first restart).
async fn restart_metric(app: &TestApp, component: Option<&str>) -> f64 {
    let r = app.call(Method::GET, "/metrics", None, None, &[]).await;
    let prefix = match component {
        Some(c) => format!("kubeforge_control_plane_component_restarts_total{{component=\"{c}\"}}"),
        None => "kubeforge_control_plane_component_restarts_total{".to_string(),
    };
    r.text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// Runs the engine until an event of the cluster matches, returning it.
async fn wait_for_event(
    app: &TestApp,
    token: &str,
    cluster: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/v1/clusters/{cluster}/events?limit=100");
    drive_until(
        app,
        token,
        &path,
        "the event",
        Duration::from_secs(60),
        |status, body| {
            assert_eq!(status, 200, "{body}");
            body["items"]
                .as_array()?
                .iter()
                .find(|e| matches(e))
                .cloned()
        },
    )
    .await
}

/// Runs the engine until the cluster (JSON) matches, returning it.
async fn wait_for_cluster(
    app: &TestApp,
    token: &str,
    cluster: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/v1/clusters/{cluster}");
    drive_until(
        app,
        token,
        &path,
        "the cluster",
        Duration::from_secs(60),
        |status, body| (status == 200 && matches(body)).then(|| body.clone()),
    )
    .await
}
