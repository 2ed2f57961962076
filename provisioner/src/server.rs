//! Wiring one Kubeforge process: database (embedded or given), keys,
//! providers, the job engine and the HTTP server, with a graceful
//! shutdown that stops taking jobs, releases leases and drains requests.

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::app::{App, Config, SharedApp, RECONCILE_CLUSTER};
use crate::artifacts::{ArtifactSettings, ArtifactSource, Artifacts, PinnedDigests};
use crate::auth::AuthKeys;
use crate::crypto::SecretBox;
use crate::embedded_pg::{DataDirLock, EmbeddedPostgres};
use crate::engine::jobs::{Engine, EngineConfig, EngineMetrics};
use crate::engine::reconcile::ClusterReconciler;
use crate::metrics::Metrics;
use crate::providers::lab::{LabConfig, LabProvider};
use crate::providers::lab_network::LabNetwork;
use crate::providers::ssh::SshProvider;
use crate::providers::ProviderRegistry;
use crate::ssh::MachineAccess;
use crate::store;

/// How the process is run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// None: run the embedded Postgres in `data_dir`.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Jobs this process runs at once.
    pub workers: usize,
    /// Where to serve the cluster-autoscaler externalgrpc provider; None:
    /// not served.
    pub grpc_listen: Option<SocketAddr>,
    /// The `host:port` clients dial for it (the credentials route hands it
    /// out, the serving certificate names its host); default: the listen
    /// address, or `localhost` with its port when that is a wildcard.
    pub grpc_advertise: Option<String>,
    /// Where to serve cluster DNS (UDP and TCP); None: not served, and
    /// clusters' `kube-dns` Service has no backend.
    pub dns_listen: Option<SocketAddr>,
    /// Serve cluster DNS on port 53 of the lab bridge's gateway (`up
    /// --dns-listen lab`), whichever lab network this process ends up on;
    /// overrides `dns_listen`.
    pub dns_on_lab_gateway: bool,
    /// Claim a lab bridge and subnet of this process's own
    /// ([`LabNetwork`]): `up` does, so two of them on one host never share
    /// one; `serve` replicas use the one the environment names.
    pub claim_lab_network: bool,
    /// The address nodes reach it at (every cluster's `kube-dns` Endpoints
    /// name it); default: the listen address, which must then be IPv4 and
    /// not a wildcard.
    pub dns_advertise: Option<std::net::SocketAddrV4>,
    /// Resolvers names outside the clusters are forwarded to; empty: the
    /// host's `/etc/resolv.conf`.
    pub dns_upstream: Vec<SocketAddr>,
    /// PEM certificate chain and key: the API is served over TLS.
    pub tls: Option<TlsFiles>,
    /// Allows a plaintext API on an address other than loopback.
    pub insecure_plaintext: bool,
    /// Tenants the lab provider serves (`--lab-tenants`).
    pub lab_tenants: crate::state::LabTenants,
    /// Where the Kubernetes binaries come from, pinned how
    /// ([`artifact_settings`]).
    pub artifacts: ArtifactSettings,
    /// Run the `aws` provider with these settings (`--aws`); None: off.
    pub aws: Option<crate::providers::aws::AwsConfig>,
}

/// The Kubernetes binaries' settings as given, by flag or environment
/// (`up` and `serve` take both; the test harness the environment).
#[derive(Debug, Clone, Default)]
pub struct ArtifactFlags {
    /// `--artifacts` / `KUBEFORGE_ARTIFACTS`: a directory or an https base
    /// URL in the upstream release layout; default: `{cache}/kube`.
    pub source: Option<String>,
    /// `--artifact-digests` / `KUBEFORGE_ARTIFACT_DIGESTS`: the pins, in the
    /// `sha256sum` format (required for a URL source).
    pub digests: Option<PathBuf>,
    /// `--insecure-artifacts-http` / `KUBEFORGE_INSECURE_ARTIFACTS_HTTP`.
    pub insecure_http: bool,
    /// `--artifact-max-bytes` / `KUBEFORGE_ARTIFACT_MAX_BYTES` (`512MiB`).
    pub max_bytes: Option<String>,
    /// `--artifact-timeout` / `KUBEFORGE_ARTIFACT_TIMEOUT` (`10m`): one
    /// download, start to end.
    pub timeout: Option<String>,
    /// `--etcd-sha256` / `KUBEFORGE_ETCD_SHA256`: the sha256 of
    /// `/usr/bin/etcd` in the machines' image (default: the lab image's).
    pub etcd_sha256: Option<String>,
}

