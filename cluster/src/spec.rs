//! What a tenant asks for: the wire requests (`Create*Request`, exactly as
//! JSON arrives, unknown fields refused) and the parsed specs that the rest
//! of Kubeforge works with. `parse` is the only way from one to the other.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use utoipa::ToSchema;

use crate::machine_types::{check_alternatives_on, parse_alternatives};
use crate::{
    ClusterName, ClusterNetwork, KubernetesVersion, MachineType, NodePoolName, ValidationError,
};

pub use crate::labels::{
    check_label_key, check_label_value, check_node_labels, Labels, Taint, TaintEffect,
    NODE_POOL_LABEL, RESERVED_LABEL_PREFIX,
};

/// Largest node pool this build accepts.
pub const MAX_POOL_SIZE: u32 = 100;
/// Most node pools one cluster may have.
pub const MAX_POOLS: usize = 16;
/// How long a node's drain may take before it is removed anyway, unless the
/// pool says otherwise.
pub const DEFAULT_DRAIN_TIMEOUT_SECONDS: u32 = 300;
/// Longest drain timeout a pool may ask for.
pub const MAX_DRAIN_TIMEOUT_SECONDS: u32 = 3600;
/// How long a node may be unhealthy before it is replaced, unless the pool
/// says otherwise.
pub const DEFAULT_REPAIR_AFTER_SECONDS: u32 = 300;
/// Bounds of `auto_repair.after_seconds`: not so short that a reboot or a
/// slow join triggers a replacement, not longer than a day.
pub const MIN_REPAIR_AFTER_SECONDS: u32 = 10;
pub const MAX_REPAIR_AFTER_SECONDS: u32 = 86_400;

/// Where a cluster's machines come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProviderSpec {
    // The titles name the variants' types in generated clients
    // (`LabProvider`, ...) instead of positions (`ProviderSpecType0`).
    /// systemd-nspawn machines on the Kubeforge host.
    #[schema(title = "LabProvider")]
    Lab {},
    /// Hosts registered by a platform admin under `/v1/hosts`.
    #[schema(title = "SshProvider")]
    Ssh {},
    /// EC2 instances, in the tenant's account or the service's.
    #[schema(title = "AwsProvider")]
    Aws {
        /// The region the cluster's instances run in (`eu-west-1`).
        region: String,
        /// The subnet they are launched into (`subnet-...`); its VPC holds
        /// the cluster's security group.
        subnet_id: String,
        /// The image they boot (`ami-...`): a Linux with cloud-init,
        /// systemd and OpenSSH.
        ami: String,
        /// A role the service assumes (STS `AssumeRole`) for every call
        /// about this cluster, with the tenant's id as the external id, so
        /// a role can trust the service for one tenant only. Absent: the
        /// service's own credentials.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role_arn: Option<String>,
        /// An EC2 key pair also put on the instances, for an operator's
        /// own access. The service logs in with its own key (user-data)
        /// either way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_name: Option<String>,
    },
}

impl ProviderSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Lab {} => "lab",
            Self::Ssh {} => "ssh",
            Self::Aws { .. } => "aws",
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if let Self::Aws {
            region,
            subnet_id,
            ami,
            role_arn,
            key_name,
        } = self
        {
            for (field, value) in [("region", region), ("subnet_id", subnet_id), ("ami", ami)] {
                if value.trim().is_empty() || value.len() > 128 {
                    return Err(ValidationError::new(
                        field,
                        "must be a non-empty string of at most 128 characters",
                    ));
                }
            }
            // Region names are lowercase letters, digits and '-'
            // (`us-east-1`, `eu-central-2`): they become a host name.
            if !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(ValidationError::new(
                    "region",
                    "must be a region name such as us-east-1",
                ));
            }
            if !subnet_id.starts_with("subnet-") {
                return Err(ValidationError::new(
                    "subnet_id",
                    "must be a subnet id (subnet-...)",
                ));
            }
            if !ami.starts_with("ami-") {
                return Err(ValidationError::new("ami", "must be an image id (ami-...)"));
            }
            if let Some(arn) = role_arn {
                let parts: Vec<&str> = arn.split(':').collect();
                if arn.len() > 2048
                    || parts.len() != 6
                    || parts[0] != "arn"
                    || parts[2] != "iam"
                    || !parts[5].starts_with("role/")
                {
                    return Err(ValidationError::new(
                        "role_arn",
                        "must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
                    ));
                }
            }
            if let Some(key) = key_name {
                if key.is_empty() || key.len() > 255 || key.chars().any(|c| c.is_control()) {
                    return Err(ValidationError::new(
                        "key_name",
                        "must be a key pair name of 1-255 printable characters",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Control plane shape in a create request.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneRequest {
    /// 1 or 3.
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default = "small")]
    pub machine_type: String,
}

fn one() -> u32 {
    1
}
fn small() -> String {
    "small".into()
}

impl Default for ControlPlaneRequest {
    fn default() -> Self {
        Self {
            replicas: 1,
            machine_type: small(),
        }
    }
}

/// Network ranges in a create request.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: String,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
}

fn default_pod_cidr() -> String {
    "10.244.0.0/16".into()
}
fn default_service_cidr() -> String {
    "10.96.0.0/12".into()
}

impl Default for NetworkRequest {
    fn default() -> Self {
        Self {
            pod_cidr: default_pod_cidr(),
            service_cidr: default_service_cidr(),
        }
    }
}

/// Autoscaling bounds of a node pool, and its rank for the `priority`
/// expander.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Autoscaling {
    pub min: u32,
    pub max: u32,
    /// With the cluster's `priority` expander, a scale-up goes to the pool
    /// with the highest priority among those that can take the pods (ties
    /// fall back to least waste). 0 when absent; other expanders ignore it.
    #[serde(default)]
    pub priority: i32,
}

