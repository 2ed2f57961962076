//! Restarts of control-plane components, told from what systemd says about
//! their units.
//!
//! Every unit of a control-plane member has `Restart=always`: a component
//! that crashes is back a few seconds later, and a health check that looks
//! before or after that gap sees nothing. systemd keeps count, though:
//! `NRestarts` rises by one each time it restarts a unit on its own, and
//! every start gets a new `InvocationID`. The engine reads both (with
//! `ActiveState`/`SubState`, and when the machine's systemd started) on each
//! pass, and this module decides, without I/O, how many restarts happened
//! since the previous pass:
//!
//! - the first observation of a unit is a baseline and counts nothing;
//! - `NRestarts` rising by `k` is `k` restarts;
//! - a unit seen crashed and waiting out `RestartSec` (`SubState`
//!   `auto-restart`, or `failed`) is one restart already, before systemd
//!   counts it; when the counter then rises, that one is not counted twice;
//! - the counter falling, or a new invocation without the counter rising,
//!   means the unit was started deliberately (systemd zeroes `NRestarts` on
//!   any start it did not schedule itself): a new baseline, and only the
//!   restarts since that start count;
//! - a machine whose systemd started since the last look (a reboot or a
//!   restarted lab container) is a new baseline for all of its units: the
//!   restart is the machine's, reported as such elsewhere;
//! - restarts the engine causes itself are not crashes: its bootstrap
//!   restarts units whose files changed (which zeroes their counters), and
//!   a restarted kube-apiserver exits until etcd has quorum (which raises
//!   its counter). The units a bootstrap says it (re)started
//!   ([`started_by_bootstrap`]) get a new baseline once the member is
//!   healthy again ([`MemberRestarts::rebaseline`]); the others go on being
//!   counted, so a crash that made the member unhealthy, and so triggered
//!   a bootstrap that changed nothing, still counts.
//!
//! What was counted is kept per member with a timestamp, so the reconciler
//! can tell repeated restarts ([`RESTART_THRESHOLD`] within
//! [`RESTART_WINDOW`]) from a single one. Nothing the machine prints reaches
//! a shell: the command is a constant ([`show_command`]) and the output is
//! only parsed into numbers and short, checked words.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::bundle::UNITS;

/// Restarts of control-plane components (all members together) within
/// [`RESTART_WINDOW`] from which the cluster's `ControlPlaneReady` is
/// False (`ComponentRestarting`) and the cluster `degraded`. One crash is
/// an event; three in ten minutes is a component that does not stay up.
pub const RESTART_THRESHOLD: u32 = 3;

/// How far back restarts count towards [`RESTART_THRESHOLD`]; once the
/// restarts stop, the cluster is ready again when fewer than the threshold
/// are this recent (at the latest this long after the last one). The
/// service always uses this; tests shorten it through
/// `Config::control_plane_restart_window`.
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// The manager property that says when the machine's systemd started.
const BOOT: &str = "UserspaceTimestampMonotonic";

/// The `SubState` of a service that exited and waits out `RestartSec`.
const AUTO_RESTART: &str = "auto-restart";

/// The one command the engine runs to observe a member: when its systemd
/// started, then the restart counters and states of its units. A constant
/// built from [`UNITS`]; no value from anywhere else goes into it.
pub fn show_command() -> String {
    format!(
        "systemctl show -p {BOOT}; echo; \
         systemctl show -p Id -p LoadState -p ActiveState -p SubState -p NRestarts -p InvocationID {}",
        UNITS.join(" ")
    )
}

/// The units the control-plane bootstrap script says it restarted or
/// started, from the summary line it prints last
/// (`bootstrap-controlplane: member M: ...; restarted: a.service b.service;
/// started: c.service`). Only names in [`UNITS`] are returned.
pub fn started_by_bootstrap(lines: &[String]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for line in lines.iter().filter(|l| l.starts_with(SUMMARY_PREFIX)) {
        for part in line.split("; ") {
            let Some(units) = part
                .strip_prefix("restarted: ")
                .or_else(|| part.strip_prefix("started: "))
            else {
                continue;
            };
            for name in units.split_whitespace() {
                if let Some(unit) = UNITS.iter().copied().find(|u| *u == name) {
                    if !out.contains(&unit) {
                        out.push(unit);
                    }
                }
            }
        }
    }
    out
}

