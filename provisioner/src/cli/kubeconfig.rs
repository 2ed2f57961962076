//! Kubeconfigs on a workstation: `kubeforge clusters get-credentials` and
//! `kubeforge credentials exec`.
//!
//! `get-credentials NAME` mints a kubeconfig (`POST
//! /v1/clusters/{c}/kubeconfig` with `Accept: application/json`, so the
//! answer says its context name and expiry) and merges its cluster, user
//! and context into a kubeconfig file, as `gcloud container clusters
//! get-credentials` does:
//!
//! - The file is `--kubeconfig PATH`, else the first non-empty path of
//!   `$KUBECONFIG` (colon-separated), else `~/.kube/config`. A symlink is
//!   followed: the file it points at is the one replaced.
//! - Entries are named `kubeforge_<tenant>_<cluster>_<role>` (by the
//!   service): an entry of that name is replaced where it stands, every
//!   other cluster, user, context, preference and unknown field is kept.
//!   The new context becomes `current-context` unless `--no-set-current`.
//! - Reading, merging and writing go through the `kube` crate's kubeconfig
//!   model, not text edits; relative paths in the file stay as written.
//! - The file is written whole to a temporary file in the same directory
//!   (mode 0600) and renamed over the old one, so a reader sees the old
//!   file or the new one, never half of one. The result is always 0600,
//!   an existing file included: it now holds a private key. A missing
//!   parent directory is created 0700.
//! - Concurrent writers are serialized by an exclusive `flock` on a lock
//!   file next to it, `.<name>.kubeforge-lock` (kept: removing it would
//!   race with the next writer). kubectl's own writers use `<name>.lock`,
//!   which this does not take.
//! - `--print` writes the kubeconfig to stdout instead (what `kubeforge
//!   kubeconfig CLUSTER` does).
//!
//! `--exec` writes, instead of a certificate, a user that runs this binary
//! (its absolute path) as a kubectl credential plugin:
//! `kubeforge credentials exec --url URL --cluster NAME --role R --ttl T`
//! prints an `ExecCredential` (`client.authentication.k8s.io/v1beta1`,
//! the newest version kubectl 1.20 knows; `v1` when kubectl asks for it
//! through `KUBERNETES_EXEC_INFO`) with a client certificate, its key and
//! its expiry, so kubectl renews short-lived certificates by itself.
//!
//! The plugin needs a Kubeforge API token. The kubeconfig never holds it:
//! the plugin reads `KUBEFORGE_TOKEN` (kubectl passes its environment to
//! plugins), or the file named by `--token-file` (which `get-credentials
//! --exec --token-file PATH` writes into the stanza as an absolute path),
//! or `KUBEFORGE_TOKEN_FILE`.
//!
//! Each credential is cached in `$XDG_CACHE_HOME/kubeforge/credentials/`
//! (else `~/.cache/kubeforge/credentials/`; directory 0700, files 0600),
//! one file per API URL, tenant, cluster and role, and reused until less
//! than a fifth of the TTL (at most five minutes) is left, so kubectl does
//! not mint a certificate per call. `get-credentials --exec` seeds it with
//! the certificate it minted. A revoked credential stays cached until it
//! expires; delete the cache file to mint a new one at once.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use kube::config::{AuthInfo, ExecConfig, Kubeconfig};
use kubeforge_cluster::api::{KubeconfigIssued, KubeconfigRequest};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::client::{
    parse_ttl, run_kubeconfig_to, Api, ClientOpts, KubeconfigArgs, KubeconfigRole,
};

/// The ExecCredential version kubectl 1.20 understands (`v1alpha1` is
/// older; `v1` came with 1.22).
pub const EXEC_API_VERSION: &str = "client.authentication.k8s.io/v1beta1";

/// Versions this plugin can answer in: their `status` is the same.
const EXEC_API_VERSIONS: [&str; 2] = [EXEC_API_VERSION, "client.authentication.k8s.io/v1"];

