//! Routes between the nodes of one cluster (the first part of issue 12:
//! a pod network without a CNI datapath of its own, as kubenet with a
//! route controller does it): every node reaches every other node's pod
//! range through that node's address, and no route goes anywhere else.
//!
//! [`plan`] turns what the service knows of a cluster's workers into each
//! node's route table. It trusts only what a tenant cannot forge:
//! - a node's address is its machine's address from the ledger, never an
//!   address its Node object reports;
//! - a node's pod range is the one the controller manager allocated
//!   (`spec.podCIDR`), used only when it lies inside the cluster's pod
//!   range and overlaps no other node's; two nodes claiming overlapping
//!   ranges get no route to either, and the plan says why;
//! - two machines with one address (a ledger error) are both left out.
//!
//! The plan is pure and sorted, so the same inputs give the same tables.
//! [`node_files`] are what one node gets: its table ([`render`]), the
//! cluster's pod range, the script that applies them and the unit that
//! reapplies them at boot; their [`digest`] is what the engine compares
//! with what the node last applied. The routes carry protocol
//! [`ROUTE_PROTO`] so the script removes exactly the routes it added and
//! no others. The script also masquerades pod traffic that leaves the pod
//! network (pod to pod keeps its source address; the CNI bridge's own
//! masquerade is off), and guards a node's pods against neighbours: a new
//! connection forwarded to the pod range must come from the cluster's pod
//! range or from one of the cluster's machines (the node's [`paths::PEERS`],
//! from the ledger), or be one kube-proxy translated on this node (a
//! NodePort); anything else is dropped, so a machine of another cluster on
//! the same network cannot reach the pods even with a route of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use crate::bundle::BundleFile;
use crate::network::Ipv4Cidr;

/// Where the network files go on a node.
pub mod paths {
    pub const SCRIPT: &str = "/opt/kubeforge/kubeforge-network.sh";
    pub const UNIT: &str = "/etc/systemd/system/kubeforge-network.service";
    /// `pod_cidr=<the cluster's pod range>`.
    pub const CONF: &str = "/etc/kubeforge/network";
    /// The node's table ([`super::render`]).
    pub const ROUTES: &str = "/etc/kubeforge/routes";
    /// The cluster's machines' addresses, one a line: the sources (beside
    /// the pod range) that may open connections to the node's pods.
    pub const PEERS: &str = "/etc/kubeforge/peers";
}

/// What the engine runs on a node after uploading [`node_files`]: the unit
/// enabled for boots to come, and the script run now.
pub const APPLY_COMMAND: &str = "systemctl daemon-reload && \
systemctl enable --quiet kubeforge-network.service && \
bash /opt/kubeforge/kubeforge-network.sh";

/// The routing protocol number Kubeforge's routes carry (`ip route ...
/// proto 77`): how a node tells them from the kernel's and anyone else's.
pub const ROUTE_PROTO: u8 = 77;

/// One worker of the cluster, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedNode {
    /// The node's (and its machine's) name.
    pub name: String,
    /// Its machine's address, from the ledger.
    pub address: Ipv4Addr,
    /// The pod range allocated to its Node; None until the controller
    /// manager has allocated one (or while its Node is missing).
    pub pod_cidr: Option<Ipv4Cidr>,
}

/// A route on a node: `destination via via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub destination: Ipv4Cidr,
    pub via: Ipv4Addr,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.destination, self.via)
    }
}

/// Every node's route table, and the nodes left out with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Node name -> its routes, sorted by destination.
    pub tables: BTreeMap<String, Vec<Route>>,
    /// Why a node's pod range gets no route (one line per node).
    pub left_out: Vec<String>,
}

/// Whether `inner` lies wholly inside `outer`.
fn within(inner: &Ipv4Cidr, outer: &Ipv4Cidr) -> bool {
    inner.prefix_len() >= outer.prefix_len() && outer.overlaps(inner)
}

