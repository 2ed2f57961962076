//! Kubeconfig files: one cluster, one user, one context.
//!
//! The service hands these to tenants (admin, editor and viewer
//! kubeconfigs with short-lived client certs) and puts them on
//! control-plane machines for the controller-manager, the scheduler and
//! the admin. They embed the CA, the client certificate and the client key
//! as base64 `*-data` fields, so a kubeconfig is one self-contained file.
//!
//! The document is a typed model of kubeconfig v1 ([`Kubeconfig`] and its
//! entries, serde structs with kubeconfig's field names) serialized by a
//! YAML library, so no input (a name with `:` or `#`, a newline, a quote)
//! can change the document's structure: the serializer quotes what needs
//! quoting. The model covers what Kubeforge writes, not every field a
//! kubeconfig may have; the CLI, which merges into files people keep,
//! reads and writes those with the `kube` crate's complete model instead.
//!
//! Tenant kubeconfigs name their cluster, user and context entries alike,
//! [`tenant_entry_name`] (`kubeforge_<tenant>_<cluster>_<role>`), so the
//! admin and the viewer kubeconfig of one cluster, or the same cluster
//! name in two tenants, live side by side in one merged file.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::credentials::KubeconfigRole;

/// A kubeconfig document (`apiVersion: v1`, `kind: Config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub clusters: Vec<NamedCluster>,
    pub contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    pub current_context: String,
    /// Always empty; written because kubectl writes it.
    #[serde(default)]
    pub preferences: BTreeMap<String, String>,
    pub users: Vec<NamedUser>,
}

/// A named `clusters` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedCluster {
    pub cluster: ClusterEntry,
    pub name: String,
}

/// Where the API server is and which CA signs its certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterEntry {
    /// The CA certificate, PEM, base64-encoded.
    #[serde(rename = "certificate-authority-data")]
    pub certificate_authority_data: String,
    /// `https://host:port`.
    pub server: String,
}

/// A named `contexts` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedContext {
    pub context: ContextEntry,
    pub name: String,
}

/// A cluster and a user, by entry name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextEntry {
    pub cluster: String,
    pub user: String,
}

/// A named `users` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: UserEntry,
}

/// How a user authenticates: a client certificate and key, or a bearer
/// token. Secret; `Debug` redacts the key and the token.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UserEntry {
    /// The client certificate, PEM, base64-encoded.
    #[serde(
        rename = "client-certificate-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_certificate_data: Option<String>,
    /// The client key, PEM, base64-encoded.
    #[serde(
        rename = "client-key-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "[redacted]");
        f.debug_struct("UserEntry")
            .field("client_certificate_data", &self.client_certificate_data)
            .field("client_key_data", &redacted(&self.client_key_data))
            .field("token", &redacted(&self.token))
            .finish()
    }
}

/// A kubeconfig that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not a kubeconfig: {0}")]
pub struct ParseError(String);

impl Kubeconfig {
    /// One cluster, one user and the context that joins them, current.
    pub fn single(
        cluster_name: &str,
        cluster: ClusterEntry,
        user_name: &str,
        user: UserEntry,
        context_name: &str,
    ) -> Self {
        Kubeconfig {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![NamedCluster {
                cluster,
                name: cluster_name.into(),
            }],
            contexts: vec![NamedContext {
                context: ContextEntry {
                    cluster: cluster_name.into(),
                    user: user_name.into(),
                },
                name: context_name.into(),
            }],
            current_context: context_name.into(),
            preferences: BTreeMap::new(),
            users: vec![NamedUser {
                name: user_name.into(),
                user,
            }],
        }
    }

    /// The YAML document. Holds the user's secrets, if any.
    pub fn to_yaml(&self) -> String {
        // Serializing plain strings, vectors and maps cannot fail.
        to_yaml(self).expect("a kubeconfig serializes")
    }

    /// Reads a document this module wrote (or one of the same shape).
    pub fn from_yaml(yaml: &str) -> Result<Self, ParseError> {
        serde_saphyr::from_str(yaml).map_err(|e| ParseError(e.to_string()))
    }
}

/// Serializes `value` as a kubeconfig is written: block style, 2-space
/// indents, plain scalars where YAML allows them and quoted ones
/// elsewhere, and never folded (`>`) block scalars, which would put long
/// base64 values on a line of their own.
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string_with_options(
        value,
        serde_saphyr::ser_options! { prefer_block_scalars: false },
    )
}

/// The name of a tenant kubeconfig's cluster, user and context entries:
/// `kubeforge_<tenant>_<cluster>_<role>`, unique per tenant, cluster and
/// role. Tenant ids and cluster names are DNS labels (no `_`), so the
/// name is unambiguous.
pub fn tenant_entry_name(tenant: &str, cluster: &str, role: KubeconfigRole) -> String {
    format!("kubeforge_{tenant}_{cluster}_{}", role.as_str())
}

