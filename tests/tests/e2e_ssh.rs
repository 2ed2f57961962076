//! End to end with the `ssh` provider: a bring-your-own host (a real
//! systemd-nspawn lab machine WITHOUT the Kubernetes binaries bound in,
//! trusting only a tenant-registered key) is registered through
//! `POST /v1/hosts`, claimed by a cluster, given the service key and the
//! binaries, bootstrapped to `ready` and reached with kubectl; deleting the
//! cluster wipes it and returns it to the pool, where it can be claimed
//! again. An empty pool makes a cluster wait, saying why, without failing.
//!
//! Needs root and the artifacts of `scripts/build-lab-image` and
//! `scripts/build-kube`. Traffic goes only to the test's own bridge.

use axum::http::Method;
use kubeforge::context::Role;
use kubeforge::providers::{MachineRequest, Provider, ProviderMachineState};
use kubeforge::ssh::{ClientKey, SshTarget};
use kubeforge_cluster::pools::MachineRole;
use kubeforge_cluster::{MachineType, ProviderSpec};
use kubeforge_tests::hosts::{byo_lab, list as hosts, on_host};
use kubeforge_tests::lab::{delete_cluster, drive, hurry_and_run, kubectl_run, Octet};
use kubeforge_tests::TestApp;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Stops every machine under the test's dir and removes its bridge, also
/// when an assertion failed.
struct Guard {
    bridge: String,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        kubeforge::providers::lab::stop_machines_under(&self.dir);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test's directory, and an octet no other lab test holds (its bridge
/// and subnet); the octet is held until dropped.
fn scratch() -> (PathBuf, Octet) {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("e2e-ssh-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&tmp).unwrap();
    (tmp, Octet::take())
}

fn create_body(name: &str) -> Value {
    json!({"name": name, "kubernetes_version": "1.20.2", "provider": {"kind": "ssh"},
           "control_plane": {"replicas": 1, "machine_type": "small"}})
}

#[tokio::test]
async fn a_registered_host_serves_a_cluster_then_is_wiped_and_returned_to_the_pool() {
    let (tmp, octet) = scratch();
    let guard = Guard {
        bridge: format!("kfs{octet}"),
        dir: tmp.clone(),
    };
    let subnet = format!("10.77.{octet}.0/24");
    let app = TestApp::with_lab_and_ssh(&tmp.join("svc"), &guard.bridge, &subnet).await;
    let access = app.app.access.clone().expect("machine access");
    let service_key = access.client_key.public_key_line().to_string();
    let service_body = service_key.split_whitespace().nth(1).unwrap().to_string();

    // The "bring-your-own" host: a lab machine with no Kubernetes binaries,
    // trusting only the key its owner registers with Kubeforge.
    let tenant_key = ClientKey::generate().unwrap();
    let lab = byo_lab(&tmp.join("hostlab"), &guard.bridge, &subnet, &tenant_key);
    let host_req = MachineRequest::new(
        Uuid::new_v4(),
        &format!("kfs{octet}-byo"),
        "platform",
        Uuid::new_v4(),
        MachineRole::ControlPlane,
        MachineType::SMALL,
        None,
        ProviderSpec::Lab {},
    );
    let mut pm = lab.create(&host_req).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pm.state != ProviderMachineState::Running {
        assert!(Instant::now() < deadline, "the pool host did not boot");
        tokio::time::sleep(Duration::from_millis(500)).await;
        pm = lab.get(host_req.id).await.unwrap().unwrap();
    }
    let address = pm.address.clone().unwrap();
    let host_key = pm.host_key.clone().unwrap();
    let target = SshTarget::new(address.clone(), "root", host_key.clone());
    let before = on_host(
        &target,
        &tenant_key,
        "cat /root/.ssh/authorized_keys; test -e /opt/kubeforge/kube/bin/kube-apiserver && echo HAS-BINARIES; true",
    )
    .await;
    assert!(
        !before.iter().any(|l| l.contains("HAS-BINARIES")),
        "{before:?}"
    );
    assert!(
        !before.iter().any(|l| l.contains(&service_body)),
        "{before:?}"
    );

    // Registered by a platform admin, with the tenant key as credentials.
    let admin = app.token("platform", Role::PlatformAdmin);
    let r = app
        .call(
            Method::POST,
            "/v1/hosts",
            Some(&admin),
            Some(json!({
                "address": address,
                "user": "root",
                "credentials": {"private_key": tenant_key.private_key_openssh()},
                "host_key": host_key,
                "labels": {"rack": "lab"}
            })),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let host_id = r.body["host"]["id"].as_str().unwrap().to_string();

    // A cluster on the pool: POST to ready, kubectl answers.
    let owner = app.token("acme", Role::Admin);
    let name = format!("byo{octet}");
    let started = Instant::now();
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(create_body(&name)),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cluster = drive(&app, &owner, &name, Some("ready"), Duration::from_secs(400)).await;
    eprintln!(
        "ssh POST to ready (binaries uploaded): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        cluster["endpoint"],
        json!(format!("https://{address}:6443")),
        "{cluster}"
    );
    let cluster_id = Uuid::parse_str(cluster["id"].as_str().unwrap()).unwrap();
    // The bootstrap, not the provider, put the Kubernetes binaries on the
    // host (it has none bound in, unlike a lab machine): once.
    let uploads: Vec<String> = sqlx::query_scalar(
        "SELECT message FROM events WHERE cluster_id = $1 AND reason = 'BinariesUploaded'",
    )
    .bind(cluster_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert!(
        uploads[0].ends_with(": 4 Kubernetes binaries uploaded"),
        "{uploads:?}"
    );

    let (machine_id, provider_id): (Uuid, String) =
        sqlx::query_as("SELECT id, provider_id FROM machines WHERE cluster_id = $1")
            .bind(cluster_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(provider_id, format!("ssh:{host_id}"));
    let listed = hosts(&app, &admin).await;
    assert_eq!(listed[0]["claimed_by"], json!(machine_id), "{listed:?}");
    // Registered without a capacity: measured on first contact, as the
    // host itself reports it (online CPUs, MemTotal).
    assert_eq!(listed[0]["capacity_source"], "measured", "{listed:?}");
    let reported = on_host(
        &target,
        &tenant_key,
        "getconf _NPROCESSORS_ONLN; awk '/^MemTotal:/ { print $2 }' /proc/meminfo",
    )
    .await;
    let kb: u64 = reported[1].trim().parse().unwrap();
    let expected =
        kubeforge_cluster::hosts::HostCapacity::measured(reported[0].trim().parse().unwrap(), kb)
            .to_resource_map();
    assert_eq!(listed[0]["capacity"], json!(expected), "{listed:?}");
    // Tagged on the host, found by cluster.
    let identity = on_host(&target, &tenant_key, "cat /etc/kubeforge/machine.json").await;
    let identity: Value = serde_json::from_str(&identity.join("")).unwrap();
    assert_eq!(identity["id"], json!(machine_id));
    assert_eq!(identity["cluster_id"], json!(cluster_id));
    assert_eq!(identity["tags"]["kubeforge:cluster"], json!(cluster_id));
    assert_eq!(identity["tags"]["kubeforge:machine"], json!(machine_id));
    assert_eq!(identity["tags"]["kubeforge:tenant"], "acme");
    let ssh = app.app.providers.get("ssh").unwrap();
    let found = ssh.list_by_cluster(cluster_id).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, machine_id);
    assert_eq!(
        ssh.get(machine_id).await.unwrap().unwrap().state,
        ProviderMachineState::Running
    );

    let r = app
        .call(
            Method::POST,
            &format!("/v1/clusters/{name}/kubeconfig"),
            Some(&owner),
            Some(json!({"role": "admin", "ttl_seconds": 600})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let admin_kc = tmp.join("admin.kubeconfig");
    std::fs::write(&admin_kc, &r.text).unwrap();
    let (ok, out) = kubectl_run(&admin_kc, &["get", "--raw", "/readyz"]);
    assert!(ok && out.trim() == "ok", "readyz: {out}");

    // Delete: the host is wiped and back in the pool.
    delete_cluster(&app, &owner, &name, Duration::from_secs(120)).await;
    let listed = hosts(&app, &admin).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["claimed_by"], Value::Null, "{listed:?}");
    let after = on_host(
        &target,
        &tenant_key,
        "test -z \"$(ls -A /var/lib/etcd 2>/dev/null)\" || echo LEFT etcd data; \
         for p in /opt/kubeforge /etc/kubernetes /var/lib/kubeforge /etc/kubeforge \
         /etc/systemd/system/etcd.service /etc/systemd/system/kube-apiserver.service; do \
           test -e $p && echo LEFT $p; done; \
         systemctl is-active etcd kube-apiserver kube-controller-manager kube-scheduler | sed 's/^/STATE /'; \
         cat /root/.ssh/authorized_keys; true",
    )
    .await;
    assert!(!after.iter().any(|l| l.starts_with("LEFT")), "{after:?}");
    assert!(
        !after.iter().any(|l| l == "STATE active"),
        "a control-plane unit still runs: {after:?}"
    );
    assert!(
        !after.iter().any(|l| l.contains(&service_body)),
        "the service key is still authorized: {after:?}"
    );
    assert!(
        after.iter().any(|l| l.contains(
            tenant_key
                .public_key_line()
                .split_whitespace()
                .nth(1)
                .unwrap()
        )),
        "the owner's key was removed: {after:?}"
    );
    assert!(ssh.get(machine_id).await.unwrap().is_none());
    ssh.delete(machine_id)
        .await
        .expect("deleting again is a no-op");

    // The host can be claimed again, and is released again.
    let again = format!("byo{octet}b");
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(create_body(&again)),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        hurry_and_run(&app).await;
        let running: Option<Uuid> = sqlx::query_scalar(
            "SELECT m.id FROM machines m JOIN clusters c ON c.id = m.cluster_id
             WHERE c.name = $1 AND m.state = 'running'",
        )
        .bind(&again)
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        if let Some(m) = running {
            assert_eq!(hosts(&app, &admin).await[0]["claimed_by"], json!(m));
            break;
        }
        assert!(Instant::now() < deadline, "the host was not claimed again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/clusters/{again}"),
            Some(&owner),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    drive(&app, &owner, &again, None, Duration::from_secs(120)).await;
    assert_eq!(hosts(&app, &admin).await[0]["claimed_by"], Value::Null);

    lab.delete(host_req.id).await.unwrap();
    drop(guard);
}

#[tokio::test]
async fn an_empty_pool_makes_the_cluster_wait_without_failing() {
    let (tmp, octet) = scratch();
    let guard = Guard {
        bridge: format!("kfs{octet}"),
        dir: tmp.clone(),
    };
    let app = TestApp::with_lab_and_ssh(
        &tmp.join("svc"),
        &guard.bridge,
        &format!("10.77.{octet}.0/24"),
    )
    .await;
    let owner = app.token("acme", Role::Admin);
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(create_body("waits")),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let op = r.body["operation"]["id"].as_str().unwrap().to_string();
    // More passes than the job has attempts: waiting uses none of them.
    for _ in 0..10 {
        hurry_and_run(&app).await;
    }

    let o = app
        .call(
            Method::GET,
            &format!("/v1/operations/{op}"),
            Some(&owner),
            None,
            &[],
        )
        .await;
    assert_eq!(o.body["state"], "running", "{}", o.text);
    let step = o.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "machines")
        .cloned()
        .unwrap();
    assert_eq!(step["state"], "running", "{step}");
    assert!(
        step["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no free host"),
        "{step}"
    );
    let c = app
        .call(Method::GET, "/v1/clusters/waits", Some(&owner), None, &[])
        .await;
    assert_eq!(c.body["phase"], "provisioning", "{}", c.text);
    let cond = c.body["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "MachinesReady")
        .cloned()
        .unwrap();
    assert_eq!(cond["reason"], "WaitingForCapacity", "{cond}");
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT message FROM events WHERE reason = 'WaitingForCapacity' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 1, "one event, not one per pass: {events:?}");
    assert!(events[0].contains("no free host in the pool"), "{events:?}");
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempts FROM jobs")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, vec![0], "waiting for capacity used up attempts");
    // Still queued to try again; nothing dead-lettered, no host claimed.
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM jobs")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(states.iter().all(|s| s == "queued"), "{states:?}");
    let machines: Vec<String> =
        sqlx::query_scalar("SELECT state FROM machines WHERE deleted_at IS NULL")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(machines, vec!["pending".to_string()]);
    drop(guard);
}

#[tokio::test]
async fn a_host_without_containerd_is_refused_as_a_worker_and_left_untouched() {
    let (tmp, octet) = scratch();
    let guard = Guard {
        bridge: format!("kfs{octet}"),
        dir: tmp.clone(),
    };
    let subnet = format!("10.77.{octet}.0/24");
    let app = TestApp::with_lab_and_ssh(&tmp.join("svc"), &guard.bridge, &subnet).await;

    // The host: a lab machine trusting only its owner's key, with
    // containerd taken away.
    let tenant_key = ClientKey::generate().unwrap();
    let lab = byo_lab(&tmp.join("hostlab"), &guard.bridge, &subnet, &tenant_key);
    let host = kubeforge_tests::hosts::boot(&lab, &format!("kfs{octet}-nocd"), &tenant_key).await;
    let (address, host_key, target) = (host.address.clone(), host.host_key.clone(), host.target());
    on_host(
        &target,
        &tenant_key,
        "test -x /usr/bin/containerd && mv /usr/bin/containerd /usr/bin/containerd.removed-by-test",
    )
    .await;
    // What `create` must not change: root's keys and Kubeforge's directory
    // (absent on a host of its own: `boot` removed the lab's).
    let state = "echo KEYS; cat /root/.ssh/authorized_keys; echo KUBEFORGE; \
                 if [ -e /etc/kubeforge ]; then find /etc/kubeforge -exec ls -ld --time-style=full-iso {} +; \
                 find /etc/kubeforge -type f -exec cat {} +; fi; echo END";
    let before = on_host(&target, &tenant_key, state).await;

    let admin = app.token("platform", Role::PlatformAdmin);
    let r = app
        .call(
            Method::POST,
            "/v1/hosts",
            Some(&admin),
            Some(json!({
                "address": address,
                "user": "root",
                "credentials": {"private_key": tenant_key.private_key_openssh()},
                "host_key": host_key,
                "labels": {"gpu": "false"}
            })),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let host_id = r.body["host"]["id"].as_str().unwrap().to_string();

    // A worker's ledger row in an ssh cluster (workers on ssh are not on
    // yet, so the provider is asked directly, as the engine would).
    let owner = app.token("acme", Role::Admin);
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(create_body(&format!("nocd{octet}"))),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cluster = Uuid::parse_str(r.body["cluster"]["id"].as_str().unwrap()).unwrap();
    let machine = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO machines (id, tenant, cluster_id, role, name, provider, machine_type, state)
         VALUES ($1, 'acme', $2, 'worker', 'w1', 'ssh', 'small', 'pending')",
    )
    .bind(machine)
    .bind(cluster)
    .execute(&app.pool)
    .await
    .unwrap();
    let provider = app.app.providers.get("ssh").expect("the ssh provider");
    let req = MachineRequest::new(
        machine,
        "w1",
        "acme",
        cluster,
        MachineRole::Worker,
        MachineType::SMALL,
        Some("default"),
        ProviderSpec::Ssh {},
    );
    let started = Instant::now();
    let err = provider.create(&req).await.unwrap_err();
    let message = match &err {
        kubeforge::providers::ProviderError::HostUnfit(m) => m.clone(),
        other => panic!("expected HostUnfit, got {other:?}"),
    };
    println!("refused in {:?}: {message}", started.elapsed());
    assert!(
        message.starts_with(&format!("host {address} lacks containerd")),
        "{message}"
    );
    assert!(err.is_retryable());

    // Released, with the problem on show; nothing written on the host.
    let host = hosts(&app, &admin)
        .await
        .into_iter()
        .find(|h| h["id"] == host_id.as_str())
        .unwrap();
    assert_eq!(host["claimed_by"], Value::Null, "{host}");
    assert_eq!(
        host["problem"]["code"], "host_prerequisites_missing",
        "{host}"
    );
    assert_eq!(host["problem"]["message"], message.as_str(), "{host}");
    let after = on_host(&target, &tenant_key, state).await;
    assert_eq!(before, after);
    assert!(
        !after.iter().any(|l| l.contains(&machine.to_string())),
        "{after:?}"
    );

    // Skipped by claims while the problem is fresh: the machine waits.
    let err = provider.create(&req).await.unwrap_err();
    assert!(
        matches!(&err, kubeforge::providers::ProviderError::NoCapacity(m)
            if m.contains("1 host skipped") && m.contains("lacks containerd")),
        "{err:?}"
    );
    drop(guard);
}

/// A host that is dead when its machine leaves is not waited for: the
/// machine is released at once, the host is marked wipe-pending (shown as
/// its problem) and taken by no claim; when it answers again, the ssh
/// provider's upkeep wipes it and only then is it free.
#[tokio::test]
async fn a_dead_host_is_released_unwiped_and_wiped_when_it_answers_again() {
    let (tmp, octet) = scratch();
    let guard = Guard {
        bridge: format!("kfs{octet}"),
        dir: tmp.clone(),
    };
    let subnet = format!("10.77.{octet}.0/24");
    let app = TestApp::with_lab_and_ssh(&tmp.join("svc"), &guard.bridge, &subnet).await;
    let owner_key = ClientKey::generate().unwrap();
    let lab = byo_lab(&tmp.join("hostlab"), &guard.bridge, &subnet, &owner_key);
    let host = kubeforge_tests::hosts::boot(&lab, &format!("kfs{octet}-dead"), &owner_key).await;
    let admin = app.token("platform", Role::PlatformAdmin);
    let host_id =
        kubeforge_tests::hosts::register(&app, &admin, &host, json!({"gpu": "false"})).await;
    let service_key = app
        .app
        .access
        .as_ref()
        .expect("machine access")
        .client_key
        .public_key_line()
        .to_string();
    let service_body = service_key.split_whitespace().nth(1).unwrap().to_string();

    // A worker machine of a cluster claims the host.
    let owner = app.token("acme", Role::Admin);
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&owner),
            Some(create_body(&format!("dead{octet}"))),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let cluster = Uuid::parse_str(r.body["cluster"]["id"].as_str().unwrap()).unwrap();
    let ledger_row = |name: &'static str| {
        let pool = app.pool.clone();
        async move {
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO machines (id, tenant, cluster_id, role, name, provider, machine_type, state)
                 VALUES ($1, 'acme', $2, 'worker', $3, 'ssh', 'small', 'pending')",
            )
            .bind(id)
            .bind(cluster)
            .bind(name)
            .execute(&pool)
            .await
            .unwrap();
            id
        }
    };
    let request = |id: Uuid, name: &str| {
        MachineRequest::new(
            id,
            name,
            "acme",
            cluster,
            MachineRole::Worker,
            MachineType::SMALL,
            Some("default"),
            ProviderSpec::Ssh {},
        )
    };
    let provider = app.app.providers.get("ssh").expect("the ssh provider");
    let first = ledger_row("w1").await;
    provider.create(&request(first, "w1")).await.unwrap();
    let keys = host.run("cat /root/.ssh/authorized_keys").await;
    assert!(keys.iter().any(|l| l.contains(&service_body)), "{keys:?}");

    // The host dies; its machine leaves anyway.
    lab.power_off(host.request.id).await.unwrap();
    let t = Instant::now();
    provider
        .delete(first)
        .await
        .expect("delete does not wait for a dead host");
    println!("released a dead host in {:?}", t.elapsed());
    let listed = hosts(&app, &admin).await;
    let h = listed.iter().find(|h| h["id"] == host_id.as_str()).unwrap();
    assert_eq!(h["claimed_by"], Value::Null, "{h}");
    assert_eq!(h["problem"]["code"], "wipe_pending", "{h}");
    // Nobody else gets it while it holds the last tenant's data.
    let second = ledger_row("w2").await;
    let err = provider.create(&request(second, "w2")).await.unwrap_err();
    assert!(
        matches!(&err, kubeforge::providers::ProviderError::NoCapacity(_)),
        "{err:?}"
    );
    assert_eq!(
        provider.upkeep().await.unwrap(),
        Some(Duration::from_secs(30))
    );

    // It answers again (the lab starts the same machine, with its disk):
    // upkeep wipes it, and it is free and claimable.
    let mut again = lab.create(&host.request).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while again.state != ProviderMachineState::Running {
        assert!(Instant::now() < deadline, "the host did not come back");
        tokio::time::sleep(Duration::from_millis(500)).await;
        again = lab.get(host.request.id).await.unwrap().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while provider.upkeep().await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "upkeep did not wipe the host");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let listed = hosts(&app, &admin).await;
    let h = listed.iter().find(|h| h["id"] == host_id.as_str()).unwrap();
    assert_eq!(h["problem"], Value::Null, "{h}");
    let keys = host.run("cat /root/.ssh/authorized_keys").await;
    assert!(!keys.iter().any(|l| l.contains(&service_body)), "{keys:?}");
    let identity = host
        .run("cat /etc/kubeforge/machine.json 2>/dev/null || true")
        .await;
    assert!(
        !identity.iter().any(|l| l.contains(&first.to_string())),
        "{identity:?}"
    );
    provider.create(&request(second, "w2")).await.unwrap();
    drop(guard);
}
