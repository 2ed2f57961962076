//! The certificate authorities and certificates of one tenant cluster.
//!
//! Kubeforge builds the same set of credentials kubeadm would: three CAs
//! (cluster, etcd, front-proxy), the service-account signing key, and per
//! control-plane member the apiserver serving cert, the apiserver's client
//! certs towards kubelets and etcd, etcd's server and peer certs, and the
//! client certs of the controller-manager, the scheduler and the admin.
//! Kubeconfigs handed to tenants carry short-lived client certs from
//! [`issue_client_cert`]. The service's own endpoints (the autoscaler's
//! gRPC provider) use a standalone CA ([`Ca::generate_standalone`]), a
//! serving cert from [`issue_server_cert`] and client certs that name
//! their holder by URI ([`issue_client_cert_with_sans`]), read back with
//! [`read_leaf_der`].
//!
//! What this module guarantees:
//! - Every certificate has a fresh ECDSA P-256 key, a random 128-bit
//!   serial, a validity window starting [`CLOCK_SKEW_ALLOWANCE`] before
//!   the `now` the caller passes in, and never outlives its issuing CA.
//! - CAs are marked CA (path length 0) with only keyCertSign and cRLSign;
//!   leaves are marked not-CA with digitalSignature and exactly the
//!   extended key usages their role needs.
//! - A CA can be reloaded from its PEM certificate and key
//!   ([`Ca::from_pem`]), so the service stores CA keys encrypted and signs
//!   later; reloading checks that the key belongs to the certificate.
//! - Private keys never appear in `Debug` output, and no type here
//!   implements `Serialize` for a private key: persisting one is always an
//!   explicit, visible step in the caller.
//!
//! Nothing here reads the clock or touches the network; the only outside
//! input is the operating system's randomness for keys and serials.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, TimeDelta, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;

use crate::ClusterName;

/// The X.509 parser this module reads certificates with, for callers that
/// check what it issued on their own terms (the integration tests), so
/// they parse with the same version without a dependency of their own.
#[doc(hidden)]
pub use x509_parser;

/// Common name of the cluster CA (signs apiserver, kubelet and user certs).
pub const CLUSTER_CA_COMMON_NAME: &str = "kubernetes-ca";
/// Common name of the etcd CA (signs etcd server, peer and client certs).
pub const ETCD_CA_COMMON_NAME: &str = "etcd-ca";
/// Common name of the front-proxy CA (signs the aggregation-layer client).
pub const FRONT_PROXY_CA_COMMON_NAME: &str = "front-proxy-ca";

/// The group Kubernetes grants cluster-admin to without any binding.
pub const MASTERS_GROUP: &str = "system:masters";
/// The group viewer kubeconfigs carried before credential generations
/// (`crate::credentials`); nothing binds it once a cluster's first
/// generation is applied.
pub const VIEWER_GROUP: &str = "kubeforge:viewers";

/// User name of the admin client cert (kubeadm's name for it).
pub const ADMIN_USER: &str = "kubernetes-admin";
/// User name the controller-manager authenticates as.
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// User name the scheduler authenticates as.
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
/// Common name of the apiserver's client cert towards kubelets.
pub const APISERVER_KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
/// Common name of the apiserver's client cert towards etcd.
pub const APISERVER_ETCD_CLIENT_CN: &str = "kube-apiserver-etcd-client";
/// Common name of the client cert used for etcd health checks.
pub const ETCD_HEALTHCHECK_CLIENT_CN: &str = "kube-etcd-healthcheck-client";
/// Common name of the front-proxy client cert; the apiserver's
/// `--requestheader-allowed-names` must list it.
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";

/// The cluster DNS domain unless the cluster says otherwise.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Validity callers should give CAs.
pub const DEFAULT_CA_VALIDITY: TimeDelta = TimeDelta::days(3650);
/// Validity callers should give control-plane leaf certificates.
pub const DEFAULT_LEAF_VALIDITY: TimeDelta = TimeDelta::days(365);
/// How far `notBefore` is backdated, so that a machine whose clock runs a
/// little behind the service's still accepts a freshly issued cert.
pub const CLOCK_SKEW_ALLOWANCE: TimeDelta = TimeDelta::minutes(1);

/// Why a certificate or key could not be produced or loaded.
///
/// Messages never contain key material.
#[derive(Debug, Error)]
pub enum PkiError {
    #[error("generating a key pair failed: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    #[error("signing the {what} certificate failed: {source}")]
    Signing {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("the {what} is not usable: {reason}")]
    InvalidPem { what: &'static str, reason: String },
    #[error("the private key does not belong to the certificate {subject:?}")]
    KeyMismatch { subject: String },
    #[error("the certificate {subject:?} is not a CA allowed to sign certificates")]
    NotACa { subject: String },
    #[error("the CA {subject:?} expired at {expired_at}")]
    CaExpired {
        subject: String,
        expired_at: DateTime<Utc>,
    },
    #[error("the validity of the {what} certificate must be positive, got {validity}")]
    InvalidValidity { what: String, validity: TimeDelta },
    #[error("the time {0} cannot be written into a certificate")]
    TimeOutOfRange(String),
    #[error("{value:?} is not a valid {what}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: String,
    },
}

