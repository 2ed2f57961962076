//! How client commands print what they got: `-o table` (aligned columns,
//! for people), `-o json` and `-o yaml` (the answer serialized again, keys
//! sorted, for scripts) and `-o name` (one `kind/name` per line, for
//! shell loops: `cluster/web`, `nodepool/default`, `operation/<id>`).
//!
//! JSON and YAML go through one [`serde_json::Value`], so both show the
//! same document; YAML is written by serde-saphyr. Tables strip control
//! characters from server text ([`sanitize`]); so does `-o name`.

use std::io::Write;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use kubeforge_cluster::api::{
    AutoscalerStatusView, ClusterAccepted, ClusterView, CredentialsRevoked, EventView, HostCreated,
    HostView, Items, MachineTypeView, MachineView, NodePoolAccepted, NodePoolView,
    OperationAccepted, OperationView, Page, QuotaView, TokenRevoked,
};
use serde::Serialize;
use utoipa::ToSchema;

/// How responses are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns, for people.
    Table,
    /// The response JSON, pretty-printed (keys sorted), for scripts.
    Json,
    /// The same document as YAML.
    Yaml,
    /// One resource name per line, as `kind/name` (`cluster/web`).
    Name,
}

/// Keeps server text from moving the cursor or injecting escape codes.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub(crate) fn write_stdout(buf: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(buf)
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// A minimal table: left-aligned columns separated by two spaces,
/// widths counted in characters, no trailing spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print as empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.iter().map(|c| sanitize(c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', w - width(cell)));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Server text as a cell: `-` when empty.
pub(crate) fn text(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Optional server text as a cell: `-` when absent or empty.
pub(crate) fn opt_text(s: Option<&str>) -> String {
    s.map_or_else(|| "-".into(), text)
}

/// A time as the JSON has it: RFC 3339 in UTC, fractions only when there
/// are any.
pub(crate) fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Pretty-printed JSON of an answer. It goes through a `Value`, so keys
/// come out sorted, as they did when answers were passed through.
pub(crate) fn write_json(out: &mut impl Write, v: &impl Serialize) -> std::io::Result<()> {
    let v = serde_json::to_value(v).map_err(std::io::Error::other)?;
    let text = serde_json::to_string_pretty(&v).map_err(std::io::Error::other)?;
    writeln!(out, "{text}")
}

/// A resource's name as `-o name` prints it.
pub trait Named {
    /// `kind/name` of each resource in the answer, in order.
    fn names(&self) -> Vec<String>;
}

fn named(kind: &str, name: &str) -> String {
    format!("{kind}/{}", sanitize(name))
}

impl Named for ClusterView {
    fn names(&self) -> Vec<String> {
        vec![named("cluster", &self.name)]
    }
}

impl Named for NodePoolView {
    fn names(&self) -> Vec<String> {
        vec![named("nodepool", &self.name)]
    }
}

impl Named for OperationView {
    fn names(&self) -> Vec<String> {
        vec![named("operation", &self.id.to_string())]
    }
}

impl Named for EventView {
    fn names(&self) -> Vec<String> {
        vec![named("event", &self.id.to_string())]
    }
}

impl Named for MachineView {
    fn names(&self) -> Vec<String> {
        vec![named("machine", &self.name)]
    }
}

impl Named for HostView {
    fn names(&self) -> Vec<String> {
        vec![named("host", &self.id.to_string())]
    }
}

impl Named for HostCreated {
    fn names(&self) -> Vec<String> {
        self.host.names()
    }
}

impl Named for MachineTypeView {
    fn names(&self) -> Vec<String> {
        vec![named("machinetype", &self.name)]
    }
}

impl Named for QuotaView {
    fn names(&self) -> Vec<String> {
        vec![named("quota", &self.tenant)]
    }
}

impl Named for AutoscalerStatusView {
    fn names(&self) -> Vec<String> {
        vec![named("autoscaler", &self.cluster.to_string())]
    }
}

/// An accepted create or update: the resource, then its operation.
impl Named for ClusterAccepted {
    fn names(&self) -> Vec<String> {
        [self.cluster.names(), self.operation.names()].concat()
    }
}

impl Named for NodePoolAccepted {
    fn names(&self) -> Vec<String> {
        [self.node_pool.names(), self.operation.names()].concat()
    }
}

impl Named for OperationAccepted {
    fn names(&self) -> Vec<String> {
        self.operation.names()
    }
}

impl Named for TokenRevoked {
    fn names(&self) -> Vec<String> {
        vec![named("token", &self.jti)]
    }
}

impl Named for CredentialsRevoked {
    fn names(&self) -> Vec<String> {
        self.operation.names()
    }
}

impl<T: Named + ToSchema> Named for Items<T> {
    fn names(&self) -> Vec<String> {
        self.items.iter().flat_map(Named::names).collect()
    }
}

impl<T: Named + ToSchema> Named for Page<T> {
    fn names(&self) -> Vec<String> {
        self.items.iter().flat_map(Named::names).collect()
    }
}

/// YAML of an answer, from the same document `-o json` prints.
pub fn write_yaml(out: &mut impl Write, v: &impl Serialize) -> std::io::Result<()> {
    let v = serde_json::to_value(v).map_err(std::io::Error::other)?;
    let text = serde_saphyr::to_string(&v).map_err(std::io::Error::other)?;
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}

/// Writes `v` in the machine formats (`json`, `yaml`, `name`) and returns
/// true; returns false for `table`, which each command draws itself.
pub fn emit(
    out: &mut impl Write,
    format: Output,
    v: &(impl Serialize + Named),
) -> std::io::Result<bool> {
    match format {
        Output::Table => return Ok(false),
        Output::Json => write_json(out, v)?,
        Output::Yaml => write_yaml(out, v)?,
        Output::Name => {
            for name in v.names() {
                writeln!(out, "{name}")?;
            }
        }
    }
    Ok(true)
}
