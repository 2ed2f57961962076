//! The machine-type catalogue: every machine type a cluster or pool may ask
//! for, what a machine of it has (vCPUs, memory, GPUs), which provider
//! kinds offer it and, on `aws`, the EC2 instance type it launches.
//!
//! Quotas, the autoscaler's template nodes, lab sizing, worker offers and
//! `GET /v1/machine-types` all read their numbers from here, so a type
//! means the same thing everywhere. A [`MachineType`] is a `Copy` handle on
//! a catalogue entry: it can only name an entry that exists.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::names::{
    NodeResources, EVICTION_HARD_MEMORY_MIB, MAX_PODS, SYSTEM_RESERVED_CPU_MILLIS,
    SYSTEM_RESERVED_MEMORY_MIB,
};
use crate::ValidationError;

/// Every provider kind (`ProviderSpec::kind`), in the order the API lists them.
pub const PROVIDER_KINDS: [&str; 3] = ["lab", "ssh", "aws"];

/// The extended resource a node with NVIDIA GPUs advertises (the device
/// plugin's name), which pods request GPUs by.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Most alternative machine types one pool may list.
pub const MAX_ALTERNATIVES: usize = 4;

/// One entry of the catalogue.
#[derive(Debug, PartialEq, Eq)]
pub struct MachineTypeInfo {
    /// The type's name in requests; an EC2 entry's is its instance type.
    pub name: &'static str,
    pub cpus: u32,
    pub memory_mib: u32,
    pub gpus: u32,
    /// The GPUs' model, for display; None without GPUs.
    pub gpu_model: Option<&'static str>,
    /// The provider kinds that offer this type.
    pub providers: &'static [&'static str],
    /// The EC2 instance type a machine of this type is launched as on `aws`.
    pub ec2_instance_type: Option<&'static str>,
}

const EVERY_KIND: &[&str] = &PROVIDER_KINDS;
const AWS_ONLY: &[&str] = &["aws"];

const fn generic(
    name: &'static str,
    cpus: u32,
    memory_mib: u32,
    ec2: &'static str,
) -> MachineTypeInfo {
    MachineTypeInfo {
        name,
        cpus,
        memory_mib,
        gpus: 0,
        gpu_model: None,
        providers: EVERY_KIND,
        ec2_instance_type: Some(ec2),
    }
}

const fn ec2(name: &'static str, cpus: u32, memory_gib: u32) -> MachineTypeInfo {
    ec2_gpu(name, cpus, memory_gib * 1024, 0, None)
}

const fn ec2_gpu(
    name: &'static str,
    cpus: u32,
    memory_mib: u32,
    gpus: u32,
    gpu_model: Option<&'static str>,
) -> MachineTypeInfo {
    MachineTypeInfo {
        name,
        cpus,
        memory_mib,
        gpus,
        gpu_model,
        providers: AWS_ONLY,
        ec2_instance_type: Some(name),
    }
}

/// The catalogue, generic sizes first, then EC2 instance types by family
/// and size.
///
/// The generic sizes (`small`, `medium`, `large`) are offered on every
/// provider kind, and their figures are a promise: what a node of the type
/// offers at least. On `aws` each launches the smallest listed burstable
/// instance with at least its vCPUs and memory, so the node there may have
/// more than promised, never less: `small` (1 vCPU, 2 GiB) launches
/// t3.small (2 vCPUs, 2 GiB), `medium` (2, 4 GiB) t3.medium (2, 4 GiB) and
/// `large` (4, 8 GiB) t3.xlarge (4, 16 GiB; t3.large has only 2 vCPUs).
/// Quotas and the autoscaler count the promise.
///
/// The EC2 entries carry the instance types' published figures.
const CATALOGUE: &[MachineTypeInfo] = &[
    generic("small", 1, 2048, "t3.small"),
    generic("medium", 2, 4096, "t3.medium"),
    generic("large", 4, 8192, "t3.xlarge"),
    ec2("t3.small", 2, 2),
    ec2("t3.medium", 2, 4),
    ec2("t3.large", 2, 8),
    ec2("t3.xlarge", 4, 16),
    ec2("m5.large", 2, 8),
    ec2("m5.xlarge", 4, 16),
    ec2("m5.2xlarge", 8, 32),
    ec2("m5a.large", 2, 8),
    ec2("m5a.xlarge", 4, 16),
    ec2("m6i.large", 2, 8),
    ec2("m6i.xlarge", 4, 16),
    ec2("c5.large", 2, 4),
    ec2("c5.xlarge", 4, 8),
    ec2("r5.large", 2, 16),
    ec2_gpu("g4dn.xlarge", 4, 16 * 1024, 1, Some("NVIDIA T4")),
    ec2_gpu("g4dn.2xlarge", 8, 32 * 1024, 1, Some("NVIDIA T4")),
    ec2_gpu("p3.2xlarge", 8, 61 * 1024, 1, Some("NVIDIA V100")),
];

