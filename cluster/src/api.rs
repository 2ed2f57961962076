//! The API's wire types: the body of every `/v1` request and answer, and
//! the `Problem` every error answers with.
//!
//! They live here, once, so that everything speaking the API agrees on the
//! JSON by construction: the HTTP API serializes them and generates its
//! OpenAPI document from them, the `kubeforge` CLI builds its requests and
//! reads the answers with them, and so will the gRPC service and a web
//! console. Everything here is plain data (`Serialize + Deserialize +
//! ToSchema`): no I/O, no database row types. The service turns its store
//! rows into these views; the create requests are defined with their
//! parsing in [`crate::spec`] and re-exported here.
//!
//! The views show resources as tenants see them: internal columns (tenant
//! scoping, resource versions) become `etag`s or stay hidden.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    AutoRepair, AutoscalerSettings, Autoscaling, Condition, NodeResources, Phase, ProviderSpec,
    Taint,
};

pub use crate::spec::{
    AutoscalerSettingsRequest, ControlPlaneRequest, CreateClusterRequest, CreateNodePoolRequest,
    NetworkRequest,
};

// ---------------------------------------------------------------------------
// Clusters

/// A cluster's control plane: how many members, on which machine type.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ControlPlaneView {
    pub replicas: u32,
    pub machine_type: String,
}

/// A cluster's pod and service ranges, as CIDR strings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkView {
    pub pod_cidr: String,
    pub service_cidr: String,
}

/// A cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    pub id: Uuid,
    pub name: String,
    pub tenant: String,
    pub kubernetes_version: String,
    pub provider: ProviderSpec,
    pub control_plane: ControlPlaneView,
    pub network: NetworkView,
    pub labels: BTreeMap<String, String>,
    pub deletion_protection: bool,
    /// The autoscaler's settings, every field.
    pub autoscaler: AutoscalerSettings,
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    /// The cluster's node pools, in the order they were created: each
    /// pool's desired size against its Ready nodes, and its phase (the
    /// pool itself, with its nodes and conditions, is at
    /// `GET .../node-pools/{pool}`).
    pub node_pools: Vec<NodePoolSummary>,
    pub endpoint: Option<String>,
    #[schema(value_type = Object)]
    pub certificates: serde_json::Value,
    pub generation: i64,
    pub observed_generation: i64,
    pub etag: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One node pool as its cluster shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodePoolSummary {
    pub name: String,
    pub machine_type: String,
    /// Desired nodes.
    pub size: u32,
    /// Nodes Ready in the cluster on running machines.
    pub ready_nodes: u32,
    pub phase: Phase,
}

/// `PATCH /v1/clusters/{c}` body: only these fields may change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateClusterRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_protection: Option<bool>,
    /// Merged onto the current settings: the fields given change, the
    /// others stay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerSettingsRequest>,
}

/// Query of `GET /v1/clusters`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ClusterListQuery {
    /// Only clusters in this phase (`provisioning`, `ready`, `degraded`,
    /// `deleting`, `failed`).
    #[param(value_type = Option<Phase>)]
    pub phase: Option<String>,
    /// `key` or `key=value`.
    pub label: Option<String>,
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
    /// Page size.
    pub limit: Option<i64>,
}

/// Query of paginated sub-lists (events).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
    /// Page size.
    pub limit: Option<i64>,
}

/// `POST /v1/clusters/{c}/kubeconfig` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeconfigRequest {
    #[serde(default = "admin_role")]
    pub role: String,
    #[serde(default = "hour")]
    pub ttl_seconds: u64,
}

/// `POST /v1/clusters/{c}/kubeconfig` answered as `application/json`
/// (the default answer is the bare kubeconfig, `application/yaml`).
/// Holds the client key: a secret; `Debug` redacts the kubeconfig.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct KubeconfigIssued {
    /// The kubeconfig, YAML: one cluster, one user, one context, the
    /// context current.
    pub kubeconfig: String,
    /// When the client certificate expires (RFC 3339).
    pub expires_at: DateTime<Utc>,
    /// `admin`, `editor` or `viewer`.
    pub role: String,
    /// The context's name, `kubeforge_<tenant>_<cluster>_<role>`; the
    /// cluster and user entries have the same name.
    pub context: String,
    /// The credential generation the certificate's group carries.
    pub credential_generation: i64,
}

