//! The control-plane node bundle: every file Kubeforge puts on a control-plane
//! machine besides its certificates and kubeconfigs.
//!
//! [`render_control_plane`] turns one member's [`ControlPlaneBundleInput`] into
//! systemd units for etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, an idempotent bootstrap script and a health check, ready to
//! upload over SSH. The same bundle works on a lab machine, an EC2 instance or
//! a tenant's own host: all it needs is Debian with systemd.
//!
//! Guarantees:
//! - Rendering is pure: templates are compiled into the binary (`include_str!`),
//!   nothing is read from disk, and the same input always gives the same bytes.
//! - Every input is validated before rendering ([`BundleError::Invalid`]), and
//!   every value a template inserts goes through a quoting filter
//!   (`shell_quote` in scripts, `systemd_quote` in units), so even a value
//!   that slipped past validation cannot split an argument or run a command.
//! - The bootstrap script refuses to go on when a binary's sha256 differs from
//!   the input, and running it twice changes nothing the second time: it
//!   compares unit contents before copying, reloads systemd only after a
//!   change, and restarts a service only when its unit changed (a stamp of the
//!   unit's sha256 written after each restart) or `systemctl is-active` says it
//!   is down.
//!
//! Certificates and kubeconfigs (see the `pki` and `kubeconfig` modules) are
//! uploaded to the paths in [`paths`] before the bootstrap script runs; the
//! script checks they are there and fixes their modes.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tera::{Context, Tera, Value};

use crate::addons;
use crate::{ClusterName, ClusterNetwork, KubernetesVersion, ValidationError};

/// Where the bundle's files and the files it expects live on a control-plane
/// machine (kubeadm's layout for certificates and kubeconfigs).
pub mod paths {
    /// Kubeforge's own directory on a machine.
    pub const KUBEFORGE_DIR: &str = "/opt/kubeforge";
    /// Units are uploaded here; the bootstrap script installs them from here.
    pub const STAGED_UNIT_DIR: &str = "/opt/kubeforge/units";
    /// Where the bootstrap script records the unit each service last started with.
    pub const STAMP_DIR: &str = "/var/lib/kubeforge/controlplane";
    pub const BOOTSTRAP_SCRIPT: &str = "/opt/kubeforge/bootstrap-controlplane.sh";
    pub const HEALTHCHECK_SCRIPT: &str = "/opt/kubeforge/healthcheck.sh";

    pub const KUBERNETES_DIR: &str = "/etc/kubernetes";
    pub const PKI_DIR: &str = "/etc/kubernetes/pki";
    pub const ETCD_PKI_DIR: &str = "/etc/kubernetes/pki/etcd";

    pub const CA_CRT: &str = "/etc/kubernetes/pki/ca.crt";
    /// Only on control-plane machines: the controller manager signs kubelet
    /// and CSR certificates with it.
    pub const CA_KEY: &str = "/etc/kubernetes/pki/ca.key";
    pub const APISERVER_CRT: &str = "/etc/kubernetes/pki/apiserver.crt";
    pub const APISERVER_KEY: &str = "/etc/kubernetes/pki/apiserver.key";
    pub const APISERVER_KUBELET_CLIENT_CRT: &str =
        "/etc/kubernetes/pki/apiserver-kubelet-client.crt";
    pub const APISERVER_KUBELET_CLIENT_KEY: &str =
        "/etc/kubernetes/pki/apiserver-kubelet-client.key";
    pub const APISERVER_ETCD_CLIENT_CRT: &str = "/etc/kubernetes/pki/apiserver-etcd-client.crt";
    pub const APISERVER_ETCD_CLIENT_KEY: &str = "/etc/kubernetes/pki/apiserver-etcd-client.key";
    pub const FRONT_PROXY_CA_CRT: &str = "/etc/kubernetes/pki/front-proxy-ca.crt";
    pub const FRONT_PROXY_CLIENT_CRT: &str = "/etc/kubernetes/pki/front-proxy-client.crt";
    pub const FRONT_PROXY_CLIENT_KEY: &str = "/etc/kubernetes/pki/front-proxy-client.key";
    pub const SA_KEY: &str = "/etc/kubernetes/pki/sa.key";
    pub const SA_PUB: &str = "/etc/kubernetes/pki/sa.pub";
    pub const ETCD_CA_CRT: &str = "/etc/kubernetes/pki/etcd/ca.crt";
    /// Its SANs must include 127.0.0.1: the health check and the local
    /// client URL use loopback.
    pub const ETCD_SERVER_CRT: &str = "/etc/kubernetes/pki/etcd/server.crt";
    pub const ETCD_SERVER_KEY: &str = "/etc/kubernetes/pki/etcd/server.key";
    pub const ETCD_PEER_CRT: &str = "/etc/kubernetes/pki/etcd/peer.crt";
    pub const ETCD_PEER_KEY: &str = "/etc/kubernetes/pki/etcd/peer.key";
    pub const ETCD_HEALTHCHECK_CLIENT_CRT: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.crt";
    pub const ETCD_HEALTHCHECK_CLIENT_KEY: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.key";
    /// The admin client certificate the health check presents to `/readyz`
    /// (kubeadm only embeds it in admin.conf; Kubeforge also writes it out).
    pub const ADMIN_CLIENT_CRT: &str = "/etc/kubernetes/pki/admin.crt";
    pub const ADMIN_CLIENT_KEY: &str = "/etc/kubernetes/pki/admin.key";

    pub const CONTROLLER_MANAGER_KUBECONFIG: &str = "/etc/kubernetes/controller-manager.conf";
    pub const SCHEDULER_KUBECONFIG: &str = "/etc/kubernetes/scheduler.conf";
    pub const ADMIN_KUBECONFIG: &str = "/etc/kubernetes/admin.conf";
}

/// The API server's port on every member (the shared endpoint may differ).
pub const APISERVER_PORT: u16 = 6443;
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;

/// The binaries the bootstrap script must be able to verify. `etcd` lives at
/// [`ControlPlaneBundleInput::etcd_bin`], the others under `bin_dir`.
pub const REQUIRED_BINARIES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// The units of a control-plane member, in the order they are started.
pub const UNITS: &[&str] = &[
    "etcd.service",
    "kube-apiserver.service",
    "kube-controller-manager.service",
    "kube-scheduler.service",
];

