//! The `kubeforge` binary as people run it: `up` on the embedded
//! PostgreSQL, the CLI client against it, Ctrl-C, a restart that keeps the
//! data, a second `up` on the same data dir refused, and two `serve`
//! processes sharing one database.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_kubeforge");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `up` on ephemeral ports for gRPC and DNS: several run at once, and must
/// not take the lab gateway's port 53 (no clusters boot here, so the
/// advertised DNS address, a documentation address, is never dialled).
const UP_PORTS: &[&str] = &[
    "up",
    "--grpc-listen",
    "127.0.0.1:0",
    "--dns-listen",
    "127.0.0.1:0",
    "--dns-advertise",
    "192.0.2.53:53",
];

fn up(data_dir: &Path, port: u16) -> Proc {
    let child = Command::new(BIN)
        .args(UP_PORTS)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        // No artifact cache: these tests are about the service, not the
        // lab, and must not boot machines.
        .env("KUBEFORGE_CACHE", data_dir.join("no-cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubeforge up");
    Proc(child)
}

async fn wait_healthy(port: u16) {
    // Generous: in CI the conformance cluster boots beside these tests on
    // two cores, and an `up` restarted on its data dir first waits for the
    // previous embedded PostgreSQL to let go of it.
    let deadline = Instant::now() + Duration::from_secs(180);
    let url = format!("http://127.0.0.1:{port}/readyz");
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "kubeforge on port {port} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cli(port: u16, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("KUBEFORGE_URL", format!("http://127.0.0.1:{port}"))
        .env("KUBEFORGE_TOKEN", token)
        .output()
        .expect("run kubeforge client")
}

fn token(data_dir: &Path, tenant: &str, role: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "token",
            "create",
            "--tenant",
            tenant,
            "--role",
            role,
            "--ttl",
            "1h",
            "--data-dir",
        ])
        .arg(data_dir)
        .output()
        .expect("token create");
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