impl fmt::Debug for KubeconfigIssued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeconfigIssued")
            .field("kubeconfig", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("role", &self.role)
            .field("context", &self.context)
            .field("credential_generation", &self.credential_generation)
            .finish()
    }
}

fn admin_role() -> String {
    "admin".into()
}
fn hour() -> u64 {
    3600
}

/// The answer to a cluster create (202) or update (200): the cluster as it
/// is now, and the operation that brings it where it was asked to be.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterAccepted {
    pub cluster: ClusterView,
    pub operation: OperationView,
}

// ---------------------------------------------------------------------------
// Node pools

/// One node of a pool: its machine, and what became of it in the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub name: String,
    pub machine: Uuid,
    pub address: Option<String>,
    /// The node's state: `ready`, `not_ready`, `joining`, `draining` or
    /// `missing` as last observed in the cluster; before that, from the
    /// machine: `provisioning`, `joining`, `draining`, `deleting`, `failed`.
    pub state: String,
    /// The machine's state in the ledger (`pending`, `provisioning`,
    /// `running`, `draining`, `deleting`, `failed`).
    pub machine_state: String,
    /// Since when the node has been unhealthy (auto-repair counts from here).
    pub unhealthy_since: Option<DateTime<Utc>>,
    pub unhealthy_reason: Option<String>,
}

/// A node pool.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodePoolView {
    pub id: Uuid,
    pub cluster: Uuid,
    pub name: String,
    pub machine_type: String,
    /// Launched instead of `machine_type`, in order, when the provider has
    /// no capacity for it (`aws`).
    pub alternative_machine_types: Vec<String>,
    pub size: u32,
    pub autoscaling: Option<Autoscaling>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Labels a registered host must carry to serve this pool (`ssh`
    /// provider); empty: any free host.
    pub host_selector: BTreeMap<String, String>,
    /// Seconds a node's drain may take before it is removed anyway.
    pub drain_timeout_seconds: u32,
    pub auto_repair: AutoRepair,
    /// Nodes Ready in the cluster on running machines.
    pub ready_nodes: u32,
    pub nodes: Vec<NodeView>,
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    pub generation: i64,
    pub observed_generation: i64,
    pub etag: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `PATCH .../node-pools/{p}`: `{"size": N}`, `{"autoscaling": {..}}` or
/// `{"autoscaling": null}`, `{"drain_timeout_seconds": S}`,
/// `{"auto_repair": {..}}`, `{"host_selector": {..}}`,
/// `{"alternative_machine_types": [..]}`, or several at once. Absent fields are unchanged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNodePoolRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// Absent: unchanged. `null`: autoscaling off.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Autoscaling>)]
    pub autoscaling: Option<Option<Autoscaling>>,
    /// 0-3600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout_seconds: Option<u32>,
    /// Replaces the pool's auto-repair settings; fields left out take their
    /// defaults (`{}`: on, after 300 seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_repair: Option<AutoRepair>,
    /// Replaces the pool's host selector (`ssh` provider only; `{}`: any
    /// host). Machines already running stay on their hosts; new ones are
    /// claimed by the new selector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_selector: Option<BTreeMap<String, String>>,
    /// Replaces the pool's alternative machine types (`aws` only; `[]`:
    /// none). Machines already running keep their type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternative_machine_types: Option<Vec<String>>,
}

/// A field that is present, `null` included: `Some(None)` for `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Autoscaling>>, D::Error> {
    Option::<Autoscaling>::deserialize(d).map(Some)
}

/// The answer to a node pool create (202) or update (200): the pool as it
/// is now, and the operation that brings it where it was asked to be.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodePoolAccepted {
    pub node_pool: NodePoolView,
    pub operation: OperationView,
}

// ---------------------------------------------------------------------------
// Machines, operations, events

