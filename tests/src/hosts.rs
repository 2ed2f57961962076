//! Bring-your-own hosts for the `ssh` provider's lab tests: lab machines
//! WITHOUT the service's binaries bound in, trusting only a key their
//! "owner" holds, registered through `POST /v1/hosts`; commands on them
//! with the owner's key; and [`host_state`], a read-only picture of a host
//! to compare before a join and after the wipe.

use axum::http::Method;
use kubeforge::providers::lab::{LabConfig, LabProvider};
use kubeforge::providers::{MachineRequest, Provider, ProviderMachineState};
use kubeforge::ssh::{ClientKey, Redactor, SshExecutor, SshTarget};
use kubeforge_cluster::pools::MachineRole;
use kubeforge_cluster::{MachineType, ProviderSpec};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::TestApp;

/// A lab machine standing in for a platform team's own server.
pub struct ByoHost {
    pub name: String,
    pub address: String,
    pub host_key: String,
    /// Its owner's key: the credentials registered with Kubeforge.
    pub key: ClientKey,
    /// What the lab made it from: `create` with it again starts it after
    /// a power-off, with its disk.
    pub request: MachineRequest,
}

impl ByoHost {
    pub fn target(&self) -> SshTarget {
        SshTarget::new(self.address.clone(), "root", self.host_key.clone())
    }

    /// Runs `script` on the host as root with the owner's key; asserts it
    /// succeeds and returns its output lines.
    pub async fn run(&self, script: &str) -> Vec<String> {
        on_host(&self.target(), &self.key, script).await
    }
}

/// The lab provider that makes bring-your-own hosts: machines on `bridge`
/// with no binaries bound in, trusting only `owner`'s key.
pub fn byo_lab(state_dir: &Path, bridge: &str, subnet: &str, owner: &ClientKey) -> LabProvider {
    let image = kubeforge::server::lab_image(&kubeforge::server::cache_dir())
        .expect("no lab image: run scripts/build-lab-image");
    LabProvider::new(LabConfig {
        image_rootfs: image,
        state_dir: state_dir.to_path_buf(),
        bridge: bridge.to_string(),
        subnet: subnet.parse().unwrap(),
        authorized_key: owner.public_key_line().to_string(),
        bind_ro: vec![],
    })
    .unwrap()
}

