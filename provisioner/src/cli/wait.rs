//! Waiting for an operation: `--wait` / `--no-wait` / `--timeout` on the
//! commands that start one, and `kubeforge operations wait ID`.
//!
//! Waiting polls `GET /v1/operations/{id}` and writes one line per step
//! transition (a step seen in a new state, or with a new message) to the
//! progress writer, which the commands point at stderr so that stdout
//! holds only the result (`-o json` stays one document). The wait ends
//! when the operation does: `succeeded` returns it, `failed` is
//! [`ClientError::OperationFailed`], and a wait longer than `--timeout` is
//! [`ClientError::WaitTimeout`] (the operation itself goes on). Each has
//! its exit code (see [`super::client::exit_code`]). A read that fails
//! for a moment (the service unreachable or answering 5xx/429) is retried
//! a few times before the wait gives up.
//!
//! Whether a command waits when neither flag is given depends on where its
//! output goes: a person at a terminal gets the wait, a script (stdout a
//! pipe or a file) gets the accepted answer at once, as before.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write};
use std::time::{Duration, Instant};

use kubeforge_cluster::api::{OperationView, Step};
use reqwest::header::HeaderMap;
use reqwest::Method;

use super::client::{parse_ttl, sanitize, Api, ClientError, NO_BODY};

/// `--wait`, `--no-wait` and `--timeout` of a command that starts an
/// operation.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Wait for the operation to end, printing its steps on stderr, then
    /// print the result (the default when stdout is a terminal).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Print the accepted answer and return at once (the default when
    /// stdout is not a terminal).
    #[arg(long, overrides_with = "wait")]
    pub no_wait: bool,
    /// Longest wait, e.g. 10m, 1h (the operation goes on after it).
    #[arg(long, default_value = "30m", value_parser = parse_ttl)]
    pub timeout: Duration,
}

impl WaitArgs {
    /// Whether to wait: the flag given last, else whether stdout is a
    /// terminal.
    pub fn enabled(&self) -> bool {
        if self.wait {
            true
        } else if self.no_wait {
            false
        } else {
            std::io::stdout().is_terminal()
        }
    }
}

/// How often the operation is read while waiting.
pub fn poll_interval() -> Duration {
    // KUBEFORGE_POLL_MS: for tests and impatient people; 1 s otherwise.
    std::env::var("KUBEFORGE_POLL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| (50..=60_000).contains(ms))
        .map_or(Duration::from_secs(1), Duration::from_millis)
}

/// What the progress lines remember of each step.
#[derive(Default)]
pub struct StepTracker {
    seen: HashMap<String, (String, Option<String>)>,
    started: Option<Instant>,
}

impl StepTracker {
    pub fn new() -> StepTracker {
        StepTracker {
            seen: HashMap::new(),
            started: Some(Instant::now()),
        }
    }

    /// Writes a line for each step whose state or message changed since
    /// the last call. A step first seen `pending` prints nothing: every
    /// step starts there.
    pub fn report(&mut self, op: &OperationView, progress: &mut dyn Write) {
        for step in &op.steps {
            let now = (step.state.clone(), step.message.clone());
            let before = self.seen.insert(step.name.clone(), now.clone());
            let changed = match before {
                None => step.state != "pending" || step.message.is_some(),
                Some(b) => b != now,
            };
            if changed {
                let _ = writeln!(progress, "{}", self.line(step));
            }
        }
        let _ = progress.flush();
    }

    fn line(&self, step: &Step) -> String {
        let secs = self.started.map_or(0, |t| t.elapsed().as_secs());
        let mut line = format!(
            "[{:>4}s] {}: {}",
            secs,
            sanitize(&step.name),
            sanitize(&step.state)
        );
        if let Some(m) = step.message.as_deref().filter(|m| !m.is_empty()) {
            line.push_str(&format!(" - {}", sanitize(m)));
        }
        if let Some(e) = &step.error {
            line.push_str(&format!(
                " ({}: {})",
                sanitize(&e.code),
                sanitize(&e.message)
            ));
        }
        line
    }
}

/// The error for an operation that ended `failed`.
pub fn operation_failed(op: &OperationView) -> ClientError {
    let (code, message, retryable) = op.error.as_ref().map_or_else(
        || ("unknown".into(), "no error recorded".into(), false),
        |e| (sanitize(&e.code), sanitize(&e.message), e.retryable),
    );
    ClientError::OperationFailed {
        id: op.id.to_string(),
        cluster: op.cluster.to_string(),
        type_: sanitize(&op.type_),
        code,
        message,
        retryable,
    }
}

/// Reads an operation.
pub(crate) async fn get_operation(api: &Api, id: &str) -> Result<OperationView, ClientError> {
    let url = api.url(&["operations", id])?;
    api.call(Method::GET, url, HeaderMap::new(), NO_BODY).await
}

/// Polls `op` until it ends or `timeout` passes, reporting step
/// transitions to `progress`; returns the succeeded operation.
pub(crate) async fn wait_for(
    api: &Api,
    op: &OperationView,
    timeout: Duration,
    progress: &mut dyn Write,
) -> Result<OperationView, ClientError> {
    let id = op.id.to_string();
    let _ = writeln!(
        progress,
        "waiting for operation {id} ({}), up to {}s",
        sanitize(&op.type_),
        timeout.as_secs()
    );
    let deadline = Instant::now() + timeout;
    let mut tracker = StepTracker::new();
    let mut current = op.clone();
    loop {
        tracker.report(&current, progress);
        match current.state.as_str() {
            "succeeded" => {
                let _ = writeln!(progress, "operation {id} succeeded");
                return Ok(current);
            }
            "failed" => return Err(operation_failed(&current)),
            _ => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::WaitTimeout {
                id,
                state: sanitize(&current.state),
                waited: format!("{}s", timeout.as_secs()),
            });
        }
        tokio::time::sleep(poll_interval().min(deadline - now)).await;
        current = read_patiently(api, &id, deadline, progress).await?;
    }
}