fn stop(mut p: Proc, signal: Signal) -> std::process::ExitStatus {
    kill(Pid::from_raw(p.0.id() as i32), signal).expect("signal");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = p.0.try_wait().expect("wait") {
            std::mem::forget(p);
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "kubeforge did not stop after {signal}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn up_serves_the_cli_stops_cleanly_and_keeps_data() {
    let dir = temp_dir("up");
    let port = free_port();
    let server = up(&dir, port);
    wait_healthy(port).await;
    let admin = token(&dir, "acme", "admin");

    // Without an artifact cache `up` runs no provider: a cluster is refused
    // at create, naming the field, and nothing is listed afterwards.
    let created = cli(
        port,
        &admin,
        &[
            "clusters",
            "create",
            "web",
            "--node-pool",
            "default:1",
            "--label",
            "team=web",
        ],
    );
    assert!(!created.status.success());
    let err = String::from_utf8_lossy(&created.stderr);
    assert!(
        err.contains("422") && err.contains("provider.kind") && err.contains("it runs: none"),
        "create: {err}"
    );
    let listed = cli(port, &admin, &["clusters", "list", "-o", "json"]);
    assert!(listed.status.success());
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json list");
    assert_eq!(v["items"], serde_json::json!([]), "{v}");

    // A platform admin's write, read back after a restart below.
    let platform = token(&dir, "ops", "platform-admin");
    let r = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{port}/v1/tenants/acme/quota"))
        .bearer_auth(&platform)
        .json(&serde_json::json!({"max_clusters": 4, "max_nodes": 21, "max_cpus": 400}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // API errors exit non-zero with the problem's code and detail.
    let missing = cli(port, &admin, &["clusters", "get", "nosuch"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("404") && err.contains("not_found"),
        "stderr: {err}"
    );
    let bad = cli(port, &admin, &["clusters", "create", "Bad_Name"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("validation_failed") && err.contains("name"),
        "stderr: {err}"
    );
    let viewer = token(&dir, "acme", "viewer");
    let refused = cli(port, &viewer, &["clusters", "delete", "web"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"));

    // A second `up` on the same data dir is refused while the first runs.
    let second = Command::new(BIN)
        .args(UP_PORTS)
        .arg("--data-dir")
        .arg(&dir)
        .env("KUBEFORGE_CACHE", dir.join("no-cache"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("second up");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("in use by another kubeforge"),
        "second up said: {err}"
    );

    // Ctrl-C stops the service and its database.
    let status = stop(server, Signal::SIGINT);
    assert!(status.success(), "exit status after Ctrl-C: {status}");
    assert!(
        !dir.join("pgdata/postmaster.pid").exists(),
        "PostgreSQL still running after Ctrl-C"
    );

    // Data survives a restart.
    let port = free_port();
    let server = up(&dir, port);
    wait_healthy(port).await;
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/tenants/acme/quota"))
        .bearer_auth(&platform)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["max_clusters"].as_i64(), v["max_nodes"].as_i64()),
        (Some(4), Some(21)),
        "{v}"
    );
    let status = stop(server, Signal::SIGTERM);
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn two_serve_processes_share_one_database() {
    let dir = temp_dir("shared-db");
    let pg = kubeforge::embedded_pg::EmbeddedPostgres::start(&dir.join("pg"))
        .await
        .expect("postgres");
    let url = pg.url("kubeforge");
    let key = "ab".repeat(32);
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    for i in 0..2 {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["serve", "--database-url", &url, "--data-dir"])
            .arg(dir.join(format!("replica-{i}")))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("KUBEFORGE_TOKEN_KEY", &key)
            .env("KUBEFORGE_CACHE", dir.join("no-cache"))
            .env("KUBEFORGE_SECRET_KEY", "cd".repeat(32))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        procs.push(Proc(child));
        ports.push(port);
    }
    for p in &ports {
        wait_healthy(*p).await;
    }
    // One SSH key for both (a machine one replica set up is repaired or
    // deleted by whichever takes the job): the first to start stored its
    // key, sealed; the other took that one and kept its own aside.
    let public = |i: usize| {
        let out = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(dir.join(format!("replica-{i}/ssh/id_ed25519")))
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(public(0), public(1));
    let replaced: Vec<String> = (0..2)
        .flat_map(|i| std::fs::read_dir(dir.join(format!("replica-{i}/ssh"))).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("id_ed25519.replaced-"))
        .collect();
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    let db = kubeforge::store::connect(&url, 1).await.unwrap();
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT ciphertext FROM service_secrets WHERE name = 'ssh-client-key'")
            .fetch_one(&db)
            .await
            .unwrap();
    let pem = std::fs::read(dir.join("replica-0/ssh/id_ed25519")).unwrap();
    assert!(
        !sealed.windows(20).any(|w| pem.windows(20).any(|p| p == w)),
        "the stored SSH key is not sealed"
    );
    db.close().await;
    let keys = kubeforge::auth::AuthKeys::from_secret(&hex::decode(&key).unwrap()).unwrap();
    let tok = keys
        .mint(
            "acme",
            "t",
            kubeforge::context::Role::Admin,
            Duration::from_secs(600),
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
    let platform = keys
        .mint(
            "ops",
            "p",
            kubeforge::context::Role::PlatformAdmin,
            Duration::from_secs(600),
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
    let client = reqwest::Client::new();
    // These replicas run no provider (no lab image in their cache): a
    // cluster on one is refused at create, naming the field, by either
    // replica, and nothing is written for any replica to pick up.
    for n in 0..4 {
        let port = ports[n % 2];
        let r = client
            .post(format!("http://127.0.0.1:{port}/v1/clusters"))
            .bearer_auth(&tok)
            .json(&serde_json::json!({"name": format!("c{n}"), "kubernetes_version": "1.20.2", "provider": {"kind": "lab"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["field"], "provider.kind", "{v}");
        assert!(
            v["detail"].as_str().unwrap().contains("it runs: none"),
            "{v}"
        );
    }
    let pool = kubeforge::store::connect(&url, 2).await.unwrap();
    for table in ["clusters", "operations", "jobs"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "nothing written to {table}");
    }
    // Write through one replica, read through the other.
    for (i, max_clusters) in [3, 7, 5].into_iter().enumerate() {
        let r = client
            .put(format!(
                "http://127.0.0.1:{}/v1/tenants/acme/quota",
                ports[i % 2]
            ))
            .bearer_auth(&platform)
            .json(&serde_json::json!({"max_clusters": max_clusters, "max_nodes": 40, "max_cpus": 400}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        let r = client
            .get(format!(
                "http://127.0.0.1:{}/v1/tenants/acme/quota",
                ports[(i + 1) % 2]
            ))
            .bearer_auth(&platform)
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["max_clusters"], max_clusters, "{v}");
    }
    pool.close().await;
    drop(procs);
    pg.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `autoscaler status` and `machine-types` against a service that runs no
/// provider: the cluster, its pools and the autoscaler's snapshot are
/// written straight through the store, as the API and the autoscaler
/// would have.
#[tokio::test]
async fn autoscaler_status_and_machine_types_from_the_cli() {
    use kubeforge::context::{OpContext, Role};
    use kubeforge::store::{autoscaler, cluster, node_pool, tenant};
    use kubeforge_cluster::api::{
        AutoscalerDecisionView, AutoscalerSnapshot, PendingPodView, PoolReasonView, Quota,
    };

    let dir = temp_dir("autoscaler");
    let pg = kubeforge::embedded_pg::EmbeddedPostgres::start(&dir.join("pg"))
        .await
        .expect("postgres");
    let url = pg.url("kubeforge");
    let key = "ab".repeat(32);
    let port = free_port();
    let server = Proc(
        Command::new(BIN)
            .args(["serve", "--database-url", &url, "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("KUBEFORGE_TOKEN_KEY", &key)
            .env("KUBEFORGE_SECRET_KEY", "cd".repeat(32))
            .env("KUBEFORGE_CACHE", dir.join("no-cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve"),
    );
    wait_healthy(port).await;
    let keys = kubeforge::auth::AuthKeys::from_secret(&hex::decode(&key).unwrap()).unwrap();
    let mint = |tenant: &str, role: Role| {
        keys.mint(
            tenant,
            "t",
            role,
            Duration::from_secs(600),
            chrono::Utc::now().timestamp(),
        )
        .unwrap()
    };
    let viewer = mint("acme", Role::Viewer);

    let pool = kubeforge::store::connect(&url, 2).await.unwrap();
    let ctx = OpContext {
        tenant: "acme".into(),
        subject: "t".into(),
        role: Role::Admin,
        request_id: "cli-test".into(),
    };
    let spec = kubeforge_cluster::ClusterSpec::parse(
        serde_json::from_value(serde_json::json!({
            "name": "web", "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
            "autoscaler": {"expander": "priority"},
            "node_pools": [
                {"name": "default", "size": 2, "autoscaling": {"min": 1, "max": 5}},
                {"name": "gpu", "machine_type": "large", "autoscaling": {"min": 0, "max": 2, "priority": 5}}
            ]
        }))
        .unwrap(),
    )
    .unwrap();
    let id = uuid::Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    tenant::ensure_locked(
        &mut tx,
        "acme",
        Quota {
            max_clusters: 5,
            max_nodes: 50,
            max_cpus: 400,
        },
    )
    .await
    .unwrap();
    cluster::insert(
        &mut tx,
        &ctx,
        cluster::NewCluster {
            id,
            name: spec.name.as_str(),
            kubernetes_version: spec.kubernetes_version.as_str(),
            provider: &spec.provider,
            control_plane: &spec.control_plane,
            network: &spec.network,
            labels: &spec.labels,
            deletion_protection: false,
            autoscaler: &spec.autoscaler,
        },
    )
    .await
    .unwrap();
    for p in &spec.node_pools {
        node_pool::insert(&mut tx, &ctx, id, uuid::Uuid::now_v7(), p)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    autoscaler::put_snapshot(
        &pool,
        id,
        &AutoscalerSnapshot {
            observed_at: Some(at("2026-12-02T10:00:05Z")),
            pending_pods: 2,
            pending: vec![
                PendingPodView {
                    namespace: "default".into(),
                    name: "web-7".into(),
                    outcome: "no_pool".into(),
                    pool: None,
                    node: None,
                    reasons: vec![
                        PoolReasonView {
                            pool: "gpu".into(),
                            reason: "insufficient nvidia.com/gpu".into(),
                        },
                        PoolReasonView {
                            pool: "default".into(),
                            reason: "node selector mismatch".into(),
                        },
                    ],
                },
                PendingPodView {
                    namespace: "default".into(),
                    name: "web-8".into(),
                    outcome: "scale_up".into(),
                    pool: Some("default".into()),
                    node: None,
                    reasons: vec![],
                },
            ],
            holds: [("gpu".to_string(), "cooling down".to_string())].into(),
            decisions: [(
                "default".to_string(),
                vec![AutoscalerDecisionView {
                    at: at("2026-12-02T10:00:01Z"),
                    kind: "scale_up".into(),
                    from: 1,
                    to: 2,
                    node: None,
                    pods: 1,
                    reason: "1 pod fits on 1 new small node".into(),
                    operation: None,
                }],
            )]
            .into(),
        },
    )
    .await
    .unwrap();

    let out = cli(port, &viewer, &["autoscaler", "status", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "MODE     OBSERVED              PENDING PODS\n\
         builtin  2026-12-02T10:00:05Z  2\n\
         \n\
         POOL     MIN  MAX  SIZE  READY  HOLD\n\
         default  1    5    2     0      -\n\
         gpu      0    2    0     0      cooling down\n\
         \n\
         POOL     DECIDED AT            KIND      FROM  TO  PODS  NODE  REASON\n\
         default  2026-12-02T10:00:01Z  scale_up  1     2   1     -     1 pod fits on 1 new small node\n\
         \n\
         PENDING POD    OUTCOME   TO       REASONS\n\
         default/web-7  no_pool   -        pool gpu: insufficient nvidia.com/gpu; pool default: node selector mismatch\n\
         default/web-8  scale_up  default  -\n"
    );
    let out = cli(
        port,
        &viewer,
        &["autoscaler", "status", "web", "-o", "json"],
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json status");
    assert_eq!(v["cluster"], id.to_string());
    assert_eq!(v["pools"][1]["hold"], "cooling down");
    assert_eq!(v["pending"][0]["reasons"][0]["pool"], "gpu");

    // Another tenant's cluster is not found.
    let out = cli(
        port,
        &mint("globex", Role::Admin),
        &["autoscaler", "status", "web"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("not_found"), "{err}");

    // The lab offers the generic sizes only: the table is theirs.
    let out = cli(port, &viewer, &["machine-types", "--provider", "lab"]);
    assert!(out.status.success());
    let mut want = Vec::new();
    kubeforge::cli::autoscaler::print_machine_types(
        &mut want,
        kubeforge::cli::client::Output::Table,
        &kubeforge_cluster::api::Items {
            items: kubeforge_cluster::MachineType::all()
                .take(3)
                .map(kubeforge_cluster::api::MachineTypeView::from)
                .collect(),
        },
    )
    .unwrap();
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(got, String::from_utf8(want).unwrap());
    assert!(
        got.starts_with("NAME    CPU  MEMORY MIB  GPUS  PODS") && got.lines().count() == 4,
        "{got}"
    );
    let out = cli(port, &viewer, &["machine-types", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json types");
    assert_eq!(v["items"][1]["allocatable"]["cpu_millis"], 1900);
    assert_eq!(v["items"].as_array().unwrap().len(), 20);
    let out = cli(port, &viewer, &["machine-types", "--provider", "gce"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("422") && err.contains("provider"), "{err}");

    pool.close().await;
    drop(server);
    pg.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stops every lab machine of a data dir when dropped, so a failed
/// assertion leaks no container, and removes the test's bridge.
struct LabCleanup(PathBuf, String);

impl Drop for LabCleanup {
    fn drop(&mut self) {
        kubeforge::providers::lab::stop_machines_under(&self.0);
        let _ = Command::new("ip").args(["link", "del", &self.1]).status();
    }
}

fn lab_machine_dirs(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("lab/machines"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn nspawns_under(data_dir: &Path) -> usize {
    let needle = format!(":{}", data_dir.display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("systemd-nspawn") && c.contains(&needle)
                })
                .unwrap_or(false)
        })
        .count()
}

fn serve_lab(url: &str, data_dir: &Path, port: u16, bridge: &str, subnet: &str, key: &str) -> Proc {
    let child = Command::new(BIN)
        .args(["serve", "--database-url", url, "--data-dir"])
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("KUBEFORGE_TOKEN_KEY", key)
        .env("KUBEFORGE_LAB_BRIDGE", bridge)
        .env("KUBEFORGE_LAB_SUBNET", subnet)
        // `serve` trusts no tenant with the lab unless told.
        .env("KUBEFORGE_LAB_TENANTS", "all")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(data_dir.join("serve.log"))
                .expect("log file"),
        ))
        .spawn()
        .expect("spawn serve");
    Proc(child)
}

/// `kill -9` the service in the middle of provisioning, start it again:
/// the cluster converges with no duplicate machine.
#[tokio::test]
async fn killed_mid_provisioning_converges_without_duplicates() {
    let dir = temp_dir("kill9");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let octet = 100 + (uuid::Uuid::new_v4().as_u128() % 100) as u8;
    let bridge = format!("kfk{octet}");
    let subnet = format!("10.77.{octet}.0/24");
    let _cleanup = LabCleanup(data.clone(), bridge.clone());
    let pg = kubeforge::embedded_pg::EmbeddedPostgres::start(&dir.join("pg"))
        .await
        .expect("postgres");
    let url = pg.url("kubeforge");
    let key = "ef".repeat(32);
    let keys = kubeforge::auth::AuthKeys::from_secret(&hex::decode(&key).unwrap()).unwrap();
    let tok = keys
        .mint(
            "acme",
            "t",
            kubeforge::context::Role::Admin,
            Duration::from_secs(900),
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
    let port = free_port();
    let server = serve_lab(&url, &data, port, &bridge, &subnet, &key);
    wait_healthy(port).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://127.0.0.1:{port}/v1/clusters"))
        .bearer_auth(&tok)
        .json(&serde_json::json!({"name": "k9", "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
            "node_pools": [{"name": "work", "size": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Wait until provisioning is under way (some machines recorded), then kill -9.
    let pool = kubeforge::store::connect(&url, 2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM machines")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no machine recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut server = server;
    server.0.kill().expect("kill -9");
    server.0.wait().expect("reap");
    std::mem::forget(server);
    let phase: String = sqlx::query_scalar("SELECT phase FROM clusters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(phase, "provisioning", "killed too late to test anything");

    // Start again: the job's lease runs out, another run picks it up.
    let port = free_port();
    let server = serve_lab(&url, &data, port, &bridge, &subnet, &key);
    wait_healthy(port).await;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let v: serde_json::Value = client
            .get(format!("http://127.0.0.1:{port}/v1/clusters/k9"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["phase"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "cluster did not converge: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM machines WHERE deleted_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ledger, 3, "1 control plane + 2 workers in the ledger");
    assert_eq!(lab_machine_dirs(&data), 3, "no duplicate machine directory");
    assert_eq!(nspawns_under(&data), 3, "no duplicate machine process");

    // Delete: nothing remains.
    let r = client
        .delete(format!("http://127.0.0.1:{port}/v1/clusters/k9"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while nspawns_under(&data) > 0 || lab_machine_dirs(&data) > 0 {
        assert!(Instant::now() < deadline, "machines remain after delete");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pool.close().await;
    drop(server);
    pg.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The kubeconfig TTL cap is the operator's to set; a bad value stops startup.
#[tokio::test]
async fn kubeconfig_ttl_cap_comes_from_the_environment() {
    let dir = temp_dir("ttl");
    let bad = Command::new(BIN)
        .args(UP_PORTS)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env("KUBEFORGE_CACHE", dir.join("no-cache"))
        .env("KUBEFORGE_KUBECONFIG_MAX_TTL", "5s")
        .output()
        .expect("up with a bad cap");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("KUBEFORGE_KUBECONFIG_MAX_TTL"));

    let port = free_port();
    let child = Command::new(BIN)
        .args(UP_PORTS)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("KUBEFORGE_CACHE", dir.join("no-cache"))
        .env("KUBEFORGE_KUBECONFIG_MAX_TTL", "2m")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("up");
    let server = Proc(child);
    wait_healthy(port).await;
    let tok = token(&dir, "acme", "admin");
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/v1/clusters/any/kubeconfig"
        ))
        .bearer_auth(&tok)
        .json(&serde_json::json!({"role": "admin", "ttl_seconds": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["field"], "ttl_seconds");
    assert!(
        v["detail"].as_str().unwrap_or_default().contains("120"),
        "{v}"
    );
    stop(server, Signal::SIGINT);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plaintext API on an address other than loopback is refused at
/// startup, before anything else happens, unless asked for.
#[test]
fn serve_refuses_plaintext_beyond_loopback() {
    let dir = temp_dir("plaintext");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", "0.0.0.0:0"])
        .env("KUBEFORGE_CACHE", dir.join("no-cache"))
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--insecure-plaintext"),
        "serve said: {err}"
    );
    // Half a TLS configuration is a usage error.
    let out = Command::new(BIN)
        .args(["serve", "--tls-cert", "/nonexistent.pem"])
        .output()
        .expect("serve");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (CA PEM, certificate file, key file) for `localhost` under `dir`.
fn server_cert(dir: &Path) -> (String, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    (ca_pem, dir.join("tls.crt"), dir.join("tls.key"))
}

/// `up` over TLS answers https to a client trusting the CA; when its
/// embedded PostgreSQL dies, `/readyz` says so at once and recovers when
/// `up` has started it again.
#[tokio::test]
async fn up_over_tls_restarts_its_postgres() {
    let dir = temp_dir("up-tls");
    let (ca, cert, key) = server_cert(&dir);
    let port = free_port();
    let _server = Proc(
        Command::new(BIN)
            .args(UP_PORTS)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .env("KUBEFORGE_CACHE", dir.join("no-cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kubeforge up"),
    );
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/readyz");
    let ready = |deadline: Duration| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let until = Instant::now() + deadline;
            while Instant::now() < until {
                if let Ok(r) = client.get(&url).send().await {
                    if r.status() == 200 {
                        return true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        }
    };
    assert!(
        ready(Duration::from_secs(90)).await,
        "never ready over https"
    );
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .is_err(),
        "plain http answered on the TLS port"
    );

    let pid_file = std::fs::read_to_string(dir.join("data/pgdata/postmaster.pid")).unwrap();
    let pid: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the postmaster");
    let killed = Instant::now();
    let mut saw_unready = false;
    while !saw_unready && killed.elapsed() < Duration::from_secs(10) {
        if let Ok(r) = client.get(&url).send().await {
            saw_unready = r.status() == 503;
        }
    }
    assert!(saw_unready, "readyz never said the database was gone");
    assert!(
        ready(Duration::from_secs(60)).await,
        "readyz did not recover after the postmaster was killed"
    );
    eprintln!("postgres back after {:?}", killed.elapsed());
}

/// `up`'s database lets in only its generated password: the file is 0600,
/// a login without it is refused, and neither the log nor the server's
/// log holds it. `up`'s log, written to a file, is plain text.
#[tokio::test]
async fn up_keeps_its_database_behind_a_password() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("up-password");
    let data = dir.join("data");
    let port = free_port();
    let log = std::fs::File::create(dir.join("up.log")).unwrap();
    let server = Proc(
        Command::new(BIN)
            .args(UP_PORTS)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("KUBEFORGE_CACHE", dir.join("no-cache"))
            .env("KUBEFORGE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kubeforge up"),
    );
    wait_healthy(port).await;
    let file = data.join("postgres.password");
    let password = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(password.len(), 64);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let pid_file = std::fs::read_to_string(data.join("pgdata/postmaster.pid")).unwrap();
    let pg_port: u16 = pid_file.lines().nth(3).unwrap().trim().parse().unwrap();
    let url =
        |password: &str| format!("postgres://postgres:{password}@127.0.0.1:{pg_port}/kubeforge");
    use sqlx::Connection;
    assert!(sqlx::PgConnection::connect(&format!(
        "postgres://postgres@127.0.0.1:{pg_port}/kubeforge"
    ))
    .await
    .is_err());
    assert!(sqlx::PgConnection::connect(&url("0".repeat(64).as_str()))
        .await
        .is_err());
    sqlx::PgConnection::connect(&url(&password))
        .await
        .expect("the password lets in")
        .close()
        .await
        .unwrap();
    let status = stop(server, Signal::SIGINT);
    assert!(status.success(), "exit status after Ctrl-C: {status}");
    let up_log = std::fs::read_to_string(dir.join("up.log")).unwrap();
    assert!(
        !up_log.contains('\x1b'),
        "a log written to a file has no colour codes"
    );
    for log in [dir.join("up.log"), data.join("postgres.log")] {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.is_empty(), "{} is empty", log.display());
        assert!(
            !text.contains(&password),
            "{} shows the password",
            log.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Artifact settings that could never be honoured stop `up` and `serve`
/// at start, before the database: a URL without pinned digests, plain
/// http off the host without the flag, a malformed digests file.
#[test]
fn unpinned_or_plain_http_artifacts_are_refused_at_start() {
    let dir = temp_dir("artifacts");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .env("KUBEFORGE_CACHE", dir.join("no-cache"))
            .env_remove("KUBEFORGE_ARTIFACTS")
            .env_remove("KUBEFORGE_ARTIFACT_DIGESTS")
            .env_remove("KUBEFORGE_INSECURE_ARTIFACTS_HTTP");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run kubeforge");
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let digests = dir.join("SHA256SUMS");
    let mut text = String::new();
    for c in kubeforge::artifacts::COMPONENTS {
        text.push_str(&format!(
            "{}  v1.20.2/bin/linux/amd64/{c}\n",
            "a".repeat(64)
        ));
    }
    std::fs::write(&digests, &text).unwrap();
    let digests = digests.to_str().unwrap();

    let err = run(
        &["serve", "--artifacts", "https://dl.example.com/kube"],
        &[],
    );
    assert!(
        err.contains("v1.20.2 kube-apiserver") && err.contains("no pinned sha256"),
        "{err}"
    );
    let err = run(
        &[
            "up",
            "--artifacts",
            "http://192.0.2.1/kube",
            "--artifact-digests",
            digests,
        ],
        &[],
    );
    assert!(err.contains("plain http to 192.0.2.1 refused"), "{err}");
    // The flag (here from the environment) lifts only the http rule.
    let err = run(
        &["up", "--artifacts", "http://192.0.2.1/kube"],
        &[("KUBEFORGE_INSECURE_ARTIFACTS_HTTP", "true")],
    );
    assert!(err.contains("no pinned sha256"), "{err}");
    std::fs::write(dir.join("bad"), "abc  v1.20.2/bin/linux/amd64/kubectl\n").unwrap();
    let err = run(
        &["serve"],
        &[(
            "KUBEFORGE_ARTIFACT_DIGESTS",
            dir.join("bad").to_str().unwrap(),
        )],
    );
    assert!(
        err.contains("line 1") && err.contains("not a sha256"),
        "{err}"
    );
    assert!(
        !dir.join("data/pgdata").exists(),
        "the database was started"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `token create` where no service has run never makes a signing key (its
/// tokens would be refused by every server): it exits non-zero naming the
/// data dir it looked in and how to point at another, whether the dir came
/// from `--data-dir` or `KUBEFORGE_DATA_DIR`. With the key present it mints.
#[test]
fn token_create_refuses_to_invent_a_signing_key() {
    let dir = temp_dir("no-key");
    let base = ["token", "create", "--tenant", "acme", "--role", "admin"];
    let flag = Command::new(BIN)
        .args(base)
        .arg("--data-dir")
        .arg(&dir)
        .env_remove("KUBEFORGE_TOKEN_KEY")
        .env_remove("KUBEFORGE_DATA_DIR")
        .output()
        .expect("token create");
    let env = Command::new(BIN)
        .args(base)
        .env("KUBEFORGE_DATA_DIR", &dir)
        .env_remove("KUBEFORGE_TOKEN_KEY")
        .output()
        .expect("token create");
    for out in [&flag, &env] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(out.stdout.is_empty(), "no token printed");
        assert!(
            stderr.contains(&format!("data dir {}", dir.display())),
            "{stderr}"
        );
        for hint in ["--data-dir", "KUBEFORGE_DATA_DIR", "token.key"] {
            assert!(stderr.contains(hint), "{hint} missing: {stderr}");
        }
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing was created in the data dir"
    );
    // With the service's key in place the same command mints a token that
    // key verifies.
    std::fs::write(dir.join("token.key"), "ab".repeat(32)).unwrap();
    let tok = token(&dir, "acme", "admin");
    let keys = kubeforge::auth::AuthKeys::from_secret(&[0xab; 32]).unwrap();
    let (claims, _) = keys.verify(&tok).expect("verifies with the dir's key");
    assert_eq!(claims.tenant, "acme");
}

/// `up` with the lab on (this host's artifact cache), its own data dir,
/// the lab variables unset unless given in `env`, its log in `up.log`.
fn up_with_lab(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(UP_PORTS)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("KUBEFORGE_LAB_BRIDGE")
        .env_remove("KUBEFORGE_LAB_SUBNET")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(data_dir.join("up.log")).expect("log file"),
        ));
    Proc(cmd.spawn().expect("spawn kubeforge up"))
}

/// The bridge and subnet an `up` recorded for its data dir.
fn lab_network_of(data_dir: &Path) -> (String, String) {
    let path = data_dir.join("lab/network.json");
    let text = std::fs::read_to_string(&path).expect("network.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        v["bridge"].as_str().unwrap().to_string(),
        v["subnet"].as_str().unwrap().to_string(),
    )
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Deletes the bridges a failed test leaves.
struct BridgeCleanup(Vec<String>);

impl Drop for BridgeCleanup {
    fn drop(&mut self) {
        for br in &self.0 {
            if link_exists(br) {
                let _ = Command::new("ip").args(["link", "del", br]).status();
            }
        }
    }
}

/// Two `up` on one host at once (two data dirs, nothing configured) hold
/// distinct lab bridges and subnets, each bridge up with its subnet's
/// first address; a third asked for one of theirs is refused naming the
/// variables to set; stopping one removes its bridge and leaves the
/// other's; restarted after another took its pair, with no machine of its
/// own, it picks a third. (Root and the lab artifacts; no machine is
/// booted.)
#[tokio::test]
async fn two_ups_on_one_host_hold_distinct_lab_networks() {
    let (da, db, dc) = (temp_dir("lab-a"), temp_dir("lab-b"), temp_dir("lab-c"));
    let (pa, pb) = (free_port(), free_port());
    let a = up_with_lab(&da, pa, &[]);
    let b = up_with_lab(&db, pb, &[]);
    wait_healthy(pa).await;
    wait_healthy(pb).await;
    let (bra, sna) = lab_network_of(&da);
    let (brb, snb) = lab_network_of(&db);
    let _cleanup = BridgeCleanup(vec![bra.clone(), brb.clone()]);
    assert_ne!(bra, brb, "distinct bridges");
    assert_ne!(sna, snb, "distinct subnets");
    for (br, sn) in [(&bra, &sna), (&brb, &snb)] {
        assert!(br.starts_with("kfbr"), "{br}");
        let net: ipnet::Ipv4Net = sn.parse().unwrap();
        let gateway = net.hosts().next().unwrap();
        let out = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", br])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("inet {gateway}/{}", net.prefix_len())),
            "{br}: {text}"
        );
    }

    // A third `up` told to use the first's bridge is refused, naming the
    // variables, and makes nothing.
    let c = up_with_lab(&dc, free_port(), &[("KUBEFORGE_LAB_BRIDGE", bra.as_str())]);
    let (status, stderr) = {
        let mut c = c;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = c.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the third up did not stop");
            std::thread::sleep(Duration::from_millis(100));
        };
        std::mem::forget(c);
        (status, std::fs::read_to_string(dc.join("up.log")).unwrap())
    };
    assert!(!status.success(), "{stderr}");
    for needle in [
        bra.as_str(),
        "KUBEFORGE_LAB_BRIDGE",
        "KUBEFORGE_LAB_SUBNET",
        &da.display().to_string(),
    ] {
        assert!(stderr.contains(needle), "{needle} missing: {stderr}");
    }

    // Stopping the first removes its bridge only.
    assert!(stop(a, Signal::SIGINT).success());
    assert!(!link_exists(&bra), "{bra} removed when its up stopped");
    assert!(link_exists(&brb), "{brb} still there");
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{pb}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );

    // A new `up` may take a pair the first left; the first, restarted
    // with no machine of its own, then picks another rather than refuse.
    let (dd, pd) = (temp_dir("lab-d"), free_port());
    let d = up_with_lab(&dd, pd, &[]);
    wait_healthy(pd).await;
    let pa2 = free_port();
    let a2 = up_with_lab(&da, pa2, &[]);
    wait_healthy(pa2).await;
    let (brd, snd) = lab_network_of(&dd);
    let (bra2, sna2) = lab_network_of(&da);
    let _cleanup2 = BridgeCleanup(vec![brd.clone(), bra2.clone()]);
    assert_eq!(
        (&brd, &snd),
        (&bra, &sna),
        "the new up takes the first free pair, the one the first left"
    );
    let bridges = BTreeSet::from([&brb, &brd, &bra2]);
    let subnets = BTreeSet::from([&snb, &snd, &sna2]);
    assert_eq!(
        (bridges.len(), subnets.len()),
        (3, 3),
        "{bridges:?} {subnets:?}"
    );
    assert!(link_exists(&brd) && link_exists(&bra2));

    for (p, br) in [(a2, &bra2), (d, &brd), (b, &brb)] {
        assert!(stop(p, Signal::SIGINT).success());
        assert!(!link_exists(br), "{br} removed when its up stopped");
    }
}
