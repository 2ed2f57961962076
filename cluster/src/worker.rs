//! The worker-node bundle: every file Kubeforge puts on a worker machine
//! besides its CA certificate and kubeconfigs.
//!
//! [`render_worker`] turns one node's [`WorkerBundleInput`] into containerd's
//! config, a CNI conflist template, kubelet's and kube-proxy's configs and
//! units, and an idempotent bootstrap script, following the control-plane
//! bundle's rules (see [`crate::bundle`]): templates are compiled in, input is
//! validated first, and every inserted value goes through a quoting filter or
//! is restricted by validation to characters that need none.
//!
//! Every file is uploaded to [`paths::STAGED_DIR`]; the bootstrap script
//! installs each one to its place (see [`INSTALLS`]) only when its bytes
//! differ, and restarts only the services whose installed files differ from
//! the ones they were last (re)started with (a sha256 stamp per service in
//! [`paths::STAMP_DIR`]), so a run cut off between installing and
//! restarting is finished by the next.
//!
//! Pod networking: kubelet 1.20 writes no CNI config, and host-local needs a
//! literal subnet. The conflist is therefore rendered with
//! [`POD_CIDR_PLACEHOLDER`]; after kubelet has registered the node, the script
//! reads the node's `.spec.podCIDR` (allocated by kube-controller-manager's
//! `--allocate-node-cidrs`) with kubectl and the kubelet's kubeconfig,
//! substitutes it, and installs the result to `/etc/cni/net.d`.
//!
//! Kubelet serving certificates: `serverTLSBootstrap` is false, so kubelet
//! serves with a self-signed certificate it makes itself; client certificates
//! are bootstrapped and rotated through the certificates API.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tera::Context;

use crate::bundle::{
    check_binary_sums, check_dns_label, check_dns_name, check_machine_ipv4, check_path,
    error_chain, parse_ipv4, render_all, BinaryCheck, BundleError, BundleFile, Template,
};
use crate::spec::{Labels, Taint, NODE_POOL_LABEL};
use crate::{names, ClusterName, Ipv4Cidr, NodePoolName, ValidationError};

/// Where the worker bundle's files live on a worker machine.
pub mod paths {
    /// Every rendered file is uploaded here; the bootstrap script installs them.
    pub const STAGED_DIR: &str = "/opt/kubeforge/worker";
    pub const BOOTSTRAP_SCRIPT: &str = "/opt/kubeforge/bootstrap-worker.sh";
    /// Per service, the sha256 of the files it was last (re)started with.
    pub const STAMP_DIR: &str = "/var/lib/kubeforge/worker";

    pub const CA_CRT: &str = "/etc/kubernetes/pki/ca.crt";
    pub const BOOTSTRAP_KUBECONFIG: &str = "/etc/kubernetes/bootstrap-kubelet.conf";
    /// Written by kubelet itself once its bootstrap CSR is signed.
    pub const KUBELET_KUBECONFIG: &str = "/etc/kubernetes/kubelet.conf";
    pub const KUBE_PROXY_KUBECONFIG: &str = "/etc/kubernetes/kube-proxy.conf";

    pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
    pub const CNI_CONFLIST: &str = "/etc/cni/net.d/10-kubeforge.conflist";
    pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
    /// kubelet's `--system-reserved`, computed on the machine by the
    /// bootstrap script from what the kernel shows.
    pub const KUBELET_RESERVED_ENV: &str = "/etc/kubernetes/kubelet-reserved.env";
    pub const KUBE_PROXY_CONFIG: &str = "/var/lib/kube-proxy/config.yaml";
    pub const KUBELET_UNIT: &str = "/etc/systemd/system/kubelet.service";
    pub const KUBE_PROXY_UNIT: &str = "/etc/systemd/system/kube-proxy.service";
}

/// Stands for the node's pod CIDR in the staged conflist until the bootstrap
/// script learns it from the API server.
pub const POD_CIDR_PLACEHOLDER: &str = "__KUBEFORGE_POD_CIDR__";

/// The binaries the bootstrap script must be able to verify, under `bin_dir`.
pub const REQUIRED_BINARIES: &[&str] = &["kubelet", "kube-proxy"];

/// The services of a worker, in the order they are started.
pub const SERVICES: &[&str] = &["containerd", "kubelet", "kube-proxy"];