/// A machine in the ledger.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachineView {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub node_pool: Option<Uuid>,
    pub provider: String,
    /// The provider's own id of the machine (a lab container, a host, an
    /// instance).
    pub provider_id: Option<String>,
    /// A worker's node's `spec.providerID` (`kubeforge://<machine id>`),
    /// also its instance id over the externalgrpc provider; None for
    /// control-plane members.
    pub node_provider_id: Option<String>,
    pub machine_type: String,
    pub state: String,
    pub address: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// An operation with its steps.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperationView {
    pub id: Uuid,
    pub cluster: Uuid,
    pub node_pool: Option<Uuid>,
    #[serde(rename = "type")]
    pub type_: String,
    pub state: String,
    pub steps: Vec<Step>,
    pub error: Option<OperationError>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One step of an operation, in the order the reconciler goes through them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Step {
    pub name: String,
    /// pending, running, succeeded or failed.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<OperationError>,
}

/// Why an operation failed, for machines and people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OperationError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

/// The answer to a delete (202): the operation that deletes, the one
/// already under way if deletion had been asked for before.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperationAccepted {
    pub operation: OperationView,
}

/// Something that happened to a cluster, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Event)]
pub struct EventView {
    pub id: i64,
    pub cluster: Uuid,
    pub node_pool: Option<Uuid>,
    pub operation: Option<Uuid>,
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

// ---------------------------------------------------------------------------
// Machine types

/// A machine type (`GET /v1/machine-types`): what a machine of it has, and
/// what its node offers to pods. `allocatable` is what the autoscaler's
/// template node of a pool of this type starts from (before DaemonSet
/// pods), and lab workers are held to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MachineTypeView {
    /// `small`, `medium`, `large`, or an EC2 instance type (`m5.large`).
    pub name: String,
    /// vCPUs.
    pub cpu: u32,
    pub memory_mib: u32,
    /// GPUs, advertised to pods as the extended resource `nvidia.com/gpu`.
    pub gpus: u32,
    /// The GPUs' model; null without GPUs.
    pub gpu_model: Option<String>,
    /// Most pods on one node.
    pub pods: u32,
    /// Capacity less the system reservation (100m CPU, 256 MiB) and the
    /// kubelet's hard-eviction threshold (100 MiB); every GPU is
    /// allocatable.
    pub allocatable: NodeResources,
    /// The provider kinds that offer the type (`lab`, `ssh`, `aws`).
    pub providers: Vec<String>,
    /// The EC2 instance type a machine of this type is launched as on
    /// `aws` (a generic size launches one with at least its vCPUs and
    /// memory).
    pub ec2_instance_type: Option<String>,
}

impl From<crate::MachineType> for MachineTypeView {
    fn from(t: crate::MachineType) -> Self {
        let capacity = t.capacity();
        Self {
            name: t.as_str().into(),
            cpu: capacity.cpu_millis / 1000,
            memory_mib: capacity.memory_mib,
            gpus: t.gpus(),
            gpu_model: t.gpu_model().map(str::to_string),
            pods: capacity.pods,
            allocatable: t.allocatable(),
            providers: t.providers().iter().map(|k| k.to_string()).collect(),
            ec2_instance_type: t.ec2_instance_type().map(str::to_string),
        }
    }
}

/// Query of `GET /v1/machine-types`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MachineTypeListQuery {
    /// Only the types this provider kind offers (`lab`, `ssh` or `aws`).
    pub provider: Option<String>,
}

// ---------------------------------------------------------------------------
// Autoscaler

/// What the autoscaler of a cluster sees and decided: per pool its recent
/// decisions, per pending pod where it goes or why no pool takes it
/// (`GET /v1/clusters/{cluster}/autoscaler`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AutoscalerStatusView {
    pub cluster: Uuid,
    /// `builtin`, `off` or `external`, from the cluster's settings.
    pub mode: String,
    /// When a replica last looked at the cluster; null if none has yet
    /// (no pool autoscales, or the watch has not started).
    pub observed_at: Option<DateTime<Utc>>,
    /// Pods pending as the autoscaler counts them (unschedulable, unbound,
    /// not nominated, not DaemonSet or mirror pods).
    pub pending_pods: u64,
    pub pools: Vec<AutoscalerPoolView>,
    /// Pending pods and what the autoscaler made of them; at most
    /// [`PENDING_SHOWN`] pods (`pending_pods` counts all).
    pub pending: Vec<PendingPodView>,
}

