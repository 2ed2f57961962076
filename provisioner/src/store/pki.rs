//! Custody of each cluster's certificate authorities and service-account
//! key: generated once, on first use, sealed in `secrets` (see
//! [`super::secret`]) and read back on every later use. The CA key leaves
//! the service only in a control-plane member's bundle; kubeconfigs and
//! the service's own identity are minted from it here and never stored.

use chrono::Utc;
use kubeforge_cluster::pki::{CertKeyPair, ClusterPki, ServiceAccountKey, DEFAULT_CA_VALIDITY};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::cluster::Cluster;
use super::secret;
use crate::crypto::SecretBox;
use crate::error::{Error, Result};

const PKI_NAMES: [&str; 8] = [
    "pki/ca.crt",
    "pki/ca.key",
    "pki/etcd-ca.crt",
    "pki/etcd-ca.key",
    "pki/front-proxy-ca.crt",
    "pki/front-proxy-ca.key",
    "pki/sa.key",
    "pki/sa.pub",
];

fn text(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes)
        .map_err(|_| Error::Internal(anyhow::anyhow!("a stored PEM is not UTF-8")))
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(anyhow::anyhow!("{e}"))
}

/// The cluster's PKI, and whether this call created it (all of it, in
/// one transaction, so a crash leaves either none or all).
///
/// Created at most once: two callers may both find none (one of them a
/// worker that lost its job lease while it generated), so the write
/// locks the cluster row and looks again; the later caller keeps what the
/// first stored, and a CA the members already trust is never replaced.
pub async fn ensure(db: &PgPool, sbox: &SecretBox, c: &Cluster) -> Result<(ClusterPki, bool)> {
    {
        let mut conn = db.acquire().await?;
        if let Some(pki) = load(&mut conn, sbox, c.id).await? {
            return Ok((pki, false));
        }
    }
    let pki = ClusterPki::generate(&c.name, Utc::now(), DEFAULT_CA_VALIDITY).map_err(internal)?;
    let values: [&str; 8] = [
        &pki.ca.cert_pem,
        &pki.ca.key_pem,
        &pki.etcd_ca.cert_pem,
        &pki.etcd_ca.key_pem,
        &pki.front_proxy_ca.cert_pem,
        &pki.front_proxy_ca.key_pem,
        &pki.service_account.private_key_pem,
        &pki.service_account.public_key_pem,
    ];
    let mut tx = db.begin().await?;
    sqlx::query!("SELECT id FROM clusters WHERE id = $1 FOR UPDATE", c.id)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(stored) = load(&mut tx, sbox, c.id).await? {
        return Ok((stored, false));
    }
    for (name, value) in PKI_NAMES.iter().zip(values) {
        secret::put(&mut *tx, sbox, &c.tenant, c.id, name, value.as_bytes()).await?;
    }
    tx.commit().await?;
    Ok((pki, true))
}

/// The stored PKI, if all of it is there.
async fn load(
    conn: &mut PgConnection,
    sbox: &SecretBox,
    cluster_id: Uuid,
) -> Result<Option<ClusterPki>> {
    let mut stored = Vec::new();
    for name in PKI_NAMES {
        stored.push(secret::get(&mut *conn, sbox, cluster_id, name).await?);
    }
    if !stored.iter().all(Option::is_some) {
        return Ok(None);
    }
    let mut it = stored.into_iter().flatten();
    let mut next = || text(it.next().unwrap_or_default());
    let (ca_crt, ca_key) = (next()?, next()?);
    let (etcd_crt, etcd_key) = (next()?, next()?);
    let (fp_crt, fp_key) = (next()?, next()?);
    let (sa_key, sa_pub) = (next()?, next()?);
    Ok(Some(ClusterPki {
        ca: CertKeyPair::from_pem(&ca_crt, &ca_key).map_err(internal)?,
        etcd_ca: CertKeyPair::from_pem(&etcd_crt, &etcd_key).map_err(internal)?,
        front_proxy_ca: CertKeyPair::from_pem(&fp_crt, &fp_key).map_err(internal)?,
        service_account: ServiceAccountKey {
            private_key_pem: sa_key,
            public_key_pem: sa_pub,
        },
    }))
}

/// The cluster CA (certificate and key, PEM), if the cluster has one yet.
pub async fn ca(db: &PgPool, sbox: &SecretBox, cluster_id: Uuid) -> Result<Option<CertKeyPair>> {
    let crt = secret::get(db, sbox, cluster_id, "pki/ca.crt").await?;
    let key = secret::get(db, sbox, cluster_id, "pki/ca.key").await?;
    let (Some(crt), Some(key)) = (crt, key) else {
        return Ok(None);
    };
    Ok(Some(
        CertKeyPair::from_pem(&text(crt)?, &text(key)?).map_err(internal)?,
    ))
}
