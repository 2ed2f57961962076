//! The `kubeforge` command: service commands and the API client.

use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use kubeforge::cli::admin::{self, HostsCmd, QuotasCmd};
use kubeforge::cli::autoscaler::{self, AutoscalerCmd};
use kubeforge::cli::client::{self, ClientOpts, ClustersCmd, KubeconfigArgs, NodePoolsCmd};
use kubeforge::cli::operations::{self, EventsCmd, MachinesCmd, OperationsCmd};
use kubeforge::context::Role;
use kubeforge::server::{self, ServeOptions};
use kubeforge::state::LabTenants;

#[derive(Parser)]
#[command(
    name = "kubeforge",
    version,
    about = "Self-hosted managed Kubernetes",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Examples and exit codes, under `kubeforge --help`.
const AFTER_HELP: &str = "\
Client commands read KUBEFORGE_URL and KUBEFORGE_TOKEN (or --url, --token) and
print -o table|json|yaml|name. create, update, scale and delete wait for
their operation when stdout is a terminal (--wait / --no-wait choose).

Examples:
  export KUBEFORGE_TOKEN=$(kubeforge token create --tenant acme --role admin)
  kubeforge clusters create web --node-pool default:2
  kubeforge nodepools scale web default 4
  kubeforge nodepools update web default --min 1 --max 6
  kubeforge events list web --follow
  kubeforge operations wait $(kubeforge clusters delete web --no-wait -o name | cut -d/ -f2)
  kubeforge kubeconfig web > web.kubeconfig

Exit codes:
  0  success
  1  any other error (the service unreachable, an unexpected answer)
  2  usage: bad flags or arguments
  3  authentication or permission (401, 403; no token)
  4  not found (404)
  5  refused: conflict or stale etag (409, 412)
  6  validation: the request was invalid (400, 422)
  7  the operation waited for failed
  8  the wait timed out (the operation goes on)";

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Cluster DNS settings shared by `up` and `serve`.
#[derive(clap::Args)]
struct DnsArgs {
    /// The IPv4:PORT nodes reach the DNS server at (default: --dns-listen).
    #[arg(long)]
    dns_advertise: Option<std::net::SocketAddrV4>,
    /// A resolver other names are forwarded to (repeatable; default: the
    /// host's /etc/resolv.conf).
    #[arg(long)]
    dns_upstream: Vec<SocketAddr>,
}

/// How the API listener is secured, shared by `up` and `serve`.
#[derive(clap::Args)]
struct TlsArgs {
    /// Serve the API over TLS with this PEM certificate chain (leaf first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plaintext HTTP on an address other than loopback (behind a
    /// TLS-terminating proxy); refused otherwise.
    #[arg(long, conflicts_with = "tls_cert")]
    insecure_plaintext: bool,
}