/// A certificate with its private key, both PEM, plus what the service
/// shows and audits about it without parsing it again.
#[derive(Clone, PartialEq, Eq)]
pub struct CertKeyPair {
    pub cert_pem: String,
    /// PKCS#8 PEM. Encrypt before storing; never log.
    pub key_pem: String,
    /// Lowercase hex of the serial number, as openssl prints it.
    pub serial_hex: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

impl fmt::Debug for CertKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKeyPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .field("serial_hex", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl CertKeyPair {
    /// Loads a stored certificate and key, checking that they belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let info = inspect_certificate(cert_pem)?;
        let key = load_key(key_pem)?;
        if key.subject_public_key_info() != info.spki_der {
            return Err(PkiError::KeyMismatch {
                subject: info.subject,
            });
        }
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            serial_hex: info.serial_hex,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// Turns this pair into a CA able to sign; fails unless it is a CA.
    pub fn signer(&self) -> Result<Ca, PkiError> {
        Ca::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// The service-account token signing key: the apiserver signs with the
/// private half (`--service-account-signing-key-file`) and verifies with
/// the public half (`--service-account-key-file`).
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceAccountKey {
    /// PKCS#8 PEM. Encrypt before storing; never log.
    pub private_key_pem: String,
    /// SubjectPublicKeyInfo PEM (`PUBLIC KEY`).
    pub public_key_pem: String,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("private_key_pem", &"[redacted]")
            .field("public_key_pem", &self.public_key_pem)
            .finish()
    }
}

impl ServiceAccountKey {
    /// Generates a new ECDSA P-256 signing key (tokens are signed ES256).
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
        Ok(Self {
            private_key_pem: key.serialize_pem(),
            public_key_pem: key.public_key_pem(),
        })
    }
}

/// A certificate authority ready to sign: its certificate and key, parsed.
pub struct Ca {
    pair: CertKeyPair,
    subject: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &self.subject)
            .field("serial_hex", &self.pair.serial_hex)
            .field("not_after", &self.pair.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Reloads a CA from its stored certificate and (decrypted) key.
    ///
    /// Refuses a key that does not match the certificate and a certificate
    /// that is not a CA allowed to sign certificates.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let info = inspect_certificate(cert_pem)?;
        if !info.may_sign_certificates {
            return Err(PkiError::NotACa {
                subject: info.subject,
            });
        }
        let pair = CertKeyPair::from_pem(cert_pem, key_pem)?;
        let key = load_key(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| PkiError::InvalidPem {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        Ok(Self {
            pair,
            subject: info.subject,
            issuer,
        })
    }

    /// Creates a self-signed CA belonging to no cluster (a service-wide
    /// one, such as the gRPC endpoint's), subject `CN=<common_name>,
    /// O=kubeforge`, with the same guarantees as a cluster's CAs.
    pub fn generate_standalone(
        common_name: &str,
        now: DateTime<Utc>,
        validity: TimeDelta,
    ) -> Result<Self, PkiError> {
        check_subject_value("common name", common_name)?;
        Self::generate(common_name, None, now, validity)
    }

    /// Creates a self-signed CA, of a cluster when `cluster_name` is given.
    fn generate(
        common_name: &str,
        cluster_name: Option<&ClusterName>,
        now: DateTime<Utc>,
        validity: TimeDelta,
    ) -> Result<Self, PkiError> {
        let window = ValidityWindow::starting_at(now, validity, common_name)?;
        let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
        let serial = random_serial();

        let mut params = CertificateParams::default();
        params.not_before = window.asn1_not_before()?;
        params.not_after = window.asn1_not_after()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "kubeforge");
        // Names the cluster so an operator holding a stray CA cert can tell
        // which cluster it belongs to; Kubernetes ignores CA subjects.
        if let Some(cluster_name) = cluster_name {
            dn.push(DnType::OrganizationalUnitName, cluster_name.as_str());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];

        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Signing {
                what: common_name.to_string(),
                source,
            })?;
        let pair = CertKeyPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial_hex: to_hex(&serial),
            not_before: window.not_before,
            not_after: window.not_after,
        };
        let subject = inspect_certificate(&pair.cert_pem)?.subject;
        Ok(Self {
            pair,
            subject,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's certificate and key, for storing.
    pub fn cert_key_pair(&self) -> &CertKeyPair {
        &self.pair
    }

    /// The CA certificate, for trust bundles and kubeconfigs.
    pub fn cert_pem(&self) -> &str {
        &self.pair.cert_pem
    }

    pub fn not_after(&self) -> DateTime<Utc> {
        self.pair.not_after
    }

    fn into_cert_key_pair(self) -> CertKeyPair {
        self.pair
    }

    /// Signs a new leaf certificate with a fresh key.
    fn issue(
        &self,
        leaf: &Leaf<'_>,
        now: DateTime<Utc>,
        validity: TimeDelta,
    ) -> Result<CertKeyPair, PkiError> {
        if now >= self.pair.not_after {
            return Err(PkiError::CaExpired {
                subject: self.subject.clone(),
                expired_at: self.pair.not_after,
            });
        }
        let mut window = ValidityWindow::starting_at(now, validity, leaf.what)?;
        // A certificate cannot be trusted past its issuer's expiry, so it
        // should not claim to be.
        window.not_after = window.not_after.min(self.pair.not_after);

        let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
        let serial = random_serial();

        let mut params = CertificateParams::default();
        params.not_before = window.asn1_not_before()?;
        params.not_after = window.asn1_not_after()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.distinguished_name = subject_name(leaf.common_name, leaf.organizations)?;
        params.subject_alt_names = leaf
            .sans
            .iter()
            .map(SubjectAltName::to_rcgen)
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = leaf.usages.extended_key_usages();
        params.use_authority_key_identifier_extension = true;

        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Signing {
                what: leaf.what.to_string(),
                source,
            })?;
        Ok(CertKeyPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial_hex: to_hex(&serial),
            not_before: window.not_before,
            not_after: window.not_after,
        })
    }
}

/// The three CAs and the service-account key of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPki {
    /// Signs the apiserver, kubelet and user certificates (`ca.crt`).
    pub ca: CertKeyPair,
    /// Signs everything etcd trusts (`etcd/ca.crt`).
    pub etcd_ca: CertKeyPair,
    /// Signs the aggregation-layer client (`front-proxy-ca.crt`).
    pub front_proxy_ca: CertKeyPair,
    pub service_account: ServiceAccountKey,
}

impl ClusterPki {
    /// Creates the CAs and the service-account key of a new cluster.
    pub fn generate(
        cluster_name: &ClusterName,
        now: DateTime<Utc>,
        ca_validity: TimeDelta,
    ) -> Result<Self, PkiError> {
        let ca = Ca::generate(CLUSTER_CA_COMMON_NAME, Some(cluster_name), now, ca_validity)?;
        let etcd_ca = Ca::generate(ETCD_CA_COMMON_NAME, Some(cluster_name), now, ca_validity)?;
        let front_proxy_ca = Ca::generate(
            FRONT_PROXY_CA_COMMON_NAME,
            Some(cluster_name),
            now,
            ca_validity,
        )?;
        Ok(Self {
            ca: ca.into_cert_key_pair(),
            etcd_ca: etcd_ca.into_cert_key_pair(),
            front_proxy_ca: front_proxy_ca.into_cert_key_pair(),
            service_account: ServiceAccountKey::generate()?,
        })
    }

    /// Issues every certificate one control-plane member needs.
    pub fn issue_member_certs(
        &self,
        member: &MemberIdentity,
        sans: &ApiServerSans,
        now: DateTime<Utc>,
        validity: TimeDelta,
    ) -> Result<MemberCerts, PkiError> {
        let ca = self.ca.signer()?;
        let etcd_ca = self.etcd_ca.signer()?;
        let front_proxy_ca = self.front_proxy_ca.signer()?;
        let member_name = SubjectAltName::dns(&member.name)?;
        let etcd_sans = vec![
            SubjectAltName::Dns("localhost".into()),
            member_name,
            SubjectAltName::Ip(member.address),
            SubjectAltName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        let client = |what, common_name, organizations| Leaf {
            what,
            common_name,
            organizations,
            sans: Vec::new(),
            usages: Usages::Client,
        };
        let issue = |ca: &Ca, leaf: Leaf<'_>| ca.issue(&leaf, now, validity);

        Ok(MemberCerts {
            apiserver: issue(
                &ca,
                Leaf {
                    what: "apiserver",
                    common_name: "kube-apiserver",
                    organizations: &[],
                    sans: sans.for_member(member)?,
                    usages: Usages::Server,
                },
            )?,
            apiserver_kubelet_client: issue(
                &ca,
                client(
                    "apiserver-kubelet-client",
                    APISERVER_KUBELET_CLIENT_CN,
                    &[MASTERS_GROUP],
                ),
            )?,
            apiserver_etcd_client: issue(
                &etcd_ca,
                client("apiserver-etcd-client", APISERVER_ETCD_CLIENT_CN, &[]),
            )?,
            etcd_server: issue(
                &etcd_ca,
                Leaf {
                    what: "etcd server",
                    common_name: &member.name,
                    organizations: &[],
                    sans: etcd_sans.clone(),
                    usages: Usages::ServerAndClient,
                },
            )?,
            etcd_peer: issue(
                &etcd_ca,
                Leaf {
                    what: "etcd peer",
                    common_name: &member.name,
                    organizations: &[],
                    sans: etcd_sans,
                    usages: Usages::ServerAndClient,
                },
            )?,
            etcd_healthcheck_client: issue(
                &etcd_ca,
                client("etcd healthcheck client", ETCD_HEALTHCHECK_CLIENT_CN, &[]),
            )?,
            front_proxy_client: issue(
                &front_proxy_ca,
                client("front-proxy-client", FRONT_PROXY_CLIENT_CN, &[]),
            )?,
            controller_manager_client: issue(
                &ca,
                client("controller-manager", CONTROLLER_MANAGER_USER, &[]),
            )?,
            scheduler_client: issue(&ca, client("scheduler", SCHEDULER_USER, &[]))?,
            admin_client: issue(&ca, client("admin", ADMIN_USER, &[MASTERS_GROUP]))?,
        })
    }

    /// When the CAs (and, given the apiserver certs, the earliest of those)
    /// expire: the cluster's `certificates` field.
    pub fn expiries<'a>(
        &self,
        apiserver_certs: impl IntoIterator<Item = &'a CertKeyPair>,
    ) -> CertificateExpiries {
        CertificateExpiries {
            ca_expires_at: self.ca.not_after,
            etcd_ca_expires_at: self.etcd_ca.not_after,
            front_proxy_ca_expires_at: self.front_proxy_ca.not_after,
            apiserver_expires_at: apiserver_certs.into_iter().map(|c| c.not_after).min(),
        }
    }
}

