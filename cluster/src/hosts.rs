//! What a registered host has to offer a node pool: its capacity.
//!
//! A platform admin declares a host's capacity at registration as a
//! Kubernetes resource map of quantity strings (`{"cpu": "8", "memory":
//! "32Gi", "nvidia.com/gpu": "2"}`), or leaves it out and the `ssh`
//! provider measures cpu and memory on first contact. Either way it is
//! parsed here, once, into [`HostCapacity`], which holds exact integers
//! (millicores, bytes, counts): a quantity that cannot be represented
//! exactly is refused rather than rounded, so what the API shows back is
//! what the host has.
//!
//! Quantities follow Kubernetes' notation without the exponent form: a
//! decimal number (`2`, `1.5`, `0.25`) and an optional suffix, binary
//! (`Ki` `Mi` `Gi` `Ti` `Pi` `Ei`), decimal (`k` `M` `G` `T` `P` `E`) or
//! `m` (thousandths).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::check_label_key;
use crate::validation::ValidationError;

/// At most this many extended resources per host.
pub const MAX_EXTENDED: usize = 16;

/// A host's capacity, parsed: exact integers only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCapacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Extended resources (`nvidia.com/gpu`), whole counts by name.
    pub extended: BTreeMap<String, u64>,
}

/// How a host's capacity became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacitySource {
    /// Given at registration.
    Declared,
    /// Read from the host on first contact.
    Measured,
}

impl CapacitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            CapacitySource::Declared => "declared",
            CapacitySource::Measured => "measured",
        }
    }
}

/// The value of a quantity string in thousandths of its unit (so that
/// `500m` and `1.5` stay integers). Errors say what is wrong, not where.
pub fn parse_quantity_millis(s: &str) -> Result<u128, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    // (numerator, denominator) of the suffix's factor, in thousandths.
    let (num, den): (u128, u128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "k" => (1000 * 1000, 1),
        "M" => (1000 * 1000u128.pow(2), 1),
        "G" => (1000 * 1000u128.pow(3), 1),
        "T" => (1000 * 1000u128.pow(4), 1),
        "P" => (1000 * 1000u128.pow(5), 1),
        "E" => (1000 * 1000u128.pow(6), 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "Pi" => (1000 << 50, 1),
        "Ei" => (1000 << 60, 1),
        other => {
            return Err(format!(
                "{s:?} is not a quantity: unknown suffix {other:?} (use a number with an \
                 optional Ki, Mi, Gi, Ti, k, M, G, T or m)"
            ))
        }
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_ok(whole) || !digits_ok(frac) || number.ends_with('.') {
        return Err(format!(
            "{s:?} is not a quantity: expected digits with an optional fraction, e.g. 2, 1.5, 500m, 32Gi"
        ));
    }
    if whole.len() + frac.len() > 19 {
        return Err(format!("{s:?} is too large"));
    }
    let scale = 10u128.pow(u32::try_from(frac.len()).unwrap_or(u32::MAX));
    let mantissa: u128 = format!("{whole}{frac}")
        .parse()
        .map_err(|_| format!("{s:?} is too large"))?;
    let scaled = mantissa
        .checked_mul(num)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    let den = den * scale;
    if scaled % den != 0 {
        return Err(format!(
            "{s:?} is finer than the smallest unit (a thousandth)"
        ));
    }
    Ok(scaled / den)
}

/// A quantity that must be a whole number of units (bytes, devices).
fn whole_units(s: &str) -> Result<u64, String> {
    let millis = parse_quantity_millis(s)?;
    if millis % 1000 != 0 {
        return Err(format!("{s:?} must be a whole number"));
    }
    u64::try_from(millis / 1000).map_err(|_| format!("{s:?} is too large"))
}

/// Checks an extended resource name: `domain/name`, a label key with a
/// prefix, not in the `kubernetes.io` domain (Kubernetes' own).
pub fn check_extended_name(name: &str) -> Result<(), String> {
    let Some((domain, _)) = name.split_once('/') else {
        return Err(format!(
            "{name:?} must be qualified by a domain, e.g. nvidia.com/gpu"
        ));
    };
    check_label_key(name)?;
    if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") {
        return Err(format!(
            "{name:?} is in the kubernetes.io domain, which Kubernetes reserves"
        ));
    }
    Ok(())
}

