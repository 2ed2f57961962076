//! The `lab` provider: machines on this Linux host, each a systemd-nspawn
//! container booted from a cached Debian bookworm image.
//!
//! A machine is a directory `<state_dir>/machines/<ledger id>/` holding its
//! `meta.json` (name, cluster, tags, address, pid, host key), the overlay upper
//! dir with its identity (hostname, static address on the lab bridge, a
//! freshly generated SSH host key, the service's authorized key) and the
//! nspawn log. The image itself is shared read-only (`--overlay`).
//!
//! The provider contract holds as follows:
//! - create is keyed by the ledger id: an existing directory is reused and
//!   its container started again if it is not running; never a second one;
//! - the cluster id is in `meta.json`, so `list_by_cluster` finds every
//!   machine of a cluster whatever the ledger says;
//! - delete kills the container's PID 1 (its whole PID namespace ends,
//!   then nspawn exits and its mounts and veth go with it) and removes the
//!   directory; deleting an unknown id succeeds;
//! - the SSH host key is generated here before boot, so it is pinned from
//!   the start and never learned over the network.
//!
//! Everything a machine makes on the host is named from its ledger id, never
//! from its name (cluster names are unique only within a tenant, so two
//! tenants' `web` clusters have machines of the same name): the nspawn
//! machine and its veth ([`host_machine_name`]), its cgroups
//! (`/sys/fs/cgroup/<controller>/kubeforge/<ledger id>`, which its kubelet's
//! `cgroupRoot` names too) and its provider id (`lab:<ledger id>`). The
//! name is only the machine's hostname, inside its own namespaces.
//!
//! Machine types map to cgroup v1 memory and CPU limits when the host lets
//! us create cgroups; otherwise machines run unlimited and say so in the log.
//! Root on Linux is required; elsewhere `LabProvider::new` explains why not.

use async_trait::async_trait;
use ipnet::Ipv4Net;
use kubeforge_cluster::userdata::{MachineIdentity, IDENTITY_FILE};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;
use uuid::Uuid;

use super::{
    Capabilities, MachineRequest, Provider, ProviderError, ProviderMachine, ProviderMachineState,
    ProviderNetwork,
};

/// Where and how lab machines run.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// The image's root filesystem (read-only lower layer).
    pub image_rootfs: PathBuf,
    /// Machines' directories live under `<state_dir>/machines`.
    pub state_dir: PathBuf,
    /// The host bridge machines attach to.
    pub bridge: String,
    /// The bridge's network; the host takes the first address.
    pub subnet: Ipv4Net,
    /// The service's SSH public key line, authorized for root.
    pub authorized_key: String,
    /// Host directories bound read-only into every machine: (host, guest).
    pub bind_ro: Vec<(PathBuf, String)>,
}

/// A file a lab machine starts with (see [`LabProvider::create_at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabFile {
    /// Absolute path inside the machine.
    pub path: String,
    pub contents: String,
    pub mode: u32,
}

/// Writes `rel` under a machine's overlay upper dir with `mode`.
fn write_upper(upper: &Path, rel: &str, contents: &str, mode: u32) -> Result<(), ProviderError> {
    use std::os::unix::fs::PermissionsExt;
    let path = upper.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(retryable)?;
    }
    std::fs::write(&path, contents).map_err(retryable)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(retryable)
}

/// What a machine's directory records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: Uuid,
    cluster_id: Uuid,
    name: String,
    address: Ipv4Addr,
    machine_type: String,
    host_key: String,
    /// The machine's tags (`MachineRequest::tags`).
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
    /// The nspawn process, while it runs.
    pid: Option<i32>,
    /// The name of the machine's cgroups under `kubeforge/`: its ledger id.
    /// Absent in machines made before ids named them (their name then).
    #[serde(default)]
    cgroup: Option<String>,
}

impl Meta {
    fn cgroup_leaf(&self) -> &str {
        self.cgroup.as_deref().unwrap_or(&self.name)
    }
}

/// The lab provider (see the module doc).
pub struct LabProvider {
    cfg: LabConfig,
    /// Serializes creates and deletes in this process (address allocation).
    lock: tokio::sync::Mutex<()>,
}

fn retryable(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Retryable(e.to_string())
}

