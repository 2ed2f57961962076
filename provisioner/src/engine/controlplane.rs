//! Control-plane bootstrap, the phases after `machines`: PKI, the node
//! bundle on every control-plane machine, health, RBAC, the endpoint.
//!
//! Level-triggered like the rest of the reconciler: each run first asks
//! every member's health check over SSH (host key pinned from the ledger).
//! A healthy member is left alone; an unhealthy one gets its certificates,
//! kubeconfigs and bundle uploaded and the idempotent bootstrap script run,
//! its output streamed line by line into cluster events (secrets redacted).
//! The cluster's CA keys are generated once and kept sealed in `secrets`.
//!
//! Each pass also reads every reachable member's systemd restart counters
//! before it touches the member, and counts component restarts since the
//! previous pass (`kubeforge_cluster::restarts` decides): each becomes a
//! `ControlPlaneComponentRestarted` warning event and a metric, and is kept
//! on the member's ledger row so the reconciler can see repeated restarts.
//! The units this pass's bootstrap (re)started get a new baseline once the
//! member is healthy again: what the bootstrap caused is not a crash.

use chrono::Utc;
use kubeforge_cluster::bundle::{
    self, paths, ControlPlaneBundleInput, EtcdMember, InitialClusterState,
};
use kubeforge_cluster::kubeconfig::{render_kubeconfig, KubeconfigInput};
use kubeforge_cluster::pki::{
    ApiServerSans, CertKeyPair, ClusterPki, MemberIdentity, SubjectAltName, DEFAULT_LEAF_VALIDITY,
};
use kubeforge_cluster::restarts::{self, MemberRestarts, Observation, RecentRestarts};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ssh::{MachineAccess, Redactor, Session, SshTarget, StreamKind};
use crate::state::App;
use crate::store;
use crate::store::cluster::Cluster;
use crate::store::event::{self, NewEvent};
use crate::store::machine::{self, Machine};

/// The apiserver's port on every member and on the endpoint.
pub const APISERVER_PORT: u16 = 6443;
/// Longest a bootstrap run may take on one machine.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(300);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// What one control-plane pass observed.
#[derive(Debug, Default)]
pub struct ControlPlaneStatus {
    pub healthy_members: usize,
    /// The ledger ids of the healthy members.
    pub healthy: Vec<uuid::Uuid>,
    pub members: usize,
    /// Why not healthy, per member.
    pub problems: Vec<String>,
    pub endpoint: Option<String>,
    pub rbac_applied: bool,
    pub certificates: serde_json::Value,
    /// Component restarts within the configured window
    /// (`Config::control_plane_restart_window`), per member and component,
    /// unreachable members' included.
    pub recent_restarts: Vec<RecentRestarts>,
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(anyhow::anyhow!("{e}"))
}

/// The cluster's CAs and service-account key (see [`store::pki`]); their
/// creation is recorded as an event.
pub async fn ensure_pki(app: &App, c: &Cluster) -> Result<ClusterPki> {
    let (pki, created) = store::pki::ensure(&app.pool, &app.secrets, c).await?;
    if created {
        record(
            app,
            c,
            false,
            "PkiCreated",
            "cluster CA, etcd CA, front-proxy CA and service-account key created",
        )
        .await?;
    }
    Ok(pki)
}

async fn record(app: &App, c: &Cluster, warning: bool, reason: &str, message: &str) -> Result<()> {
    record_for(app, c, None, warning, reason, message).await
}

/// A cluster event, about one of its node pools when `pool` is given.
pub(crate) async fn record_for(
    app: &App,
    c: &Cluster,
    pool: Option<uuid::Uuid>,
    warning: bool,
    reason: &str,
    message: &str,
) -> Result<()> {
    event::record(
        &app.pool,
        NewEvent {
            tenant: &c.tenant,
            cluster_id: c.id,
            node_pool_id: pool,
            operation_id: None,
            warning,
            reason,
            message,
        },
    )
    .await
}