impl Autoscaling {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.max == 0 || self.max > MAX_POOL_SIZE {
            return Err(ValidationError::new(
                "autoscaling.max",
                format!("must be between 1 and {MAX_POOL_SIZE}"),
            ));
        }
        if self.min > self.max {
            return Err(ValidationError::new(
                "autoscaling.min",
                format!("min {} is greater than max {}", self.min, self.max),
            ));
        }
        Ok(())
    }
}

/// Whether a pool replaces nodes that stay unhealthy (NotReady, or their
/// machine gone), and after how long. `{}` means on, after 300 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoRepair {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds a node must be unhealthy before it is replaced (10-86400).
    #[serde(default = "default_repair_after")]
    pub after_seconds: u32,
}

fn yes() -> bool {
    true
}
fn default_repair_after() -> u32 {
    DEFAULT_REPAIR_AFTER_SECONDS
}

impl Default for AutoRepair {
    fn default() -> Self {
        Self {
            enabled: true,
            after_seconds: DEFAULT_REPAIR_AFTER_SECONDS,
        }
    }
}

impl AutoRepair {
    /// Checks the threshold, whether or not repair is enabled: a pool that
    /// turns repair back on keeps it.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(MIN_REPAIR_AFTER_SECONDS..=MAX_REPAIR_AFTER_SECONDS).contains(&self.after_seconds) {
            return Err(ValidationError::new(
                "auto_repair.after_seconds",
                format!(
                    "must be between {MIN_REPAIR_AFTER_SECONDS} and {MAX_REPAIR_AFTER_SECONDS} seconds, not {}",
                    self.after_seconds
                ),
            ));
        }
        Ok(())
    }
}

/// Bounds of the cluster's autoscaler settings (`autoscaler.*`), checked
/// by [`AutoscalerSettings::validate`]; `scale_down_utilization_threshold`
/// is in (0, 1].
///
/// `scale_down_unneeded_seconds` is at least 10 (a node stays unneeded for
/// at least one look) ...
pub const MIN_SCALE_DOWN_UNNEEDED_SECONDS: u32 = 10;
/// ... and at most a day.
pub const MAX_SCALE_DOWN_UNNEEDED_SECONDS: u32 = 86_400;
/// `batch_idle_seconds` is 0 (act on the first pending pod) to 60.
pub const MAX_BATCH_IDLE_SECONDS: u32 = 60;
/// `batch_max_seconds` is `batch_idle_seconds` to 300.
pub const MAX_BATCH_MAX_SECONDS: u32 = 300;
/// `max_nodes_per_scale_up` is 1 to 1000 (a pool holds at most
/// [`MAX_POOL_SIZE`] nodes anyway).
pub const MAX_NODES_PER_SCALE_UP: u32 = 1000;

/// Who scales a cluster's autoscaling pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalerMode {
    /// Kubeforge's own autoscaler, from pending pods.
    #[default]
    Builtin,
    /// Nobody: pools keep the size they are given.
    Off,
    /// An upstream cluster-autoscaler through Kubeforge's gRPC provider
    /// (a later issue; refused at the API until it is served).
    External,
}

impl AutoscalerMode {
    pub const ALL: [AutoscalerMode; 3] = [Self::Builtin, Self::Off, Self::External];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "builtin",
            Self::Off => "off",
            Self::External => "external",
        }
    }

    /// Errors name `mode`.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == value)
            .ok_or_else(|| {
                ValidationError::new(
                    "mode",
                    format!("unknown mode {value:?}; one of builtin, off, external"),
                )
            })
    }
}

/// How a scale-up chooses among the pools that can take the pending pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Expander {
    /// The pool whose new nodes would be left with the least unused CPU
    /// and memory.
    #[default]
    LeastWaste,
    /// The pool whose new nodes take the most pending pods.
    MostPods,
    /// The pool with the highest `autoscaling.priority`.
    Priority,
}

impl Expander {
    pub const ALL: [Expander; 3] = [Self::LeastWaste, Self::MostPods, Self::Priority];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeastWaste => "least-waste",
            Self::MostPods => "most-pods",
            Self::Priority => "priority",
        }
    }

    /// Errors name `expander`.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == value)
            .ok_or_else(|| {
                ValidationError::new(
                    "expander",
                    format!("unknown expander {value:?}; one of least-waste, most-pods, priority"),
                )
            })
    }
}

// Stored as JSON on the cluster: a stored object missing fields (clusters
// from before these settings have `{}`) reads with the defaults below,
// unknown fields are ignored (a newer replica may have written them), and
// anything else that does not parse or fails `validate` is the store's
// internal error, never a guess.
/// A cluster's autoscaler settings (`"autoscaler"` in the cluster spec),
/// every field set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct AutoscalerSettings {
    /// `builtin` (default), `off`, or `external` (an upstream
    /// cluster-autoscaler drives the pools through the gRPC provider; the
    /// built-in one leaves them alone).
    #[schema(required = true)]
    pub mode: AutoscalerMode,
    /// `least-waste` (default), `most-pods` or `priority`.
    #[schema(required = true)]
    pub expander: Expander,
    /// A node whose pods request less than this share of its allocatable
    /// CPU and memory (the larger of the two) is a scale-down candidate;
    /// in (0, 1], default 0.5.
    #[schema(required = true)]
    pub scale_down_utilization_threshold: f64,
    /// How long a node must stay a candidate before it is removed;
    /// 10-86400, default 600.
    #[schema(required = true)]
    pub scale_down_unneeded_seconds: u32,
    /// A scale-up waits until no new pod has gone pending for this long;
    /// 0-60, default 1.
    #[schema(required = true)]
    pub batch_idle_seconds: u32,
    /// ... but no longer than this after the first pending pod;
    /// `batch_idle_seconds`-300, default 10.
    #[schema(required = true)]
    pub batch_max_seconds: u32,
    /// Most nodes one scale-up decision adds, all pools together; 1-1000,
    /// default 10.
    #[schema(required = true)]
    pub max_nodes_per_scale_up: u32,
}

