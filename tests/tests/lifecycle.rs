//! The cluster reconciler driven through the API: machines follow the
//! spec (create, scale, add and delete pools, delete the cluster), the
//! ledger and the provider agree after crashes and losses, and failures
//! end in typed operation errors.

use axum::http::{Method, StatusCode};
use kubeforge::context::Role;
use kubeforge::engine::jobs::EngineConfig;
use kubeforge_tests::{cluster_body, test_engine_config, Resp, TestApp};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;
use uuid::Uuid;

const TENANT: &str = "acme";

struct T {
    app: TestApp,
    token: String,
}

impl T {
    async fn new() -> T {
        let app = TestApp::new().await;
        let token = app.token(TENANT, Role::Admin);
        T { app, token }
    }

    async fn req(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.app
            .call(method, path, Some(&self.token), body, &[])
            .await
    }

    async fn get(&self, path: &str) -> Resp {
        let r = self.req(Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text);
        r
    }

    /// Creates a cluster; returns (cluster id, create operation id).
    async fn create(&self, body: Value) -> (Uuid, String) {
        let r = self.req(Method::POST, "/v1/clusters", Some(body)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        (
            Uuid::parse_str(r.body["cluster"]["id"].as_str().unwrap()).unwrap(),
            r.body["operation"]["id"].as_str().unwrap().to_string(),
        )
    }

    async fn machines(&self, cluster: &str) -> Vec<Value> {
        self.get(&format!("/v1/clusters/{cluster}/machines"))
            .await
            .body["items"]
            .as_array()
            .expect("machine list")
            .clone()
    }

    async fn operation(&self, id: &str) -> Value {
        self.get(&format!("/v1/operations/{id}")).await.body
    }

    async fn cluster(&self, cluster: &str) -> Value {
        self.get(&format!("/v1/clusters/{cluster}")).await.body
    }

    async fn event_reasons(&self, cluster: &str) -> Vec<String> {
        let r = self
            .get(&format!("/v1/clusters/{cluster}/events?limit=200"))
            .await;
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .collect()
    }

    /// Runs reconcile passes (each due at once) until every machine of
    /// `cluster` is running; panics after `max` passes.
    async fn passes_until_running(&self, cluster: &str, max: usize) {
        for _ in 0..max {
            sqlx::query("UPDATE jobs SET run_after = now() WHERE state = 'queued'")
                .execute(&self.app.pool)
                .await
                .unwrap();
            self.app.run_jobs().await;
            if self
                .machines(cluster)
                .await
                .iter()
                .all(|m| m["state"] == "running")
            {
                return;
            }
        }
        panic!("{cluster}: machines not running after {max} passes");
    }

    /// Ids of the machines the provider double holds for `cluster`.
    fn provider_ids(&self, cluster: Uuid) -> BTreeSet<Uuid> {
        self.app
            .provider
            .machines()
            .iter()
            .filter(|m| m.cluster_id == cluster)
            .map(|m| m.id)
            .collect()
    }
}

fn ids(machines: &[Value]) -> BTreeSet<Uuid> {
    machines
        .iter()
        .map(|m| Uuid::parse_str(m["id"].as_str().unwrap()).unwrap())
        .collect()
}

fn in_pool<'a>(machines: &'a [Value], pool: &Value) -> Vec<&'a Value> {
    machines
        .iter()
        .filter(|m| m["node_pool"] == *pool)
        .collect()
}

fn condition<'a>(c: &'a Value, type_: &str) -> &'a Value {
    c["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == type_)
        .unwrap_or_else(|| panic!("no condition {type_} in {c}"))
}

fn step<'a>(op: &'a Value, name: &str) -> &'a Value {
    op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {op}"))
}

fn body_with(name: &str, cp_replicas: u32, pool_size: u32) -> Value {
    let mut b = cluster_body(name);
    b["control_plane"]["replicas"] = json!(cp_replicas);
    b["node_pools"][0]["size"] = json!(pool_size);
    b
}

