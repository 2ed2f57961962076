//! `kubeforge operations get|list|wait`, `kubeforge events list
//! [--follow]` and `kubeforge machines list`: what the service did and is
//! doing to a cluster. The same guarantees as the other client commands
//! ([`super::client`]).
//!
//! `events list` prints a page oldest first (the API pages newest first),
//! so the latest line is the last one, as in a log. `--follow` then polls
//! and prints each new event as one line (`-o json`: one compact JSON
//! document per line; `-o yaml`: one `---` document each) until it is
//! interrupted, or, with `--operation ID`, until that operation ends: its
//! result is the command's (a failed operation exits with the
//! operation-failed code).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use kubeforge_cluster::api::{EventView, Items, MachineView, NodePoolView, OperationView, Page};
use reqwest::header::HeaderMap;
use reqwest::Method;

use super::client::{
    emit, opt_text, sanitize, text, time, write_stdout, Api, ClientError, ClientOpts, Output,
    Table, NO_BODY,
};
use super::output::write_yaml;
use super::wait::{get_operation, operation_failed, poll_interval, wait_for};

/// `kubeforge operations ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum OperationsCmd {
    /// Show one operation and its steps.
    Get {
        /// Operation id.
        operation: String,
    },
    /// List a cluster's operations.
    List {
        /// Cluster name or id.
        cluster: String,
    },
    /// Wait for an operation to end, printing its steps on stderr; then
    /// print it. Exits non-zero if it failed or the wait timed out.
    #[command(after_help = "Examples:\n  kubeforge operations wait 0190f3c2-…\n  \
                            kubeforge operations wait $OP --timeout 10m -o json")]
    Wait {
        /// Operation id.
        operation: String,
        /// Longest wait, e.g. 10m, 1h.
        #[arg(long, default_value = "30m", value_parser = super::client::parse_ttl)]
        timeout: Duration,
    },
}

/// `kubeforge events ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EventsCmd {
    /// List a cluster's events, oldest first; --follow keeps printing new ones.
    #[command(after_help = "Examples:\n  kubeforge events list web\n  \
                            kubeforge events list web --follow\n  \
                            kubeforge events list web --follow --operation $OP\n  \
                            kubeforge events list web --all -o json")]
    List {
        /// Cluster name or id.
        cluster: String,
        /// Page size (the newest events first).
        #[arg(long)]
        limit: Option<u32>,
        /// Start from this page (a `next_page_token` of an earlier answer).
        #[arg(long, conflicts_with = "follow")]
        page_token: Option<String>,
        /// Follow page tokens and list every event.
        #[arg(long, conflicts_with = "follow")]
        all: bool,
        /// Keep polling and print new events until interrupted (Ctrl-C).
        #[arg(long, short = 'f')]
        follow: bool,
        /// With --follow: stop when this operation ends (exit non-zero if
        /// it failed).
        #[arg(long, requires = "follow")]
        operation: Option<String>,
    },
}

/// `kubeforge machines ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MachinesCmd {
    /// List a cluster's machines (control plane and workers).
    List {
        /// Cluster name or id.
        cluster: String,
    },
}

/// Runs an `operations` subcommand.
pub async fn run_operations(opts: &ClientOpts, cmd: OperationsCmd) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    run_operations_to(opts, cmd, &mut buf).await?;
    write_stdout(&buf)
}

/// [`run_operations`], writing to `out`.
pub async fn run_operations_to(
    opts: &ClientOpts,
    cmd: OperationsCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let api = Api::new(opts)?;
    match cmd {
        OperationsCmd::Get { operation } => {
            let op = get_operation(&api, &operation).await?;
            print_operation(out, opts.output, &op)?;
        }
        OperationsCmd::List { cluster } => {
            let url = api.url(&["clusters", &cluster, "operations"])?;
            let list: Items<OperationView> = api
                .call(Method::GET, url, HeaderMap::new(), NO_BODY)
                .await?;
            print_operation_list(out, opts.output, &list)?;
        }
        OperationsCmd::Wait { operation, timeout } => {
            let op = get_operation(&api, &operation).await?;
            let op = wait_for(&api, &op, timeout, &mut std::io::stderr()).await?;
            print_operation(out, opts.output, &op)?;
        }
    }
    Ok(())
}

