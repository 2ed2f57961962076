//! The Kubernetes binaries a control-plane member runs, put onto machines
//! that do not have them bound in (`Capabilities::kube_binaries_bound` is
//! false: registered hosts, cloud instances). Part of the bootstrap, not
//! of the provider: providers only make machines.
//!
//! Each binary is compared by sha256 on the machine and uploaded (atomic,
//! as root, over the member's pinned session) only where it differs; all
//! are checked again afterwards. The bootstrap script checks them a third
//! time before it starts anything. The digests are those `artifacts::ensure`
//! verified the host's copies against (the operator's pins, for a URL
//! source), and what is uploaded is read from that verified directory.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::artifacts::{Artifacts, CONTROL_PLANE_COMPONENTS as COMPONENTS};
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

/// Makes the control-plane binaries on the machine match `artifacts`;
/// returns how many were uploaded.
pub async fn ensure(session: &Session, artifacts: &Artifacts, machine: &str) -> Result<usize> {
    let expected = artifacts
        .checksums_of(COMPONENTS)
        .map_err(|e| Error::Internal(anyhow::anyhow!("the service's binaries: {e:#}")))?;
    let guest = artifacts.guest_dir.trim_end_matches('/');
    let path = |name: &str| format!("{guest}/{name}");
    let paths: Vec<String> = COMPONENTS.iter().map(|n| path(n)).collect();
    let before = remote_sha256(session, machine, &paths).await?;
    let mut uploaded = 0;
    for name in COMPONENTS {
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
    for name in COMPONENTS {
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