impl Default for AutoscalerSettings {
    fn default() -> Self {
        Self {
            mode: AutoscalerMode::Builtin,
            expander: Expander::LeastWaste,
            scale_down_utilization_threshold: 0.5,
            scale_down_unneeded_seconds: 600,
            batch_idle_seconds: 1,
            batch_max_seconds: 10,
            max_nodes_per_scale_up: 10,
        }
    }
}

/// Autoscaler settings as they arrive: on `POST /v1/clusters` the fields
/// given override the defaults, on `PATCH /v1/clusters/{c}` the current
/// settings. Absent fields are unchanged; unknown fields are refused.
// `remote = "Self"`: the derived code becomes inherent functions, which
// the trait impls below call, so that only a JSON object is read (serde
// would also fill a struct from an array, by position).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct AutoscalerSettingsRequest {
    /// `builtin` or `off` (`external` is refused until it is served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<AutoscalerMode>)]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Expander>)]
    pub expander: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_utilization_threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_unneeded_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_idle_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nodes_per_scale_up: Option<u32>,
}

impl Serialize for AutoscalerSettingsRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Self::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for AutoscalerSettingsRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> serde::de::Visitor<'de> for ObjectOnly {
            type Value = AutoscalerSettingsRequest;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of autoscaler settings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                AutoscalerSettingsRequest::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )
            }
        }
        d.deserialize_map(ObjectOnly)
    }
}

impl AutoscalerSettings {
    /// Checks every bound (see [`MAX_NODES_PER_SCALE_UP`] and the constants
    /// above it). Errors name the field without the `autoscaler.` prefix.
    /// Any mode passes: refusing `external` is the request's business
    /// ([`AutoscalerSettings::apply`]), not the stored value's.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let t = self.scale_down_utilization_threshold;
        if !(t.is_finite() && t > 0.0 && t <= 1.0) {
            return Err(ValidationError::new(
                "scale_down_utilization_threshold",
                format!("must be greater than 0 and at most 1, not {t}"),
            ));
        }
        let unneeded = self.scale_down_unneeded_seconds;
        if !(MIN_SCALE_DOWN_UNNEEDED_SECONDS..=MAX_SCALE_DOWN_UNNEEDED_SECONDS).contains(&unneeded)
        {
            return Err(ValidationError::new(
                "scale_down_unneeded_seconds",
                format!(
                    "must be between {MIN_SCALE_DOWN_UNNEEDED_SECONDS} and \
                     {MAX_SCALE_DOWN_UNNEEDED_SECONDS} seconds, not {unneeded}"
                ),
            ));
        }
        if self.batch_idle_seconds > MAX_BATCH_IDLE_SECONDS {
            return Err(ValidationError::new(
                "batch_idle_seconds",
                format!(
                    "must be between 0 and {MAX_BATCH_IDLE_SECONDS} seconds, not {}",
                    self.batch_idle_seconds
                ),
            ));
        }
        if self.batch_max_seconds > MAX_BATCH_MAX_SECONDS
            || self.batch_max_seconds < self.batch_idle_seconds
        {
            return Err(ValidationError::new(
                "batch_max_seconds",
                format!(
                    "must be between batch_idle_seconds ({}) and {MAX_BATCH_MAX_SECONDS} seconds, not {}",
                    self.batch_idle_seconds, self.batch_max_seconds
                ),
            ));
        }
        if !(1..=MAX_NODES_PER_SCALE_UP).contains(&self.max_nodes_per_scale_up) {
            return Err(ValidationError::new(
                "max_nodes_per_scale_up",
                format!(
                    "must be between 1 and {MAX_NODES_PER_SCALE_UP}, not {}",
                    self.max_nodes_per_scale_up
                ),
            ));
        }
        Ok(())
    }

    /// These settings with the fields `req` gives replaced, checked. Errors
    /// name the field without the `autoscaler.` prefix. When only `batch_idle_seconds` is given
    /// and it passes the current `batch_max_seconds`, the error names the
    /// field that was given.
    pub fn apply(self, req: AutoscalerSettingsRequest) -> Result<Self, ValidationError> {
        let mut s = self;
        if let Some(m) = &req.mode {
            s.mode = AutoscalerMode::parse(m)?;
        }
        if let Some(e) = &req.expander {
            s.expander = Expander::parse(e)?;
        }
        if let Some(t) = req.scale_down_utilization_threshold {
            s.scale_down_utilization_threshold = t;
        }
        if let Some(v) = req.scale_down_unneeded_seconds {
            s.scale_down_unneeded_seconds = v;
        }
        if let Some(v) = req.batch_idle_seconds {
            s.batch_idle_seconds = v;
        }
        if let Some(v) = req.batch_max_seconds {
            s.batch_max_seconds = v;
        }
        if let Some(v) = req.max_nodes_per_scale_up {
            s.max_nodes_per_scale_up = v;
        }
        s.validate().map_err(|mut e| {
            if e.field == "batch_max_seconds"
                && req.batch_max_seconds.is_none()
                && req.batch_idle_seconds.is_some()
            {
                e = ValidationError::new(
                    "batch_idle_seconds",
                    format!(
                        "must be at most batch_max_seconds ({}), not {}",
                        s.batch_max_seconds, s.batch_idle_seconds
                    ),
                );
            }
            e
        })?;
        Ok(s)
    }
}