/// The step an operation is at: the running one, else the first pending;
/// `-` once it has ended.
fn current_step(op: &OperationView) -> String {
    if !matches!(op.state.as_str(), "pending" | "running") {
        return "-".into();
    }
    op.steps
        .iter()
        .find(|s| s.state == "running")
        .or_else(|| op.steps.iter().find(|s| s.state == "pending"))
        .map_or_else(|| "-".into(), |s| text(&s.name))
}

fn operation_table<'a>(ops: impl IntoIterator<Item = &'a OperationView>) -> Table {
    let mut t = Table::new(&[
        "ID", "TYPE", "STATE", "STEP", "CREATED", "FINISHED", "ERROR",
    ]);
    for op in ops {
        t.row(vec![
            op.id.to_string(),
            text(&op.type_),
            text(&op.state),
            current_step(op),
            time(&op.created_at),
            op.finished_at.as_ref().map_or_else(|| "-".into(), time),
            op.error
                .as_ref()
                .map_or_else(|| "-".into(), |e| format!("{}: {}", e.code, e.message)),
        ]);
    }
    t
}

/// Prints an operation and its steps.
pub fn print_operation(
    out: &mut impl Write,
    format: Output,
    op: &OperationView,
) -> std::io::Result<()> {
    if emit(out, format, op)? {
        return Ok(());
    }
    operation_table([op]).write(out)?;
    if !op.steps.is_empty() {
        writeln!(out)?;
        let mut t = Table::new(&["STEP", "STATE", "STARTED", "FINISHED", "MESSAGE"]);
        for s in &op.steps {
            let message = match (&s.message, &s.error) {
                (_, Some(e)) => format!("{}: {}", e.code, e.message),
                (Some(m), None) => m.clone(),
                (None, None) => String::new(),
            };
            t.row(vec![
                text(&s.name),
                text(&s.state),
                s.started_at.as_ref().map_or_else(|| "-".into(), time),
                s.finished_at.as_ref().map_or_else(|| "-".into(), time),
                text(&message),
            ]);
        }
        t.write(out)?;
    }
    Ok(())
}

/// Prints a cluster's operations.
pub fn print_operation_list(
    out: &mut impl Write,
    format: Output,
    list: &Items<OperationView>,
) -> std::io::Result<()> {
    if emit(out, format, list)? {
        return Ok(());
    }
    operation_table(&list.items).write(out)
}

// ---------------------------------------------------------------------------
// Events

/// Runs an `events` subcommand. `--follow` writes as events arrive.
pub async fn run_events(opts: &ClientOpts, cmd: EventsCmd) -> anyhow::Result<()> {
    let EventsCmd::List {
        cluster,
        limit,
        page_token,
        all,
        follow,
        operation,
    } = cmd;
    let api = Api::new(opts)?;
    if follow {
        let mut stdout = std::io::stdout();
        return follow_events(
            &api,
            opts.output,
            &cluster,
            limit,
            operation.as_deref(),
            &mut stdout,
        )
        .await;
    }
    let page = list_events(&api, &cluster, limit, page_token, all).await?;
    let mut buf = Vec::new();
    print_event_page(&mut buf, opts.output, &page)?;
    write_stdout(&buf)
}

/// Safety net against a server that keeps handing out page tokens.
const MAX_PAGES: usize = 10_000;