/// `POST /v1/clusters/{cluster}/autoscaler/credentials` body; the body
/// itself is optional (all defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscalerCredentialsRequest {
    /// Lifetime of the client certificate, 3600 to 31536000 (365 days);
    /// 7776000 (90 days) when left out.
    #[serde(default = "ninety_days")]
    pub ttl_seconds: u64,
}

impl Default for AutoscalerCredentialsRequest {
    fn default() -> Self {
        Self {
            ttl_seconds: ninety_days(),
        }
    }
}

fn ninety_days() -> u64 {
    crate::externalgrpc::DEFAULT_CREDENTIALS_TTL
        .num_seconds()
        .unsigned_abs()
}

/// What an external cluster-autoscaler needs to reach this service's
/// `externalgrpc` endpoint as one cluster: the endpoint, the CA that
/// signs its serving certificate, a client certificate and key naming the
/// cluster, and the `--cloud-config` file that points at them under
/// `/etc/kubeforge-autoscaler`. The key exists only in this answer: the
/// service keeps no copy (hence `Serialize` on a private key, here only).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AutoscalerCredentialsView {
    /// `host:port` the autoscaler dials.
    pub address: String,
    /// The endpoint's CA (PEM): trust it for the server, nothing else.
    pub ca_pem: String,
    /// The client certificate (PEM): CN `cluster:<id>`, O the tenant, URI
    /// SAN `kubeforge://clusters/<id>`, clientAuth only.
    pub cert_pem: String,
    /// The client certificate's private key (PKCS#8 PEM); not kept by the
    /// service, so it cannot be fetched again.
    pub key_pem: String,
    /// The YAML for `cluster-autoscaler --cloud-provider=externalgrpc
    /// --cloud-config=FILE`: `address`, `key`, `cert`, `cacert`.
    pub cloud_config: String,
    /// Lowercase hex of the certificate's serial (as the audit event says).
    pub serial: String,
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for AutoscalerCredentialsView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AutoscalerCredentialsView")
            .field("address", &self.address)
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .field("cloud_config", &self.cloud_config)
            .field("serial", &self.serial)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// How many pending pods a status lists one by one.
pub const PENDING_SHOWN: usize = 200;
/// How many recent decisions a status keeps per pool.
pub const DECISIONS_KEPT: usize = 20;

/// One autoscaling pool, as the autoscaler sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AutoscalerPoolView {
    pub name: String,
    pub min: u32,
    pub max: u32,
    /// The pool's size now (what the autoscaler or `PATCH` last wrote).
    pub size: u32,
    /// Nodes of the pool that are Ready.
    pub ready: u32,
    /// Why the autoscaler leaves the pool alone for now, if it does
    /// (backed off after machines failed, cooling down after a scale-up).
    pub hold: Option<String>,
    /// Newest first, at most [`DECISIONS_KEPT`].
    pub recent_decisions: Vec<AutoscalerDecisionView>,
}

/// What one autoscaler decision did to a pool, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AutoscalerDecisionView {
    pub at: DateTime<Utc>,
    /// `scale_up`, `scale_down` or `no_scale_up`.
    pub kind: String,
    pub from: u32,
    pub to: u32,
    /// The node removed, for a scale-down.
    pub node: Option<String>,
    /// Pending pods the decision is for (scale-up).
    pub pods: u64,
    pub reason: String,
    /// The operation that carries the new size out.
    pub operation: Option<Uuid>,
}

/// One pending pod and what the autoscaler made of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PendingPodView {
    pub namespace: String,
    pub name: String,
    /// `existing_node` (fits on a node there now: the scheduler will take
    /// it), `scale_up` (a new node of `pool` is on its way for it), or
    /// `no_pool` (nothing can take it; `reasons` says why, pool by pool).
    pub outcome: String,
    pub pool: Option<String>,
    pub node: Option<String>,
    /// Why each pool cannot take the pod (`no_pool`), or why it waits.
    pub reasons: Vec<PoolReasonView>,
}

