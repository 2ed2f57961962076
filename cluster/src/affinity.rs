//! The scheduling constraints a pod places on its node beyond resources
//! and taints, for the autoscaler's simulation (issue 10): required node
//! affinity, host ports, and required pod anti-affinity between pods on one
//! node. Each type is the part of the Kubernetes object the scheduler
//! reads, and each `matches` follows the scheduler's rule exactly, so the
//! simulation refuses a node for the same reasons the scheduler would.
//!
//! Pure: the engine converts `spec.affinity` and `spec.containers[].ports`
//! into these types; nothing here knows how they were read.

use std::collections::BTreeMap;
use std::fmt;

/// How a node selector requirement compares a node label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeSelectorOperator {
    /// The label is present and its value is one of the values.
    In,
    /// The label is absent, or its value is none of the values.
    NotIn,
    /// The label is present (the values are ignored).
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label and the single value are integers, the label's greater.
    Gt,
    /// The label and the single value are integers, the label's smaller.
    Lt,
}

/// One `matchExpressions` entry of a node selector term.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeSelectorRequirement {
    pub key: String,
    pub operator: NodeSelectorOperator,
    pub values: Vec<String>,
}

impl NodeSelectorRequirement {
    /// Whether a node with `labels` satisfies the requirement. `Gt` and
    /// `Lt` need exactly one value, and both it and the label must parse
    /// as 64-bit integers; otherwise they do not match (as the scheduler).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let label = labels.get(&self.key);
        let number = |s: &str| s.parse::<i64>().ok();
        let compare = |want: std::cmp::Ordering| match (label, self.values.as_slice()) {
            (Some(l), [v]) => match (number(l), number(v)) {
                (Some(l), Some(v)) => l.cmp(&v) == want,
                _ => false,
            },
            _ => false,
        };
        match self.operator {
            NodeSelectorOperator::In => label.is_some_and(|l| self.values.contains(l)),
            NodeSelectorOperator::NotIn => label.is_none_or(|l| !self.values.contains(l)),
            NodeSelectorOperator::Exists => label.is_some(),
            NodeSelectorOperator::DoesNotExist => label.is_none(),
            NodeSelectorOperator::Gt => compare(std::cmp::Ordering::Greater),
            NodeSelectorOperator::Lt => compare(std::cmp::Ordering::Less),
        }
    }
}

/// One of `nodeSelectorTerms`: its requirements all hold. A term with no
/// requirements matches no node (as the scheduler). `matchFields` (which
/// only selects `metadata.name`) is not modelled: a term that has only
/// those reads as empty here and so matches no node, which is right for
/// a node that does not exist yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeSelectorTerm {
    pub match_expressions: Vec<NodeSelectorRequirement>,
}

impl NodeSelectorTerm {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.match_expressions.is_empty()
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// `requiredDuringSchedulingIgnoredDuringExecution` of a pod's node
/// affinity: some term matches the node (terms are ORed). No terms at all
/// matches no node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeAffinity {
    pub terms: Vec<NodeSelectorTerm>,
}

impl NodeAffinity {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().any(|t| t.matches(labels))
    }
}

/// A host port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortProtocol::Tcp => "TCP",
            PortProtocol::Udp => "UDP",
            PortProtocol::Sctp => "SCTP",
        })
    }
}

/// A container port with a `hostPort`, as the node sees it. The `hostIP`
/// is ignored: every host port is taken as bound on 0.0.0.0, so two pods
/// asking for one port on different host addresses are kept apart too.
/// That is stricter than the scheduler (which lets distinct addresses
/// share a port), and never places a pod where it could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: PortProtocol,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// How a label selector requirement compares a pod label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelSelectorOperator {
    /// The label is present and its value is one of the values.
    In,
    /// The label is absent, or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One `matchExpressions` entry of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: LabelSelectorOperator,
    pub values: Vec<String>,
}

/// A label selector (`matchLabels` and `matchExpressions`, all ANDed). The
/// empty selector matches every pod; a missing (`null`) selector in a
/// Kubernetes object matches none, so the engine leaves such a term out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let label = labels.get(&r.key);
                match r.operator {
                    LabelSelectorOperator::In => label.is_some_and(|l| r.values.contains(l)),
                    LabelSelectorOperator::NotIn => label.is_none_or(|l| !r.values.contains(l)),
                    LabelSelectorOperator::Exists => label.is_some(),
                    LabelSelectorOperator::DoesNotExist => label.is_none(),
                }
            })
    }
}

/// The namespaces a pod affinity term looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum TermNamespaces {
    /// The namespace of the pod that has the term (no `namespaces` and no
    /// `namespaceSelector`).
    #[default]
    Own,
    /// These (`namespaces`, plus those a `namespaceSelector` selects,
    /// resolved by the engine).
    Listed(Vec<String>),
    /// Every namespace (an empty `namespaceSelector`).
    All,
}

/// One required pod anti-affinity term with topology key
/// `kubernetes.io/hostname`: the pod that has it may not share a node with
/// a pod the selector matches in the term's namespaces. Terms with other
/// topology keys (zones, racks) span nodes and are not modelled; the
/// engine leaves them out, which can only make the simulation optimistic
/// for pods that have them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AntiAffinityTerm {
    pub selector: LabelSelector,
    pub namespaces: TermNamespaces,
}