async fn event_page(
    api: &Api,
    cluster: &str,
    limit: Option<u32>,
    page_token: Option<&str>,
) -> Result<Page<EventView>, ClientError> {
    let mut url = api.url(&["clusters", cluster, "events"])?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(t) = page_token {
            q.append_pair("page_token", t);
        }
        if let Some(l) = limit {
            q.append_pair("limit", &l.to_string());
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    api.call(Method::GET, url, HeaderMap::new(), NO_BODY).await
}

/// One page of events, or (`all`) every page joined, newest first.
pub(crate) async fn list_events(
    api: &Api,
    cluster: &str,
    limit: Option<u32>,
    mut page_token: Option<String>,
    all: bool,
) -> Result<Page<EventView>, ClientError> {
    let mut items = Vec::new();
    for _ in 0..MAX_PAGES {
        let page = event_page(api, cluster, limit, page_token.as_deref()).await?;
        if !all {
            return Ok(page);
        }
        items.extend(page.items);
        match page.next_page_token.filter(|t| !t.is_empty()) {
            Some(t) if Some(&t) != page_token.as_ref() => page_token = Some(t),
            _ => {
                return Ok(Page {
                    items,
                    next_page_token: None,
                })
            }
        }
    }
    Err(ClientError::BadResponse {
        url: format!("events of {}", sanitize(cluster)),
        reason: format!("more than {MAX_PAGES} pages"),
    })
}

fn event_row(e: &EventView) -> Vec<String> {
    vec![
        time(&e.created_at),
        text(&e.type_),
        text(&e.reason),
        e.operation.map_or_else(|| "-".into(), |o| o.to_string()),
        text(&e.message),
    ]
}

const EVENT_HEADERS: [&str; 5] = ["TIME", "TYPE", "REASON", "OPERATION", "MESSAGE"];

/// Prints a page of events, oldest first in the table (JSON and YAML keep
/// the API's order).
pub fn print_event_page(
    out: &mut impl Write,
    format: Output,
    page: &Page<EventView>,
) -> std::io::Result<()> {
    if emit(out, format, page)? {
        return Ok(());
    }
    let mut t = Table::new(&EVENT_HEADERS);
    for e in page.items.iter().rev() {
        t.row(event_row(e));
    }
    t.write(out)?;
    if let Some(token) = page.next_page_token.as_deref().filter(|t| !t.is_empty()) {
        writeln!(out, "\nolder: --page-token {} (or --all)", sanitize(token))?;
    }
    Ok(())
}

/// One followed event, as the format wants it.
fn write_followed(out: &mut impl Write, format: Output, e: &EventView) -> std::io::Result<()> {
    match format {
        Output::Table => {
            let row = event_row(e);
            writeln!(
                out,
                "{}  {:<7}  {:<20}  {:<36}  {}",
                row[0], row[1], row[2], row[3], row[4]
            )?;
        }
        Output::Json => {
            let line = serde_json::to_string(e).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")?;
        }
        Output::Yaml => {
            writeln!(out, "---")?;
            write_yaml(out, e)?;
        }
        Output::Name => writeln!(out, "event/{}", e.id)?,
    }
    out.flush()
}

/// Events newer than `after`, oldest first (pages until it reaches one it
/// has seen).
async fn new_events(
    api: &Api,
    cluster: &str,
    limit: Option<u32>,
    after: i64,
) -> Result<Vec<EventView>, ClientError> {
    let mut fresh = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = event_page(api, cluster, limit, token.as_deref()).await?;
        let reached_seen = page.items.iter().any(|e| e.id <= after);
        fresh.extend(page.items.into_iter().filter(|e| e.id > after));
        match page.next_page_token.filter(|t| !t.is_empty()) {
            Some(t) if !reached_seen && Some(&t) != token.as_ref() => token = Some(t),
            _ => break,
        }
    }
    fresh.sort_by_key(|e| e.id);
    fresh.dedup_by_key(|e| e.id);
    Ok(fresh)
}

