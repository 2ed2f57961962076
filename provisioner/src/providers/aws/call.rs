//! One EC2 (or STS) call, retried the way AWS asks clients to: throttling
//! (`RequestLimitExceeded`, `Throttling`), server errors (HTTP 5xx,
//! `InternalError`, `Unavailable`) and transport failures (connect,
//! timeout, a cut response) are retried with capped exponential backoff
//! and full jitter; everything else is classified once ([`AwsErrorKind`])
//! and handed back. The SDK's own retries are off, so each attempt is
//! counted here: `kubeforge_aws_calls_total{operation,outcome}` and
//! `kubeforge_aws_retries_total{operation,reason}`.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use prometheus::{IntCounterVec, Opts};
use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// How a call went wrong, as far as the caller's decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorKind {
    /// Throttled, a server error or the network, still so after every
    /// attempt.
    Transient,
    /// No capacity for the instance type where it was asked for
    /// (`InsufficientInstanceCapacity` and kin, `Unsupported` in the zone):
    /// another type may launch.
    Capacity,
    /// An account limit (`InstanceLimitExceeded`, `VcpuLimitExceeded`, ...):
    /// waits until the account has room.
    Quota,
    /// The thing asked about does not exist (`...NotFound`).
    NotFound,
    /// It exists already (`InvalidGroup.Duplicate`,
    /// `InvalidPermission.Duplicate`).
    Duplicate,
    /// Something still uses it (`DependencyViolation`: a security group of
    /// an instance that is shutting down), or it is between states
    /// (`IncorrectInstanceState`: started while still stopping).
    InUse,
    /// Will not work as asked (a bad image or subnet, no permission).
    Permanent,
}

/// A failed call: its kind, the AWS error code and message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation}: {code}: {message}")]
pub struct AwsError {
    pub kind: AwsErrorKind,
    pub operation: &'static str,
    pub code: String,
    pub message: String,
}

/// The counters every call reports into (named without the registry's
/// `kubeforge_` prefix).
#[derive(Clone)]
pub struct AwsCounters {
    /// Attempts by operation (`RunInstances`) and outcome (`ok`, or the
    /// error's kind in lowercase: `transient`, `capacity`, ...).
    pub calls: IntCounterVec,
    /// Retries by operation and reason (`throttled`, `server_error`,
    /// `network`).
    pub retries: IntCounterVec,
}

impl AwsCounters {
    pub fn new() -> Self {
        Self {
            calls: IntCounterVec::new(
                Opts::new(
                    "aws_calls_total",
                    "Calls the aws provider made to AWS APIs, by operation and outcome",
                ),
                &["operation", "outcome"],
            )
            .expect("a valid metric"),
            retries: IntCounterVec::new(
                Opts::new(
                    "aws_retries_total",
                    "AWS API calls the aws provider retried, by operation and reason",
                ),
                &["operation", "reason"],
            )
            .expect("a valid metric"),
        }
    }

    /// Calls of `operation` that ended `outcome`, for tests and reports.
    pub fn count(&self, operation: &str, outcome: &str) -> u64 {
        self.calls.with_label_values(&[operation, outcome]).get()
    }

    /// Retries of `operation`, whatever the reason.
    pub fn retried(&self, operation: &str) -> u64 {
        ["throttled", "server_error", "network"]
            .iter()
            .map(|r| self.retries.with_label_values(&[operation, r]).get())
            .sum()
    }
}

impl Default for AwsCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// How many times and how patiently a call is tried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// The first backoff's ceiling; doubled per retry up to `cap`.
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: uniform in [0, min(cap, base * 2^retry)].
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.cap);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }
}

/// Why an attempt is retried, or None if it is not.
fn retry_reason(code: &str, status: Option<u16>, transport: bool) -> Option<&'static str> {
    if transport {
        return Some("network");
    }
    // EC2 answers a capacity shortage with HTTP 500: it is no server
    // error to wait out in place but a cue to try another type.
    if matches!(kind_of(code), AwsErrorKind::Capacity | AwsErrorKind::Quota) {
        return None;
    }
    match code {
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "RequestThrottled"
        | "TooManyRequestsException"
        | "SlowDown" => Some("throttled"),
        "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => {
            Some("server_error")
        }
        _ if status == Some(429) => Some("throttled"),
        _ if status.is_some_and(|s| s >= 500) => Some("server_error"),
        _ => None,
    }
}

/// The kind of an error that is not retried (or no longer).
fn kind_of(code: &str) -> AwsErrorKind {
    match code {
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InsufficientCapacity"
        | "InsufficientCapacityOnHost"
        | "Unsupported" => AwsErrorKind::Capacity,
        "InstanceLimitExceeded"
        | "VcpuLimitExceeded"
        | "ResourceLimitExceeded"
        | "SecurityGroupLimitExceeded"
        | "RulesPerSecurityGroupLimitExceeded"
        | "InsufficientFreeAddressesInSubnet"
        | "InsufficientAddressCapacity" => AwsErrorKind::Quota,
        // Still held, or between states (a start while it is stopping).
        "DependencyViolation" | "IncorrectInstanceState" | "IncorrectState" => AwsErrorKind::InUse,
        "InvalidGroup.Duplicate" | "InvalidPermission.Duplicate" => AwsErrorKind::Duplicate,
        c if c.ends_with(".NotFound") || c == "InvalidInstanceID.Malformed" => {
            AwsErrorKind::NotFound
        }
        _ => AwsErrorKind::Permanent,
    }
}