impl HostCapacity {
    /// Parses a declared resource map. `cpu` and `memory` are required; the
    /// error's field is the resource's name (`memory`, `nvidia.com/gpu`),
    /// for the caller to put under `capacity`.
    pub fn parse(map: &BTreeMap<String, String>) -> Result<Self, ValidationError> {
        let required = |key: &str| {
            map.get(key)
                .ok_or_else(|| ValidationError::new(key, "is required when capacity is given"))
        };
        let cpu = required("cpu")?;
        let cpu_millis = parse_quantity_millis(cpu)
            .and_then(|m| u64::try_from(m).map_err(|_| format!("{cpu:?} is too large")))
            .map_err(|m| ValidationError::new("cpu", m))?;
        if cpu_millis == 0 {
            return Err(ValidationError::new("cpu", "must be more than 0"));
        }
        let memory = required("memory")?;
        let memory_bytes = whole_units(memory).map_err(|m| ValidationError::new("memory", m))?;
        if memory_bytes == 0 {
            return Err(ValidationError::new("memory", "must be more than 0"));
        }
        let mut extended = BTreeMap::new();
        for (name, value) in map {
            if name == "cpu" || name == "memory" {
                continue;
            }
            check_extended_name(name).map_err(|m| ValidationError::new(name.as_str(), m))?;
            let count = whole_units(value).map_err(|m| ValidationError::new(name.as_str(), m))?;
            extended.insert(name.clone(), count);
        }
        if extended.len() > MAX_EXTENDED {
            return Err(ValidationError::new(
                "",
                format!("at most {MAX_EXTENDED} extended resources"),
            ));
        }
        Ok(Self {
            cpu_millis,
            memory_bytes,
            extended,
        })
    }

    /// The resource map the API shows, in the shortest exact notation
    /// (`8`, `500m`, `32Gi`); [`HostCapacity::parse`] reads it back to the
    /// same value.
    pub fn to_resource_map(&self) -> BTreeMap<String, String> {
        let cpu = if self.cpu_millis.is_multiple_of(1000) {
            (self.cpu_millis / 1000).to_string()
        } else {
            format!("{}m", self.cpu_millis)
        };
        let memory = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"]
            .iter()
            .zip([60u32, 50, 40, 30, 20, 10])
            .find(|(_, shift)| self.memory_bytes.is_multiple_of(1u64 << shift))
            .map_or_else(
                || self.memory_bytes.to_string(),
                |(suffix, shift)| format!("{}{suffix}", self.memory_bytes >> shift),
            );
        let mut map = BTreeMap::from([("cpu".to_string(), cpu), ("memory".to_string(), memory)]);
        for (name, count) in &self.extended {
            map.insert(name.clone(), count.to_string());
        }
        map
    }