impl ArtifactFlags {
    /// The same settings from the environment alone.
    pub fn from_env() -> anyhow::Result<ArtifactFlags> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let insecure_http = match var("KUBEFORGE_INSECURE_ARTIFACTS_HTTP")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("0" | "false" | "no" | "off") => false,
            Some("1" | "true" | "yes" | "on") => true,
            Some(other) => {
                anyhow::bail!("KUBEFORGE_INSECURE_ARTIFACTS_HTTP {other:?} is not true or false")
            }
        };
        Ok(ArtifactFlags {
            source: var("KUBEFORGE_ARTIFACTS"),
            digests: var("KUBEFORGE_ARTIFACT_DIGESTS").map(PathBuf::from),
            insecure_http,
            max_bytes: var("KUBEFORGE_ARTIFACT_MAX_BYTES"),
            timeout: var("KUBEFORGE_ARTIFACT_TIMEOUT"),
            etcd_sha256: var("KUBEFORGE_ETCD_SHA256"),
        })
    }
}

/// Parses [`ArtifactFlags`]: the source, the pinned digests (read now), the
/// http exception and the download limits. A URL source is then checked by
/// [`ArtifactSettings::check`] when the service starts.
pub fn artifact_settings(flags: &ArtifactFlags) -> anyhow::Result<ArtifactSettings> {
    let mut settings = ArtifactSettings::local(&cache_dir());
    if let Some(source) = &flags.source {
        settings.source = ArtifactSource::parse(source).context("--artifacts")?;
    }
    if let Some(path) = &flags.digests {
        settings.digests = PinnedDigests::load(path)?;
    }
    settings.insecure_http = flags.insecure_http;
    if let Some(v) = &flags.max_bytes {
        settings.limits.max_bytes = parse_size(v).context("--artifact-max-bytes")?;
    }
    if let Some(v) = &flags.timeout {
        settings.limits.total_timeout = crate::cli::client::parse_ttl(v)
            .map_err(|e| anyhow::anyhow!("--artifact-timeout: {e}"))?;
    }
    if let Some(v) = &flags.etcd_sha256 {
        let v = v.trim().to_ascii_lowercase();
        anyhow::ensure!(
            v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()),
            "--etcd-sha256: {v:?} is not a sha256 (64 hex digits)"
        );
        settings.etcd_sha256 = Some(v);
    }
    Ok(settings)
}

/// `536870912`, `512MiB`, `512M`, `1GiB`, `64KiB` (binary units).
pub fn parse_size(value: &str) -> anyhow::Result<u64> {
    let v = value.trim();
    let digits = v.len() - v.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (number, unit) = v.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => anyhow::bail!("{value:?}: unknown unit {other:?} (bytes, KiB, MiB or GiB)"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("{value:?} is not a size (e.g. 512MiB)"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .filter(|b| *b > 0)
        .ok_or_else(|| anyhow::anyhow!("{value:?} is not a size above zero"))?;
    Ok(bytes)
}

/// `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Refuses a plaintext API on anything but loopback unless asked for:
/// tokens travel in every request.
pub fn check_listen(
    listen: SocketAddr,
    tls: Option<&TlsFiles>,
    insecure_plaintext: bool,
) -> anyhow::Result<()> {
    if tls.is_none() && !insecure_plaintext && !listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {listen} is not a loopback address and the API would be plaintext \
             (bearer tokens in the clear): give --tls-cert and --tls-key, or \
             --insecure-plaintext when a TLS-terminating proxy fronts this listener"
        );
    }
    Ok(())
}

/// The lab bridge's gateway (the host's address on it): the first address
/// of `KUBEFORGE_LAB_SUBNET` (default `10.77.0.0/24`).
pub fn lab_gateway() -> anyhow::Result<std::net::Ipv4Addr> {
    let subnet = std::env::var("KUBEFORGE_LAB_SUBNET").unwrap_or_else(|_| "10.77.0.0/24".into());
    let net: ipnet::Ipv4Net = subnet
        .parse()
        .context("KUBEFORGE_LAB_SUBNET is not a CIDR")?;
    net.hosts()
        .next()
        .context("the lab subnet has no host address")
}

/// The address a DNS server listening on `listen` is advertised at.
pub fn dns_advertise(
    listen: SocketAddr,
    advertise: Option<std::net::SocketAddrV4>,
) -> anyhow::Result<std::net::SocketAddrV4> {
    if let Some(a) = advertise {
        return Ok(a);
    }
    match listen {
        SocketAddr::V4(v4) if !v4.ip().is_unspecified() && !v4.ip().is_loopback() => Ok(v4),
        _ => anyhow::bail!(
            "--dns-listen {listen} is not an address nodes can reach; give --dns-advertise IPv4:PORT"
        ),
    }
}

