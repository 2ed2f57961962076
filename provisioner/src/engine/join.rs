//! Joining workers to their cluster: each machine gets a bootstrap token
//! of its own (a Secret in `kube-system`, server-side applied through the
//! cluster's API; see [`kubeforge_cluster::join`]), its CA certificate,
//! token kubeconfig, kube-proxy credential and worker bundle over SSH, and
//! its bootstrap script runs; meanwhile the approver decides the kubelet
//! client CSRs made with those tokens: approved for exactly the ledger's
//! node name, denied otherwise. Called by the pool pass ([`super::pools`]).
//!
//! A machine whose provider does not bind the service's binaries in
//! (`Capabilities::kube_binaries_bound` false: registered hosts) first gets
//! kubelet, kube-proxy, kubectl and the sandbox image archive uploaded
//! ([`super::binaries`]). What the bundle does for a container is decided by
//! what the machine is, probed over its session (`systemd-detect-virt -c`
//! and its own cgroup), not by its provider.

use chrono::{TimeDelta, Utc};
use kubeforge_cluster::join::{self, check_node_client_csr, BootstrapToken, KUBELET_CLIENT_SIGNER};
use kubeforge_cluster::kubeconfig::render_token_kubeconfig;
use kubeforge_cluster::worker::{self, ContainerHost, WorkerBundleInput};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::controlplane::{self, record_for as record};
use crate::error::{Error, Result};
use crate::ssh::MachineAccess;
use crate::ssh::{Redactor, Session, StreamKind};
use crate::state::App;
use crate::store::cluster::Cluster;
use crate::store::machine::{self, Machine};
use crate::store::node_pool::NodePool;
use crate::store::secret;
use crate::tenant::TenantApi;

/// How long a bootstrap token lives: enough for one join, retried.
pub const TOKEN_TTL: TimeDelta = TimeDelta::minutes(15);
/// Longest one worker's bootstrap may take (its script waits up to 120 s
/// for the node's pod CIDR).
const JOIN_TIMEOUT: Duration = Duration::from_secs(200);
/// Validity of a node's kube-proxy client certificate.
const KUBE_PROXY_CERT_TTL: TimeDelta = TimeDelta::days(365);
/// Bound on the probe of what a machine is.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// A join in progress: the machine and the token it was given.
struct Joining<'a> {
    machine: &'a Machine,
    token: BootstrapToken,
}

/// Joins machines concurrently while approving their kubelets' CSRs.
#[tracing::instrument(skip_all, fields(cluster = %c.name, machines = machines.len()))]
pub(super) async fn join_all(
    app: &App,
    access: &MachineAccess,
    c: &Cluster,
    pools: &[NodePool],
    kube: &dyn TenantApi,
    endpoint: &str,
    machines: &[&Machine],
) -> Result<()> {
    let ca = secret::get(&app.pool, &app.secrets, c.id, "pki/ca.crt")
        .await?
        .ok_or_else(|| Error::Unavailable("the cluster has no CA yet".into()))?;
    let ca_crt =
        String::from_utf8(ca).map_err(|_| Error::Internal(anyhow::anyhow!("CA not UTF-8")))?;
    let pki = controlplane::ensure_pki(app, c).await?;
    let signer = pki
        .ca
        .signer()
        .map_err(|e| Error::Internal(anyhow::anyhow!("{e}")))?;

    let mut joins = Vec::new();
    for m in machines {
        let token = BootstrapToken::for_machine(&m.id.to_string(), &mut rand::rngs::OsRng);
        let expires = Utc::now() + TOKEN_TTL;
        kube.apply_system_secret(
            &token.secret_name(),
            &token.secret_object(&m.id.to_string(), &m.name, expires),
        )
        .await?;
        joins.push(Joining { machine: m, token });
    }
    let done = AtomicBool::new(false);
    let work = async {
        let results = futures::future::join_all(
            joins
                .iter()
                .map(|j| join_one(app, access, c, pools, endpoint, &ca_crt, &signer, j)),
        )
        .await;
        done.store(true, Ordering::SeqCst);
        results
    };
    let approver = approve_while(app, c, kube, &joins, &done);
    let (results, approved) = tokio::join!(work, approver);
    approved?;
    for (j, r) in joins.iter().zip(results) {
        if let Err(why) = r {
            tracing::warn!(
                machine = %j.machine.name,
                machine_id = %j.machine.id,
                error = %why,
                "node join failed; the next pass retries it"
            );
            machine::observe_node(
                &app.pool,
                j.machine.id,
                Some("joining"),
                Some(&format!("JoinFailed: {why}")),
            )
            .await?;
            record(
                app,
                c,
                j.machine.node_pool_id,
                true,
                "NodeJoinFailed",
                &format!("{}: {why}", j.machine.name),
            )
            .await?;
        }
    }
    Ok(())
}

