//! The `kubeforge clusters | nodepools | kubeconfig` client commands, and
//! what every client command shares: the connection options, the HTTP
//! client, errors and exit codes.
//!
//! These subcommands let people and scripts use the Kubeforge HTTP API
//! (`/v1`, see `API.md`) without hand-written `curl` calls. This module
//! holds the clap argument types and turns them into requests. Requests
//! and answers are the API's own types ([`kubeforge_cluster::api`]), the
//! ones the service serializes, so client and service agree on the JSON. The
//! answers are rendered as aligned tables (`-o table`, the default), as
//! pretty-printed JSON or YAML (`-o json|yaml`: the answer serialized
//! again, keys sorted) or as `kind/name` lines (`-o name`); see
//! [`super::output`]. Create, update, scale and delete wait for their
//! operation when asked to, or by default at a terminal ([`super::wait`]).
//!
//! Guarantees:
//! - Every request carries `Authorization: Bearer <token>`; without a
//!   token no request is made and the error says how to supply one.
//! - User input never changes the shape of a URL: each path segment must
//!   match `[A-Za-z0-9._-]+` (and not be `.` or `..`) and is then added
//!   as one encoded segment; query values are form-encoded.
//! - A non-2xx answer becomes an error. An `application/problem+json`
//!   body is rendered on separate lines: `error: <title> (422
//!   validation_failed)`, `detail: ...`, `field: network.pod_cidr` and a
//!   `hint:` on what to do, whatever fields it lacks; anything else as
//!   the status, a short excerpt and a hint.
//! - Each kind of failure has its exit code ([`ClientError::exit_code`]):
//!   auth 3, not found 4, conflict 5, validation 6, operation failed 7,
//!   wait timed out 8, usage 2, anything else 1.
//! - Text that comes from the server is stripped of control characters
//!   before it reaches a terminal as a table cell or an error message.
//! - Output is produced only once the whole command has succeeded, so a
//!   failed `clusters list --all` prints nothing on stdout.
//! - `kubeconfig` writes the response body byte for byte, whatever `-o`
//!   says, so `kubeforge kubeconfig web > kubeconfig` just works.
//!
//! The `*_to` variants of the `run_*` functions write to any
//! [`std::io::Write`], which is what the tests use.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use kubeforge_cluster::api::{
    AutoscalerSettingsRequest, ClusterAccepted, ClusterView, ControlPlaneRequest,
    CreateClusterRequest, CreateNodePoolRequest, Items, KubeconfigRequest, NetworkRequest,
    NodePoolAccepted, NodePoolView, OperationAccepted, OperationView, Page, Problem,
    UpdateClusterRequest, UpdateNodePoolRequest,
};
use kubeforge_cluster::{AutoRepair, Autoscaling, ProviderSpec, Taint, TaintEffect};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::wait::{wait_for, WaitArgs};

pub use super::output::{emit, Output, Table};
pub(crate) use super::output::{opt_text, sanitize, text, time, write_json, write_stdout};

/// Connection options shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// Base URL of the Kubeforge API (without `/v1`).
    #[arg(
        long,
        global = true,
        env = "KUBEFORGE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Bearer token (a JWT from `kubeforge token create`).
    #[arg(long, global = true, env = "KUBEFORGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: Output,
}

/// `kubeforge clusters ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClustersCmd {
    /// Create a cluster (POST /v1/clusters).
    Create(Box<ClusterCreateArgs>),
    /// List clusters (GET /v1/clusters).
    List {
        /// Only clusters in this phase (provisioning, ready, degraded, deleting, failed).
        #[arg(long)]
        phase: Option<String>,
        /// Only clusters with this label, as key=value (repeatable; all must match).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Page size.
        #[arg(long)]
        limit: Option<u32>,
        /// Start from this page (a `next_page_token` of an earlier answer).
        #[arg(long)]
        page_token: Option<String>,
        /// Follow page tokens and list every cluster.
        #[arg(long)]
        all: bool,
    },
    /// Show one cluster, by name or id.
    Get {
        /// Cluster name or id.
        cluster: String,
    },
    /// Change a cluster's labels, autoscaler settings or deletion
    /// protection (PATCH /v1/clusters/{cluster}); settings not named stay
    /// as they are.
    #[command(after_help = CLUSTERS_UPDATE_EXAMPLES)]
    Update {
        /// Cluster name or id.
        cluster: String,
        /// Replace the cluster's labels with these, as key=value
        /// (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, conflicts_with = "clear_labels")]
        labels: Vec<(String, String)>,
        /// Remove every label.
        #[arg(long)]
        clear_labels: bool,
        /// An autoscaler setting as key=value (repeatable), e.g. mode=off,
        /// expander=priority, scale_down_unneeded_seconds=300.
        #[arg(long = "autoscaler", value_name = "KEY=VALUE", value_parser = parse_autoscaler_setting)]
        autoscaler: Vec<(String, Value)>,
        /// Turn deletion protection on or off.
        #[arg(long, value_name = "true|false")]
        deletion_protection: Option<bool>,
        /// Only update if the cluster's etag still matches (412 otherwise).
        #[arg(long)]
        if_match: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Merge a fresh kubeconfig for a cluster into ~/.kube/config (or
    /// $KUBECONFIG's first file) and make it the current context.
    GetCredentials(super::kubeconfig::GetCredentialsArgs),
    /// Delete a cluster (202: deletion runs as an operation).
    #[command(after_help = CLUSTERS_DELETE_EXAMPLES)]
    Delete {
        /// Cluster name or id.
        cluster: String,
        /// Only delete if the cluster's etag still matches (412 otherwise).
        #[arg(long)]
        if_match: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

const CLUSTERS_CREATE_EXAMPLES: &str = "\
Examples:
  kubeforge clusters create web --node-pool default:2
  kubeforge clusters create web --node-pool default:2 --node-pool gpu:1:large --label team=web
  kubeforge clusters create --file cluster.json --no-wait -o json
  kubeforge clusters create web --control-plane-replicas 3 --timeout 20m
  kubeforge clusters create web --provider aws --region eu-west-1 --subnet-id subnet-0abc \\
    --ami ami-0def --node-pool default:2:m5.large";

const CLUSTERS_UPDATE_EXAMPLES: &str = "\
Examples:
  kubeforge clusters update web --deletion-protection true
  kubeforge clusters update web --label team=web --label env=prod
  kubeforge clusters update web --autoscaler mode=off";

const CLUSTERS_DELETE_EXAMPLES: &str = "\
Examples:
  kubeforge clusters delete web
  kubeforge clusters delete web --no-wait -o name";

const NODEPOOLS_CREATE_EXAMPLES: &str = "\
Examples:
  kubeforge nodepools create web batch --size 3 --machine-type medium
  kubeforge nodepools create web burst --min 0 --max 5 --taint spot:NoSchedule
  kubeforge nodepools create web gpu --size 1 --label accel=gpu --no-wait";

const NODEPOOLS_UPDATE_EXAMPLES: &str = "\
Examples:
  kubeforge nodepools update web default --min 1 --max 6
  kubeforge nodepools update web default --no-autoscaling --size 2
  kubeforge nodepools update web default --drain-timeout 120 --repair-after 600";

const NODEPOOLS_SCALE_EXAMPLES: &str = "\
Examples:
  kubeforge nodepools scale web default 4
  kubeforge nodepools scale web default 0 --no-wait";

/// Flags of `kubeforge clusters create`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = CLUSTERS_CREATE_EXAMPLES)]
pub struct ClusterCreateArgs {
    /// Cluster name (a DNS-1123 label). Optional with --file.
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// Kubernetes version.
    #[arg(long, default_value = "1.20.2")]
    pub version: String,
    /// Provider kind: lab, ssh or aws (aws takes --region, --subnet-id
    /// and --ami, and optionally --role-arn and --key-name).
    #[arg(long, default_value = "lab")]
    pub provider: String,
    /// aws: the region the cluster's instances run in.
    #[arg(long)]
    pub region: Option<String>,
    /// aws: the subnet the instances are launched in (its VPC holds the
    /// cluster's security group).
    #[arg(long)]
    pub subnet_id: Option<String>,
    /// aws: the image (cloud-init, systemd, OpenSSH).
    #[arg(long)]
    pub ami: Option<String>,
    /// aws: a role to assume for every call about the cluster (with the
    /// tenant's id as the external id).
    #[arg(long)]
    pub role_arn: Option<String>,
    /// aws: an EC2 key pair added to the instances, for your own access.
    #[arg(long)]
    pub key_name: Option<String>,
    /// Control-plane replicas (1 or 3).
    #[arg(long, default_value_t = 1)]
    pub control_plane_replicas: u32,
    /// Machine type of the control plane, and of node pools that name none.
    #[arg(long, default_value = "small")]
    pub machine_type: String,
    /// Pod network CIDR.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pod_cidr: String,
    /// Service network CIDR.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// Cluster label as key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Refuse deletion until this is turned off.
    #[arg(long)]
    pub deletion_protection: bool,
    /// Worker pool as name:size[:machine_type] (repeatable).
    #[arg(long = "node-pool", value_name = "NAME:SIZE[:MACHINE_TYPE]", value_parser = parse_pool_spec)]
    pub node_pools: Vec<PoolSpec>,
    /// An autoscaler setting as key=value (repeatable; the others keep
    /// their defaults), e.g. mode=off, expander=most-pods, batch_max_seconds=30.
    #[arg(long = "autoscaler", value_name = "KEY=VALUE", value_parser = parse_autoscaler_setting)]
    pub autoscaler: Vec<(String, Value)>,
    /// Sent as the Idempotency-Key header: a retry with the same key replays the first answer.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Send this JSON file as the create body; the other spec flags are ignored.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// A `--node-pool name:size[:machine_type]` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub size: u32,
    pub machine_type: Option<String>,
}

/// `kubeforge nodepools ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodePoolsCmd {
    /// Add a node pool to a cluster.
    Create(NodePoolCreateArgs),
    /// Set a pool's desired size.
    #[command(after_help = NODEPOOLS_SCALE_EXAMPLES)]
    Scale {
        /// Cluster name or id.
        cluster: String,
        /// Pool name.
        pool: String,
        /// Desired node count.
        size: u32,
        /// Only scale if the pool's etag still matches (412 otherwise).
        #[arg(long)]
        if_match: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change a pool's size, autoscaling bounds, drain timeout or
    /// auto-repair (PATCH); what is not named stays as it is. Labels and
    /// taints are fixed at creation.
    Update(NodePoolUpdateArgs),
    /// Delete a node pool (202: runs as an operation).
    Delete {
        /// Cluster name or id.
        cluster: String,
        /// Pool name.
        pool: String,
        /// Only delete if the pool's etag still matches (412 otherwise).
        #[arg(long)]
        if_match: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List a cluster's node pools.
    List {
        /// Cluster name or id.
        cluster: String,
    },
    /// Show one node pool and its nodes.
    Get {
        /// Cluster name or id.
        cluster: String,
        /// Pool name.
        pool: String,
    },
}

/// Flags of `kubeforge nodepools update`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = NODEPOOLS_UPDATE_EXAMPLES)]
pub struct NodePoolUpdateArgs {
    /// Cluster name or id.
    pub cluster: String,
    /// Pool name.
    pub pool: String,
    /// Desired node count.
    #[arg(long)]
    pub size: Option<u32>,
    #[command(flatten)]
    pub autoscaling: AutoscalingArgs,
    /// Turn autoscaling off (the size stays where it is unless --size).
    #[arg(long, conflicts_with_all = ["min", "max"])]
    pub no_autoscaling: bool,
    /// Seconds to wait for a node's pods to be evicted before removing it
    /// anyway (0-3600).
    #[arg(long = "drain-timeout", value_name = "SECONDS")]
    pub drain_timeout: Option<u32>,
    #[command(flatten)]
    pub repair: RepairArgs,
    /// Replace the pool's host selector (ssh clusters) with these labels,
    /// as key=value (repeatable); new machines claim only matching hosts.
    #[arg(long = "host-selector", value_name = "KEY=VALUE", value_parser = parse_label,
          conflicts_with = "any_host")]
    pub host_selector: Vec<(String, String)>,
    /// Clear the pool's host selector: any free host will do.
    #[arg(long)]
    pub any_host: bool,
    /// Replace the pool's alternative machine types (aws clusters) with
    /// these, tried in order when the provider has no capacity for the
    /// pool's type (repeatable).
    #[arg(
        long = "alternative-machine-type",
        value_name = "TYPE",
        conflicts_with = "no_alternatives"
    )]
    pub alternative_machine_types: Vec<String>,
    /// Clear the pool's alternative machine types.
    #[arg(long)]
    pub no_alternatives: bool,
    /// Only update if the pool's etag still matches (412 otherwise).
    #[arg(long)]
    pub if_match: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Flags of `kubeforge nodepools create`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = NODEPOOLS_CREATE_EXAMPLES)]