/// cgroup v1 controllers remounted read-write on lab (systemd-nspawn) machines.
pub const LAB_CGROUP_CONTROLLERS: &[&str] = &[
    "cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer", "pids",
];

/// The sandbox image of every worker (see `scripts/build-lab-pause`): the
/// service provides it rather than have nodes pull it (lab machines cannot
/// pull at all), so containerd imports it from [`PAUSE_ARCHIVE`].
pub const PAUSE_IMAGE: &str = "kubeforge.invalid/pause:1";
/// Where workers find the pause image archive: bound from the host's cache
/// on lab machines, uploaded by the join elsewhere.
pub const PAUSE_ARCHIVE: &str = "/opt/kubeforge/images/pause.oci.tar";

/// Where the first bootstrap records what it found before it changed
/// anything (containerd's configuration and state, sysctls, which
/// directories did not exist, and in a container the fixes it made), so
/// the wipe can put the machine back as it was. Written once, read by the
/// wipe before it removes `/var/lib/kubeforge`.
pub const RESTORE_DIR: &str = "/var/lib/kubeforge/restore";

/// containerd's root and state directories on a worker: apart from the
/// package's own, so a host's own images and containers are never touched
/// and the wipe removes the node's whole containerd state.
pub const CONTAINERD_ROOT: &str = "/var/lib/kubeforge-containerd";
pub const CONTAINERD_STATE: &str = "/run/kubeforge-containerd";

/// The sysctls a worker's join, kubelet or kube-proxy may change: the
/// bootstrap records their values once, before it starts anything, and the
/// wipe writes back those that differ.
pub const RECORDED_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
];

/// Paths the join or the node's services may create: the bootstrap records
/// which did not exist before, and the wipe removes exactly those.
pub const CREATED_IF_ABSENT: &[&str] = &[
    "/etc/containerd",
    "/etc/cni",
    "/etc/cni/net.d",
    "/opt/containerd",
    "/var/lib/containerd",
    "/var/log/pods",
    "/var/log/containers",
];

/// Kernel tunables kubelet insists on (`sysctl key=value` under /proc/sys),
/// shadowed on lab machines, which share the host's kernel.
pub const LAB_KERNEL_TUNABLES: &[&str] = &[
    "vm/overcommit_memory=1",
    "kernel/panic=10",
    "kernel/panic_on_oops=1",
];

/// Staged file name, installed path, mode, and the service that reads it.
pub const INSTALLS: &[(&str, &str, &str, &str)] = &[
    (
        "containerd-config.toml",
        paths::CONTAINERD_CONFIG,
        "0644",
        "containerd",
    ),
    (
        "kubelet-config.yaml",
        paths::KUBELET_CONFIG,
        "0644",
        "kubelet",
    ),
    ("kubelet.service", paths::KUBELET_UNIT, "0644", "kubelet"),
    (
        "kube-proxy-config.yaml",
        paths::KUBE_PROXY_CONFIG,
        "0644",
        "kube-proxy",
    ),
    (
        "kube-proxy.service",
        paths::KUBE_PROXY_UNIT,
        "0644",
        "kube-proxy",
    ),
];

const CNI_TEMPLATE: &str = "10-kubeforge.conflist.template";

