//! Joining a worker to its tenant cluster without long-lived secrets.
//!
//! Each joining machine gets a bootstrap token of its own: a
//! `bootstrap.kubernetes.io/token` Secret in `kube-system`, labelled with the
//! machine's ledger id, expiring after a short TTL, and deleted by the
//! service once the node is Ready. The token authenticates as
//! `system:bootstrap:<id>` in [`BOOTSTRAP_GROUP`], which may only create and
//! read certificate signing requests ([`rbac_manifest`]).
//!
//! The kubelet uses the token to ask for its client certificate (TLS
//! bootstrapping). Nothing in the cluster auto-approves such a first request:
//! the service approves it after [`check_node_client_csr`] confirms that it
//! came from that machine's token and names that machine's node, and denies
//! anything else made with a Kubeforge token. Renewals, which a node makes
//! with its own certificate for its own name, are approved by
//! kube-controller-manager through the standard `selfnodeclient` binding.
//!
//! A node therefore holds the cluster CA certificate, its own kubelet
//! credential and a kube-proxy credential; never the CA key or an admin
//! credential.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;

/// The extra group every Kubeforge bootstrap token authenticates with.
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers:kubeforge:worker";
/// On every token Secret: the ledger id of the machine it was made for.
pub const MACHINE_LABEL: &str = "kubeforge.io/machine";
/// On every node: the pool it belongs to.
pub use crate::spec::NODE_POOL_LABEL as POOL_LABEL;
/// The signer of kubelet client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The group kubelet client certificates carry.
pub const NODES_GROUP: &str = "system:nodes";

const TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A bootstrap token, `<id>.<secret>` with a 6- and a 16-character part
/// from `[a-z0-9]`, as the API server's bootstrap authenticator requires.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl BootstrapToken {
    /// A fresh token for the machine with ledger id `machine`: its id is
    /// derived from the machine (so each machine has one token Secret, a
    /// retried join overwrites it, and the service deletes it by name
    /// without ever listing the cluster's secrets), its secret is fresh
    /// from `rng` (the service passes a CSPRNG).
    pub fn for_machine(machine: &str, rng: &mut impl Rng) -> Self {
        let id = token_id_for(machine);
        let secret = (0..16)
            .map(|_| char::from(TOKEN_ALPHABET[rng.gen_range(0..TOKEN_ALPHABET.len())]))
            .collect();
        Self { id, secret }
    }

    /// The public half: names the Secret and the user.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The whole token, for the bootstrap kubeconfig. Secret.
    pub fn token(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The secret half, for redacting output.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Who the API server says a request with this token is.
    pub fn username(&self) -> String {
        format!("system:bootstrap:{}", self.id)
    }

    /// The Secret's name in `kube-system`.
    pub fn secret_name(&self) -> String {
        format!("bootstrap-token-{}", self.id)
    }

    /// The token Secret for the machine with ledger id `machine` that will
    /// join as `node_name`, valid until `expires_at`. Holds the secret.
    pub fn secret_object(
        &self,
        machine: &str,
        node_name: &str,
        expires_at: DateTime<Utc>,
    ) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.secret_name(),
                "namespace": "kube-system",
                "labels": {MACHINE_LABEL: machine, "kubeforge.io/managed": "true"},
            },
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "description": format!("Kubeforge join of node {node_name}"),
                "token-id": self.id,
                "token-secret": self.secret,
                "expiration": expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                "usage-bootstrap-authentication": "true",
                "auth-extra-groups": BOOTSTRAP_GROUP,
            },
        })
    }
}

/// The token id of a machine: six characters of `[a-z0-9]` from a hash
/// of its ledger id (FNV-1a, 64 bits; ids are unique, the hash only needs
/// to spread them).
pub fn token_id_for(machine: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in machine.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (0..6)
        .map(|_| {
            let c = TOKEN_ALPHABET[(h % TOKEN_ALPHABET.len() as u64) as usize];
            h /= TOKEN_ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}

/// The name of a machine's token Secret in `kube-system`.
pub fn token_secret_name(machine: &str) -> String {
    format!("bootstrap-token-{}", token_id_for(machine))
}

/// The bindings that make TLS bootstrapping work with service-side
/// approval: Kubeforge's bootstrap tokens may create CSRs (and nothing
/// else), and nodes may renew their own client certificates, which
/// kube-controller-manager approves.
pub fn rbac_manifest() -> String {
    let binding = |name: &str, role: &str, group: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\n\
             kind: ClusterRoleBinding\n\
             metadata:\n  \
               name: {name}\n  \
               labels:\n    \
                 kubeforge.io/managed: \"true\"\n\
             roleRef:\n  \
               apiGroup: rbac.authorization.k8s.io\n  \
               kind: ClusterRole\n  \
               name: {role}\n\
             subjects:\n\
             - apiGroup: rbac.authorization.k8s.io\n  \
               kind: Group\n  \
               name: {group}\n"
        )
    };
    [
        binding(
            "kubeforge-node-bootstrapper",
            "system:node-bootstrapper",
            BOOTSTRAP_GROUP,
        ),
        binding(
            "kubeforge-node-client-renewal",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            NODES_GROUP,
        ),
    ]
    .join("---\n")
}

/// The expected user name of a node's client certificate.
pub fn node_user(node_name: &str) -> String {
    format!("system:node:{node_name}")
}

