//! Cluster networking: the pod and service ranges, parsed and checked together.
//!
//! Rules: IPv4 only (this build); the address must be the network address
//! (`10.244.0.0/16`, not `10.244.1.5/16`); the pod range must hold at least
//! sixteen /24 node ranges (prefix /20 or shorter); the service range is
//! between /12 and /24; the two must not overlap; neither may overlap a
//! reserved range ([`RESERVED_RANGES`]: this network, loopback, link-local,
//! multicast, the reserved block and broadcast), the WHOLE range compared,
//! not only its first address; and neither may overlap a network a
//! provider's machines live on ([`ProviderNetwork`], checked by the app,
//! which knows the providers: [`ClusterNetwork::check_apart_from`]).

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
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
        if let Some((range, what)) = reserved_overlap(net) {
            return Err(format!("{value:?} overlaps {range}, the {what} range"));
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
        nets_overlap(self.0, other.0)
    }

    /// The n-th address of the range (0 is the network address).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let base = u32::from(self.0.network());
        let size = 1u64 << (32 - u32::from(self.0.prefix_len()));
        (u64::from(n) < size).then(|| Ipv4Addr::from(base + n))
    }
}

/// Ranges no cluster network may overlap (RFC 6890's special-purpose
/// blocks that cannot carry pods or services), with what each is.
pub const RESERVED_RANGES: [(Ipv4Addr, u8, &str); 5] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (and broadcast)"),
];

/// Whether two CIDR ranges share an address: one holds the other's first
/// address (CIDR ranges nest or are apart).
fn nets_overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first reserved range `net` overlaps, if any.
fn reserved_overlap(net: Ipv4Net) -> Option<(Ipv4Net, &'static str)> {
    RESERVED_RANGES.iter().find_map(|&(addr, len, what)| {
        let range = Ipv4Net::new(addr, len).ok()?;
        nets_overlap(net, range).then_some((range, what))
    })
}

/// Checks an address a registered host is reached at: a unicast address
/// of another machine. Refused: unspecified, loopback, link-local (the
/// cloud metadata service 169.254.169.254 among them), multicast,
/// broadcast and the other [`RESERVED_RANGES`]; IPv6 alike, an IPv4-mapped
/// address as its IPv4 address. (A provider network's gateway, the
/// service's own host, is refused by the app, which knows the providers.)
pub fn check_host_address(address: IpAddr) -> Result<(), String> {
    let refused = match address.to_canonical() {
        IpAddr::V4(v4) => reserved_overlap(Ipv4Net::from(v4)).map(|(_, what)| what),
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if v6.is_unicast_link_local() {
                Some("link-local")
            } else {
                None
            }
        }
    };
    match refused {
        Some(what) => Err(format!(
            "{address} is a {what} address, not one another machine can be reached at"
        )),
        None => Ok(()),
    }
}

