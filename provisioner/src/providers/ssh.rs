//! The `ssh` provider: bring-your-own machines from a pool of hosts that a
//! platform admin registered with `POST /v1/hosts` (address, port, user,
//! sealed credentials, pinned host key).
//!
//! A machine is a claimed host: `hosts.claimed_by` holds the ledger id of
//! the machine it serves (a foreign key to `machines`), `lease_expires_at`
//! when the claim was last confirmed by `create` plus [`LEASE`]. Nothing
//! takes a host back when a lease runs out: a host may still run a
//! tenant's etcd, so only `delete`, after wiping it, returns it to the pool.
//!
//! Every SSH connection uses the host's registered credentials (unsealed
//! with the [`SecretBox`], associated data `host/{id}` as the API sealed
//! them) and the host key pinned at registration; a host that presents
//! another key is refused, never learned. A registered user other than
//! `root` must have passwordless `sudo`; commands then run through
//! `sudo -n` and files are staged in a private temporary directory.
//!
//! The provider contract holds as follows:
//! - **Idempotent create.** The claim runs in one transaction that first
//!   locks the ledger row (`machines ... FOR UPDATE`, so two creates for the
//!   same id take turns), returns the host already claimed by that id if
//!   there is one, and otherwise claims the lowest free host with
//!   `FOR UPDATE SKIP LOCKED`, so concurrent creates for different machines
//!   never take the same host. Everything done on the host afterwards is
//!   idempotent and re-run on every call: the service's public key is
//!   appended to root's `authorized_keys` only if absent (mode 0600), the
//!   identity file (with the machine's tags) is rewritten. No free host is `NoCapacity` ("no free
//!   host in the pool"): the machine waits for one, without using up its
//!   attempts.
//! - **Hosts matched to pools.** A request's `host_selector` (the pool's)
//!   limits the claim to free hosts whose labels contain it
//!   (`labels @> selector`); with none matching, `NoCapacity` names the
//!   selector and how many free hosts did not match.
//! - **Worker prerequisites.** Before anything is written for a worker, a
//!   read-only script checks what the worker bundle needs from the host
//!   ([`Prerequisite`]). A host lacking any is released untouched, its
//!   `problem` set (`host_prerequisites_missing`, naming what is missing),
//!   and `create` answers `HostUnfit`; claims skip it for
//!   [`RECHECK_AFTER`], then try it again (a pass clears the problem). A
//!   host that already carries Kubeforge's files (a create that got
//!   further before) is not released, since only `delete` wipes.
//! - **Capacity.** A host registered without a capacity has its online
//!   CPUs and `MemTotal` measured on first contact and stored
//!   (`capacity_source = measured`); [`Provider::capacity`] reports it for
//!   the machine the host serves.
//! - **Tagged.** The host records its machine in
//!   `/etc/kubeforge/machine.json` (id, cluster_id, name); in the database
//!   `list_by_cluster` joins `hosts.claimed_by` with `machines` without
//!   filtering deleted ledger rows, so a host still claimed by a machine
//!   the ledger already marked deleted is found by the sweep. A host can
//!   only be claimed by an id with a ledger row (the foreign key), so there
//!   are no claims this join cannot see; a host whose identity file names a
//!   machine but whose row is unclaimed is free, and is wiped by the next
//!   cluster that claims it (its bootstrap replaces every file).
//! - **Idempotent delete.** Unknown id (no host claimed by it): `Ok`. A
//!   claimed host is wiped over SSH (Kubeforge's units stopped, disabled
//!   and removed; what a worker's join put there taken back, as the first
//!   worker bootstrap recorded the host before it (containerd's
//!   configuration and state, sysctls, a container's mounts), with pods,
//!   the pod network, iptables chains and kubelet's mounts; its
//!   directories and etcd's data removed; the service key removed from
//!   `authorized_keys` if Kubeforge added it) and only then released, to
//!   be claimed by any cluster. An unreachable host is `Retryable` and
//!   stays claimed. Running the wipe again on a wiped host changes nothing.
//! - **`get` observes.** It reads the claim and probes the host over SSH
//!   with a short timeout (`Running` if a command runs, else `Pending`); it
//!   changes nothing, in the database or on the host.
//! - **Error classes.** Unreachable, timeouts and the database are
//!   `Retryable`; a host-key mismatch, refused credentials, credentials that
//!   cannot be unsealed, and a host whose `/usr/bin/etcd` is missing or is
//!   not the expected build are `Permanent` (an admin has to act).
//!
//! Binaries: the provider uploads nothing. The lab binds the service's
//! Kubernetes binaries into every machine; registered hosts get them from
//! the control-plane bootstrap or the worker join (`engine::binaries`),
//! into the same guest directory, with the sandbox image archive for
//! workers. Workers: hosts need containerd, runc, the CNI plugins and
//! iptables installed; a host that is itself a container gets what
//! containers need (the join probes it). etcd is not uploaded: the host must have Debian's
//! `etcd-server` package, whose `/usr/bin/etcd` `create` checks against the
//! expected checksum.
//!
//! Limits of this build: the control plane reaches machines as `root` on
//! port 22 with the service key (the ledger records an address, not a
//! port), so pool hosts must listen on 22; three-member control planes
//! would claim a pool host for the load balancer, which then needs HAProxy.

use async_trait::async_trait;
use kubeforge_cluster::hosts::{CapacitySource, HostCapacity};
use kubeforge_cluster::pools::MachineRole;
use kubeforge_cluster::userdata::IDENTITY_FILE;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

use super::{
    Capabilities, MachineRequest, Provider, ProviderError, ProviderMachine, ProviderMachineState,
};
use crate::artifacts::Artifacts;
use crate::crypto::{Sealed, SecretBox};
use crate::ssh::{
    parse_sha256sum, sha256sum_command, shell_quote, Redactor, Session, SshAuth, SshError,
    SshExecutor, SshSettings, SshTarget,
};

/// The provider kind clusters name to use registered hosts.
pub const KIND: &str = "ssh";

/// How long claims skip a host after it was found unfit (a prerequisite
/// missing): time for an admin to fix it; then it is checked again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(10 * 60);

