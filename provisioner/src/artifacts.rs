//! Kubernetes binaries, resolved by version from a configured source, and
//! accepted only when their sha256 is one the service trusts.
//!
//! A source is a local directory or an `https://` base URL, both in the
//! upstream release layout: `{base}/v{version}/bin/linux/amd64/{component}`
//! (the components in [`COMPONENTS`]).
//!
//! - **A URL source** is trusted for nothing: every binary must have a
//!   digest pinned in the service's configuration ([`PinnedDigests`],
//!   `--artifact-digests` / `KUBEFORGE_ARTIFACT_DIGESTS`), or the source is
//!   refused at start with an error naming the version and component. The
//!   `.sha256` files a server publishes beside its binaries are not
//!   fetched: whoever controls the binary controls them too. Downloads go
//!   into the cache (`{cache}/kube/v{version}/...`, the same layout) under
//!   the rules of [`download`]: https only (`http://` on a loopback IP
//!   literal, or with `--insecure-artifacts-http`), a size cap counted
//!   while streaming, connect/idle/total timeouts, and no partial file left
//!   behind. The cache's `.sha256` files are written from the pins, and a
//!   `.complete` marker last; a cached binary is used again only while it
//!   still matches its pin.
//! - **A local directory** is the operator's own path (by default the cache
//!   `scripts/build-kube` fills) and is trusted like the rest of the host:
//!   each binary is checked in place against its `.sha256` beside it, and,
//!   where the manifest pins it, against the pin too.
//!
//! Nothing unverified is ever used; the bootstrap scripts check the digests
//! again on the machines.

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub mod digests;
pub mod download;

pub use digests::PinnedDigests;
pub use download::DownloadLimits;

/// The binaries a cluster needs from the source: the control plane's and
/// the workers'.
pub const COMPONENTS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
];

/// The binaries a control-plane member runs (uploaded to hosts without them).
pub const CONTROL_PLANE_COMPONENTS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// The only architecture machines run today.
pub const ARCH: &str = "amd64";

/// Where binaries come from. `Debug` and `Display` hide a password in a URL.
#[derive(Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    Dir(PathBuf),
    Url(reqwest::Url),
}

impl ArtifactSource {
    /// `https://` or `http://` is a URL; another `scheme://` is refused;
    /// anything else is a directory.
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let base = value.trim_end_matches('/');
            let url = reqwest::Url::parse(&format!("{base}/"))
                .with_context(|| format!("{base:?} is not a URL"))?;
            if url.query().is_some() || url.fragment().is_some() {
                bail!("an artifact base URL has no query or fragment");
            }
            return Ok(ArtifactSource::Url(url));
        }
        if let Some((scheme, _)) = value.split_once("://") {
            bail!("artifact sources are a directory or an https:// URL, not {scheme}://");
        }
        Ok(ArtifactSource::Dir(PathBuf::from(value)))
    }
}

impl fmt::Debug for ArtifactSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactSource::Dir(d) => f.debug_tuple("Dir").field(d).finish(),
            ArtifactSource::Url(u) => f.debug_tuple("Url").field(&download::redacted(u)).finish(),
        }
    }
}

impl fmt::Display for ArtifactSource {
    /// The directory, or the URL with any password replaced.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactSource::Dir(d) => write!(f, "{}", d.display()),
            ArtifactSource::Url(u) => f.write_str(&download::redacted(u)),
        }
    }
}

/// Where the service takes Kubernetes binaries from and on what terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSettings {
    pub source: ArtifactSource,
    /// The operator's pins; required for every binary of a URL source.
    pub digests: PinnedDigests,
    /// Allows `http://` URLs beyond loopback.
    pub insecure_http: bool,
    pub limits: DownloadLimits,
    /// The sha256 of `/usr/bin/etcd` (Debian's `etcd-server`) on machines
    /// the service bootstraps without binding binaries in: registered hosts
    /// and cloud images. None: the lab image's.
    pub etcd_sha256: Option<String>,
}

