//! Cluster networking: the pod and service ranges, parsed and checked together.
//!
//! Rules: IPv4 only (this build); the address must be the network address
//! (`10.244.0.0/16`, not `10.244.1.5/16`); the pod range must hold at least
//! sixteen /24 node ranges (prefix /20 or shorter); the service range is
//! between /12 and /24; the two must not overlap; neither may be a loopback,
//! link-local or multicast range.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::ValidationError;

/// An IPv4 network in CIDR notation whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr(Ipv4Net);

impl Ipv4Cidr {
    pub fn parse(value: &str) -> Result<Self, String> {
        let net = Ipv4Net::from_str(value)
            .map_err(|_| format!("{value:?} is not an IPv4 CIDR such as 10.244.0.0/16"))?;
        if net.network() != net.addr() {
            return Err(format!(
                "{value:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        let first = net.network();
        if first.is_loopback()
            || first.is_link_local()
            || first.is_multicast()
            || first.is_unspecified()
        {
            return Err(format!("{value:?} is a reserved range"));
        }
        Ok(Self(net))
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn network(&self) -> Ipv4Addr {
        self.0.network()
    }

    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.0.contains(&other.0.network()) || other.0.contains(&self.0.network())
    }

    /// The n-th address of the range (0 is the network address).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let base = u32::from(self.0.network());
        let size = 1u64 << (32 - u32::from(self.0.prefix_len()));
        (u64::from(n) < size).then(|| Ipv4Addr::from(base + n))
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Ipv4Cidr> for String {
    fn from(value: Ipv4Cidr) -> String {
        value.to_string()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Longest pod-range prefix: a /20 holds sixteen /24 node ranges.
pub const POD_CIDR_MAX_PREFIX: u8 = 20;
/// Service range prefix bounds.
pub const SERVICE_CIDR_PREFIX: std::ops::RangeInclusive<u8> = 12..=24;

/// The pod and service ranges of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNetwork {
    pub pod_cidr: Ipv4Cidr,
    pub service_cidr: Ipv4Cidr,
}

impl ClusterNetwork {
    pub fn parse(pod_cidr: &str, service_cidr: &str) -> Result<Self, ValidationError> {
        let pod = Ipv4Cidr::parse(pod_cidr).map_err(|m| ValidationError::new("pod_cidr", m))?;
        if pod.prefix_len() > POD_CIDR_MAX_PREFIX {
            return Err(ValidationError::new(
                "pod_cidr",
                format!(
                    "/{} is too small for pods; use a /{POD_CIDR_MAX_PREFIX} or larger range",
                    pod.prefix_len()
                ),
            ));
        }
        let service =
            Ipv4Cidr::parse(service_cidr).map_err(|m| ValidationError::new("service_cidr", m))?;
        if !SERVICE_CIDR_PREFIX.contains(&service.prefix_len()) {
            return Err(ValidationError::new(
                "service_cidr",
                format!(
                    "prefix /{} is outside /{}../{}",
                    service.prefix_len(),
                    SERVICE_CIDR_PREFIX.start(),
                    SERVICE_CIDR_PREFIX.end()
                ),
            ));
        }
        if pod.overlaps(&service) {
            return Err(ValidationError::new(
                "service_cidr",
                format!("{service} overlaps the pod range {pod}"),
            ));
        }
        Ok(Self {
            pod_cidr: pod,
            service_cidr: service,
        })
    }

    /// The first usable service address: the `kubernetes` Service's ClusterIP.
    pub fn first_service_ip(&self) -> Ipv4Addr {
        self.service_cidr
            .nth(1)
            .unwrap_or_else(|| self.service_cidr.network())
    }

    /// The cluster DNS address every kubelet hands its pods: the tenth
    /// service address, the `kube-dns` Service's ClusterIP (as kubeadm
    /// picks it). The service range is /24 or larger, so it exists.
    pub fn dns_service_ip(&self) -> Ipv4Addr {
        self.service_cidr
            .nth(10)
            .unwrap_or_else(|| self.service_cidr.network())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_parse() {
        let n = ClusterNetwork::parse("10.244.0.0/16", "10.96.0.0/12").unwrap();
        assert_eq!(n.first_service_ip(), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(n.dns_service_ip(), Ipv4Addr::new(10, 96, 0, 10));
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            ("10.244.0.0/24", "10.96.0.0/12", "pod_cidr"),
            ("10.244.1.0/16", "10.96.0.0/12", "pod_cidr"),
            ("nonsense", "10.96.0.0/12", "pod_cidr"),
            ("10.244.0.0/16", "10.96.0.0/8", "service_cidr"),
            ("10.0.0.0/8", "10.96.0.0/12", "service_cidr"),
            ("127.0.0.0/16", "10.96.0.0/12", "pod_cidr"),
        ];
        for (pod, svc, field) in cases {
            let err = ClusterNetwork::parse(pod, svc).unwrap_err();
            assert_eq!(err.field, field, "{pod} {svc}: {err}");
        }
    }

    proptest! {
        #[test]
        fn overlap_is_symmetric(a in any::<u32>(), pa in 8u8..=24, b in any::<u32>(), pb in 8u8..=24) {
            let x = Ipv4Net::new(Ipv4Addr::from(a), pa).unwrap().trunc();
            let y = Ipv4Net::new(Ipv4Addr::from(b), pb).unwrap().trunc();
            let (x, y) = (Ipv4Cidr(x), Ipv4Cidr(y));
            prop_assert_eq!(x.overlaps(&y), y.overlaps(&x));
        }

        #[test]
        fn accepted_networks_never_overlap(a in any::<u32>(), pa in 8u8..=20, b in any::<u32>(), pb in 12u8..=24) {
            let x = Ipv4Net::new(Ipv4Addr::from(a), pa).unwrap().trunc().to_string();
            let y = Ipv4Net::new(Ipv4Addr::from(b), pb).unwrap().trunc().to_string();
            if let Ok(n) = ClusterNetwork::parse(&x, &y) {
                prop_assert!(!n.pod_cidr.overlaps(&n.service_cidr));
            }
        }
    }
}
