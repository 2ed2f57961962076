//! The `aws` provider against a real EC2 API implementation: moto's
//! server on loopback, behind the fault-injecting proxy of
//! `kubeforge_tests::moto` (the SDK is pointed at it with the standard
//! `AWS_ENDPOINT_URL`). What the provider made or left is read back with
//! the tests' own EC2 client, and the "nothing left" checks with boto3
//! straight from moto.

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine as _;
use kubeforge::providers::aws::call::RetryPolicy;
use kubeforge::providers::aws::{AwsConfig, AwsProvider};
use kubeforge::providers::{
    MachineRequest, Provider, ProviderError, ProviderMachineState, TAG_CLUSTER, TAG_MACHINE,
    TAG_TENANT,
};
use kubeforge_cluster::pools::MachineRole;
use kubeforge_cluster::spec::ProviderSpec;
use kubeforge_cluster::MachineType;
use kubeforge_tests::moto::{self, FaultKind, REGION};
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKubeforgeServiceKeyForTests kubeforge";
const API_CIDR: &str = "203.0.113.0/24";

/// A VPC and a subnet of its own for one test.
struct Net {
    vpc_cidr: String,
    subnet: String,
}

async fn network(ec2: &aws_sdk_ec2::Client) -> Net {
    let vpc_cidr = "10.90.0.0/16".to_string();
    let vpc = ec2
        .create_vpc()
        .cidr_block(&vpc_cidr)
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("10.90.1.0/24")
        .send()
        .await
        .unwrap()
        .subnet()
        .unwrap()
        .subnet_id()
        .unwrap()
        .to_string();
    Net { vpc_cidr, subnet }
}

fn spec(net: &Net, role_arn: Option<&str>) -> ProviderSpec {
    ProviderSpec::Aws {
        region: REGION.into(),
        subnet_id: net.subnet.clone(),
        ami: "ami-0kubeforge0test".into(),
        role_arn: role_arn.map(str::to_string),
        key_name: None,
    }
}

fn provider() -> AwsProvider {
    moto::shared();
    AwsProvider::new(AwsConfig {
        api_cidrs: vec![API_CIDR.parse().unwrap()],
        retry: RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
        },
        delete_wait: Duration::from_secs(30),
        ..Default::default()
    })
}

fn request(cluster: Uuid, spec: &ProviderSpec, name: &str, role: MachineRole) -> MachineRequest {
    let pool = (role == MachineRole::Worker).then_some("default");
    let mut req = MachineRequest::new(
        Uuid::now_v7(),
        name,
        "acme",
        cluster,
        role,
        MachineType::SMALL,
        pool,
        spec.clone(),
    );
    req.user_data = Some(kubeforge_cluster::userdata::render(&req.identity(), KEY).unwrap());
    req
}

/// The instances (any state but terminated) tagged `key = value`.
async fn tagged(
    ec2: &aws_sdk_ec2::Client,
    key: &str,
    value: &str,
) -> Vec<aws_sdk_ec2::types::Instance> {
    let out = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{key}"))
                .values(value)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances().iter().cloned())
        .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated"))
        .collect()
}

fn tag<'a>(i: &'a aws_sdk_ec2::types::Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// What every test starts from: the EC2 lab, a network of its own, a
/// cluster id and a provider scoped to it.
struct Case {
    ec2: aws_sdk_ec2::Client,
    lab: &'static moto::Ec2Lab,
    net: Net,
    spec: ProviderSpec,
    cluster: Uuid,
    aws: AwsProvider,
    p: AwsProvider,
}

async fn case(role_arn: Option<&str>) -> Case {
    let ec2 = moto::ec2_client().await;
    let net = network(&ec2).await;
    let spec = spec(&net, role_arn);
    let cluster = Uuid::now_v7();
    let aws = provider();
    let p = aws.for_cluster(cluster, "acme", &spec).unwrap();
    Case {
        ec2,
        lab: moto::shared(),
        net,
        spec,
        cluster,
        aws,
        p,
    }
}

/// Releases the cluster and checks, with boto3, that nothing of it is
/// left.
async fn nothing_left(p: &AwsProvider, cluster: Uuid) {
    p.release_cluster(cluster).await.unwrap();
    assert_eq!(moto::leftovers(&cluster.to_string()), Vec::<String>::new());
}