impl ArtifactSettings {
    /// The default: the directory `scripts/build-kube` fills, nothing pinned.
    pub fn local(cache: &Path) -> ArtifactSettings {
        ArtifactSettings {
            source: ArtifactSource::Dir(cache.join("kube")),
            digests: PinnedDigests::default(),
            insecure_http: false,
            limits: DownloadLimits::default(),
            etcd_sha256: None,
        }
    }

    /// Refuses settings that could never give `version`'s binaries: a URL
    /// Kubeforge must not fetch from, or a URL source without a pin for
    /// every component of `version`.
    pub fn check(&self, version: &str) -> anyhow::Result<()> {
        if let ArtifactSource::Url(url) = &self.source {
            download::check_transport(url, self.insecure_http)?;
            for c in COMPONENTS {
                self.digests.require(version, ARCH, c)?;
            }
        }
        Ok(())
    }
}

/// Kubernetes binaries as the machines see them.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub kubernetes_version: String,
    /// On this host: `{cache}/kube/v{version}/bin/linux/amd64`, with `.sha256` files.
    pub host_dir: PathBuf,
    /// The same directory inside machines (bound read-only in the lab).
    pub guest_dir: String,
    /// etcd inside machines, and its checksum.
    pub etcd_bin: String,
    pub etcd_sha256: String,
    /// On this host: the sandbox image archive `scripts/build-lab-pause`
    /// builds, uploaded to workers that do not have it bound in; None when
    /// it was not built.
    pub pause_archive: Option<PathBuf>,
}

impl Artifacts {
    /// Expected checksums of the binaries a control plane runs.
    pub fn checksums(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = self.checksums_of(CONTROL_PLANE_COMPONENTS)?;
        out.insert("etcd".into(), self.etcd_sha256.clone());
        Ok(out)
    }

    /// Expected checksums of the named binaries, from their `.sha256` files
    /// (checked, or written from the pins, by [`ensure`]).
    pub fn checksums_of(&self, names: &[&str]) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for c in names {
            let path = self.host_dir.join(format!("{c}.sha256"));
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            out.insert(c.to_string(), digest_of(&text)?);
        }
        Ok(out)
    }
}

fn rel(version: &str) -> String {
    format!("v{version}/bin/linux/{ARCH}")
}

/// sha256 of a file on this host, hex (streamed, not read whole).
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

fn digest_of(text: &str) -> anyhow::Result<String> {
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "not a sha256 digest: {:?}",
            text.chars().take(80).collect::<String>()
        );
    }
    Ok(hex)
}