/// Each node's routes: to every other node's pod range via that node's
/// address (see the module doc for what is left out).
pub fn plan(cluster_pods: Ipv4Cidr, nodes: &[RoutedNode]) -> Plan {
    let mut left_out: BTreeMap<&str, String> = BTreeMap::new();

    // One address, one machine.
    let mut by_address: BTreeMap<Ipv4Addr, Vec<&str>> = BTreeMap::new();
    for n in nodes {
        by_address.entry(n.address).or_default().push(&n.name);
    }
    let shared: BTreeSet<Ipv4Addr> = by_address
        .iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(a, _)| *a)
        .collect();
    for n in nodes.iter().filter(|n| shared.contains(&n.address)) {
        left_out.insert(
            &n.name,
            format!(
                "{}: its address {} is another machine's too",
                n.name, n.address
            ),
        );
    }

    // Pod ranges inside the cluster's, and no two overlapping.
    let addressed: Vec<&RoutedNode> = nodes
        .iter()
        .filter(|n| !shared.contains(&n.address))
        .collect();
    let candidates: Vec<(&RoutedNode, Ipv4Cidr)> = addressed
        .into_iter()
        .filter_map(|n| {
            let cidr = n.pod_cidr?;
            if within(&cidr, &cluster_pods) {
                Some((n, cidr))
            } else {
                left_out.insert(
                    &n.name,
                    format!(
                        "{}: its pod range {cidr} is outside the cluster's {cluster_pods}",
                        n.name
                    ),
                );
                None
            }
        })
        .collect();
    let mut routable: Vec<(&RoutedNode, Ipv4Cidr)> = Vec::new();
    for (i, (n, cidr)) in candidates.iter().enumerate() {
        let clash = candidates
            .iter()
            .enumerate()
            .find(|(j, (_, other))| *j != i && cidr.overlaps(other));
        match clash {
            Some((_, (other, other_cidr))) => {
                left_out.insert(
                    &n.name,
                    format!(
                        "{}: its pod range {cidr} overlaps {}'s {other_cidr}",
                        n.name, other.name
                    ),
                );
            }
            None => routable.push((n, *cidr)),
        }
    }

    let mut tables: BTreeMap<String, Vec<Route>> = BTreeMap::new();
    for n in nodes.iter().filter(|n| !shared.contains(&n.address)) {
        let mut routes: Vec<Route> = routable
            .iter()
            .filter(|(other, _)| other.name != n.name)
            .map(|(other, cidr)| Route {
                destination: *cidr,
                via: other.address,
            })
            .collect();
        routes.sort();
        tables.insert(n.name.clone(), routes);
    }
    Plan {
        tables,
        left_out: left_out.into_values().collect(),
    }
}

/// One node's table as its route file: `DESTINATION via ADDRESS` per line,
/// sorted; empty when the node needs no route.
pub fn render(routes: &[Route]) -> String {
    let mut out = String::new();
    for r in routes {
        out.push_str(&r.to_string());
        out.push('\n');
    }
    out
}

/// The files one machine gets: the script, the unit, the cluster's pod
/// range (and whether to masquerade pod traffic leaving it: on nodes, not
/// on control-plane members, which run no pods but must reach them) and
/// its table. Nothing in them comes from a tenant as text: the range and
/// the routes are parsed addresses.
pub fn node_files(
    cluster_pods: Ipv4Cidr,
    routes: &[Route],
    masquerade: bool,
    peers: &BTreeSet<Ipv4Addr>,
) -> Vec<BundleFile> {
    vec![
        BundleFile {
            path: paths::SCRIPT.into(),
            mode: 0o755,
            contents: include_str!("../../templates/worker/kubeforge-network.sh").into(),
        },
        BundleFile {
            path: paths::UNIT.into(),
            mode: 0o644,
            contents: include_str!("../../templates/worker/kubeforge-network.service").into(),
        },
        BundleFile {
            path: paths::CONF.into(),
            mode: 0o644,
            contents: format!(
                "pod_cidr={cluster_pods}\nmasquerade={}\n",
                if masquerade { "yes" } else { "no" }
            ),
        },
        BundleFile {
            path: paths::ROUTES.into(),
            mode: 0o644,
            contents: render(routes),
        },
        BundleFile {
            path: paths::PEERS.into(),
            mode: 0o644,
            contents: peers.iter().map(|p| format!("{p}\n")).collect(),
        },
    ]
}