/// How long a claim is good for after `create` last confirmed it.
pub const LEASE: Duration = Duration::from_secs(15 * 60);
/// Bound on one setup or wipe command on a host.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How often hosts waiting to be wiped are tried while any is left.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(30);
/// The problem code of a host released unwiped (see `defer_wipe`).
pub const WIPE_PENDING: &str = "wipe_pending";
/// Bound on `get`'s probe: connect, authenticate, run `true`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Units Kubeforge installs; `delete` stops, disables and removes them.
/// Workers' first, so no kubelet restarts a pod while the rest goes.
const UNITS: [&str; 9] = [
    "kubelet",
    "kube-proxy",
    "kubeforge-network",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubeforge-addons",
    "kubeforge-lb",
];

/// Everything Kubeforge writes on a host besides units and the key.
const WIPED_DIRS: [&str; 4] = [
    "/etc/kubernetes",
    "/var/lib/kubeforge",
    "/opt/kubeforge",
    "/etc/kubeforge",
];

/// What a worker's join put on a host, taken back: pods and shims killed,
/// containerd's configuration and state as they were before (recorded by
/// the first bootstrap in `kubeforge_cluster::worker::RESTORE_DIR`), the
/// CNI bridge, veths, netns and routes, Kubeforge's and Kubernetes'
/// iptables chains and the rules jumping to them, kubelet's mounts and
/// cgroups, a container's fixes, the recorded sysctls, and the paths that
/// did not exist before. Idempotent; nothing on a host that ran no worker.
const WORKER_WIPE: &str = include_str!("wipe-worker.sh");

/// Present when Kubeforge added the service key to `authorized_keys` (and
/// so must remove it); absent when the key was there before the claim.
const KEY_MARKER: &str = "/etc/kubeforge/service-key-added";

/// One `hosts` row, as the provider needs it.
#[derive(Debug)]
struct Host {
    id: Uuid,
    address: String,
    port: i32,
    ssh_user: String,
    host_key: String,
    credential_kind: String,
    credential_key_id: String,
    credential_nonce: Vec<u8>,
    credential_sealed: Vec<u8>,
}

/// A session to a host, and whether it runs as root or through sudo.
struct HostSession {
    session: Session,
    root: bool,
}

/// The provider (see the module doc).
pub struct SshProvider {
    pool: PgPool,
    secrets: SecretBox,
    ssh: SshExecutor,
    /// For `get`: one attempt, a short timeout.
    probe: SshExecutor,
    service_key_public: String,
    artifacts: Artifacts,
}

fn retryable(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Retryable(e.to_string())
}

fn permanent(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Permanent(e.to_string())
}

fn db(e: sqlx::Error) -> ProviderError {
    retryable(format!("database: {e}"))
}

fn ssh_error(host: &Host, e: SshError) -> ProviderError {
    let msg = format!("host {}:{}: {e}", host.address, host.port);
    if e.is_retryable() {
        ProviderError::Retryable(msg)
    } else {
        ProviderError::Permanent(msg)
    }
}

/// The `TYPE BASE64` part of a public key line, which identifies the key
/// whatever its options or comment.
fn key_body(line: &str) -> Option<&str> {
    let mut parts = line.split_whitespace();
    let _kind = parts.next()?;
    parts.next()
}

impl SshProvider {
    /// `service_key_public` is the service's `authorized_keys` line; the
    /// `artifacts` say which binaries control-plane hosts need and where.
    pub fn new(
        pool: PgPool,
        secrets: SecretBox,
        ssh: SshExecutor,
        service_key_public: String,
        artifacts: Artifacts,
    ) -> Self {
        let probe = SshExecutor::with_settings(
            ssh.max_concurrent(),
            SshSettings {
                connect_timeout: PROBE_TIMEOUT,
                retries: 0,
                keepalive_interval: None,
                ..ssh.settings().clone()
            },
        );
        Self {
            pool,
            secrets,
            ssh,
            probe,
            service_key_public: service_key_public.trim().to_string(),
            artifacts,
        }
    }

    async fn host_claimed_by(&self, id: Uuid) -> Result<Option<Host>, ProviderError> {
        sqlx::query_as!(
            Host,
            "SELECT id, address, port, ssh_user, host_key, credential_kind, credential_key_id,
                    credential_nonce, credential_sealed
             FROM hosts WHERE claimed_by = $1",
            id
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db)
    }

