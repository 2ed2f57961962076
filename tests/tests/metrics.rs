//! `/metrics` after a cluster lifecycle on the test double: clusters by
//! phase, each pool's desired and Ready nodes, operation durations by type
//! and result, node join time (none joins on the test double: the lab
//! tests observe real joins), repairs and certificate expiry. The scrape
//! is read by Prometheus's own Python client parser
//! (`prometheus-client`, installed by `scripts/python-tools`), so a series
//! we render wrongly fails here rather than in a Prometheus server.

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge_tests::{cluster_body, TestApp};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// Parses the text with `prometheus_client.parser` and prints every sample
/// as `[name, labels, value]`, families' types beside.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1]).read()
out = {"types": {}, "samples": []}
for fam in text_string_to_metric_families(text):
    out["types"][fam.name] = fam.type
    for s in fam.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

struct Scrape {
    types: Value,
    samples: Vec<(String, serde_json::Map<String, Value>, f64)>,
}

impl Scrape {
    /// The value of the one sample `name` whose labels include `labels`.
    #[track_caller]
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name && labels.iter().all(|(k, v)| l.get(*k) == Some(&json!(v)))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0]
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples
            .iter()
            .any(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k) == Some(&json!(v))))
    }
}

async fn scrape(app: &TestApp) -> Scrape {
    let r = app.call(Method::GET, "/metrics", None, None, &[]).await;
    assert_eq!(r.status, 200);
    let ct = r.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let dir = std::env::temp_dir().join(format!("kf-metrics-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("scrape.txt");
    std::fs::write(&file, &r.text).unwrap();
    let out = tokio::process::Command::new(kubeforge_tests::python::tool("python"))
        .args(["-c", PARSE])
        .arg(&file)
        .output()
        .await
        .expect("python ran");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "the Prometheus parser refused the scrape: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        r.text
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s[0].as_str().unwrap().to_string(),
                s[1].as_object().unwrap().clone(),
                s[2].as_f64().unwrap(),
            )
        })
        .collect();
    Scrape {
        types: v["types"].clone(),
        samples,
    }
}