/// How the bootstrap script's summary line begins
/// (templates/controlplane/bootstrap-controlplane.sh.tera).
const SUMMARY_PREFIX: &str = "bootstrap-controlplane: member ";

/// A component's name as events and metrics use it: the unit without
/// `.service`.
pub fn component_of(unit: &str) -> &str {
    unit.strip_suffix(".service").unwrap_or(unit)
}

/// What systemd said about one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    /// The unit, always one of [`UNITS`].
    pub unit: &'static str,
    pub n_restarts: u32,
    /// Empty until the unit first started.
    pub invocation: String,
    pub active_state: String,
    pub sub_state: String,
}

impl UnitStatus {
    /// The component's name (`kube-apiserver`).
    pub fn component(&self) -> &'static str {
        component_of(self.unit)
    }

    /// Crashed and not running: waiting out `RestartSec`, or given up on.
    /// systemd has not counted this restart yet.
    pub fn crashed(&self) -> bool {
        self.sub_state == AUTO_RESTART || self.active_state == "failed"
    }
}

/// One observation of a member: its units, and when its systemd started.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// `UserspaceTimestampMonotonic` of the machine's systemd: it changes
    /// when the machine (or lab container) starts again.
    pub boot: Option<String>,
    /// Loaded units among [`UNITS`]; units not installed yet are absent.
    pub units: Vec<UnitStatus>,
}

/// Why the output of [`show_command`] could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected systemctl output: {0}")]
pub struct ParseError(String);

fn word(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 32
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses what [`show_command`] printed. Blocks are told apart by blank
/// lines or by a property repeating; a block for a unit not in [`UNITS`],
/// or one not loaded (not installed yet), is skipped. A value that is not
/// what systemd prints for the property (a counter that is not a number,
/// an invocation id that is not 32 hex digits, a state that is not a short
/// lowercase word) is an error, not a guess.
pub fn parse_show(lines: &[String]) -> Result<Observation, ParseError> {
    let mut out = Observation::default();
    let mut blocks: Vec<BTreeMap<&str, &str>> = vec![BTreeMap::new()];
    for line in lines {
        let line = line.trim_end();
        if line.is_empty() {
            blocks.push(BTreeMap::new());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| ParseError(format!("no '=' in {:?}", truncate(line))))?;
        if key == BOOT {
            // The manager's one line, its own block.
            if value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError(format!("{BOOT}={:?}", truncate(value))));
            }
            out.boot = Some(value.to_string()).filter(|b| !b.is_empty());
            blocks.push(BTreeMap::new());
            continue;
        }
        if blocks.last().is_some_and(|b| b.contains_key(key)) {
            blocks.push(BTreeMap::new());
        }
        if let Some(block) = blocks.last_mut() {
            block.insert(key, value);
        }
    }
    for block in blocks.iter().filter(|b| !b.is_empty()) {
        let Some(id) = block.get("Id") else {
            return Err(ParseError("a unit block without Id".into()));
        };
        let Some(unit) = UNITS.iter().copied().find(|u| u == id) else {
            continue;
        };
        if block.get("LoadState") != Some(&"loaded") {
            continue;
        }
        let field = |key: &str| {
            block
                .get(key)
                .copied()
                .ok_or_else(|| ParseError(format!("{unit}: no {key}")))
        };
        let n = field("NRestarts")?;
        let n_restarts = n
            .parse::<u32>()
            .map_err(|_| ParseError(format!("{unit}: NRestarts={:?}", truncate(n))))?;
        let invocation = field("InvocationID")?;
        if !(invocation.is_empty()
            || (invocation.len() == 32 && invocation.bytes().all(|b| b.is_ascii_hexdigit())))
        {
            return Err(ParseError(format!(
                "{unit}: InvocationID={:?}",
                truncate(invocation)
            )));
        }
        let (active, sub) = (field("ActiveState")?, field("SubState")?);
        if !word(active) || !word(sub) {
            return Err(ParseError(format!(
                "{unit}: ActiveState={:?} SubState={:?}",
                truncate(active),
                truncate(sub)
            )));
        }
        out.units.push(UnitStatus {
            unit,
            n_restarts,
            invocation: invocation.to_string(),
            active_state: active.to_string(),
            sub_state: sub.to_string(),
        });
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// What the engine keeps of one unit between passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitMark {
    pub n_restarts: u32,
    pub invocation: String,
    /// The unit was last seen crashed, and that crash is accounted for
    /// (counted, or part of a baseline) although systemd's counter does
    /// not include it yet.
    #[serde(default)]
    pub crash_accounted: bool,
}