/// `kubeforge clusters get-credentials NAME ...`
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:
  kubeforge clusters get-credentials web
  kubeforge clusters get-credentials web --role viewer --ttl 2h --no-set-current
  kubeforge clusters get-credentials web --exec --token-file ~/.config/kubeforge/token
  kubeforge clusters get-credentials web --print > web.kubeconfig")]
pub struct GetCredentialsArgs {
    /// Cluster name or id.
    pub cluster: String,
    /// Role the client certificate is issued for.
    #[arg(long, value_enum, default_value = "admin")]
    pub role: KubeconfigRole,
    /// Lifetime of the client certificate (with --exec: of each one the
    /// plugin mints), e.g. 8h, 30m, 1h30m.
    #[arg(long, default_value = "8h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The kubeconfig file to merge into (default: the first path of
    /// $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Keep the file's current context.
    #[arg(long)]
    pub no_set_current: bool,
    /// Write the kubeconfig to stdout instead of merging it.
    #[arg(long, conflicts_with_all = ["kubeconfig", "no_set_current", "exec"])]
    pub print: bool,
    /// Write a user that runs `kubeforge credentials exec` (a kubectl
    /// credential plugin) instead of a certificate.
    #[arg(long)]
    pub exec: bool,
    /// A file holding the Kubeforge API token, used when --token and
    /// KUBEFORGE_TOKEN are not set; with --exec the plugin reads it too.
    #[arg(long, env = "KUBEFORGE_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// `kubeforge credentials exec --cluster NAME ...`
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "kubectl runs this from a kubeconfig that `kubeforge clusters get-credentials --exec` wrote;
it prints an ExecCredential (JSON) on stdout."
)]
pub struct ExecArgs {
    /// Cluster name or id.
    #[arg(long)]
    pub cluster: String,
    /// Role the client certificate is issued for.
    #[arg(long, value_enum, default_value = "admin")]
    pub role: KubeconfigRole,
    /// Lifetime of each client certificate.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// A file holding the Kubeforge API token, used when --token and
    /// KUBEFORGE_TOKEN are not set.
    #[arg(long, env = "KUBEFORGE_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// `get-credentials`: merges (or prints) a fresh kubeconfig; `out` gets
/// the kubeconfig with `--print`, nothing otherwise (the summary goes to
/// stderr, so stdout stays clean for scripts).
pub async fn run_get_credentials_to(
    opts: &ClientOpts,
    args: GetCredentialsArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let opts = with_token_file(opts, args.token_file.as_deref())?;
    // A missing token fails before anything is written.
    Api::new(&opts)?;
    if args.print {
        let print = KubeconfigArgs {
            cluster: args.cluster,
            role: args.role,
            ttl: args.ttl,
        };
        return run_kubeconfig_to(&opts, print, out).await;
    }
    let issued = mint(&opts, &args.cluster, args.role, args.ttl).await?;
    let mut fresh = Kubeconfig::from_yaml(&issued.kubeconfig)
        .map_err(|e| anyhow!("the service sent a kubeconfig that does not parse: {e}"))?;
    if args.exec {
        let exe = std::env::current_exe()
            .and_then(fs::canonicalize)
            .context("finding this program's path for the exec plugin")?;
        let token_file = match &args.token_file {
            Some(p) => Some(absolute(p)?),
            None => None,
        };
        let plugin = ExecPlugin {
            exe,
            url: opts.url.clone(),
            cluster: args.cluster.clone(),
            role: args.role,
            ttl: args.ttl,
            token_file,
        };
        // The certificate just minted serves the plugin's first call.
        let credential = exec_credential(&issued, EXEC_API_VERSION)?;
        let key = cache_key(&opts, &args.cluster, args.role)?;
        store_cached(&cache_dir()?, &key, &credential)?;
        for user in &mut fresh.auth_infos {
            user.auth_info = Some(plugin.auth_info());
        }
    }
    let path = match &args.kubeconfig {
        Some(p) => p.clone(),
        None => default_kubeconfig_path()?,
    };
    let written = merge_into_file(&path, fresh, !args.no_set_current)?;
    let mut stderr = std::io::stderr().lock();
    if args.exec && args.token_file.is_none() && std::env::var_os("KUBEFORGE_TOKEN").is_none() {
        let _ = writeln!(
            stderr,
            "note: kubectl's plugin runs will need KUBEFORGE_TOKEN in their environment \
             (or run get-credentials --exec with --token-file)"
        );
    }
    let _ = writeln!(
        stderr,
        "context {} ({} until {}{}) merged into {}{}",
        issued.context,
        issued.role,
        issued.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        if args.exec {
            ", renewed by kubeforge credentials exec"
        } else {
            ""
        },
        written.display(),
        if args.no_set_current {
            ""
        } else {
            "; it is now the current context"
        },
    );
    Ok(())
}

/// `credentials exec`: prints an ExecCredential, from the cache while it
/// has time left, else freshly minted (and cached).
pub async fn run_credentials_exec(opts: &ClientOpts, args: ExecArgs) -> anyhow::Result<()> {
    let opts = with_token_file(opts, args.token_file.as_deref())?;
    // Checks the token is there and the URL sound before the cache is
    // consulted, so a bad setup fails the same way with or without it.
    Api::new(&opts)?;
    let api_version = requested_exec_version()?;
    let key = cache_key(&opts, &args.cluster, args.role)?;
    let dir = cache_dir()?;
    let margin = chrono::Duration::from_std((args.ttl / 5).min(Duration::from_secs(300)))?;
    let credential = match load_cached(&dir, &key, Utc::now() + margin) {
        Some(c) => c,
        None => {
            let issued = mint(&opts, &args.cluster, args.role, args.ttl).await?;
            let c = exec_credential(&issued, EXEC_API_VERSION)?;
            store_cached(&dir, &key, &c)?;
            c
        }
    };
    let answer = ExecCredential {
        api_version: api_version.to_string(),
        ..credential
    };
    let mut buf = serde_json::to_vec(&answer)?;
    buf.push(b'\n');
    super::client::write_stdout(&buf)
}

// ---------------------------------------------------------------------------
// Minting

async fn mint(
    opts: &ClientOpts,
    cluster: &str,
    role: KubeconfigRole,
    ttl: Duration,
) -> anyhow::Result<KubeconfigIssued> {
    let api = Api::new(opts)?;
    let url = api.url(&["clusters", cluster, "kubeconfig"])?;
    let body = KubeconfigRequest {
        role: role.as_str().into(),
        ttl_seconds: ttl.as_secs(),
    };
    // `Api` asks for application/json unless told otherwise.
    Ok(api
        .call(Method::POST, url, HeaderMap::new(), Some(&body))
        .await?)
}

/// `opts` with the token read from `token_file` when none was given.
fn with_token_file(opts: &ClientOpts, token_file: Option<&Path>) -> anyhow::Result<ClientOpts> {
    let mut opts = opts.clone();
    let given = opts.token.as_deref().is_some_and(|t| !t.trim().is_empty());
    if let (false, Some(path)) = (given, token_file) {
        let token = fs::read_to_string(path)
            .with_context(|| format!("reading the API token from {}", path.display()))?;
        if token.trim().is_empty() {
            bail!("the token file {} is empty", path.display());
        }
        opts.token = Some(token.trim().to_string());
    }
    Ok(opts)
}

// ---------------------------------------------------------------------------
// Merging into a kubeconfig file

/// `$KUBECONFIG`'s first non-empty path, else `~/.kube/config`.
pub fn default_kubeconfig_path() -> anyhow::Result<PathBuf> {
    if let Some(list) = std::env::var_os("KUBECONFIG") {
        if let Some(first) = std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty()) {
            return Ok(first);
        }
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("HOME is not set: name the file with --kubeconfig"))?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}