async fn cluster_id(app: &TestApp, token: &str, name: &str) -> (String, String) {
    let r = app
        .call(
            Method::GET,
            &format!("/v1/clusters/{name}"),
            Some(token),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = app
        .call(
            Method::GET,
            &format!("/v1/clusters/{name}/node-pools/default"),
            Some(token),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    (id, r.body["id"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn metrics_follow_a_cluster_lifecycle() {
    let app = TestApp::new().await;
    let token = app.token("acme", Role::Admin);
    let post = |body: Value| {
        let (app, token) = (&app, &token);
        async move {
            let r = app
                .call(Method::POST, "/v1/clusters", Some(token), Some(body), &[])
                .await;
            assert_eq!(r.status, 202, "{}", r.text);
        }
    };

    // Nothing yet: every phase is there at 0, no pool, no operation, the
    // join histogram empty, every repair reason at 0.
    let s = scrape(&app).await;
    for phase in ["provisioning", "ready", "degraded", "deleting", "failed"] {
        assert_eq!(s.value("kubeforge_clusters", &[("phase", phase)]), 0.0);
    }
    assert_eq!(s.types["kubeforge_clusters"], "gauge");
    assert!(!s.has("kubeforge_operation_duration_seconds_count", &[]));
    assert_eq!(s.types["kubeforge_node_join_seconds"], "histogram");
    assert_eq!(s.types["kubeforge_repairs"], "counter");
    assert!(!s.has("kubeforge_node_pool_desired_nodes", &[]));
    assert_eq!(s.value("kubeforge_node_join_seconds_count", &[]), 0.0);
    for reason in [
        "NodeNotReady",
        "NodeMissing",
        "MachineStopped",
        "MachineLost",
    ] {
        assert_eq!(
            s.value("kubeforge_repairs_total", &[("reason", reason)]),
            0.0
        );
    }

    // A cluster with a pool of 2: provisioning (no control plane on the
    // test double), its pool desired 2 and ready 0 (no node joins here).
    post(cluster_body("web")).await;
    app.settle().await;
    let (web, web_pool) = cluster_id(&app, &token, "web").await;
    let s = scrape(&app).await;
    assert_eq!(
        s.value("kubeforge_clusters", &[("phase", "provisioning")]),
        1.0
    );
    let pool = [("cluster", web.as_str()), ("pool", web_pool.as_str())];
    assert_eq!(s.value("kubeforge_node_pool_desired_nodes", &pool), 2.0);
    assert_eq!(s.value("kubeforge_node_pool_ready_nodes", &pool), 0.0);

    // Scaled to 3: the desired gauge follows.
    let r = app
        .call(
            Method::PATCH,
            "/v1/clusters/web/node-pools/default",
            Some(&token),
            Some(json!({"size": 3})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    app.settle().await;
    let s = scrape(&app).await;
    assert_eq!(s.value("kubeforge_node_pool_desired_nodes", &pool), 3.0);

    // Certificate expiry: the test double reads no PKI, so the expiries
    // the engine records after a control-plane pass are written the way it
    // writes them (the `certificates` the API shows), then scraped.
    let expiries = json!({
        "ca_expires_at": "2036-11-30T15:00:00Z",
        "etcd_ca_expires_at": "2036-11-30T15:00:01Z",
        "front_proxy_ca_expires_at": "2036-11-30T15:00:02Z",
        "apiserver_expires_at": "2027-12-02T15:00:00Z",
    });
    kubeforge::store::cluster::write_endpoint(&app.pool, web.parse().unwrap(), None, &expiries)
        .await
        .unwrap();
    let c = app
        .call(Method::GET, "/v1/clusters/web", Some(&token), None, &[])
        .await;
    assert_eq!(c.body["certificates"], expiries);
    let s = scrape(&app).await;
    assert_eq!(
        s.types["kubeforge_cluster_certificate_expiry_timestamp_seconds"],
        "gauge"
    );
    for (cert, at) in [
        ("ca", "2036-11-30T15:00:00Z"),
        ("etcd_ca", "2036-11-30T15:00:01Z"),
        ("front_proxy_ca", "2036-11-30T15:00:02Z"),
        ("apiserver", "2027-12-02T15:00:00Z"),
    ] {
        let want = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .timestamp() as f64;
        assert_eq!(
            s.value(
                "kubeforge_cluster_certificate_expiry_timestamp_seconds",
                &[("cluster", web.as_str()), ("certificate", cert)]
            ),
            want,
            "{cert}"
        );
    }

    // The provider loses a worker: it is made again, one repair.
    let r = app
        .call(
            Method::GET,
            "/v1/clusters/web/machines",
            Some(&token),
            None,
            &[],
        )
        .await;
    let worker = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "worker")
        .expect("a worker");
    app.provider
        .lose(uuid::Uuid::parse_str(worker["id"].as_str().unwrap()).unwrap());
    app.settle().await;
    let s = scrape(&app).await;
    assert_eq!(
        s.value("kubeforge_repairs_total", &[("reason", "MachineLost")]),
        1.0
    );

    // A cluster the provider refuses: its create fails, counted by type and
    // result with its duration.
    app.provider.fail_permanently.store(true, Ordering::SeqCst);
    post(cluster_body("bad")).await;
    app.settle().await;
    app.provider.fail_permanently.store(false, Ordering::SeqCst);
    let s = scrape(&app).await;
    assert_eq!(s.value("kubeforge_clusters", &[("phase", "failed")]), 1.0);
    assert_eq!(s.types["kubeforge_operation_duration_seconds"], "histogram");
    let create_failed = [("type", "cluster_create"), ("result", "failed")];
    assert_eq!(
        s.value("kubeforge_operation_duration_seconds_count", &create_failed),
        1.0
    );
    let took = s.value("kubeforge_operation_duration_seconds_sum", &create_failed);
    assert!((0.0..60.0).contains(&took), "{took}");
    assert_eq!(
        s.value(
            "kubeforge_operation_duration_seconds_bucket",
            &[
                ("type", "cluster_create"),
                ("result", "failed"),
                ("le", "+Inf")
            ]
        ),
        1.0
    );

    // Deleting `web`: its delete succeeds and is counted, and its series
    // (phase, pool, certificates) go.
    let r = app
        .call(Method::DELETE, "/v1/clusters/web", Some(&token), None, &[])
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    app.settle().await;
    let s = scrape(&app).await;
    assert_eq!(
        s.value(
            "kubeforge_operation_duration_seconds_count",
            &[("type", "cluster_delete"), ("result", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        s.value("kubeforge_clusters", &[("phase", "provisioning")]),
        0.0
    );
    assert_eq!(s.value("kubeforge_clusters", &[("phase", "failed")]), 1.0);
    assert!(!s.has("kubeforge_node_pool_desired_nodes", &pool[..1]));
    assert!(!s.has(
        "kubeforge_cluster_certificate_expiry_timestamp_seconds",
        &pool[..1]
    ));
}
