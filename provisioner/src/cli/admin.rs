//! Platform administration from the command line: `kubeforge hosts
//! register|list|delete` (the machines the `ssh` provider hands out) and
//! `kubeforge quotas get|set` (what a tenant may have). The service
//! refuses these to anyone but a platform admin; the same guarantees as
//! the other client commands hold ([`super::client`]).
//!
//! A host's SSH credential is read from a file (`--private-key-file` or
//! `--password-file`), never from the command line, where it would show
//! in the process list and the shell's history.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use kubeforge_cluster::api::{
    CreateHostRequest, HostCreated, HostCredentials, HostView, Items, Quota, QuotaView,
};
use reqwest::header::HeaderMap;
use reqwest::Method;

use super::client::{
    emit, parse_label, text, time, write_stdout, Api, ClientOpts, Output, Table, NO_BODY,
};

/// `kubeforge hosts ...` (platform-admin).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum HostsCmd {
    /// Register a host the `ssh` provider may claim for clusters.
    #[command(
        visible_alias = "create",
        after_help = "Examples:\n  kubeforge hosts register --address 10.0.0.21 \
                      --private-key-file ~/.ssh/kf_hosts \\\n      \
                      --host-key \"$(cut -d' ' -f2- /etc/ssh/ssh_host_ed25519_key.pub)\" --label rack=a"
    )]
    Register(HostRegisterArgs),
    /// List registered hosts and which cluster holds each.
    List,
    /// Remove a host that no cluster holds.
    Delete {
        /// Host id.
        host: String,
    },
}

/// Flags of `kubeforge hosts register`.
#[derive(Debug, Clone, clap::Args)]
pub struct HostRegisterArgs {
    /// The host's address (IP or DNS name).
    #[arg(long)]
    pub address: String,
    /// SSH port.
    #[arg(long, default_value_t = 22)]
    pub port: u16,
    /// SSH user.
    #[arg(long, default_value = "root")]
    pub user: String,
    /// A file holding the SSH private key (OpenSSH PEM).
    #[arg(long, value_name = "PATH", required_unless_present = "password_file")]
    pub private_key_file: Option<PathBuf>,
    /// A file holding the SSH password (first line).
    #[arg(long, value_name = "PATH", conflicts_with = "private_key_file")]
    pub password_file: Option<PathBuf>,
    /// The host's public key as `TYPE BASE64` (known_hosts form), pinned.
    #[arg(long)]
    pub host_key: String,
    /// Host label as key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// What the host offers, as resource=quantity (repeatable: cpu=8,
    /// memory=32Gi, nvidia.com/gpu=2; cpu and memory together). Left out,
    /// the service measures cpu and memory on first contact.
    #[arg(long = "capacity", value_name = "RESOURCE=QUANTITY", value_parser = parse_label)]
    pub capacity: Vec<(String, String)>,
}

/// `kubeforge quotas ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum QuotasCmd {
    /// Show a tenant's quota and what it uses (platform-admin).
    Get {
        /// Tenant id.
        tenant: String,
    },
    /// Set a tenant's quota (platform-admin); a bound not given keeps its
    /// value.
    #[command(
        after_help = "Examples:\n  kubeforge quotas set acme --max-clusters 10 --max-nodes 50 --max-cpus 200"
    )]
    Set {
        /// Tenant id.
        tenant: String,
        /// Most live clusters.
        #[arg(long, required_unless_present_any = ["max_nodes", "max_cpus"])]
        max_clusters: Option<i32>,
        /// Most worker nodes, summed over pools' sizes and autoscaling maxima.
        #[arg(long)]
        max_nodes: Option<i32>,
        /// Most vCPUs: the worker nodes weighted by their machine type's
        /// vCPUs, plus the control planes' members.
        #[arg(long)]
        max_cpus: Option<i32>,
    },
}

/// Runs a `hosts` subcommand.
pub async fn run_hosts(opts: &ClientOpts, cmd: HostsCmd) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    run_hosts_to(opts, cmd, &mut buf).await?;
    write_stdout(&buf)
}

