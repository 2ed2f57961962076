//! The digest manifest an operator pins Kubernetes binaries with: the
//! `sha256sum` format, one binary a line, paths in the upstream release
//! layout relative to the artifact base:
//!
//! ```text
//! # comments and blank lines are ignored
//! 3b9c...64 hex digits...e1  v1.20.2/bin/linux/amd64/kube-apiserver
//! 0f1e...64 hex digits...77 *v1.20.2/bin/linux/amd64/kubelet
//! ```
//!
//! (`sha256sum v1.20.2/bin/linux/amd64/*` run in the base directory writes
//! it; a `*` before the path, binary mode, and a leading `./` are accepted.)
//! Every line must parse: a typo is an error at start, not a binary that is
//! silently unpinned. The same path twice with two digests is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// Digests by release path (`v<version>/bin/linux/<arch>/<component>`),
/// lowercase hex.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinnedDigests {
    by_path: BTreeMap<String, String>,
    /// The file they came from, for error messages.
    origin: Option<PathBuf>,
}

impl PinnedDigests {
    /// Reads and parses a manifest file.
    pub fn load(path: &Path) -> anyhow::Result<PinnedDigests> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the artifact digests {}", path.display()))?;
        let mut digests = Self::parse(&text)
            .with_context(|| format!("in the artifact digests {}", path.display()))?;
        digests.origin = Some(path.to_path_buf());
        Ok(digests)
    }

    /// Parses manifest text (see the module docs).
    pub fn parse(text: &str) -> anyhow::Result<PinnedDigests> {
        let mut by_path = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (hex, rest) = line
                .split_once(char::is_whitespace)
                .with_context(|| format!("line {n}: expected `<sha256>  <path>`"))?;
            let hex = hex.to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("line {n}: {hex:?} is not a sha256 digest (64 hex digits)");
            }
            let path = rest.trim_start();
            let path = path.strip_prefix('*').unwrap_or(path);
            let path = path.strip_prefix("./").unwrap_or(path);
            check_release_path(path).with_context(|| format!("line {n}"))?;
            match by_path.get(path) {
                Some(prev) if *prev != hex => {
                    bail!("line {n}: {path} is pinned twice, to different digests")
                }
                _ => {
                    by_path.insert(path.to_string(), hex);
                }
            }
        }
        Ok(PinnedDigests {
            by_path,
            origin: None,
        })
    }

    /// True when nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// How many binaries are pinned.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// The pinned digest of `component` of `version` (`1.20.2`) for `arch`.
    pub fn get(&self, version: &str, arch: &str, component: &str) -> Option<&str> {
        self.by_path
            .get(&release_path(version, arch, component))
            .map(String::as_str)
    }

    /// [`PinnedDigests::get`], or an error that names what is missing and
    /// where it should be.
    pub fn require(&self, version: &str, arch: &str, component: &str) -> anyhow::Result<&str> {
        self.get(version, arch, component).with_context(|| {
            let path = release_path(version, arch, component);
            match &self.origin {
                Some(file) => format!(
                    "Kubernetes v{version} {component}: no pinned sha256 for {path} in {}; \
                     a download is accepted only against a pinned digest",
                    file.display()
                ),
                None => format!(
                    "Kubernetes v{version} {component}: no pinned sha256 for {path} (no \
                     --artifact-digests / KUBEFORGE_ARTIFACT_DIGESTS given); a download is \
                     accepted only against a pinned digest"
                ),
            }
        })
    }
}

/// `v<version>/bin/linux/<arch>/<component>`.
pub fn release_path(version: &str, arch: &str, component: &str) -> String {
    format!("v{version}/bin/linux/{arch}/{component}")
}

/// A path of the upstream release layout, and nothing else.
fn check_release_path(path: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = path.split('/').collect();
    let word = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    let ok = matches!(
        parts.as_slice(),
        [v, "bin", "linux", arch, name]
            if v.len() > 1
                && v.starts_with('v')
                && v.as_bytes()[1].is_ascii_digit()
                && word(&v[1..], b".-+")
                && word(arch, b"")
                && word(name, b".-_")
    );
    if !ok {
        bail!("{path:?} is not a release path (v<version>/bin/linux/<arch>/<component>)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3b9c5ed5b1b4c0d1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
    const B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn sha256sum_output_parses() {
        let text = format!(
            "# pinned by ops\n\n{A}  v1.20.2/bin/linux/amd64/kube-apiserver\n\
             {}  ./v1.20.2/bin/linux/amd64/kubelet\n{B} *v1.20.2/bin/linux/arm64/kubectl\n",
            A.to_uppercase()
        );
        let d = PinnedDigests::parse(&text).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d.get("1.20.2", "amd64", "kube-apiserver"), Some(A));
        assert_eq!(d.get("1.20.2", "amd64", "kubelet"), Some(A));
        assert_eq!(d.get("1.20.2", "arm64", "kubectl"), Some(B));
        assert_eq!(d.get("1.20.2", "amd64", "kubectl"), None);
        let err = d.require("1.20.2", "amd64", "kubectl").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("v1.20.2") && msg.contains("kubectl") && msg.contains("no pinned sha256"),
            "{msg}"
        );
    }

    #[test]
    fn anything_else_is_refused_with_its_line() {
        for (text, want) in [
            ("nothex  v1.20.2/bin/linux/amd64/kubectl", "line 1"),
            (A, "line 1"),
            (&format!("# x\n{A}  kubectl"), "line 2"),
            (
                &format!("{A}  v1.20.2/bin/linux/amd64/../kubectl"),
                "release path",
            ),
            (
                &format!("{A}  /v1.20.2/bin/linux/amd64/kubectl"),
                "release path",
            ),
            (
                &format!("{A}  1.20.2/bin/linux/amd64/kubectl"),
                "release path",
            ),
            (
                &format!(
                    "{A}  v1.20.2/bin/linux/amd64/kubectl\n{B}  v1.20.2/bin/linux/amd64/kubectl"
                ),
                "pinned twice",
            ),
        ] {
            let err = PinnedDigests::parse(text).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(want), "{text:?}: {msg}");
        }
        // The same pin twice is harmless.
        let twice =
            format!("{A}  v1.20.2/bin/linux/amd64/kubectl\n{A}  v1.20.2/bin/linux/amd64/kubectl");
        assert_eq!(PinnedDigests::parse(&twice).unwrap().len(), 1);
    }
}
