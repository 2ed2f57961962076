//! What a tenant asks for: the wire requests (`Create*Request`, exactly as
//! JSON arrives, unknown fields refused) and the parsed specs that the rest
//! of Kubeforge works with. `parse` is the only way from one to the other.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use utoipa::ToSchema;

use crate::{
    ClusterName, ClusterNetwork, KubernetesVersion, MachineType, NodePoolName, ValidationError,
};

/// Largest node pool this build accepts.
pub const MAX_POOL_SIZE: u32 = 100;
/// Most node pools one cluster may have.
pub const MAX_POOLS: usize = 16;
/// Label keys under this prefix are Kubeforge's own.
pub const RESERVED_LABEL_PREFIX: &str = "kubeforge.io/";

/// Where a cluster's machines come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProviderSpec {
    /// systemd-nspawn machines on the Kubeforge host.
    Lab {},
    /// Hosts registered by a platform admin under `/v1/hosts`.
    Ssh {},
    /// EC2 instances.
    Aws {
        region: String,
        subnet_id: String,
        ami: String,
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

/// Autoscaling bounds of a node pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Autoscaling {
    pub min: u32,
    pub max: u32,
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

/// A taint's effect, as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

/// Kubernetes-style labels, checked: `[prefix/]name` keys and short values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Labels(BTreeMap<String, String>);

fn check_label_name(part: &str) -> bool {
    let b = part.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Checks a label or taint key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|seg| {
                !seg.is_empty()
                    && seg
                        .bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            });
        if !ok {
            return Err(format!("key {key:?} has an invalid prefix"));
        }
    }
    if !check_label_name(name) {
        return Err(format!(
            "key {key:?} must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        ));
    }
    Ok(())
}

impl Labels {
    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, ValidationError> {
        if map.len() > 64 {
            return Err(ValidationError::new("", "at most 64 labels"));
        }
        for (k, v) in &map {
            check_label_key(k).map_err(|m| ValidationError::new(k.clone(), m))?;
            if k.starts_with(RESERVED_LABEL_PREFIX) {
                return Err(ValidationError::new(
                    k.clone(),
                    format!("keys under {RESERVED_LABEL_PREFIX} are reserved"),
                ));
            }
            if !v.is_empty() && !check_label_name(v) {
                return Err(ValidationError::new(
                    k.clone(),
                    "value must be empty or 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
                ));
            }
        }
        Ok(Self(map))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = ValidationError;
    fn try_from(value: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(value: Labels) -> Self {
        value.0
    }
}

/// A node pool as it arrives, on cluster create or `POST .../node-pools`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNodePoolRequest {
    pub name: String,
    #[serde(default = "small")]
    pub machine_type: String,
    /// Desired size; defaults to `autoscaling.min`, or 1.
    #[serde(default)]
    pub size: Option<u32>,
    #[serde(default)]
    pub autoscaling: Option<Autoscaling>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
}

/// A valid node pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePoolSpec {
    pub name: NodePoolName,
    pub machine_type: MachineType,
    pub size: u32,
    pub autoscaling: Option<Autoscaling>,
    pub labels: Labels,
    pub taints: Vec<Taint>,
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
        let size = req
            .size
            .unwrap_or_else(|| req.autoscaling.map_or(1, |a| a.min));
        check_pool_size(size, req.autoscaling.as_ref())?;
        let labels = Labels::parse(req.labels).map_err(|e| e.under("labels"))?;
        if req.taints.len() > 32 {
            return Err(ValidationError::new("taints", "at most 32 taints"));
        }
        for (i, t) in req.taints.iter().enumerate() {
            check_label_key(&t.key)
                .map_err(|m| ValidationError::new(format!("taints[{i}].key"), m))?;
            if let Some(v) = &t.value {
                if !v.is_empty() && !check_label_name(v) {
                    return Err(ValidationError::new(
                        format!("taints[{i}].value"),
                        "must be 1-63 alphanumerics, '-', '_' or '.'",
                    ));
                }
            }
        }
        Ok(Self {
            name,
            machine_type,
            size,
            autoscaling: req.autoscaling,
            labels,
            taints: req.taints,
        })
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
}

/// A valid control plane shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneSpec {
    pub replicas: u32,
    pub machine_type: MachineType,
}

/// A valid cluster request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: ClusterName,
    pub kubernetes_version: KubernetesVersion,
    pub provider: ProviderSpec,
    pub control_plane: ControlPlaneSpec,
    pub network: ClusterNetwork,
    pub node_pools: Vec<NodePoolSpec>,
    pub labels: Labels,
    pub deletion_protection: bool,
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
        let cp_type = MachineType::parse(&req.control_plane.machine_type)
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
            if !seen.insert(pool.name.clone()) {
                return Err(ValidationError::new(
                    format!("{at}.name"),
                    format!("duplicate node pool name {:?}", pool.name.as_str()),
                ));
            }
            node_pools.push(pool);
        }
        let labels = Labels::parse(req.labels).map_err(|e| e.under("labels"))?;
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
                json!({"provider": {"kind": "aws", "region": "", "subnet_id": "s", "ami": "a"}}),
                "provider.region",
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
    fn unknown_fields_are_refused() {
        let mut body = base();
        body["colour"] = json!("blue");
        assert!(serde_json::from_value::<CreateClusterRequest>(body).is_err());
    }

    #[test]
    fn pool_size_defaults_to_autoscaling_min() {
        let mut body = base();
        body["node_pools"] = json!([{"name": "p", "autoscaling": {"min": 2, "max": 4}}]);
        assert_eq!(req(body).unwrap().node_pools[0].size, 2);
    }
}
