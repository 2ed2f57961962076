//! What every Kubeforge cluster holds from its first minute: the RBAC that
//! lets the service, viewers and joining nodes do exactly their jobs.
//!
//! The manifest is part of the control-plane bundle
//! (`/etc/kubernetes/addons/kubeforge.yaml`). A oneshot unit on each member
//! (`kubeforge-addons.service`) applies it with the member's admin
//! kubeconfig, server-side, retrying until the API server takes it, and
//! again whenever its bytes change, as kubeadm's and the addon manager's
//! bootstrap phases do. The service itself never holds an admin
//! credential: it talks to the cluster as [`SERVICE_USER`], a short-lived
//! client certificate it mints from the cluster CA, allowed only what the
//! roles below grant.
//!
//! What the service may do, and why:
//! - nodes: get, list, watch (observe); patch (cordon); delete (a node
//!   leaves its pool).
//! - pods: get, list, watch (CPU accounting, drains); `pods/eviction`:
//!   create (drains go through the Eviction API, so PodDisruptionBudgets
//!   hold).
//! - PodDisruptionBudgets and DaemonSets: get, list, watch (the
//!   autoscaler's simulation: which pods may move, what every new node
//!   will run).
//! - events: create, patch (the autoscaler tells each pending pod what it
//!   decided for it, as `kubectl describe pod` shows).
//! - certificate signing requests: get, list, watch; `/approval`: update,
//!   and `approve` on the kubelet client signer only (the join approver).
//! - in `kube-system` only, Secrets: create, patch, delete (each joining
//!   machine's bootstrap token, named after the machine). Not get or list:
//!   the service never reads the cluster's secrets.

use crate::join::{rbac_manifest as join_rbac, KUBELET_CLIENT_SIGNER};
use crate::pki::VIEWER_GROUP;

/// The user the service's client certificates name (no group).
pub const SERVICE_USER: &str = "kubeforge:service";
/// Where the manifest goes on a control-plane member.
pub const MANIFEST_PATH: &str = "/etc/kubernetes/addons/kubeforge.yaml";
/// The oneshot unit that applies it.
pub const UNIT: &str = "kubeforge-addons.service";
/// On every object the manifest holds.
pub const MANAGED_LABEL: &str = "kubeforge.io/managed";

const RBAC: &str = "rbac.authorization.k8s.io";

/// Every object, one YAML stream. Names and groups are this crate's
/// constants: nothing from a tenant goes in.
pub fn manifest() -> String {
    let service_rules = format!(
        r#"- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods/eviction"]
  verbs: ["create"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["daemonsets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["certificates.k8s.io"]
  resources: ["certificatesigningrequests"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["certificates.k8s.io"]
  resources: ["certificatesigningrequests/approval"]
  verbs: ["update"]
- apiGroups: ["certificates.k8s.io"]
  resources: ["signers"]
  resourceNames: ["{KUBELET_CLIENT_SIGNER}"]
  verbs: ["approve"]
"#
    );
    // The service's own ClusterRoleBinding goes last: `kubectl apply` takes
    // the documents in order, and the API server's RBAC authorizer sees
    // ClusterRoleBindings in the order they were written, so once the
    // service may list nodes, every binding before it is in force too (the
    // engine's readiness check rests on this).
    let docs = [
        object(
            "ClusterRole",
            "kubeforge:service",
            None,
            &format!("rules:\n{service_rules}"),
        ),
        object(
            "Role",
            "kubeforge:service",
            Some("kube-system"),
            "rules:\n- apiGroups: [\"\"]\n  resources: [\"secrets\"]\n  verbs: [\"create\", \"patch\", \"delete\"]\n",
        ),
        object(
            "RoleBinding",
            "kubeforge:service",
            Some("kube-system"),
            &binding("Role", "kubeforge:service", "User", SERVICE_USER),
        ),
        object(
            "ClusterRoleBinding",
            "kubeforge-viewers",
            None,
            &binding("ClusterRole", "view", "Group", VIEWER_GROUP),
        ),
        join_rbac(),
        object(
            "ClusterRoleBinding",
            "kubeforge:service",
            None,
            &binding("ClusterRole", "kubeforge:service", "User", SERVICE_USER),
        ),
    ];
    docs.join("---\n")
}

fn object(kind: &str, name: &str, namespace: Option<&str>, body: &str) -> String {
    let ns = namespace
        .map(|n| format!("  namespace: {n}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: {RBAC}/v1\nkind: {kind}\nmetadata:\n  name: {name}\n{ns}  labels:\n    {MANAGED_LABEL}: \"true\"\n{body}"
    )
}

fn binding(role_kind: &str, role: &str, subject_kind: &str, subject: &str) -> String {
    format!(
        "roleRef:\n  apiGroup: {RBAC}\n  kind: {role_kind}\n  name: {role}\nsubjects:\n- apiGroup: {RBAC}\n  kind: {subject_kind}\n  name: \"{subject}\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_gets_no_masters_and_reads_no_secrets() {
        let m = manifest();
        assert!(!m.contains("system:masters"));
        assert!(!m.contains("cluster-admin"));
        assert!(!m.contains("\"*\""), "no wildcard verbs or resources");
        // Secrets only in kube-system, and never read.
        let role = m
            .split("---\n")
            .find(|d| d.contains("kind: Role\n"))
            .unwrap();
        assert!(role.contains("namespace: kube-system"));
        assert!(role.contains("[\"create\", \"patch\", \"delete\"]"));
        assert!(!m.contains("\"secrets\"]\n  verbs: [\"get\""));
        assert_eq!(m.matches("\"secrets\"").count(), 1);
        // The documents the apply expects, each labelled as ours.
        assert_eq!(
            m.matches("\nkind: ").count() + usize::from(m.starts_with("kind: ")),
            7
        );
        assert_eq!(m.matches("kubeforge.io/managed: \"true\"").count(), 7);
        assert!(m.contains(&format!("name: \"{SERVICE_USER}\"")));
        assert!(m.contains(&format!("resourceNames: [\"{KUBELET_CLIENT_SIGNER}\"]")));
        // The service's binding is the last document (see `manifest`).
        let last = m.rsplit("---\n").next().unwrap();
        assert!(
            last.contains("kind: ClusterRoleBinding") && last.contains(SERVICE_USER),
            "{last}"
        );
    }
}