/// Everything that differs between one worker's bundle and another's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerBundleInput {
    pub cluster_name: ClusterName,
    /// The node's name (`--hostname-override`); a DNS-1123 label.
    pub node_name: String,
    /// Its machine in the ledger: the node registers
    /// `spec.providerID = kubeforge://<machine id>` (`--provider-id`).
    pub machine_id: uuid::Uuid,
    /// Its machine type: the node carries it as
    /// `node.kubernetes.io/instance-type`.
    pub machine_type: crate::MachineType,
    /// The node's IPv4 address (`--node-ip`).
    pub node_address: Ipv4Addr,
    /// The API server endpoint, e.g. `https://10.77.0.10:6443`. The
    /// kubeconfigs carry it; the bundle only validates it and records it.
    pub api_server: String,
    /// The cluster DNS service address: the 10th service IP, e.g. `10.96.0.10`.
    pub cluster_dns: Ipv4Addr,
    /// e.g. `cluster.local`.
    pub cluster_domain: String,
    /// The cluster's pod CIDR (kube-proxy's `clusterCIDR`).
    pub pod_cidr: Ipv4Cidr,
    /// Where kubelet and kube-proxy (and optionally kubectl) live.
    pub bin_dir: String,
    /// The node's pool: `--node-labels` carries it as `kubeforge.io/node-pool`.
    pub node_pool: NodePoolName,
    /// The pool's labels, as its tenant set them (`--node-labels`).
    pub node_labels: Labels,
    /// `--register-with-taints`.
    pub node_taints: Vec<Taint>,
    /// Expected sha256 (lowercase hex) per binary under `bin_dir`. Must cover
    /// [`REQUIRED_BINARIES`].
    pub binary_sha256: BTreeMap<String, String>,
    /// Set when the machine is itself a container (`systemd-detect-virt -c`,
    /// probed by the join): the bundle then remounts cgroups read-write,
    /// gives kubelet its own cgroup root, makes /dev/kmsg, shadows the kernel
    /// tunables kubelet insists on and uses the native snapshotter. None on
    /// a real host: none of that.
    pub container: Option<ContainerHost>,
    /// What the node must offer pods (its allocatable), when its machine
    /// promises a size the kernel does not show: a lab machine sees the
    /// host's CPUs and memory, so kubelet's system reservation is set to
    /// the difference ([`NodeOffer`]). None: the machine's own capacity
    /// minus the system reservation of `crate::names`.
    pub offer: Option<NodeOffer>,
}

/// What the bundle needs to know about a machine that is a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerHost {
    /// The machine's own cgroup as the host sees it (the memory
    /// controller's line of `/proc/1/cgroup`, e.g. `/kubeforge/<id>` on a
    /// lab machine): kubelet's `cgroupRoot`, so its pods count against the
    /// machine's limits and no other node's kubelet takes them for orphans.
    pub cgroup_root: String,
}

/// A node's allocatable CPU and memory, as promised by its machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOffer {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl NodeOffer {
    /// What a machine that has `cpu_millis` and `memory_bytes` (a
    /// registered host's capacity) offers pods: that, less the system
    /// reservation and the eviction threshold, as a machine type's
    /// allocatable is reckoned.
    pub fn of_capacity(cpu_millis: u64, memory_bytes: u64) -> NodeOffer {
        NodeOffer {
            cpu_millis: cpu_millis.saturating_sub(u64::from(names::SYSTEM_RESERVED_CPU_MILLIS)),
            memory_bytes: memory_bytes.saturating_sub(
                u64::from(names::SYSTEM_RESERVED_MEMORY_MIB + names::EVICTION_HARD_MEMORY_MIB)
                    << 20,
            ),
        }
    }

    /// What a node of machine type `t` offers pods
    /// ([`crate::MachineType::allocatable`]).
    pub fn of(t: crate::MachineType) -> NodeOffer {
        let a = t.allocatable();
        NodeOffer {
            cpu_millis: u64::from(a.cpu_millis),
            memory_bytes: u64::from(a.memory_mib) << 20,
        }
    }
}

const TEMPLATES: &[Template] = &[
    (
        "containerd-config.toml",
        include_str!("../../templates/worker/containerd-config.toml.tera"),
        "/opt/kubeforge/worker/containerd-config.toml",
        0o644,
    ),
    (
        "10-kubeforge.conflist",
        include_str!("../../templates/worker/10-kubeforge.conflist.tera"),
        "/opt/kubeforge/worker/10-kubeforge.conflist.template",
        0o644,
    ),
    (
        "kubelet-config.yaml",
        include_str!("../../templates/worker/kubelet-config.yaml.tera"),
        "/opt/kubeforge/worker/kubelet-config.yaml",
        0o644,
    ),
    (
        "kubelet.service",
        include_str!("../../templates/worker/kubelet.service.tera"),
        "/opt/kubeforge/worker/kubelet.service",
        0o644,
    ),
    (
        "kube-proxy-config.yaml",
        include_str!("../../templates/worker/kube-proxy-config.yaml.tera"),
        "/opt/kubeforge/worker/kube-proxy-config.yaml",
        0o644,
    ),
    (
        "kube-proxy.service",
        include_str!("../../templates/worker/kube-proxy.service.tera"),
        "/opt/kubeforge/worker/kube-proxy.service",
        0o644,
    ),
    (
        "bootstrap-worker.sh",
        include_str!("../../templates/worker/bootstrap-worker.sh.tera"),
        paths::BOOTSTRAP_SCRIPT,
        0o755,
    ),
];