/// The default data dir: `$KUBEFORGE_DATA_DIR`, `/var/lib/kubeforge` for
/// root, else `~/.local/share/kubeforge`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KUBEFORGE_DATA_DIR") {
        return PathBuf::from(d);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/kubeforge");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/kubeforge")
}

/// The token signing key: `$KUBEFORGE_TOKEN_KEY` (hex) or `<data_dir>/token.key`.
/// Replicas sharing a database must share this key.
pub fn load_auth(data_dir: &Path) -> anyhow::Result<AuthKeys> {
    let key = match std::env::var("KUBEFORGE_TOKEN_KEY") {
        Ok(hex_key) => hex::decode(hex_key.trim()).context("KUBEFORGE_TOKEN_KEY is not hex")?,
        Err(_) => crate::keys::load_or_create(&data_dir.join("token.key"))?,
    };
    AuthKeys::from_secret(&key)
}

/// The token signing key a running service uses, for a tool that mints
/// tokens for it (`token create`): `$KUBEFORGE_TOKEN_KEY` (hex) or
/// `<data_dir>/token.key`, which must exist. A new key would sign tokens
/// no server accepts, so where there is none this fails naming the data
/// dir it looked in and how to point elsewhere.
pub fn load_existing_auth(data_dir: &Path) -> anyhow::Result<AuthKeys> {
    let key = match std::env::var("KUBEFORGE_TOKEN_KEY") {
        Ok(hex_key) => hex::decode(hex_key.trim()).context("KUBEFORGE_TOKEN_KEY is not hex")?,
        Err(_) => {
            let path = data_dir.join("token.key");
            crate::keys::load_existing(&path)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "no token signing key in the data dir {}: {} does not exist. \
                     Point at the data dir of the running service with --data-dir DIR \
                     or KUBEFORGE_DATA_DIR=DIR (or give the key as KUBEFORGE_TOKEN_KEY); \
                     `kubeforge up` creates the key on its first start",
                    data_dir.display(),
                    path.display()
                )
            })?
        }
    };
    AuthKeys::from_secret(&key)
}

/// The secret-encryption key: `$KUBEFORGE_SECRET_KEY` (hex) or `<data_dir>/secret.key`.
pub fn load_secret_box(data_dir: &Path) -> anyhow::Result<SecretBox> {
    let key = match std::env::var("KUBEFORGE_SECRET_KEY") {
        Ok(hex_key) => hex::decode(hex_key.trim()).context("KUBEFORGE_SECRET_KEY is not hex")?,
        Err(_) => crate::keys::load_or_create(&data_dir.join("secret.key"))?,
    };
    SecretBox::new(&key)
}

/// The artifact cache: `$KUBEFORGE_CACHE` or `~/.cache/kubeforge`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KUBEFORGE_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/kubeforge")
}

/// The newest complete lab image under the cache.
pub fn lab_image(cache: &Path) -> Option<PathBuf> {
    // `bookworm-<revision>`: the highest complete revision wins (numerically).
    let revision = |p: &Path| -> u64 {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    };
    std::fs::read_dir(cache.join("lab-image"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(".complete").exists())
        .max_by_key(|p| revision(p))
        .map(|p| p.join("rootfs"))
}

/// Kubernetes binaries in the guest, where the lab binds the host's cache.
pub const GUEST_KUBE_DIR: &str = "/opt/kubeforge/kube/bin";

/// The Kubernetes version whose binaries the machines run.
fn kube_version() -> &'static str {
    kubeforge_cluster::names::SUPPORTED_VERSIONS[0]
}

/// The lab provider and machine access, if this host can run them; each
/// missing piece is logged with how to get it.
pub async fn machine_setup(
    data_dir: &Path,
    artifacts: &ArtifactSettings,
) -> (ProviderRegistry, Option<Arc<MachineAccess>>) {
    let bridge = std::env::var("KUBEFORGE_LAB_BRIDGE").unwrap_or_else(|_| "kfbr0".into());
    let subnet = std::env::var("KUBEFORGE_LAB_SUBNET").unwrap_or_else(|_| "10.77.0.0/24".into());
    machine_setup_with(data_dir, &bridge, &subnet, artifacts).await
}

/// [`machine_setup`] on a given lab bridge and subnet, the binaries as the
/// environment says ([`ArtifactFlags::from_env`]).
pub async fn machine_setup_on(
    data_dir: &Path,
    bridge: &str,
    subnet: &str,
) -> (ProviderRegistry, Option<Arc<MachineAccess>>) {
    match ArtifactFlags::from_env().and_then(|f| artifact_settings(&f)) {
        Ok(artifacts) => machine_setup_with(data_dir, bridge, subnet, &artifacts).await,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the Kubernetes binaries' settings are wrong: the lab provider is off");
            (ProviderRegistry::default(), None)
        }
    }
}