/// One etcd member: its name (`--name`) and the IPv4 address its peers and
/// the API servers reach it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    pub name: String,
    pub address: Ipv4Addr,
}

/// Whether this member founds the etcd cluster or joins one that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialClusterState {
    /// Every member of a new cluster, started together.
    New,
    /// A member replacing a lost one, after `etcdctl member add`; its
    /// `members` must be the cluster's membership including itself, and its
    /// data directory must be empty.
    Existing,
}

impl InitialClusterState {
    fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Existing => "existing",
        }
    }
}

/// Everything that differs between one control-plane member's bundle and
/// another's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneBundleInput {
    pub cluster_name: ClusterName,
    pub kubernetes_version: KubernetesVersion,
    /// This member's etcd name; must appear in `members`.
    pub member_name: String,
    /// This member's IPv4 address; must match its entry in `members`.
    pub member_address: Ipv4Addr,
    /// The whole etcd cluster: 1 or 3 members.
    pub members: Vec<EtcdMember>,
    /// The stable address kubeconfigs point at (an IPv4 address or DNS name).
    pub endpoint_host: String,
    pub endpoint_port: u16,
    /// The cluster's pod and service ranges.
    pub network: ClusterNetwork,
    /// Where kube-apiserver, kube-controller-manager, kube-scheduler and
    /// kubectl live, e.g. `/opt/kubeforge/bin`.
    pub bin_dir: String,
    /// The etcd binary, e.g. `/usr/bin/etcd` from Debian's etcd-server.
    pub etcd_bin: String,
    /// etcd's `--data-dir`, e.g. `/var/lib/etcd`.
    pub data_dir: String,
    pub initial_cluster_state: InitialClusterState,
    /// e.g. `cluster.local`.
    pub cluster_domain: String,
    /// Expected sha256 (lowercase hex) per binary name. Must cover
    /// [`REQUIRED_BINARIES`]; any other name (such as `kubectl`) is checked
    /// under `bin_dir` too.
    pub binary_sha256: BTreeMap<String, String>,
}

/// One file of a bundle: where it goes on the machine, its mode, its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleFile {
    pub path: String,
    pub mode: u32,
    pub contents: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("invalid control-plane bundle input: {0}")]
    Invalid(#[from] ValidationError),
    /// A template failed to compile or render: a bug in Kubeforge, not in the input.
    #[error("rendering {template}: {message}")]
    Render { template: String, message: String },
}

/// The templates, compiled into the binary, with the path and mode each
/// rendered file gets.
const TEMPLATES: &[Template] = &[
    (
        "etcd.service",
        include_str!("../../templates/controlplane/etcd.service.tera"),
        "/opt/kubeforge/units/etcd.service",
        0o644,
    ),
    (
        "kube-apiserver.service",
        include_str!("../../templates/controlplane/kube-apiserver.service.tera"),
        "/opt/kubeforge/units/kube-apiserver.service",
        0o644,
    ),
    (
        "kube-controller-manager.service",
        include_str!("../../templates/controlplane/kube-controller-manager.service.tera"),
        "/opt/kubeforge/units/kube-controller-manager.service",
        0o644,
    ),
    (
        "kube-scheduler.service",
        include_str!("../../templates/controlplane/kube-scheduler.service.tera"),
        "/opt/kubeforge/units/kube-scheduler.service",
        0o644,
    ),
    (
        "kubeforge-addons.service",
        include_str!("../../templates/controlplane/kubeforge-addons.service.tera"),
        "/opt/kubeforge/units/kubeforge-addons.service",
        0o644,
    ),
    (
        "bootstrap-controlplane.sh",
        include_str!("../../templates/controlplane/bootstrap-controlplane.sh.tera"),
        paths::BOOTSTRAP_SCRIPT,
        0o755,
    ),
    (
        "healthcheck.sh",
        include_str!("../../templates/controlplane/healthcheck.sh.tera"),
        paths::HEALTHCHECK_SCRIPT,
        0o755,
    ),
];

/// Renders every file of one control-plane member's bundle, in upload order:
/// the four component units and the addons unit (to
/// [`paths::STAGED_UNIT_DIR`]), the bootstrap script, the health check, and
/// the addons manifest ([`crate::addons`]).
pub fn render_control_plane(
    input: &ControlPlaneBundleInput,
) -> Result<Vec<BundleFile>, BundleError> {
    let context =
        Context::from_serialize(RenderContext::new(input)?).map_err(|e| BundleError::Render {
            template: "context".into(),
            message: error_chain(&e),
        })?;
    let mut files = render_all(TEMPLATES, &context)?;
    files.push(BundleFile {
        path: addons::MANIFEST_PATH.into(),
        mode: 0o644,
        contents: addons::manifest(input.network.dns_service_ip()),
    });
    Ok(files)
}