impl AntiAffinityTerm {
    /// Whether the term, held by a pod in `owner_namespace`, matches a pod
    /// in `namespace` with `labels`.
    pub fn matches(
        &self,
        owner_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let in_scope = match &self.namespaces {
            TermNamespaces::Own => owner_namespace == namespace,
            TermNamespaces::Listed(list) => list.iter().any(|n| n == namespace),
            TermNamespaces::All => true,
        };
        in_scope && self.selector.matches(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: NodeSelectorOperator, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn node_selector_operators_as_kubernetes_defines_them() {
        use NodeSelectorOperator::*;
        let node = labels(&[("zone", "a"), ("cores", "16"), ("gen", "v2")]);
        let cases = [
            (req("zone", In, &["a", "b"]), true),
            (req("zone", In, &["b"]), false),
            (req("missing", In, &["a"]), false),
            (req("zone", NotIn, &["b"]), true),
            (req("zone", NotIn, &["a"]), false),
            // NotIn and DoesNotExist hold when the label is absent.
            (req("missing", NotIn, &["a"]), true),
            (req("zone", Exists, &[]), true),
            (req("missing", Exists, &[]), false),
            (req("missing", DoesNotExist, &[]), true),
            (req("zone", DoesNotExist, &[]), false),
            (req("cores", Gt, &["8"]), true),
            (req("cores", Gt, &["16"]), false),
            (req("cores", Lt, &["32"]), true),
            (req("cores", Lt, &["-1"]), false),
            // Not integers on either side, absent, or not exactly one value.
            (req("gen", Gt, &["1"]), false),
            (req("cores", Gt, &["eight"]), false),
            (req("missing", Lt, &["1"]), false),
            (req("cores", Gt, &["1", "2"]), false),
            (req("cores", Lt, &[]), false),
        ];
        for (r, want) in cases {
            assert_eq!(r.matches(&node), want, "{r:?}");
        }
    }

    #[test]
    fn terms_are_ored_and_their_expressions_anded_and_an_empty_term_matches_nothing() {
        use NodeSelectorOperator::*;
        let node = labels(&[("zone", "a"), ("disk", "ssd")]);
        let both = NodeSelectorTerm {
            match_expressions: vec![req("zone", In, &["a"]), req("disk", In, &["ssd"])],
        };
        let half = NodeSelectorTerm {
            match_expressions: vec![req("zone", In, &["a"]), req("disk", In, &["hdd"])],
        };
        assert!(both.matches(&node));
        assert!(!half.matches(&node));
        assert!(!NodeSelectorTerm::default().matches(&node));
        let affinity = |terms: Vec<NodeSelectorTerm>| NodeAffinity { terms };
        assert!(affinity(vec![half.clone(), both]).matches(&node));
        assert!(!affinity(vec![half, NodeSelectorTerm::default()]).matches(&node));
        assert!(!affinity(vec![]).matches(&node));
    }

    #[test]
    fn label_selectors_and_term_namespaces() {
        use LabelSelectorOperator::*;
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        let sel =
            |m: &[(&str, &str)], e: Vec<(&str, LabelSelectorOperator, &[&str])>| LabelSelector {
                match_labels: labels(m),
                match_expressions: e
                    .into_iter()
                    .map(|(k, op, vs)| LabelSelectorRequirement {
                        key: k.into(),
                        operator: op,
                        values: vs.iter().map(|v| v.to_string()).collect(),
                    })
                    .collect(),
            };
        assert!(sel(&[], vec![]).matches(&pod));
        assert!(sel(&[("app", "web")], vec![]).matches(&pod));
        assert!(!sel(&[("app", "db")], vec![]).matches(&pod));
        assert!(sel(&[("app", "web")], vec![("tier", In, &["front", "back"])]).matches(&pod));
        assert!(!sel(&[("app", "web")], vec![("tier", NotIn, &["front"])]).matches(&pod));
        assert!(sel(&[], vec![("canary", NotIn, &["yes"])]).matches(&pod));
        assert!(sel(&[], vec![("canary", DoesNotExist, &[])]).matches(&pod));
        assert!(!sel(&[], vec![("app", DoesNotExist, &[])]).matches(&pod));
        assert!(sel(&[], vec![("app", Exists, &[])]).matches(&pod));
        assert!(!sel(&[], vec![("canary", Exists, &[])]).matches(&pod));

        let term = |namespaces| AntiAffinityTerm {
            selector: sel(&[("app", "web")], vec![]),
            namespaces,
        };
        // By default a term looks at its own pod's namespace only.
        assert!(term(TermNamespaces::Own).matches("shop", "shop", &pod));
        assert!(!term(TermNamespaces::Own).matches("shop", "blog", &pod));
        let listed = term(TermNamespaces::Listed(vec!["blog".into()]));
        assert!(listed.matches("shop", "blog", &pod));
        assert!(!listed.matches("shop", "shop", &pod));
        assert!(term(TermNamespaces::All).matches("shop", "blog", &pod));
        assert!(!term(TermNamespaces::All).matches("shop", "blog", &labels(&[])));
    }

    #[test]
    fn host_ports_are_worded_port_then_protocol() {
        let p = HostPort {
            protocol: PortProtocol::Udp,
            port: 53,
        };
        assert_eq!(p.to_string(), "53/UDP");
    }
}