/// Merges `fresh` into `config`: entries of the same name replaced in
/// place, others appended; `current-context` set to `fresh`'s when
/// `set_current`. Everything else in `config` is kept.
pub fn merge(mut config: Kubeconfig, fresh: Kubeconfig, set_current: bool) -> Kubeconfig {
    fn upsert<T>(into: &mut Vec<T>, from: Vec<T>, name: impl Fn(&T) -> &str) {
        for entry in from {
            match into.iter_mut().find(|e| name(e) == name(&entry)) {
                Some(slot) => *slot = entry,
                None => into.push(entry),
            }
        }
    }
    upsert(&mut config.clusters, fresh.clusters, |e| &e.name);
    upsert(&mut config.auth_infos, fresh.auth_infos, |e| &e.name);
    upsert(&mut config.contexts, fresh.contexts, |e| &e.name);
    if set_current {
        config.current_context = fresh.current_context.or(config.current_context);
    }
    config.api_version.get_or_insert_with(|| "v1".into());
    config.kind.get_or_insert_with(|| "Config".into());
    config
}

/// Merges `fresh` into the kubeconfig at `path` under the lock, and
/// returns the path of the file written (the target of a symlink).
pub fn merge_into_file(
    path: &Path,
    fresh: Kubeconfig,
    set_current: bool,
) -> anyhow::Result<PathBuf> {
    let path = resolve(path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let _lock = lock(&path)?;
    let existing = match fs::read_to_string(&path) {
        Ok(text) => Kubeconfig::from_yaml(&text).map_err(|e| {
            anyhow!(
                "{} is not a kubeconfig: {e}; it was left unchanged",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Kubeconfig::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let merged = merge(existing, fresh, set_current);
    let yaml = kubeforge_cluster::kubeconfig::to_yaml(&merged)
        .map_err(|e| anyhow!("writing the merged kubeconfig: {e}"))?;
    write_atomically(&path, yaml.as_bytes())?;
    Ok(path)
}

/// `path`, or what it points at if it is a symlink (a dangling one
/// included), made absolute.
fn resolve(path: &Path) -> anyhow::Result<PathBuf> {
    let path = absolute(path)?;
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = fs::read_link(&path)?;
            let target = match path.parent() {
                Some(dir) if target.is_relative() => dir.join(target),
                _ => target,
            };
            resolve(&target)
        }
        _ => Ok(path),
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// An exclusive `flock` on `.<name>.kubeforge-lock` next to `path`,
/// released when dropped. Waits up to a minute.
fn lock(path: &Path) -> anyhow::Result<nix::fcntl::Flock<File>> {
    use nix::fcntl::{Flock, FlockArg};
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
    let mut lock_name = std::ffi::OsString::from(".");
    lock_name.push(name);
    lock_name.push(".kubeforge-lock");
    let lock_path = path.with_file_name(lock_name);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("opening the lock file {}", lock_path.display()))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, e)) => {
                bail!(
                    "locking {}: {e} (another kubeforge is writing this kubeconfig)",
                    lock_path.display()
                )
            }
        }
    }
}

