//! Tenant kubeconfigs: what each kubeconfig role may do in the cluster,
//! the Kubernetes groups that carry it, and the RBAC that binds them.
//!
//! A tenant kubeconfig's client certificate names the user
//! `kubeforge:user:<token subject>` and exactly one group of the cluster's
//! current *credential generation* N ([`group`]):
//!
//! | kubeconfig role | group                        | bound to (ClusterRoleBindings) |
//! | --------------- | ---------------------------- | ------------------------------ |
//! | `viewer`        | `kubeforge:viewers:gN`       | `view`, [`NODE_READER_ROLE`] |
//! | `editor`        | `kubeforge:editors:gN`       | `edit`, [`NODE_READER_ROLE`] |
//! | `admin`         | `kubeforge:cluster-admins:gN`| `cluster-admin` |
//!
//! `view` and `edit` are Kubernetes' built-in aggregated roles: `view`
//! reads most namespaced objects but no Secrets and no RBAC; `edit` also
//! creates, changes and deletes them (Secrets included, and pods' exec),
//! but grants no RBAC (Roles and bindings); both read namespaces, and
//! [`NODE_READER_ROLE`] adds get, list and watch of nodes, as a managed
//! service's viewers expect (`kubectl get nodes`). Nothing is in
//! `system:masters`, which no RBAC can take away.
//!
//! The bindings name only generation N's groups ([`manifest`]), and every
//! binding has a fixed name, so applying the manifest of generation N+1
//! replaces the subjects (a binding's subject list is replaced whole by a
//! server-side apply): from then on, kubeconfigs of generation N carry
//! groups nothing is bound to, and the API server refuses them every
//! action (`Forbidden`), whatever their expiry. That is how
//! `POST /v1/clusters/{c}/credentials/revoke` takes credentials back.
//!
//! The manifest is not part of the control-plane bundle that each member
//! applies at boot (a member that was down during a revocation would
//! otherwise bring the old generation back when it boots): the engine
//! uploads it to one healthy member and applies it with that member's
//! admin kubeconfig ([`apply_command`]) whenever the cluster's generation
//! is not yet the applied one. The viewers' binding is the last document,
//! so a viewer of generation N that may list namespaces proves the whole
//! manifest is in force (the API server's RBAC sees bindings in the order
//! they were written); as namespaces come only from `view` and `edit`,
//! which are aggregated (empty until the controller manager fills them),
//! the engine asks as an editor too.
//!
//! Nothing from a tenant goes into the manifest or the command: names are
//! this module's constants and N a number.

use std::fmt;

use crate::addons::MANAGED_LABEL;
use crate::bundle::shell_quote;

/// The role of a tenant kubeconfig (the `role` of `POST .../kubeconfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KubeconfigRole {
    Viewer,
    Editor,
    /// `cluster-admin` in the cluster; spelled `admin` in the API.
    Admin,
}

impl KubeconfigRole {
    pub const ALL: [KubeconfigRole; 3] = [Self::Viewer, Self::Editor, Self::Admin];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Editor => "editor",
            Self::Admin => "admin",
        }
    }

    /// The group's stem; the generation follows it.
    fn group_stem(self) -> &'static str {
        match self {
            Self::Viewer => "kubeforge:viewers",
            Self::Editor => "kubeforge:editors",
            Self::Admin => "kubeforge:cluster-admins",
        }
    }
}

impl fmt::Display for KubeconfigRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The group a kubeconfig of `role` carries in credential generation
/// `generation`, e.g. `kubeforge:editors:g3`.
pub fn group(role: KubeconfigRole, generation: i64) -> String {
    format!("{}:g{generation}", role.group_stem())
}

/// The user a tenant's kubeconfig names: under `kubeforge:user:`, so no
/// token subject can name one of the service's own identities
/// (`kubeforge:service`).
pub fn user(subject: &str) -> String {
    format!("kubeforge:user:{subject}")
}

/// The ClusterRole that lets viewers and editors read nodes.
pub const NODE_READER_ROLE: &str = "kubeforge:node-reader";
/// Where the engine puts the manifest on a member before applying it.
pub const MANIFEST_PATH: &str = "/etc/kubernetes/addons/kubeforge-credentials.yaml";
/// The bindings, by name (fixed across generations).
/// (Not `kubeforge-viewers`: clusters from before generations hold that
/// binding, of the group `kubeforge:viewers`, in the addons their members
/// apply at boot, which would reset a binding of the same name; no
/// kubeconfig carries that group any more.)
pub const ADMINS_BINDING: &str = "kubeforge-tenant-cluster-admins";
pub const EDITORS_BINDING: &str = "kubeforge-tenant-editors";
pub const NODE_READERS_BINDING: &str = "kubeforge-tenant-node-readers";
pub const VIEWERS_BINDING: &str = "kubeforge-tenant-viewers";