/// The sha256 (hex) of a node's files, paths and modes included: equal
/// digests, nothing to apply.
pub fn digest(files: &[BundleFile]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(f.mode.to_be_bytes());
        h.update(f.contents.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        Ipv4Cidr::parse(s).unwrap()
    }

    fn node(name: &str, address: &str, pods: Option<&str>) -> RoutedNode {
        RoutedNode {
            name: name.into(),
            address: address.parse().unwrap(),
            pod_cidr: pods.map(cidr),
        }
    }

    #[test]
    fn every_node_reaches_every_other_nodes_pods_through_that_node() {
        let p = plan(
            cidr("10.244.0.0/16"),
            &[
                node("a", "10.80.5.21", Some("10.244.0.0/24")),
                node("b", "10.80.5.22", Some("10.244.1.0/24")),
                node("c", "10.80.5.23", Some("10.244.2.0/24")),
            ],
        );
        assert!(p.left_out.is_empty(), "{:?}", p.left_out);
        assert_eq!(
            render(&p.tables["a"]),
            "10.244.1.0/24 via 10.80.5.22\n10.244.2.0/24 via 10.80.5.23\n"
        );
        assert_eq!(
            render(&p.tables["b"]),
            "10.244.0.0/24 via 10.80.5.21\n10.244.2.0/24 via 10.80.5.23\n"
        );
        assert_eq!(p.tables["c"].len(), 2);
    }

    #[test]
    fn a_node_without_a_pod_range_routes_to_others_and_gets_no_route() {
        let p = plan(
            cidr("10.244.0.0/16"),
            &[
                node("a", "10.80.5.21", Some("10.244.0.0/24")),
                node("new", "10.80.5.29", None),
            ],
        );
        assert_eq!(render(&p.tables["new"]), "10.244.0.0/24 via 10.80.5.21\n");
        assert_eq!(render(&p.tables["a"]), "");
        assert!(p.left_out.is_empty());
    }

    #[test]
    fn ranges_outside_the_cluster_or_overlapping_get_no_route_and_say_why() {
        let p = plan(
            cidr("10.244.0.0/16"),
            &[
                node("a", "10.80.5.21", Some("10.244.0.0/24")),
                node("out", "10.80.5.22", Some("192.168.0.0/24")),
                node("wide", "10.80.5.23", Some("10.0.0.0/8")),
                node("x", "10.80.5.24", Some("10.244.7.0/24")),
                node("y", "10.80.5.25", Some("10.244.7.0/25")),
            ],
        );
        // Only a's range is routed, on every other node.
        for n in ["out", "wide", "x", "y"] {
            assert_eq!(
                render(&p.tables[n]),
                "10.244.0.0/24 via 10.80.5.21\n",
                "{n}"
            );
        }
        assert_eq!(render(&p.tables["a"]), "");
        let why = p.left_out.join("\n");
        assert!(
            why.contains("out: its pod range 192.168.0.0/24 is outside"),
            "{why}"
        );
        assert!(
            why.contains("wide: its pod range 10.0.0.0/8 is outside"),
            "{why}"
        );
        assert!(
            why.contains("x: its pod range 10.244.7.0/24 overlaps y's"),
            "{why}"
        );
        assert!(
            why.contains("y: its pod range 10.244.7.0/25 overlaps x's"),
            "{why}"
        );
    }

    #[test]
    fn a_nodes_files_change_with_its_table_and_nothing_else() {
        let pods = cidr("10.244.0.0/16");
        let one = [Route {
            destination: cidr("10.244.1.0/24"),
            via: "10.80.5.22".parse().unwrap(),
        }];
        let peers: BTreeSet<Ipv4Addr> =
            ["10.80.5.22".parse().unwrap(), "10.80.5.3".parse().unwrap()].into();
        let files = node_files(pods, &one, true, &peers);
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                paths::SCRIPT,
                paths::UNIT,
                paths::CONF,
                paths::ROUTES,
                paths::PEERS
            ]
        );
        assert_eq!(files[4].contents, "10.80.5.3\n10.80.5.22\n");
        assert_eq!(
            files[2].contents,
            "pod_cidr=10.244.0.0/16\nmasquerade=yes\n"
        );
        assert_eq!(files[3].contents, "10.244.1.0/24 via 10.80.5.22\n");
        assert!(files[0].contents.contains("proto 77"));
        assert_eq!(
            digest(&files),
            digest(&node_files(pods, &one, true, &peers))
        );
        assert_ne!(digest(&files), digest(&node_files(pods, &[], true, &peers)));
        assert_ne!(
            digest(&files),
            digest(&node_files(pods, &one, false, &peers))
        );
        assert_ne!(
            digest(&files),
            digest(&node_files(pods, &one, true, &BTreeSet::new()))
        );
        assert_ne!(
            digest(&files),
            digest(&node_files(cidr("10.245.0.0/16"), &one, true, &peers))
        );
        assert!(APPLY_COMMAND.contains(paths::SCRIPT));
    }

    #[test]
    fn two_machines_with_one_address_are_both_left_out() {
        let p = plan(
            cidr("10.244.0.0/16"),
            &[
                node("a", "10.80.5.21", Some("10.244.0.0/24")),
                node("b", "10.80.5.22", Some("10.244.1.0/24")),
                node("c", "10.80.5.22", Some("10.244.2.0/24")),
            ],
        );
        assert_eq!(render(&p.tables["a"]), "");
        assert!(!p.tables.contains_key("b") && !p.tables.contains_key("c"));
        assert_eq!(p.left_out.len(), 2, "{:?}", p.left_out);
    }

    proptest! {
        /// With distinct addresses and distinct /24s inside the range:
        /// n(n-1) routes, none to a node's own range, each through the
        /// address of the node that holds the range; the order of the
        /// input does not matter.
        #[test]
        fn tables_are_complete_and_point_at_the_owner(
            picks in proptest::collection::btree_set(0u8..=255, 1..12),
            seed in any::<u64>(),
        ) {
            let mut nodes: Vec<RoutedNode> = picks
                .iter()
                .map(|i| RoutedNode {
                    name: format!("n{i}"),
                    address: Ipv4Addr::new(10, 80, 5, *i),
                    pod_cidr: Some(cidr(&format!("10.244.{i}.0/24"))),
                })
                .collect();
            let p = plan(cidr("10.244.0.0/16"), &nodes);
            let n = nodes.len();
            prop_assert!(p.left_out.is_empty());
            prop_assert_eq!(p.tables.values().map(Vec::len).sum::<usize>(), n * (n - 1));
            for node in &nodes {
                for r in &p.tables[&node.name] {
                    prop_assert_ne!(Some(r.destination), node.pod_cidr);
                    let owner = nodes.iter().find(|o| o.pod_cidr == Some(r.destination)).unwrap();
                    prop_assert_eq!(r.via, owner.address);
                }
            }
            // Any order of the same nodes: the same plan.
            let k = (seed as usize) % n;
            nodes.rotate_left(k);
            nodes.reverse();
            prop_assert_eq!(plan(cidr("10.244.0.0/16"), &nodes), p);
        }
    }
}