    /// What a host reports about itself: online CPUs and `MemTotal` in kB
    /// (from `/proc/meminfo`).
    pub fn measured(cpus: u64, mem_total_kb: u64) -> Self {
        Self {
            cpu_millis: cpus.saturating_mul(1000),
            memory_bytes: mem_total_kb.saturating_mul(1024),
            extended: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn quantities_in_thousandths() {
        assert_eq!(parse_quantity_millis("500m"), Ok(500));
        assert_eq!(parse_quantity_millis("2"), Ok(2000));
        assert_eq!(parse_quantity_millis("1.5"), Ok(1500));
        assert_eq!(parse_quantity_millis("0.25"), Ok(250));
        assert_eq!(parse_quantity_millis("32Gi"), Ok(32 * 1000 * (1 << 30)));
        assert_eq!(parse_quantity_millis("1G"), Ok(1000 * 1_000_000_000));
        assert_eq!(parse_quantity_millis("1.5Ki"), Ok(1536 * 1000));
        assert_eq!(parse_quantity_millis("2k"), Ok(2_000_000));
    }

    #[test]
    fn bad_quantities_are_refused() {
        for bad in [
            "", "m", "Gi", "-1", "1.", ".5", "1..2", "1e3", "1 Gi", "1gi", "1Gib", "two", "0.0001",
            "1.2.3", "+1",
        ] {
            assert!(parse_quantity_millis(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_quantity_millis("99999999999999999999Ei").is_err());
    }

    #[test]
    fn capacity_parses_and_round_trips() {
        let c = HostCapacity::parse(&map(&[
            ("cpu", "8"),
            ("memory", "32Gi"),
            ("nvidia.com/gpu", "2"),
        ]))
        .unwrap();
        assert_eq!(c.cpu_millis, 8000);
        assert_eq!(c.memory_bytes, 32 << 30);
        assert_eq!(c.extended, BTreeMap::from([("nvidia.com/gpu".into(), 2)]));
        let shown = c.to_resource_map();
        assert_eq!(
            shown,
            map(&[("cpu", "8"), ("memory", "32Gi"), ("nvidia.com/gpu", "2")])
        );
        assert_eq!(HostCapacity::parse(&shown).unwrap(), c);

        let odd = HostCapacity::parse(&map(&[("cpu", "1500m"), ("memory", "1G")])).unwrap();
        assert_eq!(odd.to_resource_map()["cpu"], "1500m");
        assert_eq!(odd.to_resource_map()["memory"], "1000000000");
        assert_eq!(HostCapacity::parse(&odd.to_resource_map()).unwrap(), odd);
    }

    #[test]
    fn capacity_errors_name_the_resource() {
        let field = |pairs: &[(&str, &str)]| HostCapacity::parse(&map(pairs)).unwrap_err().field;
        assert_eq!(field(&[("memory", "1Gi")]), "cpu");
        assert_eq!(field(&[("cpu", "2")]), "memory");
        assert_eq!(field(&[("cpu", "0"), ("memory", "1Gi")]), "cpu");
        assert_eq!(field(&[("cpu", "lots"), ("memory", "1Gi")]), "cpu");
        assert_eq!(field(&[("cpu", "2"), ("memory", "1.5")]), "memory");
        assert_eq!(field(&[("cpu", "2"), ("memory", "500m")]), "memory");
        assert_eq!(
            field(&[("cpu", "2"), ("memory", "1Gi"), ("nvidia.com/gpu", "0.5")]),
            "nvidia.com/gpu"
        );
        assert_eq!(
            field(&[("cpu", "2"), ("memory", "1Gi"), ("gpu", "1")]),
            "gpu"
        );
        assert_eq!(
            field(&[("cpu", "2"), ("memory", "1Gi"), ("kubernetes.io/x", "1")]),
            "kubernetes.io/x"
        );
        assert_eq!(
            field(&[
                ("cpu", "2"),
                ("memory", "1Gi"),
                ("node.kubernetes.io/x", "1")
            ]),
            "node.kubernetes.io/x"
        );
        assert_eq!(
            field(&[("cpu", "2"), ("memory", "1Gi"), ("Bad_Domain/x", "1")]),
            "Bad_Domain/x"
        );
        let e = HostCapacity::parse(&map(&[("cpu", "2"), ("memory", "1Gi"), ("gpu", "1")]))
            .unwrap_err()
            .under("capacity");
        assert_eq!(e.field, "capacity.gpu");
    }

    #[test]
    fn measured_capacity_is_cpus_and_memtotal() {
        let c = HostCapacity::measured(4, 8_000_000);
        assert_eq!(c.cpu_millis, 4000);
        assert_eq!(c.memory_bytes, 8_192_000_000);
        assert!(c.extended.is_empty());
    }
}
