//! The SSH executor: how Kubeforge runs commands and puts files on
//! machines (lab containers, registered hosts, EC2 instances alike).
//!
//! Why it exists: node bundles are uploaded and bootstrap scripts run
//! over SSH, and every provider shares this one path, so the guarantees
//! live here once:
//!
//! - **Pinned host keys.** Each [`SshTarget`] carries the host's public
//!   key, recorded when the machine was created. The key the server
//!   presents must equal it exactly; anything else is
//!   [`SshError::HostKeyMismatch`], logged at error level, never retried
//!   and never accepted on the fly. Only the pinned key's algorithm is
//!   offered, so a host with several host keys presents the pinned one.
//! - **Bounded work.** At most `max_concurrent` sessions are open at once
//!   (a semaphore; a [`Session`] holds its permit until dropped). Connecting
//!   is bounded by `connect_timeout`, each command by its own timeout.
//! - **Retries on connection errors only.** Refused, unreachable, timed
//!   out or dropped during the handshake: retried with exponential backoff
//!   and jitter. Host-key mismatch and authentication failure fail at
//!   once. Commands themselves are never re-run by the executor (they may
//!   not be idempotent); [`SshError::is_retryable`] tells the caller
//!   whether its next reconcile may try again.
//! - **Streamed, redacted output.** stdout and stderr reach the caller
//!   line by line as they arrive (a trailing partial line is flushed at
//!   the end), each line through a [`Redactor`] first.
//! - **Atomic uploads.** A file is written to a temporary name in its
//!   target directory and renamed into place, so a reader sees the old
//!   file or the new one, never half of one. No SFTP subsystem is needed:
//!   the bytes go over the stdin of a POSIX shell command.
//!
//! Secrets (credentials, file contents, redacted secrets) are never logged.

mod access;
mod client_key;
mod redact;
mod session;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

pub use access::MachineAccess;
pub use client_key::{
    fingerprint, load_or_create_client_key, parse_public_key, public_key_line,
    public_key_line_fingerprint, write_client_key, ClientKey, CLIENT_KEY_COMMENT,
};
pub use redact::{Redactor, REDACTED};
pub use session::{shell_quote, Session, StreamKind};

/// Where to connect: an address (IP literal or DNS name), a port, the
/// login user and the host key pinned when the machine was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    pub address: String,
    pub port: u16,
    pub user: String,
    /// OpenSSH public key line, `ssh-ed25519 AAAA... [comment]`.
    pub host_key: String,
}

impl SshTarget {
    /// A target on port 22.
    pub fn new(
        address: impl Into<String>,
        user: impl Into<String>,
        host_key: impl Into<String>,
    ) -> Self {
        Self {
            address: address.into(),
            port: 22,
            user: user.into(),
            host_key: host_key.into(),
        }
    }

    /// The same target on another port.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// `user@address:port`, for logs and errors.
    pub fn label(&self) -> String {
        if self.address.contains(':') {
            format!("{}@[{}]:{}", self.user, self.address, self.port)
        } else {
            format!("{}@{}:{}", self.user, self.address, self.port)
        }
    }
}

/// How to log in. `Debug` never shows the secret.
#[derive(Clone)]
pub enum SshAuth {
    /// An unencrypted OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    PrivateKey(String),
    Password(String),
}

impl fmt::Debug for SshAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SshAuth::PrivateKey(_) => f.write_str("PrivateKey([REDACTED])"),
            SshAuth::Password(_) => f.write_str("Password([REDACTED])"),
        }
    }
}