fn target(m: &Machine) -> Result<SshTarget> {
    let address = m
        .address
        .clone()
        .ok_or_else(|| internal(format!("machine {} has no address", m.name)))?;
    let host_key = m
        .host_key
        .clone()
        .ok_or_else(|| internal(format!("machine {} has no pinned host key", m.name)))?;
    Ok(SshTarget::new(address, "root", host_key))
}

/// A machine's IPv4 address, as its provider reported it.
fn address(m: &Machine) -> Result<Ipv4Addr> {
    m.address
        .as_deref()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| internal(format!("machine {} has no IPv4 address", m.name)))
}

/// The stable address kubeconfigs point at. One member: its own address.
pub fn endpoint_host(members: &[&Machine]) -> Result<IpAddr> {
    members
        .first()
        .map(|m| address(m).map(IpAddr::V4))
        .unwrap_or_else(|| Err(internal("no control-plane machine")))
}

/// A kubeconfig for `user`, signed by the cluster CA, pointing at `server`.
fn kubeconfig(cluster: &str, server: &str, ca_pem: &str, user: &str, pair: &CertKeyPair) -> String {
    render_kubeconfig(&KubeconfigInput {
        cluster_name: cluster,
        server,
        ca_pem,
        user_name: user,
        client_cert_pem: &pair.cert_pem,
        client_key_pem: &pair.key_pem,
    })
}

/// What one member gets: its files, the secrets to keep out of events,
/// and when its apiserver certificate expires.
struct MemberBundle {
    files: Vec<(String, u32, String)>,
    redactor: Redactor,
    apiserver_expires_at: chrono::DateTime<Utc>,
}