fn outcome_label(kind: AwsErrorKind) -> &'static str {
    match kind {
        AwsErrorKind::Transient => "transient",
        AwsErrorKind::Capacity => "capacity",
        AwsErrorKind::Quota => "quota",
        AwsErrorKind::NotFound => "not_found",
        AwsErrorKind::Duplicate => "duplicate",
        AwsErrorKind::InUse => "in_use",
        AwsErrorKind::Permanent => "permanent",
    }
}

/// What one failed attempt was.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: String,
    pub message: String,
    /// Why it may be retried (`throttled`, `server_error`, `network`);
    /// None: it may not.
    pub retry: Option<&'static str>,
}

impl Failure {
    /// Reads an SDK error.
    pub fn of<E>(err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let transport = matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
        );
        let status = err.raw_response().map(|r| r.status().as_u16());
        let message = err
            .message()
            .map(str::to_string)
            .unwrap_or_else(|| aws_sdk_ec2::error::DisplayErrorContext(err).to_string());
        let code = match (err.code(), transport, status) {
            (Some(c), _, _) if !c.is_empty() => c.to_string(),
            (_, true, _) => "NetworkError".to_string(),
            (_, false, Some(s)) => format!("HTTP{s}"),
            (_, false, None) => "Unknown".to_string(),
        };
        let retry = retry_reason(&code, status, transport);
        Self {
            code,
            message,
            retry,
        }
    }

    /// The error it ends in when it is not retried (any more).
    pub fn into_error(
        self,
        counters: &AwsCounters,
        operation: &'static str,
        attempts: u32,
    ) -> AwsError {
        let (kind, message) = if self.retry.is_some() {
            (
                AwsErrorKind::Transient,
                format!("{} (after {attempts} attempts)", self.message),
            )
        } else {
            (kind_of(&self.code), self.message)
        };
        counters
            .calls
            .with_label_values(&[operation, outcome_label(kind)])
            .inc();
        AwsError {
            kind,
            operation,
            code: self.code,
            message,
        }
    }

    /// Counts the attempt as retried for `reason`.
    pub fn count_retry(&self, counters: &AwsCounters, operation: &'static str) {
        let reason = self.retry.unwrap_or("other");
        counters
            .calls
            .with_label_values(&[operation, "retried"])
            .inc();
        counters
            .retries
            .with_label_values(&[operation, reason])
            .inc();
        tracing::debug!(operation, code = %self.code, reason, "aws call retried");
    }
}

/// Counts a successful attempt.
pub fn count_ok(counters: &AwsCounters, operation: &'static str) {
    counters.calls.with_label_values(&[operation, "ok"]).inc();
}

/// Runs `attempt` until it succeeds, fails for good, or runs out of
/// attempts (then [`AwsErrorKind::Transient`]). Only for calls that are
/// safe to repeat: a launch checks for its instance between attempts
/// (`AwsProvider::launch`).
pub async fn call<T, E, F, Fut>(
    counters: &AwsCounters,
    policy: &RetryPolicy,
    operation: &'static str,
    mut attempt: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut retry = 0;
    loop {
        let failure = match attempt().await {
            Ok(out) => {
                count_ok(counters, operation);
                return Ok(out);
            }
            Err(e) => Failure::of(&e),
        };
        if failure.retry.is_some() && retry + 1 < policy.max_attempts {
            failure.count_retry(counters, operation);
            tokio::time::sleep(policy.backoff(retry)).await;
            retry += 1;
            continue;
        }
        return Err(failure.into_error(counters, operation, retry + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_server_errors_and_the_network_are_retried() {
        assert_eq!(
            retry_reason("RequestLimitExceeded", Some(503), false),
            Some("throttled")
        );
        assert_eq!(
            retry_reason("Throttling", Some(400), false),
            Some("throttled")
        );
        assert_eq!(retry_reason("", Some(429), false), Some("throttled"));
        assert_eq!(
            retry_reason("InternalError", Some(500), false),
            Some("server_error")
        );
        assert_eq!(retry_reason("", Some(502), false), Some("server_error"));
        assert_eq!(retry_reason("", None, true), Some("network"));
        assert_eq!(
            retry_reason("InsufficientInstanceCapacity", Some(500), false),
            None,
            "a capacity error (sent as 500) goes back to the caller at once"
        );
        assert_eq!(
            retry_reason("InvalidAMIID.NotFound", Some(400), false),
            None
        );
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(
            kind_of("InsufficientInstanceCapacity"),
            AwsErrorKind::Capacity
        );
        assert_eq!(kind_of("Unsupported"), AwsErrorKind::Capacity);
        assert_eq!(kind_of("VcpuLimitExceeded"), AwsErrorKind::Quota);
        assert_eq!(
            kind_of("InvalidInstanceID.NotFound"),
            AwsErrorKind::NotFound
        );
        assert_eq!(kind_of("InvalidGroup.NotFound"), AwsErrorKind::NotFound);
        assert_eq!(kind_of("InvalidGroup.Duplicate"), AwsErrorKind::Duplicate);
        assert_eq!(kind_of("DependencyViolation"), AwsErrorKind::InUse);
        assert_eq!(kind_of("IncorrectInstanceState"), AwsErrorKind::InUse);
        assert_eq!(kind_of("UnauthorizedOperation"), AwsErrorKind::Permanent);
        assert_eq!(kind_of("InvalidAMIID.Malformed"), AwsErrorKind::Permanent);
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let p = RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(700),
        };
        for retry in 0..12 {
            let ceiling = Duration::from_millis(100 * (1 << retry.min(16))).min(p.cap);
            for _ in 0..50 {
                assert!(p.backoff(retry) <= ceiling);
            }
        }
    }
}
