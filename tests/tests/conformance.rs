//! The upstream Kubernetes conformance suite (`e2e.test` and `ginkgo`,
//! built by `scripts/build-kube` from the same v1.20.2 source as the
//! cluster's binaries, with the same Go) against a Kubeforge lab cluster
//! made through the API, as a tenant would use it: one control plane, a
//! pool of two, the admin kubeconfig from `POST .../kubeconfig`, while the
//! service's engine keeps reconciling the cluster.
//!
//! No image registry is reachable here, so every registry the suite knows
//! is pointed at `kubeforge.invalid` (nothing is ever fetched from the
//! network) and the lab's sandbox image stands in for the suite's pause
//! image; specs that need any other image are listed `skip` with the image
//! they need. `tests/conformance/specs-1.20.txt` accounts for every
//! `[Conformance]` spec; see `kubeforge_tests::conformance` for the rules
//! the run is held to. Needs root and the lab artifacts (the test command
//! builds them).

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge_tests::conformance::{focus, verdict, Expect, Outcome, SpecList};
use kubeforge_tests::lab::{
    delete_cluster, drive, drive_until, hurry_and_run, kubectl, run_on_machine, sandbox,
    write_kubeconfig,
};
use kubeforge_tests::TestApp;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const POOL: &str = "conformance";
/// ginkgo processes for the specs that may run side by side.
const PARALLEL_NODES: usize = 4;
/// A hard limit per phase, far above what a healthy run takes.
const PHASE_LIMIT: Duration = Duration::from_secs(40 * 60);
/// Where the suite's pause image is looked for once the registries are
/// overridden (`{gcRegistry}/pause:3.2` in the suite's image manifest).
const SUITE_PAUSE_IMAGE: &str = "kubeforge.invalid/pause:3.2";
/// At most this many failed specs are run again; more is no flake.
const RERUN_LIMIT: usize = 3;