/// Every file one member needs: certificates, kubeconfigs and the bundle.
fn member_files(
    c: &Cluster,
    pki: &ClusterPki,
    me: &Machine,
    members: &[&Machine],
    endpoint: IpAddr,
    access: &MachineAccess,
) -> Result<MemberBundle> {
    let addr = address(me)?;
    let member_addresses: Vec<IpAddr> = members
        .iter()
        .map(|m| address(m).map(IpAddr::V4))
        .collect::<Result<_>>()?;
    let sans = ApiServerSans::new(
        vec![SubjectAltName::Ip(endpoint)],
        member_addresses,
        IpAddr::V4(c.network.first_service_ip()),
    );
    let identity = MemberIdentity {
        name: me.name.clone(),
        address: IpAddr::V4(addr),
    };
    let validity = DEFAULT_LEAF_VALIDITY;
    let certs = pki
        .issue_member_certs(&identity, &sans, Utc::now(), validity)
        .map_err(internal)?;
    let local = format!("https://127.0.0.1:{APISERVER_PORT}");
    let external = format!("https://{endpoint}:{APISERVER_PORT}");
    let ca = &pki.ca.cert_pem;
    let mut files: Vec<(String, u32, String)> = vec![
        (paths::CA_CRT.into(), 0o644, ca.clone()),
        (paths::CA_KEY.into(), 0o600, pki.ca.key_pem.clone()),
        (
            paths::APISERVER_CRT.into(),
            0o644,
            certs.apiserver.cert_pem.clone(),
        ),
        (
            paths::APISERVER_KEY.into(),
            0o600,
            certs.apiserver.key_pem.clone(),
        ),
        (
            paths::APISERVER_KUBELET_CLIENT_CRT.into(),
            0o644,
            certs.apiserver_kubelet_client.cert_pem.clone(),
        ),
        (
            paths::APISERVER_KUBELET_CLIENT_KEY.into(),
            0o600,
            certs.apiserver_kubelet_client.key_pem.clone(),
        ),
        (
            paths::APISERVER_ETCD_CLIENT_CRT.into(),
            0o644,
            certs.apiserver_etcd_client.cert_pem.clone(),
        ),
        (
            paths::APISERVER_ETCD_CLIENT_KEY.into(),
            0o600,
            certs.apiserver_etcd_client.key_pem.clone(),
        ),
        (
            paths::FRONT_PROXY_CA_CRT.into(),
            0o644,
            pki.front_proxy_ca.cert_pem.clone(),
        ),
        (
            paths::FRONT_PROXY_CLIENT_CRT.into(),
            0o644,
            certs.front_proxy_client.cert_pem.clone(),
        ),
        (
            paths::FRONT_PROXY_CLIENT_KEY.into(),
            0o600,
            certs.front_proxy_client.key_pem.clone(),
        ),
        (
            paths::SA_KEY.into(),
            0o600,
            pki.service_account.private_key_pem.clone(),
        ),
        (
            paths::SA_PUB.into(),
            0o644,
            pki.service_account.public_key_pem.clone(),
        ),
        (
            paths::ETCD_CA_CRT.into(),
            0o644,
            pki.etcd_ca.cert_pem.clone(),
        ),
        (
            paths::ETCD_SERVER_CRT.into(),
            0o644,
            certs.etcd_server.cert_pem.clone(),
        ),
        (
            paths::ETCD_SERVER_KEY.into(),
            0o600,
            certs.etcd_server.key_pem.clone(),
        ),
        (
            paths::ETCD_PEER_CRT.into(),
            0o644,
            certs.etcd_peer.cert_pem.clone(),
        ),
        (
            paths::ETCD_PEER_KEY.into(),
            0o600,
            certs.etcd_peer.key_pem.clone(),
        ),
        (
            paths::ETCD_HEALTHCHECK_CLIENT_CRT.into(),
            0o644,
            certs.etcd_healthcheck_client.cert_pem.clone(),
        ),
        (
            paths::ETCD_HEALTHCHECK_CLIENT_KEY.into(),
            0o600,
            certs.etcd_healthcheck_client.key_pem.clone(),
        ),
        (
            paths::ADMIN_CLIENT_CRT.into(),
            0o644,
            certs.admin_client.cert_pem.clone(),
        ),
        (
            paths::ADMIN_CLIENT_KEY.into(),
            0o600,
            certs.admin_client.key_pem.clone(),
        ),
        (
            paths::CONTROLLER_MANAGER_KUBECONFIG.into(),
            0o600,
            kubeconfig(
                c.name.as_str(),
                &local,
                ca,
                "system:kube-controller-manager",
                &certs.controller_manager_client,
            ),
        ),
        (
            paths::SCHEDULER_KUBECONFIG.into(),
            0o600,
            kubeconfig(
                c.name.as_str(),
                &local,
                ca,
                "system:kube-scheduler",
                &certs.scheduler_client,
            ),
        ),
        (
            paths::ADMIN_KUBECONFIG.into(),
            0o600,
            kubeconfig(
                c.name.as_str(),
                &external,
                ca,
                "kubernetes-admin",
                &certs.admin_client,
            ),
        ),
    ];
    let input = ControlPlaneBundleInput {
        cluster_name: c.name.clone(),
        kubernetes_version: c.kubernetes_version.clone(),
        member_name: me.name.clone(),
        member_address: addr,
        members: members
            .iter()
            .map(|m| {
                Ok(EtcdMember {
                    name: m.name.clone(),
                    address: address(m)?,
                })
            })
            .collect::<Result<_>>()?,
        endpoint_host: endpoint.to_string(),
        endpoint_port: APISERVER_PORT,
        network: c.network.clone(),
        bin_dir: access.artifacts.guest_dir.clone(),
        etcd_bin: access.artifacts.etcd_bin.clone(),
        data_dir: "/var/lib/etcd".into(),
        initial_cluster_state: InitialClusterState::New,
        cluster_domain: "cluster.local".into(),
        binary_sha256: access.artifacts.checksums()?,
    };
    for f in bundle::render_control_plane(&input).map_err(internal)? {
        files.push((f.path, f.mode, f.contents));
    }
    // Every private key body is a secret for the event stream.
    let mut redactor = Redactor::none();
    for (_, mode, contents) in &files {
        if *mode == 0o600 {
            for line in contents
                .lines()
                .filter(|l| l.len() > 16 && !l.starts_with("-----"))
            {
                redactor.add(line);
            }
        }
    }
    Ok(MemberBundle {
        files,
        redactor,
        apiserver_expires_at: certs.apiserver.not_after,
    })
}