/// A machine type from the catalogue. Cheap to copy; equal, hashed and
/// serialized by name.
#[derive(Clone, Copy)]
pub struct MachineType(&'static MachineTypeInfo);

impl MachineType {
    pub const SMALL: MachineType = MachineType(&CATALOGUE[0]);
    pub const MEDIUM: MachineType = MachineType(&CATALOGUE[1]);
    pub const LARGE: MachineType = MachineType(&CATALOGUE[2]);

    /// Every machine type, in catalogue order.
    pub fn all() -> impl Iterator<Item = MachineType> {
        CATALOGUE.iter().map(MachineType)
    }

    /// The type named `value`. An unknown name is refused (field
    /// `machine_type`) with a few valid names, not the whole catalogue.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        Self::all().find(|t| t.as_str() == value).ok_or_else(|| {
            ValidationError::new(
                "machine_type",
                format!(
                    "unknown machine type {value:?}; for example small, medium, large, \
                     m5.large or g4dn.xlarge (GET /v1/machine-types lists them all)"
                ),
            )
        })
    }

    /// The type named `value`, offered on provider kind `kind`: as
    /// [`parse`](Self::parse), then [`check_offered`](Self::check_offered).
    pub fn parse_on(value: &str, kind: &str) -> Result<Self, ValidationError> {
        let t = Self::parse(value)?;
        t.check_offered(kind)?;
        Ok(t)
    }

    pub fn as_str(self) -> &'static str {
        self.0.name
    }

    pub fn info(self) -> &'static MachineTypeInfo {
        self.0
    }

    pub fn cpus(self) -> u32 {
        self.0.cpus
    }

    pub fn memory_mib(self) -> u32 {
        self.0.memory_mib
    }

    pub fn gpus(self) -> u32 {
        self.0.gpus
    }

    pub fn gpu_model(self) -> Option<&'static str> {
        self.0.gpu_model
    }

    /// The provider kinds that offer this type.
    pub fn providers(self) -> &'static [&'static str] {
        self.0.providers
    }

    pub fn offered_on(self, kind: &str) -> bool {
        self.0.providers.contains(&kind)
    }

    /// Refuses (field `machine_type`) a type provider kind `kind` does not
    /// offer, saying which kinds do.
    pub fn check_offered(self, kind: &str) -> Result<(), ValidationError> {
        if self.offered_on(kind) {
            return Ok(());
        }
        Err(ValidationError::new(
            "machine_type",
            format!(
                "machine type {:?} is not offered on the {kind} provider; it is offered on: {}",
                self.as_str(),
                self.providers().join(", ")
            ),
        ))
    }

    /// The EC2 instance type a machine of this type is launched as on `aws`.
    pub fn ec2_instance_type(self) -> Option<&'static str> {
        self.0.ec2_instance_type
    }

    /// Whether a machine of this type has at least the vCPUs, memory and
    /// GPUs of `other`: a node of it keeps any promise `other`'s template
    /// made.
    pub fn covers(self, other: MachineType) -> bool {
        self.cpus() >= other.cpus()
            && self.memory_mib() >= other.memory_mib()
            && self.gpus() >= other.gpus()
    }

    /// (vCPUs, memory MiB) a provider should give a machine of this type.
    pub fn resources(self) -> (u32, u32) {
        (self.0.cpus, self.0.memory_mib)
    }

    /// What a machine of this type has: its CPUs, its memory and the most
    /// pods its kubelet runs ([`MAX_PODS`]). GPUs are [`gpus`](Self::gpus).
    pub fn capacity(self) -> NodeResources {
        NodeResources {
            cpu_millis: self.0.cpus * 1000,
            memory_mib: self.0.memory_mib,
            pods: MAX_PODS,
        }
    }

    /// What a node of this type offers to pods: its [`capacity`] less the
    /// system reservation ([`SYSTEM_RESERVED_CPU_MILLIS`],
    /// [`SYSTEM_RESERVED_MEMORY_MIB`]) and the kubelet's hard-eviction
    /// threshold ([`EVICTION_HARD_MEMORY_MIB`]), as the kubelet reports
    /// `status.allocatable`. These are the numbers the autoscaler's
    /// template nodes start from (before DaemonSet pods), and lab workers
    /// are held to them: a lab machine sees the whole host, so its worker
    /// bundle reserves the difference (`crate::worker::NodeOffer`), and a
    /// node that joins offers what its template promised. GPUs are not
    /// reserved: all [`gpus`](Self::gpus) are allocatable.
    ///
    /// [`capacity`]: MachineType::capacity
    pub fn allocatable(self) -> NodeResources {
        let c = self.capacity();
        NodeResources {
            cpu_millis: c.cpu_millis.saturating_sub(SYSTEM_RESERVED_CPU_MILLIS),
            memory_mib: c
                .memory_mib
                .saturating_sub(SYSTEM_RESERVED_MEMORY_MIB + EVICTION_HARD_MEMORY_MIB),
            pods: c.pods,
        }
    }
}