/// A network a provider's machines live on (the lab's bridge subnet). No
/// cluster's pod or service range may overlap it: a node would send its
/// neighbours' traffic into the pod network, and the service could not
/// reach the machines. Its gateway is the service's own host on it, never
/// a machine a platform admin may register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderNetwork {
    /// Whose it is, for messages (`lab`).
    pub provider: String,
    pub range: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
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

    /// Checks that neither range overlaps a provider's network; errors
    /// name `pod_cidr` or `service_cidr` (for the caller to put under
    /// `network`).
    pub fn check_apart_from(&self, networks: &[ProviderNetwork]) -> Result<(), ValidationError> {
        for (field, range) in [
            ("pod_cidr", self.pod_cidr),
            ("service_cidr", self.service_cidr),
        ] {
            if let Some(n) = networks.iter().find(|n| nets_overlap(range.0, n.range)) {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "{range} overlaps {}, the network the {} provider's machines live on",
                        n.range, n.provider
                    ),
                ));
            }
        }
        Ok(())
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
            // Ranges whose first address is ordinary but which hold a
            // reserved block.
            ("64.0.0.0/2", "10.96.0.0/12", "pod_cidr"),
            ("128.0.0.0/1", "10.96.0.0/12", "pod_cidr"),
            ("0.0.0.0/1", "10.96.0.0/12", "pod_cidr"),
            ("160.0.0.0/4", "10.96.0.0/12", "pod_cidr"),
            ("10.244.0.0/16", "169.240.0.0/12", "service_cidr"),
            ("192.0.0.0/2", "10.96.0.0/12", "pod_cidr"),
        ];
        for (pod, svc, field) in cases {
            let err = ClusterNetwork::parse(pod, svc).unwrap_err();
            assert_eq!(err.field, field, "{pod} {svc}: {err}");
        }
    }

    #[test]
    fn reserved_overlaps_are_named() {
        let err = Ipv4Cidr::parse("64.0.0.0/2").unwrap_err();
        assert!(err.contains("127.0.0.0/8, the loopback range"), "{err}");
        let err = Ipv4Cidr::parse("128.0.0.0/1").unwrap_err();
        assert!(
            err.contains("169.254.0.0/16, the link-local range"),
            "{err}"
        );
        let err = Ipv4Cidr::parse("192.0.0.0/2").unwrap_err();
        assert!(err.contains("multicast"), "{err}");
        for ok in [
            "10.0.0.0/8",
            "100.64.0.0/10",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "1.0.0.0/8",
        ] {
            assert!(Ipv4Cidr::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn host_addresses_are_other_machines() {
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.5.5.5",
            "169.254.169.254",
            "169.254.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            let err = check_host_address(bad.parse().unwrap()).unwrap_err();
            assert!(err.starts_with(bad), "{bad}: {err}");
        }
        for ok in [
            "10.77.0.20",
            "192.0.2.10",
            "8.8.8.8",
            "100.64.0.1",
            "2001:db8::1",
            "fd00::1",
        ] {
            assert_eq!(check_host_address(ok.parse().unwrap()), Ok(()), "{ok}");
        }
    }

    #[test]
    fn provider_networks_are_kept_apart() {
        let lab = ProviderNetwork {
            provider: "lab".into(),
            range: "10.77.0.0/24".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
        };
        let ok = ClusterNetwork::parse("10.244.0.0/16", "10.96.0.0/12").unwrap();
        assert_eq!(ok.check_apart_from(std::slice::from_ref(&lab)), Ok(()));
        for (pod, svc, field) in [
            ("10.64.0.0/12", "10.96.0.0/12", "pod_cidr"),
            ("10.77.0.0/20", "10.96.0.0/12", "pod_cidr"),
            ("10.244.0.0/16", "10.77.0.0/24", "service_cidr"),
            ("10.244.0.0/16", "10.64.0.0/12", "service_cidr"),
        ] {
            let n = ClusterNetwork::parse(pod, svc).unwrap();
            let err = n.check_apart_from(std::slice::from_ref(&lab)).unwrap_err();
            assert_eq!(err.field, field, "{pod} {svc}");
            assert!(err.message.contains("the lab provider"), "{err}");
        }
    }

    proptest! {
        /// Whatever range is accepted shares no address with a reserved
        /// range, by interval arithmetic (not by the parser's own test).
        #[test]
        fn accepted_ranges_overlap_no_reserved_range(a in any::<u32>(), p in 0u8..=32) {
            let net = Ipv4Net::new(Ipv4Addr::from(a), p).unwrap().trunc();
            let (lo, hi) = (u64::from(u32::from(net.network())), u64::from(u32::from(net.broadcast())));
            let hits_reserved = RESERVED_RANGES.iter().any(|&(addr, len, _)| {
                let start = u64::from(u32::from(addr));
                let end = start + (1u64 << (32 - u32::from(len))) - 1;
                lo <= end && start <= hi
            });
            prop_assert_eq!(Ipv4Cidr::parse(&net.to_string()).is_ok(), !hits_reserved, "{}", net);
        }

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
