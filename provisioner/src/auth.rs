//! Bearer tokens: HS256 JWTs whose key id, signature, algorithm, issuer,
//! audience, expiry and not-before are all checked. `alg: none` and every
//! other algorithm are refused because the validation names exactly one.
//!
//! What this module guarantees:
//! - Every token it mints carries `kid` in its header (the first 16 hex
//!   digits of the SHA-256 of the signing key, [`key_id`]), a random `jti`
//!   and `nbf` (= `iat`); a token without them, or whose `kid` names
//!   another key, is 401 before its signature is even looked at. Tokens
//!   minted before these claims existed must be minted again.
//! - A token whose `nbf` is in the future (beyond the 5 s leeway) is 401.
//! - Revocation is by `jti`: [`Revocations`] is each replica's view of the
//!   `revoked_tokens` table, refreshed at most [`REVOCATION_CACHE_TTL`]
//!   after it was loaded (the API checks it on every request), and updated
//!   at once on the replica that revoked. So a revoked token is refused at
//!   once by the replica that revoked it and within 5 s by every other.
//! - Every refusal is a 401 naming its reason ([`AuthFailure`]: expired,
//!   not yet valid, bad signature, unknown key id, revoked, malformed,
//!   rejected claims), with a detail that never holds the token.
//! - No token lives longer than [`MAX_TOKEN_TTL`], so a revocation by
//!   `jti` alone (its expiry unknown) is kept that long and then pruned.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::context::Role;
use crate::error::{AuthFailure, Error};

pub const ISSUER: &str = "kubeforge";
pub const AUDIENCE: &str = "kubeforge-api";
/// The longest lifetime a token may be minted with.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);
/// How long a replica trusts its copy of the revocation list.
pub const REVOCATION_CACHE_TTL: Duration = Duration::from_secs(5);

/// The claims Kubeforge issues and accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub role: String,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    /// Not before (seconds since the epoch); required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The token's id, what a revocation names; required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// The key id of a signing key: the first 16 hex digits of its SHA-256.
/// It names the key without revealing it.
pub fn key_id(secret: &[u8]) -> String {
    let digest = Sha256::digest(secret);
    hex::encode(&digest[..8])
}

/// A token's id: 128 random bits, hex.
fn new_jti() -> String {
    hex::encode(uuid::Uuid::new_v4().as_bytes())
}

/// The longest `jti` accepted (ours are 32 characters).
pub const MAX_JTI_LEN: usize = 64;

/// Checks a `jti`: 1-64 ASCII letters, digits, '-' or '_'.
pub fn valid_jti(jti: &str) -> bool {
    !jti.is_empty()
        && jti.len() <= MAX_JTI_LEN
        && jti
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The signing key and the rules a token must pass.
#[derive(Clone)]
pub struct AuthKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    kid: String,
}

impl std::fmt::Debug for AuthKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKeys(..)")
    }
}

/// Checks a tenant id: 1-63 lowercase letters, digits and '-'.
pub fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 63
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Longest token subject accepted.
pub const MAX_SUBJECT_LEN: usize = 255;

/// Checks a token subject: 1-255 characters, none of them a control
/// character (a NUL would reach Postgres with the audit trail and fail
/// every request of the token with a 500).
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SUBJECT_LEN && !s.chars().any(char::is_control)
}