async fn healthy(session: &Session) -> std::result::Result<(), String> {
    let mut output = Vec::new();
    let cmd = format!("test -x {0} && {0}", paths::HEALTHCHECK_SCRIPT);
    match session
        .run(&cmd, HEALTH_TIMEOUT, &Redactor::none(), |_, line| {
            output.push(line.to_string())
        })
        .await
    {
        Ok(0) => Ok(()),
        Ok(_) if output.is_empty() => Err("not bootstrapped yet".into()),
        Ok(_) => Err(output.join("; ")),
        Err(e) => Err(e.to_string()),
    }
}

/// Uploads a machine's files and runs its bootstrap script; its output
/// goes to cluster events line by line (all of it, or with `quiet` only
/// stderr and failures). Returns whether the script succeeded, and its
/// output lines (redacted).
#[allow(clippy::too_many_arguments)]
async fn bootstrap(
    app: &App,
    c: &Cluster,
    session: &Session,
    files: &[(String, u32, String)],
    redactor: &Redactor,
    machine: &str,
    script: &str,
    quiet: bool,
) -> Result<(bool, Vec<String>)> {
    for (path, mode, contents) in files {
        session
            .upload(path, contents.as_bytes(), *mode)
            .await
            .map_err(|e| Error::Unavailable(format!("uploading {path} to {machine}: {e}")))?;
    }
    let mut lines = Vec::new();
    let status = session
        .run(
            &format!("bash {script}"),
            BOOTSTRAP_TIMEOUT,
            redactor,
            |kind, line| lines.push((kind, line.to_string())),
        )
        .await
        .map_err(|e| Error::Unavailable(format!("bootstrap on {machine}: {e}")))?;
    for (kind, line) in &lines {
        let warning = *kind == StreamKind::Stderr;
        if quiet
            && !warning
            && status == 0
            && !line.contains("installed")
            && !line.contains("started")
        {
            continue;
        }
        record(
            app,
            c,
            warning,
            "BootstrapOutput",
            &format!("{machine}: {line}"),
        )
        .await?;
    }
    Ok((status == 0, lines.into_iter().map(|(_, l)| l).collect()))
}

/// Opens a session to a machine, or says why not (an unreachable member
/// is unhealthy, not a reason to abort the pass).
pub(crate) async fn open(
    access: &MachineAccess,
    m: &Machine,
) -> std::result::Result<Session, String> {
    let t = target(m).map_err(|e| e.to_string())?;
    access
        .ssh
        .connect(&t, &access.client_key.auth())
        .await
        .map_err(|e| format!("{}: unreachable over SSH: {e}", m.name))
}

/// Runs a command, returning (exit status, output lines).
async fn exec(session: &Session, cmd: &str) -> Result<(i32, Vec<String>)> {
    let mut out = Vec::new();
    let code = session
        .run(cmd, HEALTH_TIMEOUT, &Redactor::none(), |_, l| {
            out.push(l.to_string())
        })
        .await
        .map_err(|e| Error::Unavailable(format!("{}: {e}", session.target())))?;
    Ok((code, out))
}

/// The event reason for a control-plane component that restarted.
pub const COMPONENT_RESTARTED: &str = "ControlPlaneComponentRestarted";

/// A member's restart history as its ledger row holds it; an unreadable
/// one starts over from a baseline.
fn restart_history(m: &Machine) -> MemberRestarts {
    let Some(v) = &m.component_restarts else {
        return MemberRestarts::default();
    };
    serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        tracing::warn!(machine = %m.name, error = %e, "unreadable component_restarts; starting over");
        MemberRestarts::default()
    })
}

