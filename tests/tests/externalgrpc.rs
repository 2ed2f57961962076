//! The cluster-autoscaler externalgrpc provider, every method and every
//! refusal, through a client generated from Kubeforge's `.proto` over
//! mTLS, on the in-memory provider TEST DOUBLE (no nodes join here: the
//! lab test `e2e_grpc` drives real nodes). A credential sees its own
//! cluster only, a certificate from another CA never reaches a call.

use axum::http::{Method, StatusCode};
use kubeforge::app::Config;
use kubeforge::context::Role;
use kubeforge::externalgrpc::proto::ca;
use kubeforge::externalgrpc::proto::ca::cloud_provider_client::CloudProviderClient;
use kubeforge::externalgrpc::proto::core_v1;
use kubeforge_tests::{grpc, Resp, TestApp};
use prost::Message;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

const TENANT: &str = "acme";
const OTHER: &str = "globex";

struct T {
    app: TestApp,
    token: String,
    _server: grpc::GrpcServer,
}

impl T {
    async fn new() -> T {
        let (listener, address) = grpc::bind().await;
        let app = TestApp::with_config(Config {
            grpc_address: Some(address),
            ..Config::default()
        })
        .await;
        let server = grpc::start(&app.app, listener).await;
        let token = app.token(TENANT, Role::Admin);
        T {
            app,
            token,
            _server: server,
        }
    }

    async fn req(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.app.call(method, path, Some(token), body, &[]).await
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let r = self.req(&self.token, method.clone(), path, body).await;
        assert!(r.status.is_success(), "{method} {path}: {}", r.text);
        r.body
    }