/// Consecutive failed reads a wait rides out before giving up.
const READ_RETRIES: u32 = 5;

/// Whether a failed read may pass: the service unreachable for a moment,
/// restarting, or busy.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Api(p) => p.status == 429 || p.status >= 500,
        ClientError::Status { status, .. } => *status == 429 || *status >= 500,
        _ => false,
    }
}

/// Reads the operation, riding out up to [`READ_RETRIES`] transient
/// failures in a row (a service restart mid-wait is not the operation
/// failing), each reported on `progress`.
async fn read_patiently(
    api: &Api,
    id: &str,
    deadline: Instant,
    progress: &mut dyn Write,
) -> Result<OperationView, ClientError> {
    let mut failures = 0;
    loop {
        match get_operation(api, id).await {
            Ok(op) => return Ok(op),
            Err(e) if transient(&e) && failures < READ_RETRIES && Instant::now() < deadline => {
                failures += 1;
                let first = e.to_string();
                let first = first.lines().next().unwrap_or_default();
                let _ = writeln!(progress, "reading the operation failed ({first}); retrying");
                tokio::time::sleep(poll_interval() * 2u32.pow(failures)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeforge_cluster::api::OperationError;
    use uuid::Uuid;

    fn op(steps: &[(&str, &str, Option<&str>)]) -> OperationView {
        OperationView {
            id: Uuid::from_u128(1),
            cluster: Uuid::from_u128(2),
            node_pool: None,
            type_: "node_pool_update".into(),
            state: "running".into(),
            steps: steps
                .iter()
                .map(|(name, state, message)| Step {
                    name: (*name).into(),
                    state: (*state).into(),
                    message: message.map(str::to_string),
                    started_at: None,
                    finished_at: None,
                    error: (*state == "failed").then(|| OperationError {
                        code: "drain_timeout".into(),
                        message: "pod\x1b[2J web-1 blocked".into(),
                        retryable: false,
                    }),
                })
                .collect(),
            error: None,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn one_line_per_step_transition() {
        let mut t = StepTracker::new();
        let mut out = Vec::new();
        let polls = [
            op(&[("machines", "pending", None), ("join", "pending", None)]),
            op(&[("machines", "running", None), ("join", "pending", None)]),
            op(&[("machines", "running", None), ("join", "pending", None)]),
            op(&[
                ("machines", "succeeded", None),
                ("join", "running", Some("1/2 nodes")),
            ]),
            op(&[
                ("machines", "succeeded", None),
                ("join", "running", Some("2/2 nodes")),
            ]),
            op(&[("machines", "succeeded", None), ("join", "failed", None)]),
        ];
        for p in &polls {
            t.report(p, &mut out);
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.split_once("] ").unwrap().1)
            .collect();
        assert_eq!(
            lines,
            [
                "machines: running",
                "machines: succeeded",
                "join: running - 1/2 nodes",
                "join: running - 2/2 nodes",
                "join: failed (drain_timeout: pod [2J web-1 blocked)",
            ]
        );
    }
}