/// Why one pool cannot take a pod.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PoolReasonView {
    pub pool: String,
    pub reason: String,
}

/// What the autoscaler of a cluster keeps between looks (stored as JSON by
/// the replica that watches the cluster); the status view is built from it
/// and the pools' rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AutoscalerSnapshot {
    pub observed_at: Option<DateTime<Utc>>,
    pub pending_pods: u64,
    pub pending: Vec<PendingPodView>,
    /// By pool name.
    pub holds: BTreeMap<String, String>,
    /// By pool name, newest first.
    pub decisions: BTreeMap<String, Vec<AutoscalerDecisionView>>,
}

// ---------------------------------------------------------------------------
// Lists

/// A page of results; `next_page_token` asks for the next one and is
/// `null` on the last page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    /// Always present: `null` on the last page.
    #[schema(required = true)]
    pub next_page_token: Option<String>,
}

/// A whole list, in one answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Items<T: ToSchema> {
    pub items: Vec<T>,
}

// ---------------------------------------------------------------------------
// Platform administration

/// Credentials for a registered host; sealed at rest, never returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum HostCredentials {
    // Titles name the variants' types in generated clients.
    #[schema(title = "PrivateKeyCredentials")]
    PrivateKey(String),
    #[schema(title = "PasswordCredentials")]
    Password(String),
}

/// `POST /v1/hosts` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHostRequest {
    pub address: String,
    #[serde(default = "ssh_port")]
    pub port: u16,
    #[serde(default = "root")]
    pub user: String,
    pub credentials: HostCredentials,
    /// The host's public key, `TYPE BASE64` as in known_hosts. Pinned.
    pub host_key: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the host offers, as a Kubernetes resource map of quantities:
    /// `cpu` and `memory` required, extended resources (`nvidia.com/gpu`)
    /// whole counts. Absent: measured (CPUs, memory) on first contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BTreeMap<String, String>>,
}

fn ssh_port() -> u16 {
    22
}
fn root() -> String {
    "root".into()
}

/// A registered host as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    pub id: Uuid,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub host_key: String,
    pub labels: BTreeMap<String, String>,
    /// The host's resource map (`{"cpu": "8", "memory": "32Gi"}`); null
    /// until declared or measured on first contact.
    pub capacity: Option<BTreeMap<String, String>>,
    /// `declared` (at registration) or `measured` (on first contact); null
    /// while the capacity is unknown.
    pub capacity_source: Option<String>,
    /// Why the host was last found unfit to serve; claims skip it for a
    /// while. Null when it passed its last check.
    pub problem: Option<HostProblem>,
    pub credential_kind: String,
    pub claimed_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// Why a host could not serve (e.g. `host_prerequisites_missing`), and
/// since when.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostProblem {
    pub code: String,
    pub message: String,
    pub since: DateTime<Utc>,
}

/// The answer to `POST /v1/hosts` (201): the host as registered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostCreated {
    pub host: HostView,
}

/// How much one tenant may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Live clusters.
    pub max_clusters: i32,
    /// Worker nodes summed over all pools' desired sizes (and autoscaling maxima).
    pub max_nodes: i32,
    /// vCPUs: those worker nodes, each weighted by its pool's machine type
    /// vCPUs, plus every control-plane member weighted by its own.
    pub max_cpus: i32,
}

/// A tenant's quota and what it uses now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuotaView {
    pub tenant: String,
    pub max_clusters: i32,
    pub max_nodes: i32,
    pub max_cpus: i32,
    pub clusters: i64,
    pub nodes: i64,
    /// vCPUs counted against `max_cpus`.
    pub cpus: i64,
}

// ---------------------------------------------------------------------------
// Errors

/// An RFC 9457 problem document with Kubeforge's stable `code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub code: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub retryable: bool,
}

/// `422 validation_failed: <detail> (field: network.pod_cidr)`; the field
/// only when there is one.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.detail)?;
        if let Some(field) = &self.field {
            write!(f, " (field: {field})")?;
        }
        Ok(())
    }
}