/// Checks a kubelet client CSR (`spec.request`, PEM) against the node name
/// the ledger expects: the subject must be exactly
/// `CN=system:node:<node_name>, O=system:nodes`, with no subject
/// alternative names. Says why not otherwise.
pub fn check_node_client_csr(request_pem: &[u8], node_name: &str) -> Result<(), String> {
    use x509_parser::prelude::FromDer;
    let (_, pem) = x509_parser::pem::parse_x509_pem(request_pem)
        .map_err(|e| format!("the request is not PEM: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(format!("the request is a {:?}, not a CSR", pem.label));
    }
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| format!("the request does not parse: {e}"))?;
    let info = &csr.certification_request_info;
    let texts = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.map(|a| a.as_str().map(str::to_string))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("an unreadable subject attribute: {e}"))
    };
    let cns = texts(&mut info.subject.iter_common_name())?;
    let orgs = texts(&mut info.subject.iter_organization())?;
    let expected = node_user(node_name);
    if cns != [expected.as_str()] {
        return Err(format!(
            "the request is for {cns:?}, but this machine joins as {expected:?}"
        ));
    }
    if orgs != [NODES_GROUP] {
        return Err(format!(
            "the request asks for groups {orgs:?}, not exactly [{NODES_GROUP:?}]"
        ));
    }
    let attributes = info.subject.iter().flat_map(|rdn| rdn.iter()).count();
    if attributes != 2 {
        return Err(format!(
            "the subject has {attributes} attributes; expected only CN and O"
        ));
    }
    if let Some(extensions) = csr.requested_extensions() {
        if extensions.into_iter().any(|e| {
            matches!(
                e,
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(_)
            )
        }) {
            return Err("the request asks for subject alternative names".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn csr(cn: &str, orgs: &[&str], san: Option<&str>) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        if let Some(san) = san {
            params.subject_alt_names = vec![rcgen::SanType::DnsName(san.try_into().unwrap())];
        }
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn tokens_have_the_bootstrap_shape_and_differ() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = BootstrapToken::for_machine("0193-a", &mut rng);
        let again = BootstrapToken::for_machine("0193-a", &mut rng);
        let b = BootstrapToken::for_machine("0193-b", &mut rng);
        assert_ne!(a.id(), b.id());
        // One machine, one Secret name; a fresh secret each time.
        assert_eq!(a.id(), again.id());
        assert_ne!(a.secret(), again.secret());
        assert_eq!(a.secret_name(), token_secret_name("0193-a"));
        let t = a.token();
        let (id, secret) = t.split_once('.').unwrap();
        assert_eq!(id.len(), 6);
        assert_eq!(secret.len(), 16);
        assert!(t
            .chars()
            .all(|c| c == '.' || c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_eq!(a.username(), format!("system:bootstrap:{id}"));
        assert!(!format!("{a:?}").contains(secret), "Debug hides the secret");
    }

    #[test]
    fn the_token_secret_names_machine_expiry_and_group() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t = BootstrapToken::for_machine("0193-m", &mut rng);
        let at = DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let y = t.secret_object("0193-m", "demo-default-abcde", at);
        assert_eq!(y["metadata"]["name"], format!("bootstrap-token-{}", t.id()));
        assert_eq!(y["metadata"]["namespace"], "kube-system");
        assert_eq!(y["type"], "bootstrap.kubernetes.io/token");
        assert_eq!(y["stringData"]["expiration"], "2026-11-25T10:00:00Z");
        assert_eq!(y["stringData"]["auth-extra-groups"], BOOTSTRAP_GROUP);
        assert_eq!(y["metadata"]["labels"]["kubeforge.io/machine"], "0193-m");
        assert_eq!(y["stringData"]["token-secret"], t.secret());
        assert_eq!(y["stringData"]["token-id"], t.id());
        assert!(BOOTSTRAP_GROUP.starts_with("system:bootstrappers:"));
    }

    #[test]
    fn the_rbac_binds_only_csr_creation_and_self_renewal() {
        let y = rbac_manifest();
        assert_eq!(y.matches("kind: ClusterRoleBinding").count(), 2);
        assert!(y.contains("name: system:node-bootstrapper\n"));
        assert!(y.contains(
            "name: system:certificates.k8s.io:certificatesigningrequests:selfnodeclient\n"
        ));
        // First certificates are approved by the service, not the cluster.
        assert!(!y.contains("certificatesigningrequests:nodeclient\n"));
    }

    #[test]
    fn a_csr_for_the_expected_node_passes() {
        let pem = csr("system:node:demo-default-abcde", &["system:nodes"], None);
        check_node_client_csr(pem.as_bytes(), "demo-default-abcde").unwrap();
    }

    #[test]
    fn a_csr_for_another_name_or_group_is_refused() {
        let node = "demo-default-abcde";
        let cases = [
            (
                csr("system:node:other", &["system:nodes"], None),
                "joins as",
            ),
            (
                csr("system:node:demo-default-abcde", &["system:masters"], None),
                "groups",
            ),
            (
                csr(
                    "system:node:demo-default-abcde",
                    &["system:nodes", "system:masters"],
                    None,
                ),
                "groups",
            ),
            (csr("system:node:demo-default-abcde", &[], None), "groups"),
            (
                csr(
                    "system:node:demo-default-abcde",
                    &["system:nodes"],
                    Some("evil.example"),
                ),
                "alternative names",
            ),
        ];
        for (pem, why) in cases {
            let err = check_node_client_csr(pem.as_bytes(), node).unwrap_err();
            assert!(err.contains(why), "{err} should mention {why}");
        }
        let err = check_node_client_csr(b"not pem", node).unwrap_err();
        assert!(err.contains("PEM"), "{err}");
    }
}
