//! A client generated from the served OpenAPI document, in another
//! language, drives the live server.
//!
//! openapi-python-client (PyPI, pinned in `scripts/python-requirements.txt`)
//! generates a typed Python package from `GET /v1/openapi.json` as served
//! on a loopback TCP port, with the engine running on the test-double
//! provider so operations progress. `tests/python/generated_client_flow.py`
//! then uses only that package's typed functions and models to create
//! clusters, read operations by id until done, list with filters one per
//! page, get, receive a 422 problem and delete; it prints a JSON summary,
//! checked here. The generator is run with `--fail-on-warning`: a document
//! it cannot fully turn into code fails the test, and so does any typed
//! call whose answer does not parse into the declared model.

use kubeforge::app::Config;
use kubeforge::context::Role;
use kubeforge_tests::{test_engine_config, TestApp};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

async fn run(cmd: &mut tokio::process::Command, what: &str, limit: Duration) -> String {
    let out = tokio::time::timeout(
        limit,
        cmd.kill_on_drop(true)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{what} finished within {limit:?}"))
    .unwrap_or_else(|e| panic!("{what} ran: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_drives_the_live_api() {
    let generator = kubeforge_tests::python::tool("openapi-python-client");
    let python = kubeforge_tests::python::tool("python");
    let app = TestApp::with_config(Config {
        rate_limits: kubeforge::ratelimit::RateLimits::UNLIMITED,
        ..Default::default()
    })
    .await;
    let token = app.token("sdk", Role::Admin);
    let (base, stop, server) =
        kubeforge_tests::cli::serve_on_loopback_joined(app.router.clone()).await;
    let engine = kubeforge::server::build_engine(&app.app, test_engine_config());
    let engine = tokio::spawn(engine.run(stop.subscribe(), Duration::from_secs(5)));

    // The document as served over HTTP, as a client's build would fetch it.
    let doc = reqwest::get(format!("{base}/v1/openapi.json"))
        .await
        .expect("GET /v1/openapi.json")
        .text()
        .await
        .expect("document");
    let work = std::env::temp_dir().join(format!("kubeforge-sdk-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work).unwrap();
    let doc_path = work.join("openapi.json");
    std::fs::write(&doc_path, &doc).unwrap();

    let gen_out = run(
        tokio::process::Command::new(&generator)
            .arg("generate")
            .arg("--path")
            .arg(&doc_path)
            .args(["--meta", "none", "--fail-on-warning"])
            .arg("--config")
            .arg(python_dir().join("openapi-client-config.yaml"))
            .arg("--output-path")
            .arg(work.join("kubeforge_client"))
            .env("NO_COLOR", "1"),
        "openapi-python-client generate",
        Duration::from_secs(120),
    )
    .await;
    println!("{gen_out}");
    // One module per operation of the document, under its tag.
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let mut expected = BTreeSet::new();
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            let tag = op["tags"][0].as_str().unwrap().replace('-', "_");
            let id = op["operationId"].as_str().unwrap();
            expected.insert(format!("{tag}/{id}.py"));
        }
    }
    for module in &expected {
        let path = work.join("kubeforge_client/api").join(module);
        assert!(path.is_file(), "the generator made no {}", path.display());
    }

    let flow = run(
        tokio::process::Command::new(&python)
            .arg(python_dir().join("generated_client_flow.py"))
            .arg(&base)
            .arg(&token)
            .arg(&work)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        "the generated client's flow",
        Duration::from_secs(180),
    )
    .await;
    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), engine).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let _ = std::fs::remove_dir_all(&work);

    let s: Value = serde_json::from_str(flow.trim().lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}):\n{flow}"));
    println!("{}", serde_json::to_string_pretty(&s).unwrap());

    // Create: the typed answer carries the cluster and its operation.
    let created = s["created"].as_object().unwrap();
    assert_eq!(created.len(), 4);
    for (name, c) in created {
        assert_eq!(c["cluster_name"], name.as_str(), "{c}");
        assert_eq!(c["operation_type"], "cluster_create", "{c}");
        assert_eq!(c["operation_cluster"], c["cluster_id"], "{c}");
        assert_eq!(c["phase"], "provisioning", "{c}");
    }
    // The server agrees with what the client read.
    let web_a = &created["web-a"];
    let r = app
        .call(
            axum::http::Method::GET,
            &format!("/v1/operations/{}", web_a["operation_id"].as_str().unwrap()),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["cluster"], web_a["cluster_id"]);

    let op = &s["create_operation"];
    assert_eq!(op["id"], web_a["operation_id"]);
    assert_eq!(op["type"], "cluster_create");
    assert_eq!(op["steps"]["machines"], "succeeded", "{op}");
    assert_eq!(op["started"], true, "{op}");

    let scale = &s["scale_operation"];
    assert_eq!(scale["type"], "node_pool_update", "{scale}");
    assert_eq!(scale["state"], "succeeded", "{scale}");
    assert_eq!(scale["pool_size"], 3, "{scale}");

    // Every web cluster exactly once, one per page, the data one never.
    let list = &s["list"];
    let names: Vec<&str> = list["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["web-a", "web-b", "web-c"], "{list}");
    assert!(list["pages"].as_u64().unwrap() >= 3, "{list}");

    let got = &s["get"];
    assert_eq!(got["id"], created["web-b"]["cluster_id"]);
    assert_eq!(got["name"], "web-b");
    assert_eq!(got["team"], "web");
    assert_eq!(got["pod_cidr"], "10.244.0.0/16");
    assert!(got["etag"].as_str().is_some_and(|e| !e.is_empty()), "{got}");
    assert_eq!(got["provider"], "LabProvider", "{got}");
    assert_eq!(got["provider_kind"], "lab", "{got}");

    let p = &s["problem"];
    assert_eq!(p["status"], 422, "{p}");
    assert_eq!(p["code"], "validation_failed", "{p}");
    assert_eq!(p["field"], "network.pod_cidr", "{p}");

    let del = &s["delete"];
    assert_eq!(del["type"], "cluster_delete", "{del}");
    assert_eq!(del["state"], "succeeded", "{del}");
    assert_eq!(del["then_get"]["status"], 404, "{del}");
}