fn permanent(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Permanent(e.to_string())
}

async fn sh(cmd: &mut Command, what: &str) -> Result<String, ProviderError> {
    let out = cmd
        .output()
        .await
        .map_err(|e| retryable(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(retryable(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn pid_alive(pid: i32) -> bool {
    // A zombie is not alive; state is the third field of /proc/PID/stat.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn is_nspawn(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("systemd-nspawn"))
        .unwrap_or(false)
}

/// The children of `pid` (the container's PID 1 is nspawn's child).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

impl LabProvider {
    /// Checks the host can run lab machines and prepares the state dir.
    pub fn new(cfg: LabConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cfg!(target_os = "linux"),
            "the lab provider needs Linux (systemd-nspawn)"
        );
        anyhow::ensure!(
            nix::unistd::geteuid().is_root(),
            "the lab provider needs root (systemd-nspawn, bridges, overlays)"
        );
        anyhow::ensure!(
            which("systemd-nspawn"),
            "systemd-nspawn not found: install the systemd-container package"
        );
        anyhow::ensure!(
            which("ssh-keygen"),
            "ssh-keygen not found: install the openssh-client package"
        );
        anyhow::ensure!(
            cfg.image_rootfs.join("sbin/init").exists()
                || cfg.image_rootfs.join("lib/systemd/systemd").exists(),
            "no lab image at {}: build it with scripts/build-lab-image",
            cfg.image_rootfs.display()
        );
        anyhow::ensure!(
            cfg.subnet.prefix_len() <= 28,
            "the lab subnet {} is too small",
            cfg.subnet
        );
        std::fs::create_dir_all(cfg.state_dir.join("machines"))?;
        // Every lab machine's systemd, containerd and kubelet take inotify
        // instances from root's host-wide budget.
        if let Some(limit) = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|l| *l < 1024)
        {
            tracing::warn!(
                limit,
                "fs.inotify.max_user_instances is low: at the default 128 about nine lab \
                 workers run before containerd on the next fails with \"too many open files\"; \
                 raise it with sysctl fs.inotify.max_user_instances=1024"
            );
        }
        Ok(Self {
            cfg,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    fn machine_dir(&self, id: Uuid) -> PathBuf {
        self.cfg.state_dir.join("machines").join(id.to_string())
    }

    fn gateway(&self) -> Ipv4Addr {
        self.cfg
            .subnet
            .hosts()
            .next()
            .unwrap_or_else(|| self.cfg.subnet.network())
    }

    fn read_meta(&self, id: Uuid) -> Option<Meta> {
        let text = std::fs::read_to_string(self.machine_dir(id).join("meta.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write_meta(&self, meta: &Meta) -> Result<(), ProviderError> {
        let dir = self.machine_dir(meta.id);
        let tmp = dir.join("meta.json.tmp");
        let text = serde_json::to_string_pretty(meta).map_err(permanent)?;
        std::fs::write(&tmp, text).map_err(retryable)?;
        std::fs::rename(&tmp, dir.join("meta.json")).map_err(retryable)
    }

    fn all_meta(&self) -> Vec<Meta> {
        let Ok(entries) = std::fs::read_dir(self.cfg.state_dir.join("machines")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| Uuid::parse_str(&e.file_name().to_string_lossy()).ok())
            .filter_map(|id| self.read_meta(id))
            .collect()
    }

    fn allocate_address(&self) -> Result<Ipv4Addr, ProviderError> {
        let used: Vec<Ipv4Addr> = self.all_meta().iter().map(|m| m.address).collect();
        self.cfg
            .subnet
            .hosts()
            .skip(9) // .1 is the host; keep .2-.9 for people poking around
            .find(|a| !used.contains(a))
            .ok_or_else(|| {
                ProviderError::NoCapacity(format!("no free address left in {}", self.cfg.subnet))
            })
    }

    /// Creates the bridge with the gateway address if it is missing.
    async fn ensure_bridge(&self) -> Result<(), ProviderError> {
        let br = &self.cfg.bridge;
        let exists = Command::new("ip")
            .args(["link", "show", br])
            .output()
            .await
            .map_err(retryable)?
            .status
            .success();
        if !exists {
            sh(
                Command::new("ip").args(["link", "add", br, "type", "bridge"]),
                "creating the lab bridge",
            )
            .await?;
        }
        let cidr = format!("{}/{}", self.gateway(), self.cfg.subnet.prefix_len());
        let addrs = sh(
            Command::new("ip").args(["-4", "addr", "show", "dev", br]),
            "reading the bridge",
        )
        .await?;
        if !addrs.contains(&cidr) {
            sh(
                Command::new("ip").args(["addr", "add", &cidr, "dev", br]),
                "addressing the bridge",
            )
            .await?;
        }
        sh(
            Command::new("ip").args(["link", "set", br, "up"]),
            "raising the bridge",
        )
        .await?;
        Ok(())
    }

    /// Writes the machine's identity into its overlay upper dir.
    async fn prepare_upper(&self, meta: &Meta) -> Result<(), ProviderError> {
        let upper = self.machine_dir(meta.id).join("upper");
        let w = |rel: &str, contents: &str, mode: u32| write_upper(&upper, rel, contents, mode);
        w("etc/hostname", &format!("{}\n", meta.name), 0o644)?;
        w(
            "etc/systemd/network/10-host0.network",
            &format!(
                "[Match]\nName=host0\n\n[Network]\nAddress={}/{}\nGateway={}\n",
                meta.address,
                self.cfg.subnet.prefix_len(),
                self.gateway()
            ),
            0o644,
        )?;
        w(
            "root/.ssh/authorized_keys",
            &format!("{}\n", self.cfg.authorized_key.trim()),
            0o600,
        )?;
        let identity = MachineIdentity {
            id: meta.id,
            cluster_id: meta.cluster_id,
            name: meta.name.clone(),
            tags: meta.tags.clone(),
        };
        w(
            IDENTITY_FILE.trim_start_matches('/'),
            &identity.to_json(),
            0o644,
        )?;
        Ok(())
    }

    /// Generates the machine's SSH host key; returns the public key line.
    async fn generate_host_key(&self, id: Uuid) -> Result<String, ProviderError> {
        let ssh_dir = self.machine_dir(id).join("upper/etc/ssh");
        std::fs::create_dir_all(&ssh_dir).map_err(retryable)?;
        let key = ssh_dir.join("ssh_host_ed25519_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(ssh_dir.join("ssh_host_ed25519_key.pub"));
        sh(
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    &format!("kubeforge-{id}"),
                    "-f",
                ])
                .arg(&key),
            "generating the host key",
        )
        .await?;
        let public =
            std::fs::read_to_string(ssh_dir.join("ssh_host_ed25519_key.pub")).map_err(retryable)?;
        let mut parts = public.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(t), Some(k)) => Ok(format!("{t} {k}")),
            _ => Err(permanent("ssh-keygen wrote an unreadable public key")),
        }
    }

    /// Puts the container's processes under memory and CPU limits.
    fn cgroup_setup(&self, meta: &Meta) -> Vec<PathBuf> {
        let (cpus, mem_mib) = kubeforge_cluster::MachineType::parse(&meta.machine_type)
            .map(|t| t.resources())
            .unwrap_or((1, 2048));
        let mut dirs = Vec::new();
        let memory = PathBuf::from("/sys/fs/cgroup/memory/kubeforge").join(meta.cgroup_leaf());
        if std::fs::create_dir_all(&memory).is_ok()
            && std::fs::write(
                memory.join("memory.limit_in_bytes"),
                (u64::from(mem_mib) << 20).to_string(),
            )
            .is_ok()
        {
            dirs.push(memory);
        }
        let cpu = PathBuf::from("/sys/fs/cgroup/cpu/kubeforge").join(meta.cgroup_leaf());
        if std::fs::create_dir_all(&cpu).is_ok()
            && std::fs::write(cpu.join("cpu.cfs_period_us"), "100000").is_ok()
            && std::fs::write(
                cpu.join("cpu.cfs_quota_us"),
                (u64::from(cpus) * 100_000).to_string(),
            )
            .is_ok()
        {
            dirs.push(cpu);
        }
        if dirs.len() < 2 {
            tracing::warn!(machine = %meta.name, id = %meta.id, "cgroup limits unavailable on this host; machine runs unlimited");
        }
        dirs
    }

    /// Boots the container in the background; returns the nspawn pid.
    async fn boot(&self, meta: &Meta) -> Result<i32, ProviderError> {
        self.ensure_bridge().await?;
        let dir = self.machine_dir(meta.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nspawn.log"))
            .map_err(retryable)?;
        let log_err = log.try_clone().map_err(retryable)?;
        let cgroups = self.cgroup_setup(meta);
        // The shell joins the cgroups, then becomes nspawn, so every process
        // of the machine starts inside its limits.
        let mut script = String::from("set -e; ");
        for c in &cgroups {
            script.push_str(&format!("echo $$ > '{}/cgroup.procs'; ", c.display()));
        }
        script.push_str("exec \"$@\"");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .arg("systemd-nspawn")
            .arg(format!("--directory={}", self.cfg.image_rootfs.display()))
            .arg(format!(
                "--overlay={}:{}:/",
                self.cfg.image_rootfs.display(),
                dir.join("upper").display()
            ))
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                &format!("--capability={}", EXTRA_CAPABILITIES.join(",")),
                // runc gives every container a session keyring; nspawn's
                // default seccomp filter refuses keyctl with EPERM.
                "--system-call-filter=@keyring",
                "--console=read-only",
            ])
            .arg(format!("--machine={}", host_machine_name(meta.id)))
            // Its own name inside (as /etc/hostname says); on the host's
            // process list it tells a machine's nspawn by name.
            .arg(format!("--hostname={}", meta.name))
            .arg(format!("--network-bridge={}", self.cfg.bridge));
        for (host, guest) in &self.cfg.bind_ro {
            cmd.arg(format!("--bind-ro={}:{guest}", host.display()));
        }
        // Not SYSTEMD_NSPAWN_API_VFS_WRITABLE: with a writable /sys,
        // networkd inside waits for a udev that never comes and host0 stays
        // down. Node bootstrap remounts what kubelet needs read-write.
        cmd.stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| retryable(format!("starting systemd-nspawn: {e}")))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| retryable("systemd-nspawn exited at once"))?;
        // Reap it whenever it ends; the machine outlives this handle.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        tracing::info!(machine = %meta.name, address = %meta.address, pid, "lab machine booting");
        Ok(pid)
    }

    fn running_pid(meta: &Meta) -> Option<i32> {
        meta.pid.filter(|p| pid_alive(*p) && is_nspawn(*p))
    }

    async fn ssh_port_open(address: Ipv4Addr) -> bool {
        let addr = SocketAddr::from((address, 22));
        matches!(
            tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr)
            )
            .await,
            Ok(Ok(_))
        )
    }

    async fn observe(&self, meta: &Meta) -> ProviderMachine {
        let state = match Self::running_pid(meta) {
            None => ProviderMachineState::Stopped,
            Some(_) if Self::ssh_port_open(meta.address).await => ProviderMachineState::Running,
            Some(_) => ProviderMachineState::Pending,
        };
        ProviderMachine {
            id: meta.id,
            cluster_id: meta.cluster_id,
            provider_id: format!("lab:{}", meta.id),
            address: Some(meta.address.to_string()),
            host_key: Some(meta.host_key.clone()),
            state,
        }
    }

    /// Creates (or starts again) a machine at `address`, chosen by someone
    /// else, starting with `files` written over the image and the lab's own
    /// identity files. Used where another system owns the addressing and
    /// the first-boot contents: the tests' EC2 instances on the lab bridge,
    /// whose private address an EC2 API assigned and whose user-data says
    /// what the machine starts with. Otherwise as `create`.
    pub async fn create_at(
        &self,
        req: &MachineRequest,
        address: Ipv4Addr,
        files: &[LabFile],
    ) -> Result<ProviderMachine, ProviderError> {
        self.create_placed(req, Some(address), files).await
    }

    /// `address` if a machine may take it: in the subnet, not the
    /// gateway, the network or broadcast address, and free.
    fn check_address(&self, address: Ipv4Addr) -> Result<Ipv4Addr, ProviderError> {
        let net = self.cfg.subnet;
        if !net.contains(&address)
            || address == net.network()
            || address == net.broadcast()
            || address == self.gateway()
        {
            return Err(permanent(format!(
                "{address} is not a machine address in {net}"
            )));
        }
        if let Some(m) = self.all_meta().into_iter().find(|m| m.address == address) {
            return Err(retryable(format!(
                "{address} is taken by lab machine {}",
                m.id
            )));
        }
        Ok(address)
    }

    /// `create`, at `placed` (else an address of the lab's choosing), with
    /// `files` written after the lab's own identity files.
    async fn create_placed(
        &self,
        req: &MachineRequest,
        placed: Option<Ipv4Addr>,
        files: &[LabFile],
    ) -> Result<ProviderMachine, ProviderError> {
        let _guard = self.lock.lock().await;
        let mut meta = match self.read_meta(req.id) {
            Some(m) => m,
            None => {
                let dir = self.machine_dir(req.id);
                // A directory without meta.json is an interrupted create: start over.
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(dir.join("upper")).map_err(retryable)?;
                let address = match placed {
                    Some(a) => self.check_address(a)?,
                    None => self.allocate_address()?,
                };
                let host_key = self.generate_host_key(req.id).await?;
                let meta = Meta {
                    id: req.id,
                    cluster_id: req.cluster_id,
                    name: req.name.clone(),
                    address,
                    machine_type: req.machine_type.as_str().to_string(),
                    host_key,
                    tags: req.tags.clone(),
                    pid: None,
                    cgroup: Some(req.id.to_string()),
                };
                self.prepare_upper(&meta).await?;
                let upper = dir.join("upper");
                for f in files {
                    let rel = f.path.trim_start_matches('/');
                    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
                        return Err(permanent(format!(
                            "file path {:?} leaves the machine",
                            f.path
                        )));
                    }
                    write_upper(&upper, rel, &f.contents, f.mode)?;
                }
                self.write_meta(&meta)?;
                meta
            }
        };
        if Self::running_pid(&meta).is_none() {
            meta.pid = Some(self.boot(&meta).await?);
            self.write_meta(&meta)?;
        }
        Ok(self.observe(&meta).await)
    }

    /// Powers a machine off the hard way (its PID 1 killed), as a crash
    /// would. The directory stays, so `create` boots it again.
    pub async fn power_off(&self, id: Uuid) -> Result<(), ProviderError> {
        let Some(meta) = self.read_meta(id) else {
            return Ok(());
        };
        if let Some(pid) = Self::running_pid(&meta) {
            stop_nspawn(pid).await;
        }
        Ok(())
    }
}