/// Uploads one worker's credentials and bundle and runs its bootstrap.
#[allow(clippy::too_many_arguments)]
async fn join_one(
    app: &App,
    access: &MachineAccess,
    c: &Cluster,
    pools: &[NodePool],
    endpoint: &str,
    ca_crt: &str,
    signer: &kubeforge_cluster::pki::Ca,
    j: &Joining<'_>,
) -> std::result::Result<(), String> {
    let m = j.machine;
    let pool = pools
        .iter()
        .find(|p| Some(p.id) == m.node_pool_id)
        .ok_or("the machine's pool is gone")?;
    let address: Ipv4Addr = m
        .address
        .as_deref()
        .and_then(|a| a.parse().ok())
        .ok_or("the machine has no IPv4 address")?;
    let sums = access
        .artifacts
        .checksums_of(WORKER_COMPONENTS)
        .map_err(|e| e.to_string())?;
    let caps = app
        .providers
        .get(c.provider.kind())
        .map(|p| p.capabilities());
    let lab = caps.is_some_and(|c| c.lab_machines);
    let bound = caps.is_some_and(|c| c.kube_binaries_bound);

    let session = controlplane::open(access, m).await?;
    let result = async {
        if !bound {
            upload_bundle_binaries(app, access, c, m, &session).await?;
        }
        let container = probe_container(&session, &m.name, m.id).await?;
        // A lab machine sees the host's CPUs and memory: hold its node to
        // what its machine type promises. So does a registered host that
        // is a container: to the capacity its provider knows (declared at
        // registration). A real host offers what its kernel shows.
        let offer = if lab {
            Some(worker::NodeOffer::of(pool.machine_type))
        } else if container.is_some() {
            match app.providers.for_cluster(c.id, &c.tenant, &c.provider) {
                Some(p) => p
                    .capacity(m.id)
                    .await
                    .map_err(|e| format!("reading the host's capacity: {e}"))?
                    .map(|h| worker::NodeOffer::of_capacity(h.cpu_millis, h.memory_bytes)),
                None => None,
            }
        } else {
            None
        };
        let input = WorkerBundleInput {
            cluster_name: c.name.clone(),
            node_name: m.name.clone(),
            machine_id: m.id,
            machine_type: pool.machine_type,
            node_address: address,
            api_server: endpoint.to_string(),
            cluster_dns: c.network.dns_service_ip(),
            cluster_domain: "cluster.local".into(),
            pod_cidr: c.network.pod_cidr,
            bin_dir: access.artifacts.guest_dir.clone(),
            node_pool: pool.name.clone(),
            node_labels: pool.labels.clone(),
            node_taints: pool.taints.clone(),
            binary_sha256: sums.clone(),
            container,
            offer,
        };
        let bundle = worker::render_worker(&input).map_err(|e| e.to_string())?;
        let proxy = kubeforge_cluster::pki::issue_client_cert(
            signer,
            "system:kube-proxy",
            &[],
            Utc::now(),
            KUBE_PROXY_CERT_TTL,
        )
        .map_err(|e| e.to_string())?;
        let proxy_conf = kubeforge_cluster::kubeconfig::render_kubeconfig(
            &kubeforge_cluster::kubeconfig::KubeconfigInput {
                cluster_name: c.name.as_str(),
                server: endpoint,
                ca_pem: ca_crt,
                user_name: "kube-proxy",
                client_cert_pem: &proxy.cert_pem,
                client_key_pem: &proxy.key_pem,
            },
        );
        let bootstrap_conf = render_token_kubeconfig(
            c.name.as_str(),
            endpoint,
            ca_crt,
            "kubelet-bootstrap",
            &j.token.token(),
        );
        let mut redactor = Redactor::none();
        redactor.add(j.token.secret());
        for line in proxy.key_pem.lines().filter(|l| !l.starts_with("-----")) {
            redactor.add(line);
        }
        let mut files: Vec<(&str, &[u8], u32)> = vec![
            (worker::paths::CA_CRT, ca_crt.as_bytes(), 0o644),
            (
                worker::paths::BOOTSTRAP_KUBECONFIG,
                bootstrap_conf.as_bytes(),
                0o600,
            ),
            (
                worker::paths::KUBE_PROXY_KUBECONFIG,
                proxy_conf.as_bytes(),
                0o600,
            ),
        ];
        for f in &bundle {
            files.push((&f.path, f.contents.as_bytes(), f.mode));
        }
        for (path, bytes, mode) in files {
            session
                .upload(path, bytes, mode)
                .await
                .map_err(|e| format!("uploading {path}: {e}"))?;
        }
        machine::mark_bootstrap_started(&app.pool, m.id)
            .await
            .map_err(|e| e.to_string())?;
        let mut lines = Vec::new();
        let code = session
            .run(
                &format!("bash {}", worker::paths::BOOTSTRAP_SCRIPT),
                JOIN_TIMEOUT,
                &redactor,
                |kind, line| lines.push((kind, line.to_string())),
            )
            .await
            .map_err(|e| format!("bootstrap: {e}"))?;
        for (kind, line) in &lines {
            if *kind == StreamKind::Stderr || line.starts_with("bootstrap-worker:") {
                let _ = record(
                    app,
                    c,
                    m.node_pool_id,
                    *kind == StreamKind::Stderr && code != 0,
                    "BootstrapOutput",
                    &format!("{}: {line}", m.name),
                )
                .await;
            }
        }
        if code == 0 {
            Ok(())
        } else {
            Err(format!(
                "the bootstrap script exited with {code}: {}",
                lines
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == StreamKind::Stderr)
                    .map(|(_, l)| l.as_str())
                    .unwrap_or("no output")
            ))
        }
    }
    .await;
    session.close().await;
    result
}