/// Expiry dates shown in a cluster's `certificates` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertificateExpiries {
    pub ca_expires_at: DateTime<Utc>,
    pub etcd_ca_expires_at: DateTime<Utc>,
    pub front_proxy_ca_expires_at: DateTime<Utc>,
    /// The earliest expiry among the control-plane members' serving certs;
    /// absent until a member has one.
    pub apiserver_expires_at: Option<DateTime<Utc>>,
}

/// One control-plane member: its machine name (also its etcd member name)
/// and the address its apiserver and etcd listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberIdentity {
    pub name: String,
    pub address: IpAddr,
}

/// A subject alternative name: an IP address, a DNS name, or a URI
/// (which names a holder rather than a host, e.g.
/// `kubeforge://clusters/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubjectAltName {
    Ip(IpAddr),
    Dns(String),
    Uri(String),
}

impl SubjectAltName {
    /// An IP address if `value` is one, otherwise a DNS name (checked).
    pub fn parse(value: &str) -> Result<Self, PkiError> {
        match value.parse::<IpAddr>() {
            Ok(ip) => Ok(Self::Ip(ip)),
            Err(_) => Self::dns(value),
        }
    }

    /// A DNS name: lowercase DNS-1123 labels joined by dots.
    pub fn dns(value: &str) -> Result<Self, PkiError> {
        check_dns_name(value)?;
        Ok(Self::Dns(value.to_string()))
    }

    /// A URI: a lowercase scheme, `:`, then visible ASCII only (no spaces
    /// or control characters), 255 bytes at most.
    pub fn uri(value: &str) -> Result<Self, PkiError> {
        check_uri(value)?;
        Ok(Self::Uri(value.to_string()))
    }

    fn to_rcgen(&self) -> Result<SanType, PkiError> {
        match self {
            Self::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            Self::Dns(name) => {
                check_dns_name(name)?;
                let name = name
                    .as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| invalid_dns(name, e.to_string()))?;
                Ok(SanType::DnsName(name))
            }
            Self::Uri(uri) => {
                check_uri(uri)?;
                let uri = uri
                    .as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| invalid_uri(uri, e.to_string()))?;
                Ok(SanType::URI(uri))
            }
        }
    }
}

impl From<IpAddr> for SubjectAltName {
    fn from(ip: IpAddr) -> Self {
        Self::Ip(ip)
    }
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Dns(name) | Self::Uri(name) => f.write_str(name),
        }
    }
}

/// Where clients reach the apiserver, for its serving cert's SANs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServerSans {
    /// The stable endpoint (load balancer, VIP, or the single member).
    pub endpoint_addresses: Vec<SubjectAltName>,
    /// Every control-plane member's address, so any of them can be
    /// reached directly with the same trust.
    pub member_addresses: Vec<IpAddr>,
    /// The `kubernetes` service's cluster IP: the first of the service CIDR.
    pub first_service_ip: IpAddr,
    pub cluster_domain: String,
}

impl ApiServerSans {
    /// SANs with the default cluster domain, `cluster.local`.
    pub fn new(
        endpoint_addresses: Vec<SubjectAltName>,
        member_addresses: Vec<IpAddr>,
        first_service_ip: IpAddr,
    ) -> Self {
        Self {
            endpoint_addresses,
            member_addresses,
            first_service_ip,
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
        }
    }

    /// The serving cert SANs of one member's apiserver, without duplicates:
    /// the in-cluster names, localhost, the endpoint, the service IP and
    /// every control-plane address (the member's own included even if the
    /// list does not have it yet, as while it is being added).
    pub fn for_member(&self, member: &MemberIdentity) -> Result<Vec<SubjectAltName>, PkiError> {
        check_dns_name(&self.cluster_domain)?;
        let mut sans = vec![
            SubjectAltName::Dns("kubernetes".into()),
            SubjectAltName::Dns("kubernetes.default".into()),
            SubjectAltName::Dns("kubernetes.default.svc".into()),
            SubjectAltName::Dns(format!("kubernetes.default.svc.{}", self.cluster_domain)),
            SubjectAltName::Dns("localhost".into()),
        ];
        sans.extend(self.endpoint_addresses.iter().cloned());
        sans.push(SubjectAltName::Ip(self.first_service_ip));
        sans.push(SubjectAltName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        sans.push(SubjectAltName::Ip(member.address));
        sans.extend(
            self.member_addresses
                .iter()
                .copied()
                .map(SubjectAltName::Ip),
        );

        let mut unique: Vec<SubjectAltName> = Vec::with_capacity(sans.len());
        for san in sans {
            if !unique.contains(&san) {
                unique.push(san);
            }
        }
        Ok(unique)
    }
}

/// Everything one control-plane member needs, by file it ends up in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCerts {
    /// `apiserver.crt`: serving cert, cluster CA.
    pub apiserver: CertKeyPair,
    /// `apiserver-kubelet-client.crt`: cluster CA, `system:masters`.
    pub apiserver_kubelet_client: CertKeyPair,
    /// `apiserver-etcd-client.crt`: etcd CA.
    pub apiserver_etcd_client: CertKeyPair,
    /// `etcd/server.crt`: etcd CA.
    pub etcd_server: CertKeyPair,
    /// `etcd/peer.crt`: etcd CA.
    pub etcd_peer: CertKeyPair,
    /// `etcd/healthcheck-client.crt`: etcd CA, for `etcdctl endpoint health`.
    pub etcd_healthcheck_client: CertKeyPair,
    /// `front-proxy-client.crt`: front-proxy CA.
    pub front_proxy_client: CertKeyPair,
    /// In `controller-manager.conf`: cluster CA.
    pub controller_manager_client: CertKeyPair,
    /// In `scheduler.conf`: cluster CA.
    pub scheduler_client: CertKeyPair,
    /// In `admin.conf`: cluster CA, `system:masters`.
    pub admin_client: CertKeyPair,
}

/// Issues a client certificate, as for a kubeconfig: `common_name` is the
/// Kubernetes user, `organizations` its group: none, or one
/// (for tenants' kubeconfigs, `crate::credentials::group`: never
/// [`MASTERS_GROUP`], which only the service's internal `admin.conf`
/// carries); more than one is refused.
///
/// Valid from [`CLOCK_SKEW_ALLOWANCE`] before `now` until `now + ttl`
/// (or the CA's expiry, if sooner). The serial is random; audit it.
pub fn issue_client_cert(
    ca: &Ca,
    common_name: &str,
    organizations: &[&str],
    now: DateTime<Utc>,
    ttl: TimeDelta,
) -> Result<CertKeyPair, PkiError> {
    issue_client_cert_with_sans(ca, common_name, organizations, &[], now, ttl)
}

/// Issues a client certificate like [`issue_client_cert`] that also names
/// its holder in subject alternative names (typically one
/// [`SubjectAltName::Uri`]), for services that authorize by them rather
/// than by a Kubernetes user name. clientAuth only.
pub fn issue_client_cert_with_sans(
    ca: &Ca,
    common_name: &str,
    organizations: &[&str],
    sans: &[SubjectAltName],
    now: DateTime<Utc>,
    ttl: TimeDelta,
) -> Result<CertKeyPair, PkiError> {
    let leaf = Leaf {
        what: "client",
        common_name,
        organizations,
        sans: sans.to_vec(),
        usages: Usages::Client,
    };
    ca.issue(&leaf, now, ttl)
}

