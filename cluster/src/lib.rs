//! Kubeforge's domain, free of I/O.
//!
//! Everything a tenant can ask for is parsed here, once, into types that
//! cannot hold an invalid value (`ClusterName`, `Cidr`, `KubernetesVersion`,
//! ...). The service crate never re-validates: if it holds a `ClusterSpec`,
//! the spec is valid. Nothing in this crate touches the network, the
//! database or the clock; callers pass time in.
//!
//! [`api`] holds the API's wire types (requests, views, answers, the
//! problem document), shared by the service, its CLI and other clients.

pub mod addons;
pub mod affinity;
pub mod api;
pub mod bundle;
pub mod condition;
pub mod credentials;
pub mod dns;
pub mod externalgrpc;
pub mod hosts;
pub mod join;
pub mod kubeconfig;
pub mod labels;
pub mod machine_types;
pub mod names;
pub mod network;
pub mod nodes;
pub mod operations;
pub mod pki;
pub mod pools;
pub mod restarts;
pub mod routes;
pub mod scaledown;
pub mod scaleup;
pub mod simulate;
pub mod spec;
pub mod status;
pub mod userdata;
pub mod validation;
pub mod worker;

pub use condition::{Condition, ConditionStatus, Phase};
pub use machine_types::MachineType;
pub use names::{ClusterName, KubernetesVersion, NodePoolName, NodeResources};
pub use network::{ClusterNetwork, Ipv4Cidr};
pub use spec::{
    AutoRepair, AutoscalerMode, AutoscalerSettings, AutoscalerSettingsRequest, Autoscaling,
    ClusterSpec, ControlPlaneSpec, CreateClusterRequest, CreateNodePoolRequest, Expander, Labels,
    NodePoolSpec, ProviderSpec, Taint, TaintEffect,
};
pub use validation::ValidationError;
