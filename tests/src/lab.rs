//! Helpers for tests and benchmarks on real lab machines: kubectl from the
//! artifact cache, a per-test bridge that cleans up after itself (also
//! when an assertion fails), driving the engine to a phase, and power
//! cuts. Traffic goes only to the bridge a test creates.

use axum::http::{Method, StatusCode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::TestApp;

/// Makes every queued job due now and runs jobs until none is due.
pub async fn hurry_and_run(app: &TestApp) {
    sqlx::query("UPDATE jobs SET run_after = now() WHERE state = 'queued'")
        .execute(&app.pool)
        .await
        .expect("hurry jobs");
    app.run_jobs().await;
}

pub fn kubectl() -> PathBuf {
    let p = kubeforge::server::cache_dir().join("kube/v1.20.2/bin/linux/amd64/kubectl");
    assert!(
        p.exists(),
        "no kubectl at {}: run scripts/build-kube",
        p.display()
    );
    p
}

pub fn kubectl_run(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout", "20s"])
        .args(args)
        .output()
        .expect("kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Polls `/readyz` through `kubeconfig` until it says ok; panics with
/// `what` and kubectl's last output after `within`.
pub async fn wait_readyz(kubeconfig: &Path, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let (ok, out) = kubectl_run(kubeconfig, &["get", "--raw", "/readyz"]);
        if ok && out.trim() == "ok" {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `script` as root on a lab machine (its `address` and pinned
/// `host_key`) with the service's own key, as the engine does; returns
/// the exit code and every output line.
pub async fn run_on_machine(
    app: &TestApp,
    address: &str,
    host_key: &str,
    script: &str,
) -> (i32, Vec<String>) {
    let access = app.app.access.clone().expect("machine access");
    let mut lines = Vec::new();
    let code = access
        .ssh
        .run(
            &kubeforge::ssh::SshTarget::new(address.to_string(), "root", host_key.to_string()),
            &access.client_key.auth(),
            script,
            Duration::from_secs(120),
            &kubeforge::ssh::Redactor::none(),
            |_, l| lines.push(l.to_string()),
        )
        .await
        .unwrap_or_else(|e| panic!("ssh to {address}: {e}"));
    (code, lines)
}

/// A lab test's own corner: a fresh directory `<root>/<name>-<uuid>`, an
/// octet for its subnet, and its bridge `<bridge_prefix><octet>` (removed,
/// and the test's machines stopped, when dropped). Tests pass their
/// `CARGO_TARGET_TMPDIR` as `root`.
///
/// The octet is unique on the host while the sandbox lives ([`Octet`]):
/// lab tests run side by side in several processes (the conformance
/// cluster beside the whole suite), and two that drew the same octet would
/// share a bridge name or a subnet, and one's cleanup would cut the
/// other's machines off.
pub fn sandbox(root: &str, name: &str, bridge_prefix: &str) -> (PathBuf, u8, Bridge) {
    let tmp = Path::new(root).join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&tmp).unwrap();
    let octet = Octet::take();
    let n = octet.0;
    let bridge = Bridge(format!("{bridge_prefix}{n}"), tmp.clone(), Some(octet));
    (tmp, n, bridge)
}

/// Where lab tests lock their octets.
const OCTET_LOCKS: &str = "/run/kubeforge/test-octets";

/// An octet (100..=199) no other live lab test on this host holds: an
/// exclusive lock on `/run/kubeforge/test-octets/<octet>.lock`, held
/// until dropped (the kernel lets go of it if the process dies), on an
/// octet for which no link named `*<octet>` of the lab prefixes exists.
pub struct Octet(pub u8, #[allow(dead_code)] std::fs::File);

impl std::fmt::Display for Octet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Octet {
    /// Takes a free octet, starting from a random one.
    pub fn take() -> Octet {
        std::fs::create_dir_all(OCTET_LOCKS).expect("making the octet lock dir");
        let start = (uuid::Uuid::new_v4().as_u128() % 100) as u8;
        for i in 0..100u8 {
            let n = 100 + (start + i) % 100;
            let path = Path::new(OCTET_LOCKS).join(format!("{n}.lock"));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            if file.try_lock().is_err() {
                continue;
            }
            // A bridge left over from a test that died is not ours to take.
            let leftover = std::fs::read_dir("/sys/class/net")
                .map(|d| {
                    d.flatten().any(|e| {
                        let name = e.file_name().to_string_lossy().to_string();
                        name.starts_with("kf") && name.ends_with(&n.to_string())
                    })
                })
                .unwrap_or(false);
            if leftover {
                continue;
            }
            return Octet(n, file);
        }
        panic!("no free lab test octet in 100..=199");
    }
}

/// Removes the test's bridge, and stops any machine the test left
/// running (a failed assertion must not leak containers); then frees its
/// octet, if it holds one.
pub struct Bridge(pub String, pub PathBuf, pub Option<Octet>);

impl Drop for Bridge {
    fn drop(&mut self) {
        kubeforge::providers::lab::stop_machines_under(&self.1);
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Runs the engine until `GET path` answers something `pick` accepts,
/// returning what it picked; panics naming `what` and the last answer
/// after `within`.
pub async fn drive_until<T>(
    app: &TestApp,
    token: &str,
    path: &str,
    what: &str,
    within: Duration,
    pick: impl Fn(StatusCode, &Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        hurry_and_run(app).await;
        let r = app.call(Method::GET, path, Some(token), None, &[]).await;
        if let Some(found) = pick(r.status, &r.body) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after {within:?}: {}",
            serde_json::to_string_pretty(&r.body).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs the engine until the cluster's phase is `want` (or the cluster is
/// gone, for `None`), returning the cluster JSON.
pub async fn drive(
    app: &TestApp,
    token: &str,
    cluster: &str,
    want: Option<&str>,
    within: Duration,
) -> Value {
    drive_until(
        app,
        token,
        &format!("/v1/clusters/{cluster}"),
        &format!("cluster {cluster} {want:?}"),
        within,
        |status, body| match want {
            Some(phase) if status == StatusCode::OK && body["phase"] == phase => Some(body.clone()),
            None if status == StatusCode::NOT_FOUND => Some(Value::Null),
            _ => None,
        },
    )
    .await
}

/// Runs a pod on `node` (the service's sandbox image) and waits until it runs.
pub async fn run_pod_on(kc: &Path, dir: &Path, node: &str) {
    let pod = format!("on-{node}");
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: {}\n    imagePullPolicy: Never\n",
        kubeforge_cluster::worker::PAUSE_IMAGE
    );
    let f = dir.join(format!("{pod}.yaml"));
    std::fs::write(&f, yaml).unwrap();
    let (ok, out) = kubectl_run(kc, &["apply", "-f", f.to_str().unwrap()]);
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, phase) = kubectl_run(kc, &["get", "pod", &pod, "-o", "jsonpath={.status.phase}"]);
        if phase == "Running" {
            return;
        }
        if Instant::now() > deadline {
            let (_, describe) = kubectl_run(kc, &["describe", "pod", &pod]);
            panic!("pod {pod} not running: {describe}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Mints a kubeconfig through the API (`role` admin or viewer) and writes
/// it to `path`.
pub async fn write_kubeconfig(
    app: &TestApp,
    token: &str,
    cluster: &str,
    role: &str,
    ttl_seconds: u64,
    path: &Path,
) {
    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{cluster}/kubeconfig"),
            Some(token),
            Some(serde_json::json!({"role": role, "ttl_seconds": ttl_seconds})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    std::fs::write(path, &r.text).unwrap();
}

/// Deletes the cluster through the API and runs the engine until it is
/// gone.
pub async fn delete_cluster(app: &TestApp, token: &str, cluster: &str, within: Duration) {
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/clusters/{cluster}"),
            Some(token),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    drive(app, token, cluster, None, within).await;
}

/// Asserts nothing of the given machines (ledger name, id) remains: no
/// nspawn process (found by its `--hostname`), no machine directory under `data_dir`'s lab state, no
/// mount, and no cgroup the machine or its kubelet made.
pub fn assert_machines_gone(data_dir: &Path, machines: &[(String, uuid::Uuid)]) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for (name, id) in machines {
        assert_eq!(
            processes_mentioning(&format!("--hostname={name}")),
            0,
            "{name} still runs"
        );
        assert!(
            !data_dir.join("lab/machines").join(id.to_string()).exists(),
            "{name}: its directory remains"
        );
        assert!(!mounts.contains(&id.to_string()), "{name}: a mount remains");
        for c in ["memory", "cpu", "cpuset", "pids", "systemd"] {
            // Named by the ledger id (see `providers::lab`).
            let dir = Path::new("/sys/fs/cgroup")
                .join(c)
                .join("kubeforge")
                .join(id.to_string());
            assert!(!dir.exists(), "{name}: cgroup {} remains", dir.display());
        }
    }
}

pub fn processes_mentioning(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .count()
}

/// Kills a machine's PID 1, as a power cut would.
pub fn power_off(machine: &str) {
    let needle = format!("--hostname={machine}");
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(&needle)
            && String::from_utf8_lossy(&cmd).contains("systemd-nspawn")
        {
            for t in std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .flatten()
            {
                for child in std::fs::read_to_string(t.path().join("children"))
                    .unwrap_or_default()
                    .split_whitespace()
                {
                    let _ = Command::new("kill").args(["-9", child]).status();
                }
            }
        }
    }
}
