//! The PKI of the autoscaler's gRPC endpoint (the upstream
//! cluster-autoscaler's `externalgrpc` cloud provider, served over mTLS).
//!
//! One CA for the whole service, `kubeforge-externalgrpc-ca`, not one per
//! cluster: the endpoint is one listener, and a client certificate names
//! the one cluster it may act on. The CA is generated on first use (valid
//! 10 years) and kept sealed in `service_secrets` (see
//! [`crate::store::service_secret`]); replicas sharing a database that
//! race to create it all end up with the one that was stored first.
//!
//! What it guarantees:
//! - The serving certificate ([`GrpcPki::server_cert`]) is serverAuth
//!   only; client certificates ([`GrpcPki::client_cert`]) are clientAuth
//!   only, so neither can stand in for the other.
//! - A client certificate names exactly one cluster three ways that must
//!   agree: CN `cluster:<uuid>`, O the tenant, and one URI SAN
//!   `kubeforge://clusters/<uuid>`. [`identify`] accepts nothing less.
//! - Private keys are returned to the caller and never stored, logged or
//!   shown by `Debug` (the CA's own key only sealed).
//!
//! [`identify`] does not check signatures or expiry: the TLS layer has
//! verified the chain against [`GrpcPki::ca_pem`] before it is called.

use chrono::{DateTime, TimeDelta, Utc};
use kubeforge_cluster::externalgrpc::{CLIENT_CN_PREFIX, CLIENT_URI_PREFIX};
use kubeforge_cluster::pki::{
    self, Ca, CertKeyPair, PkiError, SubjectAltName, DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY,
};
use kubeforge_cluster::ValidationError;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::crypto::SecretBox;
use crate::error::{Error, Result};
use crate::store::service_secret;

/// The CA's common name (and its row's name in `service_secrets`).
pub const CA_COMMON_NAME: &str = "kubeforge-externalgrpc-ca";
/// The serving certificate's common name (clients check its SANs).
pub const SERVER_COMMON_NAME: &str = "kubeforge-externalgrpc";

/// The CA as sealed: certificate and key together, so a reader never
/// sees one without the other.
#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

/// The gRPC endpoint's CA, ready to sign.
#[derive(Debug)]
pub struct GrpcPki {
    ca: Ca,
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(anyhow::anyhow!("externalgrpc PKI: {e}"))
}

impl GrpcPki {
    /// Loads the CA from service_secrets, creating it (10 years) on first use.
    pub async fn load_or_create(db: &PgPool, sbox: &SecretBox) -> Result<GrpcPki> {
        let stored = match service_secret::get(db, sbox, CA_COMMON_NAME).await? {
            Some(bytes) => bytes,
            None => {
                let ca = Ca::generate_standalone(CA_COMMON_NAME, Utc::now(), DEFAULT_CA_VALIDITY)
                    .map_err(internal)?;
                let pair = ca.cert_key_pair();
                let fresh = serde_json::to_vec(&StoredCa {
                    cert_pem: pair.cert_pem.clone(),
                    key_pem: pair.key_pem.clone(),
                })
                .map_err(internal)?;
                // Another replica may have stored one meanwhile: use the
                // one the table holds, whoever wrote it.
                service_secret::put_if_absent(db, sbox, CA_COMMON_NAME, &fresh).await?
            }
        };
        let stored: StoredCa = serde_json::from_slice(&stored)
            .map_err(|e| internal(format!("the stored CA does not parse: {e}")))?;
        let ca = Ca::from_pem(&stored.cert_pem, &stored.key_pem).map_err(internal)?;
        Ok(GrpcPki { ca })
    }

