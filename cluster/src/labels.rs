//! Label and taint rules: the one validator both doors use. The API parses
//! labels with [`Labels::parse`] and checks taints with [`Taint::check`];
//! the worker bundle renderer (`worker::render_worker`) takes the parsed
//! labels and checks every taint with the same [`Taint::check`] before it
//! writes `--node-labels` / `--register-with-taints`. So a pool the API
//! accepted never fails to render after its join began (a bootstrap token
//! made, a machine bought), and what the renderer refuses the API refused
//! first. The rules are Kubernetes' own (a qualified name: `[prefix/]name`,
//! the prefix a DNS-1123 subdomain of at most 253 characters, the name 1-63
//! alphanumerics, '-', '_' or '.', starting and ending alphanumeric), plus
//! Kubeforge's: keys under `kubeforge.io/` are its own, for labels and
//! taints alike.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::ValidationError;

/// Label and taint keys under this prefix are Kubeforge's own.
pub const RESERVED_LABEL_PREFIX: &str = "kubeforge.io/";
/// The label Kubeforge puts on every node: the name of its pool.
pub const NODE_POOL_LABEL: &str = "kubeforge.io/node-pool";
/// Longest prefix of a key (a DNS-1123 subdomain).
pub const MAX_KEY_PREFIX_LEN: usize = 253;
/// Longest name part of a key, and longest value.
pub const MAX_KEY_NAME_LEN: usize = 63;

/// A taint's effect, as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, ToSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

impl Taint {
    /// Its key and value follow the label rules ([`check_label_key`],
    /// [`check_label_value`]) and its key is not Kubeforge's
    /// (`kubeforge.io/`); the effect is one of Kubernetes' three by type.
    /// Errors name `key` or `value`.
    pub fn check(&self) -> Result<(), ValidationError> {
        check_label_key(&self.key).map_err(|m| ValidationError::new("key", m))?;
        if is_reserved_key(&self.key) {
            return Err(ValidationError::new(
                "key",
                format!(
                    "key {:?} is under {RESERVED_LABEL_PREFIX}, which is reserved for Kubeforge",
                    self.key
                ),
            ));
        }
        if let Some(v) = &self.value {
            check_label_value(v).map_err(|m| ValidationError::new("value", m))?;
        }
        Ok(())
    }
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
        && b.len() <= MAX_KEY_NAME_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Whether a key is Kubeforge's own (`kubeforge.io/...`).
pub fn is_reserved_key(key: &str) -> bool {
    key.starts_with(RESERVED_LABEL_PREFIX)
}

/// Checks a label or taint key: `[prefix/]name`, the prefix a DNS-1123
/// subdomain (dot-separated lowercase labels, none starting or ending with
/// '-', at most 253 characters), the name 1-63 alphanumerics, '-', '_' or
/// '.', starting and ending alphanumeric. The message says which part fails.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.len() > MAX_KEY_PREFIX_LEN {
            return Err(format!(
                "key {key:?}: the prefix is {} characters, more than {MAX_KEY_PREFIX_LEN}",
                p.len()
            ));
        }
        crate::names::check_dns_subdomain(p)
            .map_err(|m| format!("key {key:?}: the prefix {p:?} is not a DNS subdomain: {m}"))?;
        if name.contains('/') {
            return Err(format!("key {key:?} has more than one '/'"));
        }
    }
    if name.len() > MAX_KEY_NAME_LEN {
        return Err(format!(
            "key {key:?}: the name part is {} characters, more than {MAX_KEY_NAME_LEN}",
            name.len()
        ));
    }
    if !check_label_name(name) {
        return Err(format!(
            "key {key:?}: the name part must be 1-{MAX_KEY_NAME_LEN} alphanumerics, '-', '_' or '.', \
             starting and ending alphanumeric"
        ));
    }
    Ok(())
}