/// Writes `bytes` to a new 0600 file in `path`'s directory, syncs it and
/// renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask may have taken bits away, never added any; set 0600
        // explicitly all the same.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The exec credential plugin

/// What a kubeconfig's `exec` user runs.
struct ExecPlugin {
    exe: PathBuf,
    url: String,
    cluster: String,
    role: KubeconfigRole,
    ttl: Duration,
    token_file: Option<PathBuf>,
}

impl ExecPlugin {
    fn auth_info(&self) -> AuthInfo {
        let mut args = vec![
            "credentials".to_string(),
            "exec".into(),
            "--url".into(),
            self.url.clone(),
            "--cluster".into(),
            self.cluster.clone(),
            "--role".into(),
            self.role.as_str().into(),
            "--ttl".into(),
            format!("{}s", self.ttl.as_secs()),
        ];
        if let Some(p) = &self.token_file {
            args.push("--token-file".into());
            args.push(p.display().to_string());
        }
        AuthInfo {
            exec: Some(ExecConfig {
                api_version: Some(EXEC_API_VERSION.into()),
                command: Some(self.exe.display().to_string()),
                args: Some(args),
                install_hint: Some(
                    "kubeforge credentials exec mints this cluster's credentials: install the \
                     kubeforge CLI, and set KUBEFORGE_TOKEN (or pass --token-file to \
                     get-credentials)"
                        .into(),
                ),
                ..ExecConfig::default()
            }),
            ..AuthInfo::default()
        }
    }
}