const RBAC: &str = "rbac.authorization.k8s.io";

/// The RBAC of credential generation `generation`, one YAML stream (see
/// the module doc for the order).
pub fn manifest(generation: i64) -> String {
    let crb = |name: &str, role: &str, groups: &[String]| {
        let subjects: String = groups
            .iter()
            .map(|g| format!("- apiGroup: {RBAC}\n  kind: Group\n  name: \"{g}\"\n"))
            .collect();
        format!(
            "apiVersion: {RBAC}/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {name}\n  labels:\n    \
             {MANAGED_LABEL}: \"true\"\nroleRef:\n  apiGroup: {RBAC}\n  kind: ClusterRole\n  name: {role}\n\
             subjects:\n{subjects}"
        )
    };
    let g = |role| group(role, generation);
    let node_reader = format!(
        "apiVersion: {RBAC}/v1\nkind: ClusterRole\nmetadata:\n  name: {NODE_READER_ROLE}\n  labels:\n    \
         {MANAGED_LABEL}: \"true\"\nrules:\n- apiGroups: [\"\"]\n  resources: [\"nodes\"]\n  \
         verbs: [\"get\", \"list\", \"watch\"]\n"
    );
    [
        node_reader,
        crb(ADMINS_BINDING, "cluster-admin", &[g(KubeconfigRole::Admin)]),
        crb(EDITORS_BINDING, "edit", &[g(KubeconfigRole::Editor)]),
        crb(
            NODE_READERS_BINDING,
            NODE_READER_ROLE,
            &[g(KubeconfigRole::Editor), g(KubeconfigRole::Viewer)],
        ),
        crb(VIEWERS_BINDING, "view", &[g(KubeconfigRole::Viewer)]),
    ]
    .join("---\n")
}

/// The command that applies [`MANIFEST_PATH`] on a member, server-side
/// with the field manager the addons use, through that member's own API
/// server (`server`) with its admin kubeconfig. `kubectl` and `kubeconfig`
/// are the service's paths on the machine.
pub fn apply_command(kubectl: &str, kubeconfig: &str, server: &str) -> String {
    format!(
        "{} --kubeconfig={} --server={} --request-timeout=10s apply --server-side \
         --force-conflicts --field-manager=kubeforge --filename={}",
        shell_quote(kubectl),
        shell_quote(kubeconfig),
        shell_quote(server),
        shell_quote(MANIFEST_PATH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_name_their_groups() {
        for r in KubeconfigRole::ALL {
            assert_eq!(KubeconfigRole::parse(r.as_str()), Some(r));
        }
        assert_eq!(KubeconfigRole::parse("cluster-admin"), None);
        assert_eq!(
            group(KubeconfigRole::Admin, 3),
            "kubeforge:cluster-admins:g3"
        );
        assert_eq!(group(KubeconfigRole::Editor, 3), "kubeforge:editors:g3");
        assert_eq!(group(KubeconfigRole::Viewer, 12), "kubeforge:viewers:g12");
        assert_eq!(user("service"), "kubeforge:user:service");
    }

    #[test]
    fn the_manifest_binds_exactly_this_generation() {
        let m = manifest(4);
        insta::assert_snapshot!(m);
        assert!(!m.contains("system:masters"));
        assert!(!m.contains(":g3\""), "no other generation");
        for role in KubeconfigRole::ALL {
            assert!(
                m.contains(&format!("name: \"{}\"", group(role, 4))),
                "{role}"
            );
        }
        // Fixed names, so generation 5 replaces generation 4's subjects.
        let names = |m: &str| -> Vec<String> {
            let lines: Vec<&str> = m.lines().collect();
            lines
                .windows(2)
                .filter(|w| w[0] == "metadata:")
                .map(|w| w[1].to_string())
                .collect()
        };
        assert_eq!(names(&m).len(), 5);
        assert_eq!(names(&m), names(&manifest(5)));
        // The viewers' binding is last (see the module doc).
        let last = m.rsplit("---\n").next().unwrap();
        assert!(
            last.contains(VIEWERS_BINDING) && last.contains("name: view\n"),
            "{last}"
        );
        assert_eq!(m.matches("kubeforge.io/managed: \"true\"").count(), 5);
    }

    #[test]
    fn the_apply_command_quotes_its_paths() {
        let cmd = apply_command(
            "/opt/kube bin/kubectl",
            "/etc/kubernetes/admin.conf",
            "https://10.0.0.1:6443",
        );
        assert!(
            cmd.starts_with("'/opt/kube bin/kubectl' --kubeconfig=/etc/kubernetes/admin.conf"),
            "{cmd}"
        );
        assert!(
            cmd.ends_with(&format!("--filename={MANIFEST_PATH}")),
            "{cmd}"
        );
    }
}