#[tokio::test]
async fn create_brings_up_every_machine_and_waits_for_bootstrap() {
    let t = T::new().await;
    let (id, op) = t.create(cluster_body("web")).await;
    t.app.settle().await;

    let ms = t.machines("web").await;
    assert_eq!(ms.len(), 3, "{ms:?}");
    assert!(ms.iter().all(|m| m["state"] == "running"), "{ms:?}");
    assert!(ms.iter().all(|m| m["provider_id"].is_string()));
    assert!(ms.iter().all(|m| m["address"].is_string()));
    assert_eq!(
        ms.iter().filter(|m| m["role"] == "control_plane").count(),
        1
    );
    assert_eq!(ms.iter().filter(|m| m["role"] == "worker").count(), 2);
    assert_eq!(
        t.provider_ids(id),
        ids(&ms),
        "provider holds exactly the ledger"
    );
    assert_eq!(t.app.provider.machines().len(), 3);
    assert_eq!(t.app.provider.create_calls.load(Ordering::SeqCst), 3);

    let c = t.cluster("web").await;
    assert_eq!(c["phase"], "provisioning");
    assert_eq!(condition(&c, "MachinesReady")["status"], "True", "{c}");
    let cp = condition(&c, "ControlPlaneReady");
    assert_eq!(cp["status"], "False");
    assert_eq!(cp["reason"], "BootstrapUnavailable");
    assert_eq!(condition(&c, "Ready")["status"], "False");

    let o = t.operation(&op).await;
    assert_eq!(o["type"], "cluster_create");
    assert_eq!(o["state"], "running", "waits on the control plane: {o}");
    assert!(o["started_at"].is_string());
    let s = step(&o, "machines");
    assert_eq!(s["state"], "succeeded", "{o}");
    assert!(
        s["started_at"].is_string() && s["finished_at"].is_string(),
        "{s}"
    );
    assert!(s["error"].is_null());
    assert_eq!(step(&o, "control_plane")["state"], "pending");
    // Each pool the cluster was created with is a step of its creation,
    // after the fixed ones; here its machines run but no node can join.
    let names: Vec<&str> = o["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["machines", "control_plane", "node_pool/default"]);
    let s = step(&o, "node_pool/default");
    assert_eq!(s["state"], "running", "{o}");
    assert_eq!(
        s["message"],
        "2 of 2 machines running; nodes not joined: this service has no machine access"
    );

    // Pool status follows its machines.
    let p = t.get("/v1/clusters/web/node-pools/default").await.body;
    assert_eq!(p["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(condition(&p, "MachinesReady")["status"], "True", "{p}");

    // Events, newest first.
    let ev = t.get("/v1/clusters/web/events?limit=200").await.body;
    let items = ev["items"].as_array().unwrap();
    let event_ids: Vec<i64> = items.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        event_ids.windows(2).all(|w| w[0] > w[1]),
        "newest first: {event_ids:?}"
    );
    let reasons: Vec<&str> = items
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "MachineRunning").count(),
        3,
        "{reasons:?}"
    );
    assert_eq!(reasons.last(), Some(&"CreateRequested"));

    // Reconciling a converged cluster changes nothing.
    t.app.settle().await;
    assert_eq!(ids(&t.machines("web").await), ids(&ms));
    assert_eq!(t.app.provider.create_calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn three_control_planes_get_fixed_names() {
    let t = T::new().await;
    let (id, _) = t.create(body_with("ha", 3, 1)).await;
    t.app.settle().await;
    let ms = t.machines("ha").await;
    let mut cp: Vec<&str> = ms
        .iter()
        .filter(|m| m["role"] == "control_plane")
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    cp.sort_unstable();
    assert_eq!(cp, ["ha-cp-0", "ha-cp-1", "ha-cp-2"]);
    // Three members get a load-balancer machine in front of them.
    let lb: Vec<&str> = ms
        .iter()
        .filter(|m| m["role"] == "load_balancer")
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(lb, ["ha-lb"]);
    assert!(ms
        .iter()
        .all(|m| m["node_pool"].is_null() == (m["role"] != "worker")));
    assert_eq!(ms.len(), 5);
    assert!(ms.iter().all(|m| m["state"] == "running"));
    assert_eq!(t.provider_ids(id), ids(&ms));
}

#[tokio::test]
async fn scaling_a_pool_up_and_down_follows_the_spec() {
    let t = T::new().await;
    let (id, _) = t.create(cluster_body("web")).await;
    t.app.settle().await;
    let pool = t.get("/v1/clusters/web/node-pools/default").await.body["id"].clone();

    for (size, expected_events) in [(4usize, "MachineRunning"), (1, "MachineDeleted")] {
        let r = t
            .req(
                Method::PATCH,
                "/v1/clusters/web/node-pools/default",
                Some(json!({ "size": size })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let op = r.body["operation"]["id"].as_str().unwrap().to_string();
        assert_eq!(r.body["operation"]["type"], "node_pool_update");
        t.app.settle().await;

        let ms = t.machines("web").await;
        let workers = in_pool(&ms, &pool);
        assert_eq!(workers.len(), size, "pool size {size}: {ms:?}");
        assert!(ms.iter().all(|m| m["state"] == "running"), "{ms:?}");
        assert_eq!(ms.len(), size + 1);
        assert_eq!(t.provider_ids(id), ids(&ms), "provider follows the ledger");

        let o = t.operation(&op).await;
        assert_eq!(o["state"], "succeeded", "{o}");
        assert_eq!(step(&o, "machines")["state"], "succeeded");
        assert!(o["error"].is_null());

        let p = t.get("/v1/clusters/web/node-pools/default").await.body;
        assert_eq!(p["size"], size);
        assert_eq!(p["nodes"].as_array().unwrap().len(), size);
        assert_eq!(condition(&p, "MachinesReady")["status"], "True");
        assert!(t
            .event_reasons("web")
            .await
            .contains(&expected_events.to_string()));
    }
    // Scale-down removed three machines from the provider; the control
    // plane was never touched.
    assert_eq!(t.app.provider.machines().len(), 2);
    let deleted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM machines WHERE cluster_id = $1 AND state = 'deleted'
         AND deleted_at IS NOT NULL",
    )
    .bind(id)
    .fetch_one(&t.app.pool)
    .await
    .unwrap();
    assert_eq!(deleted, 3);
    let ms = t.machines("web").await;
    assert_eq!(
        ms.iter()
            .filter(|m| m["role"] == "control_plane")
            .map(|m| m["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["web-cp-0"]
    );
}

#[tokio::test]
async fn a_pool_added_to_a_cluster_then_deleted() {
    let t = T::new().await;
    let (id, _) = t.create(cluster_body("web")).await;
    t.app.settle().await;

    let r = t
        .req(
            Method::POST,
            "/v1/clusters/web/node-pools",
            Some(json!({"name": "batch", "machine_type": "small", "size": 2})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let pool = r.body["node_pool"]["id"].clone();
    let create_op = r.body["operation"]["id"].as_str().unwrap().to_string();
    t.app.settle().await;

    let o = t.operation(&create_op).await;
    assert_eq!(o["type"], "node_pool_create");
    assert_eq!(o["state"], "succeeded", "{o}");
    let ms = t.machines("web").await;
    let batch = in_pool(&ms, &pool);
    assert_eq!(batch.len(), 2);
    assert!(batch.iter().all(|m| m["state"] == "running"));
    assert!(batch
        .iter()
        .all(|m| m["name"].as_str().unwrap().starts_with("web-batch-")));
    let batch_ids = ids(&batch.into_iter().cloned().collect::<Vec<_>>());
    assert_eq!(ms.len(), 5);
    assert_eq!(t.provider_ids(id), ids(&ms));

    let r = t
        .req(Method::DELETE, "/v1/clusters/web/node-pools/batch", None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let del_op = r.body["operation"]["id"].as_str().unwrap().to_string();
    t.app.settle().await;

    let o = t.operation(&del_op).await;
    assert_eq!(o["type"], "node_pool_delete");
    assert_eq!(o["state"], "succeeded", "{o}");
    assert!(o["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "succeeded"));
    let ms = t.machines("web").await;
    assert_eq!(ms.len(), 3, "{ms:?}");
    assert!(in_pool(&ms, &pool).is_empty());
    let held = t.provider_ids(id);
    assert!(
        held.is_disjoint(&batch_ids),
        "pool machines left the provider"
    );
    assert_eq!(held, ids(&ms));
    let r = t
        .req(Method::GET, "/v1/clusters/web/node-pools/batch", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = t
        .req(
            Method::GET,
            &format!("/v1/clusters/web/node-pools/{}", pool.as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let pools = t.get("/v1/clusters/web/node-pools").await.body;
    assert_eq!(pools["items"].as_array().unwrap().len(), 1, "{pools}");
    assert!(t
        .event_reasons("web")
        .await
        .contains(&"NodePoolDeleted".to_string()));
    // The other pool is untouched.
    let p = t.get("/v1/clusters/web/node-pools/default").await.body;
    assert_eq!(p["nodes"].as_array().unwrap().len(), 2);

    // The name can be used again.
    let r = t
        .req(
            Method::POST,
            "/v1/clusters/web/node-pools",
            Some(json!({"name": "batch", "size": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_ne!(r.body["node_pool"]["id"], pool);
    t.app.settle().await;
    assert_eq!(t.machines("web").await.len(), 4);
}

#[tokio::test]
async fn deleting_a_cluster_removes_everything_including_strays() {
    let t = T::new().await;
    let (id, _) = t.create(cluster_body("web")).await;
    t.app.settle().await;
    assert_eq!(t.provider_ids(id).len(), 3);
    let stray = t.app.provider.plant_stray(id);
    // Another cluster's machine must survive the sweep.
    let (other, _) = t.create(cluster_body("other")).await;
    t.app.settle().await;
    let others = t.provider_ids(other);
    assert_eq!(others.len(), 3);

    let r = t.req(Method::DELETE, "/v1/clusters/web", None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let op = r.body["operation"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["operation"]["type"], "cluster_delete");
    t.app.settle().await;

    assert!(
        t.provider_ids(id).is_empty(),
        "provider still holds machines"
    );
    assert!(!t.app.provider.machines().iter().any(|m| m.id == stray));
    assert_eq!(
        t.provider_ids(other),
        others,
        "the other cluster is untouched"
    );
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM machines WHERE cluster_id = $1
         AND (state <> 'deleted' OR deleted_at IS NULL)",
    )
    .bind(id)
    .fetch_one(&t.app.pool)
    .await
    .unwrap();
    assert_eq!(live, 0, "every ledger row is deleted");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM machines WHERE cluster_id = $1")
        .bind(id)
        .fetch_one(&t.app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 3, "the ledger keeps its history");

    let r = t.req(Method::GET, "/v1/clusters/web", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = t
        .req(Method::GET, &format!("/v1/clusters/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    let o = t.operation(&op).await;
    assert_eq!(o["state"], "succeeded", "{o}");
    let steps = o["steps"].as_array().unwrap();
    assert_eq!(
        steps
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "delete_machines",
            "sweep_provider",
            "remove_secrets",
            "finalize"
        ]
    );
    for s in steps {
        assert_eq!(s["state"], "succeeded", "{s}");
        assert!(
            s["started_at"].is_string() && s["finished_at"].is_string(),
            "{s}"
        );
    }

    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM events WHERE cluster_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&t.app.pool)
            .await
            .unwrap();
    assert!(
        reasons.contains(&"StrayMachinesSwept".to_string()),
        "{reasons:?}"
    );
    assert_eq!(reasons.last().map(String::as_str), Some("Deleted"));
    // The name is free again.
    let (again, _) = t.create(cluster_body("web")).await;
    assert_ne!(again, id);
}

#[tokio::test]
async fn a_crash_between_ledger_and_provider_makes_no_duplicates() {
    let t = T::new().await;
    // The first provider call fails after the ledger rows were committed.
    t.app.provider.fail_creates.store(1, Ordering::SeqCst);
    let (id, op) = t.create(cluster_body("web")).await;
    // One attempt only: an engine whose retry is not due for a while.
    let one_shot = kubeforge::server::build_engine(
        &t.app.app,
        EngineConfig {
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(60),
            ..test_engine_config()
        },
    );
    assert_eq!(one_shot.run_until_idle().await.unwrap(), 1);

    let ledger: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, state FROM machines WHERE cluster_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&t.app.pool)
            .await
            .unwrap();
    assert_eq!(
        ledger.len(),
        3,
        "intent is recorded before the provider call"
    );
    assert!(ledger.iter().all(|(_, s)| s == "pending"), "{ledger:?}");
    assert!(t.app.provider.machines().is_empty());
    assert_eq!(t.app.provider.create_calls.load(Ordering::SeqCst), 1);
    let o = t.operation(&op).await;
    let s = step(&o, "machines");
    assert_eq!(s["state"], "running");
    assert_eq!(s["error"]["code"], "provider_error", "{o}");
    assert_eq!(s["error"]["retryable"], true);

    t.app.settle().await;
    let ms = t.machines("web").await;
    let pending_ids: BTreeSet<Uuid> = ledger.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids(&ms), pending_ids, "the retry reused the ledger ids");
    assert!(ms.iter().all(|m| m["state"] == "running"));
    assert_eq!(t.provider_ids(id), pending_ids, "no duplicate machines");
    assert_eq!(t.app.provider.machines().len(), ms.len());
    // One failed call, then one per machine.
    assert_eq!(t.app.provider.create_calls.load(Ordering::SeqCst), 4);
    let o = t.operation(&op).await;
    assert_eq!(step(&o, "machines")["state"], "succeeded", "{o}");
    assert!(step(&o, "machines")["error"].is_null(), "{o}");

    // A crash after the provider made the machine but before the ledger
    // said so: the row is still pending; the retry finds the same machine.
    let victim = *pending_ids.iter().next().unwrap();
    sqlx::query(
        "UPDATE machines SET state = 'pending', provider_id = NULL, address = NULL WHERE id = $1",
    )
    .bind(victim)
    .execute(&t.app.pool)
    .await
    .unwrap();
    t.app.settle().await;
    assert_eq!(t.app.provider.create_calls.load(Ordering::SeqCst), 5);
    let ms = t.machines("web").await;
    assert_eq!(ids(&ms), pending_ids);
    assert!(ms.iter().all(|m| m["state"] == "running"), "{ms:?}");
    assert_eq!(t.provider_ids(id), pending_ids, "still no duplicates");
}

#[tokio::test]
async fn a_lost_machine_is_replaced() {
    let t = T::new().await;
    let (id, _) = t.create(cluster_body("web")).await;
    t.app.settle().await;
    let ms = t.machines("web").await;
    let worker = ms.iter().find(|m| m["role"] == "worker").unwrap();
    let lost = Uuid::parse_str(worker["id"].as_str().unwrap()).unwrap();
    let pool = worker["node_pool"].clone();
    let cp = ms.iter().find(|m| m["role"] == "control_plane").unwrap();
    let lost_cp = Uuid::parse_str(cp["id"].as_str().unwrap()).unwrap();

    t.app.provider.lose(lost);
    t.app.provider.lose(lost_cp);
    t.app.settle().await;

    let after = t.machines("web").await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().all(|m| m["state"] == "running"));
    let after_ids = ids(&after);
    assert!(!after_ids.contains(&lost) && !after_ids.contains(&lost_cp));
    assert_eq!(in_pool(&after, &pool).len(), 2);
    let new_cp = after.iter().find(|m| m["role"] == "control_plane").unwrap();
    assert_eq!(
        new_cp["name"], "web-cp-0",
        "the control plane keeps its name"
    );
    assert_eq!(t.provider_ids(id), after_ids);
    let reasons = t.event_reasons("web").await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "MachineLost").count(),
        2,
        "{reasons:?}"
    );
    let c = t.cluster("web").await;
    assert_eq!(condition(&c, "MachinesReady")["status"], "True");
}

#[tokio::test]
async fn a_permanent_provider_failure_fails_the_cluster() {
    let t = T::new().await;
    t.app
        .provider
        .fail_permanently
        .store(true, Ordering::SeqCst);
    let (_, op) = t.create(cluster_body("web")).await;
    t.app.settle().await;

    let c = t.cluster("web").await;
    assert_eq!(c["phase"], "failed", "{c}");
    let mr = condition(&c, "MachinesReady");
    assert_eq!(mr["status"], "False");
    assert_eq!(mr["reason"], "ProviderRejected");
    let o = t.operation(&op).await;
    assert_eq!(o["state"], "failed", "{o}");
    assert_eq!(o["error"]["code"], "provider_rejected", "{o}");
    assert_eq!(o["error"]["retryable"], false);
    assert!(o["finished_at"].is_string());
    assert_eq!(step(&o, "machines")["state"], "failed");
    assert!(t
        .event_reasons("web")
        .await
        .contains(&"ProviderRejected".to_string()));
    // Permanent: the job is done, not retried forever.
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state <> 'dead'")
        .fetch_one(&t.app.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    assert!(t.app.provider.machines().is_empty());
}

#[tokio::test]
async fn a_kind_this_service_does_not_run_is_refused_at_create() {
    let t = T::new().await;
    for kind in [
        json!({"kind": "ssh"}),
        json!({"kind": "aws", "region": "eu-west-1", "subnet_id": "subnet-1", "ami": "ami-1"}),
    ] {
        let mut body = cluster_body("byo");
        body["provider"] = kind.clone();
        let r = t.req(Method::POST, "/v1/clusters", Some(body)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert_eq!(r.body["field"], "provider.kind", "{}", r.text);
        let detail = r.body["detail"].as_str().unwrap();
        assert!(
            detail.contains(kind["kind"].as_str().unwrap()) && detail.contains("it runs: lab"),
            "{detail}"
        );
    }
    for table in ["clusters", "node_pools", "operations", "events", "jobs"] {
        assert_eq!(t.app.count(table).await, 0, "nothing written to {table}");
    }
}

#[tokio::test]
async fn the_lab_serves_only_the_tenants_the_platform_trusts() {
    let app = TestApp::with_config(kubeforge::state::Config {
        lab_tenants: kubeforge::state::LabTenants::parse("acme").unwrap(),
        ..Default::default()
    })
    .await;
    let stranger = app.token("stranger", Role::Admin);
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&stranger),
            Some(cluster_body("web")),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["field"], "provider.kind", "{}", r.text);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("tenant stranger is not one of them"),
        "{}",
        r.text
    );
    for table in ["clusters", "operations", "jobs"] {
        assert_eq!(app.count(table).await, 0, "nothing written to {table}");
    }
    let trusted = app.token("acme", Role::Admin);
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&trusted),
            Some(cluster_body("web")),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
}

#[tokio::test]
async fn a_replica_without_the_provider_claims_none_of_its_jobs() {
    let t = T::new().await;
    let (id, _) = t.create(cluster_body("web")).await;
    let provider: Option<String> = sqlx::query_scalar("SELECT provider FROM jobs")
        .fetch_one(&t.app.pool)
        .await
        .unwrap();
    assert_eq!(provider.as_deref(), Some("lab"));

    let bare_engine = bare_replica(&t);
    assert_eq!(bare_engine.run_until_idle().await.unwrap(), 0);
    let state: String = sqlx::query_scalar("SELECT state FROM jobs")
        .fetch_one(&t.app.pool)
        .await
        .unwrap();
    assert_eq!(state, "queued", "left for a replica that runs lab");
    assert_eq!(t.app.provider.create_calls.load(Ordering::SeqCst), 0);
    let c = t.cluster("web").await;
    assert_eq!(c["phase"], "provisioning", "{c}");

    // The replica that runs it takes the job.
    t.app.settle().await;
    let c = t.cluster("web").await;
    assert_eq!(condition(&c, "MachinesReady")["status"], "True", "{c}");
    assert_eq!(t.provider_ids(id).len(), 3);
}

/// A replica over the same database that runs no provider at all.
fn bare_replica(t: &T) -> kubeforge::engine::jobs::Engine {
    let bare = kubeforge::server::build_app(
        t.app.pool.clone(),
        kubeforge::auth::AuthKeys::from_secret(&[7u8; 32]).unwrap(),
        kubeforge::crypto::SecretBox::new(&[9u8; 32]).unwrap(),
        kubeforge::providers::ProviderRegistry::default(),
        kubeforge::state::Config::default(),
        None,
    )
    .unwrap();
    kubeforge::server::build_engine(&bare, test_engine_config())
}

#[tokio::test]
async fn a_process_without_the_provider_hands_the_job_back_and_forgets_no_machine() {
    let t = T::new().await;
    let (id, create_op) = t.create(cluster_body("web")).await;
    // A job queued before jobs named their provider (any replica claims it).
    let unrouted = || async {
        sqlx::query("UPDATE jobs SET provider = NULL")
            .execute(&t.app.pool)
            .await
            .unwrap();
    };
    unrouted().await;
    let bare = bare_replica(&t);
    assert_eq!(bare.run_until_idle().await.unwrap(), 1);
    // The create is not failed; the job is named for its provider again.
    let o = t.operation(&create_op).await;
    assert_ne!(o["state"], "failed", "{o}");
    let (provider, state): (Option<String>, String) =
        sqlx::query_as("SELECT provider, state FROM jobs")
            .fetch_one(&t.app.pool)
            .await
            .unwrap();
    assert_eq!(
        (provider.as_deref(), state.as_str()),
        (Some("lab"), "queued")
    );
    assert_eq!(bare.run_until_idle().await.unwrap(), 0, "not claimed again");
    t.app.settle().await;
    assert_eq!(t.provider_ids(id).len(), 3);

    // Deleting: the bare replica marks nothing deleted.
    let r = t.req(Method::DELETE, "/v1/clusters/web", None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let del_op = r.body["operation"]["id"].as_str().unwrap().to_string();
    unrouted().await;
    assert_eq!(bare.run_until_idle().await.unwrap(), 1);
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM machines WHERE cluster_id = $1 AND state <> 'deleted'",
    )
    .bind(id)
    .fetch_one(&t.app.pool)
    .await
    .unwrap();
    assert_eq!(live, 3, "no machine forgotten");
    assert_eq!(t.app.provider.machines().len(), 3);
    assert_ne!(t.operation(&del_op).await["state"], "failed");

    // The replica that runs the provider deletes them for real.
    t.app.settle().await;
    assert_eq!(t.operation(&del_op).await["state"], "succeeded");
    assert!(t.app.provider.machines().is_empty());
}

#[tokio::test]
async fn a_machine_on_its_way_up_is_observed_not_created_again() {
    let t = T::new().await;
    t.app.provider.boot_polls.store(3, Ordering::SeqCst);
    let (id, _) = t.create(cluster_body("web")).await;

    // One pass: every machine accepted by the provider, none up yet.
    t.app.run_jobs().await;
    let ledger: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT state, provider_id FROM machines WHERE cluster_id = $1")
            .bind(id)
            .fetch_all(&t.app.pool)
            .await
            .unwrap();
    assert_eq!(ledger.len(), 3);
    for (state, provider_id) in &ledger {
        assert_eq!(state, "provisioning", "{ledger:?}");
        assert!(
            provider_id.as_deref().unwrap().starts_with("mem-"),
            "{ledger:?}"
        );
    }
    let nodes = t.get("/v1/clusters/web/node-pools/default").await.body;
    assert!(
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["machine_state"] == "provisioning"),
        "{nodes}"
    );

    t.passes_until_running("web", 10).await;
    let ms = t.machines("web").await;
    assert!(ms.iter().all(|m| m["state"] == "running"), "{ms:?}");
    assert_eq!(
        t.app.provider.create_calls.load(Ordering::SeqCst),
        3,
        "one create per machine, however many passes it took to come up"
    );
    assert!(t.app.provider.get_calls.load(Ordering::SeqCst) >= 9);
    let reasons = t.event_reasons("web").await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "MachineRunning").count(),
        3,
        "{reasons:?}"
    );
    let c = t.cluster("web").await;
    assert_eq!(condition(&c, "MachinesReady")["status"], "True", "{c}");
}

#[tokio::test]
async fn a_machine_that_ends_before_it_comes_up_is_asked_for_again() {
    let t = T::new().await;
    t.app.provider.boot_polls.store(2, Ordering::SeqCst);
    let (id, _) = t.create(cluster_body("web")).await;
    t.app.run_jobs().await;
    let victim: Uuid = sqlx::query_scalar(
        "SELECT id FROM machines WHERE cluster_id = $1 AND role = 'worker' ORDER BY name LIMIT 1",
    )
    .bind(id)
    .fetch_one(&t.app.pool)
    .await
    .unwrap();
    t.app.provider.lose(victim);

    t.passes_until_running("web", 10).await;
    let ms = t.machines("web").await;
    assert_eq!(ms.len(), 3);
    assert!(ms.iter().all(|m| m["state"] == "running"), "{ms:?}");
    assert!(
        ids(&ms).contains(&victim),
        "the same ledger row, asked for again"
    );
    assert_eq!(t.app.provider.create_calls.load(Ordering::SeqCst), 4);
    assert_eq!(t.provider_ids(id), ids(&ms));
    let reasons = t.event_reasons("web").await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "MachineLost").count(),
        1,
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_terminated_machine_is_replaced() {
    let t = T::new().await;
    let (_, _) = t.create(cluster_body("web")).await;
    t.app.settle().await;
    let ms = t.machines("web").await;
    let worker = ms.iter().find(|m| m["role"] == "worker").unwrap();
    let ended = Uuid::parse_str(worker["id"].as_str().unwrap()).unwrap();

    t.app.provider.terminate(ended);
    t.app.settle().await;
    let after = t.machines("web").await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(!ids(&after).contains(&ended));
    assert!(after.iter().all(|m| m["state"] == "running"));
    assert_eq!(
        t.event_reasons("web")
            .await
            .iter()
            .filter(|r| *r == "MachineLost")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_engine_picks_up_a_scale_request_made_mid_reconcile() {
    let t = T::new().await;
    // Slow creates, so the PATCH lands while the first reconcile runs.
    t.app.provider.create_delay_ms.store(300, Ordering::SeqCst);
    let (id, _) = t.create(cluster_body("web")).await;
    let engine = kubeforge::server::build_engine(&t.app.app, test_engine_config());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(engine.run(rx, Duration::from_secs(5)));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while t.app.provider.create_calls.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reconcile never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = t
        .req(
            Method::PATCH,
            "/v1/clusters/web/node-pools/default",
            Some(json!({"size": 4})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let op = r.body["operation"]["id"].as_str().unwrap().to_string();

    // Before the resync (kubeforge::engine::reconcile::RESYNC) could do it:
    // this is the rerun asked for while the first reconcile ran.
    let deadline =
        tokio::time::Instant::now() + kubeforge::engine::reconcile::RESYNC - Duration::from_secs(2);
    loop {
        let o = t.operation(&op).await;
        if o["state"] == "succeeded" {
            break;
        }
        assert_eq!(
            o["state"].as_str().map(|s| s != "failed"),
            Some(true),
            "{o}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "scale request not reconciled: {o}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("engine stopped")
        .unwrap()
        .unwrap();

    let ms = t.machines("web").await;
    assert_eq!(ms.len(), 5, "{ms:?}");
    assert!(ms.iter().all(|m| m["state"] == "running"));
    assert_eq!(t.provider_ids(id), ids(&ms));
    let jobs: Vec<(String, bool)> = sqlx::query_as("SELECT state, rerun FROM jobs")
        .fetch_all(&t.app.pool)
        .await
        .unwrap();
    assert_eq!(
        jobs,
        vec![("queued".to_string(), false)],
        "one job, resyncing"
    );
}

/// A pool with nothing to run its machines on (no free host matching it)
/// waits, saying so on the pool, the cluster and the creation's step,
/// without failing and without holding up the rest of the cluster; when
/// capacity comes, it converges.
#[tokio::test]
async fn a_pool_without_capacity_waits_while_the_rest_of_the_cluster_goes_on() {
    let t = T::new().await;
    t.app.provider.set_worker_slots("gpu", 1);
    let mut body = cluster_body("mixed");
    body["node_pools"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "gpu", "machine_type": "small", "size": 2}));
    let (_, create_op) = t.create(body).await;
    for _ in 0..6 {
        sqlx::query("UPDATE jobs SET run_after = now() WHERE state = 'queued'")
            .execute(&t.app.pool)
            .await
            .unwrap();
        t.app.run_jobs().await;
    }

    let ms = t.machines("mixed").await;
    let running = |pool: &str| {
        ms.iter()
            .filter(|m| m["name"].as_str().unwrap().starts_with(pool) && m["state"] == "running")
            .count()
    };
    assert_eq!(running("mixed-cp-"), 1, "{ms:?}");
    assert_eq!(running("mixed-default-"), 2, "{ms:?}");
    assert_eq!(running("mixed-gpu-"), 1, "{ms:?}");
    let waiting: Vec<&Value> = ms
        .iter()
        .filter(|m| {
            m["name"].as_str().unwrap().starts_with("mixed-gpu-") && m["state"] == "pending"
        })
        .collect();
    assert_eq!(waiting.len(), 1, "{ms:?}");

    let gpu = t.get("/v1/clusters/mixed/node-pools/gpu").await.body;
    let m = condition(&gpu, "MachinesReady");
    assert_eq!(m["reason"], "WaitingForCapacity", "{gpu}");
    assert_eq!(
        m["message"],
        "1 of 2 machines running; waiting for capacity: no free slot for pool gpu (test double)"
    );
    let default = t.get("/v1/clusters/mixed/node-pools/default").await.body;
    assert_eq!(condition(&default, "MachinesReady")["reason"], "AllRunning");
    let c = t.cluster("mixed").await;
    let m = condition(&c, "MachinesReady");
    assert_eq!(m["reason"], "WaitingForCapacity", "{c}");
    assert!(m["message"]
        .as_str()
        .unwrap()
        .starts_with("pool gpu: no free slot for pool gpu"));
    let o = t.operation(&create_op).await;
    assert_eq!(o["state"], "running", "waiting is not failing: {o}");
    let s = step(&o, "node_pool/gpu");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .starts_with("1 of 2 machines running (waiting for capacity: no free slot"),
        "{s}"
    );
    assert!(
        step(&o, "node_pool/default")["message"]
            .as_str()
            .unwrap()
            .starts_with("2 of 2 machines running;"),
        "{o}"
    );
    // Six passes, one event: the wait is told when it begins.
    let told = t
        .event_reasons("mixed")
        .await
        .iter()
        .filter(|r| *r == "WaitingForCapacity")
        .count();
    assert_eq!(told, 1);

    // A slot frees up: the pool converges and the creation completes.
    t.app.provider.set_worker_slots("gpu", 1);
    t.app.settle().await;
    t.passes_until_running("mixed", 5).await;
    t.app.settle().await;
    let gpu = t.get("/v1/clusters/mixed/node-pools/gpu").await.body;
    assert_eq!(
        condition(&gpu, "MachinesReady")["reason"],
        "AllRunning",
        "{gpu}"
    );
    // (Without machine access the test double's clusters never serve, so
    // the creation stays at its control-plane step; its pool steps say
    // what the pools did.)
    let o = t.operation(&create_op).await;
    assert!(
        step(&o, "node_pool/gpu")["message"]
            .as_str()
            .unwrap()
            .starts_with("2 of 2 machines running;"),
        "{o}"
    );
    let c = t.cluster("mixed").await;
    assert_eq!(condition(&c, "MachinesReady")["status"], "True", "{c}");
}

/// A host that lacks a worker prerequisite is a typed, named error on the
/// machine, on the operation's step and in the events, not a failed
/// operation: the machine asks again and gets another host.
#[tokio::test]
async fn a_host_lacking_a_prerequisite_is_named_on_the_machine_and_the_operation() {
    let t = T::new().await;
    let (_, create_op) = t.create(cluster_body("unfit")).await;
    // The control plane first; then the pool's next create meets an unfit host.
    t.app
        .provider
        .unfit_next("host 192.0.2.50 lacks containerd: install it");
    sqlx::query("UPDATE jobs SET run_after = now() WHERE state = 'queued'")
        .execute(&t.app.pool)
        .await
        .unwrap();
    t.app.run_jobs().await;

    let o = t.operation(&create_op).await;
    assert_eq!(o["state"], "running", "{o}");
    let s = step(&o, "node_pool/default");
    assert_eq!(s["error"]["code"], "host_prerequisites_missing", "{o}");
    assert!(
        s["error"]["message"]
            .as_str()
            .unwrap()
            .contains("host 192.0.2.50 lacks containerd"),
        "{s}"
    );
    let ms = t.machines("unfit").await;
    assert!(
        ms.iter().any(|m| m["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("lacks containerd"))),
        "{ms:?}"
    );
    assert!(t
        .event_reasons("unfit")
        .await
        .contains(&"HostPrerequisitesMissing".to_string()));

    // Another host: the pool converges, and the step's error is gone.
    t.passes_until_running("unfit", 5).await;
    t.app.settle().await;
    let o = t.operation(&create_op).await;
    let s = step(&o, "node_pool/default");
    assert_eq!(s["error"], Value::Null, "{o}");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .starts_with("2 of 2 machines running;"),
        "{s}"
    );
}