pub struct NodePoolCreateArgs {
    /// Cluster name or id.
    pub cluster: String,
    /// Pool name.
    pub name: String,
    /// Machine type of the pool's nodes.
    #[arg(long, default_value = "small")]
    pub machine_type: String,
    /// Desired node count (defaults to --min when autoscaling, else 1).
    #[arg(long)]
    pub size: Option<u32>,
    #[command(flatten)]
    pub autoscaling: AutoscalingArgs,
    /// Node label as key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Node taint as key=value:Effect or key:Effect (repeatable).
    #[arg(long = "taint", value_name = "KEY=VALUE:EFFECT", value_parser = parse_taint)]
    pub taints: Vec<Taint>,
    /// Seconds to wait for a node's pods to be evicted before removing it
    /// anyway (0-3600; the service's default is 300).
    #[arg(long = "drain-timeout", value_name = "SECONDS")]
    pub drain_timeout: Option<u32>,
    #[command(flatten)]
    pub repair: RepairArgs,
    /// Host label the pool's machines require, as key=value (repeatable;
    /// ssh clusters only): they claim only registered hosts carrying all.
    #[arg(long = "host-selector", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub host_selector: Vec<(String, String)>,
    /// A machine type to launch instead, in order, when the provider has
    /// no capacity for --machine-type (repeatable; aws clusters only).
    #[arg(long = "alternative-machine-type", value_name = "TYPE")]
    pub alternative_machine_types: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// A pool's autoscaling bounds, as `nodepools create` and `update` take
/// them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AutoscalingArgs {
    /// Autoscaling lower bound (needs --max): turns autoscaling on, or
    /// moves its bounds.
    #[arg(long, requires = "max")]
    pub min: Option<u32>,
    /// Autoscaling upper bound (needs --min).
    #[arg(long, requires = "min")]
    pub max: Option<u32>,
    /// Rank of the pool for the cluster's `priority` expander (needs --min
    /// and --max; default 0).
    #[arg(long, requires = "min", allow_hyphen_values = true)]
    pub priority: Option<i32>,
}

impl AutoscalingArgs {
    /// The bounds, when both were given.
    pub fn bounds(&self) -> Option<Autoscaling> {
        self.min.zip(self.max).map(|(min, max)| Autoscaling {
            min,
            max,
            priority: self.priority.unwrap_or(0),
        })
    }
}

/// A pool's auto-repair flags, as `nodepools create` and `update` take
/// them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RepairArgs {
    /// Replace a node after it has been unhealthy this many seconds
    /// (10-86400; the service's default is 300); turns auto-repair on.
    #[arg(long, value_name = "SECONDS", conflicts_with = "no_auto_repair")]
    pub repair_after: Option<u32>,
    /// Never replace unhealthy nodes automatically.
    #[arg(long)]
    pub no_auto_repair: bool,
}

impl RepairArgs {
    /// The auto-repair settings the flags name, if any. `--no-auto-repair`
    /// keeps the default threshold, for when repair is turned back on.
    pub fn settings(&self) -> Option<AutoRepair> {
        if self.no_auto_repair {
            Some(AutoRepair {
                enabled: false,
                ..AutoRepair::default()
            })
        } else {
            self.repair_after.map(|after_seconds| AutoRepair {
                enabled: true,
                after_seconds,
            })
        }
    }
}

/// `kubeforge kubeconfig CLUSTER [--role viewer] [--ttl 1h]`
#[derive(Debug, Clone, clap::Args)]
pub struct KubeconfigArgs {
    /// Cluster name or id.
    pub cluster: String,
    /// Role the client certificate is issued for.
    #[arg(long, value_enum, default_value = "admin")]
    pub role: KubeconfigRole,
    /// Lifetime of the client certificate, e.g. 1h, 30m, 3600s, 1h30m.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
}

/// Role of a kubeconfig's client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeconfigRole {
    /// cluster-admin (needs the tenant role admin).
    Admin,
    /// Kubernetes' `edit` plus reading nodes and namespaces (editor).
    Editor,
    /// Kubernetes' `view` plus reading nodes (viewer).
    Viewer,
}

impl KubeconfigRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KubeconfigRole::Admin => "admin",
            KubeconfigRole::Editor => "editor",
            KubeconfigRole::Viewer => "viewer",
        }
    }
}

// ---------------------------------------------------------------------------
// Entry points

/// Runs a `clusters` subcommand and prints its result on stdout.
pub async fn run_clusters(opts: &ClientOpts, cmd: ClustersCmd) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    run_clusters_to(opts, cmd, &mut buf).await?;
    write_stdout(&buf)
}

/// Runs a `nodepools` subcommand and prints its result on stdout.
pub async fn run_nodepools(opts: &ClientOpts, cmd: NodePoolsCmd) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    run_nodepools_to(opts, cmd, &mut buf).await?;
    write_stdout(&buf)
}

/// Fetches a kubeconfig and writes it, unchanged, on stdout.
pub async fn run_kubeconfig(opts: &ClientOpts, args: KubeconfigArgs) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    run_kubeconfig_to(opts, args, &mut buf).await?;
    write_stdout(&buf)
}

/// [`run_clusters`], writing to `out`.
pub async fn run_clusters_to(
    opts: &ClientOpts,
    cmd: ClustersCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    // It may read its token from a file, so it makes its own `Api`.
    let cmd = match cmd {
        ClustersCmd::GetCredentials(args) => {
            return super::kubeconfig::run_get_credentials_to(opts, args, out).await;
        }
        cmd => cmd,
    };
    let api = Api::new(opts)?;
    match cmd {
        ClustersCmd::Create(args) => {
            let body = cluster_create_body(&args)?;
            let mut headers = HeaderMap::new();
            if let Some(key) = &args.idempotency_key {
                headers.insert("idempotency-key", header_value("--idempotency-key", key)?);
            }
            let url = api.url(&["clusters"])?;
            let answer: ClusterAccepted = api.call(Method::POST, url, headers, Some(&body)).await?;
            if args.wait.enabled() {
                let view = finish_cluster(&api, &answer, &args.wait).await?;
                print_cluster(out, opts.output, &view)?;
            } else {
                print_accepted(out, opts.output, &answer)?;
            }
        }
        ClustersCmd::List {
            phase,
            labels,
            limit,
            page_token,
            all,
        } => {
            let page = list_clusters(&api, phase, &labels, limit, page_token, all).await?;
            print_cluster_list(out, opts.output, &page)?;
        }
        ClustersCmd::Get { cluster } => {
            let view = get_cluster(&api, &cluster).await?;
            print_cluster(out, opts.output, &view)?;
        }
        ClustersCmd::Update {
            cluster,
            labels,
            clear_labels,
            autoscaler,
            deletion_protection,
            if_match,
            wait,
        } => {
            let labels = if clear_labels {
                Some(BTreeMap::new())
            } else if labels.is_empty() {
                None
            } else {
                Some(labels_map(&labels))
            };
            let body = UpdateClusterRequest {
                labels,
                deletion_protection,
                autoscaler: autoscaler_request(&autoscaler)?,
            };
            let url = api.url(&["clusters", &cluster])?;
            let answer: ClusterAccepted = api
                .call(Method::PATCH, url, if_match_header(&if_match)?, Some(&body))
                .await?;
            if wait.enabled() {
                let view = finish_cluster(&api, &answer, &wait).await?;
                print_cluster(out, opts.output, &view)?;
            } else {
                print_accepted(out, opts.output, &answer)?;
            }
        }
        ClustersCmd::Delete {
            cluster,
            if_match,
            wait,
        } => {
            let url = api.url(&["clusters", &cluster])?;
            delete(&api, url, &if_match, &wait, opts.output, out).await?;
        }
        ClustersCmd::GetCredentials(_) => unreachable!("handled above"),
    }
    Ok(())
}

/// Waits for a cluster's operation, then reads the cluster as it ended up.
async fn finish_cluster(
    api: &Api,
    answer: &ClusterAccepted,
    wait: &WaitArgs,
) -> Result<ClusterView, ClientError> {
    wait_for(api, &answer.operation, wait.timeout, &mut std::io::stderr()).await?;
    get_cluster(api, &answer.cluster.id.to_string()).await
}

/// Waits for a pool's operation, then reads the pool as it ended up.
async fn finish_pool(
    api: &Api,
    cluster: &str,
    answer: &NodePoolAccepted,
    wait: &WaitArgs,
) -> Result<NodePoolView, ClientError> {
    wait_for(api, &answer.operation, wait.timeout, &mut std::io::stderr()).await?;
    get_pool(api, cluster, &answer.node_pool.name).await
}

/// `DELETE url` (a cluster or a pool), then the accepted operation, or,
/// with `--wait`, the operation once it has ended.
async fn delete(
    api: &Api,
    url: Url,
    if_match: &Option<String>,
    wait: &WaitArgs,
    format: Output,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut answer: OperationAccepted = api
        .call(Method::DELETE, url, if_match_header(if_match)?, NO_BODY)
        .await?;
    if wait.enabled() {
        answer.operation =
            wait_for(api, &answer.operation, wait.timeout, &mut std::io::stderr()).await?;
    }
    print_accepted(out, format, &answer)?;
    Ok(())
}

async fn get_cluster(api: &Api, cluster: &str) -> Result<ClusterView, ClientError> {
    let url = api.url(&["clusters", cluster])?;
    api.call(Method::GET, url, HeaderMap::new(), NO_BODY).await
}

async fn get_pool(api: &Api, cluster: &str, pool: &str) -> Result<NodePoolView, ClientError> {
    let url = api.url(&["clusters", cluster, "node-pools", pool])?;
    api.call(Method::GET, url, HeaderMap::new(), NO_BODY).await
}

fn if_match_header(if_match: &Option<String>) -> Result<HeaderMap, ClientError> {
    let mut headers = HeaderMap::new();
    if let Some(etag) = if_match {
        headers.insert(reqwest::header::IF_MATCH, header_value("--if-match", etag)?);
    }
    Ok(headers)
}

