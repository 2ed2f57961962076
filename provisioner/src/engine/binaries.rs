//! The Kubernetes binaries a control-plane member or a worker runs (and a
//! worker's sandbox image archive), put onto machines that do not have them
//! bound in (`Capabilities::kube_binaries_bound` is false: registered
//! hosts, cloud instances). Part of the bootstrap, not of the provider:
//! providers only make machines.
//!
//! Each binary is compared by sha256 on the machine and uploaded (atomic,
//! as root, over the member's pinned session) only where it differs; all
//! are checked again afterwards. The bootstrap script checks them a third
//! time before it starts anything. The digests are those `artifacts::ensure`
//! verified the host's copies against (the operator's pins, for a URL
//! source), and what is uploaded is read from that verified directory.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::artifacts::Artifacts;
use crate::error::{Error, Result};
use crate::ssh::{parse_sha256sum, sha256sum_command, Redactor, Session};

/// Bound on one `sha256sum` over the binaries.
const SUM_TIMEOUT: Duration = Duration::from_secs(60);

/// sha256 of `paths` on the machine, by path; missing files are absent.
async fn remote_sha256(
    session: &Session,
    machine: &str,
    paths: &[String],
) -> Result<BTreeMap<String, String>> {
    let mut lines = Vec::new();
    session
        .run(
            &sha256sum_command(paths),
            SUM_TIMEOUT,
            &Redactor::none(),
            |_, l| lines.push(l.to_string()),
        )
        .await
        .map_err(|e| Error::Unavailable(format!("checking binaries on {machine}: {e}")))?;
    Ok(parse_sha256sum(&lines))
}

/// Makes the binaries named in `components` (e.g.
/// [`crate::artifacts::CONTROL_PLANE_COMPONENTS`]) on the machine match
/// `artifacts`; returns how many were uploaded.
pub async fn ensure(
    session: &Session,
    artifacts: &Artifacts,
    machine: &str,
    components: &[&str],
) -> Result<usize> {
    let expected = artifacts
        .checksums_of(components)
        .map_err(|e| Error::Internal(anyhow::anyhow!("the service's binaries: {e:#}")))?;
    let guest = artifacts.guest_dir.trim_end_matches('/');
    let path = |name: &str| format!("{guest}/{name}");
    let paths: Vec<String> = components.iter().map(|n| path(n)).collect();
    let before = remote_sha256(session, machine, &paths).await?;
    let mut uploaded = 0;
    for name in components {
        let want = &expected[*name];
        if before.get(&path(name)) == Some(want) {
            continue;
        }
        let local = artifacts.host_dir.join(name);
        let bytes = tokio::fs::read(&local)
            .await
            .map_err(|e| Error::Internal(anyhow::anyhow!("reading {}: {e}", local.display())))?;
        tracing::info!(
            machine,
            binary = name,
            bytes = bytes.len(),
            "uploading a Kubernetes binary"
        );
        session
            .upload(&path(name), &bytes, 0o755)
            .await
            .map_err(|e| Error::Unavailable(format!("uploading {name} to {machine}: {e}")))?;
        uploaded += 1;
    }
    let after = remote_sha256(session, machine, &paths).await?;
    for name in components {
        let want = &expected[*name];
        if after.get(&path(name)) != Some(want) {
            return Err(Error::Unavailable(format!(
                "{} on {machine} does not match its sha256 {want} after upload",
                path(name)
            )));
        }
    }
    Ok(uploaded)
}

/// Makes the file at `remote` on the machine a copy of `local` (compared by
/// sha256, uploaded only where it differs, checked afterwards); returns
/// whether it was uploaded. For the sandbox image archive of workers.
pub async fn ensure_file(
    session: &Session,
    local: &std::path::Path,
    remote: &str,
    machine: &str,
) -> Result<bool> {
    let want = crate::artifacts::sha256_file(local)
        .map_err(|e| Error::Internal(anyhow::anyhow!("hashing {}: {e:#}", local.display())))?;
    let paths = [remote.to_string()];
    if remote_sha256(session, machine, &paths).await?.get(remote) == Some(&want) {
        return Ok(false);
    }
    let bytes = tokio::fs::read(local)
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("reading {}: {e}", local.display())))?;
    tracing::info!(
        machine,
        path = remote,
        bytes = bytes.len(),
        "uploading a file"
    );
    session
        .upload(remote, &bytes, 0o644)
        .await
        .map_err(|e| Error::Unavailable(format!("uploading {remote} to {machine}: {e}")))?;
    if remote_sha256(session, machine, &paths).await?.get(remote) != Some(&want) {
        return Err(Error::Unavailable(format!(
            "{remote} on {machine} does not match its sha256 {want} after upload"
        )));
    }
    Ok(true)
}
