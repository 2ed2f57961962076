//! Bearer tokens: HS256 JWTs whose signature, algorithm, issuer, audience
//! and expiry are all checked. `alg: none` and every other algorithm are
//! refused because the validation names exactly one.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::context::Role;
use crate::error::Error;

pub const ISSUER: &str = "kubeforge";
pub const AUDIENCE: &str = "kubeforge-api";

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
}

/// The signing key and the rules a token must pass.
#[derive(Clone)]
pub struct AuthKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
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
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
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
        let claims = Claims {
            sub: subject.to_string(),
            tenant: tenant.to_string(),
            role: role.as_str().to_string(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: now + i64::try_from(ttl.as_secs())?,
            iat: now,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Verifies a token and returns its claims with the role parsed.
    pub fn verify(&self, token: &str) -> Result<(Claims, Role), Error> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                let why = match e.kind() {
                    K::ExpiredSignature => "token expired",
                    K::InvalidAudience => "token audience is wrong",
                    K::InvalidIssuer => "token issuer is wrong",
                    K::InvalidAlgorithm => "token algorithm is not accepted",
                    K::InvalidSignature => "token signature is invalid",
                    K::MissingRequiredClaim(_) => "token lacks a required claim",
                    _ => "token is malformed",
                };
                Error::Unauthenticated(why.into())
            })?;
        let claims = data.claims;
        let role = Role::parse(&claims.role)
            .ok_or_else(|| Error::Unauthenticated("token role is unknown".into()))?;
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
            };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap()
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
}