/// Ends a container: SIGKILL its PID 1 (the whole PID namespace goes), then
/// wait for nspawn to exit, killing it too if it lingers.
async fn stop_nspawn(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for child in children(pid) {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    for _ in 0..100 {
        if !pid_alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    for _ in 0..50 {
        if !pid_alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::error!(pid, "systemd-nspawn did not exit after SIGKILL");
}

/// Stops, the hard way, every lab machine whose overlay lives under `dir`
/// (a state dir, or a test's temporary dir), whoever started it. Blocking;
/// for cleanup paths such as a failed test's guard. Returns how many.
pub fn stop_machines_under(dir: &Path) -> usize {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let needle = format!(":{}", dir.display());
    let mut stopped = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.contains("systemd-nspawn") || !cmd.contains(&needle) {
            continue;
        }
        for child in children(pid) {
            let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
        }
        for _ in 0..50 {
            if !pid_alive(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        stopped += 1;
    }
    stopped
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).is_file()))
}

/// Capabilities a lab machine gets beyond systemd-nspawn's default set
/// (which already has CAP_SYS_ADMIN, CAP_MKNOD, CAP_NET_RAW, CAP_SYS_PTRACE,
/// CAP_SYS_RESOURCE and the file and identity ones kubelet, containerd and
/// runc use). CAP_NET_ADMIN: kube-proxy's and the pod network's iptables
/// and routes (nspawn grants it with a private network anyway; named so
/// the set is all here). CAP_SYSLOG: kubelet's OOM watcher reads
/// `/dev/kmsg`, which the host restricts (`kernel.dmesg_restrict`).
/// Everything else stays out of the bounding set, so no pod, privileged or
/// not, gets it: CAP_SYS_MODULE (kernel modules), CAP_SYS_RAWIO, CAP_SYS_TIME,
/// CAP_BPF, CAP_PERFMON, CAP_MAC_ADMIN, CAP_IPC_LOCK, CAP_WAKE_ALARM and the
/// rest of what `--capability=all` gave (docs/SECURITY.md).
pub const EXTRA_CAPABILITIES: &[&str] = &["CAP_NET_ADMIN", "CAP_SYSLOG"];

/// The lab provider's kind.
pub const KIND: &str = "lab";

#[async_trait]
impl Provider for LabProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ssh_bootstrap: true,
            hosts_workers: true,
            lab_machines: true,
            kube_binaries_bound: true,
        }
    }

    /// The bridge's subnet, the host's own address on it the gateway.
    fn networks(&self) -> Vec<ProviderNetwork> {
        vec![ProviderNetwork {
            provider: "lab".into(),
            range: self.cfg.subnet,
            gateway: Some(self.gateway()),
        }]
    }

    async fn create(&self, req: &MachineRequest) -> Result<ProviderMachine, ProviderError> {
        self.create_placed(req, None, &[]).await
    }

    async fn get(&self, id: Uuid) -> Result<Option<ProviderMachine>, ProviderError> {
        match self.read_meta(id) {
            Some(meta) => Ok(Some(self.observe(&meta).await)),
            None => Ok(None),
        }
    }

    async fn delete(&self, id: Uuid) -> Result<(), ProviderError> {
        // Stopping a machine takes seconds to tens of seconds (its systemd
        // shuts kubelet and containerd down). The lock guards only the
        // machine directories (whose meta holds the addresses in use), so
        // it is taken for the removal alone: a create for another machine
        // (an autoscaler's scale-up while a scale-down's node goes) does
        // not wait for the stop. This machine's address stays taken until
        // its directory is gone.
        let dir = self.machine_dir(id);
        if let Some(meta) = self.read_meta(id) {
            if let Some(pid) = Self::running_pid(&meta) {
                stop_nspawn(pid).await;
            }
            // The machine's cgroups, and any a kubelet made beneath them.
            for c in CGROUP_CONTROLLERS {
                remove_cgroup_tree(
                    &Path::new("/sys/fs/cgroup")
                        .join(c)
                        .join("kubeforge")
                        .join(meta.cgroup_leaf()),
                );
            }
        }
        let _guard = self.lock.lock().await;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(retryable(format!("removing {}: {e}", dir.display()))),
        }
    }

    async fn list_by_cluster(
        &self,
        cluster_id: Uuid,
    ) -> Result<Vec<ProviderMachine>, ProviderError> {
        let mut out = Vec::new();
        for meta in self
            .all_meta()
            .into_iter()
            .filter(|m| m.cluster_id == cluster_id)
        {
            out.push(self.observe(&meta).await);
        }
        Ok(out)
    }
}