impl AuthKeys {
    /// From the shared secret (at least 32 bytes).
    pub fn from_secret(secret: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= 32,
            "the token signing key must be at least 32 bytes"
        );
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            kid: key_id(secret),
        })
    }

    /// This key's id, as minted tokens carry it in their `kid` header.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The header every minted token has: HS256 and this key's id.
    pub fn header(&self) -> Header {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        header
    }

    /// Mints a token. `now` is seconds since the epoch.
    pub fn mint(
        &self,
        tenant: &str,
        subject: &str,
        role: Role,
        ttl: Duration,
        now: i64,
    ) -> anyhow::Result<String> {
        anyhow::ensure!(
            valid_tenant(tenant),
            "tenant must be 1-63 lowercase letters, digits or '-'"
        );
        anyhow::ensure!(
            valid_subject(subject),
            "subject must be 1-{MAX_SUBJECT_LEN} characters, none a control character"
        );
        anyhow::ensure!(
            ttl <= MAX_TOKEN_TTL,
            "a token lives at most {} days",
            MAX_TOKEN_TTL.as_secs() / 86400
        );
        let claims = Claims {
            sub: subject.to_string(),
            tenant: tenant.to_string(),
            role: role.as_str().to_string(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: now + i64::try_from(ttl.as_secs())?,
            iat: now,
            nbf: Some(now),
            jti: Some(new_jti()),
        };
        Ok(jsonwebtoken::encode(
            &self.header(),
            &claims,
            &self.encoding,
        )?)
    }

    /// The claims of a token this key signed (key id and signature
    /// checked), expired or not yet valid: what a revocation needs to know
    /// of it. None for anything else.
    pub fn inspect(&self, token: &str) -> Option<Claims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return None;
        }
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()?
            .claims;
        claims
            .jti
            .as_deref()
            .is_some_and(valid_jti)
            .then_some(claims)
    }

    /// Verifies a token and returns its claims with the role parsed. The
    /// `jti` is returned checked but not looked up: revocation is the
    /// caller's ([`Revocations`]).
    pub fn verify(&self, token: &str) -> Result<(Claims, Role), Error> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            AuthFailure::Malformed.error(
                "the bearer token is not a JWT this service issues (three base64url parts, HS256)",
            )
        })?;
        match header.kid.as_deref() {
            None => {
                return Err(AuthFailure::UnknownKey.error(
                    "the token has no key id (kid); mint a new one with `kubeforge token create`",
                ))
            }
            Some(kid) if kid != self.kid => {
                return Err(AuthFailure::UnknownKey.error(
                    "the token's key id (kid) is not this service's signing key: it was minted \
                     with another data dir's key; mint it with the key of this service",
                ))
            }
            Some(_) => {}
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                let (reason, why) = match e.kind() {
                    K::ExpiredSignature => (
                        AuthFailure::Expired,
                        "the token expired (exp); mint a new one",
                    ),
                    K::ImmatureSignature => (
                        AuthFailure::NotYetValid,
                        "the token is not valid yet (nbf); check the clocks of the minter and this service",
                    ),
                    K::InvalidSignature => (
                        AuthFailure::BadSignature,
                        "the token signature is invalid for the key its kid names",
                    ),
                    K::InvalidAudience => (
                        AuthFailure::RejectedClaims,
                        "the token audience (aud) is not kubeforge-api",
                    ),
                    K::InvalidIssuer => (
                        AuthFailure::RejectedClaims,
                        "the token issuer (iss) is not kubeforge",
                    ),
                    K::InvalidAlgorithm => (
                        AuthFailure::RejectedClaims,
                        "the token algorithm is not accepted (HS256 only)",
                    ),
                    K::MissingRequiredClaim(_) => (
                        AuthFailure::RejectedClaims,
                        "the token lacks a required claim (exp, nbf, iss, aud, sub)",
                    ),
                    _ => (
                        AuthFailure::Malformed,
                        "the token's claims are not a JSON object of the expected form",
                    ),
                };
                reason.error(why)
            })?;
        let claims = data.claims;
        if !claims.jti.as_deref().is_some_and(valid_jti) {
            return Err(AuthFailure::RejectedClaims
                .error("the token lacks a token id (jti); mint a new one"));
        }
        let role = Role::parse(&claims.role)
            .ok_or_else(|| AuthFailure::RejectedClaims.error("the token's role is unknown"))?;
        if !valid_tenant(&claims.tenant) {
            return Err(Error::InvalidClaim {
                field: "token.tenant",
                detail: "the token's tenant must be 1-63 lowercase letters, digits or '-'".into(),
            });
        }
        if !valid_subject(&claims.sub) {
            return Err(Error::InvalidClaim {
                field: "token.sub",
                detail: format!(
                    "the token's subject must be 1-{MAX_SUBJECT_LEN} characters, none a control character"
                ),
            });
        }
        Ok((claims, role))
    }
}

/// A replica's copy of the revocation list (the `jti`s in
/// `revoked_tokens` that have not expired). The app refreshes it when
/// [`Revocations::stale`] says so and adds what it revokes itself at once.
#[derive(Debug, Default)]
pub struct Revocations {
    inner: Mutex<RevocationState>,
}

#[derive(Debug, Default)]
struct RevocationState {
    jtis: HashSet<String>,
    loaded_at: Option<Instant>,
    /// Revoked by this replica, with when: kept across a reload that began
    /// before they were written.
    local: Vec<(String, Instant)>,
}