/// [`run_nodepools`], writing to `out`.
pub async fn run_nodepools_to(
    opts: &ClientOpts,
    cmd: NodePoolsCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let api = Api::new(opts)?;
    match cmd {
        NodePoolsCmd::Create(args) => {
            let body = node_pool_body(&args);
            let url = api.url(&["clusters", &args.cluster, "node-pools"])?;
            let answer: NodePoolAccepted = api
                .call(Method::POST, url, HeaderMap::new(), Some(&body))
                .await?;
            print_pool_answer(out, opts.output, &api, &args.cluster, &answer, &args.wait).await?;
        }
        NodePoolsCmd::Scale {
            cluster,
            pool,
            size,
            if_match,
            wait,
        } => {
            let url = api.url(&["clusters", &cluster, "node-pools", &pool])?;
            let body = UpdateNodePoolRequest {
                size: Some(size),
                ..UpdateNodePoolRequest::default()
            };
            let answer: NodePoolAccepted = api
                .call(Method::PATCH, url, if_match_header(&if_match)?, Some(&body))
                .await?;
            print_pool_answer(out, opts.output, &api, &cluster, &answer, &wait).await?;
        }
        NodePoolsCmd::Update(args) => {
            let body = node_pool_update_body(&args)?;
            let url = api.url(&["clusters", &args.cluster, "node-pools", &args.pool])?;
            let answer: NodePoolAccepted = api
                .call(
                    Method::PATCH,
                    url,
                    if_match_header(&args.if_match)?,
                    Some(&body),
                )
                .await?;
            print_pool_answer(out, opts.output, &api, &args.cluster, &answer, &args.wait).await?;
        }
        NodePoolsCmd::Delete {
            cluster,
            pool,
            if_match,
            wait,
        } => {
            let url = api.url(&["clusters", &cluster, "node-pools", &pool])?;
            delete(&api, url, &if_match, &wait, opts.output, out).await?;
        }
        NodePoolsCmd::List { cluster } => {
            let url = api.url(&["clusters", &cluster, "node-pools"])?;
            let list: Items<NodePoolView> = api
                .call(Method::GET, url, HeaderMap::new(), NO_BODY)
                .await?;
            print_pool_list(out, opts.output, &list)?;
        }
        NodePoolsCmd::Get { cluster, pool } => {
            let view = get_pool(&api, &cluster, &pool).await?;
            print_pool(out, opts.output, &view)?;
        }
    }
    Ok(())
}

/// A pool's accepted answer: waited for and the pool printed as it ended
/// up, or printed as accepted.
async fn print_pool_answer(
    out: &mut impl Write,
    format: Output,
    api: &Api,
    cluster: &str,
    answer: &NodePoolAccepted,
    wait: &WaitArgs,
) -> anyhow::Result<()> {
    if wait.enabled() {
        let view = finish_pool(api, cluster, answer, wait).await?;
        print_pool(out, format, &view)?;
    } else {
        print_accepted(out, format, answer)?;
    }
    Ok(())
}

/// [`run_kubeconfig`], writing to `out`.
pub async fn run_kubeconfig_to(
    opts: &ClientOpts,
    args: KubeconfigArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let api = Api::new(opts)?;
    let url = api.url(&["clusters", &args.cluster, "kubeconfig"])?;
    let body = KubeconfigRequest {
        role: args.role.as_str().into(),
        ttl_seconds: args.ttl.as_secs(),
    };
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/yaml"));
    let bytes = api.send(Method::POST, url, headers, Some(&body)).await?;
    out.write_all(&bytes).context("writing the kubeconfig")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Request bodies

fn labels_map(labels: &[(String, String)]) -> BTreeMap<String, String> {
    // A repeated key keeps its last value.
    labels.iter().cloned().collect()
}

/// The `provider` of a create from its flags, read as the service reads
/// it. The aws flags belong to `--provider aws` only, and it needs the
/// three that place an instance.
fn provider_from_flags(args: &ClusterCreateArgs) -> anyhow::Result<ProviderSpec> {
    let aws_flags = [
        ("--region", "region", &args.region),
        ("--subnet-id", "subnet_id", &args.subnet_id),
        ("--ami", "ami", &args.ami),
        ("--role-arn", "role_arn", &args.role_arn),
        ("--key-name", "key_name", &args.key_name),
    ];
    let mut provider = serde_json::Map::new();
    provider.insert("kind".into(), Value::String(args.provider.clone()));
    for (flag, field, value) in aws_flags {
        let Some(value) = value else {
            if args.provider == "aws" && ["region", "subnet_id", "ami"].contains(&field) {
                anyhow::bail!("--provider aws needs {flag}");
            }
            continue;
        };
        if args.provider != "aws" {
            anyhow::bail!("{flag} is for --provider aws, not {:?}", args.provider);
        }
        provider.insert(field.into(), Value::String(value.clone()));
    }
    serde_json::from_value(Value::Object(provider))
        .map_err(|e| anyhow::anyhow!("invalid --provider {:?}: {e}", args.provider))
}

/// The create body: the JSON file as given (the service checks it), or a
/// [`CreateClusterRequest`] built from the flags.
pub fn cluster_create_body(args: &ClusterCreateArgs) -> anyhow::Result<Value> {
    if let Some(path) = &args.file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut body: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let Some(obj) = body.as_object_mut() else {
            anyhow::bail!("{} must hold a JSON object", path.display());
        };
        // A NAME given next to --file must agree with the file, or fills it in.
        if let Some(name) = &args.name {
            match obj.get("name") {
                None => {
                    obj.insert("name".into(), Value::String(name.clone()));
                }
                Some(Value::String(n)) if n == name => {}
                Some(other) => anyhow::bail!(
                    "cluster name {name:?} does not match \"name\": {other} in {}",
                    path.display()
                ),
            }
        }
        return Ok(body);
    }
    let Some(name) = &args.name else {
        anyhow::bail!("a cluster NAME or --file is required");
    };
    let provider = provider_from_flags(args)?;
    let request = CreateClusterRequest {
        name: name.clone(),
        kubernetes_version: args.version.clone(),
        provider,
        control_plane: ControlPlaneRequest {
            replicas: args.control_plane_replicas,
            machine_type: args.machine_type.clone(),
        },
        network: NetworkRequest {
            pod_cidr: args.pod_cidr.clone(),
            service_cidr: args.service_cidr.clone(),
        },
        node_pools: args
            .node_pools
            .iter()
            .map(|p| CreateNodePoolRequest {
                name: p.name.clone(),
                machine_type: p
                    .machine_type
                    .clone()
                    .unwrap_or_else(|| args.machine_type.clone()),
                size: Some(p.size),
                autoscaling: None,
                labels: BTreeMap::new(),
                taints: Vec::new(),
                drain_timeout_seconds: None,
                auto_repair: None,
                host_selector: BTreeMap::new(),
                alternative_machine_types: Vec::new(),
            })
            .collect(),
        labels: labels_map(&args.labels),
        deletion_protection: args.deletion_protection,
        autoscaler: autoscaler_request(&args.autoscaler)?,
    };
    Ok(serde_json::to_value(request)?)
}

/// The `--autoscaler` flags as the request's partial settings; none given,
/// none sent. A key given twice keeps its last value.
fn autoscaler_request(
    settings: &[(String, Value)],
) -> anyhow::Result<Option<AutoscalerSettingsRequest>> {
    if settings.is_empty() {
        return Ok(None);
    }
    let fields: serde_json::Map<String, Value> = settings.iter().cloned().collect();
    let request =
        serde_json::from_value(Value::Object(fields)).context("invalid --autoscaler settings")?;
    Ok(Some(request))
}

/// The create body. Drain and repair settings the flags leave out are left
/// out of the body too, so the service's defaults apply; `--no-auto-repair`
/// keeps the default threshold, for when repair is turned back on.
fn node_pool_body(args: &NodePoolCreateArgs) -> CreateNodePoolRequest {
    CreateNodePoolRequest {
        name: args.name.clone(),
        machine_type: args.machine_type.clone(),
        size: Some(args.size.or(args.autoscaling.min).unwrap_or(1)),
        autoscaling: args.autoscaling.bounds(),
        labels: labels_map(&args.labels),
        taints: args.taints.clone(),
        drain_timeout_seconds: args.drain_timeout,
        auto_repair: args.repair.settings(),
        host_selector: labels_map(&args.host_selector),
        alternative_machine_types: args.alternative_machine_types.clone(),
    }
}

/// The PATCH body of `nodepools update`: only what the flags name.
pub fn node_pool_update_body(args: &NodePoolUpdateArgs) -> anyhow::Result<UpdateNodePoolRequest> {
    let autoscaling = if args.no_autoscaling {
        Some(None)
    } else {
        args.autoscaling.bounds().map(Some)
    };
    let auto_repair = args.repair.settings();
    let body = UpdateNodePoolRequest {
        size: args.size,
        autoscaling,
        drain_timeout_seconds: args.drain_timeout,
        auto_repair,
        host_selector: (args.any_host || !args.host_selector.is_empty())
            .then(|| labels_map(&args.host_selector)),
        alternative_machine_types: (args.no_alternatives
            || !args.alternative_machine_types.is_empty())
        .then(|| args.alternative_machine_types.clone()),
    };
    anyhow::ensure!(
        body.size.is_some()
            || body.autoscaling.is_some()
            || body.drain_timeout_seconds.is_some()
            || body.auto_repair.is_some()
            || body.host_selector.is_some()
            || body.alternative_machine_types.is_some(),
        ClientError::BadArgument {
            what: "nodepools update".into(),
            reason: "nothing to change: give --size, --min/--max, --no-autoscaling, \
                     --drain-timeout, --repair-after, --no-auto-repair, --host-selector, \
                     --any-host, --alternative-machine-type or --no-alternatives"
                .into(),
        }
    );
    Ok(body)
}

// ---------------------------------------------------------------------------
// Flag parsers

/// The names `--autoscaler KEY=VALUE` accepts, with the JSON type of their values.
const AUTOSCALER_SETTINGS: &[(&str, &str)] = &[
    ("mode", "text"),
    ("expander", "text"),
    ("scale_down_utilization_threshold", "number"),
    ("scale_down_unneeded_seconds", "seconds"),
    ("batch_idle_seconds", "seconds"),
    ("batch_max_seconds", "seconds"),
    ("max_nodes_per_scale_up", "count"),
];

/// Parses `--autoscaler KEY=VALUE`: KEY one of the autoscaler's settings,
/// VALUE of its type (the service checks the bounds).
pub fn parse_autoscaler_setting(s: &str) -> Result<(String, Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let Some((key, kind)) = AUTOSCALER_SETTINGS.iter().find(|(k, _)| *k == key) else {
        let names: Vec<&str> = AUTOSCALER_SETTINGS.iter().map(|(k, _)| *k).collect();
        return Err(format!(
            "unknown autoscaler setting {key:?}; one of {}",
            names.join(", ")
        ));
    };
    let value = match *kind {
        "text" => Value::String(value.to_string()),
        "number" => value
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(|v| json!(v))
            .ok_or_else(|| format!("{key} must be a number, not {value:?}"))?,
        _ => value
            .parse::<u32>()
            .map(|v| json!(v))
            .map_err(|_| format!("{key} must be a whole number, not {value:?}"))?,
    };
    Ok((key.to_string(), value))
}

/// Parses a duration such as `1h`, `30m`, `3600s`, `1h30m`, `2d` or a bare
/// number of seconds. Units: `s`, `m`, `h`, `d`. Zero is rejected.
pub fn parse_ttl(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration (try 1h, 30m or 3600s)".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| format!("{s:?} is too large"))?;
        return nonzero(secs, s);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected a number at {rest:?} (try 1h, 30m or 3600s)"
            ));
        }
        let (num, after) = rest.split_at(digits);
        let unit_len = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, after) = after.split_at(unit_len);
        let per_unit: u64 = match unit {
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" | "hr" | "hrs" => 3600,
            "d" | "day" | "days" => 86_400,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: {num} needs a unit (s, m, h, d)"
                ))
            }
            other => return Err(format!("invalid duration {s:?}: unknown unit {other:?}")),
        };
        let n: u64 = num.parse().map_err(|_| format!("{s:?} is too large"))?;
        total = n
            .checked_mul(per_unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?} is too large"))?;
        rest = after.trim_start();
    }
    nonzero(total, s)
}

fn nonzero(secs: u64, s: &str) -> Result<Duration, String> {
    if secs == 0 {
        Err(format!("duration {s:?} must be greater than zero"))
    } else {
        Ok(Duration::from_secs(secs))
    }
}

/// Parses `key=value` (the value may be empty).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!("{s:?} is not key=value"));
    };
    kubeforge_cluster::spec::check_label_key(k)?;
    kubeforge_cluster::spec::check_label_value(v)?;
    Ok((k.to_string(), v.to_string()))
}