/// Checks a pool's alternative machine types against its primary type
/// `primary`: at most [`MAX_ALTERNATIVES`], known, distinct, none the
/// primary itself, and each with at least the primary's vCPUs, memory and
/// GPUs, so the autoscaler's template of the primary stays a promise
/// whichever type is launched. Errors name `alternative_machine_types` or
/// `alternative_machine_types[i]`.
pub fn parse_alternatives(
    primary: MachineType,
    names: &[String],
) -> Result<Vec<MachineType>, ValidationError> {
    const FIELD: &str = "alternative_machine_types";
    if names.len() > MAX_ALTERNATIVES {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "at most {MAX_ALTERNATIVES} alternative machine types, not {}",
                names.len()
            ),
        ));
    }
    let mut out: Vec<MachineType> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let at = format!("{FIELD}[{i}]");
        let t = MachineType::parse(name).map_err(|e| ValidationError::new(&at, e.message))?;
        if t == primary {
            return Err(ValidationError::new(
                at,
                format!("{name:?} is the pool's machine type itself"),
            ));
        }
        if out.contains(&t) {
            return Err(ValidationError::new(
                at,
                format!("{name:?} is listed twice"),
            ));
        }
        if !t.covers(primary) {
            return Err(ValidationError::new(
                at,
                format!(
                    "{name:?} ({}) has less than the pool's machine type {:?} ({}): an \
                     alternative must offer at least its vCPUs, memory and GPUs",
                    describe(t),
                    primary.as_str(),
                    describe(primary)
                ),
            ));
        }
        out.push(t);
    }
    Ok(out)
}

/// Checks that provider kind `kind` offers a pool's alternatives, and that
/// it falls back at all: only `aws` launches alternatives, so elsewhere a
/// non-empty list is refused rather than ignored. Errors name
/// `alternative_machine_types` or `alternative_machine_types[i]`.
pub fn check_alternatives_on(
    kind: &str,
    alternatives: &[MachineType],
) -> Result<(), ValidationError> {
    const FIELD: &str = "alternative_machine_types";
    if alternatives.is_empty() {
        return Ok(());
    }
    if kind != "aws" {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "only clusters on the aws provider fall back to alternative machine types; \
                 this cluster is on {kind}"
            ),
        ));
    }
    for (i, t) in alternatives.iter().enumerate() {
        t.check_offered(kind)
            .map_err(|e| ValidationError::new(format!("{FIELD}[{i}]"), e.message))?;
    }
    Ok(())
}

/// `4 vCPUs, 16384 MiB, 1 GPU`.
fn describe(t: MachineType) -> String {
    let mut s = format!("{} vCPUs, {} MiB", t.cpus(), t.memory_mib());
    if t.gpus() > 0 {
        s.push_str(&format!(", {} GPU", t.gpus()));
    }
    s
}

impl PartialEq for MachineType {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for MachineType {}

impl std::hash::Hash for MachineType {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.name.hash(state);
    }
}

impl fmt::Debug for MachineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineType({:?})", self.0.name)
    }
}

impl fmt::Display for MachineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl Serialize for MachineType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name)
    }
}