/// Issues a serving certificate (serverAuth only) for `sans`, at least
/// one: TLS clients check the name they dialled against the SANs, never
/// the common name. Valid from [`CLOCK_SKEW_ALLOWANCE`] before `now` for
/// `validity` (or until the CA's expiry, if sooner).
pub fn issue_server_cert(
    ca: &Ca,
    common_name: &str,
    sans: &[SubjectAltName],
    now: DateTime<Utc>,
    validity: TimeDelta,
) -> Result<CertKeyPair, PkiError> {
    if sans.is_empty() {
        return Err(PkiError::InvalidName {
            what: "subject alternative name list",
            value: String::new(),
            reason: "a serving certificate needs at least one DNS name or IP address".into(),
        });
    }
    let leaf = Leaf {
        what: "server",
        common_name,
        organizations: &[],
        sans: sans.to_vec(),
        usages: Usages::Server,
    };
    ca.issue(&leaf, now, validity)
}

/// What a leaf certificate says about its holder, read from its DER: for
/// a service that has already verified the chain (the TLS layer) and now
/// decides who is calling. Says nothing about whether to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSubject {
    /// Every CN of the subject, in order (ours carry exactly one).
    pub common_names: Vec<String>,
    /// Every O of the subject, in order.
    pub organizations: Vec<String>,
    /// The URI subject alternative names, in order.
    pub uris: Vec<String>,
    /// Lowercase hex of the serial number, as openssl prints it.
    pub serial_hex: String,
    /// Whether the certificate is a CA (basicConstraints cA).
    pub is_ca: bool,
    /// Whether extendedKeyUsage allows clientAuth (absent: any use).
    pub client_auth: bool,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Reads [`LeafSubject`] from one DER certificate; refuses trailing bytes
/// and subject values that are not text.
pub fn read_leaf_der(der: &[u8]) -> Result<LeafSubject, PkiError> {
    use x509_parser::extensions::GeneralName;
    let invalid = |reason: String| PkiError::InvalidPem {
        what: "certificate",
        reason,
    };
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid(format!(
            "{} bytes after the certificate",
            rest.len()
        )));
    }
    let text = |what: &str, a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str()
            .map(str::to_string)
            .map_err(|_| invalid(format!("a subject {what} that is not text")))
    };
    let common_names = cert
        .subject()
        .iter_common_name()
        .map(|a| text("common name", a))
        .collect::<Result<Vec<_>, _>>()?;
    let organizations = cert
        .subject()
        .iter_organization()
        .map(|a| text("organization", a))
        .collect::<Result<Vec<_>, _>>()?;
    let uris = cert
        .subject_alternative_name()
        .map_err(|e| invalid(e.to_string()))?
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => Some((*uri).to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| invalid(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    let client_auth = cert
        .extended_key_usage()
        .map_err(|e| invalid(e.to_string()))?
        .is_none_or(|eku| eku.value.client_auth || eku.value.any);
    let time = |t: x509_parser::time::ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| invalid("validity out of range".into()))
    };
    let serial = cert.raw_serial();
    let significant = serial
        .iter()
        .position(|b| *b != 0)
        .map_or(&serial[serial.len()..], |i| &serial[i..]);
    Ok(LeafSubject {
        common_names,
        organizations,
        uris,
        serial_hex: to_hex(significant),
        is_ca,
        client_auth,
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
    })
}

/// What one leaf certificate says about its holder.
struct Leaf<'a> {
    /// For error messages.
    what: &'a str,
    common_name: &'a str,
    organizations: &'a [&'a str],
    sans: Vec<SubjectAltName>,
    usages: Usages,
}

#[derive(Clone, Copy)]
enum Usages {
    Server,
    Client,
    ServerAndClient,
}

impl Usages {
    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Self::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Self::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Self::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

/// `notBefore`/`notAfter`, truncated to whole seconds as X.509 stores them.
struct ValidityWindow {
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

impl ValidityWindow {
    fn starting_at(now: DateTime<Utc>, validity: TimeDelta, what: &str) -> Result<Self, PkiError> {
        if validity <= TimeDelta::zero() {
            return Err(PkiError::InvalidValidity {
                what: what.to_string(),
                validity,
            });
        }
        let out_of_range = || PkiError::TimeOutOfRange(format!("{now} + {validity}"));
        let not_before = now
            .checked_sub_signed(CLOCK_SKEW_ALLOWANCE)
            .ok_or_else(out_of_range)?;
        let not_after = now.checked_add_signed(validity).ok_or_else(out_of_range)?;
        Ok(Self {
            not_before: whole_seconds(not_before),
            not_after: whole_seconds(not_after),
        })
    }

    fn asn1_not_before(&self) -> Result<OffsetDateTime, PkiError> {
        to_asn1_time(self.not_before)
    }

    fn asn1_not_after(&self) -> Result<OffsetDateTime, PkiError> {
        to_asn1_time(self.not_after)
    }
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// X.509 times run from 1950 (UTCTime) to 9999 (GeneralizedTime).
fn to_asn1_time(t: DateTime<Utc>) -> Result<OffsetDateTime, PkiError> {
    use chrono::Datelike;
    if !(1950..=9999).contains(&t.year()) {
        return Err(PkiError::TimeOutOfRange(t.to_string()));
    }
    OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(|_| PkiError::TimeOutOfRange(t.to_string()))
}

/// 16 random bytes with the top bit clear (a positive INTEGER needs no
/// padding byte) and the next one set (always exactly 16 bytes long, so
/// the hex form is stable): 126 bits of randomness.
fn random_serial() -> [u8; 16] {
    use rand::RngCore;
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x40;
    serial
}

fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `O=<group>, CN=<user>`. rcgen keeps one value per attribute type, so a
/// certificate carries at most one group; refusing more is better than
/// silently dropping all but the last.
fn subject_name(common_name: &str, organizations: &[&str]) -> Result<DistinguishedName, PkiError> {
    check_subject_value("common name", common_name)?;
    let mut dn = DistinguishedName::new();
    match organizations {
        [] => {}
        [org] => {
            check_subject_value("organization", org)?;
            dn.push(DnType::OrganizationName, *org);
        }
        _ => {
            return Err(PkiError::InvalidName {
                what: "organization list",
                value: organizations.join(","),
                reason: "a certificate carries at most one organization (group)".into(),
            })
        }
    }
    dn.push(DnType::CommonName, common_name);
    Ok(dn)
}

/// User and group names become Kubernetes identities; refuse anything a
/// person could not read back unambiguously.
fn check_subject_value(what: &'static str, value: &str) -> Result<(), PkiError> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.len() > 64 {
        "must be at most 64 bytes (X.509 upper bound)"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else if value.trim() != value {
        "must not start or end with whitespace"
    } else {
        return Ok(());
    };
    Err(PkiError::InvalidName {
        what,
        value: value.to_string(),
        reason: reason.to_string(),
    })
}

fn invalid_dns(value: &str, reason: impl Into<String>) -> PkiError {
    PkiError::InvalidName {
        what: "DNS name",
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn invalid_uri(value: &str, reason: impl Into<String>) -> PkiError {
    PkiError::InvalidName {
        what: "URI",
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `scheme:rest`: a scheme of lowercase letters, digits, '+', '-', '.'
/// starting with a letter, then visible ASCII; 255 bytes at most.
fn check_uri(value: &str) -> Result<(), PkiError> {
    let Some((scheme, rest)) = value.split_once(':') else {
        return Err(invalid_uri(value, "must be scheme:rest"));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err(invalid_uri(
            value,
            "the scheme must be lowercase letters, digits, '+', '-' or '.', starting with a letter",
        ));
    }
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid_uri(
            value,
            "must continue with visible ASCII after the scheme",
        ));
    }
    if value.len() > 255 {
        return Err(invalid_uri(value, "must be at most 255 bytes"));
    }
    Ok(())
}

/// A DNS-1123 subdomain: lowercase labels of 1 to 63 characters of
/// letters, digits and '-', not starting or ending with '-'; 253 at most.
fn check_dns_name(value: &str) -> Result<(), PkiError> {
    crate::names::check_dns_subdomain(value).map_err(|why| invalid_dns(value, why))
}

fn load_key(key_pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidPem {
        what: "private key",
        reason: e.to_string(),
    })
}

/// What the service needs to know about a stored certificate.
struct CertificateInfo {
    subject: String,
    serial_hex: String,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    spki_der: Vec<u8>,
    may_sign_certificates: bool,
}

fn inspect_certificate(cert_pem: &str) -> Result<CertificateInfo, PkiError> {
    let invalid = |reason: String| PkiError::InvalidPem {
        what: "certificate",
        reason,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| invalid(format!("no PEM block: {e}")))?;
    if pem.label != "CERTIFICATE" {
        return Err(invalid(format!(
            "expected a CERTIFICATE block, found {:?}",
            pem.label
        )));
    }
    let cert = pem
        .parse_x509()
        .map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;

    let time = |t: x509_parser::time::ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| invalid("validity out of range".into()))
    };
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| invalid(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    let can_sign = cert
        .key_usage()
        .map_err(|e| invalid(e.to_string()))?
        .is_none_or(|ku| ku.value.key_cert_sign());
    let serial = cert.raw_serial();
    let significant = serial
        .iter()
        .position(|b| *b != 0)
        .map_or(&serial[serial.len()..], |i| &serial[i..]);

    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        serial_hex: to_hex(significant),
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
        spki_der: cert.public_key().raw.to_vec(),
        may_sign_certificates: is_ca && can_sign,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::HashSet;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::Pem;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 14, 15, 9, 26).unwrap()
    }

