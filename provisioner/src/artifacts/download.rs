//! One binary fetched from an artifact URL, bounded and checked against its
//! pinned digest before it takes its place.
//!
//! - **Transport:** `https://` always; `http://` only to a loopback address
//!   given as an IP literal (`127.0.0.0/8`, `[::1]`: nothing leaves the host,
//!   a name like `localhost` is not taken on trust) or when the operator
//!   says `--insecure-artifacts-http`. Redirects (at most 5) are held to the
//!   same rule hop by hop.
//! - **Limits:** the body is counted while it streams and refused past
//!   `max_bytes` (a `Content-Length` above it is refused before reading, a
//!   missing or lying one changes nothing); connecting may take
//!   `connect_timeout`, the server may go silent for `idle_timeout` (before
//!   the headers or between chunks), the whole download may take
//!   `total_timeout`.
//! - **Nothing partial:** the body goes to `.<name>.part` beside the target
//!   (0600 until verified), removed on every failure, including the future
//!   being dropped; only a body whose sha256 is the pinned digest is made
//!   executable and renamed into place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use reqwest::Url;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 5;

/// Bounds on one download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadLimits {
    /// Largest body accepted, in bytes.
    pub max_bytes: u64,
    /// Connecting (TCP and TLS) may take this long.
    pub connect_timeout: Duration,
    /// Longest silence: before the response headers, or between two chunks.
    pub idle_timeout: Duration,
    /// The whole download, headers to last byte.
    pub total_timeout: Duration,
}

impl Default for DownloadLimits {
    fn default() -> Self {
        DownloadLimits {
            max_bytes: 512 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(600),
        }
    }
}

/// Refuses a URL Kubeforge must not fetch binaries from (see the module docs).
pub fn check_transport(url: &Url, insecure_http: bool) -> anyhow::Result<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if insecure_http || is_loopback(url) => Ok(()),
        "http" => bail!(
            "plain http to {} refused for Kubernetes binaries: use https, or \
             --insecure-artifacts-http (KUBEFORGE_INSECURE_ARTIFACTS_HTTP=1) to allow it \
             (the pinned digests still check every binary)",
            url.host_str().unwrap_or("?")
        ),
        other => bail!("artifact URLs are https (or http on loopback), not {other}://"),
    }
}

/// The host is a loopback IP literal (`127.0.0.0/8`, `[::1]`).
fn is_loopback(url: &Url) -> bool {
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback())
}

/// The HTTP client for artifact downloads: `limits.connect_timeout`, and
/// redirects only where [`check_transport`] allows.
pub fn client(limits: &DownloadLimits, insecure_http: bool) -> anyhow::Result<reqwest::Client> {
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(anyhow!("more than {MAX_REDIRECTS} redirects"));
        }
        match check_transport(attempt.url(), insecure_http) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e.context("redirected")),
        }
    });
    reqwest::Client::builder()
        .connect_timeout(limits.connect_timeout)
        .redirect(policy)
        .build()
        .context("building the artifact HTTP client")
}

/// Downloads `url` to `target`, accepted only if its sha256 is `want`.
pub async fn fetch_verified(
    client: &reqwest::Client,
    url: &Url,
    target: &Path,
    want: &str,
    limits: &DownloadLimits,
) -> anyhow::Result<()> {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .context("artifact target has no file name")?;
    let part = PartFile(target.with_file_name(format!(".{name}.part")));
    let shown = redacted(url);
    match tokio::time::timeout(
        limits.total_timeout,
        stream_to(client, url, &part.0, want, limits),
    )
    .await
    {
        Ok(result) => result.with_context(|| format!("GET {shown}"))?,
        Err(_) => bail!(
            "GET {shown}: not finished within {}s (the download's time limit)",
            limits.total_timeout.as_secs_f64()
        ),
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&part.0, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", part.0.display()))?;
    }
    std::fs::rename(&part.0, target)
        .with_context(|| format!("renaming {} into place", part.0.display()))?;
    Ok(())
}

/// The body of `url` into `path`, within the limits, its digest checked.
async fn stream_to(
    client: &reqwest::Client,
    url: &Url,
    path: &Path,
    want: &str,
    limits: &DownloadLimits,
) -> anyhow::Result<()> {
    let idle = limits.idle_timeout;
    let silent = || anyhow!("the server sent nothing for {}s", idle.as_secs_f64());
    let mut resp = tokio::time::timeout(idle, client.get(url.clone()).send())
        .await
        .map_err(|_| silent())??;
    if !resp.status().is_success() {
        bail!("{}", resp.status());
    }
    if let Some(len) = resp.content_length() {
        if len > limits.max_bytes {
            bail!(
                "{len} bytes announced, more than the limit of {} bytes",
                limits.max_bytes
            );
        }
    }
    let _ = std::fs::remove_file(path);
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        tokio::fs::File::from_std(f)
    };
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    while let Some(chunk) = tokio::time::timeout(idle, resp.chunk())
        .await
        .map_err(|_| silent())??
    {
        received += chunk.len() as u64;
        if received > limits.max_bytes {
            bail!(
                "more than the limit of {} bytes (Content-Length said {})",
                limits.max_bytes,
                resp.content_length()
                    .map_or_else(|| "nothing".to_string(), |l| l.to_string())
            );
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", path.display()))?;
    }
    file.sync_all()
        .await
        .with_context(|| format!("writing {}", path.display()))?;
    let got = hex::encode(hasher.finalize());
    if got != want {
        bail!("{received} bytes whose sha256 {got} is not the pinned {want}; refused");
    }
    Ok(())
}

/// `url` with any password in it replaced, for messages and logs.
pub fn redacted(url: &Url) -> String {
    if url.password().is_some() {
        let mut shown = url.clone();
        let _ = shown.set_password(Some("***"));
        shown.to_string()
    } else {
        url.to_string()
    }
}

/// A download in progress: removed when dropped, which a successful
/// rename makes a no-op.
struct PartFile(PathBuf);

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