/// [`run_hosts`], writing to `out`.
pub async fn run_hosts_to(
    opts: &ClientOpts,
    cmd: HostsCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let api = Api::new(opts)?;
    match cmd {
        HostsCmd::Register(args) => {
            let body = host_body(&args)?;
            let url = api.url(&["hosts"])?;
            let created: HostCreated = api
                .call(Method::POST, url, HeaderMap::new(), Some(&body))
                .await?;
            if !emit(out, opts.output, &created)? {
                host_table([&created.host]).write(out)?;
            }
        }
        HostsCmd::List => {
            let url = api.url(&["hosts"])?;
            let list: Items<HostView> = api
                .call(Method::GET, url, HeaderMap::new(), NO_BODY)
                .await?;
            if !emit(out, opts.output, &list)? {
                host_table(&list.items).write(out)?;
            }
        }
        HostsCmd::Delete { host } => {
            let url = api.url(&["hosts", &host])?;
            api.send(Method::DELETE, url, HeaderMap::new(), NO_BODY)
                .await?;
            match opts.output {
                Output::Name => writeln!(out, "host/{}", text(&host))?,
                Output::Json => writeln!(out, "{}", serde_json::json!({"deleted": host}))?,
                Output::Yaml => writeln!(out, "deleted: '{host}'")?,
                Output::Table => writeln!(out, "host {} deleted", text(&host))?,
            }
        }
    }
    Ok(())
}

/// The register body, the credential read from its file.
fn host_body(args: &HostRegisterArgs) -> anyhow::Result<CreateHostRequest> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let credentials = match (&args.private_key_file, &args.password_file) {
        (Some(p), _) => HostCredentials::PrivateKey(read(p)?),
        (None, Some(p)) => {
            HostCredentials::Password(read(p)?.lines().next().unwrap_or_default().to_string())
        }
        (None, None) => anyhow::bail!("give --private-key-file or --password-file"),
    };
    Ok(CreateHostRequest {
        address: args.address.clone(),
        port: args.port,
        user: args.user.clone(),
        credentials,
        host_key: args.host_key.trim().to_string(),
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        capacity: (!args.capacity.is_empty())
            .then(|| args.capacity.iter().cloned().collect::<BTreeMap<_, _>>()),
    })
}

fn host_table<'a>(hosts: impl IntoIterator<Item = &'a HostView>) -> Table {
    let mut t = Table::new(&[
        "ID",
        "ADDRESS",
        "USER",
        "CREDENTIAL",
        "CLAIMED BY",
        "LABELS",
        "CREATED",
    ]);
    for h in hosts {
        let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.row(vec![
            h.id.to_string(),
            format!("{}:{}", h.address, h.port),
            text(&h.user),
            text(&h.credential_kind),
            h.claimed_by.map_or_else(|| "-".into(), |c| c.to_string()),
            text(&labels.join(",")),
            time(&h.created_at),
        ]);
    }
    t
}

/// Runs a `quotas` subcommand.
pub async fn run_quotas(opts: &ClientOpts, cmd: QuotasCmd) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    run_quotas_to(opts, cmd, &mut buf).await?;
    write_stdout(&buf)
}

/// [`run_quotas`], writing to `out`.
pub async fn run_quotas_to(
    opts: &ClientOpts,
    cmd: QuotasCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let api = Api::new(opts)?;
    let view = match cmd {
        QuotasCmd::Get { tenant } => {
            let url = api.url(&["tenants", &tenant, "quota"])?;
            api.call::<QuotaView, _>(Method::GET, url, HeaderMap::new(), NO_BODY)
                .await?
        }
        QuotasCmd::Set {
            tenant,
            max_clusters,
            max_nodes,
            max_cpus,
        } => {
            let url = api.url(&["tenants", &tenant, "quota"])?;
            // PUT takes every bound: one not given keeps its value.
            let body = match (max_clusters, max_nodes, max_cpus) {
                (Some(max_clusters), Some(max_nodes), Some(max_cpus)) => Quota {
                    max_clusters,
                    max_nodes,
                    max_cpus,
                },
                _ => {
                    let now: QuotaView = api
                        .call(Method::GET, url.clone(), HeaderMap::new(), NO_BODY)
                        .await?;
                    Quota {
                        max_clusters: max_clusters.unwrap_or(now.max_clusters),
                        max_nodes: max_nodes.unwrap_or(now.max_nodes),
                        max_cpus: max_cpus.unwrap_or(now.max_cpus),
                    }
                }
            };
            api.call::<QuotaView, _>(Method::PUT, url, HeaderMap::new(), Some(&body))
                .await?
        }
    };
    if emit(out, opts.output, &view)? {
        return Ok(());
    }
    let mut t = Table::new(&["TENANT", "CLUSTERS", "NODES", "VCPUS"]);
    t.row(vec![
        text(&view.tenant),
        format!("{}/{}", view.clusters, view.max_clusters),
        format!("{}/{}", view.nodes, view.max_nodes),
        format!("{}/{}", view.cpus, view.max_cpus),
    ]);
    t.write(out)?;
    Ok(())
}