/// `POST /v1/tokens/revoke` body: exactly one of `jti` (platform-admin:
/// any token, kept revoked for the longest token lifetime) or `token` (the
/// token itself: a tenant admin may revoke its own tenant's tokens; kept
/// revoked until the token expires).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeTokenRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The answer to a token revocation (200): which token, and until when its
/// revocation is kept (then it would have expired anyway).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenRevoked {
    pub jti: String,
    pub expires_at: DateTime<Utc>,
}

/// The answer to `POST /v1/clusters/{c}/credentials/revoke` (202): the
/// credential generation new kubeconfigs carry from now on, and the
/// operation that binds it in the cluster (kubeconfigs of earlier
/// generations are refused once it succeeds).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialsRevoked {
    pub credential_generation: i64,
    pub operation: OperationView,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConditionStatus, TaintEffect};
    use chrono::TimeZone;
    use serde_json::json;

    fn at(secs: i64, micros: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, micros * 1000).unwrap()
    }

    fn operation() -> OperationView {
        OperationView {
            id: Uuid::from_u128(2),
            cluster: Uuid::from_u128(1),
            node_pool: None,
            type_: "cluster_create".into(),
            state: "running".into(),
            steps: vec![
                Step {
                    name: "machines".into(),
                    state: "succeeded".into(),
                    message: Some("2 of 2".into()),
                    started_at: Some(at(1_700_000_001, 250_000)),
                    finished_at: Some(at(1_700_000_020, 0)),
                    error: None,
                },
                Step {
                    name: "control_plane".into(),
                    state: "failed".into(),
                    message: None,
                    started_at: Some(at(1_700_000_020, 123_456)),
                    finished_at: None,
                    error: Some(OperationError {
                        code: "bootstrap_failed".into(),
                        message: "etcd did not start".into(),
                        retryable: true,
                    }),
                },
            ],
            error: None,
            created_at: at(1_700_000_000, 0),
            started_at: Some(at(1_700_000_001, 0)),
            finished_at: None,
        }
    }

    fn cluster() -> ClusterView {
        ClusterView {
            id: Uuid::from_u128(1),
            name: "web".into(),
            tenant: "acme".into(),
            kubernetes_version: "1.20.2".into(),
            provider: ProviderSpec::Aws {
                region: "eu-west-1".into(),
                subnet_id: "subnet-1".into(),
                ami: "ami-1".into(),
                role_arn: None,
                key_name: None,
            },
            control_plane: ControlPlaneView {
                replicas: 3,
                machine_type: "small".into(),
            },
            network: NetworkView {
                pod_cidr: "10.244.0.0/16".into(),
                service_cidr: "10.96.0.0/12".into(),
            },
            labels: BTreeMap::from([("team".into(), "web".into())]),
            deletion_protection: true,
            autoscaler: AutoscalerSettings::default(),
            phase: Phase::Provisioning,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: ConditionStatus::False,
                reason: "Provisioning".into(),
                message: "machines are starting".into(),
                last_transition: at(1_700_000_000, 999_999),
            }],
            node_pools: vec![NodePoolSummary {
                name: "default".into(),
                machine_type: "small".into(),
                size: 2,
                ready_nodes: 1,
                phase: Phase::Provisioning,
            }],
            endpoint: None,
            certificates: json!({"ca": {"not_after": "2034-01-01T00:00:00Z"}}),
            generation: 1,
            observed_generation: 0,
            etag: "\"1\"".into(),
            created_at: at(1_700_000_000, 0),
            updated_at: at(1_700_000_000, 5_000),
        }
    }

    /// Serializes, reads back, serializes again: the same JSON both times.
    fn round_trip<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> serde_json::Value {
        let first = serde_json::to_value(value).unwrap();
        let back: T = serde_json::from_value(first.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), first);
        first
    }

    #[test]
    fn cluster_accepted_round_trips() {
        let accepted = ClusterAccepted {
            cluster: cluster(),
            operation: operation(),
        };
        let v = round_trip(&accepted);
        assert_eq!(v["cluster"]["phase"], "provisioning");
        assert_eq!(v["cluster"]["provider"]["kind"], "aws");
        assert_eq!(v["cluster"]["conditions"][0]["type"], "Ready");
        assert_eq!(
            v["cluster"]["autoscaler"],
            json!({"mode": "builtin", "expander": "least-waste",
                   "scale_down_utilization_threshold": 0.5, "scale_down_unneeded_seconds": 600,
                   "batch_idle_seconds": 1, "batch_max_seconds": 10, "max_nodes_per_scale_up": 10})
        );
        assert_eq!(v["operation"]["type"], "cluster_create");
        assert_eq!(v["operation"]["steps"][0]["message"], "2 of 2");
        // An absent step message is left out, not null.
        assert!(v["operation"]["steps"][1].get("message").is_none());
        assert_eq!(
            v["operation"]["steps"][1]["started_at"],
            "2023-11-14T22:13:40.123456Z"
        );
    }

    #[test]
    fn node_pool_accepted_round_trips() {
        let pool = NodePoolView {
            id: Uuid::from_u128(3),
            cluster: Uuid::from_u128(1),
            name: "gpu".into(),
            machine_type: "large".into(),
            alternative_machine_types: vec![],
            size: 2,
            autoscaling: Some(Autoscaling {
                min: 1,
                max: 4,
                priority: 0,
            }),
            labels: BTreeMap::new(),
            host_selector: BTreeMap::from([("gpu".into(), "true".into())]),
            taints: vec![
                Taint {
                    key: "gpu".into(),
                    value: Some("yes".into()),
                    effect: TaintEffect::NoSchedule,
                },
                Taint {
                    key: "spot".into(),
                    value: None,
                    effect: TaintEffect::PreferNoSchedule,
                },
            ],
            drain_timeout_seconds: 300,
            auto_repair: AutoRepair::default(),
            ready_nodes: 1,
            nodes: vec![NodeView {
                name: "web-gpu-a".into(),
                machine: Uuid::from_u128(4),
                address: Some("10.77.0.9".into()),
                state: "ready".into(),
                machine_state: "running".into(),
                unhealthy_since: None,
                unhealthy_reason: None,
            }],
            phase: Phase::Ready,
            conditions: vec![],
            generation: 2,
            observed_generation: 2,
            etag: "\"2\"".into(),
            created_at: at(1_700_000_000, 0),
            updated_at: at(1_700_000_100, 0),
        };
        let v = round_trip(&NodePoolAccepted {
            node_pool: pool,
            operation: operation(),
        });
        assert_eq!(
            v["node_pool"]["taints"],
            json!([
                {"key": "gpu", "value": "yes", "effect": "NoSchedule"},
                {"key": "spot", "effect": "PreferNoSchedule"}
            ])
        );
        assert_eq!(v["node_pool"]["nodes"][0]["unhealthy_since"], json!(null));
    }

    #[test]
    fn problem_round_trips_and_displays() {
        let mut p = Problem {
            type_: "https://kubeforge.dev/problems/validation_failed".into(),
            title: "Invalid request".into(),
            status: 422,
            code: "validation_failed".into(),
            detail: "pod_cidr overlaps service_cidr".into(),
            field: Some("network.pod_cidr".into()),
            retryable: false,
        };
        let v = round_trip(&p);
        assert_eq!(
            v["type"],
            "https://kubeforge.dev/problems/validation_failed"
        );
        assert_eq!(serde_json::from_value::<Problem>(v).unwrap(), p);
        assert_eq!(
            p.to_string(),
            "422 validation_failed: pod_cidr overlaps service_cidr (field: network.pod_cidr)"
        );
        p.field = None;
        let v = round_trip(&p);
        assert!(v.get("field").is_none(), "no field, no key: {v}");
        assert_eq!(
            p.to_string(),
            "422 validation_failed: pod_cidr overlaps service_cidr"
        );
    }

    #[test]
    fn pool_update_keeps_absent_apart_from_null() {
        let scale = UpdateNodePoolRequest {
            size: Some(3),
            ..Default::default()
        };
        assert_eq!(serde_json::to_value(&scale).unwrap(), json!({"size": 3}));
        let off = UpdateNodePoolRequest {
            autoscaling: Some(None),
            ..Default::default()
        };
        let v = serde_json::to_value(&off).unwrap();
        assert_eq!(v, json!({"autoscaling": null}));
        let back: UpdateNodePoolRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back.autoscaling, Some(None));
        let back: UpdateNodePoolRequest = serde_json::from_value(json!({"size": 3})).unwrap();
        assert_eq!(back.autoscaling, None);
        assert!(serde_json::from_value::<UpdateNodePoolRequest>(json!({"sise": 3})).is_err());
    }

    #[test]
    fn machine_types_show_capacity_and_allocatable() {
        let v = round_trip(&Items {
            items: crate::MachineType::all()
                .map(MachineTypeView::from)
                .collect::<Vec<_>>(),
        });
        assert_eq!(
            v["items"][0],
            json!({"name": "small", "cpu": 1, "memory_mib": 2048, "gpus": 0, "gpu_model": null,
                   "pods": 110,
                   "allocatable": {"cpu_millis": 900, "memory_mib": 1692, "pods": 110},
                   "providers": ["lab", "ssh", "aws"], "ec2_instance_type": "t3.small"})
        );
        assert_eq!(v["items"][2]["allocatable"]["memory_mib"], 7836);
        let g4 = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "g4dn.xlarge")
            .unwrap();
        assert_eq!(
            (
                &g4["gpus"],
                &g4["gpu_model"],
                &g4["providers"],
                &g4["ec2_instance_type"]
            ),
            (
                &json!(1),
                &json!("NVIDIA T4"),
                &json!(["aws"]),
                &json!("g4dn.xlarge")
            )
        );
    }

    #[test]
    fn autoscaler_snapshot_round_trips_and_cluster_patch_is_partial() {
        let snapshot = AutoscalerSnapshot {
            observed_at: Some(at(1_700_000_000, 0)),
            pending_pods: 1,
            pending: vec![PendingPodView {
                namespace: "default".into(),
                name: "web-7".into(),
                outcome: "no_pool".into(),
                pool: None,
                node: None,
                reasons: vec![PoolReasonView {
                    pool: "gpu".into(),
                    reason: "insufficient nvidia.com/gpu".into(),
                }],
            }],
            holds: BTreeMap::from([("gpu".into(), "backed off".into())]),
            decisions: BTreeMap::from([(
                "default".into(),
                vec![AutoscalerDecisionView {
                    at: at(1_700_000_000, 0),
                    kind: "scale_up".into(),
                    from: 1,
                    to: 2,
                    node: None,
                    pods: 3,
                    reason: "3 pods pending".into(),
                    operation: Some(Uuid::from_u128(9)),
                }],
            )]),
        };
        let v = round_trip(&snapshot);
        assert_eq!(
            serde_json::from_value::<AutoscalerSnapshot>(v).unwrap(),
            snapshot
        );
        let patch = UpdateClusterRequest {
            autoscaler: Some(AutoscalerSettingsRequest {
                expander: Some("priority".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!({"autoscaler": {"expander": "priority"}})
        );
        assert!(serde_json::from_value::<UpdateClusterRequest>(
            json!({"autoscaler": {"expandr": "priority"}})
        )
        .is_err());
    }

    #[test]
    fn request_defaults_fill_in() {
        let k: KubeconfigRequest = serde_json::from_value(json!({})).unwrap();
        assert_eq!((k.role.as_str(), k.ttl_seconds), ("admin", 3600));
        let h: CreateHostRequest = serde_json::from_value(json!({
            "address": "10.0.0.1", "credentials": {"password": "x"}, "host_key": "ssh-ed25519 AAAA"
        }))
        .unwrap();
        assert_eq!((h.port, h.user.as_str()), (22, "root"));
        assert_eq!(
            serde_json::to_value(&h.credentials).unwrap(),
            json!({"password": "x"})
        );
        assert_eq!(
            serde_json::to_value(UpdateClusterRequest {
                deletion_protection: Some(false),
                ..Default::default()
            })
            .unwrap(),
            json!({"deletion_protection": false})
        );
    }
}