/// [`machine_setup`] on a given lab bridge and subnet with given binaries.
///
/// Machine access (the service's key, the verified Kubernetes binaries,
/// the etcd digest, the sandbox image) does not need the lab: with an
/// etcd digest given (`--etcd-sha256`), a host without the lab image
/// still bootstraps registered hosts and cloud instances. The lab provider
/// is on only where its image is.
pub async fn machine_setup_with(
    data_dir: &Path,
    bridge: &str,
    subnet: &str,
    artifacts: &ArtifactSettings,
) -> (ProviderRegistry, Option<Arc<MachineAccess>>) {
    let mut providers = ProviderRegistry::default();
    let cache = cache_dir();
    let version = kube_version();
    let image = lab_image(&cache);
    if image.is_none() {
        tracing::warn!(cache = %cache.display(), "no lab image: the lab provider is off (build it with scripts/build-lab-image)");
    }
    let image_etcd = image
        .as_ref()
        .map(|i| crate::artifacts::sha256_file(&i.join("usr/bin/etcd")));
    let etcd_sha256 = match (&artifacts.etcd_sha256, image_etcd) {
        (Some(given), Some(Ok(lab))) if *given != lab => {
            tracing::error!(given = %given, lab_image = %lab, "--etcd-sha256 is not the lab image's etcd, whose control planes would fail the check: no machine access");
            return (providers, None);
        }
        (Some(given), _) => given.clone(),
        (None, Some(Ok(lab))) => lab,
        (None, Some(Err(e))) => {
            tracing::error!(error = %format!("{e:#}"), "the lab image has no readable /usr/bin/etcd: no machine access");
            return (providers, None);
        }
        (None, None) => {
            tracing::warn!("no etcd digest (--etcd-sha256, the sha256 of /usr/bin/etcd in the machines' image) and no lab image to take it from: no machine access, so no provider that bootstraps over SSH");
            return (providers, None);
        }
    };
    // A directory (by default the cache scripts/build-kube fills) or an
    // https base URL, every binary verified (see crate::artifacts).
    let host_dir = match crate::artifacts::ensure(artifacts, &cache, version).await {
        Ok(dir) => dir,
        Err(e) => {
            tracing::error!(source = %artifacts.source, error = %format!("{e:#}"),
                "no verified Kubernetes binaries: no machine access (build them with scripts/build-kube)");
            return (providers, None);
        }
    };
    // The sandbox image workers import (scripts/build-lab-pause): bound
    // into lab machines, uploaded to others.
    let pause_dir = cache.join("lab-pause/1");
    let pause_built = pause_dir.join(".complete").exists();
    if !pause_built {
        tracing::warn!("no lab pause image: pods on workers cannot start (build it with scripts/build-lab-pause)");
    }
    let client_key = match crate::ssh::load_or_create_client_key(&data_dir.join("ssh/id_ed25519")) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the service's SSH key: no machine access");
            return (providers, None);
        }
    };
    let access = MachineAccess {
        ssh: crate::ssh::SshExecutor::new(8),
        client_key,
        artifacts: Artifacts {
            kubernetes_version: version.to_string(),
            host_dir: host_dir.clone(),
            guest_dir: GUEST_KUBE_DIR.to_string(),
            etcd_bin: "/usr/bin/etcd".to_string(),
            etcd_sha256,
            pause_archive: pause_built.then(|| pause_dir.join("pause.oci.tar")),
        },
    };
    if let Some(image) = image {
        let lab = subnet
            .parse()
            .context("the lab subnet is not a CIDR")
            .and_then(|subnet| {
                LabProvider::new(LabConfig {
                    image_rootfs: image.clone(),
                    state_dir: data_dir.join("lab"),
                    bridge: bridge.to_string(),
                    subnet,
                    authorized_key: access.client_key.public_key_line().to_string(),
                    bind_ro: {
                        let mut binds = vec![(host_dir, GUEST_KUBE_DIR.to_string())];
                        if pause_built {
                            binds.push((pause_dir, "/opt/kubeforge/images".to_string()));
                        }
                        binds
                    },
                })
            });
        match lab {
            Ok(lab) => {
                tracing::info!(image = %image.display(), "lab provider on");
                providers.register(Arc::new(lab));
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "the lab provider is off"),
        }
    }
    (providers, Some(Arc::new(access)))
}

/// Where the service's SSH client key is kept in `service_secrets`.
pub const SSH_KEY_SECRET: &str = "ssh-client-key";