impl<'de> Deserialize<'de> for MachineType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        MachineType::parse(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> MachineType {
        MachineType::parse(name).unwrap()
    }

    fn alts(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn generic_sizes_keep_their_numbers_and_are_offered_everywhere() {
        let got: Vec<_> = [MachineType::SMALL, MachineType::MEDIUM, MachineType::LARGE]
            .into_iter()
            .map(|t| (t.as_str(), t.resources(), t.gpus(), t.providers()))
            .collect();
        let every: &[&str] = &["lab", "ssh", "aws"];
        assert_eq!(
            got,
            vec![
                ("small", (1, 2048), 0, every),
                ("medium", (2, 4096), 0, every),
                ("large", (4, 8192), 0, every),
            ]
        );
    }

    #[test]
    fn generic_sizes_launch_an_instance_with_at_least_their_numbers() {
        for g in [MachineType::SMALL, MachineType::MEDIUM, MachineType::LARGE] {
            let ec2 = t(g.ec2_instance_type().unwrap());
            assert!(ec2.covers(g), "{g} launches {ec2}, which has less");
        }
        assert_eq!(MachineType::LARGE.ec2_instance_type(), Some("t3.xlarge"));
    }

    #[test]
    fn ec2_entries_are_named_by_their_instance_type_and_only_on_aws() {
        let ec2: Vec<_> = MachineType::all()
            .filter(|t| !t.offered_on("lab"))
            .collect();
        assert_eq!(ec2.len(), 17);
        for e in ec2 {
            assert_eq!(e.ec2_instance_type(), Some(e.as_str()));
            assert_eq!(e.providers(), &["aws"]);
            assert!(!e.offered_on("ssh"));
        }
        let g = t("g4dn.xlarge");
        assert_eq!((g.cpus(), g.memory_mib(), g.gpus()), (4, 16384, 1));
        assert_eq!(g.gpu_model(), Some("NVIDIA T4"));
        let p = t("p3.2xlarge");
        assert_eq!((p.cpus(), p.memory_mib(), p.gpus()), (8, 62464, 1));
        assert_eq!(p.gpu_model(), Some("NVIDIA V100"));
        assert_eq!(t("r5.large").resources(), (2, 16384));
        assert_eq!(t("c5.large").resources(), (2, 4096));
    }

    #[test]
    fn names_are_unique_and_round_trip_through_serde() {
        let names: std::collections::BTreeSet<_> = MachineType::all().map(|t| t.as_str()).collect();
        assert_eq!(names.len(), MachineType::all().count());
        for m in MachineType::all() {
            let json = serde_json::to_value(m).unwrap();
            assert_eq!(json, serde_json::json!(m.as_str()));
            assert_eq!(serde_json::from_value::<MachineType>(json).unwrap(), m);
        }
        assert!(serde_json::from_value::<MachineType>(serde_json::json!("huge")).is_err());
    }

    #[test]
    fn unknown_names_list_a_few_valid_ones_not_all() {
        let e = MachineType::parse("huge").unwrap_err();
        assert_eq!(e.field, "machine_type");
        assert!(
            e.message.contains("small") && e.message.contains("m5.large"),
            "{e}"
        );
        assert!(!e.message.contains("p3.2xlarge"), "{e}");
    }

    #[test]
    fn a_type_not_offered_is_refused_saying_where_it_is() {
        let e = MachineType::parse_on("m5.large", "lab").unwrap_err();
        assert_eq!(e.field, "machine_type");
        assert!(e.message.contains("offered on: aws"), "{e}");
        assert!(MachineType::parse_on("m5.large", "aws").is_ok());
        assert!(MachineType::parse_on("small", "ssh").is_ok());
    }

    #[test]
    fn alternatives_must_cover_the_primary() {
        let m5 = t("m5.large");
        assert_eq!(
            parse_alternatives(m5, &alts(&["m5a.large", "m6i.xlarge"])).unwrap(),
            vec![t("m5a.large"), t("m6i.xlarge")]
        );
        assert_eq!(parse_alternatives(m5, &[]).unwrap(), vec![]);
        let field = |names: &[&str], primary: MachineType| {
            parse_alternatives(primary, &alts(names)).unwrap_err().field
        };
        // Less memory than m5.large (c5.large), fewer vCPUs, no GPU.
        assert_eq!(
            field(&["m5a.large", "c5.large"], m5),
            "alternative_machine_types[1]"
        );
        assert_eq!(field(&["t3.small"], m5), "alternative_machine_types[0]");
        assert_eq!(
            field(&["m5.xlarge"], t("g4dn.xlarge")),
            "alternative_machine_types[0]"
        );
        assert!(parse_alternatives(t("g4dn.xlarge"), &alts(&["g4dn.2xlarge"])).is_ok());
        assert_eq!(field(&["m5.large"], m5), "alternative_machine_types[0]");
        assert_eq!(
            field(&["m5a.large", "m5a.large"], m5),
            "alternative_machine_types[1]"
        );
        assert_eq!(
            field(&["m5a.large", "nope"], m5),
            "alternative_machine_types[1]"
        );
        assert_eq!(
            field(
                &[
                    "m5a.large",
                    "m6i.large",
                    "m5.xlarge",
                    "m6i.xlarge",
                    "m5.2xlarge"
                ],
                m5
            ),
            "alternative_machine_types"
        );
    }

    #[test]
    fn alternatives_only_on_aws() {
        let m = [t("m5.xlarge")];
        assert!(check_alternatives_on("aws", &m).is_ok());
        assert!(check_alternatives_on("lab", &[]).is_ok());
        for kind in ["lab", "ssh"] {
            let e = check_alternatives_on(kind, &[MachineType::LARGE]).unwrap_err();
            assert_eq!(e.field, "alternative_machine_types", "{kind}");
        }
    }
}