/// The machine's name on the host (nspawn's `--machine`, which also names
/// the host end of its veth, `vb-<name>`, at most 15 characters): from the
/// ledger id, never from the cluster's name, which is unique only within a
/// tenant. `kf` and the id's last ten hex digits (random in v4 and v7 ids).
pub fn host_machine_name(id: Uuid) -> String {
    let hex = id.simple().to_string();
    format!("kf{}", &hex[hex.len() - 10..])
}

/// Every cgroup v1 hierarchy a machine or its kubelet may make directories in.
const CGROUP_CONTROLLERS: &[&str] = &[
    "memory", "cpu", "cpuset", "cpuacct", "blkio", "devices", "freezer", "pids", "systemd",
];

/// Removes a cgroup directory and its descendants, deepest first (a cgroup
/// with children cannot be removed). Best effort: a cgroup that still has
/// processes stays.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_come_from_the_ledger_id_and_fit_a_veth() {
        let a = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
        let b = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);
        assert_eq!(host_machine_name(a), "kf0000000001");
        assert_ne!(host_machine_name(a), host_machine_name(b));
        for _ in 0..100 {
            let n = host_machine_name(Uuid::now_v7());
            // nspawn names the host end of the veth `vb-<machine>`: 15 at most.
            assert!(format!("vb-{n}").len() <= 15, "{n}");
        }
    }
}