impl Revocations {
    fn state(&self) -> std::sync::MutexGuard<'_, RevocationState> {
        // A panic elsewhere while holding the lock leaves a usable set.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the copy is older than [`REVOCATION_CACHE_TTL`] (or was
    /// never loaded).
    pub fn stale(&self, now: Instant) -> bool {
        self.state()
            .loaded_at
            .is_none_or(|at| now.duration_since(at) >= REVOCATION_CACHE_TTL)
    }

    /// Replaces the copy with the list read from the database by a load
    /// that began at `started`.
    pub fn replace(&self, jtis: impl IntoIterator<Item = String>, started: Instant) {
        let mut st = self.state();
        let mut set: HashSet<String> = jtis.into_iter().collect();
        st.local.retain(|(_, at)| *at >= started);
        set.extend(st.local.iter().map(|(j, _)| j.clone()));
        st.jtis = set;
        st.loaded_at = Some(started);
    }

    /// Adds a `jti` this replica has just revoked (written to the database).
    pub fn insert(&self, jti: &str) {
        let mut st = self.state();
        st.jtis.insert(jti.to_string());
        st.local.push((jti.to_string(), Instant::now()));
    }

    /// 401 when the token's `jti` is revoked.
    pub fn check(&self, claims: &Claims) -> Result<(), Error> {
        let revoked = claims
            .jti
            .as_deref()
            .is_some_and(|j| self.state().jtis.contains(j));
        if revoked {
            Err(AuthFailure::Revoked.error("the token was revoked; mint a new one"))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify() {
        let keys = AuthKeys::from_secret(&[1u8; 32]).unwrap();
        let now = chrono::Utc::now().timestamp();
        let t = keys
            .mint("acme", "alice", Role::Editor, Duration::from_secs(60), now)
            .unwrap();
        let (c, role) = keys.verify(&t).unwrap();
        assert_eq!((c.tenant.as_str(), role), ("acme", Role::Editor));
        let expired = keys
            .mint(
                "acme",
                "alice",
                Role::Editor,
                Duration::from_secs(1),
                now - 100,
            )
            .unwrap();
        assert!(keys.verify(&expired).is_err());
        let other = AuthKeys::from_secret(&[2u8; 32]).unwrap();
        assert!(other.verify(&t).is_err());
    }

    /// Signed tokens whose subject or tenant holds a NUL (or another
    /// control character) are refused naming the claim; `mint` never
    /// makes one.
    #[test]
    fn subjects_and_tenants_with_control_characters_are_refused() {
        let keys = AuthKeys::from_secret(&[1u8; 32]).unwrap();
        let now = chrono::Utc::now().timestamp();
        let signed = |sub: &str, tenant: &str| {
            let claims = Claims {
                sub: sub.into(),
                tenant: tenant.into(),
                role: "editor".into(),
                iss: ISSUER.into(),
                aud: AUDIENCE.into(),
                exp: now + 60,
                iat: now,
                nbf: Some(now),
                jti: Some("j1".into()),
            };
            jsonwebtoken::encode(&keys.header(), &claims, &keys.encoding).unwrap()
        };
        for (sub, tenant, field) in [
            ("ali\0ce", "acme", "token.sub"),
            ("alice\n", "acme", "token.sub"),
            ("", "acme", "token.sub"),
            (&"a".repeat(256), "acme", "token.sub"),
            ("alice", "ac\0me", "token.tenant"),
        ] {
            match keys.verify(&signed(sub, tenant)) {
                Err(e @ Error::InvalidClaim { .. }) => {
                    assert_eq!(e.to_problem().field.as_deref(), Some(field), "{sub:?}");
                    assert_eq!(e.status(), 401);
                }
                other => panic!("{sub:?}/{tenant:?}: {other:?}"),
            }
        }
        assert!(keys.verify(&signed("alice@example.com", "acme")).is_ok());
        assert!(keys
            .mint("acme", "a\0", Role::Editor, Duration::from_secs(60), now)
            .is_err());
    }

    /// A token signed by `keys` with the given header key id and claims
    /// changed by `edit`.
    fn signed_with(keys: &AuthKeys, kid: Option<&str>, edit: impl FnOnce(&mut Claims)) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = Claims {
            sub: "alice".into(),
            tenant: "acme".into(),
            role: "editor".into(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: now + 60,
            iat: now,
            nbf: Some(now),
            jti: Some("0123abcd".into()),
        };
        edit(&mut claims);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, &claims, &keys.encoding).unwrap()
    }

    fn refused(keys: &AuthKeys, token: &str) -> String {
        match keys.verify(token) {
            Err(e @ Error::Unauthenticated { .. }) => {
                assert_eq!(e.status(), 401);
                e.to_string()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn minted_tokens_carry_the_key_id_a_jti_and_nbf() {
        let keys = AuthKeys::from_secret(&[1u8; 32]).unwrap();
        let now = chrono::Utc::now().timestamp();
        let t = keys
            .mint("acme", "alice", Role::Admin, Duration::from_secs(60), now)
            .unwrap();
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.kid.as_deref(), Some(keys.key_id()));
        assert_eq!(keys.key_id(), &hex::encode(Sha256::digest([1u8; 32]))[..16]);
        let (claims, _) = keys.verify(&t).unwrap();
        assert_eq!(claims.nbf, Some(now));
        let jti = claims.jti.unwrap();
        assert!(valid_jti(&jti) && jti.len() == 32, "{jti}");
        let (again, _) = keys
            .verify(
                &keys
                    .mint("acme", "alice", Role::Admin, Duration::from_secs(60), now)
                    .unwrap(),
            )
            .unwrap();
        assert_ne!(again.jti.as_deref(), Some(jti.as_str()), "a jti per token");
        assert!(keys
            .mint(
                "acme",
                "a",
                Role::Admin,
                MAX_TOKEN_TTL + Duration::from_secs(1),
                now
            )
            .is_err());
    }

    #[test]
    fn a_key_id_that_is_missing_or_another_keys_is_401() {
        let keys = AuthKeys::from_secret(&[1u8; 32]).unwrap();
        let ours = keys.key_id().to_string();
        assert!(keys
            .verify(&signed_with(&keys, Some(&ours), |_| {}))
            .is_ok());
        let other = key_id(&[2u8; 32]);
        assert!(refused(&keys, &signed_with(&keys, Some(&other), |_| {})).contains("key id"));
        assert!(refused(&keys, &signed_with(&keys, None, |_| {})).contains("key id"));
        // Another key's token naming our key id still fails its signature.
        let theirs = AuthKeys::from_secret(&[2u8; 32]).unwrap();
        assert!(refused(&keys, &signed_with(&theirs, Some(&ours), |_| {})).contains("signature"));
    }

    #[test]
    fn a_token_not_valid_yet_is_401() {
        let keys = AuthKeys::from_secret(&[1u8; 32]).unwrap();
        let kid = keys.key_id().to_string();
        let now = chrono::Utc::now().timestamp();
        let future = signed_with(&keys, Some(&kid), |c| c.nbf = Some(now + 30));
        assert!(refused(&keys, &future).contains("nbf"));
        // Within the leeway, or in the past, it is fine.
        assert!(keys
            .verify(&signed_with(&keys, Some(&kid), |c| c.nbf = Some(now + 2)))
            .is_ok());
        let missing = signed_with(&keys, Some(&kid), |c| c.nbf = None);
        assert!(refused(&keys, &missing).contains("claim"));
    }

    #[test]
    fn a_token_without_a_jti_or_with_a_revoked_one_is_401() {
        let keys = AuthKeys::from_secret(&[1u8; 32]).unwrap();
        let kid = keys.key_id().to_string();
        for jti in [None, Some(""), Some("a b"), Some(&*"x".repeat(65))] {
            let t = signed_with(&keys, Some(&kid), |c| c.jti = jti.map(str::to_string));
            assert!(refused(&keys, &t).contains("jti"), "{jti:?}");
        }
        let now = chrono::Utc::now().timestamp();
        let token = keys
            .mint("acme", "alice", Role::Admin, Duration::from_secs(60), now)
            .unwrap();
        let (claims, _) = keys.verify(&token).unwrap();
        let revocations = Revocations::default();
        assert!(revocations.stale(Instant::now()));
        revocations.check(&claims).unwrap();
        revocations.insert(claims.jti.as_deref().unwrap());
        let err = revocations.check(&claims).unwrap_err();
        assert_eq!(err.status(), 401);
        assert!(err.to_string().contains("revoked"), "{err}");
        // A reload that began before the revocation keeps it; a later one
        // takes the database's word.
        let before = Instant::now() - Duration::from_secs(1);
        revocations.replace(Vec::new(), before);
        assert!(revocations.check(&claims).is_err());
        assert!(!revocations.stale(Instant::now()));
        revocations.replace(vec!["other".to_string()], Instant::now());
        assert!(revocations.check(&claims).is_ok());
        revocations.replace(claims.jti.clone(), Instant::now());
        assert!(revocations.check(&claims).is_err());
    }
}
