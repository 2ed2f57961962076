//! What every Kubeforge cluster holds from its first minute: the RBAC that
//! lets the service and joining nodes do exactly their jobs. (The tenants'
//! kubeconfig groups are bound by [`crate::credentials`], applied by the
//! engine rather than at each member's boot, so that they can be revoked.)
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
//!   leaves its pool); `nodes/status`: patch (a registered host's declared
//!   extended resources, such as `nvidia.com/gpu`, on its node's capacity).
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
//! - services and endpoints: get, list, watch (the cluster DNS the service
//!   serves answers from them); in `kube-system`, endpoints: create, and
//!   patch of `kube-dns` only (pointing the DNS Service at that server).
//!
//! The manifest also holds the `kube-dns` Service: selector-less, on the
//! cluster's DNS address ([`crate::network::ClusterNetwork::dns_service_ip`]),
//! UDP and TCP port 53. Being in the first manifest, it takes that address
//! before any tenant Service can. Its Endpoints are the service's DNS
//! server ([`dns_endpoints`]), which the service applies itself, because
//! where that server listens is the service's setting, not the cluster's.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::join::{rbac_manifest as join_rbac, KUBELET_CLIENT_SIGNER};

/// The user the service's client certificates name (no group).
pub const SERVICE_USER: &str = "kubeforge:service";
/// Where the manifest goes on a control-plane member.
pub const MANIFEST_PATH: &str = "/etc/kubernetes/addons/kubeforge.yaml";
/// The oneshot unit that applies it.
pub const UNIT: &str = "kubeforge-addons.service";
/// On every object the manifest holds.
pub const MANAGED_LABEL: &str = "kubeforge.io/managed";

/// The cluster DNS Service (and its Endpoints), in `kube-system`, named
/// as kube-dns and CoreDNS name theirs, so tools that look for it find it.
pub const DNS_SERVICE: &str = "kube-dns";
/// The DNS Service's port names (the Endpoints must use the same).
pub const DNS_PORT_UDP: &str = "dns";
pub const DNS_PORT_TCP: &str = "dns-tcp";

const RBAC: &str = "rbac.authorization.k8s.io";

/// Every object, one YAML stream. Names and groups are this crate's
/// constants and `dns_ip` the cluster's DNS address: nothing from a
/// tenant goes in.
pub fn manifest(dns_ip: Ipv4Addr) -> String {
    let service_rules = format!(
        r#"- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: [""]
  resources: ["nodes/status"]
  verbs: ["patch"]
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
- apiGroups: [""]
  resources: ["services", "endpoints"]
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
            &format!(
                "rules:\n- apiGroups: [\"\"]\n  resources: [\"secrets\"]\n  verbs: [\"create\", \"patch\", \"delete\"]\n\
                 - apiGroups: [\"\"]\n  resources: [\"endpoints\"]\n  verbs: [\"create\"]\n\
                 - apiGroups: [\"\"]\n  resources: [\"endpoints\"]\n  resourceNames: [\"{DNS_SERVICE}\"]\n  verbs: [\"patch\", \"update\"]\n"
            ),
        ),
        object(
            "RoleBinding",
            "kubeforge:service",
            Some("kube-system"),
            &binding("Role", "kubeforge:service", "User", SERVICE_USER),
        ),
        join_rbac(),
        dns_service(dns_ip),
        object(
            "ClusterRoleBinding",
            "kubeforge:service",
            None,
            &binding("ClusterRole", "kubeforge:service", "User", SERVICE_USER),
        ),
    ];
    docs.join("---\n")
}

/// The selector-less `kube-dns` Service on `ip`.
fn dns_service(ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {DNS_SERVICE}\n  namespace: kube-system\n  labels:\n    \
         {MANAGED_LABEL}: \"true\"\n    k8s-app: kube-dns\n    kubernetes.io/name: Kubeforge-DNS\n\
         spec:\n  clusterIP: {ip}\n  ports:\n  - name: {DNS_PORT_UDP}\n    protocol: UDP\n    port: 53\n\
         \x20 - name: {DNS_PORT_TCP}\n    protocol: TCP\n    port: 53\n"
    )
}

/// The `kube-system/kube-dns` Endpoints naming the service's DNS server at
/// `server`, UDP and TCP (for a server-side apply).
pub fn dns_endpoints(server: SocketAddrV4) -> serde_json::Value {
    let port = |name: &str, protocol: &str| serde_json::json!({ "name": name, "protocol": protocol, "port": server.port() });
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": DNS_SERVICE,
            "namespace": "kube-system",
            "labels": { MANAGED_LABEL: "true", "k8s-app": "kube-dns" },
        },
        "subsets": [{
            "addresses": [{ "ip": server.ip().to_string() }],
            "ports": [port(DNS_PORT_UDP, "UDP"), port(DNS_PORT_TCP, "TCP")],
        }],
    })
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
        let m = manifest(Ipv4Addr::new(10, 96, 0, 10));
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
        // Tenants' groups are bound by `crate::credentials`, not at boot.
        assert!(!m.contains("kubeforge:viewers"));
        assert!(m.contains(&format!("name: \"{SERVICE_USER}\"")));
        assert!(m.contains(&format!("resourceNames: [\"{KUBELET_CLIENT_SIGNER}\"]")));
        // The DNS Service is selector-less, on the address kubelets use.
        let dns = m
            .split("---\n")
            .find(|d| d.contains("kind: Service\n"))
            .unwrap();
        assert!(dns.contains("clusterIP: 10.96.0.10\n"), "{dns}");
        assert!(!dns.contains("selector"), "{dns}");
        for name in [DNS_PORT_UDP, DNS_PORT_TCP] {
            assert!(dns.contains(&format!("- name: {name}\n")), "{dns}");
        }
        // The service's binding is the last document (see `manifest`).
        let last = m.rsplit("---\n").next().unwrap();
        assert!(
            last.contains("kind: ClusterRoleBinding") && last.contains(SERVICE_USER),
            "{last}"
        );
    }

    #[test]
    fn the_dns_endpoints_name_the_server_on_both_ports() {
        let e = dns_endpoints("10.77.0.1:53".parse().unwrap());
        assert_eq!(e["metadata"]["name"], DNS_SERVICE);
        assert_eq!(e["metadata"]["namespace"], "kube-system");
        assert_eq!(e["subsets"][0]["addresses"][0]["ip"], "10.77.0.1");
        let ports = e["subsets"][0]["ports"].as_array().unwrap();
        let named: Vec<(&str, &str, u64)> = ports
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap(),
                    p["protocol"].as_str().unwrap(),
                    p["port"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            named,
            [(DNS_PORT_UDP, "UDP", 53), (DNS_PORT_TCP, "TCP", 53)]
        );
    }
}