/// What systemd says about the member's units, or None (logged) when it
/// cannot be asked or its answer is not what systemd prints. The command
/// is a constant; the answer is only parsed.
async fn observe_units(session: &Session, m: &Machine) -> Option<Observation> {
    let (_, lines) = match exec(session, &restarts::show_command()).await {
        Ok(out) => out,
        Err(e) => {
            tracing::warn!(machine = %m.name, error = %e, "reading systemd restart counters");
            return None;
        }
    };
    match restarts::parse_show(&lines) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(machine = %m.name, error = %e, "reading systemd restart counters");
            None
        }
    }
}

/// Counts the member's component restarts since the previous pass: the
/// ledger row and one warning event per restarted component in one
/// transaction, then the metric. Nothing is written when nothing changed.
async fn count_restarts(
    app: &App,
    c: &Cluster,
    m: &Machine,
    history: &mut MemberRestarts,
    observation: &Observation,
) -> Result<()> {
    let window = app.config.control_plane_restart_window;
    let now = Utc::now();
    let before = history.clone();
    let counted = history.observe(observation, now, window);
    if *history == before {
        return Ok(());
    }
    let in_window = history.within(now, window);
    let mut tx = app.pool.begin().await?;
    machine::set_component_restarts(
        &mut *tx,
        m.id,
        &serde_json::to_value(&*history).map_err(internal)?,
    )
    .await?;
    for r in &counted {
        let total = in_window.get(r.component).copied().unwrap_or(r.restarts);
        let message = restarts::restart_message(&m.name, r, total, window);
        tracing::warn!(cluster = %c.name, machine = %m.name, component = r.component, restarts = r.restarts, "control-plane component restarted");
        event::record(
            &mut *tx,
            NewEvent {
                tenant: &c.tenant,
                cluster_id: c.id,
                node_pool_id: None,
                operation_id: None,
                warning: true,
                reason: COMPONENT_RESTARTED,
                message: &message,
            },
        )
        .await?;
    }
    tx.commit().await?;
    for r in &counted {
        app.metrics
            .control_plane_restarts
            .with_label_values(&[r.component])
            .inc_by(u64::from(r.restarts));
    }
    Ok(())
}

/// After this pass's bootstrap (re)started `units` on the member: a new
/// baseline for them, so what the bootstrap caused is not counted as
/// crashes.
async fn rebaseline_restarts(
    app: &App,
    session: &Session,
    m: &Machine,
    history: &mut MemberRestarts,
    units: &[&str],
) -> Result<()> {
    let Some(observation) = observe_units(session, m).await else {
        return Ok(());
    };
    let before = history.clone();
    history.rebaseline(&observation, units);
    if *history != before {
        machine::set_component_restarts(
            &app.pool,
            m.id,
            &serde_json::to_value(&*history).map_err(internal)?,
        )
        .await?;
    }
    Ok(())
}

/// Installs (idempotently) and checks the load balancer in front of the members.
async fn reconcile_load_balancer(
    app: &App,
    access: &MachineAccess,
    c: &Cluster,
    lb: &Machine,
    members: &[&Machine],
) -> Result<std::result::Result<(), String>> {
    let session = match open(access, lb).await {
        Ok(s) => s,
        Err(why) => return Ok(Err(why)),
    };
    let input = bundle::LoadBalancerInput {
        cluster_name: c.name.clone(),
        listen_port: APISERVER_PORT,
        backend_port: APISERVER_PORT,
        backends: members
            .iter()
            .map(|m| {
                Ok(EtcdMember {
                    name: m.name.clone(),
                    address: address(m)?,
                })
            })
            .collect::<Result<_>>()?,
    };
    let files: Vec<(String, u32, String)> = bundle::render_load_balancer(&input)
        .map_err(internal)?
        .into_iter()
        .map(|f| (f.path, f.mode, f.contents))
        .collect();
    let (ok, _) = bootstrap(
        app,
        c,
        &session,
        &files,
        &Redactor::none(),
        &lb.name,
        bundle::lb_paths::BOOTSTRAP_SCRIPT,
        true,
    )
    .await?;
    let (code, out) = exec(&session, bundle::lb_paths::HEALTHCHECK_SCRIPT).await?;
    session.close().await;
    Ok(if ok && code == 0 {
        Ok(())
    } else {
        Err(format!("{}: {}", lb.name, out.join("; ")))
    })
}

