//! Binding the cluster's current credential generation: the RBAC of
//! `kubeforge_cluster::credentials` applied in the cluster whenever the
//! generation on the cluster's row is not the one applied (a new cluster,
//! a revocation, a cluster from before generations), then proven by asking
//! as a viewer and an editor of that generation, then recorded; revocation operations up
//! to it succeed.
//!
//! Called by the control-plane pass once the endpoint serves and the
//! service's own RBAC is in force, with a session to a healthy member:
//! the manifest is uploaded there and applied with that member's admin
//! kubeconfig (a constant command; the generation is a number). A pass that
//! fails here leaves the generation unapplied and the addons not in force
//! (`rbac_applied` false): the next pass tries again.

use chrono::{TimeDelta, Utc};
use kubeforge_cluster::bundle::paths;
use kubeforge_cluster::credentials::{self as kc, KubeconfigRole};
use kubeforge_cluster::operations::{OperationKind, Progress, Step};
use kubeforge_cluster::Phase;
use std::time::Duration;

use super::controlplane::{ensure_pki, record_for, APISERVER_PORT};
use crate::error::{Error, Result};
use crate::ssh::{MachineAccess, Redactor, Session};
use crate::state::App;
use crate::store::cluster::Cluster;
use crate::store::machine::Machine;
use crate::store::{credentials, operation};

const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes the cluster's current credential generation the one in force
/// (see the module doc). `member` is a healthy member and its session;
/// `url` the cluster's endpoint.
pub async fn ensure(
    app: &App,
    access: &MachineAccess,
    c: &Cluster,
    member: Option<(&Machine, &Session)>,
    url: &str,
) -> Result<()> {
    let g = credentials::generations(&app.pool, c.id).await?;
    if g.applied >= g.current {
        // `view` and `edit` are aggregated roles, empty until the
        // controller manager fills them; ask as a viewer and an editor
        // would (until the cluster has been ready).
        if !matches!(c.phase, Phase::Ready | Phase::Degraded) {
            return viewers_and_editors_may_list(app, c, url, g.current).await;
        }
        return Ok(());
    }
    let (m, session) = member.ok_or_else(|| {
        Error::Unavailable("no healthy member to bind the kubeconfig groups on".into())
    })?;
    session
        .upload(kc::MANIFEST_PATH, kc::manifest(g.current).as_bytes(), 0o644)
        .await
        .map_err(|e| Error::Unavailable(format!("uploading the credentials to {}: {e}", m.name)))?;
    let address = m
        .address
        .as_deref()
        .ok_or_else(|| Error::Unavailable(format!("{} has no address", m.name)))?;
    let command = kc::apply_command(
        &format!("{}/kubectl", access.artifacts.guest_dir),
        paths::ADMIN_KUBECONFIG,
        &format!("https://{address}:{APISERVER_PORT}"),
    );
    let mut out = Vec::new();
    let code = session
        .run(&command, APPLY_TIMEOUT, &Redactor::none(), |_, l| {
            out.push(l.to_string())
        })
        .await
        .map_err(|e| Error::Unavailable(format!("{}: {e}", m.name)))?;
    if code != 0 {
        return Err(Error::Unavailable(format!(
            "binding credential generation {} on {}: {}",
            g.current,
            m.name,
            out.join("; ")
        )));
    }
    viewers_and_editors_may_list(app, c, url, g.current).await?;
    credentials::set_applied(&app.pool, c.id, g.current).await?;
    let mut conn = app.pool.acquire().await?;
    for op in operation::list_active(&mut conn, c.id).await? {
        if op.kind == OperationKind::CredentialsRevoke && op.target_generation <= g.current {
            operation::set_step(
                &app.pool,
                op.id,
                Step::Apply,
                Progress::Succeeded,
                None,
                None,
            )
            .await?;
            app.metrics
                .observe_operation(operation::finish(&app.pool, op.id, None).await?);
        }
    }
    record_for(
        app,
        c,
        None,
        false,
        "CredentialsApplied",
        &format!(
            "kubeconfig groups of credential generation {} bound; kubeconfigs of earlier generations are refused",
            g.current
        ),
    )
    .await?;
    tracing::info!(cluster = %c.name, generation = g.current, "credential generation applied");
    Ok(())
}

/// Whether viewer and editor kubeconfigs of generation `generation` work:
/// a 2-minute certificate of each lists namespaces, which only `view` and
/// `edit` grant (aggregated roles, empty until the controller manager
/// fills them), retried for a few seconds.
async fn viewers_and_editors_may_list(
    app: &App,
    c: &Cluster,
    url: &str,
    generation: i64,
) -> Result<()> {
    let pki = ensure_pki(app, c).await?;
    let signer = pki
        .ca
        .signer()
        .map_err(|e| Error::Internal(anyhow::anyhow!("the cluster CA: {e}")))?;
    // Viewers first: theirs is the manifest's last binding.
    for role in [KubeconfigRole::Viewer, KubeconfigRole::Editor] {
        let group = kc::group(role, generation);
        let probe = crate::tenant::KubeTenant::connect_as(
            c.name.as_str(),
            url,
            &pki.ca.cert_pem,
            &signer,
            ("kubeforge:probe", &[group.as_str()]),
            TimeDelta::minutes(2),
            Utc::now(),
        )
        .await?;
        let mut answer = probe.may_list_namespaces().await;
        for _ in 0..60 {
            if answer.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            answer = probe.may_list_namespaces().await;
        }
        answer
            .map_err(|e| Error::Unavailable(format!("{role}s cannot list namespaces yet: {e}")))?;
    }
    Ok(())
}
