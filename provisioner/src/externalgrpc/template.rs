//! What a new node of a pool will look like, as a serialized v1.Node: the
//! answer to `NodeGroupTemplateNodeInfo`, which is what lets an upstream
//! cluster-autoscaler scale a pool up from zero.
//!
//! The node carries exactly what a joined worker of the pool registers:
//! the pool's labels with `kubeforge.io/node-pool` and
//! `node.kubernetes.io/instance-type`, the kubelet's own labels (hostname,
//! os, arch), the pool's taints; its capacity is the machine type's and
//! its allocatable what the kubelet reports after the system reservation
//! (`MachineType::allocatable`, which lab workers are held to), with the
//! type's GPUs as `nvidia.com/gpu` in both. Ready, so the autoscaler's
//! simulation treats it as a node that has come up.

use std::collections::HashMap;

use kubeforge_cluster::machine_types::GPU_RESOURCE;
use kubeforge_cluster::names::{INSTANCE_TYPE_LABEL, MAX_PODS};
use kubeforge_cluster::spec::NODE_POOL_LABEL;
use kubeforge_cluster::NodeResources;
use prost::Message;

use super::proto::{core_v1, meta_v1, resource};
use crate::store::node_pool::NodePool;

/// The architecture label the kubelet sets (Go's name for it). The
/// Kubernetes binaries the workers run are built for this host.
pub const ARCH: &str = match std::env::consts::ARCH.as_bytes() {
    b"aarch64" => "arm64",
    _ => "amd64",
};

fn quantity(s: String) -> resource::Quantity {
    resource::Quantity { string: Some(s) }
}

/// `cpu`, `memory` and `pods` as Kubernetes writes them, and the machine
/// type's GPUs as the extended resource their device plugin advertises.
fn resources(r: NodeResources, gpus: u32) -> HashMap<String, resource::Quantity> {
    let cpu = if r.cpu_millis.is_multiple_of(1000) {
        (r.cpu_millis / 1000).to_string()
    } else {
        format!("{}m", r.cpu_millis)
    };
    let mut out = HashMap::from([
        ("cpu".to_string(), quantity(cpu)),
        (
            "memory".to_string(),
            quantity(format!("{}Mi", r.memory_mib)),
        ),
        ("pods".to_string(), quantity(r.pods.to_string())),
    ]);
    if gpus > 0 {
        out.insert(GPU_RESOURCE.to_string(), quantity(gpus.to_string()));
    }
    out
}

/// The template node of pool `p` of cluster `cluster`.
pub fn node(cluster: &str, p: &NodePool, kubelet_version: &str) -> core_v1::Node {
    let name = format!("{cluster}-{}-template", p.name);
    let mut labels: HashMap<String, String> = p
        .labels
        .as_map()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in [
        (NODE_POOL_LABEL, p.name.to_string()),
        (INSTANCE_TYPE_LABEL, p.machine_type.as_str().to_string()),
        ("kubernetes.io/hostname", name.clone()),
        ("kubernetes.io/os", "linux".to_string()),
        ("kubernetes.io/arch", ARCH.to_string()),
        ("beta.kubernetes.io/os", "linux".to_string()),
        ("beta.kubernetes.io/arch", ARCH.to_string()),
    ] {
        labels.insert(k.to_string(), v);
    }
    let taints = p
        .taints
        .iter()
        .map(|t| core_v1::Taint {
            key: Some(t.key.clone()),
            value: t.value.clone(),
            effect: Some(format!("{:?}", t.effect)),
        })
        .collect();
    let capacity = p.machine_type.capacity();
    debug_assert_eq!(capacity.pods, MAX_PODS);
    core_v1::Node {
        metadata: Some(meta_v1::ObjectMeta {
            name: Some(name),
            labels,
            ..Default::default()
        }),
        spec: Some(core_v1::NodeSpec {
            taints,
            ..Default::default()
        }),
        status: Some(core_v1::NodeStatus {
            capacity: resources(capacity, p.machine_type.gpus()),
            allocatable: resources(p.machine_type.allocatable(), p.machine_type.gpus()),
            phase: Some("Running".into()),
            conditions: vec![core_v1::NodeCondition {
                r#type: Some("Ready".into()),
                status: Some("True".into()),
                reason: Some("KubeletReady".into()),
                message: Some("a template of a new node of this pool".into()),
                ..Default::default()
            }],
            node_info: Some(core_v1::NodeSystemInfo {
                kubelet_version: Some(kubelet_version.to_string()),
                kube_proxy_version: Some(kubelet_version.to_string()),
                operating_system: Some("linux".into()),
                architecture: Some(ARCH.into()),
            }),
        }),
    }
}

/// The node serialized as `v1.Node#Marshal` would.
pub fn encode(node: &core_v1::Node) -> Vec<u8> {
    node.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeforge_cluster::MachineType;

    #[test]
    fn a_gpu_type_advertises_its_gpus_and_others_none() {
        let g4 = MachineType::parse("g4dn.xlarge").unwrap();
        let r = resources(g4.allocatable(), g4.gpus());
        assert_eq!(r[GPU_RESOURCE].string.as_deref(), Some("1"));
        assert_eq!(r["cpu"].string.as_deref(), Some("3900m"));
        assert_eq!(r["memory"].string.as_deref(), Some("16028Mi"));
        let m5 = MachineType::parse("m5.large").unwrap();
        let r = resources(m5.capacity(), m5.gpus());
        assert!(!r.contains_key(GPU_RESOURCE), "{r:?}");
        assert_eq!(r["cpu"].string.as_deref(), Some("2"));
    }
}
