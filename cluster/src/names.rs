//! Names and enumerated values, each parsed once into a type that stays valid.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::ValidationError;

/// Checks a DNS-1123 label: lowercase alphanumerics and '-', starting and
/// ending with an alphanumeric, at most `max` characters.
pub(crate) fn check_dns_label(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > max {
        return Err(format!("must be at most {max} characters"));
    }
    let bytes = value.as_bytes();
    let ok_inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let ok_edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.iter().all(ok_inner) {
        return Err("must contain only lowercase letters, digits and '-' (DNS-1123 label)".into());
    }
    if !ok_edge(&bytes[0]) || !ok_edge(&bytes[bytes.len() - 1]) {
        return Err("must start and end with a lowercase letter or digit (DNS-1123 label)".into());
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain, the rule Kubernetes holds most object
/// names to (nodes, pods, CSRs, secrets): dot-separated DNS-1123 labels,
/// at most 253 characters in all. Names read from a tenant cluster pass
/// this before the service uses them at all.
pub fn check_dns_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 253 {
        return Err("must be 1 to 253 characters (DNS-1123 subdomain)".into());
    }
    for label in value.split('.') {
        check_dns_label(label, 63).map_err(|m| format!("each dot-separated part {m}"))?;
    }
    Ok(())
}

macro_rules! label_newtype {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest accepted name.
            pub const MAX_LEN: usize = $max;

            pub fn parse(value: &str) -> Result<Self, ValidationError> {
                check_dns_label(value, Self::MAX_LEN)
                    .map(|()| Self(value.to_string()))
                    .map_err(|m| ValidationError::new("name", m))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

label_newtype!(
    /// A cluster's name: a DNS-1123 label of at most 30 characters, so that
    /// machine and node names derived from it stay within 63.
    ClusterName,
    30
);
label_newtype!(
    /// A node pool's name: a DNS-1123 label of at most 20 characters.
    NodePoolName,
    20
);

/// Kubernetes versions this build can provision.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.20.2"];

/// A Kubernetes version from [`SUPPORTED_VERSIONS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KubernetesVersion(String);

impl KubernetesVersion {
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let trimmed = value.strip_prefix('v').unwrap_or(value);
        if SUPPORTED_VERSIONS.contains(&trimmed) {
            Ok(Self(trimmed.to_string()))
        } else {
            Err(ValidationError::new(
                "kubernetes_version",
                format!(
                    "unsupported version {value:?}; supported: {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KubernetesVersion {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<KubernetesVersion> for String {
    fn from(value: KubernetesVersion) -> String {
        value.0
    }
}

/// The scheme of the `spec.providerID` every worker's kubelet registers:
/// `kubeforge://<machine id>`, the id of its machine in the ledger. The
/// same string is the instance id the cluster-autoscaler's externalgrpc
/// provider speaks of.
pub const PROVIDER_ID_SCHEME: &str = "kubeforge://";

/// The label kubelets set from their machine type (a label kubelets may
/// set on themselves under the NodeRestriction admission plugin).
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";

/// `kubeforge://<machine id>`.
pub fn provider_id(machine: uuid::Uuid) -> String {
    format!("{PROVIDER_ID_SCHEME}{machine}")
}

/// The machine id of a Kubeforge provider id; None for any other string
/// (another provider's, a control plane registered without one, junk).
pub fn machine_of_provider_id(provider_id: &str) -> Option<uuid::Uuid> {
    let id = provider_id.strip_prefix(PROVIDER_ID_SCHEME)?;
    // Only the hyphenated form we write: no braces, no URN, no simple form.
    (id.len() == 36).then(|| uuid::Uuid::parse_str(id).ok())?
}

/// Checks how a request refers to an object in its path (`{cluster}`,
/// `{pool}`, `{host}`, `{operation}`): a name (a DNS-1123 label, as every
/// name Kubeforge gives or accepts is) or an id (a UUID in its hyphenated
/// form). Anything else names no object, and is refused before it reaches
/// a query: Postgres refuses a NUL in text with an error, not an empty
/// answer. Errors name `field`.
pub fn check_reference(field: &str, value: &str) -> Result<(), ValidationError> {
    let is_id = value.len() == 36 && uuid::Uuid::try_parse(value).is_ok();
    if is_id || check_dns_label(value, 63).is_ok() {
        return Ok(());
    }
    Err(ValidationError::new(
        field,
        "must be a name (1-63 lowercase letters, digits or '-', starting and ending \
         alphanumeric) or an id (a UUID such as 0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b)",
    ))
}

/// The most pods one node runs (the kubelet's `maxPods`).
pub const MAX_PODS: u32 = 110;
/// CPU a worker keeps for its system and Kubernetes daemons (the kubelet's
/// `systemReserved` plus `kubeReserved`), in millicores.
pub const SYSTEM_RESERVED_CPU_MILLIS: u32 = 100;
/// Memory a worker keeps for its system and Kubernetes daemons, in MiB.
pub const SYSTEM_RESERVED_MEMORY_MIB: u32 = 256;
/// The kubelet's hard-eviction threshold (`memory.available<100Mi`), in
/// MiB: memory pods cannot have either.
pub const EVICTION_HARD_MEMORY_MIB: u32 = 100;

/// CPU, memory and pod slots: of a machine ([`crate::MachineType::capacity`])
/// or of what its node offers to pods ([`crate::MachineType::allocatable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeResources {
    /// Millicores (1000 per vCPU).
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub pods: u32,
}

#[cfg(test)]
mod tests {
    #[test]
    fn references_are_names_or_ids() {
        for ok in [
            "web",
            "a-1",
            &"a".repeat(63),
            "0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
            "0193A1B2-C3D4-7E5F-8A6B-7C8D9E0F1A2B",
        ] {
            assert_eq!(super::check_reference("cluster", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "web\0",
            "\0",
            "Web",
            "-web",
            "a.b",
            "a/b",
            &"a".repeat(64),
            "{0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b}",
            "urn:uuid:0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
            "é",
        ] {
            let err = super::check_reference("pool", bad).unwrap_err();
            assert_eq!(err.field, "pool", "{bad:?}");
        }
    }

    use super::*;
    use crate::MachineType;

    #[test]
    fn provider_ids_round_trip_and_nothing_else_parses() {
        let m = uuid::Uuid::now_v7();
        let id = provider_id(m);
        assert!(id.starts_with("kubeforge://"), "{id}");
        assert_eq!(machine_of_provider_id(&id), Some(m));
        for other in [
            "",
            "kubeforge://",
            "aws:///us-east-1a/i-0123456789abcdef0",
            "kubeforge://not-a-uuid",
            &format!("kubeforge://{}", m.simple()),
            &format!("kubeforge://{{{m}}}"),
            &format!("kubeforge://{m}/x"),
            &format!("kubeforge:/{m}"),
        ] {
            assert_eq!(machine_of_provider_id(other), None, "{other:?}");
        }
    }

    #[test]
    fn dns_subdomains() {
        for ok in ["a", "node-1", "csr-abc.x1", "kubeforge.io", &"a".repeat(63)] {
            assert!(check_dns_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "x;touch /tmp/p",
            "$(id)",
            "a b",
            "A",
            "-a",
            "a..b",
            "a.",
            &"a".repeat(64),
            &["a"; 128].join("."),
        ] {
            assert!(check_dns_subdomain(bad).is_err(), "{bad:?}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn machine_type_capacity_and_allocatable() {
        let got: Vec<_> = [MachineType::SMALL, MachineType::MEDIUM, MachineType::LARGE]
            .into_iter()
            .map(|t| (t.as_str(), t.capacity(), t.allocatable()))
            .collect();
        let r = |cpu_millis, memory_mib| NodeResources {
            cpu_millis,
            memory_mib,
            pods: 110,
        };
        assert_eq!(
            got,
            vec![
                ("small", r(1000, 2048), r(900, 1692)),
                ("medium", r(2000, 4096), r(1900, 3740)),
                ("large", r(4000, 8192), r(3900, 7836)),
            ]
        );
    }

    #[test]
    fn cluster_names() {
        assert!(ClusterName::parse("web-prod").is_ok());
        assert!(ClusterName::parse("a").is_ok());
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"a".repeat(31)] {
            let err = ClusterName::parse(bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(
            KubernetesVersion::parse("v1.20.2").unwrap().as_str(),
            "1.20.2"
        );
        assert_eq!(
            KubernetesVersion::parse("1.99.0").unwrap_err().field,
            "kubernetes_version"
        );
    }

    proptest! {
        #[test]
        fn parsed_names_are_dns_labels(s in "\\PC{0,50}") {
            if let Ok(name) = ClusterName::parse(&s) {
                let n = name.as_str();
                prop_assert!(n.len() <= 30 && !n.is_empty());
                prop_assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                prop_assert!(!n.starts_with('-') && !n.ends_with('-'));
            }
        }

        #[test]
        fn valid_labels_always_parse(s in "[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?") {
            prop_assert!(ClusterName::parse(&s).is_ok());
        }
    }
}