/// Everything that can go wrong talking to a machine over SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "host key mismatch for {target}: pinned {expected_fingerprint}, \
         server presented {presented_fingerprint}; refusing to connect"
    )]
    HostKeyMismatch {
        target: String,
        expected_fingerprint: String,
        presented_fingerprint: String,
    },
    #[error("the pinned host key is not a valid OpenSSH public key: {0}")]
    InvalidHostKey(String),
    #[error("the client private key cannot be used: {0}")]
    InvalidClientKey(String),
    #[error("authentication as {target} was refused")]
    AuthFailed { target: String },
    #[error("cannot connect to {target} after {attempts} attempt(s): {source}")]
    Connect {
        target: String,
        attempts: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {target} timed out after {after:?} ({attempts} attempt(s))")]
    ConnectTimeout {
        target: String,
        attempts: u32,
        after: Duration,
    },
    #[error("SSH protocol error with {target}: {source}")]
    Protocol {
        target: String,
        #[source]
        source: russh::Error,
    },
    #[error("command on {target} timed out after {after:?}")]
    Timeout { target: String, after: Duration },
    #[error("command on {target} was killed by signal {signal}")]
    Signal { target: String, signal: String },
    #[error("command on {target} ended without an exit status")]
    NoExitStatus { target: String },
    #[error("upload of {path} to {target} failed with exit status {status}: {stderr}")]
    UploadFailed {
        target: String,
        path: String,
        status: i32,
        stderr: String,
    },
    #[error("invalid remote path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Lets `SshError` be russh's handler error type. Errors raised inside
/// russh have no target yet; [`Session`] fills it in.
impl From<russh::Error> for SshError {
    fn from(source: russh::Error) -> Self {
        SshError::Protocol {
            target: String::new(),
            source,
        }
    }
}

impl SshError {
    /// Whether trying again later may succeed: the machine was unreachable,
    /// the connection dropped, or a command ran out of time. A host-key
    /// mismatch, refused credentials, bad keys or paths, and a command's
    /// own failure are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            SshError::Connect { .. }
            | SshError::ConnectTimeout { .. }
            | SshError::Timeout { .. }
            | SshError::NoExitStatus { .. } => true,
            SshError::Protocol { source, .. } => is_transient(source),
            SshError::HostKeyMismatch { .. }
            | SshError::InvalidHostKey(_)
            | SshError::InvalidClientKey(_)
            | SshError::AuthFailed { .. }
            | SshError::Signal { .. }
            | SshError::UploadFailed { .. }
            | SshError::InvalidPath { .. }
            | SshError::KeyFile { .. } => false,
        }
    }

    /// Whether the executor retries this error while connecting: only
    /// failures to reach the server or to finish the handshake.
    fn is_connection_error(&self) -> bool {
        match self {
            SshError::Connect { .. } | SshError::ConnectTimeout { .. } => true,
            SshError::Protocol { source, .. } => is_transient(source),
            _ => false,
        }
    }

    fn with_target(mut self, label: &str) -> Self {
        match &mut self {
            SshError::Protocol { target, .. } | SshError::HostKeyMismatch { target, .. }
                if target.is_empty() =>
            {
                *target = label.to_owned();
            }
            _ => {}
        }
        self
    }
}

fn is_transient(error: &russh::Error) -> bool {
    matches!(
        error,
        russh::Error::IO(_)
            | russh::Error::Disconnect
            | russh::Error::HUP
            | russh::Error::ConnectionTimeout
            | russh::Error::KeepaliveTimeout
            | russh::Error::InactivityTimeout
            | russh::Error::SendError
            | russh::Error::Elapsed(_)
    )
}

/// Tunables of an [`SshExecutor`].
#[derive(Clone, Debug)]
pub struct SshSettings {
    /// Bound on one connection attempt: TCP, handshake and authentication.
    pub connect_timeout: Duration,
    /// Further attempts after a connection error (0: try once).
    pub retries: u32,
    /// Delay before the first retry; doubled each time, with jitter.
    pub backoff_base: Duration,
    /// Upper bound of one backoff delay.
    pub backoff_max: Duration,
    /// Bound on one file upload.
    pub upload_timeout: Duration,
    /// Keepalive probes on idle sessions; a dead peer is noticed after
    /// three unanswered ones.
    pub keepalive_interval: Option<Duration>,
}

impl Default for SshSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            retries: 4,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(15),
            upload_timeout: Duration::from_secs(300),
            keepalive_interval: Some(Duration::from_secs(15)),
        }
    }
}

impl SshSettings {
    /// The delay before retry number `retry` (0-based): `base * 2^retry`
    /// capped at `backoff_max`, then scaled by a random factor in
    /// [0.5, 1.0] so that machines failing together do not retry together.
    pub fn backoff(&self, retry: u32) -> Duration {
        use rand::Rng as _;
        let exp = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(retry.min(16)));
        let capped = exp.min(self.backoff_max);
        capped.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// Opens sessions to machines, at most `max_concurrent` at a time.
///
/// Cheap to clone; clones share the bound.
#[derive(Clone, Debug)]
pub struct SshExecutor {
    settings: Arc<SshSettings>,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
}

impl SshExecutor {
    /// An executor with default settings and at most `max_concurrent`
    /// (at least 1) sessions open at once.
    pub fn new(max_concurrent: usize) -> Self {
        Self::with_settings(max_concurrent, SshSettings::default())
    }

    pub fn with_settings(max_concurrent: usize, settings: SshSettings) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Self {
            settings: Arc::new(settings),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
        }
    }

