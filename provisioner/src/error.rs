//! The one error type of the service, and its only mapping to HTTP.
//!
//! What the client sees (`code`, `detail`, `field`, `retryable`) is kept
//! apart from internal context: an `Internal` error logs its cause and
//! answers a generic detail, so database messages never reach a tenant.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kubeforge_cluster::api::Problem;
use kubeforge_cluster::ValidationError;

/// Everything an app or store call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Validation(#[from] ValidationError),
    #[error("malformed request body: {detail}")]
    MalformedBody { detail: String },
    #[error("request body too large")]
    PayloadTooLarge,
    /// The request carries no usable token; `reason` says why (each its
    /// own problem `type` and title), `detail` how to fix it. Neither ever
    /// holds the token.
    #[error("unauthenticated: {detail}")]
    Unauthenticated { reason: AuthFailure, detail: String },
    /// A well-signed token whose claim `field` (`token.sub`,
    /// `token.tenant`) no caller can have ([`AuthFailure::RejectedClaims`]).
    #[error("unauthenticated: {detail}")]
    InvalidClaim { field: &'static str, detail: String },
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("quota exceeded: {detail}")]
    QuotaExceeded { field: String, detail: String },
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    #[error("cluster {0:?} has deletion protection enabled")]
    DeletionProtected(String),
    #[error("cluster is not ready: {0}")]
    ClusterNotReady(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("request timed out")]
    Timeout,
    #[error("too many requests from this tenant; retry after {} s", retry_after_secs(.retry_after))]
    RateLimited { retry_after: std::time::Duration },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A fenced write on behalf of job `job_id` was refused: this worker no
    /// longer holds the job's lease (it expired, or another claim took
    /// the job), so it must stop. Never reaches a tenant (engine only).
    #[error("lease lost on job {job_id}: this worker no longer holds it and stops")]
    LeaseLost { job_id: i64 },
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// Why a request was not authenticated. Each reason is a problem `type`
/// (`https://kubeforge.dev/problems/unauthenticated/<slug>`) and title of
/// its own; the `code` stays `unauthenticated` for every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    MissingHeader,
    /// A header that is not `Bearer <token>`, or a token that is not a JWT.
    Malformed,
    /// Past its `exp`.
    Expired,
    /// Before its `nbf`.
    NotYetValid,
    /// Its signature does not verify with the key its `kid` names.
    BadSignature,
    /// No `kid`, or one that names a key this service does not have.
    UnknownKey,
    /// Its `jti` was revoked.
    Revoked,
    /// Signed and current, but a claim or the algorithm is not one this
    /// service accepts (issuer, audience, role, tenant, subject, `jti`).
    RejectedClaims,
}

impl AuthFailure {
    /// Every reason, for tests and docs.
    pub const ALL: [AuthFailure; 8] = [
        AuthFailure::MissingHeader,
        AuthFailure::Malformed,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::BadSignature,
        AuthFailure::UnknownKey,
        AuthFailure::Revoked,
        AuthFailure::RejectedClaims,
    ];