/// Checks a pool's drain timeout (0 means: do not wait for pods to leave).
pub fn check_drain_timeout(seconds: u32) -> Result<(), ValidationError> {
    if seconds > MAX_DRAIN_TIMEOUT_SECONDS {
        return Err(ValidationError::new(
            "drain_timeout_seconds",
            format!("must be between 0 and {MAX_DRAIN_TIMEOUT_SECONDS} seconds, not {seconds}"),
        ));
    }
    Ok(())
}

/// A node pool as it arrives, on cluster create or `POST .../node-pools`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNodePoolRequest {
    pub name: String,
    #[serde(default = "small")]
    pub machine_type: String,
    /// Machine types to launch instead, in order, when the provider has no
    /// capacity for `machine_type` (`aws` only): at most 4, distinct, each
    /// with at least `machine_type`'s vCPUs, memory and GPUs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternative_machine_types: Vec<String>,
    /// Desired size; defaults to `autoscaling.min`, or 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// Seconds to wait for a node's pods to be evicted before it is removed
    /// anyway (0-3600, default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout_seconds: Option<u32>,
    /// Replacement of unhealthy nodes; on after 300 seconds when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_repair: Option<AutoRepair>,
    /// Labels a registered host must carry to serve the pool; only on the
    /// `ssh` provider. Empty or absent: any free host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_selector: BTreeMap<String, String>,
}

/// A valid node pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePoolSpec {
    pub name: NodePoolName,
    pub machine_type: MachineType,
    /// Launched instead of `machine_type`, in order, when the provider has
    /// no capacity for it; each covers `machine_type`
    /// ([`crate::machine_types::parse_alternatives`]).
    #[serde(default)]
    pub alternative_machine_types: Vec<MachineType>,
    pub size: u32,
    pub autoscaling: Option<Autoscaling>,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_seconds: u32,
    #[serde(default)]
    pub auto_repair: AutoRepair,
    /// Labels a host must carry to serve the pool (`ssh` provider).
    #[serde(default)]
    pub host_selector: Labels,
}

fn default_drain_timeout() -> u32 {
    DEFAULT_DRAIN_TIMEOUT_SECONDS
}

/// Checks a desired size against the hard limit and the autoscaling bounds.
pub fn check_pool_size(
    size: u32,
    autoscaling: Option<&Autoscaling>,
) -> Result<(), ValidationError> {
    if size > MAX_POOL_SIZE {
        return Err(ValidationError::new(
            "size",
            format!("must be at most {MAX_POOL_SIZE}"),
        ));
    }
    if let Some(a) = autoscaling {
        a.validate()?;
        if size < a.min || size > a.max {
            return Err(ValidationError::new(
                "size",
                format!(
                    "{size} is outside the autoscaling bounds {}..={}",
                    a.min, a.max
                ),
            ));
        }
    }
    Ok(())
}

impl NodePoolSpec {
    pub fn parse(req: CreateNodePoolRequest) -> Result<Self, ValidationError> {
        let name = NodePoolName::parse(&req.name)?;
        let machine_type = MachineType::parse(&req.machine_type)?;
        let alternative_machine_types =
            parse_alternatives(machine_type, &req.alternative_machine_types)?;
        let size = req
            .size
            .unwrap_or_else(|| req.autoscaling.map_or(1, |a| a.min));
        check_pool_size(size, req.autoscaling.as_ref())?;
        let labels = Labels::parse(req.labels).map_err(|e| e.under("labels"))?;
        check_node_labels(&labels).map_err(|e| e.under("labels"))?;
        if req.taints.len() > 32 {
            return Err(ValidationError::new("taints", "at most 32 taints"));
        }
        for (i, t) in req.taints.iter().enumerate() {
            t.check().map_err(|e| e.under(&format!("taints[{i}]")))?;
        }
        let drain_timeout_seconds = req
            .drain_timeout_seconds
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT_SECONDS);
        check_drain_timeout(drain_timeout_seconds)?;
        let auto_repair = req.auto_repair.unwrap_or_default();
        auto_repair.validate()?;
        let host_selector =
            Labels::parse(req.host_selector).map_err(|e| e.under("host_selector"))?;
        Ok(Self {
            name,
            machine_type,
            alternative_machine_types,
            size,
            autoscaling: req.autoscaling,
            labels,
            taints: req.taints,
            drain_timeout_seconds,
            auto_repair,
            host_selector,
        })
    }

    /// Checks the pool's machine types against the provider kind of its
    /// cluster: the primary offered there (`machine_type`), alternatives
    /// only on `aws` and offered there (`alternative_machine_types[i]`).
    pub fn check_provider(&self, kind: &str) -> Result<(), ValidationError> {
        self.machine_type.check_offered(kind)?;
        check_alternatives_on(kind, &self.alternative_machine_types)
    }
}

/// `POST /v1/clusters` body.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClusterRequest {
    pub name: String,
    pub kubernetes_version: String,
    pub provider: ProviderSpec,
    #[serde(default)]
    pub control_plane: ControlPlaneRequest,
    #[serde(default)]
    pub network: NetworkRequest,
    #[serde(default)]
    pub node_pools: Vec<CreateNodePoolRequest>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub deletion_protection: bool,
    /// Autoscaler settings; the fields left out take their defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerSettingsRequest>,
}

/// A valid control plane shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneSpec {
    pub replicas: u32,
    pub machine_type: MachineType,
}