    pub fn settings(&self) -> &SshSettings {
        &self.settings
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Opens an authenticated session, waiting for a free slot first and
    /// retrying connection errors with backoff. Reuse the session for
    /// several commands and uploads to one machine.
    pub async fn connect(&self, target: &SshTarget, auth: &SshAuth) -> Result<Session, SshError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the executor never closes its semaphore");
        let label = target.label();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match session::open(target, auth, &self.settings, attempt).await {
                Ok(handle) => {
                    return Ok(Session::new(
                        handle,
                        label,
                        Arc::clone(&self.settings),
                        permit,
                    ))
                }
                Err(e) if e.is_connection_error() && attempt <= self.settings.retries => {
                    let delay = self.settings.backoff(attempt - 1);
                    tracing::warn!(
                        target_host = %label,
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %e,
                        "SSH connection failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Connects, runs one command (see [`Session::run`]) and disconnects.
    pub async fn run(
        &self,
        target: &SshTarget,
        auth: &SshAuth,
        command: &str,
        timeout: Duration,
        redact: &Redactor,
        on_line: impl FnMut(StreamKind, &str),
    ) -> Result<i32, SshError> {
        let session = self.connect(target, auth).await?;
        let result = session.run(command, timeout, redact, on_line).await;
        session.close().await;
        result
    }

    /// Connects, uploads one file (see [`Session::upload`]) and disconnects.
    pub async fn upload(
        &self,
        target: &SshTarget,
        auth: &SshAuth,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<(), SshError> {
        let session = self.connect(target, auth).await?;
        let result = session.upload(path, contents, mode).await;
        session.close().await;
        result
    }
}

/// The command that prints the sha256 of `paths` on a machine (missing
/// files print nothing); read its output with [`parse_sha256sum`].
pub fn sha256sum_command(paths: &[String]) -> String {
    let quoted: Vec<String> = paths.iter().map(|p| shell_quote(p)).collect();
    format!("sha256sum {} 2>/dev/null; true", quoted.join(" "))
}

/// `sha256sum` output lines as path -> lowercase hex digest.
pub fn parse_sha256sum(lines: &[String]) -> std::collections::BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| {
            let (sum, path) = l.split_once(char::is_whitespace)?;
            let path = path.trim_start().trim_start_matches('*');
            Some((
                path.to_string(),
                sum.trim_start_matches('\\').to_lowercase(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let settings = SshSettings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..SshSettings::default()
        };
        for _ in 0..50 {
            let first = settings.backoff(0);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = settings.backoff(2);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = settings.backoff(40);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn debug_hides_credentials() {
        let key = format!("{:?}", SshAuth::PrivateKey("-----BEGIN s3cret".into()));
        let password = format!("{:?}", SshAuth::Password("hunter2".into()));
        assert!(!key.contains("s3cret") && !password.contains("hunter2"));
    }

    #[test]
    fn labels_bracket_ipv6() {
        let t = SshTarget::new("::1", "root", "k").with_port(2222);
        assert_eq!(t.label(), "root@[::1]:2222");
        assert_eq!(
            SshTarget::new("10.0.0.1", "admin", "k").label(),
            "admin@10.0.0.1:22"
        );
    }

    #[test]
    fn only_connection_errors_are_retried_while_connecting() {
        let mismatch = SshError::HostKeyMismatch {
            target: "t".into(),
            expected_fingerprint: "a".into(),
            presented_fingerprint: "b".into(),
        };
        assert!(!mismatch.is_connection_error() && !mismatch.is_retryable());
        let auth = SshError::AuthFailed { target: "t".into() };
        assert!(!auth.is_connection_error() && !auth.is_retryable());
        let refused = SshError::Connect {
            target: "t".into(),
            attempts: 1,
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(refused.is_connection_error() && refused.is_retryable());
        let timeout = SshError::Timeout {
            target: "t".into(),
            after: Duration::from_secs(1),
        };
        assert!(!timeout.is_connection_error() && timeout.is_retryable());
    }

    #[test]
    fn sha256sum_output_is_read_in_text_and_binary_mode() {
        let lines = vec![
            "ABCDEF  /opt/kubeforge/kube/bin/kubectl".to_string(),
            "123abc */opt/kubeforge/kube/bin/kube-apiserver".to_string(),
            "\\9f0e  /opt/odd\\nname".to_string(),
            "garbage".to_string(),
        ];
        let sums = parse_sha256sum(&lines);
        assert_eq!(sums["/opt/kubeforge/kube/bin/kubectl"], "abcdef");
        assert_eq!(sums["/opt/kubeforge/kube/bin/kube-apiserver"], "123abc");
        assert_eq!(sums["/opt/odd\\nname"], "9f0e");
        assert_eq!(sums.len(), 3);
        assert_eq!(
            sha256sum_command(&["/a b".to_string()]),
            "sha256sum '/a b' 2>/dev/null; true"
        );
    }
}
