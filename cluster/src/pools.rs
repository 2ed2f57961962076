//! The pool engine's decisions that need no I/O: which machines go first
//! on a scale-down, and which unhealthy workers are replaced now.
//!
//! The engine turns its ledger rows into [`Worker`]s and acts on the
//! answers; every rule here is tested with plain values.

use chrono::{DateTime, TimeDelta, Utc};
use std::collections::HashMap;
use std::fmt;
use uuid::Uuid;

use crate::spec::AutoRepair;

/// Cluster-wide repair budget: at most this many repairs...
pub const REPAIRS_PER_WINDOW: i64 = 3;
/// ...in this long.
pub const REPAIR_WINDOW: TimeDelta = TimeDelta::minutes(10);

/// A machine's state in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MachineState {
    /// Recorded; not yet accepted by the provider (`create` is called).
    Pending,
    /// Accepted by the provider and on its way up: observed with `get`,
    /// never created again.
    Provisioning,
    Running,
    /// The provider could not make it, or lost it.
    Failed,
    /// A worker whose node is being drained before it is removed.
    Draining,
    /// Handed to the provider for deletion.
    Deleting,
    Deleted,
}

impl MachineState {
    pub const ALL: [MachineState; 7] = [
        Self::Pending,
        Self::Provisioning,
        Self::Running,
        Self::Failed,
        Self::Draining,
        Self::Deleting,
        Self::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Provisioning => "provisioning",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Draining => "draining",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
        }
    }

    /// The ledger's spelling; None for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Counts towards its pool's size: neither leaving nor gone.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Provisioning | Self::Running | Self::Failed
        )
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a machine is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MachineRole {
    ControlPlane,
    /// HAProxy in front of three control-plane members.
    LoadBalancer,
    Worker,
}

impl MachineRole {
    pub const ALL: [MachineRole; 3] = [Self::ControlPlane, Self::LoadBalancer, Self::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ControlPlane => "control_plane",
            Self::LoadBalancer => "load_balancer",
            Self::Worker => "worker",
        }
    }

    /// The ledger's spelling; None for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for MachineRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pool's machine, as scale-down and repair see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub id: Uuid,
    pub name: String,
    pub pool: Option<Uuid>,
    pub state: MachineState,
    /// Its node was last seen Ready.
    pub node_ready: bool,
    /// Its node has registered once.
    pub joined: bool,
    pub created_at: DateTime<Utc>,
    /// Since when it has been unhealthy, without interruption.
    pub unhealthy_since: Option<DateTime<Utc>>,
    pub unhealthy_reason: Option<String>,
}

/// Orders a pool's live machines by who goes first on a scale-down: those
/// without a Ready node (failed ones first, then not yet joined or not
/// ready), then the least CPU requested by their pods (`cpu_requested`, by
/// node name; empty when the cluster cannot be asked), then the newest.
/// The one rule for every scale-down, drained or not.
pub fn scale_down_order(workers: &mut [&Worker], cpu_requested: &HashMap<String, u64>) {
    workers.sort_by_key(|w| {
        (
            w.state == MachineState::Running && w.node_ready,
            w.state != MachineState::Failed,
            cpu_requested.get(&w.name).copied().unwrap_or(0),
            std::cmp::Reverse(w.created_at),
        )
    });
}

/// What the repair step does for one pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Repair {
    /// Delete this machine's node and machine; the machine convergence
    /// creates its replacement.
    Replace {
        machine: Uuid,
        name: String,
        why: String,
        message: String,
    },
    /// A node is due but is not replaced yet, and this says why.
    Wait(String),
}

/// When `since` is at least `threshold` seconds before `now`.
pub fn overdue(since: Option<DateTime<Utc>>, threshold: u32, now: DateTime<Utc>) -> bool {
    since.is_some_and(|s| (now - s).num_seconds() >= i64::from(threshold))
}