    /// The last segment of the problem `type`.
    pub fn slug(self) -> &'static str {
        match self {
            AuthFailure::MissingHeader => "missing-header",
            AuthFailure::Malformed => "malformed-token",
            AuthFailure::Expired => "token-expired",
            AuthFailure::NotYetValid => "token-not-yet-valid",
            AuthFailure::BadSignature => "bad-signature",
            AuthFailure::UnknownKey => "unknown-key-id",
            AuthFailure::Revoked => "token-revoked",
            AuthFailure::RejectedClaims => "rejected-claims",
        }
    }

    /// The problem's title.
    pub fn title(self) -> &'static str {
        match self {
            AuthFailure::MissingHeader => "No bearer token",
            AuthFailure::Malformed => "Malformed token",
            AuthFailure::Expired => "Token expired",
            AuthFailure::NotYetValid => "Token not yet valid",
            AuthFailure::BadSignature => "Token signature invalid",
            AuthFailure::UnknownKey => "Unknown signing key",
            AuthFailure::Revoked => "Token revoked",
            AuthFailure::RejectedClaims => "Token claims rejected",
        }
    }

    /// An [`Error::Unauthenticated`] of this reason.
    pub fn error(self, detail: impl Into<String>) -> Error {
        Error::Unauthenticated {
            reason: self,
            detail: detail.into(),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut => Error::Unavailable("database busy".into()),
            other => Error::Internal(anyhow::Error::new(other)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            id: id.into(),
        }
    }

    /// (status, code, title, retryable)
    fn parts(&self) -> (StatusCode, &'static str, &'static str, bool) {
        use StatusCode as S;
        match self {
            Error::Validation(_) => (
                S::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Invalid request",
                false,
            ),
            Error::MalformedBody { .. } => (
                S::BAD_REQUEST,
                "malformed_body",
                "Malformed request body",
                false,
            ),
            Error::PayloadTooLarge => (
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Request body too large",
                false,
            ),
            Error::Unauthenticated { reason, .. } => {
                (S::UNAUTHORIZED, "unauthenticated", reason.title(), false)
            }
            Error::InvalidClaim { .. } => (
                S::UNAUTHORIZED,
                "unauthenticated",
                AuthFailure::RejectedClaims.title(),
                false,
            ),
            Error::Forbidden(_) => (S::FORBIDDEN, "forbidden", "Forbidden", false),
            Error::NotFound { .. } => (S::NOT_FOUND, "not_found", "Not found", false),
            Error::Conflict(_) => (S::CONFLICT, "conflict", "Conflict", false),
            Error::QuotaExceeded { .. } => (
                S::UNPROCESSABLE_ENTITY,
                "quota_exceeded",
                "Quota exceeded",
                false,
            ),
            Error::PreconditionFailed(_) => (
                S::PRECONDITION_FAILED,
                "precondition_failed",
                "Precondition failed",
                false,
            ),
            Error::IdempotencyMismatch => (
                S::UNPROCESSABLE_ENTITY,
                "idempotency_mismatch",
                "Idempotency key mismatch",
                false,
            ),
            Error::DeletionProtected(_) => (
                S::CONFLICT,
                "deletion_protected",
                "Deletion protected",
                false,
            ),
            Error::ClusterNotReady(_) => {
                (S::CONFLICT, "cluster_not_ready", "Cluster not ready", true)
            }
            Error::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
                false,
            ),
            Error::RateLimited { .. } => (
                S::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
                true,
            ),
            Error::Timeout => (S::SERVICE_UNAVAILABLE, "timeout", "Request timed out", true),
            Error::Unavailable(_) => (
                S::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                true,
            ),
            Error::LeaseLost { .. } => (S::CONFLICT, "lease_lost", "Lease lost", true),
            Error::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal", "Internal error", true),
        }
    }

    /// Why a 401 is one; `None` for every other error.
    pub fn auth_failure(&self) -> Option<AuthFailure> {
        match self {
            Error::Unauthenticated { reason, .. } => Some(*reason),
            Error::InvalidClaim { .. } => Some(AuthFailure::RejectedClaims),
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// What the client is told: the problem document of this error.
    pub fn to_problem(&self) -> Problem {
        let (status, code, title, retryable) = self.parts();
        let (detail, field) = match self {
            Error::Validation(v) => (v.message.clone(), Some(v.field.clone())),
            Error::QuotaExceeded { field, detail } => (detail.clone(), Some(field.clone())),
            Error::InvalidClaim { field, .. } => (self.to_string(), Some(field.to_string())),
            Error::Internal(_) => (
                "an internal error occurred; it has been logged".into(),
                None,
            ),
            other => (other.to_string(), None),
        };
        let type_ = match self.auth_failure() {
            Some(reason) => format!("https://kubeforge.dev/problems/{code}/{}", reason.slug()),
            None => format!("https://kubeforge.dev/problems/{code}"),
        };
        Problem {
            type_,
            title: title.into(),
            status: status.as_u16(),
            code: code.into(),
            detail,
            field: field.filter(|f| !f.is_empty()),
            retryable,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(cause) = &self {
            tracing::error!(error = %format!("{cause:#}"), "internal error");
        }
        let problem = self.to_problem();
        let status = self.status();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if let Some(reason) = self.auth_failure() {
            // RFC 6750: a request without a token gets the bare challenge,
            // a bad token `invalid_token` (the reason is in the body).
            let challenge = match reason {
                AuthFailure::MissingHeader => "Bearer realm=\"kubeforge\"",
                _ => "Bearer realm=\"kubeforge\", error=\"invalid_token\"",
            };
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(challenge),
            );
        }
        if let Error::RateLimited { retry_after } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs(&retry_after).into());
        }
        resp
    }
}

/// Whole seconds for `Retry-After`: rounded up, at least 1.
fn retry_after_secs(wait: &std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}