/// Checks every component in the operator's directory `dir` against its
/// `.sha256` and, where `version`'s binaries are pinned, against the pin.
fn verify_dir(dir: &Path, version: &str, digests: &PinnedDigests) -> anyhow::Result<()> {
    for c in COMPONENTS {
        let want = digest_of(
            &std::fs::read_to_string(dir.join(format!("{c}.sha256")))
                .with_context(|| format!("{c}.sha256 missing in {}", dir.display()))?,
        )?;
        let got = sha256_file(&dir.join(c))?;
        if got != want {
            bail!(
                "{c} in {} does not match its sha256 ({got} != {want})",
                dir.display()
            );
        }
        if let Some(pinned) = digests.get(version, ARCH, c) {
            if got != pinned {
                bail!(
                    "{c} in {} does not match its pinned sha256 ({got} != {pinned})",
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

/// Is every binary of the download cache `dir` the pinned one? Rewrites a
/// `.sha256` that says otherwise.
fn cached_matches_pins(dir: &Path, version: &str, digests: &PinnedDigests) -> bool {
    COMPONENTS.iter().all(|c| {
        let Some(want) = digests.get(version, ARCH, c) else {
            return false;
        };
        let ok = sha256_file(&dir.join(c)).is_ok_and(|got| got == want);
        ok && write_digest(dir, c, want).is_ok()
    })
}

/// `{dir}/{component}.sha256`, the digest the machines are held to.
fn write_digest(dir: &Path, component: &str, digest: &str) -> anyhow::Result<()> {
    let path = dir.join(format!("{component}.sha256"));
    let line = format!("{digest}\n");
    if std::fs::read_to_string(&path).is_ok_and(|t| t == line) {
        return Ok(());
    }
    std::fs::write(&path, line).with_context(|| format!("writing {}", path.display()))
}

/// Resolves the binaries of `version`: a verified directory on this host.
pub async fn ensure(
    settings: &ArtifactSettings,
    cache: &Path,
    version: &str,
) -> anyhow::Result<PathBuf> {
    match &settings.source {
        ArtifactSource::Dir(base) => {
            let dir = base.join(rel(version));
            verify_dir(&dir, version, &settings.digests)?;
            Ok(dir)
        }
        ArtifactSource::Url(base) => {
            settings.check(version)?;
            let out = cache.join("kube").join(format!("v{version}"));
            let dir = out.join("bin/linux").join(ARCH);
            if out.join(".complete").exists()
                && cached_matches_pins(&dir, version, &settings.digests)
            {
                return Ok(dir);
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let _ = std::fs::remove_file(out.join(".complete"));
            let client = download::client(&settings.limits, settings.insecure_http)?;
            for c in COMPONENTS {
                let want = settings.digests.require(version, ARCH, c)?;
                let target = dir.join(c);
                if !(target.exists() && sha256_file(&target)? == want) {
                    let url = base
                        .join(&digests::release_path(version, ARCH, c))
                        .with_context(|| format!("the URL of {c}"))?;
                    download::fetch_verified(&client, &url, &target, want, &settings.limits)
                        .await?;
                    tracing::info!(component = c, url = %download::redacted(&url), sha256 = want, "downloaded; matches its pinned digest");
                }
                write_digest(&dir, c, want)?;
            }
            std::fs::write(out.join(".complete"), "")
                .with_context(|| format!("writing {}", out.join(".complete").display()))?;
            Ok(dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, Bytes};
    use axum::http::StatusCode;
    use futures::StreamExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    const V: &str = "1.20.2";

    /// A release tree in the upstream layout with fake binaries, each with
    /// a `.sha256` that matches it.
    fn tree(root: &Path, version: &str) -> PathBuf {
        let dir = root.join(rel(version));
        std::fs::create_dir_all(&dir).unwrap();
        for c in COMPONENTS {
            let body = format!("#!/bin/sh\necho {c}\n");
            std::fs::write(dir.join(c), &body).unwrap();
            std::fs::write(
                dir.join(format!("{c}.sha256")),
                hex::encode(Sha256::digest(body.as_bytes())),
            )
            .unwrap();
        }
        dir
    }

    /// The operator's manifest for the tree under `root`, as `sha256sum` writes it.
    fn pins(root: &Path, version: &str) -> PinnedDigests {
        let mut text = String::new();
        for c in COMPONENTS {
            let path = digests::release_path(version, ARCH, c);
            text.push_str(&format!(
                "{}  {path}\n",
                sha256_file(&root.join(&path)).unwrap()
            ));
        }
        PinnedDigests::parse(&text).unwrap()
    }

    fn settings(source: &str, digests: PinnedDigests) -> ArtifactSettings {
        ArtifactSettings {
            source: ArtifactSource::parse(source).unwrap(),
            digests,
            insecure_http: false,
            limits: DownloadLimits::default(),
            etcd_sha256: None,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kf-artifacts-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Every file under `dir`, relative (dot files included).
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    async fn listen(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// Serves `root` over HTTP on loopback, counting requests.
    async fn serve(root: PathBuf) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let root = root.clone();
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                match std::fs::read(root.join(uri.path().trim_start_matches('/'))) {
                    Ok(b) => (StatusCode::OK, b),
                    Err(_) => (StatusCode::NOT_FOUND, Vec::new()),
                }
            }
        });
        (listen(app).await, hits)
    }

    /// Serves every path with `body()`.
    async fn serve_body(body: impl Fn() -> Body + Clone + Send + Sync + 'static) -> String {
        listen(axum::Router::new().fallback(move || {
            let body = body.clone();
            async move { body() }
        }))
        .await
    }

    #[tokio::test]
    async fn local_directory_is_verified_in_place() {
        let root = temp("dir");
        let dir = tree(&root, V);
        let local = settings(root.to_str().unwrap(), PinnedDigests::default());
        assert_eq!(ensure(&local, &root, V).await.unwrap(), dir);
        // Pinned and matching: accepted too.
        let pinned = settings(root.to_str().unwrap(), pins(&root, V));
        assert_eq!(ensure(&pinned, &root, V).await.unwrap(), dir);

        // A binary rewritten together with its .sha256: the directory alone
        // accepts it (the operator's path), a pin does not.
        std::fs::write(dir.join("kubectl"), "tampered").unwrap();
        let err = ensure(&local, &root, V).await.unwrap_err();
        assert!(
            err.to_string().contains("does not match its sha256"),
            "{err:#}"
        );
        std::fs::write(
            dir.join("kubectl.sha256"),
            hex::encode(Sha256::digest(b"tampered")),
        )
        .unwrap();
        ensure(&local, &root, V).await.unwrap();
        let err = ensure(&pinned, &root, V).await.unwrap_err();
        assert!(
            err.to_string().contains("does not match its pinned sha256"),
            "{err:#}"
        );
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn url_source_downloads_pinned_binaries_and_caches() {
        let release = temp("release");
        tree(&release, V);
        let (base, hits) = serve(release.clone()).await;
        let cache = temp("cache");
        let src = settings(&base, pins(&release, V));
        let dir = ensure(&src, &cache, V).await.unwrap();
        assert_eq!(dir, cache.join("kube/v1.20.2/bin/linux/amd64"));
        for c in COMPONENTS {
            assert_eq!(
                std::fs::read(dir.join(c)).unwrap(),
                std::fs::read(release.join(rel(V)).join(c)).unwrap()
            );
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(dir.join(c)).unwrap().permissions(),
            );
            assert_eq!(mode & 0o777, 0o755);
        }
        // The machines are held to the pins: the cache's .sha256 files say them.
        let access = Artifacts {
            kubernetes_version: V.into(),
            host_dir: dir.clone(),
            guest_dir: "/x".into(),
            etcd_bin: "/e".into(),
            etcd_sha256: "0".repeat(64),
            pause_archive: None,
        };
        let sums = access.checksums_of(COMPONENTS).unwrap();
        for c in COMPONENTS {
            assert_eq!(Some(sums[*c].as_str()), src.digests.get(V, ARCH, c));
        }
        assert!(cache.join("kube/v1.20.2/.complete").exists());
        // One request per binary: the published .sha256 files are not fetched.
        let first = hits.load(Ordering::SeqCst);
        assert_eq!(first, COMPONENTS.len());
        // Cached: no request at all.
        ensure(&src, &cache, V).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), first);
        // A cached binary that no longer matches its pin is fetched again.
        std::fs::write(dir.join("kubectl"), "changed on disk").unwrap();
        ensure(&src, &cache, V).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), first + 1);
        assert_eq!(
            Some(sha256_file(&dir.join("kubectl")).unwrap().as_str()),
            src.digests.get(V, ARCH, "kubectl")
        );
        let _ = std::fs::remove_dir_all(&cache);
        let _ = std::fs::remove_dir_all(release);
    }

    /// The server's own .sha256 vouches for a changed binary; the pin does
    /// not, and the pin wins.
    #[tokio::test]
    async fn a_published_sha256_does_not_override_the_pin() {
        let release = temp("release");
        let dir = tree(&release, V);
        let pinned = pins(&release, V);
        std::fs::write(dir.join("kube-scheduler"), "evil").unwrap();
        std::fs::write(
            dir.join("kube-scheduler.sha256"),
            hex::encode(Sha256::digest(b"evil")),
        )
        .unwrap();
        let (base, _) = serve(release.clone()).await;
        let cache = temp("cache");
        let err = ensure(&settings(&base, pinned), &cache, V)
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("kube-scheduler") && msg.contains("is not the pinned"),
            "{msg}"
        );
        let left = files(&cache);
        assert!(
            !left.iter().any(|f| f.contains("kube-scheduler")
                || f.contains(".part")
                || f.ends_with(".complete")),
            "{left:?}"
        );
        let _ = std::fs::remove_dir_all(cache);
        let _ = std::fs::remove_dir_all(release);
    }

    #[tokio::test]
    async fn a_version_without_pins_is_refused_before_any_request() {
        let release = temp("release");
        tree(&release, V);
        let (base, hits) = serve(release.clone()).await;
        let cache = temp("cache");
        for digests in [PinnedDigests::default(), pins(&release, V)] {
            let src = settings(&base, digests);
            let err = ensure(&src, &cache, "1.21.0").await.unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains("v1.21.0 kube-apiserver") && msg.contains("no pinned sha256"),
                "{msg}"
            );
            assert!(src.check("1.21.0").is_err());
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        let _ = std::fs::remove_dir_all(cache);
        let _ = std::fs::remove_dir_all(release);
    }

    #[test]
    fn plain_http_is_for_loopback_or_when_allowed() {
        let any_pins = {
            let mut text = String::new();
            for v in ["1.20.2"] {
                for c in COMPONENTS {
                    text.push_str(&format!(
                        "{}  {}\n",
                        "a".repeat(64),
                        digests::release_path(v, ARCH, c)
                    ));
                }
            }
            PinnedDigests::parse(&text).unwrap()
        };
        let check = |url: &str, insecure: bool| {
            let mut s = settings(url, any_pins.clone());
            s.insecure_http = insecure;
            s.check(V).map_err(|e| format!("{e:#}"))
        };
        assert!(check("https://dl.example.com/kube", false).is_ok());
        assert!(check("http://127.0.0.1:8000/kube", false).is_ok());
        assert!(check("http://127.1.2.3/kube", false).is_ok());
        assert!(check("http://[::1]:8000/kube", false).is_ok());
        for refused in [
            "http://dl.example.com/kube",
            "http://localhost:8000/kube",
            "http://10.77.0.1/kube",
            "HTTP://192.0.2.1/kube",
        ] {
            let err = check(refused, false).unwrap_err();
            assert!(
                err.contains("plain http") && err.contains("--insecure-artifacts-http"),
                "{refused}: {err}"
            );
            assert!(check(refused, true).is_ok(), "{refused} with the flag");
        }
        for bad in ["ftp://example.com/kube", "file:///srv/kube"] {
            assert!(ArtifactSource::parse(bad).is_err(), "{bad}");
        }
        // A password in the URL never shows.
        let s = ArtifactSource::parse("https://ops:s3cret@dl.example.com/kube").unwrap();
        assert!(!s.to_string().contains("s3cret"), "{s}");
        assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");
    }

    #[tokio::test]
    async fn plain_http_elsewhere_is_refused_even_by_redirect() {
        let cache = temp("cache");
        // Not dialled: refused before any request.
        let err = ensure(
            &settings("http://192.0.2.1/kube", pins_for_anything()),
            &cache,
            V,
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("plain http"), "{err:#}");
        // A loopback server that redirects off the host over plain http.
        let base =
            listen(axum::Router::new().fallback(|| async {
                axum::response::Redirect::temporary("http://192.0.2.1/kube/x")
            }))
            .await;
        let err = ensure(&settings(&base, pins_for_anything()), &cache, V)
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("plain http"), "{msg}");
        assert!(!files(&cache).iter().any(|f| f.contains(".part")));
        let _ = std::fs::remove_dir_all(cache);
    }

    /// Pins for every component of V (digests of nothing in particular).
    fn pins_for_anything() -> PinnedDigests {
        let mut text = String::new();
        for c in COMPONENTS {
            text.push_str(&format!(
                "{}  {}\n",
                "b".repeat(64),
                digests::release_path(V, ARCH, c)
            ));
        }
        PinnedDigests::parse(&text).unwrap()
    }

    /// Pins of `body` for every component of V.
    fn pins_of(body: &[u8]) -> PinnedDigests {
        let digest = hex::encode(Sha256::digest(body));
        let mut text = String::new();
        for c in COMPONENTS {
            text.push_str(&format!(
                "{digest}  {}\n",
                digests::release_path(V, ARCH, c)
            ));
        }
        PinnedDigests::parse(&text).unwrap()
    }

    fn limited(base: &str, digests: PinnedDigests, limits: DownloadLimits) -> ArtifactSettings {
        ArtifactSettings {
            limits,
            ..settings(base, digests)
        }
    }

    #[tokio::test]
    async fn an_oversize_body_is_refused_while_streaming_and_nothing_is_left() {
        let limits = DownloadLimits {
            max_bytes: 64 * 1024,
            ..DownloadLimits::default()
        };
        let big = vec![7u8; 256 * 1024];
        let cache = temp("cache");
        // Honest Content-Length: refused before reading.
        let body = big.clone();
        let base = serve_body(move || Body::from(body.clone())).await;
        let err = ensure(&limited(&base, pins_of(&big), limits), &cache, V)
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("more than the limit of 65536 bytes"), "{msg}");
        // No Content-Length (chunked): counted while streaming.
        let chunk = Bytes::from(vec![7u8; 16 * 1024]);
        let base = serve_body(move || {
            let chunk = chunk.clone();
            Body::from_stream(futures::stream::iter(
                (0..16).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
            ))
        })
        .await;
        let err = ensure(&limited(&base, pins_of(&big), limits), &cache, V)
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("more than the limit of 65536 bytes (Content-Length said nothing)"),
            "{msg}"
        );
        let left = files(&cache);
        assert!(left.is_empty(), "{left:?}");
        // The same body under a limit it fits is accepted.
        let roomy = DownloadLimits {
            max_bytes: 256 * 1024,
            ..limits
        };
        ensure(&limited(&base, pins_of(&big), roomy), &cache, V)
            .await
            .unwrap();
        let _ = std::fs::remove_dir_all(cache);
    }

    #[tokio::test]
    async fn a_stalled_or_slow_server_times_out_and_nothing_is_left() {
        let cache = temp("cache");
        // Headers and a first chunk, then silence.
        let base = serve_body(|| {
            Body::from_stream(
                futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(
                    b"#!/bin/sh\n",
                ))])
                .chain(futures::stream::pending()),
            )
        })
        .await;
        let limits = DownloadLimits {
            idle_timeout: Duration::from_millis(300),
            ..DownloadLimits::default()
        };
        let started = std::time::Instant::now();
        let err = ensure(&limited(&base, pins_for_anything(), limits), &cache, V)
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("sent nothing for 0.3s"), "{msg}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(files(&cache).is_empty(), "{:?}", files(&cache));

        // A byte every 50 ms never trips the idle limit; the total one ends it.
        let base = serve_body(|| {
            Body::from_stream(futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), ()))
            }))
        })
        .await;
        let limits = DownloadLimits {
            idle_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_millis(500),
            ..DownloadLimits::default()
        };
        let err = ensure(&limited(&base, pins_for_anything(), limits), &cache, V)
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("not finished within 0.5s"), "{msg}");
        assert!(files(&cache).is_empty(), "{:?}", files(&cache));
        let _ = std::fs::remove_dir_all(cache);
    }
}