/// Checks a label or taint value: empty, or 1-63 alphanumerics, '-', '_'
/// or '.', starting and ending alphanumeric.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || check_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "value {value:?} must be empty or 1-{MAX_KEY_NAME_LEN} alphanumerics, '-', '_' or '.', \
             starting and ending alphanumeric"
        ))
    }
}

impl Labels {
    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, ValidationError> {
        if map.len() > 64 {
            return Err(ValidationError::new("", "at most 64 labels"));
        }
        for (k, v) in &map {
            check_label_key(k).map_err(|m| ValidationError::new(k.clone(), m))?;
            if k == NODE_POOL_LABEL {
                return Err(ValidationError::new(
                    k.clone(),
                    format!("{NODE_POOL_LABEL} is reserved: Kubeforge sets it to the pool's name"),
                ));
            }
            if is_reserved_key(k) {
                return Err(ValidationError::new(
                    k.clone(),
                    format!("keys under {RESERVED_LABEL_PREFIX} are reserved"),
                ));
            }
            check_label_value(v).map_err(|m| ValidationError::new(k.clone(), m))?;
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

/// Whether a label key is in the `kubernetes.io` or `k8s.io` namespace
/// (`kubernetes.io/...`, `node-role.kubernetes.io/...`, `k8s.io/...`).
fn in_kubernetes_namespace(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    ["kubernetes.io", "k8s.io"]
        .iter()
        .any(|ns| prefix == *ns || prefix.strip_suffix(ns).is_some_and(|p| p.ends_with('.')))
}

/// Checks labels meant for a pool's nodes, beyond [`Labels::parse`]: the
/// kubelet sets them on its own Node object, and the API server's
/// NodeRestriction admission refuses a kubelet that labels itself in the
/// `kubernetes.io` or `k8s.io` namespaces (roles like
/// `node-role.kubernetes.io/worker` included), so such a node would never
/// register. (`kubeforge.io/node-pool`, which Kubeforge sets, is refused by
/// `Labels::parse` with the rest of `kubeforge.io/`.) Errors name the key,
/// for the caller to put `under("labels")`.
pub fn check_node_labels(labels: &Labels) -> Result<(), ValidationError> {
    for (k, _) in labels.iter() {
        if in_kubernetes_namespace(k) {
            return Err(ValidationError::new(
                k.clone(),
                "keys in the kubernetes.io and k8s.io namespaces cannot be node pool labels: \
                 the kubelet may not set them on its own node (NodeRestriction)",
            ));
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn taint(key: &str, value: Option<&str>) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(str::to_string),
            effect: TaintEffect::NoSchedule,
        }
    }

    fn label(key: &str) -> Result<Labels, ValidationError> {
        Labels::parse(BTreeMap::from([(key.to_string(), "v".to_string())]))
    }

    #[test]
    fn keys_kubernetes_refuses_are_refused_with_the_part_named() {
        let long_prefix = format!("{}.example", "a".repeat(250));
        let cases: &[(&str, &str)] = &[
            ("-bad.example/x", "prefix"),
            ("bad-.example/x", "prefix"),
            ("ok.-bad.example/x", "prefix"),
            ("ok.bad-/x", "prefix"),
            ("a..b/x", "prefix"),
            ("UPPER.example/x", "prefix"),
            ("/x", "prefix"),
            ("a/b/c", "more than one '/'"),
            ("example.com/", "name part"),
            ("example.com/-x", "name part"),
            ("x-", "name part"),
            ("_x", "name part"),
            ("a b", "name part"),
        ];
        let long_name = "k".repeat(64);
        let long_name_prefixed = format!("example.com/{long_name}");
        let long_prefix_key = format!("{long_prefix}/x");
        let mut all: Vec<(&str, &str)> = cases.to_vec();
        all.push((&long_name, "the name part is 64 characters"));
        all.push((&long_name_prefixed, "the name part is 64 characters"));
        all.push((
            &long_prefix_key,
            "the prefix is 258 characters, more than 253",
        ));
        for (key, says) in all {
            let err = check_label_key(key).unwrap_err();
            assert!(err.contains(says), "{key:?}: {err}");
            // The same rule, and the same field, for labels and taints.
            assert_eq!(label(key).unwrap_err().field, key);
            assert_eq!(taint(key, None).check().unwrap_err().field, "key");
        }
        let longest_prefix = vec!["a".repeat(63); 4].join(".")[..253].to_string();
        let longest = format!("{longest_prefix}/{}", "k".repeat(63));
        for key in [
            "tier",
            "example.com/tier",
            "a-b.example/x_y.z",
            &"k".repeat(63),
            &longest,
        ] {
            assert_eq!(check_label_key(key), Ok(()), "{key:?}");
        }
    }

    #[test]
    fn taints_under_kubeforge_io_are_refused_like_labels() {
        for key in ["kubeforge.io/dedicated", NODE_POOL_LABEL] {
            let err = taint(key, Some("x")).check().unwrap_err();
            assert_eq!(err.field, "key", "{err}");
            assert!(err.message.contains("reserved"), "{err}");
            assert_eq!(label(key).unwrap_err().field, key);
        }
        // Merely similar prefixes are the tenant's.
        for key in [
            "notkubeforge.io/x",
            "kubeforge.io.example/x",
            "kubeforge-io",
        ] {
            assert_eq!(taint(key, None).check(), Ok(()), "{key}");
        }
        let err = taint("k", Some("-v")).check().unwrap_err();
        assert_eq!(err.field, "value");
        let err = taint("k", Some(&"v".repeat(64))).check().unwrap_err();
        assert_eq!(err.field, "value");
    }

    /// Kubernetes' qualified-name rule, written apart from the checker
    /// (as its regular expressions read), for the property below.
    fn kubernetes_accepts(key: &str) -> bool {
        let name_ok = |n: &str| {
            let c: Vec<char> = n.chars().collect();
            !c.is_empty()
                && c.len() <= 63
                && c[0].is_ascii_alphanumeric()
                && c[c.len() - 1].is_ascii_alphanumeric()
                && c.iter()
                    .all(|x| x.is_ascii_alphanumeric() || "-_.".contains(*x))
        };
        let label_ok = |l: &str| {
            let c: Vec<char> = l.chars().collect();
            !c.is_empty()
                && c.len() <= 63
                && c.iter()
                    .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || *x == '-')
                && c[0] != '-'
                && c[c.len() - 1] != '-'
        };
        let parts: Vec<&str> = key.split('/').collect();
        match parts.as_slice() {
            [name] => name_ok(name),
            [prefix, name] => {
                prefix.len() <= 253 && prefix.split('.').all(label_ok) && name_ok(name)
            }
            _ => false,
        }
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        let part = "[a-zA-Z0-9._-]{0,70}";
        prop_oneof![
            part.prop_map(|s| s),
            (proptest::collection::vec("[a-z0-9-]{0,64}", 1..6), part)
                .prop_map(|(segs, name)| format!("{}/{name}", segs.join("."))),
            "[ -~]{0,80}",
        ]
    }

    proptest! {
        #[test]
        fn keys_accepted_iff_kubernetes_accepts_them(key in key_strategy()) {
            prop_assert_eq!(check_label_key(&key).is_ok(), kubernetes_accepts(&key), "{:?}", key);
        }

        #[test]
        fn taint_and_label_keys_follow_one_rule(key in key_strategy(), value in "[a-z0-9._-]{0,65}") {
            let labels = Labels::parse(BTreeMap::from([(key.clone(), value.clone())]));
            let t = taint(&key, (!value.is_empty()).then_some(value.as_str())).check();
            // Kubeforge's own prefix aside, the same keys and values pass.
            prop_assert_eq!(labels.is_ok(), t.is_ok(), "{:?}={:?}", key, value);
            if labels.is_ok() {
                prop_assert!(!is_reserved_key(&key));
            }
        }
    }
}