/// Boots one bring-your-own host named `name` and waits until it runs.
pub async fn boot(lab: &LabProvider, name: &str, owner: &ClientKey) -> ByoHost {
    let req = MachineRequest::new(
        Uuid::new_v4(),
        name,
        "platform",
        Uuid::new_v4(),
        MachineRole::ControlPlane,
        MachineType::SMALL,
        None,
        ProviderSpec::Lab {},
    );
    let mut pm = lab.create(&req).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pm.state != ProviderMachineState::Running {
        assert!(Instant::now() < deadline, "host {name} did not boot");
        tokio::time::sleep(Duration::from_millis(500)).await;
        pm = lab.get(req.id).await.unwrap().unwrap();
    }
    let host = ByoHost {
        name: name.to_string(),
        address: pm.address.unwrap(),
        host_key: pm.host_key.unwrap(),
        key: ClientKey::from_openssh(owner.private_key_openssh()).unwrap(),
        request: req.clone(),
    };
    // A stand-in for a server of its own: without the lab's identity file,
    // and with etcd as its package leaves it (the lab masks it).
    host.run("rm -rf /etc/kubeforge; systemctl unmask --quiet etcd.service")
        .await;
    // Booted means sshd answers; wait for systemd to finish starting too,
    // so the state taken before is not of a machine still booting.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = host
            .run("systemctl is-system-running --wait 2>/dev/null || true")
            .await;
        if out.iter().any(|l| l == "running" || l == "degraded") {
            break;
        }
        assert!(Instant::now() < deadline, "{name} never settled: {out:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And its addresses: an IPv6 link-local address is `tentative` until
    // duplicate address detection ends, and then gains a local route; a
    // state taken before that differs from every later one.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = host
            .run("ip -o addr show | grep -c tentative || true")
            .await;
        if out.iter().any(|l| l.trim() == "0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: addresses still tentative: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    host
}

/// Registers `host` through `POST /v1/hosts` as a platform admin with
/// `labels`; returns the host's id.
pub async fn register(app: &TestApp, admin: &str, host: &ByoHost, labels: Value) -> String {
    register_with(app, admin, host, json!({ "labels": labels })).await
}

/// Registers `host` with `extra` fields in the request (`labels`,
/// `capacity`); returns the host's id.
pub async fn register_with(app: &TestApp, admin: &str, host: &ByoHost, extra: Value) -> String {
    let mut body = json!({
        "address": host.address,
        "user": "root",
        "credentials": {"private_key": host.key.private_key_openssh()},
        "host_key": host.host_key,
    });
    for (k, v) in extra.as_object().expect("extra fields are an object") {
        body[k] = v.clone();
    }
    let r = app
        .call(Method::POST, "/v1/hosts", Some(admin), Some(body), &[])
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["host"]["id"].as_str().unwrap().to_string()
}

/// `GET /v1/hosts` as a platform admin.
pub async fn list(app: &TestApp, admin: &str) -> Vec<Value> {
    let r = app
        .call(Method::GET, "/v1/hosts", Some(admin), None, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["items"].as_array().unwrap().clone()
}

/// Runs `script` on a host as root with `key`; asserts it succeeds.
pub async fn on_host(target: &SshTarget, key: &ClientKey, script: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let code = SshExecutor::new(1)
        .run(
            target,
            &key.auth(),
            script,
            Duration::from_secs(60),
            &Redactor::none(),
            |_, l| lines.push(l.to_string()),
        )
        .await
        .expect("ssh to the pool host with its owner's key");
    assert_eq!(code, 0, "{script}: {lines:?}");
    lines
}

/// A host's state, by section: what a join may change and a wipe must put
/// back. Read-only.
pub type HostState = BTreeMap<String, Vec<String>>;

/// The read-only script behind [`host_state`]. Each section starts with a
/// `## name` line. What changes by itself is left out, each with its reason.
fn state_script() -> String {
    let sysctls = kubeforge_cluster::worker::RECORDED_SYSCTLS.join(" ");
    format!(
        r###"set -u
export LC_ALL=C
echo '## unit files'
systemctl list-unit-files --no-legend --no-pager | awk '{{ print $1, $2 }}'
echo '## units'
# Units that are active or failed, and their state. Left out: session and
# user units (the probe's own SSH login makes them), and
# network-online.target (a passive target: once anything wanted it, it stays
# up until reboot, starting nothing).
systemctl list-units --no-legend --no-pager --plain |
  awk '$1 !~ /^(session-[0-9]+\.scope|user@[0-9]+\.service|user-[0-9]+\.slice|user-runtime-dir@[0-9]+\.service|network-online\.target)$/ {{ print $1, $2, $3, $4 }}'
echo '## files'
# Left out: /var/lib/systemd (timers' timestamps, the random seed, the
# catalog: rewritten by systemd on its own), /var/lib/private (systemd's
# dynamic users), /var/cache and /var/log are not listed at all.
find /etc /opt /var/lib /usr/local /root/.ssh -xdev \
  \( -path /var/lib/systemd -o -path /var/lib/private \) -prune -o -printf '%y %m %p\n' 2>/dev/null
echo '## file sums'
find /etc /opt /root/.ssh -xdev -type f -exec sha256sum {{}} + 2>/dev/null
echo '## links'
# Without link counters or the kernel's per-boot numbers of interfaces.
ip -o link | sed -E 's/^[0-9]+: //; s/ link-netnsid [0-9]+//'
echo '## addresses'
# Without the interface index and the lifetimes (they count down).
ip -o addr | sed -E 's/^[0-9]+: //; s/ +valid_lft .*//'
echo '## routes'
ip route show table all
for t in filter nat mangle raw; do
  echo "## iptables $t"
  # Without counters and the save's own timestamp comments.
  iptables-save -t "$t" 2>/dev/null | grep -v '^#' | sed -E 's/ \[[0-9]+:[0-9]+\]$//'
done
echo '## mounts'
# Root, mount point, options, type and source; mount ids change by themselves.
awk '{{ for (i = 7; $i != "-"; i++); print $4, $5, $6, $(i+1), $(i+2) }}' /proc/self/mountinfo
echo '## sysctls'
for key in {sysctls}; do
  f=/proc/sys/${{key//.//}}
  if [[ -r $f ]]; then echo "$key $(<"$f")"; fi
done
echo '## cgroups'
# The machine's cgroups: those its processes are in (a container may see
# the host's whole hierarchy, where other machines come and go), and the
# directories under its own cgroup when it has one. Left out: the probe's
# own session (its SSH login's scope).
me=$(ps -o sid= -p $$)
for p in $(ps -e -o pid=,sid= | awk -v me="$me" '$2 != me {{ print $1 }}'); do
  cat "/proc/$p/cgroup" 2>/dev/null
done | grep -v 'session-[0-9]*\.scope' | sed -E 's/^[0-9]+://'
own=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {{ print $3 }}' /proc/1/cgroup)
if [[ $own != / ]]; then
  for h in /sys/fs/cgroup/*/; do
    find "$h${{own#/}}" -mindepth 1 -type d -printf "$h %P\n" 2>/dev/null
  done
fi
echo '## processes'
# Names of running processes, without the probe's own session.
me=$(ps -o sid= -p $$)
ps -e -o sid=,comm= | awk -v me="$me" '$1 != me {{ print $2 }}'
"###
    )
}

/// Reads `host`'s state with its owner's key (see [`state_script`]).
pub async fn host_state(host: &ByoHost) -> HostState {
    let lines = host
        .run(&format!(
            "bash -c {}",
            kubeforge::ssh::shell_quote(&state_script())
        ))
        .await;
    let mut state = HostState::new();
    let mut section = String::new();
    for line in lines {
        if let Some(name) = line.strip_prefix("## ") {
            section = name.to_string();
            state.entry(section.clone()).or_default();
        } else {
            state.entry(section.clone()).or_default().push(line);
        }
    }
    for lines in state.values_mut() {
        lines.sort();
        lines.dedup();
    }
    state
}

/// Panics with a unified diff (`diff -u`) when `after` differs from
/// `before`.
pub fn assert_same_state(what: &str, before: &HostState, after: &HostState) {
    if before == after {
        return;
    }
    let dir = std::env::temp_dir().join(format!("host-state-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let flat = |s: &HostState| {
        s.iter()
            .flat_map(|(k, v)| std::iter::once(format!("## {k}")).chain(v.iter().cloned()))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    };
    std::fs::write(dir.join("before"), flat(before)).unwrap();
    std::fs::write(dir.join("after"), flat(after)).unwrap();
    let out = std::process::Command::new("diff")
        .arg("-u")
        .arg(dir.join("before"))
        .arg(dir.join("after"))
        .output()
        .expect("diff");
    let _ = std::fs::remove_dir_all(&dir);
    panic!(
        "{what}: the host's state differs from before:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