/// An `ExecCredential` as kubectl reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecCredential {
    pub api_version: String,
    pub kind: String,
    pub status: ExecCredentialStatus,
}

/// The credential: PEM certificate and key, and when it expires.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecCredentialStatus {
    pub client_certificate_data: String,
    /// Secret.
    pub client_key_data: String,
    pub expiration_timestamp: DateTime<Utc>,
}

impl std::fmt::Debug for ExecCredentialStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecCredentialStatus")
            .field("expiration_timestamp", &self.expiration_timestamp)
            .finish_non_exhaustive()
    }
}

/// The ExecCredential of a freshly minted kubeconfig.
fn exec_credential(issued: &KubeconfigIssued, api_version: &str) -> anyhow::Result<ExecCredential> {
    // The service renders it with this model.
    let config = kubeforge_cluster::kubeconfig::Kubeconfig::from_yaml(&issued.kubeconfig)
        .map_err(|e| anyhow!("the service sent a kubeconfig that does not parse: {e}"))?;
    let user = &config
        .users
        .first()
        .ok_or_else(|| anyhow!("the service sent a kubeconfig without a user"))?
        .user;
    let decode = |what: &str, b64: Option<&str>| -> anyhow::Result<String> {
        let b64 = b64.ok_or_else(|| anyhow!("the service sent a kubeconfig without {what}"))?;
        String::from_utf8(BASE64.decode(b64.trim())?).map_err(|_| anyhow!("{what} is not PEM text"))
    };
    Ok(ExecCredential {
        api_version: api_version.into(),
        kind: "ExecCredential".into(),
        status: ExecCredentialStatus {
            client_certificate_data: decode(
                "client-certificate-data",
                user.client_certificate_data.as_deref(),
            )?,
            client_key_data: decode("client-key-data", user.client_key_data.as_deref())?,
            expiration_timestamp: issued.expires_at,
        },
    })
}

/// The version kubectl asks for in `KUBERNETES_EXEC_INFO` (the default,
/// v1beta1, when it says nothing).
fn requested_exec_version() -> anyhow::Result<&'static str> {
    let Some(info) = std::env::var_os("KUBERNETES_EXEC_INFO") else {
        return Ok(EXEC_API_VERSION);
    };
    let info: serde_json::Value = serde_json::from_str(&info.to_string_lossy())
        .context("KUBERNETES_EXEC_INFO is not JSON")?;
    match info.get("apiVersion").and_then(|v| v.as_str()) {
        None => Ok(EXEC_API_VERSION),
        Some(v) => EXEC_API_VERSIONS
            .into_iter()
            .find(|known| *known == v)
            .ok_or_else(|| {
                anyhow!(
                    "kubectl asks for an ExecCredential of {v}; this plugin answers {}",
                    EXEC_API_VERSIONS.join(" or ")
                )
            }),
    }
}

/// The cache's directory: `$XDG_CACHE_HOME/kubeforge/credentials`, else
/// `~/.cache/kubeforge/credentials`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .ok_or_else(|| anyhow!("neither XDG_CACHE_HOME nor HOME is set"))?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(base.join("kubeforge").join("credentials"))
}