    /// The host claimed by `req.id`, claiming a free one matching its
    /// host selector if there is none; and whether the claim is new.
    async fn claim(&self, req: &MachineRequest) -> Result<(Host, bool), ProviderError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Creates for one ledger id take turns; the row must exist (the
        // ledger is committed before the provider is called).
        let ledger =
            sqlx::query_scalar!("SELECT id FROM machines WHERE id = $1 FOR UPDATE", req.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        if ledger.is_none() {
            return Err(permanent(format!(
                "machine {} is not in the ledger; the ssh provider claims hosts for ledger rows only",
                req.id
            )));
        }
        let lease_secs = LEASE.as_secs_f64();
        let held = sqlx::query_as!(
            Host,
            "UPDATE hosts SET lease_expires_at = now() + make_interval(secs => $2)
             WHERE claimed_by = $1
             RETURNING id AS \"id!\", address AS \"address!\", port AS \"port!\",
                       ssh_user AS \"ssh_user!\", host_key AS \"host_key!\",
                       credential_kind AS \"credential_kind!\",
                       credential_key_id AS \"credential_key_id!\",
                       credential_nonce AS \"credential_nonce!\",
                       credential_sealed AS \"credential_sealed!\"",
            req.id,
            lease_secs
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(h) = held {
            tx.commit().await.map_err(db)?;
            return Ok((h, false));
        }
        let selector = serde_json::to_value(&req.host_selector)
            .map_err(|e| permanent(format!("host selector: {e}")))?;
        let recheck_secs = RECHECK_AFTER.as_secs_f64();
        let claimed = sqlx::query_as!(
            Host,
            "UPDATE hosts SET claimed_by = $1,
                              lease_expires_at = now() + make_interval(secs => $2)
             WHERE id = (SELECT id FROM hosts
                         WHERE claimed_by IS NULL AND wipe_pending_since IS NULL
                           AND labels @> $3
                           AND (problem_at IS NULL
                                OR problem_at <= now() - make_interval(secs => $4))
                         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING id AS \"id!\", address AS \"address!\", port AS \"port!\",
                       ssh_user AS \"ssh_user!\", host_key AS \"host_key!\",
                       credential_kind AS \"credential_kind!\",
                       credential_key_id AS \"credential_key_id!\",
                       credential_nonce AS \"credential_nonce!\",
                       credential_sealed AS \"credential_sealed!\"",
            req.id,
            lease_secs,
            selector,
            recheck_secs
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(h) = claimed else {
            // Why nothing matched, for the machine's wait message: free
            // hosts the selector rules out, and matching ones skipped for a
            // recent problem.
            let why = sqlx::query!(
                "SELECT count(*) FILTER (WHERE NOT labels @> $1) AS \"unmatched!\",
                        COALESCE(array_remove(array_agg(problem->>'message' ORDER BY id)
                            FILTER (WHERE labels @> $1 AND problem_at IS NOT NULL
                                    AND problem_at > now() - make_interval(secs => $2)),
                            NULL), '{}') AS \"skipped!\"
                 FROM hosts WHERE claimed_by IS NULL AND wipe_pending_since IS NULL",
                selector,
                recheck_secs
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            return Err(ProviderError::NoCapacity(no_host_message(
                &req.host_selector,
                why.unmatched,
                &why.skipped,
            )));
        };
        tx.commit().await.map_err(db)?;
        tracing::info!(machine = %req.name, host = %h.id, address = %h.address, "claimed a pool host");
        Ok((h, true))
    }

    /// Releases a host found unfit, untouched, with the reason recorded:
    /// claims skip it for [`RECHECK_AFTER`].
    async fn release_unfit(
        &self,
        host: &Host,
        id: Uuid,
        message: &str,
    ) -> Result<(), ProviderError> {
        let problem = serde_json::json!({"code": HOST_PREREQUISITES_MISSING, "message": message});
        sqlx::query!(
            "UPDATE hosts SET claimed_by = NULL, lease_expires_at = NULL,
                              problem = $3, problem_at = now()
             WHERE id = $1 AND claimed_by = $2",
            host.id,
            id,
            problem
        )
        .execute(&self.pool)
        .await
        .map_err(db)?;
        tracing::warn!(host = %host.id, address = %host.address, machine = %id, %message, "released an unfit pool host");
        Ok(())
    }

    /// Releases `host` from machine `id` without wiping it (it did not
    /// answer): marked wipe-pending, so no claim takes it, with the reason
    /// shown as its problem. [`Provider::upkeep`] wipes it once it
    /// answers, and only then is it free.
    async fn defer_wipe(&self, host: &Host, id: Uuid, why: &str) -> Result<(), ProviderError> {
        let message = format!(
            "host {} did not answer when its machine left ({why}); it is wiped when it \
             answers again, and claimed by no one until then",
            host.address
        );
        let problem = serde_json::json!({"code": WIPE_PENDING, "message": message});
        sqlx::query!(
            "UPDATE hosts SET claimed_by = NULL, lease_expires_at = NULL,
                              wipe_pending_since = now(), problem = $3, problem_at = now()
             WHERE id = $1 AND claimed_by = $2",
            host.id,
            id,
            problem
        )
        .execute(&self.pool)
        .await
        .map_err(db)?;
        tracing::warn!(host = %host.id, address = %host.address, machine = %id, %message, "released an unreachable pool host, to be wiped later");
        Ok(())
    }

    /// Records a problem on a host that stays claimed (it carries
    /// Kubeforge's files, which only `delete` wipes).
    async fn mark_problem(&self, host: &Host, message: &str) -> Result<(), ProviderError> {
        let problem = serde_json::json!({"code": HOST_PREREQUISITES_MISSING, "message": message});
        sqlx::query!(
            "UPDATE hosts SET problem = $2, problem_at = now() WHERE id = $1",
            host.id,
            problem
        )
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn clear_problem(&self, host: &Host) -> Result<(), ProviderError> {
        sqlx::query!(
            "UPDATE hosts SET problem = NULL, problem_at = NULL
             WHERE id = $1 AND problem IS NOT NULL",
            host.id
        )
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Reads what the worker bundle needs from the host (read-only).
    async fn check_worker(
        host: &Host,
        hs: &HostSession,
        machine: Uuid,
    ) -> Result<PrereqReport, ProviderError> {
        let (code, out) = Self::run(host, hs, &prerequisites_script(machine)).await?;
        parse_prerequisites(&out).map_err(|e| {
            retryable(format!(
                "checking the prerequisites of host {} failed ({code}): {e}",
                host.address
            ))
        })
    }

    /// Measures and stores the host's capacity, the first time only (a
    /// declared one is never replaced).
    async fn measure_capacity(&self, host: &Host, hs: &HostSession) -> Result<(), ProviderError> {
        let known = sqlx::query_scalar!(
            "SELECT capacity IS NOT NULL AS \"known!\" FROM hosts WHERE id = $1",
            host.id
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        if known {
            return Ok(());
        }
        let (code, out) = Self::run(host, hs, MEASURE_SCRIPT).await?;
        let capacity = parse_measurement(&out).ok_or_else(|| {
            retryable(format!(
                "measuring host {} failed ({code}): {}",
                host.address,
                out.join("; ")
            ))
        })?;
        let json = serde_json::to_value(&capacity).map_err(|e| retryable(e.to_string()))?;
        sqlx::query!(
            "UPDATE hosts SET capacity = $2, capacity_source = $3
             WHERE id = $1 AND capacity IS NULL",
            host.id,
            json,
            CapacitySource::Measured.as_str()
        )
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    fn target(host: &Host) -> SshTarget {
        SshTarget::new(
            host.address.clone(),
            host.ssh_user.clone(),
            host.host_key.clone(),
        )
        .with_port(u16::try_from(host.port).unwrap_or(22))
    }

    fn auth(&self, host: &Host) -> Result<SshAuth, ProviderError> {
        let sealed = Sealed {
            key_id: host.credential_key_id.clone(),
            nonce: host.credential_nonce.clone(),
            ciphertext: host.credential_sealed.clone(),
        };
        let plain = self
            .secrets
            .open(format!("host/{}", host.id).as_bytes(), &sealed)
            .map_err(|e| {
                permanent(format!(
                    "the credentials of host {} cannot be unsealed: {e}",
                    host.id
                ))
            })?;
        let text = String::from_utf8(plain)
            .map_err(|_| permanent(format!("the credentials of host {} are not text", host.id)))?;
        match host.credential_kind.as_str() {
            "private_key" => Ok(SshAuth::PrivateKey(text)),
            "password" => Ok(SshAuth::Password(text)),
            other => Err(permanent(format!("unknown credential kind {other}"))),
        }
    }

    async fn connect(&self, exec: &SshExecutor, host: &Host) -> Result<HostSession, ProviderError> {
        let auth = self.auth(host)?;
        let session = exec
            .connect(&Self::target(host), &auth)
            .await
            .map_err(|e| ssh_error(host, e))?;
        Ok(HostSession {
            session,
            root: host.ssh_user == "root",
        })
    }

    /// Runs `script` as root; returns (status, output lines).
    async fn run(
        host: &Host,
        hs: &HostSession,
        script: &str,
    ) -> Result<(i32, Vec<String>), ProviderError> {
        let cmd = if hs.root {
            script.to_string()
        } else {
            format!("sudo -n sh -c {}", shell_quote(script))
        };
        let mut lines = Vec::new();
        let code = hs
            .session
            .run(&cmd, COMMAND_TIMEOUT, &Redactor::none(), |_, l| {
                lines.push(l.to_string())
            })
            .await
            .map_err(|e| ssh_error(host, e))?;
        Ok((code, lines))
    }

    /// Authorizes the service key for root (only if absent) and records the
    /// machine's identity on the host.
    async fn prepare(
        &self,
        host: &Host,
        hs: &HostSession,
        req: &MachineRequest,
    ) -> Result<(), ProviderError> {
        let key = &self.service_key_public;
        let body =
            key_body(key).ok_or_else(|| permanent("the service's public key line is malformed"))?;
        let identity = req.identity().to_json();
        let script = format!(
            r#"set -e
umask 077
mkdir -p /etc/kubeforge
if [ ! -d /root/.ssh ]; then mkdir -m 700 /root/.ssh; fi
ak=/root/.ssh/authorized_keys
touch "$ak"
if ! grep -qF {body} "$ak"; then
  touch {marker}
  if [ -s "$ak" ] && [ -n "$(tail -c1 "$ak")" ]; then echo >> "$ak"; fi
  printf '%s\n' {key} >> "$ak"
fi
chmod 600 "$ak"
printf '%s\n' {identity} > {file}.tmp
chmod 644 {file}.tmp
mv -f {file}.tmp {file}
"#,
            body = shell_quote(body),
            key = shell_quote(key),
            marker = KEY_MARKER,
            identity = shell_quote(&identity),
            file = IDENTITY_FILE,
        );
        match Self::run(host, hs, &script).await? {
            (0, _) => Ok(()),
            (code, out) => Err(retryable(format!(
                "preparing host {} failed ({code}): {}",
                host.address,
                out.join("; ")
            ))),
        }
    }

    /// sha256 of files on the host, by path; missing files are absent.
    async fn remote_sha256(
        host: &Host,
        hs: &HostSession,
        paths: &[String],
    ) -> Result<BTreeMap<String, String>, ProviderError> {
        let (_, out) = Self::run(host, hs, &sha256sum_command(paths)).await?;
        Ok(parse_sha256sum(&out))
    }

    /// etcd from the host's own package, checked by sha256 on the host:
    /// a host without the expected build cannot serve a control plane.
    /// (The Kubernetes binaries are uploaded by the bootstrap.)
    async fn check_etcd(&self, host: &Host, hs: &HostSession) -> Result<(), ProviderError> {
        let etcd = &self.artifacts.etcd_bin;
        let found = Self::remote_sha256(host, hs, std::slice::from_ref(etcd)).await?;
        match found.get(etcd.as_str()) {
            None => Err(permanent(format!(
                "host {} has no {etcd}: install Debian's etcd-server package \
                 (Kubeforge expects sha256 {})",
                host.address, self.artifacts.etcd_sha256
            ))),
            Some(sum) if *sum != self.artifacts.etcd_sha256 => Err(permanent(format!(
                "{etcd} on host {} has sha256 {sum}, not the expected {}: \
                 install the etcd-server package this Kubeforge was built against",
                host.address, self.artifacts.etcd_sha256
            ))),
            Some(_) => Ok(()),
        }
    }

    fn machine(
        host: &Host,
        id: Uuid,
        cluster_id: Uuid,
        state: ProviderMachineState,
    ) -> ProviderMachine {
        ProviderMachine {
            id,
            cluster_id,
            provider_id: format!("ssh:{}", host.id),
            address: Some(host.address.clone()),
            host_key: Some(host.host_key.clone()),
            state,
        }
    }

    /// Whether a command runs on the host now (short timeout, one attempt).
    async fn reachable(&self, host: &Host) -> bool {
        let Ok(hs) = self.connect(&self.probe, host).await else {
            return false;
        };
        let ok = matches!(
            hs.session
                .run("true", PROBE_TIMEOUT, &Redactor::none(), |_, _| {})
                .await,
            Ok(0)
        );
        hs.session.close().await;
        ok
    }

    async fn cluster_of(&self, id: Uuid) -> Result<Uuid, ProviderError> {
        sqlx::query_scalar!("SELECT cluster_id FROM machines WHERE id = $1", id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .ok_or_else(|| retryable(format!("machine {id} has no ledger row")))
    }

    /// The wipe (a bash script): everything Kubeforge put on the host, then
    /// its key. Units are stopped, disabled and removed; then what a
    /// worker's join put there is taken back ([`WORKER_WIPE`]); then the
    /// key, then the directories.
    fn wipe_script(&self) -> Result<String, ProviderError> {
        let body = key_body(&self.service_key_public)
            .ok_or_else(|| permanent("the service's public key line is malformed"))?;
        let units = UNITS.join(" ");
        let dirs = WIPED_DIRS.join(" ");
        Ok(format!(
            r#"set -euo pipefail
trap 'echo "wipe: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
reload=no
for u in {units}; do
  f=/etc/systemd/system/$u.service
  # Kubeforge's units are files; a link there (a mask) is the host's own.
  if [ -f "$f" ] && [ ! -L "$f" ]; then
    systemctl disable --now "$u.service" >/dev/null 2>&1 || systemctl stop "$u.service"
    if systemctl is-active --quiet "$u.service"; then echo "cannot stop $u" >&2; exit 1; fi
    rm -f "$f"
    reload=yes
  fi
done
if [ "$reload" = yes ]; then systemctl daemon-reload; systemctl reset-failed >/dev/null 2>&1 || true; fi
{worker}
ak=/root/.ssh/authorized_keys
if [ -e {marker} ] && [ -f "$ak" ]; then
  grep -vF {body} "$ak" > "$ak.kubeforge-new" || true
  chmod 600 "$ak.kubeforge-new"
  mv -f "$ak.kubeforge-new" "$ak"
fi
rm -rf {dirs}
# etcd's data directory is its package's: only what etcd wrote goes.
if [ -d /var/lib/etcd ]; then find /var/lib/etcd -mindepth 1 -delete; fi
"#,
            marker = KEY_MARKER,
            body = shell_quote(body),
            worker = WORKER_WIPE,
        ))
    }
}

#[async_trait]
impl Provider for SshProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// Hosts run control planes and workers; the join uploads their
    /// binaries, and whether a host is a container is probed, not assumed.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ssh_bootstrap: true,
            hosts_workers: true,
            lab_machines: false,
            kube_binaries_bound: false,
        }
    }

    async fn create(&self, req: &MachineRequest) -> Result<ProviderMachine, ProviderError> {
        let (host, _fresh) = self.claim(req).await?;
        let hs = self.connect(&self.ssh, &host).await?;
        let result = async {
            // Read-only first: nothing is written on a host found unfit.
            let report = if req.role == MachineRole::Worker {
                Some(Self::check_worker(&host, &hs, req.id).await?)
            } else {
                None
            };
            if let Some(r) = report.as_ref().filter(|r| !r.missing.is_empty()) {
                return Ok(Some(r.clone()));
            }
            self.measure_capacity(&host, &hs).await?;
            self.prepare(&host, &hs, req).await?;
            if req.role == MachineRole::ControlPlane {
                self.check_etcd(&host, &hs).await?;
            }
            Ok::<Option<PrereqReport>, ProviderError>(None)
        }
        .await;
        hs.session.close().await;
        if let Some(report) = result? {
            let message = unfit_message(&host.address, &report.missing);
            if report.touched {
                // A create that got further before left Kubeforge's files:
                // the host stays claimed until `delete` wipes it.
                self.mark_problem(&host, &message).await?;
            } else {
                self.release_unfit(&host, req.id, &message).await?;
            }
            return Err(ProviderError::HostUnfit(message));
        }
        if req.role == MachineRole::Worker {
            self.clear_problem(&host).await?;
        }
        Ok(Self::machine(
            &host,
            req.id,
            req.cluster_id,
            ProviderMachineState::Running,
        ))
    }

    async fn capacity(&self, id: Uuid) -> Result<Option<HostCapacity>, ProviderError> {
        let stored = sqlx::query_scalar!("SELECT capacity FROM hosts WHERE claimed_by = $1", id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .flatten();
        stored
            .map(|v| {
                serde_json::from_value(v)
                    .map_err(|e| permanent(format!("the stored capacity of the host of {id}: {e}")))
            })
            .transpose()
    }

    async fn get(&self, id: Uuid) -> Result<Option<ProviderMachine>, ProviderError> {
        let Some(host) = self.host_claimed_by(id).await? else {
            return Ok(None);
        };
        let cluster_id = self.cluster_of(id).await?;
        let state = if self.reachable(&host).await {
            ProviderMachineState::Running
        } else {
            ProviderMachineState::Pending
        };
        Ok(Some(Self::machine(&host, id, cluster_id, state)))
    }

    async fn delete(&self, id: Uuid) -> Result<(), ProviderError> {
        let Some(host) = self.host_claimed_by(id).await? else {
            return Ok(());
        };
        let script = format!("bash -c {}", shell_quote(&self.wipe_script()?));
        let hs = match self.connect(&self.ssh, &host).await {
            Ok(hs) => hs,
            // A dead host is not waited for: the machine leaves, the host
            // stays out of every claim until upkeep has wiped it.
            Err(e) => return self.defer_wipe(&host, id, &e.to_string()).await,
        };
        let result = Self::run(&host, &hs, &script).await;
        hs.session.close().await;
        match result? {
            (0, _) => {}
            (code, out) => {
                return Err(retryable(format!(
                    "wiping host {} failed ({code}): {}; it stays claimed",
                    host.address,
                    out.join("; ")
                )))
            }
        }
        sqlx::query!(
            "UPDATE hosts SET claimed_by = NULL, lease_expires_at = NULL
             WHERE id = $1 AND claimed_by = $2",
            host.id,
            id
        )
        .execute(&self.pool)
        .await
        .map_err(db)?;
        tracing::info!(host = %host.id, address = %host.address, machine = %id, "wiped and released a pool host");
        Ok(())
    }

    /// Wipes the hosts released while they did not answer (see
    /// `defer_wipe`), each once it answers; a wiped host is free again.
    async fn upkeep(&self) -> Result<Option<Duration>, ProviderError> {
        let pending = sqlx::query_as!(
            Host,
            "SELECT id, address, port, ssh_user, host_key, credential_kind, credential_key_id,
                    credential_nonce, credential_sealed
             FROM hosts WHERE wipe_pending_since IS NOT NULL ORDER BY id"
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let script = format!("bash -c {}", shell_quote(&self.wipe_script()?));
        let mut left = 0;
        for host in &pending {
            let Ok(hs) = self.connect(&self.probe, host).await else {
                left += 1;
                continue;
            };
            let result = Self::run(host, &hs, &script).await;
            hs.session.close().await;
            match result {
                Ok((0, _)) => {
                    sqlx::query!(
                        "UPDATE hosts SET wipe_pending_since = NULL, problem = NULL, problem_at = NULL
                         WHERE id = $1 AND claimed_by IS NULL",
                        host.id
                    )
                    .execute(&self.pool)
                    .await
                    .map_err(db)?;
                    tracing::info!(host = %host.id, address = %host.address, "wiped a pool host that answers again; it is free");
                }
                Ok((code, out)) => {
                    left += 1;
                    tracing::warn!(host = %host.id, address = %host.address, code, output = %out.join("; "), "wiping a returned pool host failed");
                }
                Err(e) => {
                    left += 1;
                    tracing::warn!(host = %host.id, address = %host.address, error = %e, "wiping a returned pool host failed");
                }
            }
        }
        Ok((left > 0).then_some(UPKEEP_INTERVAL))
    }

    async fn list_by_cluster(
        &self,
        cluster_id: Uuid,
    ) -> Result<Vec<ProviderMachine>, ProviderError> {
        let rows = sqlx::query!(
            "SELECT h.id, h.address, h.port, h.ssh_user, h.host_key, h.credential_kind,
                    h.credential_key_id, h.credential_nonce, h.credential_sealed,
                    m.id AS machine_id
             FROM hosts h JOIN machines m ON m.id = h.claimed_by
             WHERE m.cluster_id = $1
             ORDER BY h.id",
            cluster_id
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut out = Vec::new();
        for r in rows {
            let host = Host {
                id: r.id,
                address: r.address,
                port: r.port,
                ssh_user: r.ssh_user,
                host_key: r.host_key,
                credential_kind: r.credential_kind,
                credential_key_id: r.credential_key_id,
                credential_nonce: r.credential_nonce,
                credential_sealed: r.credential_sealed,
            };
            let state = if self.reachable(&host).await {
                ProviderMachineState::Running
            } else {
                ProviderMachineState::Pending
            };
            out.push(Self::machine(&host, r.machine_id, cluster_id, state));
        }
        Ok(out)
    }
}

/// The problem code a host gets when a worker prerequisite is missing.
pub const HOST_PREREQUISITES_MISSING: &str = "host_prerequisites_missing";

/// The CNI plugins the worker conflist (`templates/worker/10-kubeforge.
/// conflist.tera`: bridge with host-local IPAM, portmap) and containerd's
/// CRI (loopback, for every pod's `lo`) run, from containerd's `bin_dir`.
const CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "loopback"];
/// Where containerd looks for them (`containerd-config.toml.tera`).
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Kernel modules kubelet, kube-proxy and the bridge plugin need.
const KERNEL_MODULES: [&str; 2] = ["br_netfilter", "overlay"];
/// Sysctls the bundle sets, by path under `/proc/sys`.
const SYSCTLS: [&str; 2] = ["net/bridge/bridge-nf-call-iptables", "net/ipv4/ip_forward"];

/// One thing the worker bundle needs from a host. [`Prerequisite::name`]
/// is stable: it is what the host's `problem` and the machine's error say.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Prerequisite {
    /// systemd as init (the bundle installs units).
    Systemd,
    Containerd,
    /// containerd built with its CRI plugin (`containerd config default`
    /// mentions `io.containerd.grpc.v1.cri`); kubelet talks to nothing else.
    ContainerdCri,
    /// containerd's client, which imports the sandbox image.
    Ctr,
    Runc,
    /// A CNI plugin binary in [`CNI_BIN_DIR`].
    CniPlugin(String),
    Iptables,
    Conntrack,
    /// Loaded, or loadable with `modprobe` (on a real host; in a container
    /// only a module the host kernel already has loaded counts).
    KernelModule(String),
    /// A sysctl file kubelet or kube-proxy writes (dotted name).
    Sysctl(String),
}

impl Prerequisite {
    pub fn name(&self) -> String {
        match self {
            Prerequisite::Systemd => "systemd".into(),
            Prerequisite::Containerd => "containerd".into(),
            Prerequisite::ContainerdCri => "containerd-cri".into(),
            Prerequisite::Ctr => "ctr".into(),
            Prerequisite::Runc => "runc".into(),
            Prerequisite::CniPlugin(p) => format!("cni-plugin/{p}"),
            Prerequisite::Iptables => "iptables".into(),
            Prerequisite::Conntrack => "conntrack".into(),
            Prerequisite::KernelModule(m) => format!("kernel-module/{m}"),
            Prerequisite::Sysctl(s) => format!("sysctl/{s}"),
        }
    }

    /// The inverse of [`Prerequisite::name`], for the names the check
    /// script prints; None for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        let item = |rest: &str, allowed: &[&str]| allowed.contains(&rest).then(|| rest.to_string());
        Some(match name {
            "systemd" => Prerequisite::Systemd,
            "containerd" => Prerequisite::Containerd,
            "containerd-cri" => Prerequisite::ContainerdCri,
            "ctr" => Prerequisite::Ctr,
            "runc" => Prerequisite::Runc,
            "iptables" => Prerequisite::Iptables,
            "conntrack" => Prerequisite::Conntrack,
            other => {
                let (kind, rest) = other.split_once('/')?;
                match kind {
                    "cni-plugin" => Prerequisite::CniPlugin(item(rest, &CNI_PLUGINS)?),
                    "kernel-module" => Prerequisite::KernelModule(item(rest, &KERNEL_MODULES)?),
                    "sysctl" => {
                        let dotted: Vec<String> =
                            SYSCTLS.iter().map(|s| s.replace('/', ".")).collect();
                        let dotted: Vec<&str> = dotted.iter().map(String::as_str).collect();
                        Prerequisite::Sysctl(item(rest, &dotted)?)
                    }
                    _ => return None,
                }
            }
        })
    }

    /// What an admin does about it (Debian package names).
    fn fix(&self) -> &'static str {
        match self {
            Prerequisite::Systemd => "boot the host with systemd",
            Prerequisite::Containerd | Prerequisite::Ctr => "install the containerd package",
            Prerequisite::ContainerdCri => {
                "use a containerd with its CRI plugin enabled (not in disabled_plugins)"
            }
            Prerequisite::Runc => "install the runc package",
            Prerequisite::CniPlugin(_) => {
                "install the containernetworking-plugins package (into /usr/lib/cni)"
            }
            Prerequisite::Iptables => "install the iptables package",
            Prerequisite::Conntrack => "install the conntrack package",
            Prerequisite::KernelModule(_) => {
                "load the kernel modules (modprobe; on a container host, on its host)"
            }
            Prerequisite::Sysctl(_) => {
                "load br_netfilter and make sure the kernel has IPv4 forwarding"
            }
        }
    }
}

/// What the check script found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrereqReport {
    pub missing: Vec<Prerequisite>,
    /// The identity file names this machine: an earlier create for it
    /// wrote to the host.
    pub touched: bool,
}

/// Checks, read-only, what the worker bundle needs: prints `missing NAME`
/// per gap ([`Prerequisite::name`]), `touched` if the host's identity file
/// already names `machine` (an earlier create for it got as far as
/// `prepare`; an identity file naming another machine is a leftover a new
/// claim overwrites), and `checked` last (so a script cut short is not a
/// pass).
fn prerequisites_script(machine: Uuid) -> String {
    let cni = CNI_PLUGINS.join(" ");
    let modules = KERNEL_MODULES.join(" ");
    let sysctls = SYSCTLS.join(" ");
    format!(
        r#"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
have() {{ command -v "$1" >/dev/null 2>&1; }}
miss() {{ echo "missing $1"; }}
if [ -d /run/systemd/system ] && have systemctl; then :; else miss systemd; fi
if have containerd; then
  containerd config default 2>/dev/null | grep -q 'io.containerd.grpc.v1.cri' || miss containerd-cri
else
  miss containerd
fi
have ctr || miss ctr
have runc || miss runc
for p in {cni}; do [ -x {cni_dir}/"$p" ] || miss "cni-plugin/$p"; done
have iptables || miss iptables
have conntrack || miss conntrack
container=no
if have systemd-detect-virt && systemd-detect-virt -c >/dev/null 2>&1; then container=yes; fi
# Loaded: in /sys/module, or (in a container, where /sys/module is not
# mounted) by what the module provides: overlay registers its filesystem,
# br_netfilter creates /proc/sys/net/bridge.
loaded() {{
  [ -d "/sys/module/$1" ] && return 0
  case "$1" in
    overlay) grep -qw overlay /proc/filesystems 2>/dev/null ;;
    br_netfilter) [ -d /proc/sys/net/bridge ] ;;
    *) return 1 ;;
  esac
}}
for m in {modules}; do
  if loaded "$m"; then :
  elif [ "$container" = no ] && modinfo "$m" >/dev/null 2>&1; then :
  else miss "kernel-module/$m"; fi
done
for s in {sysctls}; do
  case "$s" in
    # Appears when br_netfilter loads: on a real host the bundle loads it.
    net/bridge/*) if [ "$container" = no ] && ! loaded br_netfilter; then continue; fi ;;
  esac
  [ -e "/proc/sys/$s" ] || miss "sysctl/$(echo "$s" | tr / .)"
done
if grep -qsF {machine} {identity}; then echo touched; fi
echo checked
"#,
        cni_dir = CNI_BIN_DIR,
        machine = shell_quote(&machine.to_string()),
        identity = IDENTITY_FILE,
    )
}

/// Parses the check script's output. Anything unexpected, or no final
/// `checked`, is an error: a check that did not finish proves nothing.
pub fn parse_prerequisites(lines: &[String]) -> Result<PrereqReport, String> {
    let mut report = PrereqReport::default();
    let mut checked = false;
    for line in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        if checked {
            return Err(format!("output after the end of the check: {line:?}"));
        }
        match line.split_once(' ') {
            Some(("missing", name)) => {
                let p = Prerequisite::parse(name)
                    .ok_or_else(|| format!("unknown prerequisite {name:?}"))?;
                if !report.missing.contains(&p) {
                    report.missing.push(p);
                }
            }
            _ if line == "touched" => report.touched = true,
            _ if line == "checked" => checked = true,
            _ => return Err(format!("unexpected output {line:?}")),
        }
    }
    if !checked {
        return Err("the check did not finish".into());
    }
    Ok(report)
}

/// `host 10.77.5.3 lacks containerd, runc: install the containerd
/// package; install the runc package`.
pub fn unfit_message(address: &str, missing: &[Prerequisite]) -> String {
    let names: Vec<String> = missing.iter().map(Prerequisite::name).collect();
    let mut fixes: Vec<&str> = Vec::new();
    for p in missing {
        if !fixes.contains(&p.fix()) {
            fixes.push(p.fix());
        }
    }
    format!(
        "host {address} lacks {}: {}",
        names.join(", "),
        fixes.join("; ")
    )
}

/// `NoCapacity`'s message: the selector, free hosts it rules out, hosts
/// skipped for a recent problem.
pub fn no_host_message(
    selector: &BTreeMap<String, String>,
    unmatched: i64,
    skipped: &[String],
) -> String {
    let mut msg = if selector.is_empty() {
        "no free host in the pool".to_string()
    } else {
        let shown: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut m = format!("no free host matching {}", shown.join(","));
        if unmatched > 0 {
            let hosts = if unmatched == 1 {
                "host does"
            } else {
                "hosts do"
            };
            m.push_str(&format!(" ({unmatched} free {hosts} not match)"));
        }
        m
    };
    if !skipped.is_empty() {
        let hosts = if skipped.len() == 1 { "host" } else { "hosts" };
        msg.push_str(&format!(
            ", {} {hosts} skipped: {}",
            skipped.len(),
            skipped.join("; ")
        ));
    }
    msg
}

/// Online CPUs, then `MemTotal` in kB.
const MEASURE_SCRIPT: &str =
    "getconf _NPROCESSORS_ONLN && awk '/^MemTotal:/ { print $2 }' /proc/meminfo";

fn parse_measurement(lines: &[String]) -> Option<HostCapacity> {
    let mut numbers = lines.iter().map(|l| l.trim().parse::<u64>());
    let cpus = numbers.next()?.ok()?;
    let mem_kb = numbers.next()?.ok()?;
    (cpus > 0 && mem_kb > 0 && numbers.next().is_none())
        .then(|| HostCapacity::measured(cpus, mem_kb))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker part of the wipe parses in bash, and it reads the record
    /// where the bundle's bootstrap writes it.
    #[test]
    fn the_worker_wipe_parses_and_reads_the_bootstrap_record() {
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", WORKER_WIPE])
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        use kubeforge_cluster::worker;
        for path in [
            worker::RESTORE_DIR,
            worker::CONTAINERD_ROOT,
            worker::CONTAINERD_STATE,
        ] {
            assert!(WORKER_WIPE.contains(&format!("={path}\n")), "{path}");
        }
    }

    #[test]
    fn key_body_ignores_comments() {
        assert_eq!(
            key_body("ssh-ed25519 AAAAC3Nza kubeforge"),
            Some("AAAAC3Nza")
        );
        assert_eq!(key_body("ssh-ed25519"), None);
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn prerequisite_names_round_trip() {
        let all = [
            Prerequisite::Systemd,
            Prerequisite::Containerd,
            Prerequisite::ContainerdCri,
            Prerequisite::Ctr,
            Prerequisite::Runc,
            Prerequisite::CniPlugin("bridge".into()),
            Prerequisite::Iptables,
            Prerequisite::Conntrack,
            Prerequisite::KernelModule("br_netfilter".into()),
            Prerequisite::Sysctl("net.bridge.bridge-nf-call-iptables".into()),
            Prerequisite::Sysctl("net.ipv4.ip_forward".into()),
        ];
        for p in all {
            assert_eq!(
                Prerequisite::parse(&p.name()),
                Some(p.clone()),
                "{}",
                p.name()
            );
        }
        assert_eq!(
            Prerequisite::CniPlugin("bridge".into()).name(),
            "cni-plugin/bridge"
        );
        for bad in [
            "cni-plugin/flannel",
            "kernel-module/ext4",
            "sysctl/vm.swappiness",
            "docker",
            "",
            "sysctl/",
        ] {
            assert_eq!(Prerequisite::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_check_output_is_parsed() {
        let r = parse_prerequisites(&lines("checked\n")).unwrap();
        assert_eq!(r, PrereqReport::default());
        let r = parse_prerequisites(&lines(
            "missing containerd\nmissing runc\nmissing cni-plugin/portmap\n\
             missing kernel-module/overlay\nmissing sysctl/net.ipv4.ip_forward\nmissing runc\n\
             touched\nchecked\n",
        ))
        .unwrap();
        assert_eq!(
            r.missing,
            vec![
                Prerequisite::Containerd,
                Prerequisite::Runc,
                Prerequisite::CniPlugin("portmap".into()),
                Prerequisite::KernelModule("overlay".into()),
                Prerequisite::Sysctl("net.ipv4.ip_forward".into()),
            ]
        );
        assert!(r.touched);
        // Cut short, garbled, or a name the script never prints: no verdict.
        assert!(parse_prerequisites(&lines("missing runc\n")).is_err());
        assert!(parse_prerequisites(&lines("missing podman\nchecked\n")).is_err());
        assert!(parse_prerequisites(&lines("sh: 1: oops\nchecked\n")).is_err());
        assert!(parse_prerequisites(&lines("checked\nmissing runc\n")).is_err());
    }

    #[test]
    fn the_script_names_only_what_the_parser_knows() {
        let id = Uuid::from_u128(7);
        let script = prerequisites_script(id);
        assert!(
            script.contains(&format!("grep -qsF '{id}' {IDENTITY_FILE}")),
            "{script}"
        );
        for p in CNI_PLUGINS {
            assert!(script.contains(p));
        }
        assert!(script.contains("io.containerd.grpc.v1.cri"));
        assert!(script.contains("systemd-detect-virt -c"));
        assert!(script.trim_end().ends_with("echo checked"));
    }

    #[test]
    fn messages_name_what_is_missing_and_the_selector() {
        let m = unfit_message(
            "10.77.5.3",
            &[
                Prerequisite::Containerd,
                Prerequisite::Runc,
                Prerequisite::Ctr,
            ],
        );
        assert!(
            m.starts_with("host 10.77.5.3 lacks containerd, runc, ctr: install the containerd package; install the runc package"),
            "{m}"
        );
        assert_eq!(m.matches("containerd package").count(), 1, "{m}");
        let sel = BTreeMap::from([("gpu".to_string(), "true".to_string())]);
        assert_eq!(
            no_host_message(&sel, 2, &[]),
            "no free host matching gpu=true (2 free hosts do not match)"
        );
        assert_eq!(
            no_host_message(&BTreeMap::new(), 3, &[]),
            "no free host in the pool"
        );
        assert_eq!(
            no_host_message(&BTreeMap::new(), 0, &["host 10.0.0.1 lacks runc: x".into()]),
            "no free host in the pool, 1 host skipped: host 10.0.0.1 lacks runc: x"
        );
    }

    #[test]
    fn measurements_are_cpus_and_memtotal() {
        let c = parse_measurement(&lines("4\n8000000\n")).unwrap();
        assert_eq!((c.cpu_millis, c.memory_bytes), (4000, 8_192_000_000));
        assert!(parse_measurement(&lines("4\n")).is_none());
        assert!(parse_measurement(&lines("0\n100\n")).is_none());
        assert!(parse_measurement(&lines("four\n100\n")).is_none());
    }
}
