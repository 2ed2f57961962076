//! Kubeconfig files: one cluster, one user, one context.
//!
//! The service hands these to tenants (admin and viewer kubeconfigs with
//! short-lived client certs) and puts them on control-plane machines for
//! the controller-manager, the scheduler and the admin. They embed the
//! CA, the client certificate and the client key as base64 `*-data`
//! fields, so a kubeconfig is one self-contained file.
//!
//! The YAML is written by hand rather than through a YAML library: the
//! shape is fixed, and every string that is not base64 is emitted
//! double-quoted with YAML escapes, so no input (a name with `:` or `#`,
//! a newline, a quote) can change the document's structure.

use std::fmt;
use std::fmt::Write;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// What one kubeconfig says.
#[derive(Clone, Copy)]
pub struct KubeconfigInput<'a> {
    /// Names the cluster entry; the context is `{user_name}@{cluster_name}`.
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
/// context uses the given user against the given cluster.
///
/// The result holds the client key: treat it as a secret.
pub fn render_kubeconfig(input: &KubeconfigInput<'_>) -> String {
    render(
        input.cluster_name,
        input.server,
        input.ca_pem,
        input.user_name,
        &format!(
            "client-certificate-data: {cert}\n    client-key-data: {key}\n",
            cert = BASE64.encode(input.client_cert_pem),
            key = BASE64.encode(input.client_key_pem),
        ),
    )
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
    render(
        cluster_name,
        server,
        ca_pem,
        user_name,
        &format!("token: {}\n", quoted(token)),
    )
}

/// The shared document; `credentials` are the user's indented fields.
fn render(
    cluster_name: &str,
    server: &str,
    ca_pem: &str,
    user_name: &str,
    credentials: &str,
) -> String {
    let cluster = quoted(cluster_name);
    let user = quoted(user_name);
    let context = quoted(&format!("{user_name}@{cluster_name}"));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - cluster:\n    \
             certificate-authority-data: {ca}\n    \
             server: {server}\n  \
           name: {cluster}\n\
         contexts:\n\
         - context:\n    \
             cluster: {cluster}\n    \
             user: {user}\n  \
           name: {context}\n\
         current-context: {context}\n\
         preferences: {{}}\n\
         users:\n\
         - name: {user}\n  \
           user:\n    \
             {credentials}",
        ca = BASE64.encode(ca_pem),
        server = quoted(server),
    );
    out
}

/// A YAML double-quoted scalar. Double quotes are the only YAML style in
/// which every string, including control characters, can be written.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // Control characters, YAML's own line and paragraph separators
            // and the byte-order mark would be folded, dropped or refused
            // by a parser if written raw.
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
        insta::assert_snapshot!(render_kubeconfig(&input()), @r#"
        apiVersion: v1
        kind: Config
        clusters:
        - cluster:
            certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tClpIVnRiWGtnWTJFPQotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==
            server: "https://10.77.0.10:6443"
          name: "demo"
        contexts:
        - context:
            cluster: "demo"
            user: "kubernetes-admin"
          name: "kubernetes-admin@demo"
        current-context: "kubernetes-admin@demo"
        preferences: {}
        users:
        - name: "kubernetes-admin"
          user:
            client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tClpIVnRiWGtnWTJ4cFpXNTAKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=
            client-key-data: LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tClpIVnRiWGtnYTJWNQotLS0tLUVORCBQUklWQVRFIEtFWS0tLS0tCg==
        "#);
    }

    #[test]
    fn base64_fields_decode_back_to_the_inputs() {
        let yaml = render_kubeconfig(&input());
        assert_eq!(decoded(&yaml, "certificate-authority-data"), CA_PEM);
        assert_eq!(decoded(&yaml, "client-certificate-data"), CERT_PEM);
        assert_eq!(decoded(&yaml, "client-key-data"), KEY_PEM);
        assert_eq!(field(&yaml, "current-context"), "\"kubernetes-admin@demo\"");
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
        let yaml = render_kubeconfig(&KubeconfigInput {
            cluster_name: "a\"b\\c\nd: e",
            user_name: "#x\u{7}\u{2028}é",
            ..input()
        });
        assert!(yaml.contains("  name: \"a\\\"b\\\\c\\nd: e\"\n"), "{yaml}");
        assert!(yaml.contains("- name: \"#x\\u0007\\u2028é\"\n"), "{yaml}");
        assert!(
            yaml.contains("current-context: \"#x\\u0007\\u2028é@a\\\"b\\\\c\\nd: e\"\n"),
            "{yaml}"
        );
        assert_eq!(
            yaml.lines().count(),
            render_kubeconfig(&input()).lines().count(),
            "no injected lines"
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
        assert_eq!(field(&yaml, "token"), "\"abcdef.0123456789abcdef\"");
        assert!(!yaml.contains("client-key-data"));
        assert_eq!(decoded(&yaml, "certificate-authority-data"), CA_PEM);
        assert_eq!(
            field(&yaml, "current-context"),
            "\"kubelet-bootstrap@demo\""
        );
    }

    #[test]
    fn debug_redacts_the_client_key() {
        let text = format!("{:?}", input());
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(text.contains("[redacted]"));
    }
}