/// Makes the data dir's SSH key (`ssh/id_ed25519`) the one every process
/// sharing the database logs into machines with. Replicas of `serve` each
/// have a data dir, but a machine bootstrapped by one is repaired, drained
/// or deleted by whichever replica takes the job, so they need one key.
/// The first process to start stores its key (sealed, like every secret of
/// the service, in `service_secrets`); the others take that one, keeping
/// their own aside as `id_ed25519.replaced-<unix time>` (machines only it
/// set up still trust that one). A key sealed with another secret key is
/// an error: those replicas do not share their secrets either.
pub async fn share_client_key(
    pool: &sqlx::PgPool,
    secrets: &SecretBox,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let path = data_dir.join("ssh/id_ed25519");
    let local = crate::ssh::load_or_create_client_key(&path)?;
    let stored = store::service_secret::put_if_absent(
        pool,
        secrets,
        SSH_KEY_SECRET,
        local.private_key_openssh().as_bytes(),
    )
    .await?;
    let shared = crate::ssh::ClientKey::from_openssh(
        std::str::from_utf8(&stored).context("the stored SSH key is not text")?,
    )?;
    if shared.fingerprint() == local.fingerprint() {
        return Ok(());
    }
    let aside = path.with_file_name(format!(
        "id_ed25519.replaced-{}",
        chrono::Utc::now().timestamp()
    ));
    std::fs::rename(&path, &aside).with_context(|| format!("keeping {} aside", path.display()))?;
    crate::ssh::write_client_key(&path, &shared)?;
    tracing::warn!(
        own = local.fingerprint(),
        shared = shared.fingerprint(),
        kept = %aside.display(),
        "this data dir's SSH key is not the one the service shares: using the shared key (machines only this process set up trust the old one)"
    );
    Ok(())
}

/// Registers the `ssh` provider (the pool of hosts registered with
/// `/v1/hosts`) next to the lab: it needs the same machine access (the
/// service key it authorizes on hosts, the binaries it uploads), plus the
/// database holding the pool and the key its credentials are sealed with.
pub fn register_ssh_provider(
    providers: &mut ProviderRegistry,
    access: &MachineAccess,
    pool: &sqlx::PgPool,
    secrets: &SecretBox,
) {
    providers.register(Arc::new(SshProvider::new(
        pool.clone(),
        secrets.clone(),
        access.ssh.clone(),
        access.client_key.public_key_line().to_string(),
        access.artifacts.clone(),
    )));
    tracing::info!("ssh provider on");
}

/// Registers the `aws` provider when `--aws` asked for it. It bootstraps
/// its instances over SSH, so it needs the machine access (the service's
/// key and binaries) too; without it, it stays off, loudly.
pub fn register_aws_provider(
    providers: &mut ProviderRegistry,
    config: Option<crate::providers::aws::AwsConfig>,
    have_access: bool,
) -> Option<crate::providers::aws::AwsProvider> {
    let config = config?;
    if !have_access {
        tracing::error!("the aws provider needs the service's SSH key and Kubernetes binaries (see the warnings above): it is off");
        return None;
    }
    let aws = crate::providers::aws::AwsProvider::new(config);
    providers.register(Arc::new(aws.clone()));
    tracing::info!("aws provider on");
    Some(aws)
}

/// Service settings from the environment: `KUBEFORGE_KUBECONFIG_MAX_TTL`
/// (e.g. `12h`; default 24h) caps what a tenant may ask for;
/// `KUBEFORGE_RATE_LIMIT_READ` and `KUBEFORGE_RATE_LIMIT_WRITE`
/// (`<per second>/<burst>`, e.g. `20/40`, or `off`) limit each tenant's
/// requests (defaults 100/200 and 20/40).
pub fn service_config() -> anyhow::Result<Config> {
    let mut config = Config::default();
    for (var, rate) in [
        ("KUBEFORGE_RATE_LIMIT_READ", &mut config.rate_limits.read),
        ("KUBEFORGE_RATE_LIMIT_WRITE", &mut config.rate_limits.write),
    ] {
        if let Ok(v) = std::env::var(var) {
            *rate = parse_rate(&v).map_err(|e| anyhow::anyhow!("{var}: {e}"))?;
        }
    }
    if let Ok(v) = std::env::var("KUBEFORGE_KUBECONFIG_MAX_TTL") {
        config.kubeconfig_max_ttl = crate::cli::client::parse_ttl(&v)
            .map_err(|e| anyhow::anyhow!("KUBEFORGE_KUBECONFIG_MAX_TTL: {e}"))?;
        anyhow::ensure!(
            config.kubeconfig_max_ttl >= Duration::from_secs(60),
            "KUBEFORGE_KUBECONFIG_MAX_TTL must be at least 60s"
        );
    }
    Ok(config)
}