/// Renders every file of one worker's bundle, in upload order: the staged
/// configs and units, then the bootstrap script.
pub fn render_worker(input: &WorkerBundleInput) -> Result<Vec<BundleFile>, BundleError> {
    let context =
        Context::from_serialize(RenderContext::new(input)?).map_err(|e| BundleError::Render {
            template: "context".into(),
            message: error_chain(&e),
        })?;
    render_all(TEMPLATES, &context)
}

#[derive(Serialize)]
struct RenderContext {
    cluster_name: String,
    node_name: String,
    node_address: String,
    api_server: String,
    cluster_dns: String,
    cluster_domain: String,
    pod_cidr: String,
    /// `kubeforge://<machine id>`.
    provider_id: String,
    /// `k=v,k=v`, or empty.
    node_labels: String,
    /// `k=v:E,k=v:E`, or empty.
    node_taints: String,
    container: Option<ContainerHost>,
    bin: BinContext,
    binaries: Vec<BinaryCheck>,
    ca_crt: &'static str,
    kubeconfig: KubeconfigContext,
    config: ConfigContext,
    required_files: [&'static str; 3],
    staged_dir: &'static str,
    stamp_dir: &'static str,
    installs: Vec<Install>,
    services: &'static [&'static str],
    cgroup_controllers: &'static [&'static str],
    lab_kernel_tunables: &'static [&'static str],
    pause_image: &'static str,
    offer: Option<NodeOffer>,
    reserved: ReservedContext,
    pause_archive: &'static str,
    restore_dir: &'static str,
    containerd_root: &'static str,
    containerd_state: &'static str,
    recorded_sysctls: &'static [&'static str],
    created_if_absent: &'static [&'static str],
    cni_template: &'static str,
    cni_conflist: &'static str,
    pod_cidr_placeholder: &'static str,
}

#[derive(Serialize)]
struct ReservedContext {
    cpu_millis: u64,
    memory_bytes: u64,
    eviction_memory_bytes: u64,
    env_file: &'static str,
}

#[derive(Serialize)]
struct BinContext {
    kubelet: String,
    kube_proxy: String,
    kubectl: String,
}

#[derive(Serialize)]
struct KubeconfigContext {
    bootstrap: &'static str,
    kubelet: &'static str,
    kube_proxy: &'static str,
}

#[derive(Serialize)]
struct ConfigContext {
    kubelet: &'static str,
    kube_proxy: &'static str,
}

#[derive(Serialize)]
struct Install {
    staged: &'static str,
    target: &'static str,
    mode: &'static str,
    service: &'static str,
}

