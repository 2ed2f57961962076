//! End to end, "EC2 on the lab": a cluster with `provider: aws` and a node
//! pool reaches `ready` over real SSH. The `aws` provider launches through
//! the EC2 API (moto, behind the fault proxy); each instance becomes a lab
//! machine at its private address on the test's bridge
//! (`kubeforge_tests::ec2_lab`), with its user-data applied and its host
//! keys on the console the provider reads. The engine pins those keys,
//! uploads the binaries (an AMI has none) and bootstraps the control plane
//! and the worker; kubectl sees the node Ready and runs a pod on it.
//! Deleting the cluster terminates every instance, the lab machines go
//! with them, and boto3 finds nothing of the cluster left in moto.
//!
//! Prints POST -> ready and the EC2 calls of the create and the delete.
//! Needs root and the artifacts of `scripts/build-lab-image`,
//! `scripts/build-kube` and `scripts/build-lab-pause`. Traffic goes only to
//! loopback (moto) and the test's own bridge.

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge::providers::aws::{AwsConfig, AwsProvider};
use kubeforge_tests::ec2_lab::Ec2OnLab;
use kubeforge_tests::lab::{
    delete_cluster, drive, drive_until, kubectl_run, run_pod_on, sandbox, write_kubeconfig,
};
use kubeforge_tests::moto::{self, REGION};
use kubeforge_tests::TestApp;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The EC2 actions the proxy saw from index `from` on, counted.
fn calls_since(from: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in moto::shared().proxy.all_seen().into_iter().skip(from) {
        *out.entry(s.action).or_insert(0) += 1;
    }
    out
}

#[tokio::test]
async fn a_cluster_on_ec2_instances_of_the_lab_reaches_ready_and_leaves_nothing() {
    let (tmp, octet, bridge) = sandbox(env!("CARGO_TARGET_TMPDIR"), "e2e-aws", "kfe");
    let subnet = format!("10.81.{octet}.0/24");
    moto::shared();
    let ec2lab = Ec2OnLab::start(&tmp.join("ec2"), &bridge.0, &subnet).await;
    let aws = AwsProvider::new(AwsConfig::default());
    let app = TestApp::with_lab_and_aws(&tmp.join("svc"), &bridge.0, &subnet, aws.clone()).await;
    let acme = app.token("acme", Role::Admin);

    let name = format!("ec2-{octet}");
    let body = json!({
        "name": name, "kubernetes_version": "1.20.2",
        "provider": {"kind": "aws", "region": REGION, "subnet_id": ec2lab.subnet_id,
                     "ami": "ami-0bookworm0lab"},
        "control_plane": {"replicas": 1, "machine_type": "small"},
        "node_pools": [{"name": "workers", "machine_type": "small", "size": 1}]
    });
    let before_create = moto::shared().proxy.all_seen().len();
    let posted = Instant::now();
    let r = app
        .call(Method::POST, "/v1/clusters", Some(&acme), Some(body), &[])
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cluster = drive(&app, &acme, &name, Some("ready"), Duration::from_secs(480)).await;
    let to_ready = posted.elapsed();
    drive_until(
        &app,
        &acme,
        &format!("/v1/clusters/{name}/node-pools/workers"),
        "the pool's node Ready",
        Duration::from_secs(300),
        |s, b| (s == 200 && b["ready_nodes"] == 1).then_some(()),
    )
    .await;
    let create_calls = calls_since(before_create);
    let cluster_id = cluster["id"].as_str().unwrap().to_string();
    assert_eq!(ec2lab.problems(), Vec::<String>::new());

    // Two instances (the control plane and the worker), each a lab machine
    // at its private address, both launched once.
    let live = ec2lab.live();
    assert_eq!(live.len(), 2, "{live:?}");
    assert_eq!(
        create_calls.get("RunInstances"),
        Some(&2),
        "{create_calls:?}"
    );
    assert_eq!(
        create_calls.get("CreateSecurityGroup"),
        Some(&1),
        "{create_calls:?}"
    );
    let machines: Vec<Value> = app
        .call(
            Method::GET,
            &format!("/v1/clusters/{name}/machines"),
            Some(&acme),
            None,
            &[],
        )
        .await
        .body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(machines.len(), 2, "{machines:?}");
    for inst in &live {
        assert!(
            inst.console,
            "{}: console never showed its keys",
            inst.instance_id
        );
        assert!(
            machines
                .iter()
                .any(|m| m["address"] == inst.address.to_string()
                    && m["provider_id"]
                        .as_str()
                        .is_some_and(|p| p.contains(&inst.instance_id))),
            "{} at {} is not among the cluster's machines: {machines:?}",
            inst.instance_id,
            inst.address
        );
    }

    // kubectl: the worker Ready, a pod runs on it.
    let kc = tmp.join("kubeconfig");
    write_kubeconfig(&app, &acme, &name, "admin", 900, &kc).await;
    let (ok, out) = kubectl_run(&kc, &["get", "nodes", "-o", "json"]);
    assert!(ok, "{out}");
    let nodes: Value = serde_json::from_str(&out).unwrap();
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{out}");
    let node = items[0]["metadata"]["name"].as_str().unwrap().to_string();
    let ready = items[0]["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    assert!(ready, "{out}");
    run_pod_on(&kc, &tmp, &node).await;

    // Delete: every instance terminated, its lab machine gone, nothing left.
    let before_delete = moto::shared().proxy.all_seen().len();
    let t = Instant::now();
    delete_cluster(&app, &acme, &name, Duration::from_secs(300)).await;
    let delete_time = t.elapsed();
    let delete_calls = calls_since(before_delete);
    assert_eq!(
        delete_calls.get("TerminateInstances"),
        Some(&2),
        "{delete_calls:?}"
    );
    assert_eq!(
        delete_calls.get("DeleteSecurityGroup"),
        Some(&1),
        "{delete_calls:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ec2lab.live().is_empty() {
        assert!(
            Instant::now() < deadline,
            "lab machines outlived their instances: {:?}",
            ec2lab.live()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut ended = ec2lab.ended();
    ended.sort();
    let mut launched: Vec<String> = live.iter().map(|i| i.instance_id.clone()).collect();
    launched.sort();
    assert_eq!(ended, launched);
    let left = std::fs::read_dir(tmp.join("ec2/machines"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "lab machine directories remain");
    assert_eq!(moto::leftovers(&cluster_id), Vec::<String>::new());
    assert_eq!(ec2lab.problems(), Vec::<String>::new());

    eprintln!(
        "aws on the lab (1 control plane + a pool of 1): POST -> ready {:.1} s; \
         delete {:.1} s; EC2 calls to create (to ready and the node Ready) {create_calls:?}; \
         to delete {delete_calls:?}",
        to_ready.as_secs_f64(),
        delete_time.as_secs_f64()
    );
    drop(bridge);
}
