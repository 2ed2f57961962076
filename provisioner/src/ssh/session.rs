//! One authenticated SSH connection to one machine, and the channel
//! plumbing behind commands and uploads.
//!
//! A [`Session`] holds one of its executor's concurrency permits for as
//! long as it lives; several commands and uploads reuse its connection.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use russh::client;
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect, Sig};
use tokio::sync::OwnedSemaphorePermit;

use super::client_key::{fingerprint, parse_private_key, parse_public_key};
use super::{Redactor, SshAuth, SshError, SshSettings, SshTarget};

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// A line longer than this is passed on in pieces, so a command printing
/// without newlines cannot grow memory without bound.
const MAX_LINE_BYTES: usize = 1 << 20;

/// How many stderr lines of a failed upload are kept for the error.
const UPLOAD_STDERR_LINES: usize = 20;

/// An authenticated connection to one machine. Dropping it (or
/// [`close`](Self::close)) ends the connection and frees the executor slot.
pub struct Session {
    handle: client::Handle<PinnedHostKey>,
    label: String,
    settings: Arc<SshSettings>,
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.label)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(super) fn new(
        handle: client::Handle<PinnedHostKey>,
        label: String,
        settings: Arc<SshSettings>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            handle,
            label,
            settings,
            _permit: permit,
        }
    }

    /// `user@address:port` of the machine.
    pub fn target(&self) -> &str {
        &self.label
    }

    /// Runs `command` with the login user's shell and returns its exit
    /// status (non-zero statuses are `Ok`: the caller decides what they
    /// mean).
    ///
    /// Each complete line of stdout and stderr is passed, redacted, to
    /// `on_line` as it arrives, in order within each stream; a final line
    /// without a newline is passed at the end. stdin is empty.
    ///
    /// If the command has not finished within `timeout`, its channel is
    /// closed and the result is [`SshError::Timeout`]; the session stays
    /// usable. The command is also stopped on the machine: it runs under
    /// coreutils `timeout` (when the machine has it) set slightly past
    /// `timeout`, which kills its whole process group. A SIGKILL channel
    /// request is sent too, but OpenSSH ignores it for root logins, and
    /// closing the channel alone leaves a quiet command running.
    pub async fn run(
        &self,
        command: &str,
        timeout: Duration,
        redact: &Redactor,
        mut on_line: impl FnMut(StreamKind, &str),
    ) -> Result<i32, SshError> {
        let (mut reader, writer) = self.open_channel().await?;
        let mut emit = |kind: StreamKind, line: &str| on_line(kind, &redact.redact(line));
        let wrapped = with_remote_deadline(command, timeout);
        let work = async {
            writer
                .exec(true, wrapped.as_str())
                .await
                .map_err(|e| self.protocol(e))?;
            writer.eof().await.map_err(|e| self.protocol(e))?;
            self.collect(&mut reader, &mut emit).await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                self.abort(&writer).await;
                tracing::warn!(
                    target_host = %self.label,
                    timeout_ms = timeout.as_millis() as u64,
                    "SSH command timed out"
                );
                Err(SshError::Timeout {
                    target: self.label.clone(),
                    after: timeout,
                })
            }
        }
    }

    /// Writes `contents` to the absolute `path` with permission bits
    /// `mode`, atomically: the bytes go to a temporary file in the same
    /// directory (created with the default umask if missing), private
    /// while written, which is then renamed over `path`. Bounded by the executor's
    /// `upload_timeout`. Contents are never logged.
    pub async fn upload(&self, path: &str, contents: &[u8], mode: u32) -> Result<(), SshError> {
        let script = upload_script(path, contents.len(), mode, rand::thread_rng().gen())?;
        let (mut reader, writer) = self.open_channel().await?;
        let mut stderr: Vec<String> = Vec::new();
        let mut keep = |kind: StreamKind, line: &str| {
            if kind == StreamKind::Stderr && stderr.len() < UPLOAD_STDERR_LINES {
                stderr.push(line.to_owned());
            }
        };
        let send = async {
            writer
                .exec(true, script.as_str())
                .await
                .map_err(|e| self.protocol(e))?;
            writer.data(contents).await.map_err(|e| self.protocol(e))?;
            writer.eof().await.map_err(|e| self.protocol(e))
        };
        // Read while writing: a command that fails early must not leave
        // the writer waiting on a window that never opens.
        let work = async {
            let (sent, status) = tokio::join!(send, self.collect(&mut reader, &mut keep));
            let status = status?;
            sent.or_else(|e| if status == 0 { Err(e) } else { Ok(()) })?;
            Ok::<i32, SshError>(status)
        };
        let timeout = self.settings.upload_timeout;
        let status = match tokio::time::timeout(timeout, work).await {
            Ok(result) => result?,
            Err(_) => {
                self.abort(&writer).await;
                return Err(SshError::Timeout {
                    target: self.label.clone(),
                    after: timeout,
                });
            }
        };
        if status != 0 {
            return Err(SshError::UploadFailed {
                target: self.label.clone(),
                path: path.to_owned(),
                status,
                stderr: stderr.join("\n"),
            });
        }
        tracing::debug!(
            target_host = %self.label,
            path,
            bytes = contents.len(),
            mode = format_args!("{:o}", mode & 0o7777),
            "uploaded file"
        );
        Ok(())
    }

    /// Ends the connection politely and frees the executor slot.
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }

    async fn open_channel(
        &self,
    ) -> Result<(ChannelReadHalf, ChannelWriteHalf<client::Msg>), SshError> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.protocol(e))?;
        Ok(channel.split())
    }

    /// Reads a channel to its end, passing output lines to `emit`, and
    /// returns the exit status.
    async fn collect(
        &self,
        reader: &mut ChannelReadHalf,
        emit: &mut impl FnMut(StreamKind, &str),
    ) -> Result<i32, SshError> {
        let mut stdout = LineSplitter::new(StreamKind::Stdout);
        let mut stderr = LineSplitter::new(StreamKind::Stderr);
        let mut exit_status = None;
        let mut signal = None;
        while let Some(msg) = reader.wait().await {
            match msg {
                ChannelMsg::Data { data } => stdout.push(&data, emit),
                ChannelMsg::ExtendedData { data, ext: 1 } => stderr.push(&data, emit),
                ChannelMsg::ExitStatus { exit_status: s } => exit_status = Some(s as i32),
                ChannelMsg::ExitSignal { signal_name, .. } => signal = Some(signal_name),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        stdout.finish(emit);
        stderr.finish(emit);
        match (exit_status, signal) {
            (Some(status), _) => Ok(status),
            (None, Some(signal)) => Err(SshError::Signal {
                target: self.label.clone(),
                signal: signal_name(&signal),
            }),
            (None, None) => Err(SshError::NoExitStatus {
                target: self.label.clone(),
            }),
        }
    }

    /// Stops a command that ran out of time. OpenSSH delivers the signal
    /// to the process sshd started (the login shell, which for a simple
    /// command has exec'd it); closing the channel also closes the
    /// command's pipes.
    async fn abort(&self, writer: &ChannelWriteHalf<client::Msg>) {
        let _ = writer.signal(Sig::KILL).await;
        let _ = writer.close().await;
    }

    fn protocol(&self, source: russh::Error) -> SshError {
        SshError::Protocol {
            target: self.label.clone(),
            source,
        }
    }
}

fn signal_name(signal: &Sig) -> String {
    match signal {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

/// Connects, checks the host key and authenticates: one attempt, bounded
/// by `connect_timeout`.
pub(super) async fn open(
    target: &SshTarget,
    auth: &SshAuth,
    settings: &SshSettings,
    attempt: u32,
) -> Result<client::Handle<PinnedHostKey>, SshError> {
    let label = target.label();
    // Bad keys are caller errors: report them before touching the network.
    let pinned = parse_public_key(&target.host_key)?;
    let key = match auth {
        SshAuth::PrivateKey(pem) => Some(Arc::new(parse_private_key(pem)?)),
        SshAuth::Password(_) => None,
    };
    let config = Arc::new(client_config(&pinned, settings));
    let handler = PinnedHostKey {
        expected_fingerprint: fingerprint(&pinned),
        pinned,
        label: label.clone(),
    };
    let attempt_once = async {
        let stream = tokio::net::TcpStream::connect((target.address.as_str(), target.port))
            .await
            .map_err(|source| SshError::Connect {
                target: label.clone(),
                attempts: attempt,
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let mut handle = client::connect_stream(config, stream, handler)
            .await
            .map_err(|e| e.with_target(&label))?;
        let protocol = |source| SshError::Protocol {
            target: label.clone(),
            source,
        };
        let result = match (auth, key) {
            (_, Some(key)) => {
                let hash = if key.algorithm().is_rsa() {
                    handle
                        .best_supported_rsa_hash()
                        .await
                        .map_err(protocol)?
                        .flatten()
                } else {
                    None
                };
                handle
                    .authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(key, hash))
                    .await
            }
            (SshAuth::Password(password), None) => {
                handle
                    .authenticate_password(&target.user, password.as_str())
                    .await
            }
            (SshAuth::PrivateKey(_), None) => unreachable!("private keys are parsed above"),
        }
        .map_err(protocol)?;
        if !result.success() {
            tracing::error!(target_host = %label, "SSH authentication refused");
            return Err(SshError::AuthFailed {
                target: label.clone(),
            });
        }
        Ok(handle)
    };
    match tokio::time::timeout(settings.connect_timeout, attempt_once).await {
        Ok(result) => result,
        Err(_) => Err(SshError::ConnectTimeout {
            target: label,
            attempts: attempt,
            after: settings.connect_timeout,
        }),
    }
}

/// Offers only the pinned key's algorithm, so a server with several host
/// keys proves itself with the pinned one.
fn client_config(pinned: &PublicKey, settings: &SshSettings) -> client::Config {
    let host_key_algorithms = match pinned.algorithm() {
        Algorithm::Rsa { .. } => vec![
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
            Algorithm::Rsa { hash: None },
        ],
        other => vec![other],
    };
    client::Config {
        preferred: russh::Preferred {
            key: Cow::Owned(host_key_algorithms),
            ..Default::default()
        },
        keepalive_interval: settings.keepalive_interval,
        nodelay: true,
        ..Default::default()
    }
}

/// The russh handler that enforces the pinned host key.
pub(super) struct PinnedHostKey {
    pinned: PublicKey,
    expected_fingerprint: String,
    label: String,
}

impl client::Handler for PinnedHostKey {
    type Error = SshError;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, SshError> {
        let (matches, presented_fingerprint) = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                (key.key_data() == self.pinned.key_data(), fingerprint(key))
            }
            // Never offered; a pinned key is a key, not a CA's word.
            PublicKeyOrCertificate::Certificate(cert) => (
                false,
                cert.public_key().fingerprint(HashAlg::Sha256).to_string(),
            ),
        };
        if matches {
            return Ok(true);
        }
        tracing::error!(
            target_host = %self.label,
            expected_fingerprint = %self.expected_fingerprint,
            presented_fingerprint = %presented_fingerprint,
            "SSH host key mismatch: the server is not the machine whose key was pinned; refusing"
        );
        Err(SshError::HostKeyMismatch {
            target: self.label.clone(),
            expected_fingerprint: self.expected_fingerprint.clone(),
            presented_fingerprint,
        })
    }
}

/// Splits a byte stream into lines; `\r\n` and `\n` both end a line.
struct LineSplitter {
    kind: StreamKind,
    pending: Vec<u8>,
}

impl LineSplitter {
    fn new(kind: StreamKind) -> Self {
        Self {
            kind,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8], emit: &mut impl FnMut(StreamKind, &str)) {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(offset) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            Self::emit_line(self.kind, &self.pending[start..end], emit);
            start = end + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() >= MAX_LINE_BYTES {
            Self::emit_line(self.kind, &self.pending, emit);
            self.pending.clear();
        }
    }

    fn finish(&mut self, emit: &mut impl FnMut(StreamKind, &str)) {
        if !self.pending.is_empty() {
            Self::emit_line(self.kind, &self.pending, emit);
            self.pending.clear();
        }
    }

    fn emit_line(kind: StreamKind, line: &[u8], emit: &mut impl FnMut(StreamKind, &str)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        emit(kind, &String::from_utf8_lossy(line));
    }
}

/// How long after the caller's deadline the machine-side `timeout` fires,
/// so the caller sees its own deadline first.
const REMOTE_DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// `command` run by `sh -c` under coreutils `timeout`: TERM to the whole
/// process group past the deadline, KILL 5 s later. Machines without
/// `timeout` run it plainly.
fn with_remote_deadline(command: &str, timeout: Duration) -> String {
    let secs = (timeout + REMOTE_DEADLINE_GRACE).as_secs_f64();
    let quoted = shell_quote(command);
    format!(
        "if command -v timeout >/dev/null 2>&1; \
         then exec timeout -k 5 {secs:.3} sh -c {quoted}; \
         else exec sh -c {quoted}; fi"
    )
}

/// Quotes `s` for a POSIX shell: `'...'` with embedded quotes escaped.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The command that receives an upload of `len` bytes on stdin. A
/// short file (the channel closed early: a timeout, a dropped connection)
/// is never renamed into place. `nonce` makes the temporary name unique
/// among concurrent uploads of one path.
fn upload_script(path: &str, len: usize, mode: u32, nonce: u64) -> Result<String, SshError> {
    let invalid = |reason| SshError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(invalid("must be absolute"));
    }
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let (dir, name) = path.rsplit_once('/').expect("absolute paths contain '/'");
    if name.is_empty() || name == "." || name == ".." {
        return Err(invalid("must name a file"));
    }
    let dir = if dir.is_empty() { "/" } else { dir };
    let dir_q = shell_quote(dir);
    let tmp_q = shell_quote(&format!(
        "{}/.{name}.kubeforge-{nonce:016x}",
        dir.trim_end_matches('/')
    ));
    let path_q = shell_quote(path);
    Ok(format!(
        "mkdir -p {dir_q} && umask 077 && cat > {tmp_q} \
         && test \"$(wc -c < {tmp_q})\" -eq {len} && chmod {mode:o} {tmp_q} \
         && mv -f {tmp_q} {path_q} || {{ rc=$?; rm -f {tmp_q}; exit $rc; }}",
        mode = mode & 0o7777,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut splitter = LineSplitter::new(StreamKind::Stdout);
        let mut emit = |_: StreamKind, line: &str| lines.push(line.to_owned());
        for chunk in chunks {
            splitter.push(chunk, &mut emit);
        }
        splitter.finish(&mut emit);
        lines
    }

    #[test]
    fn lines_split_across_chunks_and_partial_tail_flushed() {
        assert_eq!(
            split(&[b"one\ntw", b"o\r\n\nthr", b"ee"]),
            ["one", "two", "", "three"]
        );
        assert_eq!(split(&[b"a\n"]), ["a"]);
        assert!(split(&[b""]).is_empty());
    }

    #[test]
    fn remote_deadline_wraps_the_quoted_command() {
        assert_eq!(
            with_remote_deadline("echo 'a'", Duration::from_millis(1500)),
            "if command -v timeout >/dev/null 2>&1; \
             then exec timeout -k 5 2.500 sh -c 'echo '\\''a'\\'''; \
             else exec sh -c 'echo '\\''a'\\'''; fi"
        );
    }

    #[test]
    fn quoting_survives_hostile_names() {
        assert_eq!(shell_quote("a'b $(x)"), r"'a'\''b $(x)'");
    }

    #[test]
    fn upload_script_is_atomic_and_quoted() {
        let script = upload_script("/etc/kube forge/it's.conf", 12, 0o100644, 0xab).unwrap();
        assert_eq!(
            script,
            "mkdir -p '/etc/kube forge' && umask 077 \
             && cat > '/etc/kube forge/.it'\\''s.conf.kubeforge-00000000000000ab' \
             && test \"$(wc -c < '/etc/kube forge/.it'\\''s.conf.kubeforge-00000000000000ab')\" -eq 12 \
             && chmod 644 '/etc/kube forge/.it'\\''s.conf.kubeforge-00000000000000ab' \
             && mv -f '/etc/kube forge/.it'\\''s.conf.kubeforge-00000000000000ab' \
             '/etc/kube forge/it'\\''s.conf' \
             || { rc=$?; rm -f '/etc/kube forge/.it'\\''s.conf.kubeforge-00000000000000ab'; exit $rc; }"
        );
        assert!(upload_script("/top", 0, 0o600, 1)
            .unwrap()
            .contains("mkdir -p '/'"));
        for bad in ["relative/x", "/dir/", "/dir/..", "/a\0b"] {
            assert!(matches!(
                upload_script(bad, 0, 0o600, 1),
                Err(SshError::InvalidPath { .. })
            ));
        }
    }
}