/// What one kubeconfig says.
#[derive(Clone, Copy)]
pub struct KubeconfigInput<'a> {
    /// Names the cluster entry; the context is `{user_name}@{cluster_name}`
    /// unless [`render_kubeconfig_with_context`] names it.
    pub cluster_name: &'a str,
    /// The apiserver endpoint, `https://host:port`.
    pub server: &'a str,
    /// The cluster CA certificate, PEM.
    pub ca_pem: &'a str,
    /// Names the user entry (not the identity: that is the cert's CN).
    pub user_name: &'a str,
    pub client_cert_pem: &'a str,
    /// Secret. Never logged; `Debug` redacts it.
    pub client_key_pem: &'a str,
}

impl fmt::Debug for KubeconfigInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeconfigInput")
            .field("cluster_name", &self.cluster_name)
            .field("server", &self.server)
            .field("user_name", &self.user_name)
            .field("client_key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// Renders a kubeconfig (`apiVersion: v1`, `kind: Config`) whose current
/// context, `{user_name}@{cluster_name}`, uses the given user against the
/// given cluster.
///
/// The result holds the client key: treat it as a secret.
pub fn render_kubeconfig(input: &KubeconfigInput<'_>) -> String {
    render_kubeconfig_with_context(
        input,
        &format!("{}@{}", input.user_name, input.cluster_name),
    )
}

/// [`render_kubeconfig`] with the context named `context_name`.
pub fn render_kubeconfig_with_context(input: &KubeconfigInput<'_>, context_name: &str) -> String {
    Kubeconfig::single(
        input.cluster_name,
        cluster_entry(input.server, input.ca_pem),
        input.user_name,
        UserEntry {
            client_certificate_data: Some(BASE64.encode(input.client_cert_pem)),
            client_key_data: Some(BASE64.encode(input.client_key_pem)),
            token: None,
        },
        context_name,
    )
    .to_yaml()
}

/// Renders a kubeconfig whose user authenticates with a bearer token, as a
/// kubelet's bootstrap kubeconfig does (`token: <id>.<secret>`).
///
/// The result holds the token: treat it as a secret.
pub fn render_token_kubeconfig(
    cluster_name: &str,
    server: &str,
    ca_pem: &str,
    user_name: &str,
    token: &str,
) -> String {
    Kubeconfig::single(
        cluster_name,
        cluster_entry(server, ca_pem),
        user_name,
        UserEntry {
            token: Some(token.into()),
            ..UserEntry::default()
        },
        &format!("{user_name}@{cluster_name}"),
    )
    .to_yaml()
}

fn cluster_entry(server: &str, ca_pem: &str) -> ClusterEntry {
    ClusterEntry {
        certificate_authority_data: BASE64.encode(ca_pem),
        server: server.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nZHVtbXkgY2E=\n-----END CERTIFICATE-----\n";
    const CERT_PEM: &str =
        "-----BEGIN CERTIFICATE-----\nZHVtbXkgY2xpZW50\n-----END CERTIFICATE-----\n";
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nZHVtbXkga2V5\n-----END PRIVATE KEY-----\n";

    fn input() -> KubeconfigInput<'static> {
        KubeconfigInput {
            cluster_name: "demo",
            server: "https://10.77.0.10:6443",
            ca_pem: CA_PEM,
            user_name: "kubernetes-admin",
            client_cert_pem: CERT_PEM,
            client_key_pem: KEY_PEM,
        }
    }

    fn field<'a>(yaml: &'a str, key: &str) -> &'a str {
        let prefix = format!("{key}: ");
        let mut values = yaml
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix(prefix.as_str()));
        let value = values.next().unwrap_or_else(|| panic!("no {key}"));
        assert!(values.next().is_none(), "{key} appears once");
        value
    }

    fn decoded(yaml: &str, key: &str) -> String {
        String::from_utf8(BASE64.decode(field(yaml, key)).unwrap()).unwrap()
    }

    #[test]
    fn renders_a_standard_kubeconfig() {
        insta::assert_snapshot!(render_kubeconfig(&input()), @r"
        apiVersion: v1
        kind: Config
        clusters:
        - cluster:
            certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tClpIVnRiWGtnWTJFPQotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==
            server: https://10.77.0.10:6443
          name: demo
        contexts:
        - context:
            cluster: demo
            user: kubernetes-admin
          name: kubernetes-admin@demo
        current-context: kubernetes-admin@demo
        preferences: {}
        users:
        - name: kubernetes-admin
          user:
            client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tClpIVnRiWGtnWTJ4cFpXNTAKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=
            client-key-data: LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tClpIVnRiWGtnYTJWNQotLS0tLUVORCBQUklWQVRFIEtFWS0tLS0tCg==
        ");
    }

    #[test]
    fn base64_fields_decode_back_to_the_inputs() {
        let yaml = render_kubeconfig(&input());
        assert_eq!(decoded(&yaml, "certificate-authority-data"), CA_PEM);
        assert_eq!(decoded(&yaml, "client-certificate-data"), CERT_PEM);
        assert_eq!(decoded(&yaml, "client-key-data"), KEY_PEM);
        assert_eq!(field(&yaml, "current-context"), "kubernetes-admin@demo");
    }

    #[test]
    fn real_certificates_round_trip() {
        use crate::pki::{issue_client_cert, ClusterPki, VIEWER_GROUP};
        use chrono::{TimeDelta, TimeZone, Utc};

        let now = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let name = crate::ClusterName::parse("demo").unwrap();
        let pki = ClusterPki::generate(&name, now, TimeDelta::days(365)).unwrap();
        let ca = pki.ca.signer().unwrap();
        let viewer =
            issue_client_cert(&ca, "alice", &[VIEWER_GROUP], now, TimeDelta::hours(1)).unwrap();
        let yaml = render_kubeconfig(&KubeconfigInput {
            cluster_name: "demo",
            server: "https://api.demo.example:6443",
            ca_pem: &pki.ca.cert_pem,
            user_name: "alice",
            client_cert_pem: &viewer.cert_pem,
            client_key_pem: &viewer.key_pem,
        });
        assert_eq!(
            decoded(&yaml, "certificate-authority-data"),
            pki.ca.cert_pem
        );
        assert_eq!(decoded(&yaml, "client-certificate-data"), viewer.cert_pem);
        assert_eq!(decoded(&yaml, "client-key-data"), viewer.key_pem);
        for line in yaml.lines().filter(|l| l.contains("-data: ")) {
            let value = line.split_once(": ").unwrap().1;
            assert!(
                value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)),
                "base64 on one line: {line}"
            );
        }
    }

    #[test]
    fn names_cannot_break_the_document() {
        let cluster = "a\"b\\c\nd: e";
        let user = "#x\u{7}\u{2028}é";
        let yaml = render_kubeconfig(&KubeconfigInput {
            cluster_name: cluster,
            user_name: user,
            ..input()
        });
        let parsed = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(parsed.clusters[0].name, cluster);
        assert_eq!(parsed.users[0].name, user);
        assert_eq!(parsed.current_context, format!("{user}@{cluster}"));
        assert_eq!(
            parsed.contexts[0].context,
            ContextEntry {
                cluster: cluster.into(),
                user: user.into()
            }
        );
        assert_eq!(
            yaml.lines().count(),
            render_kubeconfig(&input()).lines().count(),
            "no injected lines: {yaml}"
        );
    }

    #[test]
    fn a_named_context_and_tenant_entry_names() {
        let name = tenant_entry_name("acme", "web", KubeconfigRole::Viewer);
        assert_eq!(name, "kubeforge_acme_web_viewer");
        let yaml = render_kubeconfig_with_context(
            &KubeconfigInput {
                cluster_name: &name,
                user_name: &name,
                ..input()
            },
            &name,
        );
        let parsed = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(parsed.current_context, name);
        assert_eq!(parsed.contexts[0].name, name);
        assert_eq!(parsed.clusters[0].name, name);
        assert_eq!(parsed.users[0].name, name);
        assert_eq!(
            parsed.users[0].user.client_key_data.as_deref(),
            Some(BASE64.encode(KEY_PEM).as_str())
        );
        assert_ne!(
            name,
            tenant_entry_name("acme", "web", KubeconfigRole::Admin),
            "roles differ"
        );
    }

    #[test]
    fn token_kubeconfig_carries_the_token_and_no_key() {
        let yaml = render_token_kubeconfig(
            "demo",
            "https://10.77.0.10:6443",
            CA_PEM,
            "kubelet-bootstrap",
            "abcdef.0123456789abcdef",
        );
        assert_eq!(field(&yaml, "token"), "abcdef.0123456789abcdef");
        assert!(!yaml.contains("client-key-data"));
        assert_eq!(decoded(&yaml, "certificate-authority-data"), CA_PEM);
        assert_eq!(field(&yaml, "current-context"), "kubelet-bootstrap@demo");
    }

    #[test]
    fn debug_redacts_the_client_key() {
        let text = format!("{:?}", input());
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(text.contains("[redacted]"));
        let parsed = Kubeconfig::from_yaml(&render_kubeconfig(&input())).unwrap();
        let text = format!("{parsed:?}");
        assert!(!text.contains(&BASE64.encode(KEY_PEM)), "{text}");
        assert!(text.contains("[redacted]"));
    }
}
