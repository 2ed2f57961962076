//! The `kubeforge` client commands as a user runs them: the real binary,
//! started as a process, against the real HTTP API served on a loopback
//! port with its engine running (jobs are picked up as the service picks
//! them up, nothing is driven by hand).
//!
//! `the_cli_over_the_api` uses the TEST DOUBLE provider (machines exist as
//! soon as they are created; without machine access a control plane never
//! comes up, so a cluster create stays running): waits that end (scale,
//! pool update, pool and cluster delete), one that times out and one whose
//! operation fails, `events list --follow` ending with an operation, the
//! output formats (JSON and YAML parsed by real parsers), machines, quotas
//! and hosts, exit codes and problem errors. `create_wait_ends_with_the_ready_cluster` runs on the
//! lab (root, `scripts/build-lab-image`, `scripts/build-kube`): `clusters
//! create` waits until the cluster is ready and prints it.
//!
//! The binary is `kubeforge` next to this test's own executable's
//! directory (`<target>/debug/kubeforge`): build it first
//! (`cargo build -p kubeforge --bin kubeforge`; `cargo test --workspace`
//! does).

use kubeforge::context::Role;
use kubeforge_tests::{test_engine_config, TestApp};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The `kubeforge` binary of this build.
fn kubeforge_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // <target>/debug/deps/cli_client-HASH -> <target>/debug/kubeforge
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("kubeforge");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p kubeforge --bin kubeforge` first",
        bin.display()
    );
    bin
}

/// What one run of the CLI did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// The API on a loopback port, with an engine running its jobs.
struct Served {
    url: String,
    stop: watch::Sender<bool>,
    server: JoinHandle<anyhow::Result<()>>,
    engine: JoinHandle<anyhow::Result<()>>,
}

impl Served {
    async fn start(app: &TestApp) -> Served {
        Self::start_with(
            app,
            kubeforge::server::build_engine(&app.app, test_engine_config()),
        )
        .await
    }

    async fn start_with(app: &TestApp, engine: kubeforge::engine::jobs::Engine) -> Served {
        let (url, stop, server) =
            kubeforge_tests::cli::serve_on_loopback_joined(app.router.clone()).await;
        let engine = tokio::spawn(engine.run(stop.subscribe(), Duration::from_secs(5)));
        Served {
            url,
            stop,
            server,
            engine,
        }
    }

    /// Runs `kubeforge ARGS` with this server's URL and `token`, stdout
    /// and stderr piped (so not a terminal), bounded in time.
    async fn cli(&self, token: &str, args: &[&str]) -> Run {
        let out = tokio::process::Command::new(kubeforge_bin())
            .args(args)
            .env("KUBEFORGE_URL", &self.url)
            .env("KUBEFORGE_TOKEN", token)
            .env("KUBEFORGE_POLL_MS", "100")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(300), out)
            .await
            .unwrap_or_else(|_| panic!("kubeforge {args:?} ran over 300 s"))
            .expect("kubeforge ran");
        Run {
            code: out.status.code().expect("exited, not killed"),
            stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
        }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.engine)
            .await
            .expect("engine stopped")
            .unwrap()
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
    }
}

/// Asserts the exit code, showing the whole run when it differs.
#[track_caller]
fn expect(run: &Run, code: i32) {
    assert_eq!(run.code, code, "{run:#?}");
}

/// The lines of a waited command's stderr that report a step.
fn step_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with('[')).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_over_the_api() {
    let app = TestApp::new().await;
    let served = Served::start(&app).await;
    let admin = app.token("acme", Role::Admin);
    let cli = |args: &'static [&'static str]| served.cli(&admin, args);

    // A create that fails validation: exit 6, nothing on stdout, the
    // problem's title, the field and a hint on their own lines.
    let r = cli(&["clusters", "create", "bad", "--control-plane-replicas", "2"]).await;
    expect(&r, 6);
    assert!(r.stdout.is_empty(), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines[..2],
        [
            "error: Invalid request (422 validation_failed)",
            "detail: must be 1 or 3, not 2"
        ],
        "{r:?}"
    );
    assert!(lines.contains(&"field: control_plane.replicas"), "{r:?}");
    assert!(
        lines.contains(&"hint: correct control_plane.replicas and send the request again"),
        "{r:?}"
    );
    // Refused before any request: usage, exit 2 (clap's).
    expect(&cli(&["clusters", "create"]).await, 2);
    expect(&cli(&["nodepools", "update", "web", "default"]).await, 2);

    // Without a terminal a create does not wait by default: the accepted
    // answer, at once.
    let r = cli(&[
        "clusters",
        "create",
        "web",
        "--node-pool",
        "default:2",
        "-o",
        "json",
    ])
    .await;
    expect(&r, 0);
    let accepted = r.json();
    assert_eq!(accepted["cluster"]["name"], "web");
    assert_eq!(accepted["operation"]["type"], "cluster_create");
    let create_op = accepted["operation"]["id"].as_str().unwrap().to_string();

    // Waiting for it: the machines come, the control plane never does
    // here (no machine access), so the wait times out: exit 8, the steps
    // that moved on stderr, stdout clean.
    let r = served
        .cli(
            &admin,
            &[
                "operations",
                "wait",
                &create_op,
                "--timeout",
                "3s",
                "-o",
                "json",
            ],
        )
        .await;
    expect(&r, 8);
    assert!(r.stdout.is_empty(), "{r:?}");
    let steps = step_lines(&r.stderr);
    assert!(
        steps.iter().any(|l| l.contains("machines: succeeded")),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(&format!(
            "error: operation {create_op} still running after 3s"
        )),
        "{r:?}"
    );

    // -o json, yaml and name show the same cluster.
    let r = cli(&["clusters", "get", "web", "-o", "json"]).await;
    expect(&r, 0);
    let json = r.json();
    assert_eq!(json["name"], "web");
    let r = cli(&["clusters", "get", "web", "-o", "yaml"]).await;
    expect(&r, 0);
    let yaml: Value = serde_saphyr::from_str(&r.stdout).expect("YAML");
    assert_eq!(yaml, json, "YAML and JSON differ");
    let r = cli(&["clusters", "get", "web", "-o", "name"]).await;
    expect(&r, 0);
    assert_eq!(r.stdout, "cluster/web\n");
    let r = cli(&["clusters", "list", "-o", "name"]).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, "cluster/web\n"), "{r:?}");
    let r = cli(&["nodepools", "list", "web", "-o", "yaml"]).await;
    expect(&r, 0);
    let pools: Value = serde_saphyr::from_str(&r.stdout).expect("YAML");
    assert_eq!(pools["items"][0]["name"], "default", "{pools}");
    assert_eq!(pools["items"][0]["size"], 2, "{pools}");

    // scale --wait: the operation's steps stream on stderr, one line per
    // transition, then the pool as it ended up.
    let r = cli(&[
        "nodepools",
        "scale",
        "web",
        "default",
        "3",
        "--wait",
        "-o",
        "json",
    ])
    .await;
    expect(&r, 0);
    let pool = r.json();
    assert_eq!(pool["name"], "default");
    assert_eq!(pool["size"], 3);
    assert_eq!(pool["nodes"].as_array().unwrap().len(), 3, "{pool}");
    assert!(r.stderr.starts_with("waiting for operation "), "{r:?}");
    assert!(r.stderr.contains("node_pool_update"), "{r:?}");
    let steps = step_lines(&r.stderr);
    assert!(!steps.is_empty(), "{r:?}");
    let mut unique = steps.clone();
    unique.dedup();
    assert_eq!(unique.len(), steps.len(), "a line per change: {r:?}");
    assert!(r.stderr.trim_end().ends_with("succeeded"), "{r:?}");

    // nodepools update --min/--max, not waited for; then operations wait
    // on its operation; events --follow --operation ends with it too.
    let r = cli(&[
        "nodepools",
        "update",
        "web",
        "default",
        "--min",
        "1",
        "--max",
        "4",
        "--no-wait",
        "-o",
        "json",
    ])
    .await;
    expect(&r, 0);
    let answer = r.json();
    assert_eq!(
        answer["node_pool"]["autoscaling"],
        serde_json::json!({"min": 1, "max": 4, "priority": 0})
    );
    let op = answer["operation"]["id"].as_str().unwrap().to_string();
    let follow_args = [
        "events",
        "list",
        "web",
        "--follow",
        "--operation",
        &op,
        "-o",
        "json",
    ];
    let wait_args = ["operations", "wait", &op, "-o", "json"];
    let follow = served.cli(&admin, &follow_args);
    let wait = served.cli(&admin, &wait_args);
    let (follow, wait) = tokio::join!(follow, wait);
    expect(&wait, 0);
    assert_eq!(wait.json()["state"], "succeeded");
    assert_eq!(wait.json()["id"], op.as_str());
    expect(&follow, 0);
    let followed: Vec<Value> = follow
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert!(!followed.is_empty(), "{follow:?}");
    assert!(
        followed
            .windows(2)
            .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()),
        "oldest first: {follow:?}"
    );

    // events list: JSON as the API has it (newest first), table oldest
    // first.
    let r = cli(&["events", "list", "web", "-o", "json"]).await;
    expect(&r, 0);
    let events = r.json();
    let items = events["items"].as_array().unwrap();
    assert!(items.len() >= followed.len().min(20), "{events}");
    assert!(items
        .windows(2)
        .all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64()));
    let r = cli(&["events", "list", "web"]).await;
    expect(&r, 0);
    assert!(r.stdout.starts_with("TIME "), "{r:?}");
    let newest_reason = items[0]["reason"].as_str().unwrap();
    assert!(
        r.stdout.lines().last().unwrap().contains(newest_reason),
        "{r:?}"
    );

    // operations list / get, machines list, as tables.
    let r = cli(&["operations", "list", "web"]).await;
    expect(&r, 0);
    assert!(
        r.stdout.contains("cluster_create") && r.stdout.contains(&op),
        "{r:?}"
    );
    let r = served.cli(&admin, &["operations", "get", &op]).await;
    expect(&r, 0);
    assert!(r.stdout.contains("STEP"), "{r:?}");
    let r = cli(&["machines", "list", "web"]).await;
    expect(&r, 0);
    // A control-plane member and three workers of `default`.
    assert_eq!(r.stdout.lines().count(), 1 + 4, "{r:?}");
    assert_eq!(r.stdout.matches(" default ").count(), 3, "{r:?}");
    let r = cli(&["machines", "list", "web", "-o", "name"]).await;
    expect(&r, 0);
    assert!(r.stdout.lines().all(|l| l.starts_with("machine/")), "{r:?}");

    // Quotas are for platform admins: a tenant admin is refused (exit 3).
    let r = cli(&["quotas", "get", "acme"]).await;
    expect(&r, 3);
    assert!(r.stderr.contains("hint: the token's role may not"), "{r:?}");
    let platform = app.token("acme", Role::PlatformAdmin);
    let r = served
        .cli(
            &platform,
            &["quotas", "set", "acme", "--max-clusters", "7", "-o", "json"],
        )
        .await;
    expect(&r, 0);
    let quota = r.json();
    assert_eq!(quota["max_clusters"], 7);
    assert_eq!(quota["clusters"], 1);
    let r = served
        .cli(&platform, &["quotas", "get", "acme", "-o", "yaml"])
        .await;
    expect(&r, 0);
    let yaml: Value = serde_saphyr::from_str(&r.stdout).expect("YAML");
    assert_eq!(yaml, quota);
    let r = served
        .cli(&platform, &["hosts", "list", "-o", "json"])
        .await;
    expect(&r, 0);
    assert_eq!(r.json()["items"], serde_json::json!([]));

    // Hosts: the credential comes from a file, and never comes back.
    let secret_dir = std::env::temp_dir().join(format!("kf-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&secret_dir).unwrap();
    let password_file = secret_dir.join("password");
    std::fs::write(&password_file, "Tr0ub4dor-and-3-horses\n").unwrap();
    let register = [
        "hosts",
        "register",
        "--address",
        "192.0.2.50",
        "--password-file",
        password_file.to_str().unwrap(),
        "--host-key",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIECs8RC9oOFHzT7eV0hhVjweTNpUKq72quyZrEZ+4sYV",
        "--label",
        "rack=r1",
        "-o",
        "json",
    ];
    let r = served.cli(&platform, &register).await;
    std::fs::remove_dir_all(&secret_dir).unwrap();
    expect(&r, 0);
    assert!(!r.stdout.contains("horses"), "{r:?}");
    let host = r.json()["host"].clone();
    assert_eq!(host["credential_kind"], "password", "{host}");
    assert_eq!(host["labels"], serde_json::json!({"rack": "r1"}));
    let host_id = host["id"].as_str().unwrap().to_string();
    let r = served
        .cli(&platform, &["hosts", "list", "-o", "name"])
        .await;
    assert_eq!(r.stdout, format!("host/{host_id}\n"), "{r:?}");
    // Hosts are for platform admins only.
    expect(&served.cli(&admin, &["hosts", "list"]).await, 3);
    let r = served.cli(&platform, &["hosts", "delete", &host_id]).await;
    expect(&r, 0);
    expect(
        &served.cli(&platform, &["hosts", "delete", &host_id]).await,
        4,
    );

    // A stale etag: refused, exit 5.
    let r = cli(&["clusters", "delete", "web", "--if-match", "\"0\"", "--wait"]).await;
    expect(&r, 5);
    assert!(r.stderr.contains("(412 "), "{r:?}");

    // An operation that fails while waited for: its error, exit 7.
    app.provider.fail_permanently.store(true, Ordering::SeqCst);
    let r = cli(&[
        "nodepools",
        "create",
        "web",
        "extra",
        "--size",
        "1",
        "--wait",
        "--timeout",
        "60s",
    ])
    .await;
    app.provider.fail_permanently.store(false, Ordering::SeqCst);
    expect(&r, 7);
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr.contains("error: operation ") && r.stderr.contains("(node_pool_create) failed: "),
        "{r:?}"
    );
    assert!(r.stderr.contains(": failed"), "the failed step: {r:?}");
    assert!(
        r.stderr.contains("\nhint: `kubeforge events list "),
        "{r:?}"
    );

    // nodepools delete --wait, then the pool is gone: 404, exit 4.
    let r = cli(&[
        "nodepools",
        "delete",
        "web",
        "default",
        "--wait",
        "-o",
        "json",
    ])
    .await;
    expect(&r, 0);
    assert_eq!(r.json()["operation"]["state"], "succeeded", "{r:?}");
    let r = cli(&["nodepools", "get", "web", "default"]).await;
    expect(&r, 4);
    assert!(r.stderr.starts_with("error: "), "{r:?}");
    assert!(r.stderr.contains("(404 "), "{r:?}");
    assert!(r.stderr.contains("\nhint: "), "{r:?}");

    // clusters delete --wait ends with the operation; the cluster is gone.
    let r = cli(&["clusters", "delete", "web", "--wait", "-o", "name"]).await;
    expect(&r, 0);
    assert!(r.stdout.starts_with("operation/"), "{r:?}");
    assert!(r.stderr.contains("succeeded"), "{r:?}");
    expect(&cli(&["clusters", "get", "web"]).await, 4);

    // A token the service did not sign: exit 3.
    let r = served.cli("not-a-token", &["clusters", "list"]).await;
    expect(&r, 3);
    assert!(r.stderr.contains("(401 "), "{r:?}");

    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_wait_ends_with_the_ready_cluster() {
    let (tmp, octet, bridge) =
        kubeforge_tests::lab::sandbox(env!("CARGO_TARGET_TMPDIR"), "cli", "kfc");
    let app = TestApp::with_lab(&tmp, &bridge.0, &format!("10.78.{octet}.0/24")).await;
    let engine = kubeforge::server::build_engine(&app.app, kubeforge_tests::lab_engine_config());
    let served = Served::start_with(&app, engine).await;
    let admin = app.token("acme", Role::Admin);
    let name = format!("cli{octet}");

    let r = served
        .cli(
            &admin,
            &[
                "clusters",
                "create",
                &name,
                "--wait",
                "--timeout",
                "10m",
                "-o",
                "json",
            ],
        )
        .await;
    expect(&r, 0);
    let cluster = r.json();
    assert_eq!(cluster["name"], name.as_str());
    assert_eq!(cluster["phase"], "ready", "{r:?}");
    assert!(cluster["endpoint"].is_string(), "{cluster}");
    let steps = step_lines(&r.stderr);
    for step in ["machines", "control_plane"] {
        assert!(
            steps
                .iter()
                .any(|l| l.contains(&format!("] {step}: succeeded"))),
            "{step}: {r:?}"
        );
    }
    assert!(r.stderr.trim_end().ends_with("succeeded"), "{r:?}");

    let r = served
        .cli(
            &admin,
            &["clusters", "delete", &name, "--wait", "--timeout", "5m"],
        )
        .await;
    expect(&r, 0);
    expect(&served.cli(&admin, &["clusters", "get", &name]).await, 4);
    served.stop().await;
    drop(bridge);
}