/// A name, its source, where the rendered file goes, and its mode.
pub(crate) type Template = (&'static str, &'static str, &'static str, u32);

/// Renders every template of a set with one context, in order.
pub(crate) fn render_all(
    set: &[Template],
    context: &Context,
) -> Result<Vec<BundleFile>, BundleError> {
    let tera = templates(set)?;
    set.iter()
        .map(|(name, _, path, mode)| {
            let contents = tera
                .render(name, context)
                .map_err(|e| BundleError::Render {
                    template: (*name).into(),
                    message: error_chain(&e),
                })?;
            Ok(BundleFile {
                path: (*path).into(),
                mode: *mode,
                contents,
            })
        })
        .collect()
}

fn templates(set: &[Template]) -> Result<Tera, BundleError> {
    let mut tera = Tera::default();
    // Nothing here is HTML; quoting is explicit, per target language.
    tera.autoescape_on(vec![]);
    tera.register_filter("shell_quote", shell_quote_filter);
    tera.register_filter("systemd_quote", systemd_quote_filter);
    tera.add_raw_templates(set.iter().map(|(name, source, _, _)| (*name, *source)))
        .map_err(|e| BundleError::Render {
            template: "(compiling templates)".into(),
            message: error_chain(&e),
        })?;
    Ok(tera)
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Quotes `value` as one bash word: unchanged when it holds only characters
/// bash never interprets, else single-quoted (`'` written as `'\''`).
pub fn shell_quote(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Quotes `value` as (part of) one word of a systemd unit setting such as
/// `ExecStart=`: unchanged when plain, else double-quoted with systemd's C-style
/// escapes, `%` doubled (specifiers) and `$` doubled (variable expansion).
/// Control characters other than newline and tab are refused.
pub fn systemd_quote(value: &str) -> Result<String, String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@+=:,./_-".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        return Ok(value.to_string());
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '\\' => quoted.push_str(r"\\"),
            '"' => quoted.push_str("\\\""),
            '\n' => quoted.push_str(r"\n"),
            '\t' => quoted.push_str(r"\t"),
            '%' => quoted.push_str("%%"),
            '$' => quoted.push_str("$$"),
            c if c.is_control() => {
                return Err(format!("control character {c:?} cannot go in a unit file"));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    Ok(quoted)
}

fn filter_input(value: &Value, filter: &str) -> tera::Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(tera::Error::msg(format!(
            "{filter} takes a string, number or bool, not {other}"
        ))),
    }
}

fn shell_quote_filter(value: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    Ok(Value::String(shell_quote(&filter_input(
        value,
        "shell_quote",
    )?)))
}

fn systemd_quote_filter(value: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    systemd_quote(&filter_input(value, "systemd_quote")?)
        .map(Value::String)
        .map_err(tera::Error::msg)
}

/// What the templates see: the validated input plus everything derived from it,
/// so templates only place values and never compute them.
#[derive(Serialize)]
struct RenderContext {
    cluster_name: String,
    kubernetes_version: String,
    member_name: String,
    member_address: String,
    service_cidr: String,
    pod_cidr: String,
    service_account_issuer: String,
    apiserver_port: u16,
    etcd_bin: String,
    etcd_data_dir: String,
    initial_cluster_state: &'static str,
    /// Whether the controller manager and the scheduler elect a leader: only
    /// with three members. A lone member has no one to hand over to, and an
    /// election lost while its API server stalls (a busy disk under etcd)
    /// only makes both components exit and restart.
    leader_elect: bool,
    etcd: EtcdContext,
    bin: BinContext,
    binaries: Vec<BinaryCheck>,
    directories: Vec<ManagedPath>,
    files: Vec<ManagedPath>,
    units: &'static [&'static str],
    /// [`UNITS`] and the addons unit: what the bootstrap script installs.
    bootstrap_units: Vec<&'static str>,
    addons: AddonsContext,
    staged_unit_dir: &'static str,
    stamp_dir: &'static str,
    pki: PkiContext,
    kubeconfig: KubeconfigContext,
    health: HealthContext,
}

#[derive(Serialize)]
struct EtcdContext {
    listen_client_urls: String,
    advertise_client_url: String,
    peer_url: String,
    initial_cluster: String,
    initial_cluster_token: String,
    /// `--etcd-servers` for the API server: every member, over TLS.
    servers: String,
}

#[derive(Serialize)]
struct AddonsContext {
    unit: &'static str,
    manifest: &'static str,
    sha256: String,
    kubectl: String,
    kubeconfig: &'static str,
    /// This member's API server: the addons need no load balancer.
    server: String,
}

#[derive(Serialize)]
struct BinContext {
    kube_apiserver: String,
    kube_controller_manager: String,
    kube_scheduler: String,
}

/// A binary the bootstrap script verifies before going on.
#[derive(Serialize)]
pub(crate) struct BinaryCheck {
    path: String,
    sha256: String,
}

#[derive(Serialize)]
struct ManagedPath {
    path: String,
    /// Octal, as `chmod` and `mkdir -m` take it.
    mode: &'static str,
    required: bool,
}

#[derive(Serialize)]
struct PkiContext {
    ca_crt: &'static str,
    ca_key: &'static str,
    apiserver_crt: &'static str,
    apiserver_key: &'static str,
    apiserver_kubelet_client_crt: &'static str,
    apiserver_kubelet_client_key: &'static str,
    apiserver_etcd_client_crt: &'static str,
    apiserver_etcd_client_key: &'static str,
    front_proxy_ca_crt: &'static str,
    front_proxy_client_crt: &'static str,
    front_proxy_client_key: &'static str,
    sa_key: &'static str,
    sa_pub: &'static str,
    etcd_ca_crt: &'static str,
    etcd_server_crt: &'static str,
    etcd_server_key: &'static str,
    etcd_peer_crt: &'static str,
    etcd_peer_key: &'static str,
    etcd_healthcheck_client_crt: &'static str,
    etcd_healthcheck_client_key: &'static str,
    admin_client_crt: &'static str,
    admin_client_key: &'static str,
}

const PKI: PkiContext = PkiContext {
    ca_crt: paths::CA_CRT,
    ca_key: paths::CA_KEY,
    apiserver_crt: paths::APISERVER_CRT,
    apiserver_key: paths::APISERVER_KEY,
    apiserver_kubelet_client_crt: paths::APISERVER_KUBELET_CLIENT_CRT,
    apiserver_kubelet_client_key: paths::APISERVER_KUBELET_CLIENT_KEY,
    apiserver_etcd_client_crt: paths::APISERVER_ETCD_CLIENT_CRT,
    apiserver_etcd_client_key: paths::APISERVER_ETCD_CLIENT_KEY,
    front_proxy_ca_crt: paths::FRONT_PROXY_CA_CRT,
    front_proxy_client_crt: paths::FRONT_PROXY_CLIENT_CRT,
    front_proxy_client_key: paths::FRONT_PROXY_CLIENT_KEY,
    sa_key: paths::SA_KEY,
    sa_pub: paths::SA_PUB,
    etcd_ca_crt: paths::ETCD_CA_CRT,
    etcd_server_crt: paths::ETCD_SERVER_CRT,
    etcd_server_key: paths::ETCD_SERVER_KEY,
    etcd_peer_crt: paths::ETCD_PEER_CRT,
    etcd_peer_key: paths::ETCD_PEER_KEY,
    etcd_healthcheck_client_crt: paths::ETCD_HEALTHCHECK_CLIENT_CRT,
    etcd_healthcheck_client_key: paths::ETCD_HEALTHCHECK_CLIENT_KEY,
    admin_client_crt: paths::ADMIN_CLIENT_CRT,
    admin_client_key: paths::ADMIN_CLIENT_KEY,
};