/// `events list --follow`: the latest page, then every new event as it
/// comes, until interrupted or `operation` ends.
pub(crate) async fn follow_events(
    api: &Api,
    format: Output,
    cluster: &str,
    limit: Option<u32>,
    operation: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let first = event_page(api, cluster, limit, None).await?;
    let mut last = i64::MIN;
    if format == Output::Table {
        writeln!(
            out,
            "{:<27}  {:<7}  {:<20}  {:<36}  {}",
            EVENT_HEADERS[0],
            EVENT_HEADERS[1],
            EVENT_HEADERS[2],
            EVENT_HEADERS[3],
            EVENT_HEADERS[4]
        )?;
    }
    for e in first.items.iter().rev() {
        write_followed(out, format, e)?;
        last = last.max(e.id);
    }
    loop {
        // Read the operation before the events: an operation seen ended
        // has written all its events by then, so the last poll shows them.
        let ended = match operation {
            Some(id) => {
                let op = get_operation(api, id).await?;
                match op.state.as_str() {
                    "succeeded" | "failed" => Some(op),
                    _ => None,
                }
            }
            None => None,
        };
        for e in new_events(api, cluster, limit, last).await? {
            write_followed(out, format, &e)?;
            last = last.max(e.id);
        }
        if let Some(op) = ended {
            if op.state == "failed" {
                return Err(operation_failed(&op).into());
            }
            return Ok(());
        }
        tokio::time::sleep(poll_interval()).await;
    }
}

// ---------------------------------------------------------------------------
// Machines

/// Runs a `machines` subcommand.
pub async fn run_machines(opts: &ClientOpts, cmd: MachinesCmd) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    run_machines_to(opts, cmd, &mut buf).await?;
    write_stdout(&buf)
}

/// [`run_machines`], writing to `out`.
pub async fn run_machines_to(
    opts: &ClientOpts,
    cmd: MachinesCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let MachinesCmd::List { cluster } = cmd;
    let api = Api::new(opts)?;
    let url = api.url(&["clusters", &cluster, "machines"])?;
    let list: Items<MachineView> = api
        .call(Method::GET, url, HeaderMap::new(), NO_BODY)
        .await?;
    if emit(out, opts.output, &list)? {
        return Ok(());
    }
    // Pools by id, so the table names them.
    let url = api.url(&["clusters", &cluster, "node-pools"])?;
    let pools: Items<NodePoolView> = api
        .call(Method::GET, url, HeaderMap::new(), NO_BODY)
        .await?;
    let names: HashMap<_, _> = pools.items.iter().map(|p| (p.id, p.name.clone())).collect();
    let mut t = Table::new(&[
        "NAME",
        "ROLE",
        "POOL",
        "MACHINE TYPE",
        "STATE",
        "ADDRESS",
        "CREATED",
        "LAST ERROR",
    ]);
    for m in &list.items {
        t.row(vec![
            text(&m.name),
            text(&m.role),
            m.node_pool.map_or_else(
                || "-".into(),
                |id| names.get(&id).cloned().unwrap_or_else(|| id.to_string()),
            ),
            text(&m.machine_type),
            text(&m.state),
            opt_text(m.address.as_deref()),
            time(&m.created_at),
            opt_text(m.last_error.as_deref()),
        ]);
    }
    t.write(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::admin::{HostsCmd, QuotasCmd};
    use clap::{CommandFactory, Parser};

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
        Operations(OperationsCmd),
        #[command(subcommand)]
        Events(EventsCmd),
        #[command(subcommand)]
        Machines(MachinesCmd),
        #[command(subcommand)]
        Hosts(HostsCmd),
        #[command(subcommand)]
        Quotas(QuotasCmd),
    }

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
        let parse =
            |args: &[&str]| Cli::try_parse_from(std::iter::once("kf").chain(args.iter().copied()));
        assert!(parse(&["events", "list", "web", "--operation", "x"]).is_err());
        assert!(parse(&["events", "list", "web", "--follow", "--all"]).is_err());
        assert!(parse(&[
            "events",
            "list",
            "web",
            "-f",
            "--operation",
            "x",
            "-o",
            "name"
        ])
        .is_ok());
        assert!(parse(&["hosts", "register", "--address", "a", "--host-key", "k"]).is_err());
        assert!(parse(&["quotas", "set", "acme"]).is_err());
        assert!(parse(&["quotas", "set", "acme", "--max-nodes", "3"]).is_ok());
        assert!(parse(&["quotas", "set", "acme", "--max-cpus", "64"]).is_ok());
    }
}