fn spec_list() -> SpecList {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/specs-1.20.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    SpecList::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn suite_binary(name: &str) -> PathBuf {
    let p = kubectl().with_file_name(name);
    assert!(
        p.exists(),
        "no {} (run scripts/build-kube: it builds the conformance suite with the binaries)",
        p.display()
    );
    p
}

/// Every registry of the suite's image manifest, pointed at a name that
/// never resolves.
const REPO_LIST: &str = "\
gcAuthenticatedRegistry: kubeforge.invalid
dockerLibraryRegistry: kubeforge.invalid
dockerGluster: kubeforge.invalid
e2eRegistry: kubeforge.invalid
e2eVolumeRegistry: kubeforge.invalid
promoterE2eRegistry: kubeforge.invalid
buildImageRegistry: kubeforge.invalid
invalidRegistry: kubeforge.invalid
gcRegistry: kubeforge.invalid
sigStorageRegistry: kubeforge.invalid
gcrReleaseRegistry: kubeforge.invalid
privateRegistry: kubeforge.invalid
sampleRegistry: kubeforge.invalid
";

/// Runs one ginkgo phase over `specs`, with the engine reconciling the
/// cluster meanwhile; returns the seconds it took and what its JUnit
/// reports say.
#[allow(clippy::too_many_arguments)]
async fn run_phase(
    app: &TestApp,
    tmp: &Path,
    kubeconfig: &Path,
    label: &str,
    specs: &[&str],
    nodes: usize,
) -> (f64, Outcome) {
    let mut outcome = Outcome::default();
    if specs.is_empty() {
        return (0.0, outcome);
    }
    let reports = tmp.join("reports").join(label);
    std::fs::create_dir_all(&reports).unwrap();
    let log_path = tmp.join(format!("{label}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let home = tmp.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(suite_binary("ginkgo"))
        .arg(format!("-nodes={nodes}"))
        .arg("-noColor")
        .arg("-succinct")
        .arg(format!("-focus={}", focus(specs)))
        .arg(format!("-timeout={}s", PHASE_LIMIT.as_secs()))
        .arg(suite_binary("e2e.test"))
        .arg("--")
        .arg("--provider=skeleton")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--kubectl-path={}", kubectl().display()))
        .arg(format!("--report-dir={}", reports.display()))
        .arg(format!("--report-prefix={label}"))
        .env("KUBECONFIG", kubeconfig)
        .env("KUBE_TEST_REPO_LIST", tmp.join("repo-list.yaml"))
        .env("HOME", &home)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("ginkgo");
    eprintln!(
        "conformance {label}: {} specs on {nodes} ginkgo node(s), log {}",
        specs.len(),
        log_path.display()
    );
    let deadline = Instant::now() + PHASE_LIMIT + Duration::from_secs(60);
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.expect("ginkgo wait"),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                // The service goes on observing the cluster, as in production.
                hurry_and_run(app).await;
                if Instant::now() > deadline {
                    let _ = child.kill().await;
                    panic!("conformance {label}: still running after {PHASE_LIMIT:?}; log {}", log_path.display());
                }
            }
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    eprintln!(
        "conformance {label}: ginkgo exited {status} after {secs:.0} s; log tail:\n  {}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
    );
    for e in std::fs::read_dir(&reports).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "xml") {
            let xml = std::fs::read_to_string(&p).unwrap();
            outcome
                .add_junit(&xml)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
    (secs, outcome)
}

#[tokio::test]
async fn upstream_conformance_specs_pass_on_a_lab_cluster() {
    let list = spec_list();
    let (parallel, serial) = list.to_run();
    let (tmp, octet, bridge) = sandbox(env!("CARGO_TARGET_TMPDIR"), "conformance", "kfc");
    let app = TestApp::with_lab(&tmp, &bridge.0, &format!("10.79.{octet}.0/24")).await;
    let owner = app.token("acme", Role::Admin);
    let name = format!("conf{octet}");

    // The cluster, through the API.
    let started = Instant::now();
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(json!({
                "name": name, "kubernetes_version": "1.20.2", "provider": {"kind": "lab"},
                "control_plane": {"replicas": 1, "machine_type": "small"},
                "node_pools": [{"name": POOL, "machine_type": "small", "size": 2}]
            })),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    drive(&app, &owner, &name, Some("ready"), Duration::from_secs(240)).await;
    drive_until(
        &app,
        &owner,
        &format!("/v1/clusters/{name}/node-pools/{POOL}"),
        "2 ready workers",
        Duration::from_secs(240),
        |status, pool| (status == 200 && pool["ready_nodes"] == 2).then_some(()),
    )
    .await;
    eprintln!(
        "conformance: cluster with 2 ready workers after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let kc = tmp.join("admin.kubeconfig");
    write_kubeconfig(&app, &owner, &name, "admin", 3 * 3600, &kc).await;

    // The lab's sandbox image under the name the suite asks for.
    let workers: Vec<(String, String)> = sqlx::query_as(
        "SELECT address, host_key FROM machines WHERE role = 'worker' AND deleted_at IS NULL",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(workers.len(), 2);
    for (address, host_key) in &workers {
        let (code, out) = run_on_machine(
            &app,
            address,
            host_key,
            &format!(
                "ctr --namespace k8s.io images tag --force {} {SUITE_PAUSE_IMAGE}",
                kubeforge_cluster::worker::PAUSE_IMAGE
            ),
        )
        .await;
        assert_eq!(code, 0, "tagging the pause image on {address}: {out:?}");
    }
    std::fs::write(tmp.join("repo-list.yaml"), REPO_LIST).unwrap();

    // The suite: side by side, then the [Serial] specs one at a time.
    let (t_parallel, mut outcome) =
        run_phase(&app, &tmp, &kc, "parallel", &parallel, PARALLEL_NODES).await;
    let (t_serial, serial_outcome) = run_phase(&app, &tmp, &kc, "serial", &serial, 1).await;
    outcome.merge(serial_outcome);
    // A spec listed `pass` that failed runs once more on its own: some
    // v1.20 specs are known upstream to flake on tight timers (the
    // NoExecuteTaintManager eviction waits, kubernetes/kubernetes#94931),
    // and this machine runs the rest of the test suite beside them. A spec
    // that passes the second time is reported as flaked, by name, with its
    // first failure; one that fails twice fails the run.
    let again = outcome.to_rerun(&list, RERUN_LIMIT);
    if !again.is_empty() {
        let again: Vec<&str> = again.iter().map(String::as_str).collect();
        let (_, rerun) = run_phase(&app, &tmp, &kc, "rerun", &again, 1).await;
        outcome.rerun(&rerun);
    }
    let mut problems = verdict(&list, &outcome);

    let mut slowest: Vec<(&String, &f64)> = outcome.seconds.iter().collect();
    slowest.sort_by(|a, b| b.1.total_cmp(a.1));
    eprintln!(
        "conformance: {} specs in the suite; listed pass {}, fail {}, skip {}; ran {} ({} side by side in {t_parallel:.0} s, {} serial in {t_serial:.0} s): {} passed, {} failed",
        outcome.suite.len(),
        list.count(|e| *e == Expect::Pass),
        list.count(|e| matches!(e, Expect::Fail(_))),
        list.count(|e| matches!(e, Expect::Skip(_))),
        parallel.len() + serial.len(),
        parallel.len(),
        serial.len(),
        outcome.passed.len(),
        outcome.failed.len(),
    );
    for (spec, secs) in slowest.iter().take(8) {
        eprintln!("  {secs:>6.1} s  {spec}");
    }
    for (spec, msg) in &outcome.failed {
        eprintln!("  failed: {spec}: {msg}");
    }
    for (spec, msg) in &outcome.flaked {
        eprintln!("  FLAKED (failed, then passed when rerun): {spec}: {msg}");
    }

    // A fresh API token: the suite outlasts the harness's 10-minute tokens.
    let owner = app.token("acme", Role::Admin);
    // The control plane took the whole suite without a crash.
    let restarts: Vec<String> = sqlx::query_scalar(
        "SELECT message FROM events WHERE reason = 'ControlPlaneComponentRestarted' ORDER BY created_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let cluster: Value = app
        .call(
            Method::GET,
            &format!("/v1/clusters/{name}"),
            Some(&owner),
            None,
            &[],
        )
        .await
        .body;

    // Kubeforge's own view: no component restarted, the cluster ready.
    problems.extend(
        restarts
            .iter()
            .map(|m| format!("a control-plane component restarted during the suite: {m}")),
    );
    if cluster["phase"] != "ready" {
        problems.push(format!(
            "the cluster is {} after the suite: {}",
            cluster["phase"], cluster["conditions"]
        ));
    }
    assert!(
        problems.is_empty(),
        "the conformance run does not hold (tests/conformance/specs-1.20.txt):\n  {}\n(logs and JUnit reports in {})",
        problems.join("\n  "),
        tmp.display()
    );

    // Nothing is left behind.
    delete_cluster(&app, &owner, &name, Duration::from_secs(180)).await;
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM machines WHERE deleted_at IS NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(live, 0);
    drop(bridge);
    let _ = std::fs::remove_dir_all(&tmp);
}