impl UnitMark {
    fn of(now: &UnitStatus) -> Self {
        Self {
            n_restarts: now.n_restarts,
            invocation: now.invocation.clone(),
            crash_accounted: now.crashed(),
        }
    }
}

/// How many restarts of a unit happened between the previous observation
/// (`prev`, None for the first) and `now`, and what to keep for the next.
pub fn assess(prev: Option<&UnitMark>, now: &UnitStatus) -> (u32, UnitMark) {
    let mark = UnitMark::of(now);
    let Some(prev) = prev else {
        // A baseline; a crash in progress predates it.
        return (0, mark);
    };
    // systemd zeroes the counter when something other than its restart
    // logic starts the unit: the counter fell, or a new invocation came
    // without it rising. Only the restarts since that start are known.
    let reset = now.n_restarts < prev.n_restarts
        || (now.n_restarts == prev.n_restarts && now.invocation != prev.invocation);
    let by_systemd = if reset {
        now.n_restarts
    } else {
        now.n_restarts - prev.n_restarts
    };
    // The crash seen last time is among those systemd has counted since.
    let seen_before = u32::from(!reset && prev.crash_accounted && by_systemd > 0);
    let mut restarts = by_systemd - seen_before;
    // Crashed now: one more, unless it is the very crash seen last time.
    let same_crash = !reset && prev.crash_accounted && by_systemd == 0;
    if now.crashed() && !same_crash {
        restarts += 1;
    }
    (restarts, mark)
}

/// Restarts of one component counted at one observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    pub component: String,
    pub at: DateTime<Utc>,
    pub count: u32,
}

/// What one observation counted for one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub component: &'static str,
    /// Restarts since the previous observation.
    pub restarts: u32,
    /// systemd's counter now.
    pub n_restarts: u32,
    /// Down at the moment, waiting for systemd to start it again.
    pub down: bool,
}

/// What the engine keeps of one control-plane member between passes: the
/// last observation of each unit, and the restarts counted recently.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemberRestarts {
    /// The machine's systemd start (see [`Observation::boot`]).
    #[serde(default)]
    pub boot: Option<String>,
    /// By component name.
    #[serde(default)]
    pub units: BTreeMap<String, UnitMark>,
    /// Oldest first; nothing older than the window it was last pruned to.
    #[serde(default)]
    pub recent: Vec<RestartRecord>,
}

impl MemberRestarts {
    /// Folds an observation in: returns what it counted (components with
    /// at least one restart) and records those restarts at `now`, keeping
    /// only records within `keep`.
    pub fn observe(
        &mut self,
        observation: &Observation,
        now: DateTime<Utc>,
        keep: Duration,
    ) -> Vec<Counted> {
        self.prune(now, keep);
        let rebooted = matches!((&self.boot, &observation.boot), (Some(a), Some(b)) if a != b);
        self.boot = observation.boot.clone().or(self.boot.take());
        let mut counted = Vec::new();
        for unit in &observation.units {
            let prev = if rebooted {
                None
            } else {
                self.units.get(unit.component())
            };
            let (restarts, mark) = assess(prev, unit);
            self.units.insert(unit.component().to_string(), mark);
            if restarts > 0 {
                self.recent.push(RestartRecord {
                    component: unit.component().to_string(),
                    at: now,
                    count: restarts,
                });
                counted.push(Counted {
                    component: unit.component(),
                    restarts,
                    n_restarts: unit.n_restarts,
                    down: unit.crashed(),
                });
            }
        }
        counted
    }

    /// A new baseline for the observed units among `units`, counting
    /// nothing: after the engine's own bootstrap (re)started them, which is
    /// not a crash. Other units, and the recent restarts, are kept.
    pub fn rebaseline(&mut self, observation: &Observation, units: &[&str]) {
        for unit in observation.units.iter().filter(|u| units.contains(&u.unit)) {
            self.units
                .insert(unit.component().to_string(), UnitMark::of(unit));
        }
    }