/// `<per second>/<burst>` (`20/40`), a bare rate (burst twice it), or `off`.
pub fn parse_rate(v: &str) -> Result<crate::ratelimit::Rate, String> {
    let v = v.trim();
    if v == "off" {
        return Ok(crate::ratelimit::Rate::UNLIMITED);
    }
    let number = |s: &str| -> Result<f64, String> {
        match s.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
            _ => Err(format!(
                "{v:?} is not <per second>/<burst> with positive numbers (e.g. 20/40) or off"
            )),
        }
    };
    let (per_second, burst) = match v.split_once('/') {
        Some((r, b)) => (number(r)?, number(b)?),
        None => {
            let r = number(v)?;
            (r, 2.0 * r)
        }
    };
    if burst < 1.0 {
        return Err(format!("{v:?}: the burst must be at least 1"));
    }
    Ok(crate::ratelimit::Rate { per_second, burst })
}

/// The API listener's limits from the environment:
/// `KUBEFORGE_MAX_CONNECTIONS` (default 512) and
/// `KUBEFORGE_HEADER_READ_TIMEOUT` (e.g. `10s`, the default).
pub fn http_settings() -> anyhow::Result<crate::http::HttpSettings> {
    let mut settings = crate::http::HttpSettings::default();
    if let Ok(v) = std::env::var("KUBEFORGE_MAX_CONNECTIONS") {
        settings.max_connections =
            v.trim().parse().ok().filter(|n| *n > 0).with_context(|| {
                format!("KUBEFORGE_MAX_CONNECTIONS {v:?} is not a positive number")
            })?;
    }
    if let Ok(v) = std::env::var("KUBEFORGE_HEADER_READ_TIMEOUT") {
        settings.header_read_timeout = crate::cli::client::parse_ttl(&v)
            .map_err(|e| anyhow::anyhow!("KUBEFORGE_HEADER_READ_TIMEOUT: {e}"))?;
    }
    Ok(settings)
}

/// Builds the shared app state.
pub fn build_app(
    pool: sqlx::PgPool,
    auth: AuthKeys,
    secrets: SecretBox,
    providers: ProviderRegistry,
    config: Config,
    access: Option<Arc<MachineAccess>>,
) -> anyhow::Result<SharedApp> {
    Ok(Arc::new(App {
        rate_limiter: crate::ratelimit::RateLimiter::new(config.rate_limits),
        pool,
        auth,
        providers,
        secrets,
        metrics: Metrics::new()?,
        config,
        access,
        tenants: Default::default(),
        revocations: Default::default(),
    }))
}

/// The engine reports its jobs into the service's metrics.
impl EngineMetrics for Metrics {
    fn job_started(&self, kind: &str, waited: Duration) {
        self.observe_job_wait(kind, waited);
    }

    fn job_finished(&self, kind: &str, outcome: &'static str, took: Duration) {
        self.observe_job_run(kind, outcome, took);
    }
}

/// An engine with this service's job handlers registered. It claims the
/// jobs of the provider kinds `app` runs (and those that need none).
pub fn build_engine(app: &SharedApp, mut config: EngineConfig) -> Engine {
    config.providers = app
        .providers
        .kinds()
        .into_iter()
        .map(str::to_string)
        .collect();
    config
        .lanes
        .push((crate::autoscaler::AUTOSCALE, crate::autoscaler::LANE_SLOTS));
    let mut engine = Engine::new(app.pool.clone(), config, Arc::new(app.metrics.clone()));
    engine.register(
        RECONCILE_CLUSTER,
        Arc::new(ClusterReconciler::new(app.clone())),
    );
    engine.register(
        crate::engine::upkeep::PROVIDER_UPKEEP,
        Arc::new(crate::engine::upkeep::Upkeep::new(app.clone())),
    );
    engine.register(
        crate::autoscaler::AUTOSCALE,
        Arc::new(crate::autoscaler::Autoscaler::new(app.clone())),
    );
    engine
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called, not when it is first awaited: a signal that arrives while the
/// service is still starting is then kept for the graceful shutdown, where
/// the default action would have killed the process and left its embedded
/// PostgreSQL running.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {},
                    _ = t.recv() => {},
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            (Err(_), Err(_)) => std::future::pending().await,
        }
    }
}

