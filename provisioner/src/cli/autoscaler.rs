//! The `kubeforge autoscaler status CLUSTER`, `kubeforge autoscaler
//! credentials CLUSTER` and `kubeforge machine-types` client commands:
//! what a cluster's autoscaler saw and decided, credentials for an
//! external cluster-autoscaler, and what each machine type offers to
//! pods. The same guarantees as the other client commands
//! ([`super::client`]): checked path segments, problem documents as
//! errors, server text stripped of control characters, and nothing
//! printed unless the whole command succeeded.
//!
//! `credentials --out-dir DIR` writes each file to a temporary file of its
//! own created with mode 0600 (never readable by others, not even for a
//! moment) and renamed over its final name, so a file that was there
//! before, whatever its mode, is replaced rather than rewritten in place.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use kubeforge_cluster::api::{
    AutoscalerCredentialsRequest, AutoscalerCredentialsView, AutoscalerStatusView, Items,
    MachineTypeView, PendingPodView,
};
use kubeforge_cluster::externalgrpc::{
    CloudConfig, CA_FILE, CERT_FILE, CLOUD_CONFIG_FILE, KEY_FILE,
};
use reqwest::header::HeaderMap;
use reqwest::Method;

use super::client::{
    emit, opt_text, parse_ttl, text, time, write_json, write_stdout, Api, ClientOpts, Output,
    Table, NO_BODY,
};

/// `kubeforge autoscaler ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AutoscalerCmd {
    /// Show a cluster's autoscaling pools with their recent decisions, and
    /// the pending pods with where they go or why no pool takes them.
    Status {
        /// Cluster name or id.
        cluster: String,
    },
    /// Issue a client certificate for an external cluster-autoscaler
    /// (`--cloud-provider=externalgrpc`) acting on this cluster: prints
    /// the bundle as JSON, or writes ca.crt, tls.crt, tls.key and
    /// cloud-config.yaml into --out-dir. The key cannot be fetched again.
    Credentials {
        /// Cluster name or id.
        cluster: String,
        /// Write the files here (created if missing) instead of printing JSON.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Lifetime of the certificate, e.g. 30d, 12h (1h to 365d; the
        /// service's default is 90d).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
}

/// Runs an `autoscaler` subcommand and prints its result on stdout.
pub async fn run_autoscaler(opts: &ClientOpts, cmd: AutoscalerCmd) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    run_autoscaler_to(opts, cmd, &mut buf).await?;
    write_stdout(&buf)
}