    fn prune(&mut self, now: DateTime<Utc>, keep: Duration) {
        let since = before(now, keep);
        self.recent.retain(|r| r.at > since);
    }

    /// Restarts per component within `window` before `now`.
    pub fn within(&self, now: DateTime<Utc>, window: Duration) -> BTreeMap<String, u32> {
        let since = before(now, window);
        let mut out = BTreeMap::new();
        for r in self.recent.iter().filter(|r| r.at > since) {
            *out.entry(r.component.clone()).or_insert(0) += r.count;
        }
        out
    }
}

/// `now` less `window`, or the beginning of time for a window too long to say.
fn before(now: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(window)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Recent restarts of one component on one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentRestarts {
    pub member: String,
    pub component: String,
    pub count: u32,
}

/// `10 minutes`, `30 s`: a window as messages say it.
pub fn describe_window(window: Duration) -> String {
    let s = window.as_secs();
    match s {
        60 => "minute".into(),
        _ if s.is_multiple_of(60) => format!("{} minutes", s / 60),
        _ => format!("{s} s"),
    }
}

/// The event message for restarts counted on `member`; `in_window` is the
/// component's restarts on that member within `window`, these included.
pub fn restart_message(member: &str, c: &Counted, in_window: u32, window: Duration) -> String {
    let times = |n: u32| {
        if n == 1 {
            "once".into()
        } else {
            format!("{n} times")
        }
    };
    let mut msg = format!(
        "{member}: {} restarted {} since the last observation ({} in the last {}; systemd's restart counter is at {})",
        c.component,
        times(c.restarts),
        times(in_window),
        describe_window(window),
        c.n_restarts
    );
    if c.down {
        msg.push_str("; it is down, waiting for systemd to start it again");
    }
    msg
}

/// The `ControlPlaneReady=False` message when the control plane's
/// components restarted [`RESTART_THRESHOLD`] or more times within
/// `window`; None below that.
pub fn restarting(recent: &[RecentRestarts], threshold: u32, window: Duration) -> Option<String> {
    let total: u32 = recent.iter().map(|r| r.count).sum();
    if total < threshold.max(1) {
        return None;
    }
    let mut parts: Vec<&RecentRestarts> = recent.iter().filter(|r| r.count > 0).collect();
    parts.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.member.cmp(&b.member))
            .then_with(|| a.component.cmp(&b.component))
    });
    let list: Vec<String> = parts
        .iter()
        .map(|r| {
            format!(
                "{} on {} restarted {} time{}",
                r.component,
                r.member,
                r.count,
                if r.count == 1 { "" } else { "s" }
            )
        })
        .collect();
    Some(format!(
        "{total} control-plane component restarts in the last {}: {}",
        describe_window(window),
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "11111111111111111111111111111111";
    const C: &str = "22222222222222222222222222222222";

    fn unit(n: u32, invocation: &str, active: &str, sub: &str) -> UnitStatus {
        UnitStatus {
            unit: "kube-apiserver.service",
            n_restarts: n,
            invocation: invocation.into(),
            active_state: active.into(),
            sub_state: sub.into(),
        }
    }
    fn running(n: u32, invocation: &str) -> UnitStatus {
        unit(n, invocation, "active", "running")
    }
    fn waiting(n: u32, invocation: &str) -> UnitStatus {
        unit(n, invocation, "activating", "auto-restart")
    }
    fn mark(n: u32, invocation: &str, crash_accounted: bool) -> UnitMark {
        UnitMark {
            n_restarts: n,
            invocation: invocation.into(),
            crash_accounted,
        }
    }
    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    const SHOW: &str = "UserspaceTimestampMonotonic=1234567

Type=notify
NRestarts=0
Id=etcd.service
LoadState=loaded
ActiveState=active
SubState=running
InvocationID=0123456789abcdef0123456789abcdef

NRestarts=2
Id=kube-apiserver.service
LoadState=loaded
ActiveState=activating
SubState=auto-restart
InvocationID=11111111111111111111111111111111

NRestarts=0
Id=kube-controller-manager.service
LoadState=not-found
ActiveState=inactive
SubState=dead
InvocationID=

NRestarts=0
Id=kube-scheduler.service
LoadState=loaded
ActiveState=inactive
SubState=dead
InvocationID=
";

    #[test]
    fn the_command_is_a_constant_naming_every_unit() {
        let cmd = show_command();
        for u in UNITS {
            assert!(cmd.contains(u), "{cmd}");
        }
        assert!(cmd.contains("-p NRestarts") && cmd.contains("-p InvocationID"));
    }

    #[test]
    fn parses_units_skipping_those_not_installed() {
        let obs = parse_show(&lines(SHOW)).unwrap();
        assert_eq!(obs.boot.as_deref(), Some("1234567"));
        assert_eq!(
            obs.units,
            vec![
                UnitStatus {
                    unit: "etcd.service",
                    n_restarts: 0,
                    invocation: A.into(),
                    active_state: "active".into(),
                    sub_state: "running".into(),
                },
                unit(2, B, "activating", "auto-restart"),
                UnitStatus {
                    unit: "kube-scheduler.service",
                    n_restarts: 0,
                    invocation: String::new(),
                    active_state: "inactive".into(),
                    sub_state: "dead".into(),
                },
            ]
        );
        assert!(obs.units[1].crashed());
        assert!(!obs.units[0].crashed() && !obs.units[2].crashed());
    }

    #[test]
    fn parses_without_blank_lines_too() {
        let squeezed: Vec<String> = lines(SHOW).into_iter().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            parse_show(&squeezed).unwrap(),
            parse_show(&lines(SHOW)).unwrap()
        );
    }

    #[test]
    fn refuses_what_systemd_does_not_print() {
        for bad in [
            "Id=kube-apiserver.service\nLoadState=loaded\nNRestarts=-1\nInvocationID=\nActiveState=active\nSubState=running",
            "Id=kube-apiserver.service\nLoadState=loaded\nNRestarts=1\nInvocationID=$(reboot)\nActiveState=active\nSubState=running",
            "Id=kube-apiserver.service\nLoadState=loaded\nNRestarts=1\nInvocationID=\nActiveState=active;x\nSubState=running",
            "Id=kube-apiserver.service\nLoadState=loaded\nInvocationID=\nActiveState=active\nSubState=running",
            "no equals sign",
            "UserspaceTimestampMonotonic=12 34",
        ] {
            assert!(parse_show(&lines(bad)).is_err(), "{bad}");
        }
        // Units Kubeforge did not ask about are ignored, not trusted.
        let other = "Id=evil.service\nLoadState=loaded\nNRestarts=9\nInvocationID=\nActiveState=active\nSubState=running";
        assert!(parse_show(&lines(other)).unwrap().units.is_empty());
    }

    #[test]
    fn first_observation_is_a_baseline() {
        assert_eq!(assess(None, &running(5, A)), (0, mark(5, A, false)));
        // Even when it is down right now: that crash predates the baseline.
        let (n, m) = assess(None, &waiting(5, A));
        assert_eq!((n, m.clone()), (0, mark(5, A, true)));
        assert_eq!(assess(Some(&m), &running(6, B)).0, 0);
    }

    #[test]
    fn nothing_happened() {
        assert_eq!(
            assess(Some(&mark(2, A, false)), &running(2, A)),
            (0, mark(2, A, false))
        );
    }

    #[test]
    fn counter_rising_by_one_and_by_two() {
        assert_eq!(assess(Some(&mark(0, A, false)), &running(1, B)).0, 1);
        assert_eq!(assess(Some(&mark(3, A, false)), &running(5, C)).0, 2);
    }

    #[test]
    fn counter_reset_by_an_explicit_restart_counts_nothing() {
        // `systemctl restart` zeroes NRestarts: fell from 3, new invocation.
        assert_eq!(
            assess(Some(&mark(3, A, false)), &running(0, B)),
            (0, mark(0, B, false))
        );
        // Started again with the counter already at 0: same count, new invocation.
        assert_eq!(assess(Some(&mark(0, A, false)), &running(0, B)).0, 0);
        // Crashes after the explicit start do count.
        assert_eq!(assess(Some(&mark(3, A, false)), &running(1, C)).0, 1);
    }

    #[test]
    fn down_between_passes_counts_once() {
        // Seen crashed, waiting out RestartSec: counted now ...
        let (n, m) = assess(Some(&mark(0, A, false)), &waiting(0, A));
        assert_eq!((n, m.clone()), (1, mark(0, A, true)));
        // ... still waiting at the next look: not again ...
        let (n, m2) = assess(Some(&m), &waiting(0, A));
        assert_eq!((n, m2.clone()), (0, mark(0, A, true)));
        // ... and when systemd restarts it and counts it: not again either.
        assert_eq!(assess(Some(&m2), &running(1, B)), (0, mark(1, B, false)));
    }

    #[test]
    fn down_then_more_restarts() {
        let seen = mark(0, A, true);
        // Restarted, then crashed twice more (the last one still waiting).
        assert_eq!(assess(Some(&seen), &waiting(2, C)).0, 2);
        // Restarted three times in all since.
        assert_eq!(assess(Some(&seen), &running(3, C)).0, 2);
        // A failed unit (systemd gave up) is down too, counted once.
        let failed = unit(0, A, "failed", "failed");
        let (n, m) = assess(Some(&mark(0, A, false)), &failed);
        assert_eq!(n, 1);
        assert_eq!(assess(Some(&m), &failed).0, 0);
        // Started by hand after that: a reset, nothing counted twice.
        assert_eq!(assess(Some(&m), &running(0, B)).0, 0);
    }

    #[test]
    fn crash_counted_then_reset_is_not_subtracted_from_later_crashes() {
        // Seen down, then an operator restarted it (counter zeroed), then
        // it crashed once: that crash is new.
        assert_eq!(assess(Some(&mark(4, A, true)), &running(1, C)).0, 1);
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }
    fn obs(boot: &str, units: Vec<UnitStatus>) -> Observation {
        Observation {
            boot: Some(boot.into()),
            units,
        }
    }

    #[test]
    fn member_history_counts_keeps_and_prunes() {
        let window = Duration::from_secs(600);
        let mut h = MemberRestarts::default();
        assert!(h
            .observe(&obs("1", vec![running(0, A)]), t(0), window)
            .is_empty());
        let c = h.observe(&obs("1", vec![waiting(0, A)]), t(10), window);
        assert_eq!(
            c,
            vec![Counted {
                component: "kube-apiserver",
                restarts: 1,
                n_restarts: 0,
                down: true
            }]
        );
        assert!(h
            .observe(&obs("1", vec![running(1, B)]), t(20), window)
            .is_empty());
        let c = h.observe(&obs("1", vec![running(3, C)]), t(30), window);
        assert_eq!(c[0].restarts, 2);
        assert_eq!(h.within(t(30), window)["kube-apiserver"], 3);
        // The first restart leaves the window; the others stay.
        assert_eq!(h.within(t(611), window)["kube-apiserver"], 2);
        assert!(h.within(t(631), window).is_empty());
        // Pruned on the next observation.
        h.observe(&obs("1", vec![running(3, C)]), t(700), window);
        assert!(h.recent.is_empty());
        // It survives the database as JSON.
        let back: MemberRestarts =
            serde_json::from_value(serde_json::to_value(&h).unwrap()).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn a_machine_restart_is_a_new_baseline() {
        let window = Duration::from_secs(600);
        let mut h = MemberRestarts::default();
        h.observe(&obs("100", vec![running(0, A)]), t(0), window);
        // The machine came back; kube-apiserver exited twice while etcd
        // was starting. Not crashes of a running control plane.
        assert!(h
            .observe(&obs("900", vec![running(2, B)]), t(10), window)
            .is_empty());
        assert_eq!(
            h.observe(&obs("900", vec![running(3, C)]), t(20), window)[0].restarts,
            1
        );
    }

    #[test]
    fn our_bootstrap_restarting_units_counts_nothing() {
        let window = Duration::from_secs(600);
        let mut h = MemberRestarts::default();
        h.observe(&obs("1", vec![running(0, A)]), t(0), window);
        // Down when the pass began: counted, then the bootstrap ran and
        // restarted it (counter zeroed, apiserver looping on etcd twice).
        assert_eq!(
            h.observe(&obs("1", vec![waiting(0, A)]), t(10), window)[0].restarts,
            1
        );
        let apiserver = ["kube-apiserver.service"];
        h.rebaseline(&obs("1", vec![running(2, C)]), &apiserver);
        assert!(h
            .observe(&obs("1", vec![running(2, C)]), t(20), window)
            .is_empty());
        assert_eq!(h.within(t(20), window)["kube-apiserver"], 1);
    }

    #[test]
    fn a_bootstrap_that_restarted_nothing_absorbs_no_crash() {
        let window = Duration::from_secs(600);
        let mut h = MemberRestarts::default();
        h.observe(&obs("1", vec![running(0, A)]), t(0), window);
        // Still dying (dumping core) when the pass began: nothing yet. The
        // member is unhealthy, the bootstrap changes nothing, systemd
        // restarts the apiserver meanwhile.
        assert!(h
            .observe(&obs("1", vec![running(0, A)]), t(10), window)
            .is_empty());
        h.rebaseline(&obs("1", vec![running(1, B)]), &[]);
        // The next pass counts it.
        assert_eq!(
            h.observe(&obs("1", vec![running(1, B)]), t(20), window)[0].restarts,
            1
        );
    }

    #[test]
    fn what_the_bootstrap_restarted() {
        let summary = |s: &str| {
            vec![
                "bootstrap-controlplane: some log line".to_string(),
                s.to_string(),
            ]
        };
        assert_eq!(
            started_by_bootstrap(&summary(
                "bootstrap-controlplane: member c-cp-0: 5 binaries verified; paths fixed: \
                 /etc/kubernetes/pki; units updated: etcd.service kube-apiserver.service; \
                 daemon reloaded; enabled: etcd.service; restarted: etcd.service \
                 kube-apiserver.service; started: kube-scheduler.service"
            )),
            [
                "etcd.service",
                "kube-apiserver.service",
                "kube-scheduler.service"
            ]
        );
        assert!(started_by_bootstrap(&summary(
            "bootstrap-controlplane: member c-cp-0: 5 binaries verified; no changes"
        ))
        .is_empty());
        // Only Kubeforge's units, only from the summary line.
        assert!(started_by_bootstrap(&summary(
            "bootstrap-controlplane: member c-cp-0: 5 binaries verified; restarted: evil.service"
        ))
        .is_empty());
        assert!(started_by_bootstrap(&["restarted: etcd.service".to_string()]).is_empty());
    }

    #[test]
    fn the_bootstrap_script_prints_the_summary_parsed_here() {
        let script = include_str!("../../templates/controlplane/bootstrap-controlplane.sh.tera");
        for needle in [
            "summary=\"member $MEMBER: ",
            "echo \"bootstrap-controlplane: $summary\"",
            "summary+=\"; $label: $*\"",
            "add restarted \"${restarted[@]}\"",
            "add started \"${started[@]}\"",
        ] {
            assert!(
                script.contains(needle),
                "the bootstrap summary changed: {needle}"
            );
        }
    }

    #[test]
    fn repeated_restarts_name_member_component_and_count() {
        let w = Duration::from_secs(600);
        let r = |member: &str, component: &str, count| RecentRestarts {
            member: member.into(),
            component: component.into(),
            count,
        };
        assert_eq!(restarting(&[], RESTART_THRESHOLD, w), None);
        assert_eq!(
            restarting(&[r("c-cp-0", "kube-apiserver", 2)], RESTART_THRESHOLD, w),
            None
        );
        assert_eq!(
            restarting(
                &[r("c-cp-1", "etcd", 1), r("c-cp-0", "kube-apiserver", 2)],
                RESTART_THRESHOLD,
                w
            )
            .as_deref(),
            Some(
                "3 control-plane component restarts in the last 10 minutes: \
                 kube-apiserver on c-cp-0 restarted 2 times, etcd on c-cp-1 restarted 1 time"
            )
        );
        assert_eq!(describe_window(Duration::from_secs(30)), "30 s");
        assert_eq!(describe_window(Duration::from_secs(60)), "minute");
    }

    #[test]
    fn event_message() {
        let c = Counted {
            component: "kube-apiserver",
            restarts: 1,
            n_restarts: 4,
            down: true,
        };
        assert_eq!(
            restart_message("web-cp-0", &c, 2, RESTART_WINDOW),
            "web-cp-0: kube-apiserver restarted once since the last observation (2 times in \
             the last 10 minutes; systemd's restart counter is at 4); it is down, waiting for \
             systemd to start it again"
        );
    }
}