/// The binaries a worker runs (kubectl reads its node's pod CIDR).
const WORKER_COMPONENTS: &[&str] = &["kubelet", "kube-proxy", "kubectl"];

/// Uploads the worker's binaries and the sandbox image archive where they
/// differ, recording what was uploaded.
async fn upload_bundle_binaries(
    app: &App,
    access: &MachineAccess,
    c: &Cluster,
    m: &Machine,
    session: &Session,
) -> std::result::Result<(), String> {
    let uploaded = super::binaries::ensure(session, &access.artifacts, &m.name, WORKER_COMPONENTS)
        .await
        .map_err(|e| e.to_string())?;
    let archive = access.artifacts.pause_archive.as_deref().ok_or(
        "the service has no sandbox image archive to give the machine \
         (build it with scripts/build-lab-pause)",
    )?;
    let pause = super::binaries::ensure_file(session, archive, worker::PAUSE_ARCHIVE, &m.name)
        .await
        .map_err(|e| e.to_string())?;
    if uploaded > 0 || pause {
        let image = if pause { " and the sandbox image" } else { "" };
        record(
            app,
            c,
            m.node_pool_id,
            false,
            "BinariesUploaded",
            &format!("{}: {uploaded} Kubernetes binaries{image} uploaded", m.name),
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether the machine is a container, and then its own cgroup as the host
/// sees it (the memory controller's line of `/proc/1/cgroup`, or the
/// unified one on cgroup v2). A container that sees itself at `/` (in a
/// cgroup namespace, or left in the root cgroup where the host could not
/// give it one) still shares the host's hierarchy once its controllers are
/// remounted, so its kubelet gets a root of its own, named by its ledger
/// id: `/kubeforge/<id>`, as the lab provider names machines' cgroups.
async fn probe_container(
    session: &Session,
    machine: &str,
    id: uuid::Uuid,
) -> std::result::Result<Option<ContainerHost>, String> {
    const PROBE: &str = r#"if systemd-detect-virt --container --quiet; then echo container; else echo host; fi
awk -F: '$2 ~ /(^|,)memory(,|$)/ { print "v1 " $3 } $1 == "0" && $2 == "" { print "v2 " $3 }' /proc/1/cgroup"#;
    let mut lines = Vec::new();
    let code = session
        .run(PROBE, PROBE_TIMEOUT, &Redactor::none(), |_, l| {
            lines.push(l.to_string())
        })
        .await
        .map_err(|e| format!("probing {machine}: {e}"))?;
    if code != 0 || lines.first().map(String::as_str) == Some("host") {
        return Ok(None);
    }
    if lines.first().map(String::as_str) != Some("container") {
        return Err(format!("probing {machine}: unexpected answer {lines:?}"));
    }
    let cgroup = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
    };
    match cgroup("v1 ").or_else(|| cgroup("v2 ")) {
        Some(root) if root == "/" => Ok(Some(ContainerHost {
            cgroup_root: format!("/kubeforge/{id}"),
        })),
        Some(root) => Ok(Some(ContainerHost { cgroup_root: root })),
        None => Err(format!(
            "{machine} is a container but /proc/1/cgroup names no cgroup of it \
             ({lines:?}); kubelet needs one as its cgroup root"
        )),
    }
}

/// Approves, until `done`, the pending kubelet client CSRs made with the
/// joining machines' tokens for exactly their node names; denies any other
/// CSR made with one of those tokens. CSRs whose names are not DNS
/// subdomains never get here ([`crate::tenant`] drops them).
async fn approve_while(
    app: &App,
    c: &Cluster,
    kube: &dyn TenantApi,
    joins: &[Joining<'_>],
    done: &AtomicBool,
) -> Result<()> {
    let by_user: HashMap<String, &Machine> = joins
        .iter()
        .map(|j| (j.token.username(), j.machine))
        .collect();
    let mut handled: HashSet<String> = HashSet::new();
    while !done.load(Ordering::SeqCst) {
        for csr in kube.csrs().await? {
            if handled.contains(&csr.name) || !csr.pending {
                continue;
            }
            let Some(m) = by_user.get(&csr.username) else {
                continue;
            };
            let verdict = if csr.signer != KUBELET_CLIENT_SIGNER {
                Err(format!(
                    "signer {:?} is not {KUBELET_CLIENT_SIGNER}",
                    csr.signer
                ))
            } else {
                check_node_client_csr(&csr.request, &m.name)
            };
            let (name, user) = (&csr.name, &csr.username);
            let (approve, reason, message) = match &verdict {
                Ok(()) => (
                    true,
                    "CsrApproved",
                    format!(
                        "approved {name}: {user} asks for {} as the ledger expects",
                        join::node_user(&m.name)
                    ),
                ),
                Err(why) => (
                    false,
                    "CsrDenied",
                    format!("denied {name} from {user} (machine {}): {why}", m.name),
                ),
            };
            kube.decide_csr(name, approve, &format!("Kubeforge{reason}"), &message)
                .await?;
            handled.insert(csr.name.clone());
            record(app, c, m.node_pool_id, !approve, reason, &message).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