#[derive(Serialize)]
struct KubeconfigContext {
    controller_manager: &'static str,
    scheduler: &'static str,
}

#[derive(Serialize)]
struct HealthContext {
    etcd_url: String,
    apiserver_url: String,
    endpoint_url: String,
}

/// Files the bootstrap script checks before starting anything: `required`
/// ones are read by a unit, the others only by the health check or an
/// operator. Private keys and kubeconfigs are 0600.
const MANAGED_FILES: &[(&str, &str, bool)] = &[
    (paths::CA_CRT, "0644", true),
    (paths::CA_KEY, "0600", true),
    (paths::APISERVER_CRT, "0644", true),
    (paths::APISERVER_KEY, "0600", true),
    (paths::APISERVER_KUBELET_CLIENT_CRT, "0644", true),
    (paths::APISERVER_KUBELET_CLIENT_KEY, "0600", true),
    (paths::APISERVER_ETCD_CLIENT_CRT, "0644", true),
    (paths::APISERVER_ETCD_CLIENT_KEY, "0600", true),
    (paths::FRONT_PROXY_CA_CRT, "0644", true),
    (paths::FRONT_PROXY_CLIENT_CRT, "0644", true),
    (paths::FRONT_PROXY_CLIENT_KEY, "0600", true),
    (paths::SA_KEY, "0600", true),
    (paths::SA_PUB, "0644", true),
    (paths::ETCD_CA_CRT, "0644", true),
    (paths::ETCD_SERVER_CRT, "0644", true),
    (paths::ETCD_SERVER_KEY, "0600", true),
    (paths::ETCD_PEER_CRT, "0644", true),
    (paths::ETCD_PEER_KEY, "0600", true),
    (paths::ETCD_HEALTHCHECK_CLIENT_CRT, "0644", false),
    (paths::ETCD_HEALTHCHECK_CLIENT_KEY, "0600", false),
    (paths::ADMIN_CLIENT_CRT, "0644", false),
    (paths::ADMIN_CLIENT_KEY, "0600", false),
    (paths::CONTROLLER_MANAGER_KUBECONFIG, "0600", true),
    (paths::SCHEDULER_KUBECONFIG, "0600", true),
    (paths::ADMIN_KUBECONFIG, "0600", false),
];