impl RenderContext {
    fn new(input: &WorkerBundleInput) -> Result<Self, ValidationError> {
        check_dns_label("node_name", &input.node_name)?;
        let address = check_machine_ipv4("node_address", input.node_address)?;
        check_api_server(&input.api_server)?;
        let cluster_dns = check_machine_ipv4("cluster_dns", input.cluster_dns)?;
        check_dns_name("cluster_domain", &input.cluster_domain)?;
        let bin_dir = check_path("bin_dir", &input.bin_dir)?;
        let node_labels = label_flag(&input.node_pool, input.machine_type, &input.node_labels);
        let node_taints = taint_flag(&input.node_taints)?;
        let binaries = check_binaries(&input.binary_sha256, &bin_dir)?;
        let container = match &input.container {
            Some(c) => Some(ContainerHost {
                cgroup_root: check_cgroup_root(&c.cgroup_root)?,
            }),
            None => None,
        };

        Ok(Self {
            cluster_name: input.cluster_name.to_string(),
            node_name: input.node_name.clone(),
            node_address: address.to_string(),
            api_server: input.api_server.clone(),
            cluster_dns: cluster_dns.to_string(),
            cluster_domain: input.cluster_domain.clone(),
            pod_cidr: input.pod_cidr.to_string(),
            provider_id: crate::names::provider_id(input.machine_id),
            node_labels,
            node_taints,
            container,
            offer: input.offer,
            reserved: ReservedContext {
                cpu_millis: u64::from(names::SYSTEM_RESERVED_CPU_MILLIS),
                memory_bytes: u64::from(names::SYSTEM_RESERVED_MEMORY_MIB) << 20,
                eviction_memory_bytes: u64::from(names::EVICTION_HARD_MEMORY_MIB) << 20,
                env_file: paths::KUBELET_RESERVED_ENV,
            },
            bin: BinContext {
                kubelet: format!("{bin_dir}/kubelet"),
                kube_proxy: format!("{bin_dir}/kube-proxy"),
                kubectl: format!("{bin_dir}/kubectl"),
            },
            binaries,
            ca_crt: paths::CA_CRT,
            kubeconfig: KubeconfigContext {
                bootstrap: paths::BOOTSTRAP_KUBECONFIG,
                kubelet: paths::KUBELET_KUBECONFIG,
                kube_proxy: paths::KUBE_PROXY_KUBECONFIG,
            },
            config: ConfigContext {
                kubelet: paths::KUBELET_CONFIG,
                kube_proxy: paths::KUBE_PROXY_CONFIG,
            },
            required_files: [
                paths::CA_CRT,
                paths::BOOTSTRAP_KUBECONFIG,
                paths::KUBE_PROXY_KUBECONFIG,
            ],
            staged_dir: paths::STAGED_DIR,
            stamp_dir: paths::STAMP_DIR,
            installs: INSTALLS
                .iter()
                .map(|(staged, target, mode, service)| Install {
                    staged,
                    target,
                    mode,
                    service,
                })
                .collect(),
            services: SERVICES,
            cgroup_controllers: LAB_CGROUP_CONTROLLERS,
            lab_kernel_tunables: LAB_KERNEL_TUNABLES,
            pause_image: PAUSE_IMAGE,
            pause_archive: PAUSE_ARCHIVE,
            restore_dir: RESTORE_DIR,
            containerd_root: CONTAINERD_ROOT,
            containerd_state: CONTAINERD_STATE,
            recorded_sysctls: RECORDED_SYSCTLS,
            created_if_absent: CREATED_IF_ABSENT,
            cni_template: CNI_TEMPLATE,
            cni_conflist: paths::CNI_CONFLIST,
            pod_cidr_placeholder: POD_CIDR_PLACEHOLDER,
        })
    }
}

/// `https://HOST[:PORT]` with HOST an IPv4 address or DNS name, nothing after.
fn check_api_server(value: &str) -> Result<(), ValidationError> {
    let bad = || {
        ValidationError::new(
            "api_server",
            format!("{value:?} is not https://HOST[:PORT] with an IPv4 address or DNS name"),
        )
    };
    let rest = value.strip_prefix("https://").ok_or_else(bad)?;
    let (host, port) = match rest.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    };
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(bad()),
        }
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return parse_ipv4("api_server", host).map(|_| ());
    }
    check_dns_name("api_server", host).map_err(|_| bad())
}

/// An absolute cgroup path below the root, of characters that need no
/// quoting (`/kubeforge/<id>`, `/machine.slice/x.scope`).
fn check_cgroup_root(value: &str) -> Result<String, ValidationError> {
    let ok = value.len() > 1
        && value.starts_with('/')
        && !value.ends_with('/')
        && value.split('/').skip(1).all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@:".contains(&b))
        });
    if ok {
        Ok(value.to_string())
    } else {
        Err(ValidationError::new(
            "container.cgroup_root",
            format!("{value:?} is not an absolute cgroup path below the root"),
        ))
    }
}

fn check_binaries(
    sha256: &BTreeMap<String, String>,
    bin_dir: &str,
) -> Result<Vec<BinaryCheck>, ValidationError> {
    check_binary_sums(sha256, REQUIRED_BINARIES, |name| {
        format!("{bin_dir}/{name}")
    })
}