/// [`run_autoscaler`], writing to `out`.
pub async fn run_autoscaler_to(
    opts: &ClientOpts,
    cmd: AutoscalerCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let api = Api::new(opts)?;
    match cmd {
        AutoscalerCmd::Status { cluster } => {
            let url = api.url(&["clusters", &cluster, "autoscaler"])?;
            let status: AutoscalerStatusView = api
                .call(Method::GET, url, HeaderMap::new(), NO_BODY)
                .await?;
            print_autoscaler_status(out, opts.output, &status)?;
        }
        AutoscalerCmd::Credentials {
            cluster,
            out_dir,
            ttl,
        } => {
            let url = api.url(&["clusters", &cluster, "autoscaler", "credentials"])?;
            let body = ttl.map(|t| AutoscalerCredentialsRequest {
                ttl_seconds: t.as_secs(),
            });
            let creds: AutoscalerCredentialsView = api
                .call(Method::POST, url, HeaderMap::new(), body.as_ref())
                .await?;
            match out_dir {
                // The bundle is a document: JSON, or YAML if asked for.
                None if opts.output == Output::Yaml => super::output::write_yaml(out, &creds)?,
                None => write_json(out, &creds)?,
                Some(dir) => {
                    for path in write_credentials(&dir, &creds)? {
                        writeln!(out, "wrote {}", path.display())?;
                    }
                    writeln!(
                        out,
                        "certificate serial {}, expires {}; run cluster-autoscaler with \
                         --cloud-provider=externalgrpc --cloud-config={}",
                        text(&creds.serial),
                        time(&creds.expires_at),
                        dir.join(CLOUD_CONFIG_FILE).display()
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// Writes the bundle into `dir` (created, mode 0700, if missing): `ca.crt`,
/// `tls.crt`, `tls.key` and `cloud-config.yaml`, whose paths are those
/// files (`dir` made absolute). Every file has mode 0600 from the moment
/// it exists. Returns the paths written, in that order.
pub fn write_credentials(
    dir: &Path,
    creds: &AutoscalerCredentialsView,
) -> anyhow::Result<Vec<PathBuf>> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let abs = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let abs_text = abs.to_str().with_context(|| {
        format!(
            "{} is not UTF-8, which cloud-config.yaml needs",
            abs.display()
        )
    })?;
    let cloud_config = CloudConfig::in_dir(&creds.address, abs_text).render();
    let files: [(&str, &str); 4] = [
        (CA_FILE, &creds.ca_pem),
        (CERT_FILE, &creds.cert_pem),
        (KEY_FILE, &creds.key_pem),
        (CLOUD_CONFIG_FILE, &cloud_config),
    ];
    let mut written = Vec::new();
    for (name, contents) in files {
        let path = dir.join(name);
        write_private(&path, contents.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `path` through a fresh temporary file beside it, created with
/// mode 0600 (`O_EXCL`: never someone else's file), synced, then renamed
/// over `path`.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Lists the machine types (`kubeforge machine-types`) on stdout: all, or
/// those provider kind `provider` offers.
pub async fn run_machine_types(opts: &ClientOpts, provider: Option<&str>) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    run_machine_types_to(opts, provider, &mut buf).await?;
    write_stdout(&buf)
}

/// [`run_machine_types`], writing to `out`.
pub async fn run_machine_types_to(
    opts: &ClientOpts,
    provider: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let api = Api::new(opts)?;
    let mut url = api.url(&["machine-types"])?;
    if let Some(kind) = provider {
        url.query_pairs_mut().append_pair("provider", kind);
    }
    let list: Items<MachineTypeView> = api
        .call(Method::GET, url, HeaderMap::new(), NO_BODY)
        .await?;
    print_machine_types(out, opts.output, &list)?;
    Ok(())
}

/// Prints a `GET /v1/machine-types` answer: capacity, then what a node
/// offers to pods, then where the type is offered.
pub fn print_machine_types(
    out: &mut impl Write,
    format: Output,
    list: &Items<MachineTypeView>,
) -> std::io::Result<()> {
    if emit(out, format, list)? {
        return Ok(());
    }
    let mut t = Table::new(&[
        "NAME",
        "CPU",
        "MEMORY MIB",
        "GPUS",
        "PODS",
        "ALLOCATABLE CPU",
        "ALLOCATABLE MEMORY MIB",
        "ALLOCATABLE PODS",
        "PROVIDERS",
        "EC2 INSTANCE TYPE",
    ]);
    for m in &list.items {
        let gpus = match &m.gpu_model {
            Some(model) if m.gpus > 0 => format!("{} {}", m.gpus, text(model)),
            _ => m.gpus.to_string(),
        };
        t.row(vec![
            text(&m.name),
            m.cpu.to_string(),
            m.memory_mib.to_string(),
            gpus,
            m.pods.to_string(),
            format!("{}m", m.allocatable.cpu_millis),
            m.allocatable.memory_mib.to_string(),
            m.allocatable.pods.to_string(),
            m.providers
                .iter()
                .map(|p| text(p))
                .collect::<Vec<_>>()
                .join(","),
            m.ec2_instance_type.as_deref().map_or("-".into(), text),
        ]);
    }
    t.write(out)
}

/// `pool gpu: insufficient nvidia.com/gpu; pool default: node selector mismatch`
fn reasons(p: &PendingPodView) -> String {
    let all: Vec<String> = p
        .reasons
        .iter()
        .map(|r| format!("pool {}: {}", r.pool, r.reason))
        .collect();
    if all.is_empty() {
        "-".into()
    } else {
        all.join("; ")
    }
}

/// Prints a `GET /v1/clusters/{c}/autoscaler` answer: the mode and when
/// the autoscaler last looked, the autoscaling pools, their recent
/// decisions (pool by pool, newest first), then the pending pods: the outcome, the pool
/// (scale-up) or node (existing room) they go to, and each pool's reason
/// for not taking them.
pub fn print_autoscaler_status(
    out: &mut impl Write,
    format: Output,
    s: &AutoscalerStatusView,
) -> std::io::Result<()> {
    if emit(out, format, s)? {
        return Ok(());
    }
    let mut t = Table::new(&["MODE", "OBSERVED", "PENDING PODS"]);
    t.row(vec![
        text(&s.mode),
        s.observed_at.as_ref().map_or_else(|| "never".into(), time),
        s.pending_pods.to_string(),
    ]);
    t.write(out)?;
    writeln!(out)?;
    let mut t = Table::new(&["POOL", "MIN", "MAX", "SIZE", "READY", "HOLD"]);
    for p in &s.pools {
        t.row(vec![
            text(&p.name),
            p.min.to_string(),
            p.max.to_string(),
            p.size.to_string(),
            p.ready.to_string(),
            opt_text(p.hold.as_deref()),
        ]);
    }
    t.write(out)?;
    if s.pools.iter().any(|p| !p.recent_decisions.is_empty()) {
        writeln!(out)?;
        let mut t = Table::new(&[
            "POOL",
            "DECIDED AT",
            "KIND",
            "FROM",
            "TO",
            "PODS",
            "NODE",
            "REASON",
        ]);
        for p in &s.pools {
            for d in &p.recent_decisions {
                t.row(vec![
                    text(&p.name),
                    time(&d.at),
                    text(&d.kind),
                    d.from.to_string(),
                    d.to.to_string(),
                    d.pods.to_string(),
                    opt_text(d.node.as_deref()),
                    text(&d.reason),
                ]);
            }
        }
        t.write(out)?;
    }
    writeln!(out)?;
    if s.pending.is_empty() {
        writeln!(out, "no pending pods listed")?;
        return Ok(());
    }
    let mut t = Table::new(&["PENDING POD", "OUTCOME", "TO", "REASONS"]);
    for p in &s.pending {
        t.row(vec![
            format!("{}/{}", p.namespace, p.name),
            text(&p.outcome),
            opt_text(p.pool.as_deref().or(p.node.as_deref())),
            reasons(p),
        ]);
    }
    t.write(out)?;
    if s.pending_pods > s.pending.len() as u64 {
        writeln!(
            out,
            "\n{} of {} pending pods listed",
            s.pending.len(),
            s.pending_pods
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use kubeforge_cluster::api::{AutoscalerDecisionView, AutoscalerPoolView, PoolReasonView};
    use kubeforge_cluster::MachineType;
    use uuid::Uuid;

    fn at(t: &str) -> DateTime<Utc> {
        t.parse().unwrap()
    }

    fn printed(format: Output, s: &AutoscalerStatusView) -> String {
        let mut out = Vec::new();
        print_autoscaler_status(&mut out, format, s).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn status() -> AutoscalerStatusView {
        AutoscalerStatusView {
            cluster: Uuid::from_u128(1),
            mode: "builtin".into(),
            observed_at: Some(at("2026-12-02T10:00:05Z")),
            pending_pods: 3,
            pools: vec![
                AutoscalerPoolView {
                    name: "default".into(),
                    min: 1,
                    max: 5,
                    size: 3,
                    ready: 2,
                    hold: None,
                    recent_decisions: vec![AutoscalerDecisionView {
                        at: at("2026-12-02T10:00:01Z"),
                        kind: "scale_up".into(),
                        from: 2,
                        to: 3,
                        node: None,
                        pods: 4,
                        reason: "4 pods fit on 1 new small node".into(),
                        operation: Some(Uuid::from_u128(7)),
                    }],
                },
                AutoscalerPoolView {
                    name: "gpu".into(),
                    min: 0,
                    max: 2,
                    size: 0,
                    ready: 0,
                    hold: Some("backed off\u{1b}[2J after machines failed".into()),
                    recent_decisions: vec![],
                },
            ],
            pending: vec![
                PendingPodView {
                    namespace: "default".into(),
                    name: "web-7".into(),
                    outcome: "no_pool".into(),
                    pool: None,
                    node: None,
                    reasons: vec![
                        PoolReasonView {
                            pool: "gpu".into(),
                            reason: "insufficient nvidia.com/gpu".into(),
                        },
                        PoolReasonView {
                            pool: "default".into(),
                            reason: "node selector mismatch".into(),
                        },
                    ],
                },
                PendingPodView {
                    namespace: "default".into(),
                    name: "web-8".into(),
                    outcome: "scale_up".into(),
                    pool: Some("default".into()),
                    node: None,
                    reasons: vec![],
                },
            ],
        }
    }

    #[test]
    fn status_prints_pools_decisions_and_pending_pods() {
        assert_eq!(
            printed(Output::Table, &status()),
            "MODE     OBSERVED              PENDING PODS\n\
             builtin  2026-12-02T10:00:05Z  3\n\
             \n\
             POOL     MIN  MAX  SIZE  READY  HOLD\n\
             default  1    5    3     2      -\n\
             gpu      0    2    0     0      backed off [2J after machines failed\n\
             \n\
             POOL     DECIDED AT            KIND      FROM  TO  PODS  NODE  REASON\n\
             default  2026-12-02T10:00:01Z  scale_up  2     3   4     -     4 pods fit on 1 new small node\n\
             \n\
             PENDING POD    OUTCOME   TO       REASONS\n\
             default/web-7  no_pool   -        pool gpu: insufficient nvidia.com/gpu; pool default: node selector mismatch\n\
             default/web-8  scale_up  default  -\n\
             \n\
             2 of 3 pending pods listed\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&printed(Output::Json, &status())).unwrap();
        assert_eq!(json, serde_json::to_value(status()).unwrap());
    }

    #[test]
    fn status_before_the_autoscaler_looked() {
        let s = AutoscalerStatusView {
            observed_at: None,
            pending_pods: 0,
            pending: vec![],
            ..status()
        };
        let text = printed(Output::Table, &s);
        assert!(
            text.starts_with("MODE     OBSERVED  PENDING PODS\nbuiltin  never     0\n"),
            "{text}"
        );
        assert!(text.ends_with("\nno pending pods listed\n"), "{text}");
    }

    #[test]
    fn machine_types_table() {
        let list = Items {
            items: MachineType::all()
                .filter(|t| ["small", "large", "g4dn.xlarge"].contains(&t.as_str()))
                .map(MachineTypeView::from)
                .collect(),
        };
        let mut out = Vec::new();
        print_machine_types(&mut out, Output::Table, &list).unwrap();
        insta::assert_snapshot!(String::from_utf8(out).unwrap());
    }

    fn creds() -> AutoscalerCredentialsView {
        AutoscalerCredentialsView {
            address: "grpc.example.com:8443".into(),
            ca_pem: "CA PEM\n".into(),
            cert_pem: "CERT PEM\n".into(),
            key_pem: "KEY PEM\n".into(),
            cloud_config: "ignored: the CLI writes its own\n".into(),
            serial: "4a".into(),
            expires_at: at("2027-03-03T10:00:00Z"),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kf-{name}-{}", Uuid::new_v4().simple()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn credentials_are_written_private_with_a_cloud_config_pointing_at_them() {
        let base = scratch("creds");
        let dir = base.join("new/sub");
        let written = write_credentials(&dir, &creds()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ca.crt", "tls.crt", "tls.key", "cloud-config.yaml"]);
        assert_eq!(mode(&dir), 0o700, "a directory it made is private");
        for p in &written {
            assert_eq!(mode(p), 0o600, "{}", p.display());
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("tls.key")).unwrap(),
            "KEY PEM\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
            "CA PEM\n"
        );
        let abs = std::fs::canonicalize(&dir).unwrap();
        let abs = abs.to_str().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("cloud-config.yaml")).unwrap(),
            format!(
                "# cluster-autoscaler --cloud-provider=externalgrpc --cloud-config=<this file>\n\
                 address: \"grpc.example.com:8443\"\n\
                 key: \"{abs}/tls.key\"\n\
                 cert: \"{abs}/tls.crt\"\n\
                 cacert: \"{abs}/ca.crt\"\n"
            )
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_world_readable_key_file_already_there_is_replaced_not_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("creds-old");
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("tls.key");
        std::fs::write(&key, "old key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_credentials(&dir, &creds()).unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "KEY PEM\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