    fn cluster_name() -> ClusterName {
        ClusterName::parse("demo").unwrap()
    }

    fn pki() -> ClusterPki {
        ClusterPki::generate(&cluster_name(), now(), DEFAULT_CA_VALIDITY).unwrap()
    }

    fn member() -> MemberIdentity {
        MemberIdentity {
            name: "demo-cp-0".into(),
            address: "10.77.0.11".parse().unwrap(),
        }
    }

    fn sans() -> ApiServerSans {
        ApiServerSans::new(
            vec![
                SubjectAltName::parse("10.77.0.10").unwrap(),
                SubjectAltName::parse("api.demo.example").unwrap(),
            ],
            vec![
                "10.77.0.11".parse().unwrap(),
                "10.77.0.12".parse().unwrap(),
                "10.77.0.13".parse().unwrap(),
            ],
            "10.96.0.1".parse().unwrap(),
        )
    }

    fn pem_of(cert_pem: &str) -> Pem {
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .unwrap()
            .1
    }

    fn common_names(cert: &X509Certificate<'_>) -> Vec<String> {
        cert.subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    }

    fn organizations(cert: &X509Certificate<'_>) -> Vec<String> {
        cert.subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    }

    fn issuer_cn(cert: &X509Certificate<'_>) -> String {
        cert.issuer()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    fn san_strings(cert: &X509Certificate<'_>) -> Vec<String> {
        let Some(ext) = cert.subject_alternative_name().unwrap() else {
            return Vec::new();
        };
        ext.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                GeneralName::IPAddress(bytes) => {
                    let ip: IpAddr = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).unwrap().into(),
                        16 => <[u8; 16]>::try_from(*bytes).unwrap().into(),
                        n => panic!("IP SAN of {n} bytes"),
                    };
                    format!("IP:{ip}")
                }
                GeneralName::URI(uri) => format!("URI:{uri}"),
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect()
    }