impl TlsArgs {
    fn files(&self) -> Option<server::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(server::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// The `aws` provider, shared by `up` and `serve`.
#[derive(clap::Args)]
struct AwsArgs {
    /// Run the `aws` provider (EC2). Off unless given, so a machine
    /// without AWS credentials stays quiet. Credentials, and the endpoint
    /// when it is not AWS's own, come the standard SDK way
    /// (AWS_ACCESS_KEY_ID, AWS_PROFILE, an instance role; AWS_ENDPOINT_URL,
    /// AWS_ENDPOINT_URL_EC2).
    #[arg(long)]
    aws: bool,
    /// A network the service reaches instances from (SSH, the API server
    /// port); repeatable. Default: the cluster VPC's CIDR.
    #[arg(long = "aws-service-cidr", value_name = "CIDR", requires = "aws")]
    aws_service_cidrs: Vec<ipnet::IpNet>,
    /// A network allowed to reach clusters' API servers (6443) besides the
    /// service's; repeatable.
    #[arg(long = "aws-api-cidr", value_name = "CIDR", requires = "aws")]
    aws_api_cidrs: Vec<ipnet::IpNet>,
}

impl AwsArgs {
    fn config(&self) -> Option<kubeforge::providers::aws::AwsConfig> {
        self.aws.then(|| kubeforge::providers::aws::AwsConfig {
            service_cidrs: self.aws_service_cidrs.clone(),
            api_cidrs: self.aws_api_cidrs.clone(),
            ..Default::default()
        })
    }
}

/// Where the Kubernetes binaries come from, shared by `up` and `serve`.
#[derive(clap::Args)]
struct ArtifactArgs {
    /// A directory or an https base URL in the upstream release layout
    /// (v<version>/bin/linux/amd64/<component>); default: the cache
    /// scripts/build-kube fills.
    #[arg(long = "artifacts", env = "KUBEFORGE_ARTIFACTS")]
    source: Option<String>,
    /// The pinned sha256 of each binary, in the sha256sum format
    /// (`<sha256>  v1.20.2/bin/linux/amd64/kubelet`); required for a URL.
    #[arg(long, env = "KUBEFORGE_ARTIFACT_DIGESTS")]
    artifact_digests: Option<PathBuf>,
    /// Allow a plain http:// artifact URL beyond loopback (the pins still
    /// check every binary).
    #[arg(long, env = "KUBEFORGE_INSECURE_ARTIFACTS_HTTP")]
    insecure_artifacts_http: bool,
    /// Largest binary downloaded (default 512MiB).
    #[arg(long, env = "KUBEFORGE_ARTIFACT_MAX_BYTES")]
    artifact_max_bytes: Option<String>,
    /// Longest one download may take (default 10m).
    #[arg(long, env = "KUBEFORGE_ARTIFACT_TIMEOUT")]
    artifact_timeout: Option<String>,
    /// The sha256 of /usr/bin/etcd (Debian's etcd-server) in the image of
    /// registered hosts and cloud instances; default: the lab image's. With
    /// it, a host without the lab image serves --aws and registered hosts.
    #[arg(long, env = "KUBEFORGE_ETCD_SHA256")]
    etcd_sha256: Option<String>,
}

impl ArtifactArgs {
    fn settings(self) -> anyhow::Result<kubeforge::artifacts::ArtifactSettings> {
        server::artifact_settings(&server::ArtifactFlags {
            source: self.source,
            digests: self.artifact_digests,
            insecure_http: self.insecure_artifacts_http,
            max_bytes: self.artifact_max_bytes,
            timeout: self.artifact_timeout,
            etcd_sha256: self.etcd_sha256,
        })
    }
}

/// `up --dns-listen`: `lab` (None here: the address is the gateway of the
/// lab network `up` claims), `off` or an address.
fn up_dns_listen(value: &str) -> anyhow::Result<Option<SocketAddr>> {
    match value {
        "off" | "lab" => Ok(None),
        other => Ok(Some(other.parse().map_err(|_| {
            anyhow::anyhow!("--dns-listen {other:?} is not lab, off or IP:PORT")
        })?)),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run Kubeforge with its embedded PostgreSQL (a laptop or test box).
    Up {
        #[arg(long, env = "KUBEFORGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Serve the cluster-autoscaler externalgrpc provider (mTLS) here.
        #[arg(long, default_value = "127.0.0.1:8081")]
        grpc_listen: SocketAddr,
        /// The host:port clients dial for it (default: --grpc-listen).
        #[arg(long)]
        grpc_advertise: Option<String>,
        /// Serve cluster DNS here (UDP and TCP): `lab` for port 53 on the
        /// lab bridge's gateway, an IP:PORT, or `off`.
        #[arg(long, default_value = "lab")]
        dns_listen: String,
        #[command(flatten)]
        dns: DnsArgs,
        #[command(flatten)]
        tls: TlsArgs,
        /// Tenants the lab provider serves: `all` (the default here, for a
        /// local box), or a comma-separated list of tenant ids.
        #[arg(long, env = "KUBEFORGE_LAB_TENANTS", default_value = "all", value_parser = LabTenants::parse)]
        lab_tenants: LabTenants,
        #[command(flatten)]
        artifacts: ArtifactArgs,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Run Kubeforge against a PostgreSQL server, or the embedded one.
    Serve {
        #[arg(long, env = "KUBEFORGE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        #[arg(long, env = "KUBEFORGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Serve the cluster-autoscaler externalgrpc provider (mTLS) here;
        /// off unless given.
        #[arg(long)]
        grpc_listen: Option<SocketAddr>,
        /// The host:port clients dial for it (default: --grpc-listen).
        #[arg(long)]
        grpc_advertise: Option<String>,
        /// Serve cluster DNS here (UDP and TCP); off unless given.
        #[arg(long)]
        dns_listen: Option<SocketAddr>,
        #[command(flatten)]
        dns: DnsArgs,
        #[command(flatten)]
        tls: TlsArgs,
        /// Tenants the lab provider serves, a comma-separated list of
        /// tenant ids or `all`; none unless given: lab machines share this
        /// host's kernel, so the lab is for tenants trusted with the host.
        #[arg(long, env = "KUBEFORGE_LAB_TENANTS", default_value = "", value_parser = LabTenants::parse)]
        lab_tenants: LabTenants,
        #[command(flatten)]
        artifacts: ArtifactArgs,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, env = "KUBEFORGE_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// A cluster's kubeconfigs: revoke them all; kubectl's credential plugin.
    Credentials {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: CredentialsCmd,
    },
    /// Clusters.
    Clusters {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: ClustersCmd,
    },
    /// Node pools.
    Nodepools {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: NodePoolsCmd,
    },
    /// Operations: what a create, update or delete is doing; wait for one.
    Operations {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: OperationsCmd,
    },
    /// A cluster's events; --follow prints new ones as they happen.
    Events {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: EventsCmd,
    },
    /// A cluster's machines.
    Machines {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: MachinesCmd,
    },
    /// Hosts for the ssh provider (platform admin).
    Hosts {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: HostsCmd,
    },
    /// Tenant quotas (set: platform admin).
    Quotas {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: QuotasCmd,
    },
    /// Development: the private PostgreSQL the test suite uses.
    #[command(hide = true)]
    Devdb {
        #[command(subcommand)]
        command: DevDbCmd,
    },
    /// Write a short-lived kubeconfig for a cluster to stdout.
    Kubeconfig {
        #[command(flatten)]
        client: ClientOpts,
        #[command(flatten)]
        args: KubeconfigArgs,
    },
    /// What a cluster's autoscaler saw and decided; credentials for an
    /// external cluster-autoscaler.
    Autoscaler {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: AutoscalerCmd,
    },
    /// List the machine types: CPU, memory and pods, and what a node of
    /// each offers to pods.
    MachineTypes {
        /// Only the types this provider kind offers (lab, ssh or aws).
        #[arg(long)]
        provider: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// About the `aws` provider (needs no AWS access).
    Aws {
        #[command(subcommand)]
        command: AwsCmd,
    },
}

#[derive(Subcommand)]
enum AwsCmd {
    /// Print the IAM actions the service's role needs for the `aws`
    /// provider, one per line (what terraform/modules/kubeforge grants).
    RequiredActions,
}

#[derive(Subcommand)]
enum DevDbCmd {
    /// Start (or attach to) the server in DIR; print the URL of a migrated
    /// database (it holds the server's password: for scripts, not logs).
    Start {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "kubeforge")]
        database: String,
    },
    /// Stop the server in DIR.
    Stop {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Mint a bearer token signed with the data dir's key (the one `up`
    /// made on its first start). Never makes a key: without one it fails
    /// naming the data dir it looked in.
    Create {
        #[arg(long)]
        tenant: String,
        /// viewer, editor, admin or platform-admin.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// The token's subject (who it is for).
        #[arg(long, default_value = "cli")]
        subject: String,
        #[arg(long, env = "KUBEFORGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Revoke a token through the API: give the token itself (a tenant
    /// admin, for its own tenant's tokens) or its jti (platform-admin).
    Revoke {
        #[command(flatten)]
        client: ClientOpts,
        /// The token, or its jti.
        token_or_jti: String,
    },
}

#[derive(Subcommand)]
enum CredentialsCmd {
    /// Revoke every kubeconfig issued for a cluster so far (tenant admin):
    /// new ones carry the next credential generation.
    Revoke {
        /// Cluster name or id.
        cluster: String,
    },
    /// Print an ExecCredential for kubectl (a credential plugin; see
    /// `clusters get-credentials --exec`).
    Exec(kubeforge::cli::kubeconfig::ExecArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBEFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    // Colour only for a person at a terminal: a log file or a collector
    // gets plain text (and NO_COLOR is honoured).
    use std::io::IsTerminal as _;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up {
            data_dir,
            listen,
            workers,
            grpc_listen,
            grpc_advertise,
            dns_listen,
            dns,
            tls,
            lab_tenants,
            artifacts,
            aws,
        } => {
            init_logging(cli.log_format);
            let opts = ServeOptions {
                database_url: None,
                data_dir: data_dir.unwrap_or_else(server::default_data_dir),
                listen,
                workers,
                grpc_listen: Some(grpc_listen),
                grpc_advertise,
                dns_listen: up_dns_listen(&dns_listen)?,
                dns_on_lab_gateway: dns_listen == "lab",
                claim_lab_network: true,
                dns_advertise: dns.dns_advertise,
                dns_upstream: dns.dns_upstream,
                tls: tls.files(),
                insecure_plaintext: tls.insecure_plaintext,
                lab_tenants,
                artifacts: artifacts.settings()?,
                aws: aws.config(),
            };
            server::serve(opts, true).await
        }
        Command::Serve {
            database_url,
            data_dir,
            listen,
            workers,
            grpc_listen,
            grpc_advertise,
            dns_listen,
            dns,
            tls,
            lab_tenants,
            artifacts,
            aws,
        } => {
            init_logging(cli.log_format);
            let opts = ServeOptions {
                database_url,
                data_dir: data_dir.unwrap_or_else(server::default_data_dir),
                listen,
                workers,
                grpc_listen,
                grpc_advertise,
                dns_listen,
                dns_on_lab_gateway: false,
                claim_lab_network: false,
                dns_advertise: dns.dns_advertise,
                dns_upstream: dns.dns_upstream,
                tls: tls.files(),
                insecure_plaintext: tls.insecure_plaintext,
                lab_tenants,
                artifacts: artifacts.settings()?,
                aws: aws.config(),
            };
            server::serve(opts, false).await
        }
        Command::Migrate { database_url } => {
            init_logging(cli.log_format);
            let pool = kubeforge::store::connect(&database_url, 2).await?;
            kubeforge::store::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token {
            command:
                TokenCmd::Create {
                    tenant,
                    role,
                    ttl,
                    subject,
                    data_dir,
                },
        } => {
            let role = Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!("--role must be viewer, editor, admin or platform-admin")
            })?;
            let ttl = client::parse_ttl(&ttl).map_err(anyhow::Error::msg)?;
            let dir = data_dir.unwrap_or_else(server::default_data_dir);
            let keys = server::load_existing_auth(&dir)?;
            let token = keys.mint(&tenant, &subject, role, ttl, chrono::Utc::now().timestamp())?;
            println!("{token}");
            Ok(())
        }
        Command::Token {
            command:
                TokenCmd::Revoke {
                    client,
                    token_or_jti,
                },
        } => kubeforge::cli::credentials::run_token_revoke(&client, &token_or_jti).await,
        Command::Credentials {
            client,
            command: CredentialsCmd::Revoke { cluster },
        } => kubeforge::cli::credentials::run_credentials_revoke(&client, &cluster).await,
        Command::Credentials {
            client,
            command: CredentialsCmd::Exec(args),
        } => kubeforge::cli::kubeconfig::run_credentials_exec(&client, args).await,
        Command::Devdb {
            command: DevDbCmd::Start { data_dir, database },
        } => {
            anyhow::ensure!(
                !database.is_empty()
                    && database
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "--database must be lowercase letters, digits and '_'"
            );
            let pg = kubeforge::embedded_pg::EmbeddedPostgres::attach_or_start(&data_dir).await?;
            let admin = kubeforge::store::connect(&pg.url("postgres"), 1).await?;
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&database)
                    .fetch_one(&admin)
                    .await?;
            if !exists {
                sqlx::query(&format!("CREATE DATABASE {database}"))
                    .execute(&admin)
                    .await?;
            }
            admin.close().await;
            let pool = kubeforge::store::connect(&pg.url(&database), 2).await?;
            kubeforge::store::migrate(&pool).await?;
            pool.close().await;
            println!("{}", pg.url(&database));
            Ok(())
        }
        Command::Devdb {
            command: DevDbCmd::Stop { data_dir },
        } => {
            if data_dir.join("pgdata/postmaster.pid").exists() {
                kubeforge::embedded_pg::EmbeddedPostgres::attach_or_start(&data_dir)
                    .await?
                    .stop()
                    .await?;
            }
            Ok(())
        }
        Command::Clusters { client, command } => client::run_clusters(&client, command).await,
        Command::Nodepools { client, command } => client::run_nodepools(&client, command).await,
        Command::Operations { client, command } => {
            operations::run_operations(&client, command).await
        }
        Command::Events { client, command } => operations::run_events(&client, command).await,
        Command::Machines { client, command } => operations::run_machines(&client, command).await,
        Command::Hosts { client, command } => admin::run_hosts(&client, command).await,
        Command::Quotas { client, command } => admin::run_quotas(&client, command).await,
        Command::Kubeconfig { client, args } => client::run_kubeconfig(&client, args).await,
        Command::Autoscaler { client, command } => {
            autoscaler::run_autoscaler(&client, command).await
        }
        Command::MachineTypes { provider, client } => {
            autoscaler::run_machine_types(&client, provider.as_deref()).await
        }
        Command::Aws {
            command: AwsCmd::RequiredActions,
        } => {
            for action in kubeforge::providers::aws::actions::REQUIRED_ACTIONS {
                println!("{action}");
            }
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}");
            if msg.starts_with("error:") {
                eprintln!("{msg}");
            } else {
                eprintln!("error: {msg}");
            }
            ExitCode::from(client::exit_code(&e))
        }
    }
}