impl RenderContext {
    fn new(input: &ControlPlaneBundleInput) -> Result<Self, ValidationError> {
        let cluster_name = &input.cluster_name;
        let version = &input.kubernetes_version;
        let network = &input.network;
        check_dns_name("cluster_domain", &input.cluster_domain)?;
        check_endpoint_host(&input.endpoint_host)?;
        if input.endpoint_port == 0 {
            return Err(ValidationError::new("endpoint_port", "must not be 0"));
        }
        let bin_dir = check_path("bin_dir", &input.bin_dir)?;
        let etcd_bin = check_path("etcd_bin", &input.etcd_bin)?;
        let data_dir = check_path("data_dir", &input.data_dir)?;

        let members = check_members(&input.members)?;
        check_dns_label("member_name", &input.member_name)?;
        let address = check_machine_ipv4("member_address", input.member_address)?;
        match members.iter().find(|(name, _)| *name == input.member_name) {
            Some((_, listed)) if *listed == address => {}
            Some((_, listed)) => {
                return Err(ValidationError::new(
                    "member_address",
                    format!(
                    "{address} differs from the address {listed} listed for this member in members"
                ),
                ))
            }
            None => {
                return Err(ValidationError::new(
                    "member_name",
                    format!("{:?} is not one of the members", input.member_name),
                ))
            }
        }

        let binaries = check_binaries(&input.binary_sha256, &bin_dir, &etcd_bin)?;
        let in_bin_dir = |name: &str| format!("{bin_dir}/{name}");

        let listen_client_urls = if address.is_loopback() {
            format!("https://{address}:{ETCD_CLIENT_PORT}")
        } else {
            format!("https://{address}:{ETCD_CLIENT_PORT},https://127.0.0.1:{ETCD_CLIENT_PORT}")
        };
        let join = |f: &dyn Fn(&(String, Ipv4Addr)) -> String| {
            members.iter().map(f).collect::<Vec<_>>().join(",")
        };
        let etcd = EtcdContext {
            listen_client_urls,
            advertise_client_url: format!("https://{address}:{ETCD_CLIENT_PORT}"),
            peer_url: format!("https://{address}:{ETCD_PEER_PORT}"),
            initial_cluster: join(&|(name, addr)| {
                format!("{name}=https://{addr}:{ETCD_PEER_PORT}")
            }),
            initial_cluster_token: format!("kubeforge-{cluster_name}"),
            servers: join(&|(_, addr)| format!("https://{addr}:{ETCD_CLIENT_PORT}")),
        };

        let dir = |path: &str, mode| ManagedPath {
            path: path.to_string(),
            mode,
            required: true,
        };
        let directories = vec![
            dir(paths::KUBERNETES_DIR, "0755"),
            dir(paths::PKI_DIR, "0700"),
            dir(paths::ETCD_PKI_DIR, "0700"),
            dir(&data_dir, "0700"),
            dir(paths::STAMP_DIR, "0755"),
        ];
        let files = MANAGED_FILES
            .iter()
            .map(|(path, mode, required)| ManagedPath {
                path: (*path).to_string(),
                mode,
                required: *required,
            })
            .collect();

        Ok(Self {
            cluster_name: cluster_name.to_string(),
            kubernetes_version: format!("v{}", version.as_str()),
            member_name: input.member_name.clone(),
            member_address: address.to_string(),
            service_cidr: network.service_cidr.to_string(),
            pod_cidr: network.pod_cidr.to_string(),
            service_account_issuer: format!(
                "https://kubernetes.default.svc.{}",
                input.cluster_domain
            ),
            apiserver_port: APISERVER_PORT,
            etcd_bin,
            etcd_data_dir: data_dir,
            initial_cluster_state: input.initial_cluster_state.as_str(),
            leader_elect: members.len() > 1,
            etcd,
            bin: BinContext {
                kube_apiserver: in_bin_dir("kube-apiserver"),
                kube_controller_manager: in_bin_dir("kube-controller-manager"),
                kube_scheduler: in_bin_dir("kube-scheduler"),
            },
            binaries,
            directories,
            files,
            units: UNITS,
            bootstrap_units: UNITS.iter().copied().chain([addons::UNIT]).collect(),
            addons: AddonsContext {
                unit: addons::UNIT,
                manifest: addons::MANIFEST_PATH,
                sha256: hex_sha256(addons::manifest(input.network.dns_service_ip()).as_bytes()),
                kubectl: in_bin_dir("kubectl"),
                kubeconfig: paths::ADMIN_KUBECONFIG,
                server: format!("https://{address}:{APISERVER_PORT}"),
            },
            staged_unit_dir: paths::STAGED_UNIT_DIR,
            stamp_dir: paths::STAMP_DIR,
            pki: PKI,
            kubeconfig: KubeconfigContext {
                controller_manager: paths::CONTROLLER_MANAGER_KUBECONFIG,
                scheduler: paths::SCHEDULER_KUBECONFIG,
            },
            health: HealthContext {
                etcd_url: format!("https://127.0.0.1:{ETCD_CLIENT_PORT}"),
                apiserver_url: format!("https://{address}:{APISERVER_PORT}"),
                endpoint_url: format!("https://{}:{}", input.endpoint_host, input.endpoint_port),
            },
        })
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An IPv4 address a machine can have, from text (see
/// [`check_machine_ipv4`]).
pub(crate) fn parse_ipv4(field: &str, value: &str) -> Result<Ipv4Addr, ValidationError> {
    let address: Ipv4Addr = value
        .parse()
        .map_err(|_| ValidationError::new(field, format!("{value:?} is not an IPv4 address")))?;
    check_machine_ipv4(field, address)
}

/// An IPv4 address a machine can have (not unspecified, multicast or
/// broadcast).
pub(crate) fn check_machine_ipv4(
    field: &str,
    address: Ipv4Addr,
) -> Result<Ipv4Addr, ValidationError> {
    if address.is_unspecified() || address.is_multicast() || address.is_broadcast() {
        return Err(ValidationError::new(
            field,
            format!("{address} cannot be a machine's address"),
        ));
    }
    Ok(address)
}

fn check_members(members: &[EtcdMember]) -> Result<Vec<(String, Ipv4Addr)>, ValidationError> {
    if members.len() != 1 && members.len() != 3 {
        return Err(ValidationError::new(
            "members",
            format!("etcd needs 1 or 3 members, not {}", members.len()),
        ));
    }
    let mut checked: Vec<(String, Ipv4Addr)> = Vec::with_capacity(members.len());
    for (i, member) in members.iter().enumerate() {
        let under = |e: ValidationError| e.under(&format!("members[{i}]"));
        check_dns_label("name", &member.name).map_err(under)?;
        let address = check_machine_ipv4("address", member.address).map_err(under)?;
        if checked.iter().any(|(name, _)| *name == member.name) {
            return Err(under(ValidationError::new("name", "is listed twice")));
        }
        if checked.iter().any(|(_, addr)| *addr == address) {
            return Err(under(ValidationError::new("address", "is listed twice")));
        }
        checked.push((member.name.clone(), address));
    }
    Ok(checked)
}

fn check_binaries(
    sha256: &BTreeMap<String, String>,
    bin_dir: &str,
    etcd_bin: &str,
) -> Result<Vec<BinaryCheck>, ValidationError> {
    check_binary_sums(sha256, REQUIRED_BINARIES, |name| {
        if name == "etcd" {
            etcd_bin.to_string()
        } else {
            format!("{bin_dir}/{name}")
        }
    })
}

/// Checks a bundle's binary checksums: every `required` name present,
/// each name a plain file name, each sum lowercase sha256 hex; returns
/// where each binary is (`path_of`) and what it must hash to. The one rule
/// for the control-plane and worker bundles.
pub(crate) fn check_binary_sums(
    sha256: &BTreeMap<String, String>,
    required: &[&str],
    path_of: impl Fn(&str) -> String,
) -> Result<Vec<BinaryCheck>, ValidationError> {
    if let Some(missing) = required.iter().find(|b| !sha256.contains_key(**b)) {
        return Err(ValidationError::new(
            "binary_sha256",
            format!("no checksum for {missing}"),
        ));
    }
    sha256
        .iter()
        .map(|(name, hex)| {
            let field = format!("binary_sha256.{name}");
            check_file_name(&field, name)?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(ValidationError::new(
                    field,
                    "must be a sha256 in lowercase hex (64 characters)",
                ));
            }
            Ok(BinaryCheck {
                path: path_of(name),
                sha256: hex.clone(),
            })
        })
        .collect()
}

/// An absolute path of plain components (letters, digits, `.`, `_`, `-`),
/// without `.`/`..` components or a trailing slash.
pub(crate) fn check_path(field: &str, value: &str) -> Result<String, ValidationError> {
    let Some(rest) = value.strip_prefix('/') else {
        return Err(ValidationError::new(
            field,
            format!("{value:?} is not an absolute path"),
        ));
    };
    for component in rest.split('/') {
        check_file_name(field, component).map_err(|_| {
            ValidationError::new(
                field,
                format!("{value:?} is not a plain absolute path (letters, digits, '.', '_', '-')"),
            )
        })?;
    }
    Ok(value.to_string())
}

pub(crate) fn check_file_name(field: &str, value: &str) -> Result<(), ValidationError> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    if value.is_empty() || value == "." || value == ".." || !value.bytes().all(plain) {
        return Err(ValidationError::new(
            field,
            format!("{value:?} is not a plain file name"),
        ));
    }
    Ok(())
}

/// A DNS-1123 label: lowercase letters, digits and `-`, at most 63 characters.
pub(crate) fn check_dns_label(field: &str, value: &str) -> Result<(), ValidationError> {
    crate::names::check_dns_label(value, 63).map_err(|_| {
        ValidationError::new(
            field,
            format!("{value:?} is not a DNS-1123 label (lowercase letters, digits, '-')"),
        )
    })
}

/// A DNS name: dot-separated DNS-1123 labels, at most 253 characters
/// ([`crate::names::check_dns_subdomain`]).
pub(crate) fn check_dns_name(field: &str, value: &str) -> Result<(), ValidationError> {
    crate::names::check_dns_subdomain(value)
        .map_err(|_| ValidationError::new(field, format!("{value:?} is not a DNS name")))
}

fn check_endpoint_host(value: &str) -> Result<(), ValidationError> {
    if value.parse::<Ipv4Addr>().is_ok() {
        return parse_ipv4("endpoint_host", value).map(|_| ());
    }
    check_dns_name("endpoint_host", value).map_err(|_| {
        ValidationError::new(
            "endpoint_host",
            format!("{value:?} is neither an IPv4 address nor a DNS name"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn sha(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn input(members: &[(&str, &str)]) -> ControlPlaneBundleInput {
        let (member_name, member_address) = members[0];
        let endpoint_host = if members.len() == 1 {
            member_address
        } else {
            "10.77.0.10"
        };
        ControlPlaneBundleInput {
            cluster_name: ClusterName::parse("demo").unwrap(),
            kubernetes_version: KubernetesVersion::parse("1.20.2").unwrap(),
            member_name: member_name.into(),
            member_address: member_address.parse().unwrap(),
            members: members
                .iter()
                .map(|(name, address)| EtcdMember {
                    name: (*name).into(),
                    address: address.parse().unwrap(),
                })
                .collect(),
            endpoint_host: endpoint_host.into(),
            endpoint_port: 6443,
            network: ClusterNetwork::parse("10.244.0.0/16", "10.96.0.0/12").unwrap(),
            bin_dir: "/opt/kubeforge/bin".into(),
            etcd_bin: "/usr/bin/etcd".into(),
            data_dir: "/var/lib/etcd".into(),
            initial_cluster_state: InitialClusterState::New,
            cluster_domain: "cluster.local".into(),
            binary_sha256: [
                ("etcd", sha('a')),
                ("kube-apiserver", sha('b')),
                ("kube-controller-manager", sha('c')),
                ("kube-scheduler", sha('d')),
                ("kubectl", sha('e')),
            ]
            .into_iter()
            .map(|(name, hex)| (name.to_string(), hex))
            .collect(),
        }
    }

    fn one_member() -> ControlPlaneBundleInput {
        input(&[("demo-cp-0", "10.77.0.21")])
    }

    fn three_members() -> ControlPlaneBundleInput {
        input(&[
            ("demo-cp-0", "10.77.0.21"),
            ("demo-cp-1", "10.77.0.22"),
            ("demo-cp-2", "10.77.0.23"),
        ])
    }

    fn file<'a>(files: &'a [BundleFile], path: &str) -> &'a BundleFile {
        files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no {path} in the bundle"))
    }

    fn snapshot_name(prefix: &str, path: &str) -> String {
        let file_name = path.rsplit('/').next().unwrap_or(path);
        format!("{prefix}__{}", file_name.replace(['.', '-'], "_"))
    }

    #[test]
    fn bundle_one_member_snapshots() {
        let files = render_control_plane(&one_member()).expect("renders");
        assert_eq!(
            files.len(),
            TEMPLATES.len() + 1,
            "the templates and the addons manifest"
        );
        for f in &files {
            insta::assert_snapshot!(snapshot_name("one_member", &f.path), f.contents);
        }
    }

    #[test]
    fn bundle_three_member_snapshots() {
        let files = render_control_plane(&three_members()).expect("renders");
        for f in &files {
            insta::assert_snapshot!(snapshot_name("three_members", &f.path), f.contents);
        }
    }

    #[test]
    fn bundle_paths_and_modes() {
        let files = render_control_plane(&one_member()).expect("renders");
        let listing: Vec<String> = files
            .iter()
            .map(|f| format!("{:o} {}", f.mode, f.path))
            .collect();
        assert_eq!(
            listing,
            [
                "644 /opt/kubeforge/units/etcd.service",
                "644 /opt/kubeforge/units/kube-apiserver.service",
                "644 /opt/kubeforge/units/kube-controller-manager.service",
                "644 /opt/kubeforge/units/kube-scheduler.service",
                "644 /opt/kubeforge/units/kubeforge-addons.service",
                "755 /opt/kubeforge/bootstrap-controlplane.sh",
                "755 /opt/kubeforge/healthcheck.sh",
                "644 /etc/kubernetes/addons/kubeforge.yaml",
            ]
        );
        for unit in UNITS {
            assert_eq!(
                file(&files, &format!("{}/{unit}", paths::STAGED_UNIT_DIR)).mode,
                0o644
            );
        }
    }

    #[test]
    fn bundle_three_members_list_every_peer_in_initial_cluster() {
        let files = render_control_plane(&three_members()).expect("renders");
        let etcd = &file(&files, "/opt/kubeforge/units/etcd.service").contents;
        let flag = etcd
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("--initial-cluster="))
            .expect("--initial-cluster is set");
        let flag = flag.trim_end_matches(" \\");
        assert_eq!(
            flag,
            "demo-cp-0=https://10.77.0.21:2380,demo-cp-1=https://10.77.0.22:2380,demo-cp-2=https://10.77.0.23:2380"
        );
        let apiserver = &file(&files, "/opt/kubeforge/units/kube-apiserver.service").contents;
        assert!(apiserver.contains(
            "--etcd-servers=https://10.77.0.21:2379,https://10.77.0.22:2379,https://10.77.0.23:2379 \\"
        ));
    }

    #[test]
    fn bundle_each_member_advertises_its_own_address() {
        let mut second = three_members();
        second.member_name = "demo-cp-1".into();
        second.member_address = Ipv4Addr::new(10, 77, 0, 22);
        let files = render_control_plane(&second).expect("renders");
        let etcd = &file(&files, "/opt/kubeforge/units/etcd.service").contents;
        assert!(etcd.contains("--name=demo-cp-1 \\"));
        assert!(
            etcd.contains("--listen-client-urls=https://10.77.0.22:2379,https://127.0.0.1:2379 \\")
        );
        assert!(etcd.contains("--initial-advertise-peer-urls=https://10.77.0.22:2380 \\"));
        let apiserver = &file(&files, "/opt/kubeforge/units/kube-apiserver.service").contents;
        assert!(apiserver.contains("--advertise-address=10.77.0.22 \\"));
    }

    #[test]
    fn bundle_replacement_member_joins_existing_cluster() {
        let mut replacement = three_members();
        replacement.initial_cluster_state = InitialClusterState::Existing;
        let files = render_control_plane(&replacement).expect("renders");
        let etcd = &file(&files, "/opt/kubeforge/units/etcd.service").contents;
        assert!(etcd.contains("--initial-cluster-state=existing \\"));
    }

    #[test]
    fn bundle_rendering_is_deterministic() {
        assert_eq!(
            render_control_plane(&three_members()).expect("renders"),
            render_control_plane(&three_members()).expect("renders")
        );
    }

    /// `bash -n` parses without running: the rendered scripts must be valid bash.
    #[test]
    fn bundle_scripts_pass_bash_syntax_check() {
        for input in [one_member(), three_members()] {
            let files = render_control_plane(&input).expect("renders");
            for path in [paths::BOOTSTRAP_SCRIPT, paths::HEALTHCHECK_SCRIPT] {
                let script = &file(&files, path).contents;
                assert!(
                    script.starts_with("#!/bin/bash\n"),
                    "{path} has no bash shebang"
                );
                let mut bash = Command::new("bash")
                    .arg("-n")
                    .stdin(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("bash is installed");
                bash.stdin
                    .take()
                    .expect("stdin is piped")
                    .write_all(script.as_bytes())
                    .expect("bash reads the script");
                let output = bash.wait_with_output().expect("bash finishes");
                assert!(
                    output.status.success(),
                    "{path} is not valid bash:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }

    #[test]
    fn bundle_bootstrap_verifies_every_binary() {
        let files = render_control_plane(&one_member()).expect("renders");
        let script = &file(&files, paths::BOOTSTRAP_SCRIPT).contents;
        for (path, c) in [
            ("/usr/bin/etcd", 'a'),
            ("/opt/kubeforge/bin/kube-apiserver", 'b'),
            ("/opt/kubeforge/bin/kube-controller-manager", 'c'),
            ("/opt/kubeforge/bin/kube-scheduler", 'd'),
            ("/opt/kubeforge/bin/kubectl", 'e'),
        ] {
            assert!(
                script.contains(&format!("\nverify_binary {path} {}\n", sha(c))),
                "{path} is not verified"
            );
        }
    }

    /// Every value a template inserts goes through a quoting filter.
    #[test]
    fn bundle_templates_quote_every_value() {
        for (name, source, _, _) in TEMPLATES {
            let mut rest = *source;
            while let Some(start) = rest.find("{{") {
                let end = rest[start..].find("}}").expect("expression is closed") + start;
                let expression = rest[start + 2..end].trim();
                let filter = if name.ends_with(".sh") {
                    "| shell_quote"
                } else {
                    "| systemd_quote"
                };
                assert!(
                    expression.ends_with(filter),
                    "{name}: `{{{{ {expression} }}}}` is not quoted with `{filter}`"
                );
                rest = &rest[end + 2..];
            }
        }
    }

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/opt/kubeforge/bin"), "/opt/kubeforge/bin");
        assert_eq!(shell_quote("10.77.0.21"), "10.77.0.21");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn systemd_quote_escapes_specifiers_and_variables() {
        assert_eq!(
            systemd_quote("/usr/bin/etcd").as_deref(),
            Ok("/usr/bin/etcd")
        );
        assert_eq!(systemd_quote("a b").as_deref(), Ok("\"a b\""));
        assert_eq!(systemd_quote("100%").as_deref(), Ok("\"100%%\""));
        assert_eq!(systemd_quote("$HOME").as_deref(), Ok("\"$$HOME\""));
        assert_eq!(
            systemd_quote("say \"hi\"\n").as_deref(),
            Ok(r#""say \"hi\"\n""#)
        );
        assert!(systemd_quote("bell\u{7}").is_err());
    }

    fn invalid(input: &ControlPlaneBundleInput) -> ValidationError {
        match render_control_plane(input) {
            Err(BundleError::Invalid(e)) => e,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn bundle_rejects_invalid_input() {
        let mut two = three_members();
        two.members.pop();
        assert_eq!(invalid(&two).field, "members");

        let mut stranger = three_members();
        stranger.member_name = "demo-cp-9".into();
        assert_eq!(invalid(&stranger).field, "member_name");

        let mut moved = three_members();
        moved.member_address = Ipv4Addr::new(10, 77, 0, 99);
        assert_eq!(invalid(&moved).field, "member_address");

        let mut twice = three_members();
        twice.members[2].address = Ipv4Addr::new(10, 77, 0, 21);
        assert_eq!(invalid(&twice).field, "members[2].address");

        let mut broadcast = three_members();
        broadcast.members[1].address = Ipv4Addr::BROADCAST;
        assert_eq!(invalid(&broadcast).field, "members[1].address");

        let mut shell = one_member();
        shell.bin_dir = "/opt/$(reboot)".into();
        assert_eq!(invalid(&shell).field, "bin_dir");

        let mut relative = one_member();
        relative.etcd_bin = "usr/bin/etcd".into();
        assert_eq!(invalid(&relative).field, "etcd_bin");

        let mut dotdot = one_member();
        dotdot.data_dir = "/var/lib/../etcd".into();
        assert_eq!(invalid(&dotdot).field, "data_dir");

        let mut unchecked = one_member();
        unchecked.binary_sha256.remove("kube-scheduler");
        assert_eq!(invalid(&unchecked).field, "binary_sha256");

        let mut short = one_member();
        short.binary_sha256.insert("etcd".into(), "abc".into());
        assert_eq!(invalid(&short).field, "binary_sha256.etcd");

        let mut sneaky = one_member();
        sneaky.binary_sha256.insert("../sh".into(), sha('f'));
        assert_eq!(invalid(&sneaky).field, "binary_sha256.../sh");

        let mut domain = one_member();
        domain.cluster_domain = "cluster..local".into();
        assert_eq!(invalid(&domain).field, "cluster_domain");

        let mut endpoint = one_member();
        endpoint.endpoint_host = "api.example.com:443".into();
        assert_eq!(invalid(&endpoint).field, "endpoint_host");
    }

    #[test]
    fn bundle_input_serializes_state_in_lowercase() {
        let json = serde_json::to_value(three_members()).expect("serializes");
        assert_eq!(json["initial_cluster_state"], "new");
        assert_eq!(json["members"].as_array().map(Vec::len), Some(3));
    }
}

/// Where the load balancer's bundle goes on its machine.
pub mod lb_paths {
    pub const STAGED_DIR: &str = "/opt/kubeforge/lb";
    pub const BOOTSTRAP_SCRIPT: &str = "/opt/kubeforge/lb/bootstrap-lb.sh";
    pub const HEALTHCHECK_SCRIPT: &str = "/opt/kubeforge/lb/healthcheck-lb.sh";
    /// The sha256 of the HAProxy config and unit HAProxy was last
    /// (re)started with; the bootstrap restarts it when they differ.
    pub const STAMP: &str = "/var/lib/kubeforge/lb/haproxy.sha256";
}

/// The stable endpoint of a highly available control plane: HAProxy in TCP
/// mode, health-checking each member's `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoadBalancerInput {
    pub cluster_name: ClusterName,
    pub listen_port: u16,
    pub backend_port: u16,
    pub backends: Vec<EtcdMember>,
}

const LB_TEMPLATES: &[Template] = &[
    (
        "haproxy.cfg",
        include_str!("../../templates/loadbalancer/haproxy.cfg.tera"),
        "/opt/kubeforge/lb/haproxy.cfg",
        0o644,
    ),
    (
        "kubeforge-lb.service",
        include_str!("../../templates/loadbalancer/kubeforge-lb.service.tera"),
        "/opt/kubeforge/lb/kubeforge-lb.service",
        0o644,
    ),
    (
        "bootstrap-lb.sh",
        include_str!("../../templates/loadbalancer/bootstrap-lb.sh.tera"),
        lb_paths::BOOTSTRAP_SCRIPT,
        0o755,
    ),
    (
        "healthcheck-lb.sh",
        include_str!("../../templates/loadbalancer/healthcheck-lb.sh.tera"),
        lb_paths::HEALTHCHECK_SCRIPT,
        0o755,
    ),
];

/// Renders the load balancer's files: config, unit, bootstrap, health check.
pub fn render_load_balancer(input: &LoadBalancerInput) -> Result<Vec<BundleFile>, BundleError> {
    let invalid = |field: String, message: &str| {
        BundleError::Invalid(crate::ValidationError::new(field, message))
    };
    if input.backends.is_empty() || input.backends.len() > 7 {
        return Err(invalid("backends".into(), "between 1 and 7 backends"));
    }
    for (i, b) in input.backends.iter().enumerate() {
        let under = |e: ValidationError| BundleError::Invalid(e.under(&format!("backends[{i}]")));
        check_dns_label("name", &b.name).map_err(under)?;
        check_machine_ipv4("address", b.address).map_err(under)?;
    }
    if input.listen_port == 0 || input.backend_port == 0 {
        return Err(invalid("listen_port".into(), "ports must be 1-65535"));
    }
    let mut context = Context::from_serialize(input).map_err(|e| BundleError::Render {
        template: "context".into(),
        message: error_chain(&e),
    })?;
    context.insert("stamp", lb_paths::STAMP);
    render_all(LB_TEMPLATES, &context)
}

#[cfg(test)]
mod lb_tests {
    use super::*;

    fn input() -> LoadBalancerInput {
        LoadBalancerInput {
            cluster_name: ClusterName::parse("web").unwrap(),
            listen_port: 6443,
            backend_port: 6443,
            backends: (0..3)
                .map(|i| EtcdMember {
                    name: format!("web-cp-{i}"),
                    address: Ipv4Addr::new(10, 77, 0, 10 + i),
                })
                .collect(),
        }
    }

    #[test]
    fn load_balancer_renders_every_backend() {
        let files = render_load_balancer(&input()).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/opt/kubeforge/lb/haproxy.cfg",
                "/opt/kubeforge/lb/kubeforge-lb.service",
                lb_paths::BOOTSTRAP_SCRIPT,
                lb_paths::HEALTHCHECK_SCRIPT
            ]
        );
        for f in &files {
            insta::assert_snapshot!(
                format!("lb_{}", f.path.rsplit('/').next().unwrap_or("")),
                f.contents
            );
        }
        let cfg = &files[0].contents;
        for i in 0..3 {
            assert!(
                cfg.contains(&format!("server web-cp-{i} 10.77.0.{}:6443", 10 + i)),
                "{cfg}"
            );
        }
    }

    #[test]
    fn load_balancer_scripts_parse_in_bash() {
        for f in render_load_balancer(&input())
            .unwrap()
            .iter()
            .filter(|f| f.path.ends_with(".sh"))
        {
            let out = std::process::Command::new("bash")
                .args(["-n", "-c", &f.contents])
                .output()
                .expect("bash");
            assert!(
                out.status.success(),
                "{}: {}",
                f.path,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn load_balancer_rejects_bad_backends() {
        let mut bad = input();
        bad.backends[1].address = Ipv4Addr::UNSPECIFIED;
        assert!(
            matches!(render_load_balancer(&bad), Err(BundleError::Invalid(e)) if e.field == "backends[1].address")
        );
        let mut bad = input();
        bad.backends[2].name = "web;reboot".into();
        assert!(
            matches!(render_load_balancer(&bad), Err(BundleError::Invalid(e)) if e.field == "backends[2].name")
        );
        let mut bad = input();
        bad.backends.clear();
        assert!(render_load_balancer(&bad).is_err());
    }
}