/// Parses `key=value:Effect` or `key:Effect`, where Effect is one of
/// NoSchedule, PreferNoSchedule, NoExecute; key and value are checked as
/// the service checks them ([`Taint::check`]).
pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let Some((kv, effect)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} is not key=value:Effect"));
    };
    let effect = match effect {
        "NoSchedule" => TaintEffect::NoSchedule,
        "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
        "NoExecute" => TaintEffect::NoExecute,
        other => {
            return Err(format!(
                "invalid taint effect {other:?}: expected NoSchedule, PreferNoSchedule or NoExecute"
            ))
        }
    };
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    let taint = Taint {
        key: key.to_string(),
        value: value.map(str::to_string),
        effect,
    };
    taint.check().map_err(|e| format!("taint {}", e.message))?;
    if value == Some("") {
        return Err(format!("taint {s:?}: write key:Effect for an empty value"));
    }
    Ok(taint)
}

/// Parses `name:size[:machine_type]`.
pub fn parse_pool_spec(s: &str) -> Result<PoolSpec, String> {
    let mut parts = s.split(':');
    let name = parts.next().unwrap_or_default();
    let size = parts.next();
    let machine_type = parts.next();
    if parts.next().is_some() {
        return Err(format!("{s:?} is not name:size[:machine_type]"));
    }
    if name.is_empty() || !is_segment(name) {
        return Err(format!("invalid node pool name {name:?}"));
    }
    let Some(size) = size else {
        return Err(format!("{s:?} is not name:size[:machine_type]"));
    };
    let size: u32 = size
        .parse()
        .map_err(|_| format!("invalid node pool size {size:?}"))?;
    if let Some(mt) = machine_type {
        if !is_segment(mt) {
            return Err(format!("invalid machine type {mt:?}"));
        }
    }
    Ok(PoolSpec {
        name: name.to_string(),
        size,
        machine_type: machine_type.map(str::to_string),
    })
}

// ---------------------------------------------------------------------------
// Errors

/// Reads an error answer as a problem document. Fields the server left out
/// get fallbacks (the HTTP status, its reason as the code, the title as
/// the detail), and its text is stripped of control characters.
pub fn problem_from_json(status: StatusCode, v: &Value) -> Problem {
    let s = |key: &str| v.get(key).and_then(Value::as_str).map(sanitize);
    let status_code = v
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or(status.as_u16());
    Problem {
        type_: s("type").unwrap_or_else(|| "about:blank".into()),
        title: s("title").unwrap_or_else(|| status.canonical_reason().unwrap_or("Error").into()),
        status: status_code,
        code: s("code").unwrap_or_else(|| reason(status)),
        detail: s("detail")
            .or_else(|| s("title"))
            .unwrap_or_else(|| "no detail given".into()),
        field: s("field").filter(|f| !f.is_empty()),
        retryable: v.get("retryable").and_then(Value::as_bool).unwrap_or(false),
    }
}

/// Why a client command failed. `main` prints the message and exits
/// with [`ClientError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no token: set KUBEFORGE_TOKEN or pass --token")]
    NoToken,
    #[error("invalid --url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("invalid {what}: {reason}")]
    BadArgument { what: String, reason: String },
    #[error("cannot reach the Kubeforge API at {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("{}", problem_text(.0))]
    Api(Box<Problem>),
    #[error("error: {status}: {body}\nhint: {}", hint(*.status, ""))]
    Status { status: u16, body: String },
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse { url: String, reason: String },
    /// The operation waited for ended in `failed`.
    #[error("error: operation {id} ({type_}) failed: {code}: {message}\nhint: {}", failed_hint(*.retryable, cluster, id))]
    OperationFailed {
        id: String,
        cluster: String,
        type_: String,
        code: String,
        message: String,
        retryable: bool,
    },
    /// `--timeout` passed before the operation ended.
    #[error("error: operation {id} still {state} after {waited}\nhint: it goes on in the service; `kubeforge operations wait {id}` waits again")]
    WaitTimeout {
        id: String,
        state: String,
        waited: String,
    },
}

/// Exit codes of the client commands (documented in `kubeforge --help`
/// and the README). clap's own usage errors exit with [`EXIT_USAGE`].
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_AUTH: u8 = 3;
pub const EXIT_NOT_FOUND: u8 = 4;
pub const EXIT_CONFLICT: u8 = 5;
pub const EXIT_VALIDATION: u8 = 6;
pub const EXIT_OPERATION_FAILED: u8 = 7;
pub const EXIT_TIMEOUT: u8 = 8;

/// The exit code for an HTTP status.
fn status_exit_code(status: u16) -> u8 {
    match status {
        401 | 403 => EXIT_AUTH,
        404 => EXIT_NOT_FOUND,
        409 | 412 => EXIT_CONFLICT,
        400 | 422 => EXIT_VALIDATION,
        _ => EXIT_ERROR,
    }
}

impl ClientError {
    /// What the process exits with when this ends the command.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NoToken => EXIT_AUTH,
            ClientError::BadUrl { .. } | ClientError::BadArgument { .. } => EXIT_USAGE,
            ClientError::Connect { .. } | ClientError::BadResponse { .. } => EXIT_ERROR,
            ClientError::Api(p) => status_exit_code(p.status),
            ClientError::Status { status, .. } => status_exit_code(*status),
            ClientError::OperationFailed { .. } => EXIT_OPERATION_FAILED,
            ClientError::WaitTimeout { .. } => EXIT_TIMEOUT,
        }
    }
}

/// The exit code for whatever ended a command: a [`ClientError`]
/// anywhere in the chain decides, anything else is [`EXIT_ERROR`].
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<ClientError>())
        .map_or(EXIT_ERROR, ClientError::exit_code)
}

/// A problem document on separate lines: the title with status and code,
/// the detail, the field (when there is one) and what to try next.
///
/// ```text
/// error: Validation failed (422 validation_failed)
/// detail: pod_cidr overlaps service_cidr
/// field: network.pod_cidr
/// hint: correct network.pod_cidr and send the request again
/// ```
fn problem_text(p: &Problem) -> String {
    let mut s = format!("error: {} ({} {})", p.title, p.status, p.code);
    if p.detail != p.title {
        s.push_str(&format!("\ndetail: {}", p.detail));
    }
    if let Some(field) = &p.field {
        s.push_str(&format!("\nfield: {field}"));
    }
    let field = p.field.as_deref().unwrap_or("");
    let mut h = hint(p.status, field);
    if p.retryable && !(p.status == 429 || p.status >= 500) {
        h.push_str("; the service says a retry may succeed");
    }
    s.push_str(&format!("\nhint: {h}"));
    s
}

/// What to try after an error of this status.
fn hint(status: u16, field: &str) -> String {
    match status {
        400 | 422 if !field.is_empty() => {
            format!("correct {field} and send the request again")
        }
        400 | 422 => "correct the request and send it again (`--help` lists the flags)".into(),
        401 => "the token is missing, expired or not signed by this service: mint one with \
                `kubeforge token create` and set KUBEFORGE_TOKEN"
            .into(),
        403 => "the token's role may not do this: use a token with a stronger role \
                (viewer < editor < admin < platform-admin)"
            .into(),
        404 => "check the name or id; `kubeforge clusters list` shows the clusters this token sees"
            .into(),
        409 => "the resource is busy or in a state that refuses this; \
                `kubeforge operations list CLUSTER` shows what runs"
            .into(),
        412 => "the resource changed since its etag was read: get it again and retry with \
                the new etag"
            .into(),
        429 => "too many requests: wait a moment and retry".into(),
        s if s >= 500 => "a service-side failure: retry; if it persists, the service's log \
                          has the request"
            .into(),
        _ => "see `kubeforge --help`".into(),
    }
}

fn failed_hint(retryable: bool, cluster: &str, id: &str) -> String {
    let look = format!(
        "`kubeforge events list {cluster}` and `kubeforge operations get {id}` show what happened"
    );
    if retryable {
        format!("{look}; the failure may pass: retry the command")
    } else {
        look
    }
}

fn reason(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_")
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = e.source();
    }
    msg
}

fn header_value(what: &str, value: &str) -> Result<HeaderValue, ClientError> {
    HeaderValue::from_str(value).map_err(|_| ClientError::BadArgument {
        what: what.into(),
        reason: "must be visible ASCII".into(),
    })
}

fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

// ---------------------------------------------------------------------------
// HTTP

pub(crate) struct Api {
    http: reqwest::Client,
    base: Url,
    auth: HeaderValue,
}

impl Api {
    pub(crate) fn new(opts: &ClientOpts) -> Result<Api, ClientError> {
        let token = opts
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ClientError::NoToken)?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ClientError::BadArgument {
                what: "token".into(),
                reason: "must be visible ASCII".into(),
            }
        })?;
        auth.set_sensitive(true);
        let bad_url = |reason: &str| ClientError::BadUrl {
            url: opts.url.clone(),
            reason: reason.into(),
        };
        let base = Url::parse(&opts.url).map_err(|e| bad_url(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad_url("the scheme must be http or https"));
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(bad_url("not a base URL"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad_url("must not have a query or fragment"));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("kubeforge-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ClientError::BadArgument {
                what: "HTTP client".into(),
                reason: error_chain(&e),
            })?;
        Ok(Api { http, base, auth })
    }

    /// `{base}/v1/{segments...}`, each segment checked and encoded.
    pub(crate) fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        for s in segments {
            if !is_segment(s) {
                return Err(ClientError::BadArgument {
                    what: format!("name {:?}", sanitize(s)),
                    reason: "only letters, digits, '-', '_' and '.' are allowed".into(),
                });
            }
        }
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().map_err(|()| ClientError::BadUrl {
                url: self.base.to_string(),
                reason: "not a base URL".into(),
            })?;
            path.pop_if_empty().push("v1").extend(segments);
        }
        Ok(url)
    }

    /// Sends a request and returns the body of a 2xx answer.
    pub(crate) async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        mut headers: HeaderMap,
        body: Option<&B>,
    ) -> Result<Vec<u8>, ClientError> {
        headers.insert(AUTHORIZATION, self.auth.clone());
        headers
            .entry(ACCEPT)
            .or_insert(HeaderValue::from_static("application/json"));
        let mut req = self.http.request(method, url.clone()).headers(headers);
        if let Some(body) = body {
            req = req.json(body);
        }
        let connect_err = |e: reqwest::Error| ClientError::Connect {
            url: url.to_string(),
            cause: error_chain(&e),
        };
        let resp = req.send().await.map_err(connect_err)?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let bytes = resp.bytes().await.map_err(connect_err)?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        Err(api_error(status, &content_type, &bytes))
    }

    /// Sends a request and reads the 2xx answer as a `T`.
    pub(crate) async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = self.send(method, url.clone(), headers, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse {
            url: url.to_string(),
            reason: format!("invalid JSON: {e}"),
        })
    }
}

/// The body of a request that has none.
pub(crate) const NO_BODY: Option<&()> = None;

