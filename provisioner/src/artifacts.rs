//! Kubernetes binaries, resolved by version from a configured source.
//!
//! A source is either a local directory or an HTTP(S) base URL, both in
//! the upstream release layout: `{base}/v{version}/bin/linux/{arch}/{component}`
//! with `{component}.sha256` (the hex digest) beside each binary. A local
//! directory is used in place after every checksum is verified; a URL is
//! downloaded into the cache (`{cache}/kube/v{version}/...`, the same layout),
//! each binary checked against its published digest before it is renamed
//! into place, and a `.complete` marker written last. Nothing unverified is
//! ever used; the bootstrap script checks the digests again on the machine.

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The components a cluster needs from the source.
pub const COMPONENTS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// Where binaries come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    Dir(PathBuf),
    Http(String),
}

impl ArtifactSource {
    /// `http://` or `https://` is a URL; anything else a directory.
    pub fn parse(value: &str) -> Self {
        if value.starts_with("http://") || value.starts_with("https://") {
            ArtifactSource::Http(value.trim_end_matches('/').to_string())
        } else {
            ArtifactSource::Dir(PathBuf::from(value))
        }
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
}

impl Artifacts {
    /// Expected checksums of the binaries a control plane runs.
    pub fn checksums(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = self.checksums_of(COMPONENTS)?;
        out.insert("etcd".into(), self.etcd_sha256.clone());
        Ok(out)
    }

    /// Expected checksums of the named binaries, from their `.sha256` files.
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
    format!("v{version}/bin/linux/amd64")
}

/// sha256 of a file on this host, hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(bytes)))
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

/// Checks every component in `dir` against its `.sha256`.
fn verify_dir(dir: &Path) -> anyhow::Result<()> {
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
    }
    Ok(())
}

/// Resolves the binaries of `version`: a verified directory on this host.
pub async fn ensure(
    source: &ArtifactSource,
    cache: &Path,
    version: &str,
) -> anyhow::Result<PathBuf> {
    match source {
        ArtifactSource::Dir(base) => {
            let dir = base.join(rel(version));
            verify_dir(&dir)?;
            Ok(dir)
        }
        ArtifactSource::Http(base) => {
            let out = cache.join("kube").join(format!("v{version}"));
            let dir = out.join("bin/linux/amd64");
            if out.join(".complete").exists() && verify_dir(&dir).is_ok() {
                return Ok(dir);
            }
            std::fs::create_dir_all(&dir)?;
            let client = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()?;
            for c in COMPONENTS {
                let url = format!("{base}/{}/{c}", rel(version));
                let fetch = |url: String| {
                    let client = client.clone();
                    async move {
                        let r = client
                            .get(&url)
                            .send()
                            .await
                            .with_context(|| format!("GET {url}"))?;
                        if !r.status().is_success() {
                            bail!("GET {url}: {}", r.status());
                        }
                        Ok::<_, anyhow::Error>(r.bytes().await?)
                    }
                };
                let want = digest_of(&String::from_utf8_lossy(
                    &fetch(format!("{url}.sha256")).await?,
                ))?;
                let target = dir.join(c);
                if target.exists() && sha256_file(&target)? == want {
                    std::fs::write(dir.join(format!("{c}.sha256")), format!("{want}\n"))?;
                    continue;
                }
                let body = fetch(url.clone()).await?;
                let got = hex::encode(Sha256::digest(&body));
                if got != want {
                    bail!("{url} does not match its published sha256 ({got} != {want})");
                }
                let tmp = dir.join(format!(".{c}.part"));
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::write(&tmp, &body)?;
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
                }
                std::fs::rename(&tmp, &target)?;
                std::fs::write(dir.join(format!("{c}.sha256")), format!("{want}\n"))?;
                tracing::info!(component = c, url = %url, "downloaded and verified");
            }
            verify_dir(&dir)?;
            std::fs::write(out.join(".complete"), "")?;
            Ok(dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A release tree in the upstream layout with fake binaries.
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

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kf-artifacts-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
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
                    Ok(b) => (axum::http::StatusCode::OK, b),
                    Err(_) => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), hits)
    }

    #[tokio::test]
    async fn local_directory_is_verified_in_place() {
        let root = temp("dir");
        let dir = tree(&root, "1.20.2");
        let got = ensure(&ArtifactSource::Dir(root.clone()), &root, "1.20.2")
            .await
            .unwrap();
        assert_eq!(got, dir);
        std::fs::write(dir.join("kubectl"), "tampered").unwrap();
        let err = ensure(&ArtifactSource::Dir(root.clone()), &root, "1.20.2")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err:#}");
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn url_source_downloads_verifies_and_caches() {
        let release = temp("release");
        tree(&release, "1.20.2");
        let (base, hits) = serve(release.clone()).await;
        let cache = temp("cache");
        let src = ArtifactSource::parse(&base);
        let dir = ensure(&src, &cache, "1.20.2").await.unwrap();
        assert_eq!(dir, cache.join("kube/v1.20.2/bin/linux/amd64"));
        for c in COMPONENTS {
            assert!(dir.join(c).exists());
        }
        assert!(cache.join("kube/v1.20.2/.complete").exists());
        let first = hits.load(Ordering::SeqCst);
        assert_eq!(first, COMPONENTS.len() * 2);
        // Cached: no request at all.
        ensure(&src, &cache, "1.20.2").await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), first);
        let _ = std::fs::remove_dir_all(&cache);

        // A binary that does not match its published digest is refused and not installed.
        std::fs::write(release.join(rel("1.20.2")).join("kube-scheduler"), "evil").unwrap();
        let cache = temp("cache2");
        let err = ensure(&src, &cache, "1.20.2").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("does not match its published sha256"),
            "{err:#}"
        );
        assert!(!cache
            .join("kube/v1.20.2/bin/linux/amd64/kube-scheduler")
            .exists());
        assert!(!cache.join("kube/v1.20.2/.complete").exists());
        // A missing version is a clear error.
        let err = ensure(&src, &cache, "9.9.9").await.unwrap_err();
        assert!(err.to_string().contains("404"), "{err:#}");
        let _ = std::fs::remove_dir_all(cache);
        let _ = std::fs::remove_dir_all(release);
    }
}