/// One pass over the control plane. Errors are for things that should be
/// retried with backoff (the database, a failed upload); an unreachable or
/// unhealthy member is reported in the status instead.
#[tracing::instrument(skip_all, fields(cluster = %c.name))]
pub async fn reconcile(
    app: &App,
    access: &MachineAccess,
    c: &Cluster,
    members: &[&Machine],
    lb: Option<&Machine>,
) -> Result<ControlPlaneStatus> {
    let pki = ensure_pki(app, c).await?;
    let mut status = ControlPlaneStatus {
        members: members.len(),
        ..Default::default()
    };
    let endpoint = match lb {
        Some(lb) => IpAddr::V4(address(lb)?),
        None => endpoint_host(members)?,
    };
    let mut apiserver_expiry = None;
    // Lab machines have the service's binaries bound in; others get them
    // uploaded before their first bootstrap.
    let binaries_bound = app
        .providers
        .get(c.provider.kind())
        .is_some_and(|p| p.capabilities().kube_binaries_bound);
    let mut histories: HashMap<uuid::Uuid, MemberRestarts> =
        members.iter().map(|m| (m.id, restart_history(m))).collect();

    // Observe every member; bootstrap the unhealthy ones, all before any
    // waiting, so a new etcd cluster's members find each other. Restarts
    // are counted first, before the bootstrap may restart anything.
    let mut sessions: Vec<(&Machine, Session)> = Vec::new();
    let mut bootstrapped = Vec::new();
    for m in members {
        let session = match open(access, m).await {
            Ok(s) => s,
            Err(why) => {
                status.problems.push(why);
                continue;
            }
        };
        if let Some(observation) = observe_units(&session, m).await {
            let history = histories.entry(m.id).or_default();
            count_restarts(app, c, m, history, &observation).await?;
        }
        if let Err(why) = healthy(&session).await {
            tracing::info!(machine = %m.name, why = %why, "bootstrapping control-plane member");
            if !binaries_bound {
                let uploaded = super::binaries::ensure(
                    &session,
                    &access.artifacts,
                    &m.name,
                    crate::artifacts::CONTROL_PLANE_COMPONENTS,
                )
                .await?;
                if uploaded > 0 {
                    record(
                        app,
                        c,
                        false,
                        "BinariesUploaded",
                        &format!("{}: {uploaded} Kubernetes binaries uploaded", m.name),
                    )
                    .await?;
                }
            }
            let b = member_files(c, &pki, m, members, endpoint, access)?;
            apiserver_expiry = Some(b.apiserver_expires_at);
            let (ok, output) = bootstrap(
                app,
                c,
                &session,
                &b.files,
                &b.redactor,
                &m.name,
                paths::BOOTSTRAP_SCRIPT,
                false,
            )
            .await?;
            if !ok {
                status
                    .problems
                    .push(format!("{}: bootstrap script failed", m.name));
                session.close().await;
                continue;
            }
            bootstrapped.push((m.id, restarts::started_by_bootstrap(&output)));
        }
        sessions.push((m, session));
    }
    // Components need a few seconds after a (re)start; etcd needs quorum.
    let deadline = tokio::time::Instant::now()
        + if bootstrapped.is_empty() {
            Duration::ZERO
        } else {
            Duration::from_secs(90)
        };
    let mut healthy_members: Vec<&Machine> = Vec::new();
    for (m, session) in &sessions {
        let mut last = healthy(session).await;
        while last.is_err() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            last = healthy(session).await;
        }
        match last {
            Ok(()) => healthy_members.push(m),
            Err(why) => status.problems.push(format!("{}: {why}", m.name)),
        }
    }
    status.healthy_members = healthy_members.len();
    status.healthy = healthy_members.iter().map(|m| m.id).collect();
    // What this pass's bootstrap (re)started is not a crash: a new
    // baseline for those units, once the member is healthy again (or the
    // wait is over).
    for (m, session) in &sessions {
        let Some((_, units)) = bootstrapped.iter().find(|(id, _)| *id == m.id) else {
            continue;
        };
        if !units.is_empty() {
            let history = histories.entry(m.id).or_default();
            rebaseline_restarts(app, session, m, history, units).await?;
        }
    }
    let window = app.config.control_plane_restart_window;
    let now = Utc::now();
    for m in members {
        let Some(history) = histories.get(&m.id) else {
            continue;
        };
        for (component, count) in history.within(now, window) {
            status.recent_restarts.push(RecentRestarts {
                member: m.name.clone(),
                component,
                count,
            });
        }
    }

    // The endpoint: the load balancer (three members) or the member itself.
    let mut endpoint_ok = healthy_members.len() == members.len() || lb.is_some();
    if let Some(lb) = lb {
        if let Err(why) = reconcile_load_balancer(app, access, c, lb, members).await? {
            status.problems.push(why);
            endpoint_ok = false;
        }
    }
    // Through the endpoint, as the service's own identity: the API server
    // is ready, and the addons (RBAC) are in force once that identity may
    // list nodes (its binding is applied last; see
    // `kubeforge_cluster::addons`).
    if endpoint_ok && !healthy_members.is_empty() {
        let url = format!("https://{endpoint}:{APISERVER_PORT}");
        let api = super::tenant_api(app, c, &url).await?;
        // Short polls, bounded: a fresh API server and its addons come up
        // within seconds, and a whole pass (SSH to every member) is slower
        // than waiting here.
        let mut answered = Err(Error::Unavailable("not asked".into()));
        for _ in 0..40 {
            answered = api.ready().await;
            if answered.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match answered {
            Ok(()) => {
                status.endpoint = Some(url.clone());
                let mut effective = Err(Error::Unavailable("not asked".into()));
                for _ in 0..80 {
                    effective = api.nodes().await.map(|_| ());
                    if effective.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                // The tenants' kubeconfig groups of the current credential
                // generation, bound and proven (see `super::credentials`).
                if effective.is_ok() {
                    let member = sessions
                        .iter()
                        .find(|(m, _)| healthy_members.iter().any(|h| h.id == m.id))
                        .map(|(m, s)| (*m, s));
                    effective = super::credentials::ensure(app, access, c, member, &url).await;
                }
                status.rbac_applied = effective.is_ok();
                if let Err(why) = effective {
                    status.problems.push(format!(
                        "the cluster's addons (RBAC) are not in force yet: {why}"
                    ));
                }
            }
            Err(why) => status
                .problems
                .push(format!("the endpoint {url} does not answer /readyz: {why}")),
        }
    }
    for (_, session) in sessions {
        session.close().await;
    }
    let mut certs = serde_json::to_value(pki.expiries(std::iter::empty())).map_err(internal)?;
    if let (Some(exp), Some(obj)) = (apiserver_expiry, certs.as_object_mut()) {
        obj.insert("apiserver_expires_at".into(), serde_json::json!(exp));
    } else if let (Some(prev), Some(obj)) = (
        c.certificates.get("apiserver_expires_at"),
        certs.as_object_mut(),
    ) {
        obj.insert("apiserver_expires_at".into(), prev.clone());
    }
    status.certificates = certs;
    Ok(status)
}