/// The cache file's name: a digest of the API URL, the token's tenant
/// (read from the token's claims, unverified: it only keys the cache),
/// the cluster and the role.
fn cache_key(opts: &ClientOpts, cluster: &str, role: KubeconfigRole) -> anyhow::Result<String> {
    let token = opts.token.as_deref().map(str::trim).unwrap_or_default();
    key_of(&opts.url, token, cluster, role)
}

fn key_of(url: &str, token: &str, cluster: &str, role: KubeconfigRole) -> anyhow::Result<String> {
    let tenant = token
        .split('.')
        .nth(1)
        .and_then(|claims| URL_SAFE_NO_PAD.decode(claims).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|claims| {
            claims
                .get("tenant")
                .and_then(|t| t.as_str())
                .map(String::from)
        })
        .ok_or_else(|| anyhow!("the API token is not a Kubeforge token (no tenant claim)"))?;
    let url = url.trim_end_matches('/');
    let digest = Sha256::digest(format!("{url}\n{tenant}\n{cluster}\n{}", role.as_str()));
    Ok(format!("{}.json", hex::encode(digest)))
}

/// The cached credential, if it is still good at `good_until`.
fn load_cached(dir: &Path, key: &str, good_until: DateTime<Utc>) -> Option<ExecCredential> {
    let text = fs::read(dir.join(key)).ok()?;
    let c: ExecCredential = serde_json::from_slice(&text).ok()?;
    (c.status.expiration_timestamp > good_until).then_some(c)
}

fn store_cached(dir: &Path, key: &str, credential: &ExecCredential) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    write_atomically(&dir.join(key), &serde_json::to_vec(credential)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Kubeconfig {
        Kubeconfig::from_yaml(yaml).unwrap()
    }

    const EXISTING: &str = "apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {server: 'https://a:6443', certificate-authority: ca/a.crt}
- name: kubeforge_acme_web_admin
  cluster: {server: 'https://old:6443'}
users:
- name: a
  user: {token: secret-a}
contexts:
- name: a
  context: {cluster: a, user: a, namespace: team}
- name: b
  context: {cluster: a, user: a}
current-context: a
preferences: {colors: true}
x-unknown: kept
";

    const FRESH: &str = "apiVersion: v1
kind: Config
clusters:
- name: kubeforge_acme_web_admin
  cluster: {server: 'https://new:6443', certificate-authority-data: Q0E=}
users:
- name: kubeforge_acme_web_admin
  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}
contexts:
- name: kubeforge_acme_web_admin
  context: {cluster: kubeforge_acme_web_admin, user: kubeforge_acme_web_admin}