    fn assert_verifies(leaf_pem: &str, ca_pem: &str) {
        let leaf_pem = pem_of(leaf_pem);
        let ca_pem = pem_of(ca_pem);
        let leaf = leaf_pem.parse_x509().unwrap();
        let ca = ca_pem.parse_x509().unwrap();
        leaf.verify_signature(Some(ca.public_key()))
            .expect("leaf signature verifies against its CA");
        assert_eq!(leaf.issuer(), ca.subject(), "issuer is the CA's subject");
        let aki = leaf
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .expect("leaf has an authority key identifier");
        let ski = ca
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ski) => {
                    Some(ski.0.to_vec())
                }
                _ => None,
            })
            .expect("CA has a subject key identifier");
        assert_eq!(aki, ski, "leaf's AKI names its CA's key");
    }

    fn assert_does_not_verify(leaf_pem: &str, other_ca_pem: &str) {
        let leaf_pem = pem_of(leaf_pem);
        let ca_pem = pem_of(other_ca_pem);
        let leaf = leaf_pem.parse_x509().unwrap();
        let ca = ca_pem.parse_x509().unwrap();
        assert!(leaf.verify_signature(Some(ca.public_key())).is_err());
    }

    #[test]
    fn cas_are_self_signed_path_length_zero_signing_only() {
        let pki = pki();
        for (pair, cn) in [
            (&pki.ca, CLUSTER_CA_COMMON_NAME),
            (&pki.etcd_ca, ETCD_CA_COMMON_NAME),
            (&pki.front_proxy_ca, FRONT_PROXY_CA_COMMON_NAME),
        ] {
            let pem = pem_of(&pair.cert_pem);
            let cert = pem.parse_x509().unwrap();
            assert_eq!(common_names(&cert), [cn]);
            assert_eq!(organizations(&cert), ["kubeforge"]);
            assert_eq!(
                cert.subject().to_string(),
                format!("CN={cn}, O=kubeforge, OU=demo")
            );
            assert_eq!(cert.issuer(), cert.subject());
            cert.verify_signature(None).unwrap();

            let bc = cert.basic_constraints().unwrap().unwrap();
            assert!(bc.critical, "basicConstraints is critical");
            assert!(bc.value.ca);
            assert_eq!(bc.value.path_len_constraint, Some(0));
            let ku = cert.key_usage().unwrap().unwrap();
            assert!(ku.critical, "keyUsage is critical");
            assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
            assert_eq!(
                ku.value.flags.count_ones(),
                2,
                "{cn}: only certSign+cRLSign"
            );
            assert!(cert.extended_key_usage().unwrap().is_none());

            let validity = cert.validity();
            assert_eq!(
                validity.not_before.timestamp(),
                (now() - TimeDelta::minutes(1)).timestamp()
            );
            assert_eq!(
                validity.not_after.timestamp(),
                (now() + DEFAULT_CA_VALIDITY).timestamp()
            );
            assert_eq!(pair.not_before, now() - TimeDelta::minutes(1));
            assert_eq!(pair.not_after, now() + DEFAULT_CA_VALIDITY);
            assert_eq!(pair.serial_hex, to_hex(cert.raw_serial()));
            assert_eq!(pair.serial_hex.len(), 32);
        }
    }

    #[test]
    fn service_account_public_key_matches_private_key() {
        let sa = pki().service_account;
        assert!(sa
            .private_key_pem
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(sa.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        let key = KeyPair::from_pem(&sa.private_key_pem).unwrap();
        assert_eq!(key.public_key_pem(), sa.public_key_pem);
        assert!(!format!("{sa:?}").contains(&sa.private_key_pem));
    }

    struct Expected<'a> {
        name: &'a str,
        pair: &'a CertKeyPair,
        ca: &'a CertKeyPair,
        cn: &'a str,
        orgs: &'a [&'a str],
        sans: Vec<&'a str>,
        server_auth: bool,
        client_auth: bool,
    }

    #[test]
    fn member_certs_have_the_kubeadm_subjects_sans_usages_and_issuers() {
        let pki = pki();
        let certs = pki
            .issue_member_certs(&member(), &sans(), now(), DEFAULT_LEAF_VALIDITY)
            .unwrap();
        let etcd_sans = vec![
            "DNS:localhost",
            "DNS:demo-cp-0",
            "IP:10.77.0.11",
            "IP:127.0.0.1",
        ];
        let expected = [
            Expected {
                name: "apiserver",
                pair: &certs.apiserver,
                ca: &pki.ca,
                cn: "kube-apiserver",
                orgs: &[],
                sans: vec![
                    "DNS:kubernetes",
                    "DNS:kubernetes.default",
                    "DNS:kubernetes.default.svc",
                    "DNS:kubernetes.default.svc.cluster.local",
                    "DNS:localhost",
                    "IP:10.77.0.10",
                    "DNS:api.demo.example",
                    "IP:10.96.0.1",
                    "IP:127.0.0.1",
                    "IP:10.77.0.11",
                    "IP:10.77.0.12",
                    "IP:10.77.0.13",
                ],
                server_auth: true,
                client_auth: false,
            },
            Expected {
                name: "apiserver-kubelet-client",
                pair: &certs.apiserver_kubelet_client,
                ca: &pki.ca,
                cn: "kube-apiserver-kubelet-client",
                orgs: &["system:masters"],
                sans: vec![],
                server_auth: false,
                client_auth: true,
            },
            Expected {
                name: "apiserver-etcd-client",
                pair: &certs.apiserver_etcd_client,
                ca: &pki.etcd_ca,
                cn: "kube-apiserver-etcd-client",
                orgs: &[],
                sans: vec![],
                server_auth: false,
                client_auth: true,
            },
            Expected {
                name: "etcd server",
                pair: &certs.etcd_server,
                ca: &pki.etcd_ca,
                cn: "demo-cp-0",
                orgs: &[],
                sans: etcd_sans.clone(),
                server_auth: true,
                client_auth: true,
            },
            Expected {
                name: "etcd peer",
                pair: &certs.etcd_peer,
                ca: &pki.etcd_ca,
                cn: "demo-cp-0",
                orgs: &[],
                sans: etcd_sans,
                server_auth: true,
                client_auth: true,
            },
            Expected {
                name: "etcd healthcheck client",
                pair: &certs.etcd_healthcheck_client,
                ca: &pki.etcd_ca,
                cn: "kube-etcd-healthcheck-client",
                orgs: &[],
                sans: vec![],
                server_auth: false,
                client_auth: true,
            },
            Expected {
                name: "front-proxy-client",
                pair: &certs.front_proxy_client,
                ca: &pki.front_proxy_ca,
                cn: "front-proxy-client",
                orgs: &[],
                sans: vec![],
                server_auth: false,
                client_auth: true,
            },
            Expected {
                name: "controller-manager",
                pair: &certs.controller_manager_client,
                ca: &pki.ca,
                cn: "system:kube-controller-manager",
                orgs: &[],
                sans: vec![],
                server_auth: false,
                client_auth: true,
            },
            Expected {
                name: "scheduler",
                pair: &certs.scheduler_client,
                ca: &pki.ca,
                cn: "system:kube-scheduler",
                orgs: &[],
                sans: vec![],
                server_auth: false,
                client_auth: true,
            },
            Expected {
                name: "admin",
                pair: &certs.admin_client,
                ca: &pki.ca,
                cn: "kubernetes-admin",
                orgs: &["system:masters"],
                sans: vec![],
                server_auth: false,
                client_auth: true,
            },
        ];

        let ca_cns = [
            (&pki.ca, CLUSTER_CA_COMMON_NAME),
            (&pki.etcd_ca, ETCD_CA_COMMON_NAME),
            (&pki.front_proxy_ca, FRONT_PROXY_CA_COMMON_NAME),
        ];
        for e in &expected {
            let pem = pem_of(&e.pair.cert_pem);
            let cert = pem.parse_x509().unwrap();
            let name = e.name;
            assert_eq!(common_names(&cert), [e.cn], "{name}: CN");
            assert_eq!(organizations(&cert), e.orgs, "{name}: O");
            let ca_cn = ca_cns.iter().find(|(ca, _)| *ca == e.ca).unwrap().1;
            assert_eq!(issuer_cn(&cert), ca_cn, "{name}: issuer");
            assert_eq!(san_strings(&cert), e.sans, "{name}: SANs");

            let bc = cert.basic_constraints().unwrap().unwrap();
            assert!(!bc.value.ca, "{name}: not a CA");
            assert!(!cert.is_ca());
            let ku = cert.key_usage().unwrap().unwrap();
            assert!(ku.value.digital_signature(), "{name}: digitalSignature");
            assert!(!ku.value.key_cert_sign(), "{name}: cannot sign certs");
            assert_eq!(ku.value.flags.count_ones(), 1, "{name}: key usages");
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert_eq!(eku.server_auth, e.server_auth, "{name}: serverAuth");
            assert_eq!(eku.client_auth, e.client_auth, "{name}: clientAuth");
            assert!(!eku.any && eku.other.is_empty() && !eku.code_signing);

            let validity = cert.validity();
            let expected_not_before = now() - CLOCK_SKEW_ALLOWANCE;
            let expected_not_after = now() + DEFAULT_LEAF_VALIDITY;
            assert_eq!(
                validity.not_before.timestamp(),
                expected_not_before.timestamp()
            );
            assert_eq!(
                validity.not_after.timestamp(),
                expected_not_after.timestamp()
            );
            assert_eq!(e.pair.not_before, expected_not_before, "{name}");
            assert_eq!(e.pair.not_after, expected_not_after, "{name}");
            assert_eq!(e.pair.serial_hex, to_hex(cert.raw_serial()), "{name}");

            assert_verifies(&e.pair.cert_pem, &e.ca.cert_pem);
            for (other, _) in ca_cns.iter().filter(|(ca, _)| *ca != e.ca) {
                assert_does_not_verify(&e.pair.cert_pem, &other.cert_pem);
            }

            let reloaded = CertKeyPair::from_pem(&e.pair.cert_pem, &e.pair.key_pem).unwrap();
            assert_eq!(&reloaded, e.pair, "{name}: reload gives the same pair");
        }

        let serials: HashSet<&str> = expected
            .iter()
            .map(|e| e.pair.serial_hex.as_str())
            .chain([
                pki.ca.serial_hex.as_str(),
                pki.etcd_ca.serial_hex.as_str(),
                pki.front_proxy_ca.serial_hex.as_str(),
            ])
            .collect();
        assert_eq!(serials.len(), expected.len() + 3, "serials are unique");
    }

    #[test]
    fn apiserver_sans_include_the_member_and_dedupe() {
        let sans = ApiServerSans {
            endpoint_addresses: vec![SubjectAltName::Ip("10.0.0.5".parse().unwrap())],
            member_addresses: vec!["10.0.0.5".parse().unwrap()],
            first_service_ip: "10.32.0.1".parse().unwrap(),
            cluster_domain: "corp.internal".into(),
        };
        let member = MemberIdentity {
            name: "solo".into(),
            address: "10.0.0.5".parse().unwrap(),
        };
        let got: Vec<String> = sans
            .for_member(&member)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.corp.internal",
                "localhost",
                "10.0.0.5",
                "10.32.0.1",
                "127.0.0.1",
            ]
        );
    }

    #[test]
    fn a_ca_reloaded_from_pem_signs_certs_that_verify_against_the_original() {
        let pki = pki();
        let reloaded = Ca::from_pem(&pki.ca.cert_pem, &pki.ca.key_pem).unwrap();
        assert_eq!(reloaded.cert_key_pair(), &pki.ca);
        assert_eq!(reloaded.not_after(), pki.ca.not_after);
        let admin = issue_client_cert(
            &reloaded,
            ADMIN_USER,
            &[MASTERS_GROUP],
            now(),
            TimeDelta::hours(1),
        )
        .unwrap();
        assert_verifies(&admin.cert_pem, &pki.ca.cert_pem);
        let pem = pem_of(&admin.cert_pem);
        let cert = pem.parse_x509().unwrap();
        assert_eq!(
            cert.issuer().to_string(),
            "CN=kubernetes-ca, O=kubeforge, OU=demo"
        );

        let via_signer = pki.etcd_ca.signer().unwrap();
        let client =
            issue_client_cert(&via_signer, "etcdctl", &[], now(), TimeDelta::hours(1)).unwrap();
        assert_verifies(&client.cert_pem, &pki.etcd_ca.cert_pem);
    }

    #[test]
    fn client_certs_are_short_lived_backdated_and_carry_their_groups() {
        let pki = pki();
        let ca = pki.ca.signer().unwrap();
        let viewer =
            issue_client_cert(&ca, "alice", &[VIEWER_GROUP], now(), TimeDelta::minutes(30))
                .unwrap();
        let pem = pem_of(&viewer.cert_pem);
        let cert = pem.parse_x509().unwrap();
        assert_eq!(common_names(&cert), ["alice"]);
        assert_eq!(organizations(&cert), ["kubeforge:viewers"]);
        assert_eq!(cert.subject().to_string(), "O=kubeforge:viewers, CN=alice");
        assert!(san_strings(&cert).is_empty());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(viewer.not_before, now() - TimeDelta::minutes(1));
        assert_eq!(viewer.not_after, now() + TimeDelta::minutes(30));
        assert_eq!(
            cert.validity().not_after.timestamp(),
            (now() + TimeDelta::minutes(30)).timestamp()
        );
        assert_eq!(viewer.serial_hex.len(), 32, "128-bit serial");
        assert!(viewer.serial_hex.bytes().all(|b| b.is_ascii_hexdigit()));

        let groups = ["system:masters", "team:a"];
        let err = issue_client_cert(&ca, "bob", &groups, now(), TimeDelta::hours(1)).unwrap_err();
        assert!(matches!(err, PkiError::InvalidName { .. }), "{err}");
    }

    #[test]
    fn client_cert_serials_are_unique() {
        let ca = pki().ca.signer().unwrap();
        let serials: HashSet<String> = (0..64)
            .map(|_| {
                issue_client_cert(&ca, "u", &[], now(), TimeDelta::hours(1))
                    .unwrap()
                    .serial_hex
            })
            .collect();
        assert_eq!(serials.len(), 64);
    }

    #[test]
    fn sub_second_now_is_truncated_to_what_the_certificate_holds() {
        let ca = pki().ca.signer().unwrap();
        let now = now() + TimeDelta::milliseconds(750);
        let pair = issue_client_cert(&ca, "u", &[], now, TimeDelta::hours(1)).unwrap();
        let reloaded = CertKeyPair::from_pem(&pair.cert_pem, &pair.key_pem).unwrap();
        assert_eq!(reloaded, pair);
    }

    #[test]
    fn leaves_never_outlive_their_ca() {
        let short = ClusterPki::generate(&cluster_name(), now(), TimeDelta::hours(2)).unwrap();
        let ca = short.ca.signer().unwrap();
        let pair = issue_client_cert(&ca, "u", &[], now(), TimeDelta::days(30)).unwrap();
        assert_eq!(pair.not_after, short.ca.not_after);
        let pem = pem_of(&pair.cert_pem);
        assert_eq!(
            pem.parse_x509().unwrap().validity().not_after.timestamp(),
            short.ca.not_after.timestamp()
        );
    }

    #[test]
    fn an_expired_ca_refuses_to_sign() {
        let pki = pki();
        let ca = pki.ca.signer().unwrap();
        let later = pki.ca.not_after + TimeDelta::seconds(1);
        let err = issue_client_cert(&ca, "u", &[], later, TimeDelta::hours(1)).unwrap_err();
        assert!(matches!(err, PkiError::CaExpired { .. }), "{err}");
        let err = pki
            .issue_member_certs(&member(), &sans(), later, DEFAULT_LEAF_VALIDITY)
            .unwrap_err();
        assert!(matches!(err, PkiError::CaExpired { .. }), "{err}");
    }

    #[test]
    fn non_positive_validity_is_refused() {
        let ca = pki().ca.signer().unwrap();
        for ttl in [TimeDelta::zero(), TimeDelta::seconds(-5)] {
            let err = issue_client_cert(&ca, "u", &[], now(), ttl).unwrap_err();
            assert!(matches!(err, PkiError::InvalidValidity { .. }), "{err}");
        }
        let err = ClusterPki::generate(&cluster_name(), now(), TimeDelta::zero()).unwrap_err();
        assert!(matches!(err, PkiError::InvalidValidity { .. }), "{err}");
    }

    #[test]
    fn times_outside_x509_range_are_refused() {
        let far = Utc.with_ymd_and_hms(9999, 12, 31, 0, 0, 0).unwrap();
        let err = ClusterPki::generate(&cluster_name(), far, TimeDelta::days(2)).unwrap_err();
        assert!(matches!(err, PkiError::TimeOutOfRange(_)), "{err}");
    }

    #[test]
    fn reloading_refuses_mismatched_keys_garbage_and_leaves() {
        let pki = pki();
        let err = Ca::from_pem(&pki.ca.cert_pem, &pki.etcd_ca.key_pem).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
        assert!(!err.to_string().contains("PRIVATE KEY"));

        let err = Ca::from_pem("not a certificate", &pki.ca.key_pem).unwrap_err();
        assert!(
            matches!(
                err,
                PkiError::InvalidPem {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );
        let err = Ca::from_pem(&pki.ca.key_pem, &pki.ca.key_pem).unwrap_err();
        assert!(
            matches!(
                err,
                PkiError::InvalidPem {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );
        let err = Ca::from_pem(&pki.ca.cert_pem, "garbage").unwrap_err();
        assert!(
            matches!(
                err,
                PkiError::InvalidPem {
                    what: "private key",
                    ..
                }
            ),
            "{err}"
        );

        let ca = pki.ca.signer().unwrap();
        let leaf = issue_client_cert(&ca, "u", &[], now(), TimeDelta::hours(1)).unwrap();
        let err = leaf.signer().unwrap_err();
        assert!(matches!(err, PkiError::NotACa { .. }), "{err}");
    }

    #[test]
    fn bad_names_are_refused_before_signing() {
        let ca = pki().ca.signer().unwrap();
        for cn in ["", " padded", "line\nbreak", &"x".repeat(65)] {
            let err = issue_client_cert(&ca, cn, &[], now(), TimeDelta::hours(1)).unwrap_err();
            assert!(matches!(err, PkiError::InvalidName { .. }), "{cn:?}: {err}");
        }
        let err = issue_client_cert(&ca, "u", &[""], now(), TimeDelta::hours(1)).unwrap_err();
        assert!(matches!(err, PkiError::InvalidName { .. }), "{err}");

        let bad_member = MemberIdentity {
            name: "Not_A_Name".into(),
            address: "10.0.0.1".parse().unwrap(),
        };
        let err = pki()
            .issue_member_certs(&bad_member, &sans(), now(), DEFAULT_LEAF_VALIDITY)
            .unwrap_err();
        assert!(matches!(err, PkiError::InvalidName { .. }), "{err}");

        let mut bad_sans = sans();
        bad_sans.endpoint_addresses = vec![SubjectAltName::Dns("-bad.example".into())];
        let err = pki()
            .issue_member_certs(&member(), &bad_sans, now(), DEFAULT_LEAF_VALIDITY)
            .unwrap_err();
        assert!(matches!(err, PkiError::InvalidName { .. }), "{err}");
    }

    #[test]
    fn subject_alt_names_parse_ips_and_dns_names() {
        assert_eq!(
            SubjectAltName::parse("fd00::1").unwrap(),
            SubjectAltName::Ip("fd00::1".parse().unwrap())
        );
        assert_eq!(
            SubjectAltName::parse("api.example.com").unwrap(),
            SubjectAltName::Dns("api.example.com".into())
        );
        for bad in [
            "",
            "UPPER.example",
            "a..b",
            "trailing.",
            "-x",
            "x-",
            "a b",
            "é.example",
        ] {
            assert!(SubjectAltName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SubjectAltName::parse(&"a".repeat(64)).is_err());
        assert!(
            SubjectAltName::parse(&["a"; 128].join(".")).is_err(),
            "255 chars"
        );
        assert!(
            SubjectAltName::parse(&["a"; 127].join(".")).is_ok(),
            "253 chars"
        );
    }

    #[test]
    fn debug_output_never_shows_private_keys() {
        let pki = pki();
        let ca = pki.ca.signer().unwrap();
        let pair = issue_client_cert(&ca, "u", &[], now(), TimeDelta::hours(1)).unwrap();
        for text in [format!("{pki:?}"), format!("{pair:?}"), format!("{ca:?}")] {
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            assert!(!text.contains(&pair.key_pem));
        }
        assert!(format!("{pair:?}").contains("[redacted]"));
    }

    #[test]
    fn expiries_summarise_cas_and_the_earliest_apiserver_cert() {
        let pki = pki();
        let none = pki.expiries([]);
        assert_eq!(none.ca_expires_at, pki.ca.not_after);
        assert_eq!(none.etcd_ca_expires_at, pki.etcd_ca.not_after);
        assert_eq!(none.front_proxy_ca_expires_at, pki.front_proxy_ca.not_after);
        assert_eq!(none.apiserver_expires_at, None);

        let early = pki
            .issue_member_certs(&member(), &sans(), now(), TimeDelta::days(10))
            .unwrap();
        let late = pki
            .issue_member_certs(&member(), &sans(), now(), TimeDelta::days(20))
            .unwrap();
        let both = pki.expiries([&late.apiserver, &early.apiserver]);
        assert_eq!(both.apiserver_expires_at, Some(now() + TimeDelta::days(10)));

        let json = serde_json::to_value(&both).unwrap();
        assert_eq!(json["ca_expires_at"], "2035-03-12T15:09:26Z");
        assert_eq!(json["apiserver_expires_at"], "2025-03-24T15:09:26Z");
        let back: CertificateExpiries = serde_json::from_value(json).unwrap();
        assert_eq!(back, both);
    }

    fn der_of(cert_pem: &str) -> Vec<u8> {
        pem_of(cert_pem).contents
    }

    #[test]
    fn a_standalone_ca_names_no_cluster_and_signs_server_and_client_leaves() {
        let ca = Ca::generate_standalone("service-ca", now(), DEFAULT_CA_VALIDITY).unwrap();
        let pem = pem_of(ca.cert_pem());
        let cert = pem.parse_x509().unwrap();
        assert_eq!(cert.subject().to_string(), "CN=service-ca, O=kubeforge");
        assert!(cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert_eq!(ca.not_after(), now() + DEFAULT_CA_VALIDITY);
        let reloaded = Ca::from_pem(ca.cert_pem(), &ca.cert_key_pair().key_pem).unwrap();
        assert_eq!(reloaded.cert_key_pair(), ca.cert_key_pair());

        let sans = [
            SubjectAltName::parse("grpc.example.com").unwrap(),
            SubjectAltName::parse("10.0.0.7").unwrap(),
        ];
        let server = issue_server_cert(&ca, "grpc", &sans, now(), DEFAULT_LEAF_VALIDITY).unwrap();
        assert_verifies(&server.cert_pem, ca.cert_pem());
        let pem = pem_of(&server.cert_pem);
        let cert = pem.parse_x509().unwrap();
        assert_eq!(common_names(&cert), ["grpc"]);
        assert_eq!(san_strings(&cert), ["DNS:grpc.example.com", "IP:10.0.0.7"]);
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert_eq!(server.not_after, now() + DEFAULT_LEAF_VALIDITY);
        CertKeyPair::from_pem(&server.cert_pem, &server.key_pem).unwrap();

        let uri = SubjectAltName::uri("kubeforge://clusters/42").unwrap();
        let client = issue_client_cert_with_sans(
            &ca,
            "cluster:42",
            &["acme"],
            std::slice::from_ref(&uri),
            now(),
            TimeDelta::days(90),
        )
        .unwrap();
        assert_verifies(&client.cert_pem, ca.cert_pem());
        let pem = pem_of(&client.cert_pem);
        let cert = pem.parse_x509().unwrap();
        assert_eq!(cert.subject().to_string(), "O=acme, CN=cluster:42");
        assert_eq!(san_strings(&cert), ["URI:kubeforge://clusters/42"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(client.not_after, now() + TimeDelta::days(90));
    }

    #[test]
    fn read_leaf_der_reports_the_subject_uris_and_usages() {
        let ca = Ca::generate_standalone("service-ca", now(), DEFAULT_CA_VALIDITY).unwrap();
        let client = issue_client_cert_with_sans(
            &ca,
            "cluster:42",
            &["acme"],
            &[SubjectAltName::uri("kubeforge://clusters/42").unwrap()],
            now(),
            TimeDelta::hours(2),
        )
        .unwrap();
        let got = read_leaf_der(&der_of(&client.cert_pem)).unwrap();
        assert_eq!(
            got,
            LeafSubject {
                common_names: vec!["cluster:42".into()],
                organizations: vec!["acme".into()],
                uris: vec!["kubeforge://clusters/42".into()],
                serial_hex: client.serial_hex.clone(),
                is_ca: false,
                client_auth: true,
                not_before: client.not_before,
                not_after: client.not_after,
            }
        );

        let server = issue_server_cert(
            &ca,
            "grpc",
            &[SubjectAltName::parse("localhost").unwrap()],
            now(),
            DEFAULT_LEAF_VALIDITY,
        )
        .unwrap();
        let got = read_leaf_der(&der_of(&server.cert_pem)).unwrap();
        assert!(!got.client_auth && got.uris.is_empty());
        let got = read_leaf_der(&der_of(ca.cert_pem())).unwrap();
        assert!(got.is_ca);

        let mut trailing = der_of(&client.cert_pem);
        trailing.push(0);
        for bad in [&b""[..], b"garbage", &trailing] {
            let err = read_leaf_der(bad).unwrap_err();
            assert!(matches!(err, PkiError::InvalidPem { .. }), "{err}");
        }
    }

    #[test]
    fn server_certs_need_a_name_and_uris_are_checked() {
        let ca = Ca::generate_standalone("service-ca", now(), DEFAULT_CA_VALIDITY).unwrap();
        let err = issue_server_cert(&ca, "grpc", &[], now(), DEFAULT_LEAF_VALIDITY).unwrap_err();
        assert!(matches!(err, PkiError::InvalidName { .. }), "{err}");
        for bad in [
            "",
            "no-scheme",
            ":empty",
            "Upper://x",
            "1abc://x",
            "kubeforge:",
            "kubeforge://a b",
            "kubeforge://line\nbreak",
            "kubeforge://é",
            &format!("kubeforge://{}", "x".repeat(250)),
        ] {
            assert!(SubjectAltName::uri(bad).is_err(), "{bad:?} accepted");
            let err = issue_client_cert_with_sans(
                &ca,
                "u",
                &[],
                &[SubjectAltName::Uri(bad.to_string())],
                now(),
                TimeDelta::hours(1),
            )
            .unwrap_err();
            assert!(
                matches!(err, PkiError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(
            SubjectAltName::uri("kubeforge://clusters/0190c3e2")
                .unwrap()
                .to_string(),
            "kubeforge://clusters/0190c3e2"
        );
        for cn in ["", " padded", "line\nbreak"] {
            let err = Ca::generate_standalone(cn, now(), DEFAULT_CA_VALIDITY).unwrap_err();
            assert!(matches!(err, PkiError::InvalidName { .. }), "{cn:?}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn read_leaf_der_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = read_leaf_der(&bytes);
        }
    }

    proptest::proptest! {
        #[test]
        fn san_parsing_never_panics_and_accepts_only_lowercase_dns(value in "\\PC{0,80}") {
            if let Ok(SubjectAltName::Dns(name)) = SubjectAltName::parse(&value) {
                proptest::prop_assert!(name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
            }
        }
    }
}