/// A valid cluster request.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    pub name: ClusterName,
    pub kubernetes_version: KubernetesVersion,
    pub provider: ProviderSpec,
    pub control_plane: ControlPlaneSpec,
    pub network: ClusterNetwork,
    pub node_pools: Vec<NodePoolSpec>,
    pub labels: Labels,
    pub deletion_protection: bool,
    pub autoscaler: AutoscalerSettings,
}

impl ClusterSpec {
    pub fn parse(req: CreateClusterRequest) -> Result<Self, ValidationError> {
        let name = ClusterName::parse(&req.name)?;
        let kubernetes_version = KubernetesVersion::parse(&req.kubernetes_version)?;
        req.provider.validate().map_err(|e| e.under("provider"))?;
        if req.control_plane.replicas != 1 && req.control_plane.replicas != 3 {
            return Err(ValidationError::new(
                "control_plane.replicas",
                format!("must be 1 or 3, not {}", req.control_plane.replicas),
            ));
        }
        let kind = req.provider.kind();
        let cp_type = MachineType::parse_on(&req.control_plane.machine_type, kind)
            .map_err(|e| e.under("control_plane"))?;
        let network = ClusterNetwork::parse(&req.network.pod_cidr, &req.network.service_cidr)
            .map_err(|e| e.under("network"))?;
        if req.node_pools.len() > MAX_POOLS {
            return Err(ValidationError::new(
                "node_pools",
                format!("at most {MAX_POOLS} node pools"),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut node_pools = Vec::with_capacity(req.node_pools.len());
        for (i, pool) in req.node_pools.into_iter().enumerate() {
            let at = format!("node_pools[{i}]");
            let pool = NodePoolSpec::parse(pool).map_err(|e| e.under(&at))?;
            pool.check_provider(kind).map_err(|e| e.under(&at))?;
            if !seen.insert(pool.name.clone()) {
                return Err(ValidationError::new(
                    format!("{at}.name"),
                    format!("duplicate node pool name {:?}", pool.name.as_str()),
                ));
            }
            node_pools.push(pool);
        }
        let labels = Labels::parse(req.labels).map_err(|e| e.under("labels"))?;
        let autoscaler = AutoscalerSettings::default()
            .apply(req.autoscaler.unwrap_or_default())
            .map_err(|e| e.under("autoscaler"))?;
        Ok(Self {
            name,
            kubernetes_version,
            provider: req.provider,
            control_plane: ControlPlaneSpec {
                replicas: req.control_plane.replicas,
                machine_type: cp_type,
            },
            network,
            node_pools,
            labels,
            deletion_protection: req.deletion_protection,
            autoscaler,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: serde_json::Value) -> Result<ClusterSpec, ValidationError> {
        ClusterSpec::parse(serde_json::from_value(v).expect("well-formed request"))
    }

    fn base() -> serde_json::Value {
        json!({"name": "web-prod", "kubernetes_version": "1.20.2", "provider": {"kind": "lab"}})
    }

    #[test]
    fn minimal_request_gets_defaults() {
        let spec = req(base()).unwrap();
        assert_eq!(spec.control_plane.replicas, 1);
        assert_eq!(spec.network.pod_cidr.to_string(), "10.244.0.0/16");
        assert!(spec.node_pools.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"control_plane": {"replicas": 2}}),
                "control_plane.replicas",
            ),
            (
                json!({"control_plane": {"machine_type": "huge"}}),
                "control_plane.machine_type",
            ),
            (
                json!({"network": {"pod_cidr": "10.96.0.0/16"}}),
                "network.service_cidr",
            ),
            (
                json!({"node_pools": [{"name": "a", "size": 101}]}),
                "node_pools[0].size",
            ),
            (
                json!({"node_pools": [{"name": "a", "size": 9, "autoscaling": {"min": 1, "max": 5}}]}),
                "node_pools[0].size",
            ),
            (
                json!({"node_pools": [{"name": "a", "autoscaling": {"min": 6, "max": 5}}]}),
                "node_pools[0].autoscaling.min",
            ),
            (
                json!({"node_pools": [{"name": "a"}, {"name": "a"}]}),
                "node_pools[1].name",
            ),
            (json!({"node_pools": [{"name": "A"}]}), "node_pools[0].name"),
            (
                json!({"labels": {"kubeforge.io/x": "y"}}),
                "labels.kubeforge.io/x",
            ),
            (
                json!({"node_pools": [{"name": "a", "drain_timeout_seconds": 3601}]}),
                "node_pools[0].drain_timeout_seconds",
            ),
            (
                json!({"node_pools": [{"name": "a", "auto_repair": {"after_seconds": 9}}]}),
                "node_pools[0].auto_repair.after_seconds",
            ),
            (
                json!({"node_pools": [{"name": "a", "auto_repair": {"enabled": false, "after_seconds": 86401}}]}),
                "node_pools[0].auto_repair.after_seconds",
            ),
            (
                json!({"node_pools": [{"name": "a", "labels": {"kubernetes.io/hostname": "x"}}]}),
                "node_pools[0].labels.kubernetes.io/hostname",
            ),
            (
                json!({"node_pools": [{"name": "a", "labels": {"node-role.kubernetes.io/worker": ""}}]}),
                "node_pools[0].labels.node-role.kubernetes.io/worker",
            ),
            (
                json!({"node_pools": [{"name": "a", "labels": {"k8s.io/x": "y"}}]}),
                "node_pools[0].labels.k8s.io/x",
            ),
            (
                json!({"node_pools": [{"name": "a", "labels": {"kubeforge.io/node-pool": "a"}}]}),
                "node_pools[0].labels.kubeforge.io/node-pool",
            ),
            (
                json!({"provider": {"kind": "aws", "region": "", "subnet_id": "s", "ami": "a"}}),
                "provider.region",
            ),
            (
                json!({"provider": {"kind": "aws", "region": "EU west", "subnet_id": "subnet-1", "ami": "ami-1"}}),
                "provider.region",
            ),
            (
                json!({"provider": {"kind": "aws", "region": "eu-west-1", "subnet_id": "vpc-1", "ami": "ami-1"}}),
                "provider.subnet_id",
            ),
            (
                json!({"provider": {"kind": "aws", "region": "eu-west-1", "subnet_id": "subnet-1", "ami": "img"}}),
                "provider.ami",
            ),
            (
                json!({"provider": {"kind": "aws", "region": "eu-west-1", "subnet_id": "subnet-1",
                                    "ami": "ami-1", "role_arn": "arn:aws:s3:::bucket"}}),
                "provider.role_arn",
            ),
            (
                json!({"provider": {"kind": "aws", "region": "eu-west-1", "subnet_id": "subnet-1",
                                    "ami": "ami-1", "key_name": ""}}),
                "provider.key_name",
            ),
        ];
        for (patch, field) in cases {
            let mut body = base();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            let err = req(body).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn machine_types_are_checked_against_the_provider() {
        let aws =
            json!({"kind": "aws", "region": "eu-west-1", "subnet_id": "subnet-1", "ami": "ami-1"});
        let cases = [
            (
                json!({"control_plane": {"machine_type": "m5.large"}}),
                "control_plane.machine_type",
                "offered on: aws",
            ),
            (
                json!({"node_pools": [{"name": "a", "machine_type": "g4dn.xlarge"}]}),
                "node_pools[0].machine_type",
                "offered on: aws",
            ),
            (
                json!({"node_pools": [{"name": "a", "machine_type": "large",
                                       "alternative_machine_types": ["large"]}]}),
                "node_pools[0].alternative_machine_types[0]",
                "itself",
            ),
            (
                json!({"node_pools": [{"name": "a", "machine_type": "small"},
                                      {"name": "b", "machine_type": "small",
                                       "alternative_machine_types": ["medium"]}]}),
                "node_pools[1].alternative_machine_types",
                "only clusters on the aws provider",
            ),
        ];
        for (patch, field, says) in cases {
            for provider in [json!({"kind": "lab"}), json!({"kind": "ssh"})] {
                let mut body = base();
                body["provider"] = provider;
                for (k, v) in patch.as_object().unwrap() {
                    body[k] = v.clone();
                }
                let err = req(body).unwrap_err();
                assert_eq!(err.field, field, "{err}");
                assert!(err.message.contains(says), "{err}");
            }
        }
        let mut body = base();
        body["provider"] = aws.clone();
        body["control_plane"] = json!({"machine_type": "m5.large"});
        body["node_pools"] = json!([
            {"name": "gpu", "machine_type": "g4dn.xlarge",
             "alternative_machine_types": ["g4dn.2xlarge", "p3.2xlarge"]},
            {"name": "web", "machine_type": "large", "alternative_machine_types": ["m5.xlarge"]}
        ]);
        let spec = req(body.clone()).unwrap();
        assert_eq!(spec.control_plane.machine_type.as_str(), "m5.large");
        assert_eq!(
            spec.node_pools[0].alternative_machine_types,
            vec![
                MachineType::parse("g4dn.2xlarge").unwrap(),
                MachineType::parse("p3.2xlarge").unwrap()
            ]
        );
        // m5.large has no GPU: it cannot stand in for g4dn.xlarge.
        body["node_pools"][0]["alternative_machine_types"] = json!(["g4dn.2xlarge", "m5.large"]);
        let err = req(body).unwrap_err();
        assert_eq!(err.field, "node_pools[0].alternative_machine_types[1]");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut body = base();
        body["colour"] = json!("blue");
        assert!(serde_json::from_value::<CreateClusterRequest>(body).is_err());
    }

    fn pool(v: serde_json::Value) -> Result<NodePoolSpec, ValidationError> {
        NodePoolSpec::parse(serde_json::from_value(v).expect("well-formed pool"))
    }

    #[test]
    fn pool_drain_and_repair_defaults() {
        let p = pool(json!({"name": "p"})).unwrap();
        assert_eq!(p.drain_timeout_seconds, 300);
        assert_eq!(
            p.auto_repair,
            AutoRepair {
                enabled: true,
                after_seconds: 300
            }
        );
        // `{}` is "on, with the default threshold"; a partial object keeps the other default.
        let p = pool(json!({"name": "p", "auto_repair": {}})).unwrap();
        assert_eq!(p.auto_repair, AutoRepair::default());
        let p = pool(json!({"name": "p", "auto_repair": {"enabled": false}})).unwrap();
        assert_eq!(
            (p.auto_repair.enabled, p.auto_repair.after_seconds),
            (false, 300)
        );
        let p = pool(json!({"name": "p", "drain_timeout_seconds": 0,
                            "auto_repair": {"after_seconds": 10}}))
        .unwrap();
        assert_eq!(
            (p.drain_timeout_seconds, p.auto_repair.after_seconds),
            (0, 10)
        );
        let p = pool(json!({"name": "p", "drain_timeout_seconds": 3600,
                            "auto_repair": {"after_seconds": 86400}}))
        .unwrap();
        assert_eq!(
            (p.drain_timeout_seconds, p.auto_repair.after_seconds),
            (3600, 86400)
        );
    }

    #[test]
    fn auto_repair_refuses_unknown_fields() {
        assert!(serde_json::from_value::<AutoRepair>(json!({"after": 30})).is_err());
        assert!(serde_json::from_value::<CreateNodePoolRequest>(
            json!({"name": "p", "auto_repair": {"enabled": true, "colour": 1}})
        )
        .is_err());
    }

    #[test]
    fn pool_labels_keep_out_of_kubernetes_namespaces() {
        for key in [
            "kubernetes.io/hostname",
            "node-role.kubernetes.io/worker",
            "node.kubernetes.io/instance-type",
            "topology.kubernetes.io/zone",
            "k8s.io/x",
            "a.b.k8s.io/x",
        ] {
            let err = pool(json!({"name": "p", "labels": {key: "v"}})).unwrap_err();
            assert_eq!(err.field, format!("labels.{key}"), "{err}");
            assert!(err.message.contains("NodeRestriction"), "{err}");
        }
        let err =
            pool(json!({"name": "p", "labels": {"kubeforge.io/node-pool": "p"}})).unwrap_err();
        assert_eq!(err.field, "labels.kubeforge.io/node-pool");
        assert!(err.message.contains("Kubeforge sets it"), "{err}");
        // Other namespaces, and names merely containing the words, are fine.
        for key in [
            "example.com/tier",
            "notkubernetes.io/x",
            "kubernetes.io.example.com/x",
            "kubernetes-io",
            "k8s",
        ] {
            assert!(
                pool(json!({"name": "p", "labels": {key: "v"}})).is_ok(),
                "{key}"
            );
        }
        // Taints may not use Kubeforge's prefix either; cluster labels are
        // not node labels.
        let err = pool(json!({"name": "p", "taints": [{"key": "kubeforge.io/dedicated", "effect": "NoSchedule"}]})).unwrap_err();
        assert_eq!(err.field, "taints[0].key", "{err}");
        assert!(err.message.contains("reserved"), "{err}");
        let mut body = base();
        body["labels"] = json!({"app.kubernetes.io/part-of": "shop"});
        assert!(req(body).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn drain_timeout_accepted_iff_within_an_hour(t in 0u32..10_000) {
            let r = pool(json!({"name": "p", "drain_timeout_seconds": t}));
            proptest::prop_assert_eq!(r.is_ok(), t <= 3600);
            if let Err(e) = r {
                proptest::prop_assert_eq!(e.field, "drain_timeout_seconds");
            }
        }

        #[test]
        fn repair_threshold_accepted_iff_in_range(t in 0u32..200_000, enabled: bool) {
            let r = pool(json!({"name": "p", "auto_repair": {"enabled": enabled, "after_seconds": t}}));
            proptest::prop_assert_eq!(r.is_ok(), (10..=86_400).contains(&t));
            match r {
                Ok(p) => proptest::prop_assert_eq!(p.auto_repair, AutoRepair { enabled, after_seconds: t }),
                Err(e) => proptest::prop_assert_eq!(e.field, "auto_repair.after_seconds"),
            }
        }

        #[test]
        fn accepted_pool_labels_avoid_kubernetes_namespaces(
            prefix in "(([a-z0-9-]{1,8}\\.){0,2}(kubernetes\\.io|k8s\\.io|example\\.com|kubeforge\\.io)/)?",
            name in "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        ) {
            let key = format!("{prefix}{name}");
            if let Ok(p) = pool(json!({"name": "p", "labels": {key.clone(): "v"}})) {
                let prefix = p.labels.iter().next().and_then(|(k, _)| k.split_once('/')).map(|(p, _)| p.to_string());
                if let Some(prefix) = prefix {
                    for ns in ["kubernetes.io", "k8s.io"] {
                        proptest::prop_assert!(prefix != ns && !prefix.ends_with(&format!(".{ns}")), "{}", key);
                    }
                    proptest::prop_assert!(!key.starts_with(RESERVED_LABEL_PREFIX), "{}", key);
                }
            } else {
                let bad_prefix = !prefix.is_empty() && crate::names::check_dns_subdomain(prefix.trim_end_matches('/')).is_err();
                proptest::prop_assert!(bad_prefix || prefix.contains("kubernetes.io") || prefix.contains("k8s.io") || prefix.contains("kubeforge.io"), "{}", key);
            }
        }
    }

    fn autoscaler(v: serde_json::Value) -> Result<AutoscalerSettings, ValidationError> {
        let mut body = base();
        body["autoscaler"] = v;
        req(body).map(|s| s.autoscaler)
    }

    #[test]
    fn autoscaler_defaults_and_partial_objects() {
        let d = req(base()).unwrap().autoscaler;
        assert_eq!(d, AutoscalerSettings::default());
        assert_eq!(
            serde_json::to_value(d).unwrap(),
            json!({"mode": "builtin", "expander": "least-waste",
                   "scale_down_utilization_threshold": 0.5, "scale_down_unneeded_seconds": 600,
                   "batch_idle_seconds": 1, "batch_max_seconds": 10, "max_nodes_per_scale_up": 10})
        );
        assert_eq!(autoscaler(json!({})).unwrap(), d);
        let s = autoscaler(json!({"mode": "off", "expander": "priority", "batch_max_seconds": 30}))
            .unwrap();
        assert_eq!(
            (
                s.mode,
                s.expander,
                s.batch_max_seconds,
                s.batch_idle_seconds
            ),
            (AutoscalerMode::Off, Expander::Priority, 30, 1)
        );
        // The bounds themselves are accepted.
        let s = autoscaler(json!({"scale_down_utilization_threshold": 1, "scale_down_unneeded_seconds": 10,
                                  "batch_idle_seconds": 0, "batch_max_seconds": 0, "max_nodes_per_scale_up": 1}))
        .unwrap();
        assert_eq!(s.scale_down_utilization_threshold, 1.0);
        let s = autoscaler(
            json!({"scale_down_unneeded_seconds": 86400, "batch_idle_seconds": 60,
                                  "batch_max_seconds": 300, "max_nodes_per_scale_up": 1000}),
        )
        .unwrap();
        assert_eq!(s.max_nodes_per_scale_up, 1000);
    }

    #[test]
    fn autoscaler_errors_name_the_field() {
        for (v, field) in [
            (json!({"mode": "auto"}), "autoscaler.mode"),
            (json!({"expander": "random"}), "autoscaler.expander"),
            (
                json!({"scale_down_utilization_threshold": 0}),
                "autoscaler.scale_down_utilization_threshold",
            ),
            (
                json!({"scale_down_utilization_threshold": 1.01}),
                "autoscaler.scale_down_utilization_threshold",
            ),
            (
                json!({"scale_down_utilization_threshold": -0.5}),
                "autoscaler.scale_down_utilization_threshold",
            ),
            (
                json!({"scale_down_unneeded_seconds": 9}),
                "autoscaler.scale_down_unneeded_seconds",
            ),
            (
                json!({"scale_down_unneeded_seconds": 86401}),
                "autoscaler.scale_down_unneeded_seconds",
            ),
            (
                json!({"batch_idle_seconds": 61, "batch_max_seconds": 100}),
                "autoscaler.batch_idle_seconds",
            ),
            (
                json!({"batch_max_seconds": 301}),
                "autoscaler.batch_max_seconds",
            ),
            (
                json!({"batch_idle_seconds": 5, "batch_max_seconds": 4}),
                "autoscaler.batch_max_seconds",
            ),
            (
                json!({"batch_idle_seconds": 11}),
                "autoscaler.batch_idle_seconds",
            ),
            (
                json!({"max_nodes_per_scale_up": 0}),
                "autoscaler.max_nodes_per_scale_up",
            ),
            (
                json!({"max_nodes_per_scale_up": 1001}),
                "autoscaler.max_nodes_per_scale_up",
            ),
        ] {
            let err = autoscaler(v.clone()).unwrap_err();
            assert_eq!(err.field, field, "{v}: {err}");
        }
        let external = autoscaler(json!({"mode": "external"})).unwrap();
        assert_eq!(external.mode, AutoscalerMode::External);
        let mut body = base();
        body["autoscaler"] = json!({"mode": "off", "colour": 1});
        assert!(serde_json::from_value::<CreateClusterRequest>(body).is_err());
        // Only an object: not the fields by position.
        let mut body = base();
        body["autoscaler"] = json!(["off", "priority"]);
        assert!(serde_json::from_value::<CreateClusterRequest>(body).is_err());
    }

    #[test]
    fn autoscaler_apply_merges_onto_current_settings() {
        let current = AutoscalerSettings::default()
            .apply(AutoscalerSettingsRequest {
                expander: Some("most-pods".into()),
                batch_max_seconds: Some(20),
                ..Default::default()
            })
            .unwrap();
        let next = current
            .apply(AutoscalerSettingsRequest {
                batch_idle_seconds: Some(15),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(next.expander, Expander::MostPods);
        assert_eq!((next.batch_idle_seconds, next.batch_max_seconds), (15, 20));
        // Already external (a later replica wrote it): other fields may change.
        let external = AutoscalerSettings {
            mode: AutoscalerMode::External,
            ..AutoscalerSettings::default()
        };
        assert!(external.validate().is_ok());
        let kept = external
            .apply(AutoscalerSettingsRequest {
                expander: Some("priority".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(kept.mode, AutoscalerMode::External);
    }

    #[test]
    fn stored_autoscaler_settings_fill_defaults_and_ignore_unknown_fields() {
        let s: AutoscalerSettings = serde_json::from_value(json!({})).unwrap();
        assert_eq!(s, AutoscalerSettings::default());
        let s: AutoscalerSettings =
            serde_json::from_value(json!({"mode": "off", "later_field": true})).unwrap();
        assert_eq!(s.mode, AutoscalerMode::Off);
        assert!(serde_json::from_value::<AutoscalerSettings>(json!({"mode": "auto"})).is_err());
        for m in AutoscalerMode::ALL {
            assert_eq!(AutoscalerMode::parse(m.as_str()).unwrap(), m);
            assert_eq!(serde_json::to_value(m).unwrap(), json!(m.as_str()));
        }
        for e in Expander::ALL {
            assert_eq!(Expander::parse(e.as_str()).unwrap(), e);
            assert_eq!(serde_json::to_value(e).unwrap(), json!(e.as_str()));
        }
    }

    #[test]
    fn pool_priority_defaults_to_zero() {
        let p = pool(json!({"name": "p", "autoscaling": {"min": 1, "max": 3}})).unwrap();
        assert_eq!(p.autoscaling.unwrap().priority, 0);
        let p = pool(json!({"name": "p", "autoscaling": {"min": 1, "max": 3, "priority": -7}}))
            .unwrap();
        assert_eq!(p.autoscaling.unwrap().priority, -7);
    }

    proptest::proptest! {
        #[test]
        fn batch_windows_accepted_iff_ordered_and_in_range(idle in 0u32..400, max in 0u32..400) {
            let r = autoscaler(json!({"batch_idle_seconds": idle, "batch_max_seconds": max}));
            proptest::prop_assert_eq!(r.is_ok(), idle <= 60 && max <= 300 && idle <= max);
        }
    }

    #[test]
    fn pool_size_defaults_to_autoscaling_min() {
        let mut body = base();
        body["node_pools"] = json!([{"name": "p", "autoscaling": {"min": 2, "max": 4}}]);
        assert_eq!(req(body).unwrap().node_pools[0].size, 2);
    }
}