/// `k=v,k=v`, sorted by key, with the pool's label and the machine type's
/// (the labels were checked when parsed; both are Kubeforge's to set and
/// win over a tenant's label of the same key).
fn label_flag(pool: &NodePoolName, machine_type: crate::MachineType, labels: &Labels) -> String {
    let mut all = labels.as_map().clone();
    all.insert(NODE_POOL_LABEL.to_string(), pool.to_string());
    all.insert(
        crate::names::INSTANCE_TYPE_LABEL.to_string(),
        machine_type.as_str().to_string(),
    );
    all.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `key=value:Effect,...` (`key=:Effect` without a value), each taint
/// checked by the one taint rule ([`Taint::check`]).
fn taint_flag(taints: &[Taint]) -> Result<String, ValidationError> {
    let mut out = Vec::with_capacity(taints.len());
    for (i, t) in taints.iter().enumerate() {
        t.check()
            .map_err(|e| e.under(&format!("node_taints[{i}]")))?;
        out.push(format!(
            "{}={}:{:?}",
            t.key,
            t.value.as_deref().unwrap_or(""),
            t.effect
        ));
    }
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API (`Labels`, `Taint`) and the renderer accept exactly the same
    /// keys and values: a pool the API accepted never fails to render
    /// after its join began.
    #[test]
    fn the_api_and_the_renderer_agree_on_labels_and_taints() {
        let keys = [
            "tier",
            "example.com/tier",
            "-bad.example/x",
            "bad-.example/x",
            "a..b/x",
            "UPPER.example/x",
            "x_y",
            "_x",
            "x.",
            "a/b/c",
            "/x",
            "x/",
            "",
            "é",
            &"k".repeat(63),
            &"k".repeat(64),
            &format!("{}/x", "p".repeat(254)),
        ];
        let values = ["", "v", "v-1.2_3", "-v", "v_", "a b", &"v".repeat(64)];
        for key in keys {
            for value in values {
                // Labels the API accepts always render (the renderer takes
                // them parsed, so it has nothing to refuse).
                if let Ok(labels) =
                    Labels::parse(BTreeMap::from([(key.to_string(), value.to_string())]))
                {
                    let mut i = input();
                    i.node_labels = labels;
                    let rendered = render_worker(&i);
                    assert!(
                        rendered.is_ok(),
                        "label {key:?}={value:?}: {:?}",
                        rendered.err()
                    );
                }
                // Taints: the API and the renderer apply the same rule.
                let taint = Taint {
                    key: key.to_string(),
                    value: (!value.is_empty()).then(|| value.to_string()),
                    effect: crate::spec::TaintEffect::NoSchedule,
                };
                let mut i = input();
                i.node_taints = vec![taint.clone()];
                let rendered = render_worker(&i);
                assert_eq!(
                    taint.check().is_ok(),
                    rendered.is_ok(),
                    "taint {key:?}={value:?}: renderer {:?}",
                    rendered.err()
                );
            }
        }
    }

    /// The `--flag=` value of the rendered kubelet unit.
    fn kubelet_flag(files: &[BundleFile], flag: &str) -> Option<String> {
        let unit = &files
            .iter()
            .find(|f| f.path.ends_with("/kubelet.service"))?
            .contents;
        let at = unit.find(&format!("--{flag}="))? + flag.len() + 3;
        let rest = &unit[at..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '\\')
            .unwrap_or(rest.len());
        Some(rest[..end].to_string())
    }

    proptest::proptest! {
        /// Any label or taint the API accepts renders, and what the
        /// kubelet reads back from its flags is exactly that label or taint
        /// (nothing in an accepted key or value can split a flag); any
        /// taint the API refuses, the renderer refuses too.
        #[test]
        fn what_the_api_accepts_renders_and_reads_back(
            key in proptest::prop_oneof![
                "[a-zA-Z0-9._-]{0,70}",
                "([a-z0-9-]{0,64}\\.){0,4}[a-z0-9-]{0,64}/[a-zA-Z0-9._-]{0,70}",
                "(kubeforge\\.io|example\\.com)/[a-z=,:]{0,5}",
                "[ -~]{0,80}",
            ],
            value in "[a-zA-Z0-9._=,: -]{0,65}",
        ) {
            let labels = Labels::parse(BTreeMap::from([(key.clone(), value.clone())]));
            if let (Ok(labels), false) = (labels, key == names::INSTANCE_TYPE_LABEL) {
                let mut i = input();
                i.node_labels = labels;
                let files = render_worker(&i);
                proptest::prop_assert!(files.is_ok(), "label {:?}={:?}: {:?}", key, value, files.err());
                let flag = kubelet_flag(&files.unwrap(), "node-labels").unwrap_or_default();
                let back: BTreeMap<&str, &str> =
                    flag.split(',').filter_map(|kv| kv.split_once('=')).collect();
                proptest::prop_assert_eq!(back.get(key.as_str()).copied(), Some(value.as_str()));
                proptest::prop_assert_eq!(back.len(), 3);
            }
            let taint = Taint {
                key: key.clone(),
                value: (!value.is_empty()).then(|| value.clone()),
                effect: crate::spec::TaintEffect::PreferNoSchedule,
            };
            let mut i = input();
            i.node_taints = vec![taint.clone()];
            let files = render_worker(&i);
            proptest::prop_assert_eq!(taint.check().is_ok(), files.is_ok(), "taint {:?}={:?}", key, value);
            if let Ok(files) = files {
                let flag = kubelet_flag(&files, "register-with-taints").unwrap_or_default();
                proptest::prop_assert_eq!(flag, format!("{key}={value}:PreferNoSchedule"));
            }
        }
    }

    fn input() -> WorkerBundleInput {
        WorkerBundleInput {
            cluster_name: ClusterName::parse("demo").unwrap(),
            node_name: "demo-pool-a-0".into(),
            machine_id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            machine_type: crate::MachineType::SMALL,
            node_address: Ipv4Addr::new(10, 77, 0, 31),
            api_server: "https://10.77.0.10:6443".into(),
            cluster_dns: Ipv4Addr::new(10, 96, 0, 10),
            cluster_domain: "cluster.local".into(),
            pod_cidr: Ipv4Cidr::parse("10.244.0.0/16").unwrap(),
            bin_dir: "/opt/kubeforge/bin".into(),
            node_pool: NodePoolName::parse("pool-a").unwrap(),
            node_labels: Labels::parse(BTreeMap::from([("tier".into(), "web".into())])).unwrap(),
            node_taints: vec![Taint {
                key: "dedicated".into(),
                value: Some("web".into()),
                effect: crate::spec::TaintEffect::NoSchedule,
            }],
            binary_sha256: BTreeMap::from([
                ("kube-proxy".into(), "b".repeat(64)),
                ("kubelet".into(), "a".repeat(64)),
            ]),
            container: Some(ContainerHost {
                cgroup_root: "/kubeforge/01900000-0000-7000-8000-000000000001".into(),
            }),
            offer: Some(NodeOffer::of(crate::MachineType::SMALL)),
        }
    }

    type Mutation = Box<dyn Fn(&mut WorkerBundleInput)>;

    fn invalid(input: &WorkerBundleInput) -> ValidationError {
        match render_worker(input) {
            Err(BundleError::Invalid(e)) => e,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn worker_renders_every_file() {
        let files = render_worker(&input()).expect("renders");
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/opt/kubeforge/worker/containerd-config.toml",
                "/opt/kubeforge/worker/10-kubeforge.conflist.template",
                "/opt/kubeforge/worker/kubelet-config.yaml",
                "/opt/kubeforge/worker/kubelet.service",
                "/opt/kubeforge/worker/kube-proxy-config.yaml",
                "/opt/kubeforge/worker/kube-proxy.service",
                paths::BOOTSTRAP_SCRIPT,
            ]
        );
        for f in &files {
            let name = f.path.rsplit('/').next().unwrap_or("").replace('.', "_");
            insta::assert_snapshot!(format!("worker_{name}"), f.contents);
        }
        let kubelet = &files[3].contents;
        assert!(
            kubelet.contains(
                "--node-labels=kubeforge.io/node-pool=pool-a,\
                 node.kubernetes.io/instance-type=small,tier=web"
            ),
            "{kubelet}"
        );
        assert!(
            kubelet.contains("--provider-id=kubeforge://01900000-0000-7000-8000-000000000001"),
            "{kubelet}"
        );
        assert!(
            kubelet.contains("--register-with-taints=dedicated=web:NoSchedule"),
            "{kubelet}"
        );
        let conflist: serde_json::Value =
            serde_json::from_str(&files[1].contents).expect("conflist is JSON");
        assert_eq!(
            conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            POD_CIDR_PLACEHOLDER
        );
    }

    #[test]
    fn worker_script_parses_in_bash_and_container_steps_follow_the_probe() {
        for lab in [true, false] {
            let mut input = input();
            if !lab {
                input.container = None;
                input.offer = None;
            }
            let files = render_worker(&input).expect("renders");
            let script = &files.last().expect("script").contents;
            let containerd = &files[0].contents;
            let kubelet_config = &files[2].contents;
            let kubelet_unit = &files[3].contents;
            // The service's sandbox image on every machine.
            assert!(containerd.contains(&format!("sandbox_image = \"{PAUSE_IMAGE}\"")));
            assert!(kubelet_unit.contains(&format!("--pod-infra-container-image={PAUSE_IMAGE}")));
            assert!(script.contains("images import"));
            // Container measures only in a container.
            assert_eq!(containerd.contains("snapshotter = \"native\""), lab);
            assert_eq!(containerd.contains("restrict_oom_score_adj"), lab);
            assert_eq!(
                kubelet_config
                    .contains("cgroupRoot: /kubeforge/01900000-0000-7000-8000-000000000001"),
                lab
            );
            assert_eq!(script.contains("mount --bind"), lab);
            // The first run records what it changes, on every machine.
            assert!(script.contains(RESTORE_DIR));
            let out = std::process::Command::new("bash")
                .args(["-n", "-c", script])
                .output()
                .expect("bash");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(script.contains("mknod /dev/kmsg c 1 11"), lab);
            assert_eq!(script.contains("remount,rw /sys/fs/cgroup"), lab);
        }
    }

    #[test]
    fn worker_without_labels_or_taints_carries_only_its_pool_and_type() {
        let mut bare = input();
        bare.node_labels = Labels::default();
        bare.node_taints.clear();
        let files = render_worker(&bare).expect("renders");
        let unit = &files[3].contents;
        assert!(!unit.contains("--register-with-taints"), "{unit}");
        assert!(
            unit.contains(
                "--node-labels=kubeforge.io/node-pool=pool-a,\
                 node.kubernetes.io/instance-type=small\nRestart=always"
            ),
            "{unit}"
        );
    }

    #[test]
    fn worker_rejects_invalid_input() {
        let cases: Vec<(&str, Mutation)> = vec![
            ("node_name", Box::new(|i| i.node_name = "node_1".into())),
            (
                "node_address",
                Box::new(|i| i.node_address = Ipv4Addr::UNSPECIFIED),
            ),
            (
                "api_server",
                Box::new(|i| i.api_server = "http://10.77.0.10:6443".into()),
            ),
            (
                "api_server",
                Box::new(|i| i.api_server = "https://10.77.0.10:6443/x".into()),
            ),
            (
                "cluster_dns",
                Box::new(|i| i.cluster_dns = Ipv4Addr::new(224, 0, 0, 1)),
            ),
            (
                "cluster_domain",
                Box::new(|i| i.cluster_domain = "cluster..local".into()),
            ),
            ("bin_dir", Box::new(|i| i.bin_dir = "/opt/$(reboot)".into())),
            ("bin_dir", Box::new(|i| i.bin_dir = "opt/bin".into())),
            (
                "container.cgroup_root",
                Box::new(|i| {
                    i.container = Some(ContainerHost {
                        cgroup_root: "/kubeforge/$(reboot)".into(),
                    })
                }),
            ),
            (
                "container.cgroup_root",
                Box::new(|i| {
                    i.container = Some(ContainerHost {
                        cgroup_root: "/kubeforge/../x".into(),
                    })
                }),
            ),
            (
                "node_taints[0].value",
                Box::new(|i| i.node_taints[0].value = Some("a b".into())),
            ),
            (
                "node_taints[0].key",
                Box::new(|i| i.node_taints[0].key = "bad key".into()),
            ),
            (
                "binary_sha256",
                Box::new(|i| {
                    i.binary_sha256.remove("kube-proxy");
                }),
            ),
            (
                "binary_sha256.kubelet",
                Box::new(|i| {
                    i.binary_sha256.insert("kubelet".into(), "ABC".into());
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut bad = input();
            mutate(&mut bad);
            assert_eq!(invalid(&bad).field, field, "{bad:?}");
        }
    }
}