#[tokio::test]
async fn lifecycle_tags_security_group_and_nothing_left() {
    let Case {
        ec2,
        lab: _,
        net,
        spec,
        cluster,
        aws,
        p,
    } = case(None).await;
    let cp = request(cluster, &spec, "web-cp-0", MachineRole::ControlPlane);
    let worker = request(cluster, &spec, "web-default-0", MachineRole::Worker);

    let m = p.create(&cp).await.unwrap();
    assert!(m.provider_id.starts_with("i-"), "{m:?}");
    assert_eq!(m.id, cp.id);
    let creates: u64 = [
        "RunInstances",
        "DescribeInstances",
        "DescribeSubnets",
        "DescribeVpcs",
        "DescribeSecurityGroups",
        "CreateSecurityGroup",
        "AuthorizeSecurityGroupIngress",
        "GetConsoleOutput",
    ]
    .iter()
    .map(|op| aws.counters().count(op, "ok"))
    .sum();
    let found = tagged(&ec2, TAG_MACHINE, &cp.id.to_string()).await;
    assert_eq!(found.len(), 1, "one instance per machine");
    let inst = &found[0];
    assert_eq!(tag(inst, TAG_CLUSTER), Some(cluster.to_string().as_str()));
    assert_eq!(tag(inst, TAG_TENANT), Some("acme"));
    assert_eq!(tag(inst, "Name"), Some("web-cp-0"));
    assert_eq!(tag(inst, "kubeforge:role"), Some("control_plane"));
    assert_eq!(inst.instance_type().map(|t| t.as_str()), Some("t3.small"));
    assert_eq!(inst.subnet_id(), Some(net.subnet.as_str()));
    let address = inst.private_ip_address().unwrap();
    assert!(address.starts_with("10.90.1."), "{address}");
    let metadata = inst.metadata_options().unwrap();
    assert_eq!(metadata.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(metadata.http_put_response_hop_limit(), Some(1));
    let groups: Vec<&str> = inst
        .security_groups()
        .iter()
        .filter_map(|g| g.group_name())
        .collect();
    assert_eq!(groups, vec![format!("kubeforge-{cluster}").as_str()]);
    // The user-data is the cloud-config the engine rendered.
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(inst.instance_id().unwrap())
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(attr.user_data().unwrap().value().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(user_data).unwrap(),
        *cp.user_data.as_ref().unwrap()
    );

    // The security group: the cluster's machines among themselves, SSH
    // from the service (the VPC), the API from the service and API_CIDR.
    let sg = ec2
        .describe_security_groups()
        .filters(
            Filter::builder()
                .name(format!("tag:{TAG_CLUSTER}"))
                .values(cluster.to_string())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(sg.security_groups().len(), 1);
    let group = &sg.security_groups()[0];
    let group_id = group.group_id().unwrap();
    let mut rules = BTreeSet::new();
    for perm in group.ip_permissions() {
        let port = perm.from_port().map(|p| p.to_string()).unwrap_or_default();
        let proto = perm.ip_protocol().unwrap_or_default();
        for r in perm.ip_ranges() {
            rules.insert(format!("{proto}/{port} from {}", r.cidr_ip().unwrap()));
        }
        for g in perm.user_id_group_pairs() {
            let from = if g.group_id() == Some(group_id) {
                "self"
            } else {
                "other"
            };
            rules.insert(format!("{proto} from {from}"));
        }
    }
    let want: BTreeSet<String> = [
        "-1 from self".to_string(),
        format!("tcp/22 from {}", net.vpc_cidr),
        format!("tcp/6443 from {}", net.vpc_cidr),
        format!("tcp/6443 from {API_CIDR}"),
    ]
    .into();
    assert_eq!(rules, want);

    p.create(&worker).await.unwrap();
    let seen = p.get(cp.id).await.unwrap().expect("the machine");
    assert_eq!(seen.state, ProviderMachineState::Running);
    assert_eq!(seen.address.as_deref(), Some(address));
    // moto's console is a fixed sample without cloud-init's key block: no
    // key is reported, so the engine would not log in (it pins only keys
    // the cloud reports).
    assert_eq!(seen.host_key, None);
    let listed: BTreeSet<Uuid> = p
        .list_by_cluster(cluster)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, BTreeSet::from([cp.id, worker.id]));

    let before = aws.counters().count("TerminateInstances", "ok");
    p.delete(worker.id).await.unwrap();
    assert!(p.get(worker.id).await.unwrap().is_none());
    p.delete(worker.id).await.unwrap();
    assert_eq!(
        aws.counters().count("TerminateInstances", "ok"),
        before + 1,
        "deleting a machine that is gone calls no TerminateInstances"
    );
    p.delete(cp.id).await.unwrap();
    p.release_cluster(cluster).await.unwrap();
    nothing_left(&p, cluster).await;
    let ops = [
        "RunInstances",
        "DescribeInstances",
        "DescribeSubnets",
        "DescribeVpcs",
        "DescribeSecurityGroups",
        "CreateSecurityGroup",
        "AuthorizeSecurityGroupIngress",
        "GetConsoleOutput",
        "TerminateInstances",
        "DescribeVolumes",
        "DeleteVolume",
        "DeleteSecurityGroup",
        "StartInstances",
    ];
    let summary: Vec<String> = ops
        .iter()
        .map(|op| format!("{op}={}", aws.counters().count(op, "ok")))
        .filter(|s| !s.ends_with("=0"))
        .collect();
    eprintln!(
        "EC2 calls: first machine's create {creates}; whole test: {}",
        summary.join(" ")
    );
}

#[tokio::test]
async fn a_repeated_or_answerless_launch_makes_one_instance() {
    let Case {
        ec2,
        lab,
        net,
        spec,
        cluster,
        aws,
        p,
    } = case(None).await;

    // The engine asks again (a crash, a timeout of its own): same machine.
    let req = request(cluster, &spec, "web-cp-0", MachineRole::ControlPlane);
    let first = p.create(&req).await.unwrap();
    let again = p.create(&req).await.unwrap();
    assert_eq!(first.provider_id, again.provider_id);
    assert_eq!(
        tagged(&ec2, TAG_MACHINE, &req.id.to_string()).await.len(),
        1
    );

    // The answer to RunInstances is lost after moto made the instance (a
    // gateway timeout): the provider finds it by its tag instead of
    // launching again, which on moto would make a second one.
    let lost = request(cluster, &spec, "web-cp-1", MachineRole::ControlPlane);
    lab.proxy.inject(
        "RunInstances",
        &lost.id.to_string(),
        FaultKind::LoseAnswer,
        1,
    );
    let m = p.create(&lost).await.unwrap();
    let found = tagged(&ec2, TAG_MACHINE, &lost.id.to_string()).await;
    assert_eq!(found.len(), 1, "one instance after the lost answer");
    assert_eq!(found[0].instance_id(), Some(m.provider_id.as_str()));
    let runs: Vec<_> = lab
        .proxy
        .seen(&lost.id.to_string())
        .into_iter()
        .filter(|s| s.action == "RunInstances")
        .collect();
    assert_eq!(runs.len(), 1, "no second RunInstances");
    assert_eq!(
        runs[0].param("ClientToken"),
        Some(lost.id.to_string().as_str())
    );
    assert_eq!(aws.counters().retried("RunInstances"), 1);

    // A twin (what a repeated token makes on moto, or a launch another
    // replica raced) is terminated when the machine is next looked at.
    let twin = ec2
        .run_instances()
        .image_id("ami-0kubeforge0test")
        .min_count(1)
        .max_count(1)
        .subnet_id(&net.subnet)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .set_tags(Some(
                    req.tags
                        .iter()
                        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
                        .collect(),
                ))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let twin_id = twin.instances()[0].instance_id().unwrap().to_string();
    let seen = p.get(req.id).await.unwrap().unwrap();
    assert_eq!(
        seen.provider_id, first.provider_id,
        "the older instance stays"
    );
    let left: Vec<String> = tagged(&ec2, TAG_MACHINE, &req.id.to_string())
        .await
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    assert_eq!(
        left,
        vec![first.provider_id.clone()],
        "twin {twin_id} terminated"
    );

    for id in [req.id, lost.id] {
        p.delete(id).await.unwrap();
    }
    nothing_left(&p, cluster).await;
}

#[tokio::test]
async fn the_sweep_finds_an_instance_the_ledger_never_recorded() {
    let Case { spec, cluster, .. } = case(None).await;
    // A process launches and dies before its ledger update: all it knew
    // goes with it.
    let orphan = request(cluster, &spec, "web-default-3", MachineRole::Worker);
    {
        let crashed = provider();
        crashed.create(&orphan).await.unwrap();
    }
    // The deletion's sweep, as the engine runs it, from a new process.
    let p = provider().for_cluster(cluster, "acme", &spec).unwrap();
    let strays = p.list_by_cluster(cluster).await.unwrap();
    assert_eq!(
        strays.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![orphan.id]
    );
    for s in &strays {
        p.delete(s.id).await.unwrap();
    }
    nothing_left(&p, cluster).await;
    assert!(p.list_by_cluster(cluster).await.unwrap().is_empty());
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_and_counted() {
    let Case {
        ec2,
        lab,
        net: _,
        spec,
        cluster,
        aws,
        p,
    } = case(None).await;
    let req = request(cluster, &spec, "web-cp-0", MachineRole::ControlPlane);
    let id = req.id.to_string();
    let cid = cluster.to_string();
    lab.proxy
        .inject("DescribeInstances", &id, FaultKind::Throttle, 3);
    lab.proxy
        .inject("CreateSecurityGroup", &cid, FaultKind::ServerError, 1);
    lab.proxy
        .inject("RunInstances", &id, FaultKind::Throttle, 2);

    let m = p.create(&req).await.unwrap();
    lab.proxy
        .inject("TerminateInstances", &m.provider_id, FaultKind::Throttle, 2);
    assert_eq!(
        p.get(req.id).await.unwrap().unwrap().state,
        ProviderMachineState::Running
    );
    p.delete(req.id).await.unwrap();
    p.release_cluster(cluster).await.unwrap();
    assert_eq!(moto::leftovers(&cid), Vec::<String>::new());
    assert_eq!(tagged(&ec2, TAG_MACHINE, &id).await.len(), 0);
    assert_eq!(
        lab.proxy
            .seen(&id)
            .iter()
            .filter(|s| s.action == "RunInstances" && !s.faulted)
            .count(),
        1,
        "one launch reached EC2"
    );

    let c = aws.counters();
    let retries = |op: &str, reason: &str| c.retries.with_label_values(&[op, reason]).get();
    assert_eq!(retries("DescribeInstances", "throttled"), 3);
    assert_eq!(retries("CreateSecurityGroup", "server_error"), 1);
    assert_eq!(retries("RunInstances", "throttled"), 2);
    assert_eq!(retries("TerminateInstances", "throttled"), 2);
    // ... and in what /metrics renders.
    let metrics = kubeforge::metrics::Metrics::new().unwrap();
    metrics.register(Box::new(c.calls.clone())).unwrap();
    metrics.register(Box::new(c.retries.clone())).unwrap();
    let text = metrics.render();
    for line in [
        "kubeforge_aws_retries_total{operation=\"RunInstances\",reason=\"throttled\"} 2",
        "kubeforge_aws_retries_total{operation=\"CreateSecurityGroup\",reason=\"server_error\"} 1",
        "kubeforge_aws_calls_total{operation=\"RunInstances\",outcome=\"ok\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
    eprintln!(
        "retries under injected faults: {}",
        [
            "DescribeInstances",
            "CreateSecurityGroup",
            "RunInstances",
            "TerminateInstances"
        ]
        .iter()
        .map(|op| format!("{op}={}", c.retried(op)))
        .collect::<Vec<_>>()
        .join(" ")
    );

    // Throttled past every attempt: a retryable error, nothing launched.
    let stuck = request(cluster, &spec, "web-cp-1", MachineRole::ControlPlane);
    lab.proxy.inject(
        "DescribeInstances",
        &stuck.id.to_string(),
        FaultKind::Throttle,
        100,
    );
    match p.create(&stuck).await {
        Err(ProviderError::Retryable(msg)) => {
            assert!(
                msg.contains("RequestLimitExceeded") && msg.contains("after 6 attempts"),
                "{msg}"
            )
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
    lab.proxy.clear(&stuck.id.to_string());
    assert_eq!(
        tagged(&ec2, TAG_MACHINE, &stuck.id.to_string()).await.len(),
        0
    );
    p.release_cluster(cluster).await.unwrap();
}

#[tokio::test]
async fn no_capacity_is_a_wait_and_bad_settings_are_permanent() {
    let Case {
        ec2: _,
        lab,
        net: _,
        spec,
        cluster,
        aws,
        p,
    } = case(None).await;
    let req = request(cluster, &spec, "web-default-0", MachineRole::Worker);
    lab.proxy.inject(
        "RunInstances",
        &req.id.to_string(),
        FaultKind::NoCapacity,
        1,
    );
    match p.create(&req).await {
        Err(ProviderError::NoCapacity(msg)) => {
            assert!(
                msg.contains("t3.small") && msg.contains("InsufficientInstanceCapacity"),
                "{msg}"
            )
        }
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    assert_eq!(
        aws.counters().retried("RunInstances"),
        0,
        "not retried in place"
    );
    // Capacity came back: the same request launches.
    p.create(&req).await.unwrap();
    p.delete(req.id).await.unwrap();

    let mut bad = spec.clone();
    if let ProviderSpec::Aws { subnet_id, .. } = &mut bad {
        *subnet_id = "subnet-0doesnotexist".into();
    }
    let other = Uuid::now_v7();
    let q = request(other, &bad, "x-cp-0", MachineRole::ControlPlane);
    match aws
        .for_cluster(other, "acme", &bad)
        .unwrap()
        .create(&q)
        .await
    {
        Err(ProviderError::Permanent(msg)) => {
            assert!(msg.contains("subnet-0doesnotexist"), "{msg}")
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    nothing_left(&p, cluster).await;
}

#[tokio::test]
async fn a_cluster_role_is_assumed_with_the_tenant_as_external_id() {
    let role = "arn:aws:iam::123456789012:role/kubeforge-acme";
    let Case {
        lab,
        spec,
        cluster,
        p,
        ..
    } = case(Some(role)).await;
    let req = request(cluster, &spec, "web-cp-0", MachineRole::ControlPlane);
    p.create(&req).await.unwrap();
    let assumed: Vec<_> = lab
        .proxy
        .all_seen()
        .into_iter()
        .filter(|s| s.action == "AssumeRole" && s.param("RoleArn") == Some(role))
        .collect();
    assert!(!assumed.is_empty(), "the role was assumed");
    assert!(assumed
        .iter()
        .all(|s| s.param("ExternalId") == Some("acme")));
    let runs: Vec<_> = lab
        .proxy
        .seen(&req.id.to_string())
        .into_iter()
        .filter(|s| s.action == "RunInstances")
        .collect();
    assert_eq!(runs.len(), 1);
    assert_ne!(
        runs[0].access_key, "testing",
        "signed with the role's credentials"
    );
    assert!(!runs[0].access_key.is_empty());
    p.delete(req.id).await.unwrap();
    nothing_left(&p, cluster).await;
}

#[tokio::test]
async fn a_type_without_capacity_falls_back_to_the_pools_alternatives() {
    let Case {
        ec2,
        lab,
        net: _,
        spec,
        cluster,
        aws,
        p,
    } = case(None).await;
    let mut req = request(cluster, &spec, "web-big-0", MachineRole::Worker);
    req.machine_type = MachineType::parse("m5.large").unwrap();
    req.alternatives = vec![
        MachineType::parse("m5a.large").unwrap(),
        MachineType::parse("m6i.large").unwrap(),
    ];
    let id = req.id.to_string();
    // m5.large has no capacity in the zone; m5a.large does.
    lab.proxy.inject_where(
        "RunInstances",
        &[&id, "InstanceType=m5.large"],
        FaultKind::NoCapacity,
        10,
    );
    let m = p.create(&req).await.unwrap();
    let found = tagged(&ec2, TAG_MACHINE, &id).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].instance_id(), Some(m.provider_id.as_str()));
    assert_eq!(
        found[0].instance_type().map(|t| t.as_str()),
        Some("m5a.large")
    );
    let runs: Vec<_> = lab
        .proxy
        .seen(&id)
        .into_iter()
        .filter(|s| s.action == "RunInstances")
        .map(|s| {
            (
                s.param("InstanceType").unwrap_or_default().to_string(),
                s.param("ClientToken").unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        vec![
            ("m5.large".to_string(), id.clone()),
            ("m5a.large".to_string(), format!("{id}-alt1")),
        ],
        "each type its own token, the primary first"
    );
    assert_eq!(aws.counters().count("RunInstances", "capacity"), 1);

    // No type has capacity: the machine waits, naming every type tried.
    let mut all = request(cluster, &spec, "web-big-1", MachineRole::Worker);
    all.machine_type = req.machine_type;
    all.alternatives = req.alternatives.clone();
    let all_id = all.id.to_string();
    lab.proxy
        .inject("RunInstances", &all_id, FaultKind::NoCapacity, 3);
    match p.create(&all).await {
        Err(ProviderError::NoCapacity(msg)) => {
            for t in ["m5.large", "m5a.large", "m6i.large"] {
                assert!(msg.contains(t), "{msg}");
            }
        }
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    assert_eq!(tagged(&ec2, TAG_MACHINE, &all_id).await.len(), 0);

    p.delete(req.id).await.unwrap();
    nothing_left(&p, cluster).await;
}

/// Through the API and the engine: a cluster on `aws` launches its control
/// plane in moto (tagged, in its security group); deleting the cluster
/// sweeps an instance the ledger never knew, terminates the rest and
/// releases the group: nothing tagged is left. The service has no SSH key
/// here, so machines are never logged in to (moto's console reports no
/// host key anyway).
#[tokio::test]
async fn a_cluster_on_aws_is_created_and_deleted_through_the_engine() {
    use axum::http::Method;
    use kubeforge::context::Role;
    let Case {
        ec2,
        net,
        aws,
        spec: _,
        cluster: _,
        lab: _,
        p: _,
    } = case(None).await;
    let app = kubeforge_tests::TestApp::with_real_provider(std::sync::Arc::new(aws.clone())).await;
    let token = app.token("acme", Role::Admin);
    let body = serde_json::json!({
        "name": "web",
        "kubernetes_version": "1.20.2",
        "provider": {"kind": "aws", "region": REGION, "subnet_id": net.subnet,
                     "ami": "ami-0kubeforge0test"},
        "control_plane": {"replicas": 1, "machine_type": "medium"},
        "node_pools": [{"name": "gpu", "machine_type": "g4dn.xlarge", "size": 1,
                        "alternative_machine_types": ["g4dn.2xlarge"]}]
    });
    let r = app
        .call(Method::POST, "/v1/clusters", Some(&token), Some(body), &[])
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let cluster = r.body["cluster"]["id"].as_str().unwrap().to_string();
    app.settle().await;
    let launched: BTreeSet<(String, String)> = tagged(&ec2, TAG_CLUSTER, &cluster)
        .await
        .iter()
        .map(|i| {
            (
                tag(i, "kubeforge:role").unwrap_or_default().to_string(),
                i.instance_type()
                    .map(|t| t.as_str())
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        launched,
        BTreeSet::from([
            ("control_plane".to_string(), "t3.medium".to_string()),
            ("worker".to_string(), "g4dn.xlarge".to_string()),
        ])
    );

    // An instance of the cluster the ledger never recorded (a crash
    // between launch and ledger update).
    let stray = Uuid::now_v7();
    ec2.run_instances()
        .image_id("ami-0kubeforge0test")
        .min_count(1)
        .max_count(1)
        .subnet_id(&net.subnet)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(TAG_CLUSTER)
                        .value(&cluster)
                        .build(),
                )
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(TAG_MACHINE)
                        .value(stray.to_string())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(tagged(&ec2, TAG_CLUSTER, &cluster).await.len(), 3);

    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/clusters/{cluster}"),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    app.settle().await;
    let r = app
        .call(
            Method::GET,
            &format!("/v1/clusters/{cluster}"),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 404, "the cluster is gone: {:?}", r.body);
    assert_eq!(moto::leftovers(&cluster), Vec::<String>::new());
    let swept: Vec<String> = sqlx::query_scalar(
        "SELECT message FROM events WHERE cluster_id = $1::text::uuid AND reason = 'StrayMachinesSwept'",
    )
    .bind(&cluster)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        swept,
        vec!["deleted 1 machines tagged with the cluster but missing from the ledger".to_string()]
    );
}

/// Stops a child process with SIGTERM when dropped (and waits for it).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped binary: `kubeforge up --aws` finds moto the standard way
/// (`AWS_ENDPOINT_URL` in its environment), takes clusters on `aws`,
/// launches their instances with the service's key in the user-data,
/// counts its EC2 calls in `/metrics`, and deletes every instance and the
/// group with the cluster. Without `--aws` the same request is refused.
/// The `--aws` run has no lab image (an empty cache): the Kubernetes
/// binaries come from `--artifacts` and the machines' etcd digest from
/// `--etcd-sha256`, as on a server in AWS. (Root and the lab artifacts:
/// the plain `up` claims a lab network; no machine boots.)
#[tokio::test]
async fn up_with_aws_serves_clusters_on_aws() {
    let Case { ec2, net, .. } = case(None).await;
    let data_dir = std::env::temp_dir().join(format!("kf-aws-up-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&data_dir).unwrap();
    let bin = kubeforge_tests::cli::kubeforge_bin();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let up = |aws: bool| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args([
            "up",
            "--grpc-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
        ])
        .args(["--dns-advertise", "192.0.2.53:53", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data_dir)
        .env_remove("KUBEFORGE_LAB_BRIDGE")
        .env_remove("KUBEFORGE_LAB_SUBNET")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(data_dir.join(format!("up-{aws}.log"))).unwrap());
        if aws {
            let cache = kubeforge::server::cache_dir();
            let image = kubeforge::server::lab_image(&cache).expect("the lab image");
            let etcd = kubeforge::artifacts::sha256_file(&image.join("usr/bin/etcd")).unwrap();
            let empty = data_dir.join("empty-cache");
            std::fs::create_dir_all(&empty).unwrap();
            cmd.args(["--aws", "--aws-api-cidr", API_CIDR])
                .arg("--artifacts")
                .arg(cache.join("kube"))
                .args(["--etcd-sha256", &etcd])
                .env("KUBEFORGE_CACHE", &empty);
        }
        Child(cmd.spawn().expect("kubeforge up"))
    };
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let healthy = || async {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status().is_success())
            .ok()
            != Some(true)
        {
            assert!(std::time::Instant::now() < deadline, "up did not get ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let body = serde_json::json!({
        "name": "web",
        "kubernetes_version": "1.20.2",
        "provider": {"kind": "aws", "region": REGION, "subnet_id": net.subnet,
                     "ami": "ami-0kubeforge0test"},
        "control_plane": {"replicas": 1, "machine_type": "small"}
    });

    let plain = up(false);
    healthy().await;
    let out = std::process::Command::new(&bin)
        .args([
            "token",
            "create",
            "--tenant",
            "acme",
            "--role",
            "admin",
            "--ttl",
            "1h",
            "--data-dir",
        ])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = http
        .post(format!("{base}/v1/clusters"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "no --aws, no aws clusters");
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["field"], "provider.kind", "{problem}");
    drop(plain);

    let _up = up(true);
    healthy().await;
    let log = std::fs::read_to_string(data_dir.join("up-true.log")).unwrap();
    assert!(
        log.contains("no lab image") && log.contains("aws provider on"),
        "{log}"
    );
    let r = http
        .post(format!("{base}/v1/clusters"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let created: serde_json::Value = r.json().await.unwrap();
    let cluster = created["cluster"]["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let inst = loop {
        if let Some(i) = tagged(&ec2, TAG_CLUSTER, &cluster).await.into_iter().next() {
            break i;
        }
        assert!(std::time::Instant::now() < deadline, "no instance launched");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(inst.instance_id().unwrap())
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let user_data = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(attr.user_data().unwrap().value().unwrap())
            .unwrap(),
    )
    .unwrap();
    let derived = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(data_dir.join("ssh/id_ed25519"))
        .output()
        .unwrap();
    assert!(derived.status.success(), "the service's key: {derived:?}");
    let service_key = String::from_utf8(derived.stdout).unwrap();
    let key_body = service_key.split_whitespace().nth(1).unwrap();
    assert!(
        user_data.starts_with("#cloud-config\n") && user_data.contains(key_body),
        "{user_data}"
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "kubeforge_aws_calls_total{operation=\"RunInstances\",outcome=\"ok\"} 1"),
        "{metrics}"
    );

    let r = http
        .delete(format!("{base}/v1/clusters/{cluster}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = http
            .get(format!("{base}/v1/clusters/{cluster}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(moto::leftovers(&cluster), Vec::<String>::new());
    drop(_up);
    let _ = std::fs::remove_dir_all(&data_dir);
}