current-context: kubeforge_acme_web_admin
";

    #[test]
    fn merge_keeps_others_replaces_same_names_and_sets_current() {
        let merged = merge(config(EXISTING), config(FRESH), true);
        let names: Vec<&str> = merged.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "kubeforge_acme_web_admin"]);
        let server = |n: &str| {
            merged
                .clusters
                .iter()
                .find(|c| c.name == n)
                .and_then(|c| c.cluster.as_ref()?.server.clone())
        };
        assert_eq!(
            server("kubeforge_acme_web_admin").as_deref(),
            Some("https://new:6443")
        );
        assert_eq!(server("a").as_deref(), Some("https://a:6443"));
        let contexts: Vec<&str> = merged.contexts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(contexts, ["a", "b", "kubeforge_acme_web_admin"]);
        assert_eq!(merged.auth_infos.len(), 2);
        assert_eq!(
            merged.current_context.as_deref(),
            Some("kubeforge_acme_web_admin")
        );
        let yaml = kubeforge_cluster::kubeconfig::to_yaml(&merged).unwrap();
        assert!(yaml.contains("x-unknown: kept"), "{yaml}");
        assert!(yaml.contains("colors: true"), "{yaml}");
        assert!(yaml.contains("namespace: team"), "{yaml}");
        assert!(
            yaml.contains("certificate-authority: ca/a.crt"),
            "relative path as written: {yaml}"
        );
        assert!(yaml.contains("token: secret-a"), "{yaml}");
        // What was written reads back the same.
        let again = config(&yaml);
        assert_eq!(again.contexts.len(), 3);
        assert_eq!(again.current_context, merged.current_context);
    }

    #[test]
    fn no_set_current_keeps_the_current_context_and_empty_files_merge() {
        let merged = merge(config(EXISTING), config(FRESH), false);
        assert_eq!(merged.current_context.as_deref(), Some("a"));
        let merged = merge(Kubeconfig::default(), config(FRESH), true);
        assert_eq!(merged.api_version.as_deref(), Some("v1"));
        assert_eq!(merged.kind.as_deref(), Some("Config"));
        assert_eq!(merged.contexts.len(), 1);
    }

    #[test]
    fn a_file_is_created_0600_in_a_new_0700_dir_and_tightened_when_it_exists() {
        let tmp = std::env::temp_dir().join(format!("kf-kc-{}", rand::random::<u64>()));
        let path = tmp.join("nested/config");
        merge_into_file(&path, config(FRESH), true).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        merge_into_file(&path, config(FRESH), true).unwrap();
        assert_eq!(mode(&path), 0o600);
        // Through a symlink, the target is replaced and the link kept.
        let link = tmp.join("link");
        std::os::unix::fs::symlink("nested/config", &link).unwrap();
        assert_eq!(merge_into_file(&link, config(FRESH), true).unwrap(), path);
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        // Garbage is refused and left alone.
        fs::write(&path, "clusters: [unclosed").unwrap();
        let err = merge_into_file(&path, config(FRESH), true).unwrap_err();
        assert!(format!("{err:#}").contains("left unchanged"), "{err:#}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "clusters: [unclosed");
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn an_exec_user_names_the_plugin_and_no_token() {
        let plugin = ExecPlugin {
            exe: "/usr/local/bin/kubeforge".into(),
            url: "https://kf.example:8443".into(),
            cluster: "web".into(),
            role: KubeconfigRole::Viewer,
            ttl: Duration::from_secs(3600),
            token_file: Some("/home/u/.config/kubeforge/token".into()),
        };
        let user = plugin.auth_info();
        let exec = user.exec.as_ref().unwrap();
        assert_eq!(exec.api_version.as_deref(), Some(EXEC_API_VERSION));
        assert_eq!(exec.command.as_deref(), Some("/usr/local/bin/kubeforge"));
        assert_eq!(
            exec.args.as_ref().unwrap().join(" "),
            "credentials exec --url https://kf.example:8443 --cluster web --role viewer \
             --ttl 3600s --token-file /home/u/.config/kubeforge/token"
        );
        assert!(user.token.is_none() && user.client_key_data.is_none());
    }

    #[test]
    fn the_cache_key_depends_on_url_tenant_cluster_and_role() {
        let token = |tenant: &str| {
            let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"tenant":"{tenant}","sub":"x"}}"#));
            format!("eyJhbGciOiJFZERTQSJ9.{claims}.c2ln")
        };
        let key = |url: &str, tenant: &str, cluster: &str, role| {
            key_of(url, &token(tenant), cluster, role).unwrap()
        };
        let base = key("http://a", "acme", "web", KubeconfigRole::Admin);
        assert_eq!(base, key("http://a/", "acme", "web", KubeconfigRole::Admin));
        for other in [
            key("http://b", "acme", "web", KubeconfigRole::Admin),
            key("http://a", "beta", "web", KubeconfigRole::Admin),
            key("http://a", "acme", "api", KubeconfigRole::Admin),
            key("http://a", "acme", "web", KubeconfigRole::Viewer),
        ] {
            assert_ne!(base, other);
        }
        assert!(key_of("http://a", "not-a-jwt", "web", KubeconfigRole::Admin).is_err());
    }
}
