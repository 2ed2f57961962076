//! Extractors that turn a request into typed, checked input or a problem:
//! the caller's `OpContext` from the bearer token, JSON bodies with the
//! failing field named, path references checked before any query
//! (`RefPath`), and `Idempotency-Key`/`If-Match` headers.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::app::{Idempotency, SharedApp};
use crate::context::OpContext;
use crate::error::{AuthFailure, Error};
use crate::ratelimit::Class;
use crate::store::idempotency::request_hash;
use kubeforge_cluster::ValidationError;

pub const REQUEST_ID: &str = "x-request-id";

impl FromRequestParts<SharedApp> for OpContext {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &SharedApp) -> Result<Self, Error> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| {
                AuthFailure::MissingHeader.error(
                    "the request has no Authorization header; send `Authorization: Bearer <token>`",
                )
            })?
            .to_str()
            .map_err(|_| {
                AuthFailure::Malformed.error(
                    "the Authorization header is not visible ASCII; it must be `Bearer <token>`",
                )
            })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                AuthFailure::Malformed.error("the Authorization header must be `Bearer <token>`")
            })?;
        let (claims, role) = app.auth.verify(token.trim())?;
        app.check_token_revocation(&claims).await?;
        app.rate_limiter
            .check(&claims.tenant, Class::of(&parts.method))
            .map_err(|retry_after| Error::RateLimited { retry_after })?;
        let request_id = parts
            .headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(OpContext {
            tenant: claims.tenant,
            subject: claims.sub,
            role,
            request_id,
        })
    }
}

/// A JSON body parsed into `T`, with its raw bytes kept for idempotency.
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let ct_ok = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let raw = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        if !ct_ok {
            return Err(Error::MalformedBody {
                detail: "Content-Type must be application/json".into(),
            });
        }
        let value = parse_json(&raw)?;
        Ok(Self { value, raw })
    }
}

/// Why a body could not be read: too large, or cut short.
fn body_rejection(e: axum::extract::rejection::BytesRejection) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge
    } else {
        Error::MalformedBody {
            detail: e.body_text(),
        }
    }
}

/// A JSON body that may be left out: an empty body (whatever its
/// Content-Type) or a JSON `null` is `T::default()`; anything else is
/// read as [`JsonBody`] reads it. For POSTs whose every field has a
/// default.
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let ct_ok = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let raw = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        if !ct_ok {
            return Err(Error::MalformedBody {
                detail: "Content-Type must be application/json".into(),
            });
        }
        if raw.trim_ascii() == b"null" {
            return Ok(Self(T::default()));
        }
        Ok(Self(parse_json(&raw)?))
    }
}

/// Parses JSON, naming the field that failed.
pub fn parse_json<T: DeserializeOwned>(raw: &[u8]) -> Result<T, Error> {
    // Every body of this API is an object; serde would also take an array
    // for a struct, which would let `[]` mean "all defaults".
    if raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(Error::Validation(ValidationError::new(
            "",
            "the request body must be a JSON object, not an array",
        )));
    }
    let de = &mut serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Error::MalformedBody {
                detail: inner.to_string(),
            }
        } else {
            let msg = inner.to_string();
            // serde names an unknown, missing or duplicate field in the
            // message; point at it. The path may already end at that key.
            let named = ["unknown field `", "missing field `", "duplicate field `"]
                .iter()
                .find_map(|p| msg.strip_prefix(p));
            let field = match (named, path.as_str()) {
                (Some(rest), p) => {
                    let name = rest.split('`').next().unwrap_or_default();
                    if p == "." || p.is_empty() {
                        name.to_string()
                    } else if p == name || p.ends_with(&format!(".{name}")) {
                        p.to_string()
                    } else {
                        format!("{p}.{name}")
                    }
                }
                (None, ".") => String::new(),
                (None, p) => p.to_string(),
            };
            Error::Validation(ValidationError::new(field, msg))
        }
    })?;
    // Like `serde_json::from_slice`: nothing but whitespace may follow the value.
    de.end().map_err(|e| Error::MalformedBody {
        detail: e.to_string(),
    })?;
    Ok(value)
}

/// Path parameters, every one checked before the handler sees it: a
/// `{tenant}` must be a tenant id ([`crate::auth::valid_tenant`]), any other
/// (`{cluster}`, `{pool}`, `{host}`, `{operation}`) a name or an id
/// ([`kubeforge_cluster::names::check_reference`]). A NUL, an invalid
/// UTF-8 escape or any other byte no name holds is a 422 naming the
/// parameter, never a query Postgres refuses. Handlers take it after the
/// `OpContext`, so an unauthenticated caller is told only that.
pub struct RefPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for RefPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        use axum::extract::rejection::RawPathParamsRejection;
        use axum::extract::{Path, RawPathParams};
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| match e {
                RawPathParamsRejection::InvalidUtf8InPathParam(e) => {
                    let text = e.body_text();
                    // "Invalid UTF-8 in `key`": name the parameter.
                    let key = text.split('`').nth(1).unwrap_or_default().to_string();
                    Error::Validation(ValidationError::new(key, "must be valid UTF-8"))
                }
                other => Error::Internal(anyhow::anyhow!("path parameters: {}", other.body_text())),
            })?;
        for (key, value) in &raw {
            check_path_param(key, value)?;
        }
        let Path(value) = Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| Error::Internal(anyhow::anyhow!("path parameters: {}", e.body_text())))?;
        Ok(Self(value))
    }
}

/// One path parameter, by the name the route gives it.
fn check_path_param(key: &str, value: &str) -> Result<(), Error> {
    if key == "tenant" {
        if !crate::auth::valid_tenant(value) {
            return Err(ValidationError::new(
                "tenant",
                "must be 1-63 lowercase letters, digits or '-'",
            )
            .into());
        }
        return Ok(());
    }
    kubeforge_cluster::names::check_reference(key, value).map_err(Error::from)
}

/// Query parameters parsed into `T`, naming the parameter that failed.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| {
                let path = e.path().to_string();
                let msg = e.into_inner().to_string();
                let field = ["unknown field `", "duplicate field `"]
                    .iter()
                    .find_map(|p| msg.strip_prefix(p))
                    .and_then(|rest| rest.split('`').next())
                    .map_or(path, str::to_string);
                Error::Validation(ValidationError::new(field, msg))
            })
    }
}

/// `Idempotency-Key`, bound to this request's method, path and body.
pub fn idempotency(
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Option<Idempotency>, Error> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ValidationError::new("Idempotency-Key", "must be 1-255 visible ASCII characters")
        })?;
    Ok(Some(Idempotency {
        key: key.to_string(),
        hash: request_hash(method, path, body),
    }))
}

/// The `If-Match` header, if any.
pub fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