/// Runs the service until Ctrl-C or SIGTERM.
pub async fn serve(opts: ServeOptions, announce_tour: bool) -> anyhow::Result<()> {
    check_listen(opts.listen, opts.tls.as_ref(), opts.insecure_plaintext)?;
    opts.artifacts.check(kube_version())?;
    let shutdown = shutdown_signal();
    let tls = opts
        .tls
        .as_ref()
        .map(|t| crate::http::tls_acceptor(&t.cert, &t.key))
        .transpose()?;
    let http = http_settings()?;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
    let mut _lock = None;
    let mut embedded = None;
    // `up` holds a lab network of its own while it runs: claimed under the
    // data dir's lock, before the database starts, so a refusal is quick;
    // the bridge goes when `run` drops it.
    let mut lab_network = None;
    let url = match &opts.database_url {
        Some(u) => u.clone(),
        None => {
            _lock = Some(DataDirLock::acquire(&opts.data_dir)?);
            if opts.claim_lab_network
                && nix::unistd::geteuid().is_root()
                && lab_image(&cache_dir()).is_some()
            {
                lab_network = Some(LabNetwork::claim(
                    &opts.data_dir.join("lab"),
                    std::env::var("KUBEFORGE_LAB_BRIDGE").ok().as_deref(),
                    std::env::var("KUBEFORGE_LAB_SUBNET").ok().as_deref(),
                )?);
            }
            let pg = EmbeddedPostgres::start(&opts.data_dir).await?;
            let url = pg.url("kubeforge");
            embedded = Some(pg);
            url
        }
    };
    // `up`'s database is this process's to keep running.
    let (supervise_tx, supervise_rx) = watch::channel(false);
    let (result, ()) = tokio::join!(
        async {
            let result = run(&opts, &url, lab_network, announce_tour, http, tls, shutdown).await;
            let _ = supervise_tx.send(true);
            result
        },
        async {
            if let Some(pg) = &embedded {
                pg.supervise(supervise_rx).await;
            }
        }
    );
    if let Some(pg) = embedded {
        tracing::info!("stopping the embedded PostgreSQL");
        pg.stop().await?;
    }
    result
}