    /// The CA certificate (PEM): what clients trust for the server, and
    /// what the listener verifies client certificates against.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// A serving certificate for the gRPC listener: DNS or IP SANs from `hosts` (each "name" or an IP), serverAuth, valid 1 year.
    pub fn server_cert(&self, hosts: &[String], now: DateTime<Utc>) -> Result<CertKeyPair> {
        if hosts.is_empty() {
            return Err(ValidationError::new(
                "hosts",
                "the gRPC serving certificate needs at least one host name or IP address",
            )
            .into());
        }
        let sans = hosts
            .iter()
            .map(|h| {
                SubjectAltName::parse(h).map_err(|e| {
                    ValidationError::new("hosts", format!("{h:?} is not a host name or IP: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        pki::issue_server_cert(
            &self.ca,
            SERVER_COMMON_NAME,
            &sans,
            now,
            DEFAULT_LEAF_VALIDITY,
        )
        .map_err(internal)
    }

    /// A client certificate naming exactly one cluster: CN "cluster:<cluster uuid>", O = tenant, a URI SAN "kubeforge://clusters/<uuid>", clientAuth only.
    pub fn client_cert(
        &self,
        tenant: &str,
        cluster_id: Uuid,
        now: DateTime<Utc>,
        ttl: TimeDelta,
    ) -> Result<CertKeyPair> {
        let uri =
            SubjectAltName::uri(&format!("{CLIENT_URI_PREFIX}{cluster_id}")).map_err(internal)?;
        pki::issue_client_cert_with_sans(
            &self.ca,
            &format!("{CLIENT_CN_PREFIX}{cluster_id}"),
            &[tenant],
            &[uri],
            now,
            ttl,
        )
        .map_err(|e| match e {
            PkiError::InvalidValidity { .. } => {
                Error::Validation(ValidationError::new("ttl_seconds", e.to_string()))
            }
            other => internal(other),
        })
    }
}

/// Who a verified client certificate (DER) names. Errors say why (not ours in shape, no cluster, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub tenant: String,
    pub cluster_id: uuid::Uuid,
    pub serial: String,
}

/// Who a verified client certificate (DER) names: the tenant (its one O)
/// and the cluster (its one CN `cluster:<uuid>`, which its one URI SAN
/// `kubeforge://clusters/<uuid>` must repeat), and its serial for logs.
/// Refuses a CA, a certificate not for clientAuth, and anything not in
/// the shape [`GrpcPki::client_cert`] issues, saying why.
pub fn identify(cert_der: &[u8]) -> Result<ClientIdentity, String> {
    let leaf = pki::read_leaf_der(cert_der).map_err(|e| e.to_string())?;
    if leaf.is_ca {
        return Err("a CA certificate is not a client identity".into());
    }
    if !leaf.client_auth {
        return Err("the certificate is not for client authentication".into());
    }
    let [cn] = leaf.common_names.as_slice() else {
        return Err(format!(
            "not a Kubeforge client certificate: {} common names, expected one `{CLIENT_CN_PREFIX}<uuid>`",
            leaf.common_names.len()
        ));
    };
    let Some(id) = cn.strip_prefix(CLIENT_CN_PREFIX) else {
        return Err(format!(
            "the certificate names no cluster: its common name is not `{CLIENT_CN_PREFIX}<uuid>`"
        ));
    };
    let cluster_id = Uuid::parse_str(id)
        .ok()
        .filter(|u| u.to_string() == id)
        .ok_or_else(|| {
            "the certificate names no cluster: the common name's id is not a lowercase, hyphenated uuid"
                .to_string()
        })?;
    let [tenant] = leaf.organizations.as_slice() else {
        return Err(format!(
            "not a Kubeforge client certificate: {} organizations, expected one (the tenant)",
            leaf.organizations.len()
        ));
    };
    if tenant.is_empty() {
        return Err("not a Kubeforge client certificate: the tenant is empty".into());
    }
    let expected_uri = format!("{CLIENT_URI_PREFIX}{cluster_id}");
    if leaf.uris != [expected_uri.as_str()] {
        return Err(format!(
            "not a Kubeforge client certificate: expected exactly one URI SAN {expected_uri}, found {}",
            leaf.uris.len()
        ));
    }
    Ok(ClientIdentity {
        tenant: tenant.clone(),
        cluster_id,
        serial: leaf.serial_hex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap()
    }

    fn grpc_pki() -> GrpcPki {
        GrpcPki {
            ca: Ca::generate_standalone(CA_COMMON_NAME, now(), DEFAULT_CA_VALIDITY).unwrap(),
        }
    }

    fn der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    #[test]
    fn a_client_cert_identifies_its_tenant_and_cluster() {
        let pki = grpc_pki();
        let id = Uuid::now_v7();
        let pair = pki
            .client_cert("acme", id, now(), TimeDelta::days(90))
            .unwrap();
        assert_eq!(pair.not_after, now() + TimeDelta::days(90));
        assert_eq!(
            identify(&der(&pair.cert_pem)),
            Ok(ClientIdentity {
                tenant: "acme".into(),
                cluster_id: id,
                serial: pair.serial_hex.clone(),
            })
        );
        assert!(!format!("{pair:?}").contains(&pair.key_pem));
    }

    #[test]
    fn certificates_without_the_cluster_shape_are_refused() {
        let pki = grpc_pki();
        let id = Uuid::now_v7();
        let uri = || SubjectAltName::uri(&format!("{CLIENT_URI_PREFIX}{id}")).unwrap();
        let issue = |cn: &str, orgs: &[&str], sans: &[SubjectAltName]| {
            let pair = pki::issue_client_cert_with_sans(
                &pki.ca,
                cn,
                orgs,
                sans,
                now(),
                TimeDelta::hours(1),
            )
            .unwrap();
            identify(&der(&pair.cert_pem))
        };
        let err = issue("admin", &["acme"], &[uri()]).unwrap_err();
        assert!(err.contains("names no cluster"), "{err}");
        let err = issue("cluster:not-a-uuid", &["acme"], &[uri()]).unwrap_err();
        assert!(err.contains("names no cluster"), "{err}");
        let upper = id.to_string().to_uppercase();
        let err = issue(&format!("cluster:{upper}"), &["acme"], &[uri()]).unwrap_err();
        assert!(err.contains("names no cluster"), "{err}");
        let cn = format!("cluster:{id}");
        let err = issue(&cn, &[], &[uri()]).unwrap_err();
        assert!(err.contains("organizations"), "{err}");
        let err = issue(&cn, &["acme"], &[]).unwrap_err();
        assert!(err.contains("URI SAN"), "{err}");
        let other = SubjectAltName::uri(&format!("{CLIENT_URI_PREFIX}{}", Uuid::now_v7())).unwrap();
        let err = issue(&cn, &["acme"], &[other]).unwrap_err();
        assert!(err.contains("URI SAN"), "{err}");
        assert!(issue(&cn, &["acme"], &[uri()]).is_ok());

        // The serving certificate and the CA are no client identities.
        let server = pki.server_cert(&["localhost".into()], now()).unwrap();
        let err = identify(&der(&server.cert_pem)).unwrap_err();
        assert!(err.contains("client authentication"), "{err}");
        let err = identify(&der(pki.ca_pem())).unwrap_err();
        assert!(err.contains("CA"), "{err}");
        assert!(identify(b"not a certificate").is_err());
    }

    #[test]
    fn the_server_cert_carries_every_host_and_refuses_bad_ones() {
        let pki = grpc_pki();
        let pair = pki
            .server_cert(&["grpc.example.com".into(), "10.0.0.7".into()], now())
            .unwrap();
        assert_eq!(pair.not_after, now() + DEFAULT_LEAF_VALIDITY);
        CertKeyPair::from_pem(&pair.cert_pem, &pair.key_pem).unwrap();
        for hosts in [vec![], vec!["bad host".to_string()], vec!["a:1".into()]] {
            let err = pki.server_cert(&hosts, now()).unwrap_err();
            assert!(matches!(err, Error::Validation(_)), "{hosts:?}: {err}");
        }
    }

    #[test]
    fn a_non_positive_ttl_names_the_field() {
        let err = grpc_pki()
            .client_cert("acme", Uuid::now_v7(), now(), TimeDelta::zero())
            .unwrap_err();
        assert!(
            matches!(&err, Error::Validation(v) if v.field == "ttl_seconds"),
            "{err}"
        );
    }
}