    async fn credentials(&self, token: &str, cluster: &str) -> Value {
        let r = self
            .req(
                token,
                Method::POST,
                &format!("/v1/clusters/{cluster}/autoscaler/credentials"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body
    }

    async fn pool_size(&self, pool: &str) -> u64 {
        self.ok(
            Method::GET,
            &format!("/v1/clusters/web/node-pools/{pool}"),
            None,
        )
        .await["size"]
            .as_u64()
            .unwrap()
    }

    /// The cluster's machines (API view), by pool name.
    async fn machines(&self, pool: &str) -> Vec<Value> {
        let pool_id = self
            .ok(
                Method::GET,
                &format!("/v1/clusters/web/node-pools/{pool}"),
                None,
            )
            .await["id"]
            .clone();
        self.ok(Method::GET, "/v1/clusters/web/machines", None)
            .await["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["node_pool"] == pool_id)
            .cloned()
            .collect()
    }

    async fn run_passes(&self, n: usize) {
        for _ in 0..n {
            sqlx::query("UPDATE jobs SET run_after = now() WHERE state = 'queued'")
                .execute(&self.app.pool)
                .await
                .unwrap();
            self.app.run_jobs().await;
        }
    }
}

fn web() -> Value {
    json!({
        "name": "web",
        "kubernetes_version": "1.20.2",
        "provider": {"kind": "lab"},
        "control_plane": {"replicas": 1, "machine_type": "small"},
        "network": {"pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12"},
        "node_pools": [
            {"name": "auto", "machine_type": "small", "size": 1,
             "autoscaling": {"min": 1, "max": 3},
             "labels": {"tier": "web"},
             "taints": [{"key": "dedicated", "value": "web", "effect": "NoSchedule"}]},
            {"name": "spare", "machine_type": "medium", "size": 0,
             "autoscaling": {"min": 0, "max": 2}},
            {"name": "fixed", "machine_type": "small", "size": 1}
        ]
    })
}

fn node(provider_id: &str) -> ca::ExternalGrpcNode {
    ca::ExternalGrpcNode {
        provider_id: provider_id.into(),
        ..Default::default()
    }
}

async fn increase(
    c: &mut CloudProviderClient<Channel>,
    id: &str,
    delta: i32,
) -> Result<(), tonic::Status> {
    c.node_group_increase_size(ca::NodeGroupIncreaseSizeRequest {
        delta,
        id: id.into(),
    })
    .await
    .map(|_| ())
}

async fn decrease(
    c: &mut CloudProviderClient<Channel>,
    id: &str,
    delta: i32,
) -> Result<(), tonic::Status> {
    c.node_group_decrease_target_size(ca::NodeGroupDecreaseTargetSizeRequest {
        delta,
        id: id.into(),
    })
    .await
    .map(|_| ())
}

async fn delete(
    c: &mut CloudProviderClient<Channel>,
    id: &str,
    provider_ids: &[&str],
) -> Result<(), tonic::Status> {
    c.node_group_delete_nodes(ca::NodeGroupDeleteNodesRequest {
        nodes: provider_ids.iter().map(|p| node(p)).collect(),
        id: id.into(),
    })
    .await
    .map(|_| ())
}

async fn target(c: &mut CloudProviderClient<Channel>, id: &str) -> Result<i32, tonic::Status> {
    c.node_group_target_size(ca::NodeGroupTargetSizeRequest { id: id.into() })
        .await
        .map(|r| r.into_inner().target_size)
}

async fn group_for(c: &mut CloudProviderClient<Channel>, provider_id: &str) -> String {
    c.node_group_for_node(ca::NodeGroupForNodeRequest {
        node: Some(node(provider_id)),
    })
    .await
    .expect("NodeGroupForNode")
    .into_inner()
    .node_group
    .expect("a group, maybe with an empty id")
    .id
}

#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, says: &str) {
    let s = r.expect_err("refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().contains(says),
        "{:?} does not say {says:?}",
        s.message()
    );
}

fn provider_ids(machines: &[Value]) -> Vec<String> {
    machines
        .iter()
        .map(|m| {
            m["node_provider_id"]
                .as_str()
                .expect("a worker's provider id")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn every_call_answers_for_its_own_cluster_and_refuses_with_a_reason() {
    let t = T::new().await;
    t.ok(Method::POST, "/v1/clusters", Some(web())).await;
    let creds = t.credentials(&t.token, "web").await;
    let mut c = grpc::client(&creds)
        .await
        .expect("connects with its credential");

    // The groups: the autoscaling pools, with their bounds.
    let groups = c
        .node_groups(ca::NodeGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .node_groups;
    let ids: Vec<(&str, i32, i32)> = groups
        .iter()
        .map(|g| (g.id.as_str(), g.min_size, g.max_size))
        .collect();
    assert_eq!(ids, [("auto", 1, 3), ("spare", 0, 2)], "{groups:?}");
    assert!(
        groups[0].debug.contains("cluster web"),
        "{}",
        groups[0].debug
    );
    assert_eq!(target(&mut c, "auto").await.unwrap(), 1);
    refused(
        target(&mut c, "fixed").await,
        Code::NotFound,
        "no autoscaling node pool \"fixed\"",
    );
    refused(target(&mut c, "nope").await, Code::NotFound, "nope");

    // Mode builtin: reads answer, writes are refused, naming the mode.
    refused(
        increase(&mut c, "auto", 1).await,
        Code::FailedPrecondition,
        "mode is builtin",
    );
    refused(
        decrease(&mut c, "auto", -1).await,
        Code::FailedPrecondition,
        "mode is builtin",
    );
    refused(
        delete(
            &mut c,
            "auto",
            &["kubeforge://01900000-0000-7000-8000-000000000001"],
        )
        .await,
        Code::FailedPrecondition,
        "mode is builtin",
    );
    assert_eq!(t.pool_size("auto").await, 1);
    t.ok(
        Method::PATCH,
        "/v1/clusters/web",
        Some(json!({"autoscaler": {"mode": "external"}})),
    )
    .await;

    // Increase: positive, within max, within the quota.
    refused(
        increase(&mut c, "auto", 0).await,
        Code::InvalidArgument,
        "positive",
    );
    refused(
        increase(&mut c, "auto", 3).await,
        Code::FailedPrecondition,
        "max 3",
    );
    increase(&mut c, "auto", 1).await.expect("1 to 2");
    assert_eq!(target(&mut c, "auto").await.unwrap(), 2);
    assert_eq!(t.pool_size("auto").await, 2);
    let ops = t.ok(Method::GET, "/v1/clusters/web/operations", None).await;
    assert!(
        ops.to_string().contains("node_pool_update"),
        "the increase is an operation: {ops}"
    );
    let events = t
        .ok(Method::GET, "/v1/clusters/web/events?limit=200", None)
        .await
        .to_string();
    assert!(
        events.contains("node pool auto scales up from 1 to 2: asked by cluster-autoscaler"),
        "{events}"
    );
    let admin = t.app.token("ops", Role::PlatformAdmin);
    let quota = format!("/v1/tenants/{TENANT}/quota");
    let r = t
        .req(
            &admin,
            Method::PUT,
            &quota,
            Some(json!({"max_clusters": 10, "max_nodes": 3, "max_cpus": 400})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    refused(
        increase(&mut c, "auto", 1).await,
        Code::ResourceExhausted,
        "node quota is 3",
    );
    // vCPUs at the sizes now: the small control plane (1), auto's two
    // small nodes and fixed's one: 4 of 4, so one more small node is over.
    let r = t
        .req(
            &admin,
            Method::PUT,
            &quota,
            Some(json!({"max_clusters": 10, "max_nodes": 50, "max_cpus": 4})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    refused(
        increase(&mut c, "auto", 1).await,
        Code::ResourceExhausted,
        "vCPU quota is 4 and it uses 4",
    );
    let r = t
        .req(
            &admin,
            Method::PUT,
            &quota,
            Some(json!({"max_clusters": 10, "max_nodes": 50, "max_cpus": 400})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);

    // The machines come up (the test double runs them); instances carry
    // the providerID the API shows.
    t.run_passes(8).await;
    let auto = t.machines("auto").await;
    assert_eq!(auto.len(), 2, "{auto:?}");
    let auto_ids = provider_ids(&auto);
    let instances = c
        .node_group_nodes(ca::NodeGroupNodesRequest { id: "auto".into() })
        .await
        .unwrap()
        .into_inner()
        .instances;
    let mut seen: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
    seen.sort();
    let mut want = auto_ids.clone();
    want.sort();
    assert_eq!(seen, want);
    for i in &instances {
        let s = i.status.as_ref().unwrap();
        assert_eq!(
            s.instance_state(),
            ca::instance_status::InstanceState::InstanceRunning,
            "{i:?}"
        );
        assert!(s.error_info.is_none(), "{i:?}");
    }

    // Which group a node is in: only this cluster's autoscaling workers.
    assert_eq!(group_for(&mut c, &auto_ids[0]).await, "auto");
    let fixed_ids = provider_ids(&t.machines("fixed").await);
    assert_eq!(group_for(&mut c, &fixed_ids[0]).await, "");
    let all = t.ok(Method::GET, "/v1/clusters/web/machines", None).await;
    let cp = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "control_plane")
        .expect("a control-plane machine")
        .clone();
    assert_eq!(cp["node_provider_id"], Value::Null, "{cp}");
    let cp_id = format!("kubeforge://{}", cp["id"].as_str().unwrap());
    assert_eq!(group_for(&mut c, &cp_id).await, "");
    assert_eq!(group_for(&mut c, "aws:///us-east-1a/i-0abc").await, "");
    assert_eq!(group_for(&mut c, "").await, "");

    // Decrease: only capacity that has not joined.
    refused(
        decrease(&mut c, "auto", 1).await,
        Code::InvalidArgument,
        "negative",
    );
    sqlx::query("UPDATE machines SET joined_at = now() WHERE role = 'worker'")
        .execute(&t.app.pool)
        .await
        .unwrap();
    refused(
        decrease(&mut c, "auto", -1).await,
        Code::FailedPrecondition,
        "joined node",
    );
    increase(&mut c, "auto", 1).await.expect("2 to 3");
    decrease(&mut c, "auto", -1)
        .await
        .expect("the one not yet joined is asked back");
    assert_eq!(t.pool_size("auto").await, 2);

    // Delete: named nodes of this pool, drained, the size lowered.
    refused(
        delete(&mut c, "auto", &[]).await,
        Code::InvalidArgument,
        "no nodes",
    );
    refused(
        delete(&mut c, "auto", &["i-0abc"]).await,
        Code::InvalidArgument,
        "not a Kubeforge",
    );
    refused(
        delete(&mut c, "auto", &[&fixed_ids[0]]).await,
        Code::FailedPrecondition,
        "belongs to node pool fixed",
    );
    refused(
        delete(&mut c, "spare", &[&auto_ids[0]]).await,
        Code::FailedPrecondition,
        "belongs to node pool auto",
    );
    refused(
        delete(&mut c, "auto", &[&cp_id]).await,
        Code::FailedPrecondition,
        "control-plane",
    );
    refused(
        delete(&mut c, "auto", &[&auto_ids[0], &auto_ids[1]]).await,
        Code::FailedPrecondition,
        "min 1",
    );
    delete(&mut c, "auto", &[&auto_ids[0]])
        .await
        .expect("one node");
    assert_eq!(t.pool_size("auto").await, 1);
    let gone = t
        .machines("auto")
        .await
        .into_iter()
        .find(|m| m["node_provider_id"] == auto_ids[0].as_str())
        .expect("still listed while it drains");
    assert_eq!(gone["state"], "draining", "{gone}");
    // Asked again (a retry): nothing more is removed.
    delete(&mut c, "auto", &[&auto_ids[0]])
        .await
        .expect("idempotent");
    assert_eq!(t.pool_size("auto").await, 1);
    let leaving = c
        .node_group_nodes(ca::NodeGroupNodesRequest { id: "auto".into() })
        .await
        .unwrap()
        .into_inner()
        .instances
        .into_iter()
        .find(|i| i.id == auto_ids[0])
        .expect("the leaving node");
    assert_eq!(
        leaving.status.unwrap().instance_state(),
        ca::instance_status::InstanceState::InstanceDeleting
    );
    refused(
        delete(&mut c, "auto", &[&auto_ids[1]]).await,
        Code::FailedPrecondition,
        "min 1",
    );

    // A machine that failed is an instance with error info.
    sqlx::query(
        "UPDATE machines SET state = 'failed', last_error = 'lab: no room on the bridge'
         WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(auto[1]["id"].as_str().unwrap()).unwrap())
    .execute(&t.app.pool)
    .await
    .unwrap();
    let failed = c
        .node_group_nodes(ca::NodeGroupNodesRequest { id: "auto".into() })
        .await
        .unwrap()
        .into_inner()
        .instances
        .into_iter()
        .find(|i| i.id == auto_ids[1])
        .expect("the failed machine");
    let s = failed.status.unwrap();
    assert_eq!(
        s.instance_state(),
        ca::instance_status::InstanceState::InstanceCreating
    );
    let e = s.error_info.expect("error info");
    assert_eq!(e.error_code, "MachineFailed");
    assert!(e.error_message.contains("no room"), "{e:?}");

    // Template nodes: what a new node of the pool will be (scale from zero).
    for (pool, cpu, memory) in [("auto", "900m", "1692Mi"), ("spare", "1900m", "3740Mi")] {
        let r = c
            .node_group_template_node_info(ca::NodeGroupTemplateNodeInfoRequest { id: pool.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.node_info, r.node_bytes,
            "both revisions get the same Node"
        );
        let n = core_v1::Node::decode(r.node_bytes.as_slice()).expect("a v1.Node");
        let labels = &n.metadata.as_ref().unwrap().labels;
        assert_eq!(labels["kubeforge.io/node-pool"], pool);
        assert_eq!(labels["kubernetes.io/os"], "linux");
        let status = n.status.as_ref().unwrap();
        assert_eq!(status.allocatable["cpu"].string.as_deref(), Some(cpu));
        assert_eq!(status.allocatable["memory"].string.as_deref(), Some(memory));
        assert_eq!(status.allocatable["pods"].string.as_deref(), Some("110"));
        if pool == "auto" {
            assert_eq!(labels["tier"], "web");
            assert_eq!(labels["node.kubernetes.io/instance-type"], "small");
            let taint = &n.spec.as_ref().unwrap().taints[0];
            assert_eq!(
                (
                    taint.key.as_deref(),
                    taint.value.as_deref(),
                    taint.effect.as_deref()
                ),
                (Some("dedicated"), Some("web"), Some("NoSchedule"))
            );
        }
    }
    refused(
        c.node_group_template_node_info(ca::NodeGroupTemplateNodeInfoRequest {
            id: "fixed".into(),
        })
        .await,
        Code::NotFound,
        "fixed",
    );

    // Options: the autoscaler's defaults, with the cluster's scale-down
    // settings.
    let defaults = ca::NodeGroupAutoscalingOptions {
        scale_down_utilization_threshold: 0.7,
        max_node_provision_duration: Some(prost_types_duration(900)),
        ..Default::default()
    };
    let o = c
        .node_group_get_options(ca::NodeGroupAutoscalingOptionsRequest {
            id: "auto".into(),
            defaults: Some(defaults),
        })
        .await
        .unwrap()
        .into_inner()
        .node_group_autoscaling_options
        .unwrap();
    assert_eq!(o.scale_down_utilization_threshold, 0.5);
    assert_eq!(o.scale_down_unneeded_duration.unwrap().seconds, 600);
    assert_eq!(o.max_node_provision_duration.unwrap().seconds, 900);
    refused(
        c.node_group_get_options(ca::NodeGroupAutoscalingOptionsRequest {
            id: "nope".into(),
            defaults: None,
        })
        .await,
        Code::NotFound,
        "nope",
    );

    // The rest.
    let label = c
        .gpu_label(ca::GpuLabelRequest {})
        .await
        .unwrap()
        .into_inner()
        .label;
    assert_eq!(label, "kubeforge.io/accelerator");
    let types = c
        .get_available_gpu_types(ca::GetAvailableGpuTypesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(types.gpu_types.is_empty());
    c.refresh(ca::RefreshRequest {}).await.unwrap();
    c.cleanup(ca::CleanupRequest {}).await.unwrap();
    refused(
        c.pricing_node_price(ca::PricingNodePriceRequest::default())
            .await,
        Code::Unimplemented,
        "no prices",
    );
    refused(
        c.pricing_pod_price(ca::PricingPodPriceRequest::default())
            .await,
        Code::Unimplemented,
        "no prices",
    );

    // Another tenant's cluster and credential: nothing of web is visible.
    let other = t.app.token(OTHER, Role::Editor);
    let mut db = web();
    db["name"] = json!("db");
    db["node_pools"] = json!([{"name": "main", "machine_type": "small", "size": 1}]);
    let r = t.req(&other, Method::POST, "/v1/clusters", Some(db)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let other_creds = t.credentials(&other, "db").await;
    let mut o = grpc::client(&other_creds).await.expect("connects");
    let groups = o
        .node_groups(ca::NodeGroupsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(groups.node_groups.is_empty(), "{groups:?}");
    refused(target(&mut o, "auto").await, Code::NotFound, "auto");
    refused(
        increase(&mut o, "auto", 1).await,
        Code::FailedPrecondition,
        "mode is builtin",
    );
    assert_eq!(group_for(&mut o, &auto_ids[1]).await, "");
    // Its cluster deleted: every call is NotFound.
    let r = t.req(&other, Method::DELETE, "/v1/clusters/db", None).await;
    assert!(r.status.is_success(), "{}", r.text);
    refused(o.refresh(ca::RefreshRequest {}).await, Code::NotFound, "db");
    refused(
        o.node_groups(ca::NodeGroupsRequest {}).await,
        Code::NotFound,
        "db",
    );
    // The web credential is unaffected.
    assert_eq!(target(&mut c, "auto").await.unwrap(), 1);

    // Every call is counted by method and code.
    let m = t
        .app
        .call(Method::GET, "/metrics", None, None, &[])
        .await
        .text;
    for (method, code) in [
        ("NodeGroupIncreaseSize", "FailedPrecondition"),
        ("NodeGroupIncreaseSize", "ResourceExhausted"),
        ("NodeGroupIncreaseSize", "Ok"),
        ("NodeGroupDeleteNodes", "InvalidArgument"),
        ("PricingPodPrice", "Unimplemented"),
        ("Refresh", "NotFound"),
    ] {
        assert!(
            m.lines()
                .any(|l| l.starts_with("kubeforge_externalgrpc_calls_total")
                    && l.contains(&format!("method=\"{method}\""))
                    && l.contains(&format!("code=\"{code}\""))),
            "no {method} {code} in the metrics"
        );
    }
}

fn prost_types_duration(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

#[tokio::test]
async fn a_certificate_of_another_ca_or_none_never_reaches_a_call() {
    let t = T::new().await;
    t.ok(Method::POST, "/v1/clusters", Some(web())).await;
    let creds = t.credentials(&t.token, "web").await;
    let cluster = t.ok(Method::GET, "/v1/clusters/web", None).await;
    let address = creds["address"].as_str().unwrap();
    let ca_pem = creds["ca_pem"].as_str().unwrap();

    // A look-alike: the same subject as a real credential, another CA.
    let now = chrono::Utc::now();
    let name = kubeforge_cluster::ClusterName::parse("web").unwrap();
    let forged_ca =
        kubeforge_cluster::pki::ClusterPki::generate(&name, now, chrono::TimeDelta::days(1))
            .unwrap()
            .ca;
    let forged = kubeforge_cluster::pki::issue_client_cert(
        &forged_ca.signer().unwrap(),
        &format!("cluster:{}", cluster["id"].as_str().unwrap()),
        &[TENANT],
        now,
        chrono::TimeDelta::hours(1),
    )
    .unwrap();
    for identity in [
        Some((forged.cert_pem.as_str(), forged.key_pem.as_str())),
        None,
    ] {
        let outcome = match grpc::connect(address, ca_pem, identity).await {
            Err(e) => format!("connect: {e}"),
            Ok(mut c) => match c.node_groups(ca::NodeGroupsRequest {}).await {
                Ok(r) => panic!("answered without a valid certificate: {r:?}"),
                Err(s) => {
                    // The handshake failed: a transport error, never an
                    // answer of the service.
                    assert!(
                        matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Internal),
                        "{s:?}"
                    );
                    format!("call: {s}")
                }
            },
        };
        // rustls' alerts: the server does not know the issuer, or got no
        // certificate at all.
        let alert = identity.map_or("CertificateRequired", |_| "UnknownCA");
        assert!(outcome.contains(alert), "{outcome}");
    }

    // A server this client does not trust is refused by the client too.
    let other_ca =
        kubeforge_cluster::pki::ClusterPki::generate(&name, now, chrono::TimeDelta::days(1))
            .unwrap()
            .ca;
    let outcome = match grpc::connect(
        address,
        &other_ca.cert_pem,
        Some((
            creds["cert_pem"].as_str().unwrap(),
            creds["key_pem"].as_str().unwrap(),
        )),
    )
    .await
    {
        Err(_) => true,
        Ok(mut c) => c.node_groups(ca::NodeGroupsRequest {}).await.is_err(),
    };
    assert!(
        outcome,
        "a client that does not trust the server must not talk to it"
    );
}
