//! The `lab` provider on this host: a real systemd-nspawn machine boots
//! from the cached image, answers SSH with the host key pinned at
//! creation, survives a repeated create without a second machine, comes
//! back after a power-off, and leaves nothing behind when deleted.
//!
//! Needs root, systemd-nspawn and the image from `scripts/build-lab-image`
//! (the test command installs and builds both). Traffic goes only to the
//! machine on the bridge this test creates.

use kubeforge::providers::lab::{LabConfig, LabProvider};
use kubeforge::providers::{MachineRequest, Provider, ProviderMachineState};
use kubeforge_cluster::pools::MachineRole;
use kubeforge_cluster::{MachineType, ProviderSpec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The newest complete lab image in the cache.
fn lab_image() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBEFORGE_LAB_IMAGE") {
        return PathBuf::from(p);
    }
    kubeforge::server::lab_image(&kubeforge::server::cache_dir())
        .expect("no lab image in the cache: run scripts/build-lab-image (the test command does)")
}

/// Removes the test's bridge, and stops any machine the test left
/// running (a failed assertion must not leak containers).
struct Bridge(String, PathBuf);

impl Drop for Bridge {
    fn drop(&mut self) {
        kubeforge::providers::lab::stop_machines_under(&self.1);
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen")
        .success();
    assert!(ok);
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub")).expect("public key");
    (key, public.trim().to_string())
}

fn ssh(key: &Path, known_hosts: &Path, address: &str, command: &str) -> std::process::Output {
    Command::new("ssh")
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
        ])
        .arg(format!("root@{address}"))
        .arg(command)
        .output()
        .expect("ssh")
}

async fn wait_for(provider: &LabProvider, id: Uuid, state: ProviderMachineState, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let m = provider
            .get(id)
            .await
            .expect("get")
            .expect("machine exists");
        if m.state == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "machine {id} not {state:?} after {within:?} (is {:?})",
            m.state
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test]
async fn lab_machine_boots_answers_ssh_and_deletes_cleanly() {
    let tmp =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lab-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (key, public) = keygen(&tmp);
    let octet = 100 + (Uuid::new_v4().as_u128() % 100) as u8;
    let bridge = Bridge(format!("kft{octet}"), tmp.clone());
    let provider = LabProvider::new(LabConfig {
        image_rootfs: lab_image(),
        state_dir: tmp.join("state"),
        bridge: bridge.0.clone(),
        subnet: format!("10.77.{octet}.0/24").parse().unwrap(),
        authorized_key: public,
        bind_ro: vec![],
    })
    .expect("lab provider");

    let cluster_id = Uuid::now_v7();
    let id = Uuid::now_v7();
    let req = MachineRequest::new(
        id,
        &format!("labtest-{octet}-cp-0"),
        "acme",
        cluster_id,
        MachineRole::ControlPlane,
        MachineType::SMALL,
        None,
        ProviderSpec::Lab {},
    );
    let first = provider.create(&req).await.expect("create");
    let address = first.address.clone().expect("address");
    let host_key = first.host_key.clone().expect("host key known at creation");
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.join(format!("state/machines/{id}/meta.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["tags"]["kubeforge:cluster"], cluster_id.to_string());
    assert_eq!(meta["tags"]["Name"], format!("labtest-{octet}-cp-0"));
    wait_for(
        &provider,
        id,
        ProviderMachineState::Running,
        Duration::from_secs(90),
    )
    .await;

    // SSH with exactly the pinned host key.
    let known_hosts = tmp.join("known_hosts");
    std::fs::write(&known_hosts, format!("{address} {host_key}\n")).unwrap();
    let out = ssh(
        &key,
        &known_hosts,
        &address,
        "hostname; test -d /run/systemd/system && echo systemd",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&req.name) && stdout.contains("systemd"),
        "machine said {stdout}"
    );
    // A different pinned key is refused by the real client.
    let wrong = tmp.join("wrong_known_hosts");
    let (_, other) = keygen(&tmp.join("other").tap_mkdir());
    let other_key: String = other
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(&wrong, format!("{address} {other_key}\n")).unwrap();
    assert!(!ssh(&key, &wrong, &address, "true").status.success());

    // Create again: same machine, no second container.
    let again = provider.create(&req).await.expect("create again");
    assert_eq!(again.address.as_deref(), Some(address.as_str()));
    assert_eq!(
        processes_mentioning(&format!("--hostname={}", req.name)).len(),
        1,
        "one nspawn for the machine"
    );

    // Listed under its cluster.
    let listed = provider.list_by_cluster(cluster_id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);

    // Power off: noticed as stopped; create boots it again.
    provider.power_off(id).await.unwrap();
    wait_for(
        &provider,
        id,
        ProviderMachineState::Stopped,
        Duration::from_secs(20),
    )
    .await;
    provider.create(&req).await.expect("restart");
    wait_for(
        &provider,
        id,
        ProviderMachineState::Running,
        Duration::from_secs(90),
    )
    .await;

    // Delete: nothing left: no process, no mount, no bridge port, no directory.
    provider.delete(id).await.expect("delete");
    provider.delete(id).await.expect("delete is idempotent");
    assert!(provider.get(id).await.unwrap().is_none());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&format!("--hostname={}", req.name)).is_empty() {
        assert!(
            Instant::now() < deadline,
            "nspawn still running after delete"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&id.to_string()),
        "a mount of the machine remains"
    );
    let ports = Command::new("ip")
        .args(["-o", "link", "show", "master", &bridge.0])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ports.stdout).trim().is_empty(),
        "bridge ports remain"
    );
    assert!(!tmp.join("state/machines").join(id.to_string()).exists());
    drop(bridge);
    let _ = std::fs::remove_dir_all(&tmp);
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