async fn run(
    opts: &ServeOptions,
    url: &str,
    mut lab_network: Option<LabNetwork>,
    announce_tour: bool,
    http: crate::http::HttpSettings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let pool = store::connect(url, 20).await?;
    store::migrate(&pool).await?;
    let auth = load_auth(&opts.data_dir)?;
    let secrets = load_secret_box(&opts.data_dir)?;
    share_client_key(&pool, &secrets, &opts.data_dir)
        .await
        .context("sharing the service's SSH key through the database")?;
    let (mut providers, access) = match &lab_network {
        Some(net) => {
            println!("lab network: bridge {}, subnet {}", net.bridge, net.subnet);
            machine_setup_with(
                &opts.data_dir,
                &net.bridge,
                &net.subnet.to_string(),
                &opts.artifacts,
            )
            .await
        }
        None => machine_setup(&opts.data_dir, &opts.artifacts).await,
    };
    if providers.get(crate::providers::lab::KIND).is_none() {
        // No lab after all: the bridge goes now.
        lab_network = None;
    }
    let dns_listen = if opts.dns_on_lab_gateway {
        let gateway = match &lab_network {
            Some(net) => net.gateway(),
            None => lab_gateway()?,
        };
        Some(SocketAddr::from((gateway, 53)))
    } else {
        opts.dns_listen
    };
    if let Some(access) = &access {
        register_ssh_provider(&mut providers, access, &pool, &secrets);
    }
    let aws = register_aws_provider(&mut providers, opts.aws.clone(), access.is_some());
    let mut config = service_config()?;
    config.lab_tenants = opts.lab_tenants.clone();
    let grpc = match opts.grpc_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} for gRPC"))?;
            let bound = listener.local_addr()?;
            let advertise = opts.grpc_advertise.clone().unwrap_or_else(|| {
                if bound.ip().is_unspecified() {
                    format!("localhost:{}", bound.port())
                } else {
                    bound.to_string()
                }
            });
            config.grpc_address = Some(advertise.clone());
            Some((listener, bound, advertise))
        }
    };
    let dns = match dns_listen {
        None => None,
        Some(addr) => {
            let advertise = dns_advertise(addr, opts.dns_advertise)?;
            let (udp, tcp) =
                crate::dns::bind(addr).with_context(|| format!("listening on {addr} for DNS"))?;
            let upstream = crate::dns::resolver(&opts.dns_upstream)?;
            config.dns_address = Some(advertise);
            Some((udp, tcp, upstream, addr, advertise))
        }
    };
    let app = build_app(pool.clone(), auth, secrets, providers, config, access)?;
    if let Some(aws) = &aws {
        let counters = aws.counters();
        app.metrics.register(Box::new(counters.calls.clone()))?;
        app.metrics.register(Box::new(counters.retries.clone()))?;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let engine = build_engine(
        &app,
        EngineConfig {
            concurrency: opts.workers,
            ..EngineConfig::default()
        },
    );
    let engine_task = tokio::spawn(engine.run(stop_rx.clone(), Duration::from_secs(10)));

    // Everything startup reads from the database comes before the API
    // answers: once /readyz says 200 the process is up, and a database
    // blip after that is survived, not fatal.
    let grpc = match grpc {
        None => None,
        Some((listener, bound, advertise)) => {
            let hosts = crate::externalgrpc::serving_hosts(bound, &advertise);
            let tls = crate::externalgrpc::tls_config(&app, &hosts).await?;
            Some((listener, bound, advertise, tls))
        }
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("kubeforge is serving on {scheme}://{addr}");
    if announce_tour {
        println!(
            "get a token:  kubeforge token create --tenant demo --role admin --data-dir {}",
            opts.data_dir.display()
        );
        println!("then:         export KUBEFORGE_URL={scheme}://{addr} KUBEFORGE_TOKEN=<token>; kubeforge clusters list");
    }
    let server_task = tokio::spawn(crate::http::serve(
        listener,
        crate::api::router(app.clone()),
        http,
        tls,
        stop_rx.clone(),
    ));
    let grpc_task = match grpc {
        None => None,
        Some((listener, bound, advertise, tls)) => {
            println!(
                "cluster-autoscaler externalgrpc provider on {bound} (mTLS; clients dial {advertise})"
            );
            Some(tokio::spawn(crate::externalgrpc::serve(
                app.clone(),
                listener,
                tls,
                stop_rx.clone(),
            )))
        }
    };
    let dns_task = dns.map(|(udp, tcp, upstream, addr, advertise)| {
        println!(
            "cluster DNS on {addr} (UDP and TCP; clusters' kube-dns Endpoints name {advertise})"
        );
        tokio::spawn(crate::dns::serve(
            app.clone(),
            udp,
            tcp,
            upstream,
            stop_rx.clone(),
        ))
    });
    shutdown.await;
    tracing::info!("shutting down: no new jobs, releasing leases, draining requests");
    let _ = stop_tx.send(true);
    match engine_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "engine stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "engine task failed"),
        Ok(Ok(())) => {}
    }
    match tokio::time::timeout(Duration::from_secs(15), server_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server stopped with an error"),
        Err(_) => tracing::warn!("requests still open after 15 s; closing"),
        _ => {}
    }
    if let Some(task) = grpc_task {
        match tokio::time::timeout(Duration::from_secs(15), task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server stopped with an error"),
            Err(_) => tracing::warn!("gRPC calls still open after 15 s; closing"),
            _ => {}
        }
    }
    if let Some(task) = dns_task {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "DNS server stopped with an error"),
            Err(_) => tracing::warn!("DNS server still answering after 5 s; closing"),
            _ => {}
        }
    }
    pool.close().await;
    drop(lab_network);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_sizes_parse_in_binary_units() {
        assert_eq!(parse_size("536870912").unwrap(), 512 << 20);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size(" 64KiB ").unwrap(), 64 << 10);
        for bad in ["", "0", "MiB", "12 TB", "-1", "99999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn artifact_flags_become_settings() {
        let s = artifact_settings(&ArtifactFlags {
            source: Some("https://dl.example.com/kube/".into()),
            max_bytes: Some("1GiB".into()),
            timeout: Some("90s".into()),
            insecure_http: true,
            ..ArtifactFlags::default()
        })
        .unwrap();
        assert_eq!(s.source.to_string(), "https://dl.example.com/kube/");
        assert_eq!(s.limits.max_bytes, 1 << 30);
        assert_eq!(s.limits.total_timeout, Duration::from_secs(90));
        assert!(s.insecure_http);
        assert!(s.digests.is_empty());
        assert!(artifact_settings(&ArtifactFlags {
            source: Some("ftp://example.com/kube".into()),
            ..ArtifactFlags::default()
        })
        .is_err());
        let digest = "AB".repeat(32);
        let s = artifact_settings(&ArtifactFlags {
            etcd_sha256: Some(digest.clone()),
            ..ArtifactFlags::default()
        })
        .unwrap();
        assert_eq!(s.etcd_sha256, Some("ab".repeat(32)));
        let err = artifact_settings(&ArtifactFlags {
            etcd_sha256: Some("abc".into()),
            ..ArtifactFlags::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--etcd-sha256"), "{err}");
        // No flags: the cache scripts/build-kube fills, nothing pinned.
        let s = artifact_settings(&ArtifactFlags::default()).unwrap();
        assert_eq!(
            s.source,
            ArtifactSource::Dir(cache_dir().join("kube")),
            "{s:?}"
        );
    }
}