/// Turns a non-2xx answer into an error.
fn api_error(status: StatusCode, content_type: &str, body: &[u8]) -> ClientError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let is_problem = content_type.starts_with("application/problem+json")
        || parsed
            .as_ref()
            .is_some_and(|v| v.get("code").is_some_and(Value::is_string));
    match parsed {
        Some(v) if is_problem && v.is_object() => {
            ClientError::Api(Box::new(problem_from_json(status, &v)))
        }
        _ => {
            let text = sanitize(String::from_utf8_lossy(body).trim());
            let mut excerpt: String = text.chars().take(200).collect();
            if text.chars().count() > 200 {
                excerpt.push('…');
            }
            let body = if excerpt.is_empty() {
                reason(status)
            } else {
                format!("{}: {excerpt}", reason(status))
            };
            ClientError::Status {
                status: status.as_u16(),
                body,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Listing

/// Safety net against a server that keeps handing out page tokens.
const MAX_PAGES: usize = 10_000;

async fn list_clusters(
    api: &Api,
    phase: Option<String>,
    labels: &[(String, String)],
    limit: Option<u32>,
    mut page_token: Option<String>,
    all: bool,
) -> Result<Page<ClusterView>, ClientError> {
    let mut collected = Vec::new();
    let mut seen_tokens = std::collections::HashSet::new();
    for _ in 0..MAX_PAGES {
        let mut url = api.url(&["clusters"])?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(p) = &phase {
                q.append_pair("phase", p);
            }
            for (k, v) in labels {
                q.append_pair("label", &format!("{k}={v}"));
            }
            if let Some(t) = &page_token {
                q.append_pair("page_token", t);
            }
            if let Some(l) = limit {
                q.append_pair("limit", &l.to_string());
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let page: Page<ClusterView> = api
            .call(Method::GET, url.clone(), HeaderMap::new(), NO_BODY)
            .await?;
        if !all {
            return Ok(page);
        }
        collected.extend(page.items);
        match page.next_page_token.filter(|t| !t.is_empty()) {
            None => {
                return Ok(Page {
                    items: collected,
                    next_page_token: None,
                });
            }
            Some(t) => {
                if !seen_tokens.insert(t.clone()) {
                    return Err(ClientError::BadResponse {
                        url: url.to_string(),
                        reason: format!("page token {:?} came back twice", sanitize(&t)),
                    });
                }
                page_token = Some(t);
            }
        }
    }
    Err(ClientError::BadResponse {
        url: api.base.to_string(),
        reason: format!("more than {MAX_PAGES} pages"),
    })
}

// ---------------------------------------------------------------------------
// Rendering

fn cluster_table<'a>(clusters: impl IntoIterator<Item = &'a ClusterView>) -> Table {
    let mut t = Table::new(&[
        "NAME", "ID", "PHASE", "VERSION", "CP", "NODES", "ENDPOINT", "CREATED",
    ]);
    for c in clusters {
        // Ready nodes of every pool out of their desired sizes.
        let (ready, size) = c.node_pools.iter().fold((0u64, 0u64), |(r, s), p| {
            (r + u64::from(p.ready_nodes), s + u64::from(p.size))
        });
        t.row(vec![
            text(&c.name),
            c.id.to_string(),
            c.phase.as_str().into(),
            text(&c.kubernetes_version),
            c.control_plane.replicas.to_string(),
            format!("{ready}/{size}"),
            opt_text(c.endpoint.as_deref()),
            time(&c.created_at),
        ]);
    }
    t
}

fn pool_table<'a>(pools: impl IntoIterator<Item = &'a NodePoolView>) -> Table {
    let mut t = Table::new(&["NAME", "READY", "MACHINE TYPE", "AUTOSCALING", "PHASE"]);
    for p in pools {
        let autoscaling = p
            .autoscaling
            .map_or_else(|| "off".into(), |a| format!("{}-{}", a.min, a.max));
        t.row(vec![
            text(&p.name),
            // Ready nodes out of the desired size, as kubectl shows replicas.
            format!("{}/{}", p.ready_nodes, p.size),
            machine_types(p),
            autoscaling,
            p.phase.as_str().into(),
        ]);
    }
    t
}

/// `m5.large`, or with its alternatives in order: `m5.large|m5a.large|m6i.large`.
fn machine_types(p: &NodePoolView) -> String {
    std::iter::once(&p.machine_type)
        .chain(&p.alternative_machine_types)
        .map(|t| text(t))
        .collect::<Vec<_>>()
        .join("|")
}

fn write_operation(out: &mut impl Write, op: &OperationView) -> std::io::Result<()> {
    let mut t = Table::new(&["OPERATION", "TYPE", "STATE"]);
    t.row(vec![op.id.to_string(), text(&op.type_), text(&op.state)]);
    t.write(out)
}

/// Prints a `GET /v1/clusters` answer.
pub fn print_cluster_list(
    out: &mut impl Write,
    format: Output,
    page: &Page<ClusterView>,
) -> std::io::Result<()> {
    if emit(out, format, page)? {
        return Ok(());
    }
    cluster_table(&page.items).write(out)?;
    if let Some(token) = page.next_page_token.as_deref().filter(|t| !t.is_empty()) {
        writeln!(out, "\nmore: --page-token {} (or --all)", sanitize(token))?;
    }
    Ok(())
}

/// Prints one cluster and its conditions.
pub fn print_cluster(out: &mut impl Write, format: Output, c: &ClusterView) -> std::io::Result<()> {
    if emit(out, format, c)? {
        return Ok(());
    }
    cluster_table([c]).write(out)?;
    if !c.node_pools.is_empty() {
        writeln!(out)?;
        let mut t = Table::new(&["NODE POOL", "READY", "MACHINE TYPE", "PHASE"]);
        for p in &c.node_pools {
            t.row(vec![
                text(&p.name),
                format!("{}/{}", p.ready_nodes, p.size),
                text(&p.machine_type),
                p.phase.as_str().into(),
            ]);
        }
        t.write(out)?;
    }
    if !c.conditions.is_empty() {
        writeln!(out)?;
        let mut t = Table::new(&["CONDITION", "STATUS", "REASON", "MESSAGE"]);
        for cond in &c.conditions {
            t.row(vec![
                text(&cond.type_),
                cond.status.as_str().into(),
                text(&cond.reason),
                text(&cond.message),
            ]);
        }
        t.write(out)?;
    }
    Ok(())
}

/// Prints a `GET .../node-pools` answer.
pub fn print_pool_list(
    out: &mut impl Write,
    format: Output,
    list: &Items<NodePoolView>,
) -> std::io::Result<()> {
    if emit(out, format, list)? {
        return Ok(());
    }
    pool_table(&list.items).write(out)
}

/// Prints one node pool and its nodes.
pub fn print_pool(out: &mut impl Write, format: Output, p: &NodePoolView) -> std::io::Result<()> {
    if emit(out, format, p)? {
        return Ok(());
    }
    pool_table([p]).write(out)?;
    if !p.nodes.is_empty() {
        writeln!(out)?;
        let mut t = Table::new(&[
            "NODE",
            "MACHINE",
            "ADDRESS",
            "STATE",
            "MACHINE STATE",
            "UNHEALTHY SINCE",
        ]);
        for n in &p.nodes {
            t.row(vec![
                text(&n.name),
                n.machine.to_string(),
                opt_text(n.address.as_deref()),
                text(&n.state),
                text(&n.machine_state),
                n.unhealthy_since.as_ref().map_or_else(|| "-".into(), time),
            ]);
        }
        t.write(out)?;
    }
    Ok(())
}

/// A create, scale or delete answer, as the table view shows it.
pub trait AcceptedAnswer: Serialize + super::output::Named {
    /// The resource as it is now, when the answer carries it.
    fn resource(&self) -> Option<Table>;
    /// The operation that carries the request out.
    fn operation(&self) -> &OperationView;
}

impl AcceptedAnswer for ClusterAccepted {
    fn resource(&self) -> Option<Table> {
        Some(cluster_table([&self.cluster]))
    }
    fn operation(&self) -> &OperationView {
        &self.operation
    }
}

impl AcceptedAnswer for NodePoolAccepted {
    fn resource(&self) -> Option<Table> {
        Some(pool_table([&self.node_pool]))
    }
    fn operation(&self) -> &OperationView {
        &self.operation
    }
}

impl AcceptedAnswer for OperationAccepted {
    fn resource(&self) -> Option<Table> {
        None
    }
    fn operation(&self) -> &OperationView {
        &self.operation
    }
}

/// Prints a create/scale/delete answer: the resource, if the answer has
/// it, then the operation.
pub fn print_accepted(
    out: &mut impl Write,
    format: Output,
    answer: &impl AcceptedAnswer,
) -> std::io::Result<()> {
    if emit(out, format, answer)? {
        return Ok(());
    }
    if let Some(t) = answer.resource() {
        t.write(out)?;
        writeln!(out)?;
    }
    write_operation(out, answer.operation())
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use clap::Parser;
    use kubeforge_cluster::api::{ControlPlaneView, NetworkView, NodePoolSummary, NodeView, Step};
    use kubeforge_cluster::{Condition, ConditionStatus, Phase};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use uuid::Uuid;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Cmd {
        #[command(subcommand)]
        Clusters(ClustersCmd),
        #[command(subcommand)]
        Nodepools(NodePoolsCmd),
        Kubeconfig(KubeconfigArgs),
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kf").chain(args.iter().copied()))
    }

    #[test]
    fn nodepools_update_sends_only_what_is_named() {
        let body = |args: &[&str]| {
            let Cmd::Nodepools(NodePoolsCmd::Update(a)) = parse(args).unwrap().cmd else {
                panic!("wrong command")
            };
            node_pool_update_body(&a).map(|b| serde_json::to_value(b).unwrap())
        };
        let base = ["nodepools", "update", "web", "default"];
        fn with<'a>(more: &[&'a str]) -> Vec<&'a str> {
            [&["nodepools", "update", "web", "default"][..], more].concat()
        }
        assert_eq!(
            body(&with(&["--min", "1", "--max", "4"])).unwrap(),
            json!({"autoscaling": {"min": 1, "max": 4, "priority": 0}})
        );
        assert_eq!(
            body(&with(&["--no-autoscaling", "--size", "2"])).unwrap(),
            json!({"size": 2, "autoscaling": null})
        );
        assert_eq!(
            body(&with(&["--drain-timeout", "60", "--no-auto-repair"])).unwrap(),
            json!({"drain_timeout_seconds": 60, "auto_repair": {"enabled": false, "after_seconds": 300}})
        );
        assert_eq!(
            body(&with(&[
                "--host-selector",
                "gpu=true",
                "--host-selector",
                "zone=a"
            ]))
            .unwrap(),
            json!({"host_selector": {"gpu": "true", "zone": "a"}})
        );
        assert_eq!(
            body(&with(&["--any-host"])).unwrap(),
            json!({"host_selector": {}})
        );
        assert!(parse(&with(&["--any-host", "--host-selector", "gpu=true"])).is_err());
        assert_eq!(
            body(&with(&[
                "--alternative-machine-type",
                "m5a.large",
                "--alternative-machine-type",
                "m6i.large"
            ]))
            .unwrap(),
            json!({"alternative_machine_types": ["m5a.large", "m6i.large"]})
        );
        assert_eq!(
            body(&with(&["--no-alternatives"])).unwrap(),
            json!({"alternative_machine_types": []})
        );
        assert!(parse(&with(&[
            "--no-alternatives",
            "--alternative-machine-type",
            "m5a.large"
        ]))
        .is_err());
        let err = body(&base).unwrap_err();
        assert!(err.to_string().contains("nothing to change"), "{err}");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        for bad in [
            &with(&["--min", "1"])[..],
            &with(&["--no-autoscaling", "--min", "1", "--max", "2"]),
            &with(&["--repair-after", "60", "--no-auto-repair"]),
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_last_wait_flag_wins() {
        let wait = |args: &[&str]| {
            let Cmd::Nodepools(NodePoolsCmd::Scale { wait, .. }) = parse(args).unwrap().cmd else {
                panic!("wrong command")
            };
            wait
        };
        let base = ["nodepools", "scale", "web", "default", "3"];
        let w = wait(&[&base[..], &["--wait", "--no-wait"]].concat());
        assert!(!w.enabled());
        let w = wait(&[&base[..], &["--no-wait", "--wait", "--timeout", "90s"]].concat());
        assert!(w.enabled());
        assert_eq!(w.timeout, Duration::from_secs(90));
        let w = wait(&base);
        assert_eq!(w.timeout, Duration::from_secs(1800));
        assert!(parse(&[&base[..], &["--timeout", "0s"]].concat()).is_err());
    }

    #[test]
    fn yaml_and_name_outputs() {
        let c = cluster_view(1, "web");
        let mut out = Vec::new();
        print_cluster(&mut out, Output::Yaml, &c).unwrap();
        let yaml: Value = serde_saphyr::from_str(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!(yaml, serde_json::to_value(&c).unwrap());
        let mut out = Vec::new();
        let answer = ClusterAccepted {
            cluster: c.clone(),
            operation: operation_view(7, "cluster_create"),
        };
        print_accepted(&mut out, Output::Name, &answer).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("cluster/web\noperation/{}\n", Uuid::from_u128(7))
        );
        let mut out = Vec::new();
        let list = Items {
            items: vec![
                pool_view("a", 1, 1, "small"),
                pool_view("b\x1b", 1, 1, "small"),
            ],
        };
        print_pool_list(&mut out, Output::Name, &list).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "nodepool/a\nnodepool/b \n");
    }

    #[test]
    fn ttl_parser() {
        let secs = |s: &str| parse_ttl(s).map(|d| d.as_secs());
        assert_eq!(secs("1h"), Ok(3600));
        assert_eq!(secs("30m"), Ok(1800));
        assert_eq!(secs("3600s"), Ok(3600));
        assert_eq!(secs("3600"), Ok(3600));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("1h 30m 15s"), Ok(5415));
        assert_eq!(secs("2d"), Ok(172_800));
        assert_eq!(secs(" 45min "), Ok(2700));
        for bad in [
            "",
            "h",
            "1x",
            "-1h",
            "1.5h",
            "0s",
            "0",
            "1h0",
            "99999999999999999999h",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_ttl("18446744073709551615h")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn label_parser() {
        assert_eq!(parse_label("team=web"), Ok(("team".into(), "web".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), String::new())));
        assert_eq!(
            parse_label("example.com/tier=a.b_c-d"),
            Ok(("example.com/tier".into(), "a.b_c-d".into()))
        );
        for bad in [
            "team",
            "=web",
            "te am=web",
            "team=w b",
            "a/b/c=x",
            "k=v\n",
            &format!("k={}", "x".repeat(64)),
        ] {
            assert!(parse_label(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn taint_parser() {
        assert_eq!(
            parse_taint("dedicated=gpu:NoSchedule"),
            Ok(Taint {
                key: "dedicated".into(),
                value: Some("gpu".into()),
                effect: TaintEffect::NoSchedule
            })
        );
        assert_eq!(
            parse_taint("spot:PreferNoSchedule"),
            Ok(Taint {
                key: "spot".into(),
                value: None,
                effect: TaintEffect::PreferNoSchedule
            })
        );
        assert_eq!(
            parse_taint("k=:NoExecute"),
            Err("taint \"k=:NoExecute\": write key:Effect for an empty value".into())
        );
        assert!(parse_taint("k v=x:NoExecute")
            .unwrap_err()
            .starts_with("taint key \"k v\": the name part must be"));
        for bad in [
            "k=v",
            "k=v:Bogus",
            ":NoSchedule",
            "k=:NoExecute",
            "k=v:noschedule",
            "k v=x:NoExecute",
        ] {
            assert!(parse_taint(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn pool_spec_parser() {
        assert_eq!(
            parse_pool_spec("default:2"),
            Ok(PoolSpec {
                name: "default".into(),
                size: 2,
                machine_type: None
            })
        );
        assert_eq!(
            parse_pool_spec("gpu:1:large").map(|p| p.machine_type),
            Ok(Some("large".into()))
        );
        for bad in [
            "default", "default:", ":2", "a:b", "a:1:b:c", "a/b:1", "a:-1",
        ] {
            assert!(parse_pool_spec(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn table_formatter_aligns_columns() {
        let mut t = Table::new(&["NAME", "SIZE", "NOTE"]);
        t.row(vec!["a".into(), "10".into(), "x".into()]);
        t.row(vec!["longer-name".into(), "2".into(), String::new()]);
        t.row(vec!["ünï".into(), "bad\x1b[31m".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME         SIZE      NOTE\n\
             a            10        x\n\
             longer-name  2\n\
             ünï          bad [31m\n"
        );
    }

    #[test]
    fn problem_formatting() {
        let v = json!({
            "type": "https://kubeforge.dev/problems/validation_failed",
            "title": "Validation failed", "status": 422, "code": "validation_failed",
            "detail": "pod_cidr overlaps service_cidr", "field": "network.pod_cidr",
            "retryable": false
        });
        let p = problem_from_json(StatusCode::UNPROCESSABLE_ENTITY, &v);
        assert_eq!(p, serde_json::from_value(v).unwrap());
        let e = ClientError::Api(Box::new(p));
        assert_eq!(
            e.to_string(),
            "error: Validation failed (422 validation_failed)\n\
             detail: pod_cidr overlaps service_cidr\n\
             field: network.pod_cidr\n\
             hint: correct network.pod_cidr and send the request again"
        );
        assert_eq!(e.exit_code(), EXIT_VALIDATION);
        let v =
            json!({"title": "Not Found", "status": 404, "code": "not_found", "retryable": false});
        let e = ClientError::Api(Box::new(problem_from_json(StatusCode::NOT_FOUND, &v)));
        assert_eq!(
            e.to_string(),
            "error: Not Found (404 not_found)\n\
             hint: check the name or id; `kubeforge clusters list` shows the clusters this token sees"
        );
        assert_eq!(e.exit_code(), EXIT_NOT_FOUND);
        let e = api_error(
            StatusCode::BAD_GATEWAY,
            "text/html",
            b"<h1>bad\ngateway</h1>",
        );
        assert!(
            e.to_string().starts_with(
                "error: 502: bad_gateway: <h1>bad gateway</h1>\nhint: a service-side failure"
            ),
            "{e}"
        );
        assert_eq!(e.exit_code(), EXIT_ERROR);
        let e = api_error(StatusCode::UNAUTHORIZED, "", b"");
        assert!(
            e.to_string()
                .starts_with("error: 401: unauthorized\nhint: the token is missing, expired"),
            "{e}"
        );
        assert_eq!(e.exit_code(), EXIT_AUTH);
        for (status, code) in [
            (403, EXIT_AUTH),
            (409, EXIT_CONFLICT),
            (412, EXIT_CONFLICT),
            (400, EXIT_VALIDATION),
            (500, EXIT_ERROR),
        ] {
            let e = api_error(StatusCode::from_u16(status).unwrap(), "", b"");
            assert_eq!(e.exit_code(), code, "{status}");
        }
        assert_eq!(ClientError::NoToken.exit_code(), EXIT_AUTH);
        let e: anyhow::Error = ClientError::WaitTimeout {
            id: "x".into(),
            state: "running".into(),
            waited: "3s".into(),
        }
        .into();
        assert_eq!(exit_code(&e.context("waiting")), EXIT_TIMEOUT);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), EXIT_ERROR);
    }

    #[test]
    fn problem_with_missing_fields_prints_sensibly() {
        let e = api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/problem+json",
            b"{}",
        );
        assert_eq!(
            e.to_string(),
            "error: Service Unavailable (503 service_unavailable)\n\
             detail: no detail given\n\
             hint: a service-side failure: retry; if it persists, the service's log has the request"
        );
        let e = api_error(
            StatusCode::CONFLICT,
            "application/json",
            br#"{"code": "conflict", "detail": "in\u001b[2Juse", "field": ""}"#,
        );
        assert_eq!(
            e.to_string().lines().take(2).collect::<Vec<_>>(),
            ["error: Conflict (409 conflict)", "detail: in [2Juse"]
        );
        let p = problem_from_json(StatusCode::BAD_GATEWAY, &json!({"status": "x"}));
        assert_eq!(
            (p.type_.as_str(), p.title.as_str(), p.status, p.retryable),
            ("about:blank", "Bad Gateway", 502, false)
        );
    }

    #[test]
    fn create_body_from_flags() {
        let cli = Cli::try_parse_from([
            "kf",
            "--token",
            "t",
            "clusters",
            "create",
            "web-prod",
            "--label",
            "team=web",
            "--node-pool",
            "default:2",
            "--node-pool",
            "gpu:1:large",
            "--deletion-protection",
        ])
        .unwrap();
        let Cmd::Clusters(ClustersCmd::Create(mut args)) = cli.cmd else {
            panic!("wrong command")
        };
        let body = cluster_create_body(&args).unwrap();
        // What the service reads back.
        let request: CreateClusterRequest = serde_json::from_value(body.clone()).unwrap();
        assert!(kubeforge_cluster::ClusterSpec::parse(request).is_ok());
        assert_eq!(
            body,
            json!({
                "name": "web-prod",
                "kubernetes_version": "1.20.2",
                "provider": {"kind": "lab"},
                "control_plane": {"replicas": 1, "machine_type": "small"},
                "network": {"pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12"},
                "node_pools": [
                    {"name": "default", "machine_type": "small", "size": 2, "labels": {}, "taints": []},
                    {"name": "gpu", "machine_type": "large", "size": 1, "labels": {}, "taints": []}
                ],
                "labels": {"team": "web"},
                "deletion_protection": true
            })
        );
        args.provider = "aws".into();
        let err = cluster_create_body(&args).unwrap_err().to_string();
        assert_eq!(err, "--provider aws needs --region");
        args.provider = "nimbus".into();
        let err = cluster_create_body(&args).unwrap_err().to_string();
        assert!(err.starts_with("invalid --provider \"nimbus\""), "{err}");
    }

    #[test]
    fn create_body_for_aws_from_flags() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["kf", "--token", "t", "clusters", "create", "web"];
            argv.extend_from_slice(extra);
            let cli = Cli::try_parse_from(argv).unwrap();
            let Cmd::Clusters(ClustersCmd::Create(args)) = cli.cmd else {
                panic!("wrong command")
            };
            cluster_create_body(&args).map_err(|e| e.to_string())
        };
        const PLACED: [&str; 8] = [
            "--provider",
            "aws",
            "--region",
            "eu-west-1",
            "--subnet-id",
            "subnet-0abc",
            "--ami",
            "ami-0def",
        ];
        let body = parse(
            &[
                &PLACED[..],
                &[
                    "--role-arn",
                    "arn:aws:iam::111122223333:role/kf",
                    "--key-name",
                    "ops",
                    "--node-pool",
                    "gpu:1:g4dn.xlarge",
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(
            body["provider"],
            json!({"kind": "aws", "region": "eu-west-1", "subnet_id": "subnet-0abc",
                   "ami": "ami-0def", "role_arn": "arn:aws:iam::111122223333:role/kf",
                   "key_name": "ops"})
        );
        let request: CreateClusterRequest = serde_json::from_value(body).unwrap();
        assert!(kubeforge_cluster::ClusterSpec::parse(request).is_ok());
        // Optional fields stay out.
        let body = parse(&PLACED).unwrap();
        assert_eq!(
            body["provider"],
            json!({"kind": "aws", "region": "eu-west-1", "subnet_id": "subnet-0abc", "ami": "ami-0def"})
        );
        assert_eq!(
            parse(&[
                "--provider",
                "aws",
                "--region",
                "eu-west-1",
                "--ami",
                "ami-0def"
            ])
            .unwrap_err(),
            "--provider aws needs --subnet-id"
        );
        assert_eq!(
            parse(&["--region", "eu-west-1"]).unwrap_err(),
            "--region is for --provider aws, not \"lab\""
        );
    }

    #[test]
    fn create_body_from_file() {
        let path = std::env::temp_dir().join(format!("kf-create-{}.json", std::process::id()));
        std::fs::write(
            &path,
            r#"{"kubernetes_version":"1.20.2","provider":{"kind":"ssh"}}"#,
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let args = |extra: &[&str]| {
            let mut argv = vec![
                "kf",
                "clusters",
                "create",
                "--file",
                file,
                "--version",
                "9.9",
            ];
            argv.extend(extra);
            match Cli::try_parse_from(argv).unwrap().cmd {
                Cmd::Clusters(ClustersCmd::Create(a)) => a,
                _ => panic!("wrong command"),
            }
        };
        let body = cluster_create_body(&args(&[])).unwrap();
        assert_eq!(
            body,
            json!({"kubernetes_version":"1.20.2","provider":{"kind":"ssh"}})
        );
        let body = cluster_create_body(&args(&["web"])).unwrap();
        assert_eq!(body["name"], "web");
        std::fs::remove_file(&path).unwrap();
    }

    fn pool_args(flags: &[&str]) -> NodePoolCreateArgs {
        let argv = ["kf", "nodepools", "create", "web", "gpu"]
            .iter()
            .chain(flags);
        let Cmd::Nodepools(NodePoolsCmd::Create(args)) = Cli::try_parse_from(argv).unwrap().cmd
        else {
            panic!("wrong command")
        };
        args
    }

    #[test]
    fn node_pool_body_shape() {
        let body = node_pool_body(&pool_args(&[
            "--machine-type",
            "large",
            "--min",
            "2",
            "--max",
            "5",
            "--label",
            "a=b",
            "--taint",
            "gpu=yes:NoSchedule",
        ]));
        assert_eq!(
            serde_json::to_value(body).unwrap(),
            json!({
                "name": "gpu", "machine_type": "large", "size": 2,
                "autoscaling": {"min": 2, "max": 5, "priority": 0},
                "labels": {"a": "b"},
                "taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]
            })
        );
        let body = node_pool_body(&pool_args(&[
            "--machine-type",
            "m5.large",
            "--alternative-machine-type",
            "m5a.large",
            "--alternative-machine-type",
            "m6i.large",
        ]));
        assert_eq!(
            serde_json::to_value(body).unwrap()["alternative_machine_types"],
            json!(["m5a.large", "m6i.large"])
        );
        let body = node_pool_body(&pool_args(&[
            "--min",
            "0",
            "--max",
            "3",
            "--priority",
            "-2",
        ]));
        assert_eq!(
            serde_json::to_value(body.autoscaling).unwrap(),
            json!({"min": 0, "max": 3, "priority": -2})
        );
        let no_bounds = ["kf", "nodepools", "create", "web", "gpu", "--priority", "1"];
        assert!(
            Cli::try_parse_from(no_bounds).is_err(),
            "--priority needs --min"
        );
    }

    #[test]
    fn autoscaler_flags_become_partial_settings() {
        let cli = Cli::try_parse_from([
            "kf",
            "clusters",
            "create",
            "web",
            "--autoscaler",
            "mode=off",
            "--autoscaler",
            "scale_down_utilization_threshold=0.7",
            "--autoscaler",
            "batch_max_seconds=30",
        ])
        .unwrap();
        let Cmd::Clusters(ClustersCmd::Create(args)) = cli.cmd else {
            panic!("wrong command")
        };
        let body = cluster_create_body(&args).unwrap();
        assert_eq!(
            body["autoscaler"],
            json!({"mode": "off", "scale_down_utilization_threshold": 0.7, "batch_max_seconds": 30})
        );
        let request: CreateClusterRequest = serde_json::from_value(body).unwrap();
        let spec = kubeforge_cluster::ClusterSpec::parse(request).unwrap();
        assert_eq!(
            (
                spec.autoscaler.batch_max_seconds,
                spec.autoscaler.batch_idle_seconds
            ),
            (30, 1)
        );
        for bad in [
            "mode",
            "colour=red",
            "batch_max_seconds=-1",
            "batch_max_seconds=ten",
            "scale_down_utilization_threshold=NaN",
        ] {
            assert!(parse_autoscaler_setting(bad).is_err(), "{bad}");
        }
        // No flag, no field: the service's defaults apply.
        let cli = Cli::try_parse_from(["kf", "clusters", "create", "web"]).unwrap();
        let Cmd::Clusters(ClustersCmd::Create(args)) = cli.cmd else {
            panic!("wrong command")
        };
        assert!(cluster_create_body(&args)
            .unwrap()
            .get("autoscaler")
            .is_none());
    }

    #[tokio::test]
    async fn update_patches_only_the_settings_named() {
        let answer = ClusterAccepted {
            cluster: cluster_view(1, "web"),
            operation: operation_view(8, "cluster_update"),
        };
        let (url, server) = serve(vec![ok_json(&answer)]).await;
        let cli = Cli::try_parse_from([
            "kf",
            "clusters",
            "update",
            "web",
            "--autoscaler",
            "expander=priority",
            "--if-match",
            "\"e1\"",
        ])
        .unwrap();
        let Cmd::Clusters(cmd) = cli.cmd else {
            panic!("wrong command")
        };
        let mut out = Vec::new();
        run_clusters_to(&opts(&url, Output::Json), cmd, &mut out)
            .await
            .unwrap();
        let printed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(printed, serde_json::to_value(&answer).unwrap());
        let req = server.await.unwrap().remove(0);
        assert!(req.starts_with("PATCH /v1/clusters/web HTTP/1.1"), "{req}");
        assert!(req.to_ascii_lowercase().contains("if-match: \"e1\"\r\n"));
        let body: Value = serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body, json!({"autoscaler": {"expander": "priority"}}));
    }

    #[test]
    fn node_pool_body_drain_and_repair() {
        let body =
            |flags: &[&str]| serde_json::to_value(node_pool_body(&pool_args(flags))).unwrap();
        let b = body(&["--drain-timeout", "0", "--repair-after", "600"]);
        assert_eq!(b["drain_timeout_seconds"], 0);
        assert_eq!(
            b["auto_repair"],
            json!({"enabled": true, "after_seconds": 600})
        );
        let b = body(&["--no-auto-repair"]);
        assert_eq!(
            b["auto_repair"],
            json!({"enabled": false, "after_seconds": 300})
        );
        assert!(b.get("drain_timeout_seconds").is_none());
        let b = body(&[]);
        assert!(b.get("auto_repair").is_none());
        assert_eq!(
            b,
            json!({"name": "gpu", "machine_type": "small", "size": 1, "labels": {}, "taints": []})
        );
        let argv = [
            "kf",
            "nodepools",
            "create",
            "web",
            "gpu",
            "--no-auto-repair",
            "--repair-after",
            "60",
        ];
        assert!(Cli::try_parse_from(argv).is_err(), "conflicting flags");
    }

    fn opts(url: &str, output: Output) -> ClientOpts {
        ClientOpts {
            url: url.into(),
            token: Some("tok".into()),
            output,
        }
    }

    /// Serves one canned HTTP/1.1 response per entry, in order, and
    /// returns the raw requests it saw.
    async fn serve(responses: Vec<String>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let mut requests = Vec::new();
            for response in responses {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = sock.read(&mut buf).await.unwrap();
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                requests.push(String::from_utf8_lossy(&req).to_string());
                sock.write_all(response.as_bytes()).await.unwrap();
                sock.shutdown().await.unwrap();
            }
            requests
        });
        (url, handle)
    }

    fn response(status: &str, content_type: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn api_error_is_formatted() {
        let problem = r#"{"type":"about:blank","title":"Invalid","status":422,"code":"validation_failed","detail":"pod_cidr overlaps service_cidr","field":"network.pod_cidr","retryable":false}"#;
        let (url, server) = serve(vec![response(
            "422 Unprocessable Entity",
            "application/problem+json",
            problem,
        )])
        .await;
        let cli = Cli::try_parse_from([
            "kf",
            "clusters",
            "create",
            "web",
            "--idempotency-key",
            "k-1",
        ])
        .unwrap();
        let Cmd::Clusters(cmd) = cli.cmd else {
            panic!("wrong command")
        };
        let mut out = Vec::new();
        let err = run_clusters_to(&opts(&url, Output::Table), cmd, &mut out)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "error: Invalid (422 validation_failed)\n\
             detail: pod_cidr overlaps service_cidr\n\
             field: network.pod_cidr\n\
             hint: correct network.pod_cidr and send the request again"
        );
        assert!(out.is_empty());
        let requests = server.await.unwrap();
        let req = requests[0].to_ascii_lowercase();
        assert!(req.starts_with("post /v1/clusters http/1.1\r\n"), "{req}");
        assert!(req.contains("authorization: bearer tok\r\n"));
        assert!(req.contains("idempotency-key: k-1\r\n"));
        assert!(req.contains(r#""name":"web""#));
    }

    fn no_wait() -> WaitArgs {
        WaitArgs {
            wait: false,
            no_wait: true,
            timeout: Duration::from_secs(60),
        }
    }

    fn at(t: &str) -> DateTime<Utc> {
        t.parse().unwrap()
    }

    fn cluster_view(n: u128, name: &str) -> ClusterView {
        ClusterView {
            id: Uuid::from_u128(n),
            name: name.into(),
            tenant: "acme".into(),
            kubernetes_version: "1.20.2".into(),
            provider: ProviderSpec::Lab {},
            control_plane: ControlPlaneView {
                replicas: 1,
                machine_type: "small".into(),
            },
            network: NetworkView {
                pod_cidr: "10.244.0.0/16".into(),
                service_cidr: "10.96.0.0/12".into(),
            },
            labels: BTreeMap::new(),
            deletion_protection: false,
            autoscaler: kubeforge_cluster::AutoscalerSettings::default(),
            phase: Phase::Provisioning,
            conditions: Vec::new(),
            node_pools: Vec::new(),
            endpoint: None,
            certificates: json!({}),
            generation: 1,
            observed_generation: 0,
            etag: "\"1\"".into(),
            created_at: at("2024-05-01T10:00:00Z"),
            updated_at: at("2024-05-01T10:00:00.250Z"),
        }
    }

    fn operation_view(n: u128, type_: &str) -> OperationView {
        OperationView {
            id: Uuid::from_u128(n),
            cluster: Uuid::from_u128(1),
            node_pool: None,
            type_: type_.into(),
            state: "pending".into(),
            steps: vec![Step {
                name: "finalize".into(),
                state: "pending".into(),
                message: None,
                started_at: None,
                finished_at: None,
                error: None,
            }],
            error: None,
            created_at: at("2024-05-01T10:00:00.123456Z"),
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn a_pools_alternatives_follow_its_machine_type() {
        let mut p = pool_view("gpu", 1, 1, "g4dn.xlarge");
        assert_eq!(machine_types(&p), "g4dn.xlarge");
        p.alternative_machine_types = vec!["g4dn.2xlarge".into(), "p3.2xlarge".into()];
        assert_eq!(machine_types(&p), "g4dn.xlarge|g4dn.2xlarge|p3.2xlarge");
    }

    fn pool_view(name: &str, size: u32, ready: u32, machine_type: &str) -> NodePoolView {
        NodePoolView {
            id: Uuid::from_u128(9),
            cluster: Uuid::from_u128(1),
            name: name.into(),
            machine_type: machine_type.into(),
            alternative_machine_types: Vec::new(),
            size,
            autoscaling: None,
            labels: BTreeMap::new(),
            host_selector: BTreeMap::new(),
            taints: Vec::new(),
            drain_timeout_seconds: 300,
            auto_repair: AutoRepair::default(),
            ready_nodes: ready,
            nodes: Vec::new(),
            phase: Phase::Ready,
            conditions: Vec::new(),
            generation: 1,
            observed_generation: 1,
            etag: "\"1\"".into(),
            created_at: at("2024-05-01T10:00:00Z"),
            updated_at: at("2024-05-01T10:00:00Z"),
        }
    }

    fn node_view(name: &str, machine: u128, address: Option<&str>, state: &str) -> NodeView {
        NodeView {
            name: name.into(),
            machine: Uuid::from_u128(machine),
            address: address.map(str::to_string),
            state: state.into(),
            machine_state: if state == "ready" {
                "running"
            } else {
                "pending"
            }
            .into(),
            unhealthy_since: None,
            unhealthy_reason: None,
        }
    }

    fn ok_json(v: &impl Serialize) -> String {
        response(
            "200 OK",
            "application/json",
            &serde_json::to_string(v).unwrap(),
        )
    }

    #[test]
    fn times_print_as_in_json() {
        for t in [
            "2024-05-01T10:00:00Z",
            "2024-05-01T10:00:00.250Z",
            "2024-05-01T10:00:00.123456Z",
            "2024-05-01T10:00:00.000000001Z",
        ] {
            let t = at(t);
            assert_eq!(serde_json::to_value(t).unwrap(), time(&t));
        }
    }

    #[tokio::test]
    async fn get_cluster_prints_table_and_json() {
        let mut cluster = cluster_view(1, "web");
        cluster.phase = Phase::Ready;
        cluster.control_plane.replicas = 3;
        cluster.endpoint = Some("https://10.0.0.5:6443".into());
        cluster.node_pools = vec![NodePoolSummary {
            name: "default".into(),
            machine_type: "small".into(),
            size: 2,
            ready_nodes: 1,
            phase: Phase::Provisioning,
        }];
        cluster.conditions = vec![Condition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            reason: "Up".into(),
            message: "all good".into(),
            last_transition: at("2024-05-01T10:05:00Z"),
        }];
        let (url, server) = serve(vec![ok_json(&cluster), ok_json(&cluster)]).await;
        let get = || ClustersCmd::Get {
            cluster: "web".into(),
        };
        let mut out = Vec::new();
        run_clusters_to(&opts(&url, Output::Table), get(), &mut out)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "NAME  {:36}  PHASE  VERSION  CP  NODES  ENDPOINT               CREATED\n\
                 web   {}  ready  1.20.2   3   1/2    https://10.0.0.5:6443  2024-05-01T10:00:00Z\n\
                 \n\
                 NODE POOL  READY  MACHINE TYPE  PHASE\n\
                 default    1/2    small         provisioning\n\
                 \n\
                 CONDITION  STATUS  REASON  MESSAGE\n\
                 Ready      True    Up      all good\n",
                "ID", cluster.id
            )
        );
        let mut out = Vec::new();
        run_clusters_to(&opts(&url, Output::Json), get(), &mut out)
            .await
            .unwrap();
        // The server's JSON, pretty-printed with its keys sorted.
        let sent = serde_json::to_value(&cluster).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}\n", serde_json::to_string_pretty(&sent).unwrap())
        );
        let requests = server.await.unwrap();
        assert!(requests[0].starts_with("GET /v1/clusters/web HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn list_all_follows_page_tokens() {
        let a = cluster_view(1, "a");
        let b = cluster_view(2, "b");
        let (url, server) = serve(vec![
            ok_json(&Page {
                items: vec![a.clone()],
                next_page_token: Some("p 2".into()),
            }),
            ok_json(&Page {
                items: vec![b.clone()],
                next_page_token: None,
            }),
        ])
        .await;
        let cmd = ClustersCmd::List {
            phase: Some("provisioning".into()),
            labels: vec![("team".into(), "web".into())],
            limit: Some(1),
            page_token: None,
            all: true,
        };
        let mut out = Vec::new();
        run_clusters_to(&opts(&url, Output::Table), cmd, &mut out)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "NAME  {:36}  PHASE         VERSION  CP  NODES  ENDPOINT  CREATED\n\
                 a     {}  provisioning  1.20.2   1   0/0    -         2024-05-01T10:00:00Z\n\
                 b     {}  provisioning  1.20.2   1   0/0    -         2024-05-01T10:00:00Z\n",
                "ID", a.id, b.id
            )
        );
        let requests = server.await.unwrap();
        assert!(requests[0]
            .starts_with("GET /v1/clusters?phase=provisioning&label=team%3Dweb&limit=1 HTTP/1.1"));
        assert!(requests[1].starts_with(
            "GET /v1/clusters?phase=provisioning&label=team%3Dweb&page_token=p+2&limit=1 HTTP/1.1"
        ));
    }

    #[tokio::test]
    async fn delete_prints_operation() {
        let op = operation_view(7, "cluster_delete");
        let (url, server) = serve(vec![response(
            "202 Accepted",
            "application/json",
            &serde_json::to_string(&OperationAccepted {
                operation: op.clone(),
            })
            .unwrap(),
        )])
        .await;
        let cmd = ClustersCmd::Delete {
            cluster: "web".into(),
            if_match: Some("\"e1\"".into()),
            wait: no_wait(),
        };
        let mut out = Vec::new();
        run_clusters_to(&opts(&url, Output::Table), cmd, &mut out)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "{:36}  TYPE            STATE\n{}  cluster_delete  pending\n",
                "OPERATION", op.id
            )
        );
        let req = server.await.unwrap().remove(0);
        assert!(req.starts_with("DELETE /v1/clusters/web HTTP/1.1"));
        assert!(req.to_ascii_lowercase().contains("if-match: \"e1\"\r\n"));
    }

    #[tokio::test]
    async fn scale_prints_pool_and_operation() {
        let answer = NodePoolAccepted {
            node_pool: pool_view("default", 4, 2, "small"),
            operation: operation_view(8, "node_pool_update"),
        };
        let (url, server) = serve(vec![ok_json(&answer), ok_json(&answer)]).await;
        let scale = || NodePoolsCmd::Scale {
            cluster: "web".into(),
            pool: "default".into(),
            size: 4,
            if_match: None,
            wait: no_wait(),
        };
        let mut out = Vec::new();
        run_nodepools_to(&opts(&url, Output::Table), scale(), &mut out)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "NAME     READY  MACHINE TYPE  AUTOSCALING  PHASE\n\
                 default  2/4    small         off          ready\n\
                 \n\
                 {:36}  TYPE              STATE\n\
                 {}  node_pool_update  pending\n",
                "OPERATION", answer.operation.id
            )
        );
        let mut out = Vec::new();
        run_nodepools_to(&opts(&url, Output::Json), scale(), &mut out)
            .await
            .unwrap();
        let printed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(printed, serde_json::to_value(&answer).unwrap());
        let requests = server.await.unwrap();
        assert!(requests[0].starts_with("PATCH /v1/clusters/web/node-pools/default HTTP/1.1"));
        let body: Value =
            serde_json::from_str(requests[0].split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body, json!({"size": 4}));
    }

    #[tokio::test]
    async fn nodepools_list_table() {
        let mut default = pool_view("default", 3, 2, "small");
        default.autoscaling = Some(Autoscaling {
            min: 1,
            max: 5,
            priority: 0,
        });
        default.phase = Phase::Provisioning;
        let gpu = pool_view("gpu", 1, 1, "large");
        let (url, _server) = serve(vec![ok_json(&Items {
            items: vec![default, gpu],
        })])
        .await;
        let mut out = Vec::new();
        let cmd = NodePoolsCmd::List {
            cluster: "web".into(),
        };
        run_nodepools_to(&opts(&url, Output::Table), cmd, &mut out)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME     READY  MACHINE TYPE  AUTOSCALING  PHASE\n\
             default  2/3    small         1-5          provisioning\n\
             gpu      1/1    large         off          ready\n"
        );
    }

    #[tokio::test]
    async fn nodepools_get_shows_nodes() {
        let mut pool = pool_view("default", 2, 1, "small");
        pool.phase = Phase::Provisioning;
        pool.nodes = vec![
            node_view("web-default-a", 11, Some("10.0.0.7"), "ready"),
            node_view("web-default-b", 12, None, "provisioning"),
        ];
        let (url, _server) = serve(vec![ok_json(&pool)]).await;
        let mut out = Vec::new();
        let cmd = NodePoolsCmd::Get {
            cluster: "web".into(),
            pool: "default".into(),
        };
        run_nodepools_to(&opts(&url, Output::Table), cmd, &mut out)
            .await
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with(
                "NAME     READY  MACHINE TYPE  AUTOSCALING  PHASE\n\
                 default  1/2    small         off          provisioning\n"
            ),
            "{out}"
        );
        assert!(out.contains("ready         running"), "{out}");
        assert!(out.contains("provisioning  pending"), "{out}");
    }

    #[tokio::test]
    async fn a_wait_rides_out_a_service_hiccup_but_not_a_refusal() {
        std::env::set_var("KUBEFORGE_POLL_MS", "50");
        let running = operation_view(7, "node_pool_update");
        let mut done = running.clone();
        done.state = "succeeded".into();
        done.steps[0].state = "succeeded".into();
        let unavailable = response(
            "503 Service Unavailable",
            "application/problem+json",
            r#"{"title":"Unavailable","status":503,"code":"unavailable","detail":"db","retryable":true}"#,
        );
        let (url, server) = serve(vec![unavailable, ok_json(&done)]).await;
        let api = Api::new(&opts(&url, Output::Table)).unwrap();
        let mut progress = Vec::new();
        let op = wait_for(&api, &running, Duration::from_secs(30), &mut progress)
            .await
            .unwrap();
        assert_eq!(op.state, "succeeded");
        let progress = String::from_utf8(progress).unwrap();
        assert!(
            progress.contains(
                "reading the operation failed (error: Unavailable (503 unavailable)); retrying"
            ),
            "{progress}"
        );
        assert!(progress.contains("] finalize: succeeded"), "{progress}");
        let requests = server.await.unwrap();
        assert!(requests
            .iter()
            .all(|r| r.starts_with(&format!("GET /v1/operations/{} ", running.id))));

        let not_found = response(
            "404 Not Found",
            "application/problem+json",
            r#"{"title":"Not Found","status":404,"code":"not_found","detail":"gone","retryable":false}"#,
        );
        let (url, _server) = serve(vec![not_found]).await;
        let api = Api::new(&opts(&url, Output::Table)).unwrap();
        let err = wait_for(&api, &running, Duration::from_secs(30), &mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), EXIT_NOT_FOUND);
    }

    #[tokio::test]
    async fn an_answer_of_the_wrong_shape_is_an_error() {
        let (url, _server) = serve(vec![response(
            "200 OK",
            "application/json",
            r#"{"name":"web"}"#,
        )])
        .await;
        let mut out = Vec::new();
        let cmd = ClustersCmd::Get {
            cluster: "web".into(),
        };
        let err = run_clusters_to(&opts(&url, Output::Table), cmd, &mut out)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("unexpected answer from ") && err.contains("missing field"),
            "{err}"
        );
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn kubeconfig_is_written_unchanged() {
        let yaml = "apiVersion: v1\nkind: Config\nclusters: []\n";
        let (url, server) = serve(vec![response("200 OK", "application/yaml", yaml)]).await;
        let cli = Cli::try_parse_from([
            "kf",
            "kubeconfig",
            "web",
            "--role",
            "viewer",
            "--ttl",
            "30m",
        ])
        .unwrap();
        let Cmd::Kubeconfig(args) = cli.cmd else {
            panic!("wrong command")
        };
        let mut out = Vec::new();
        run_kubeconfig_to(&opts(&url, Output::Json), args, &mut out)
            .await
            .unwrap();
        assert_eq!(out, yaml.as_bytes());
        let req = server.await.unwrap().remove(0);
        assert!(req.starts_with("POST /v1/clusters/web/kubeconfig HTTP/1.1"));
        let body: Value = serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body, json!({"role": "viewer", "ttl_seconds": 1800}));
    }

    #[tokio::test]
    async fn refuses_bad_input_before_sending() {
        let mut out = Vec::new();
        let no_token = ClientOpts {
            token: None,
            ..opts("http://127.0.0.1:1", Output::Table)
        };
        let err = run_clusters_to(
            &no_token,
            ClustersCmd::Get {
                cluster: "web".into(),
            },
            &mut out,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no token: set KUBEFORGE_TOKEN or pass --token"
        );

        for evil in ["../admin", "a/b", "..", "a?b", "a%2Fb", ""] {
            let cmd = ClustersCmd::Get {
                cluster: evil.into(),
            };
            let err = run_clusters_to(&opts("http://127.0.0.1:1", Output::Table), cmd, &mut out)
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("only letters, digits"),
                "{evil:?}: {err}"
            );
        }
        let err = run_clusters_to(
            &opts("ftp://x", Output::Table),
            ClustersCmd::Get {
                cluster: "w".into(),
            },
            &mut out,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().starts_with("invalid --url \"ftp://x\""));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn connection_error_names_the_url() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = format!("http://{addr}/prefix/");
        let mut out = Vec::new();
        let err = run_clusters_to(
            &opts(&url, Output::Table),
            ClustersCmd::Get {
                cluster: "web".into(),
            },
            &mut out,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(&format!(
                "cannot reach the Kubeforge API at http://{addr}/prefix/v1/clusters/web: "
            )),
            "{err}"
        );
    }
}