/// Decides the repairs of one pass: per pool, the first running worker
/// unhealthy for longer than the pool's threshold is replaced, unless
/// auto-repair is off for the pool, the pool's previous repair or new
/// node is still on its way (one at a time per pool), or the cluster had
/// [`REPAIRS_PER_WINDOW`] repairs in the last [`REPAIR_WINDOW`]
/// (`repairs_recent`). Pools with nothing due are left out.
pub fn plan_repairs(
    pools: &[(Uuid, AutoRepair)],
    workers: &[&Worker],
    repairs_recent: i64,
    now: DateTime<Utc>,
) -> Vec<(Uuid, Repair)> {
    let mut repairs_left = (REPAIRS_PER_WINDOW - repairs_recent).max(0);
    let mut plan = Vec::new();
    for (pool_id, auto_repair) in pools {
        let mine: Vec<&Worker> = workers
            .iter()
            .copied()
            .filter(|w| w.pool == Some(*pool_id))
            .collect();
        let due: Vec<&Worker> = mine
            .iter()
            .copied()
            .filter(|w| w.state == MachineState::Running)
            .filter(|w| overdue(w.unhealthy_since, auto_repair.after_seconds, now))
            .collect();
        let Some(w) = due.first().copied() else {
            continue;
        };
        let why = w.unhealthy_reason.as_deref().unwrap_or("unhealthy");
        let wait = |note: String| (*pool_id, Repair::Wait(note));
        if !auto_repair.enabled {
            plan.push(wait(format!(
                "node {} is unhealthy ({why}); auto-repair is off for this pool",
                w.name
            )));
            continue;
        }
        let in_flight = mine.iter().any(|o| {
            matches!(
                o.state,
                MachineState::Deleting | MachineState::Pending | MachineState::Provisioning
            ) || (o.state == MachineState::Running
                && !o.joined
                && !due.iter().any(|d| d.id == o.id))
        });
        if in_flight {
            plan.push(wait(format!(
                "node {} is due for repair; waiting for the pool's previous repair or new node",
                w.name
            )));
            continue;
        }
        if repairs_left == 0 {
            plan.push(wait(format!(
                "node {} is due for repair, but the cluster already had {REPAIRS_PER_WINDOW} \
                 repairs in the last {} minutes",
                w.name,
                REPAIR_WINDOW.num_minutes()
            )));
            continue;
        }
        repairs_left -= 1;
        let since = w.unhealthy_since.unwrap_or(now);
        let message = format!(
            "replacing node {}: {why} for {} s (pool threshold {} s)",
            w.name,
            (now - since).num_seconds(),
            auto_repair.after_seconds
        );
        plan.push((
            *pool_id,
            Repair::Replace {
                machine: w.id,
                name: w.name.clone(),
                why: why.to_string(),
                message,
            },
        ));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str, state: MachineState, ready: bool, age_s: i64) -> Worker {
        Worker {
            id: Uuid::now_v7(),
            name: name.into(),
            pool: None,
            state,
            node_ready: ready,
            joined: false,
            created_at: Utc::now() - TimeDelta::seconds(age_s),
            unhealthy_since: None,
            unhealthy_reason: None,
        }
    }

    #[test]
    fn machine_states_round_trip() {
        for s in MachineState::ALL {
            assert_eq!(MachineState::parse(s.as_str()), Some(s));
        }
        assert_eq!(MachineState::parse("Running"), None);
        for r in MachineRole::ALL {
            assert_eq!(MachineRole::parse(r.as_str()), Some(r));
        }
        assert_eq!(MachineRole::parse("master"), None);
        let live: Vec<&str> = MachineState::ALL
            .into_iter()
            .filter(|s| s.is_live())
            .map(MachineState::as_str)
            .collect();
        assert_eq!(live, ["pending", "provisioning", "running", "failed"]);
    }

    #[test]
    fn scale_down_takes_unready_then_least_requested_then_newest() {
        use MachineState::*;
        let busy_old = worker("busy-old", Running, true, 300);
        let idle_old = worker("idle-old", Running, true, 200);
        let idle_new = worker("idle-new", Running, true, 100);
        let sick = worker("sick", Running, false, 400);
        let booting = worker("booting", Pending, false, 10);
        let broken = worker("broken", Failed, false, 500);
        let requested = HashMap::from([("busy-old".to_string(), 500), ("sick".to_string(), 900)]);
        let mut order = vec![&busy_old, &idle_old, &sick, &idle_new, &booting, &broken];
        scale_down_order(&mut order, &requested);
        let names: Vec<&str> = order.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            ["broken", "booting", "sick", "idle-new", "idle-old", "busy-old"]
        );
        // Without the cluster's answer (not serving): unready first, then newest.
        let mut order = vec![&busy_old, &idle_old, &sick, &idle_new, &booting, &broken];
        scale_down_order(&mut order, &HashMap::new());
        let names: Vec<&str> = order.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            ["broken", "booting", "sick", "idle-new", "idle-old", "busy-old"]
        );
    }

    #[test]
    fn overdue_compares_whole_seconds() {
        let now = Utc::now();
        assert!(!overdue(None, 10, now));
        assert!(!overdue(Some(now - TimeDelta::seconds(9)), 10, now));
        assert!(overdue(Some(now - TimeDelta::seconds(10)), 10, now));
    }

    fn sick(name: &str, pool: Uuid, unhealthy_for_s: i64) -> Worker {
        let mut w = worker(name, MachineState::Running, false, 600);
        w.pool = Some(pool);
        w.joined = true;
        w.unhealthy_since = Some(Utc::now() - TimeDelta::seconds(unhealthy_for_s));
        w.unhealthy_reason = Some("NodeNotReady: kubelet stopped posting".into());
        w
    }

    fn healthy(name: &str, pool: Uuid) -> Worker {
        let mut w = worker(name, MachineState::Running, true, 600);
        w.pool = Some(pool);
        w.joined = true;
        w
    }

    fn repair_on(after_seconds: u32) -> AutoRepair {
        AutoRepair {
            enabled: true,
            after_seconds,
        }
    }

    fn replaced(plan: &[(Uuid, Repair)]) -> Vec<&str> {
        plan.iter()
            .filter_map(|(_, r)| match r {
                Repair::Replace { name, .. } => Some(name.as_str()),
                Repair::Wait(_) => None,
            })
            .collect()
    }

    fn waiting(plan: &[(Uuid, Repair)], pool: Uuid) -> String {
        plan.iter()
            .find_map(|(p, r)| match r {
                Repair::Wait(note) if *p == pool => Some(note.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("pool {pool} has no waiting note in {plan:?}"))
    }

    #[test]
    fn repairs_wait_for_the_threshold_and_name_the_reason() {
        let pool = Uuid::now_v7();
        let young = sick("young", pool, 19);
        let ok = healthy("ok", pool);
        let pools = [(pool, repair_on(20))];
        assert!(plan_repairs(&pools, &[&young, &ok], 0, Utc::now()).is_empty());

        let old = sick("old", pool, 25);
        let plan = plan_repairs(&pools, &[&young, &ok, &old], 0, Utc::now());
        assert_eq!(replaced(&plan), ["old"]);
        let Repair::Replace {
            machine,
            why,
            message,
            ..
        } = &plan[0].1
        else {
            unreachable!()
        };
        assert_eq!(*machine, old.id);
        assert_eq!(why, "NodeNotReady: kubelet stopped posting");
        assert!(
            message.contains("for 25 s (pool threshold 20 s)"),
            "{message}"
        );
    }

    #[test]
    fn one_repair_at_a_time_per_pool() {
        let pool = Uuid::now_v7();
        let a = sick("a", pool, 60);
        let b = sick("b", pool, 60);
        let pools = [(pool, repair_on(20))];
        // Two nodes due: only one is replaced in a pass.
        let plan = plan_repairs(&pools, &[&a, &b], 0, Utc::now());
        assert_eq!(replaced(&plan), ["a"]);

        // While the first is being deleted, or its replacement is booting
        // or has not joined yet, the second waits.
        let mut going = a.clone();
        going.state = MachineState::Deleting;
        let mut booting = worker("new", MachineState::Pending, false, 5);
        booting.pool = Some(pool);
        let mut unjoined = worker("new", MachineState::Running, false, 5);
        unjoined.pool = Some(pool);
        for other in [&going, &booting, &unjoined] {
            let plan = plan_repairs(&pools, &[other, &b], 0, Utc::now());
            assert!(replaced(&plan).is_empty(), "{plan:?}");
            assert!(waiting(&plan, pool).contains("waiting for the pool's previous repair"));
        }
    }

    #[test]
    fn the_cluster_budget_caps_repairs_across_pools() {
        let pools: Vec<(Uuid, AutoRepair)> =
            (0..5).map(|_| (Uuid::now_v7(), repair_on(20))).collect();
        let sick_nodes: Vec<Worker> = pools
            .iter()
            .enumerate()
            .map(|(i, (p, _))| sick(&format!("n{i}"), *p, 60))
            .collect();
        let workers: Vec<&Worker> = sick_nodes.iter().collect();

        let plan = plan_repairs(&pools, &workers, 0, Utc::now());
        assert_eq!(replaced(&plan), ["n0", "n1", "n2"]);
        for (p, _) in &pools[3..] {
            assert!(waiting(&plan, *p).contains("already had 3 repairs in the last 10 minutes"));
        }

        let plan = plan_repairs(&pools, &workers, 2, Utc::now());
        assert_eq!(replaced(&plan), ["n0"]);
        let plan = plan_repairs(&pools, &workers, 7, Utc::now());
        assert!(replaced(&plan).is_empty());
        assert_eq!(plan.len(), 5);
    }

    #[test]
    fn a_pool_without_auto_repair_only_reports() {
        let pool = Uuid::now_v7();
        let node = sick("n", pool, 3600);
        let off = AutoRepair {
            enabled: false,
            after_seconds: 20,
        };
        let plan = plan_repairs(&[(pool, off)], &[&node], 0, Utc::now());
        assert!(replaced(&plan).is_empty());
        assert!(waiting(&plan, pool).contains("auto-repair is off"));
        // And it does not use up the cluster's budget.
        let other = Uuid::now_v7();
        let node2 = sick("m", other, 60);
        let pools = [(pool, off), (other, repair_on(20))];
        let plan = plan_repairs(&pools, &[&node, &node2], 2, Utc::now());
        assert_eq!(replaced(&plan), ["m"]);
    }
}
