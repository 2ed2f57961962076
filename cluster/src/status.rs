//! What a cluster's and a pool's conditions and phase say, worded from
//! what one reconcile pass observed. Pure: the reconciler observes (the
//! provider, the members over SSH, the tenant cluster's API) and hands the
//! observation here; every condition type has exactly one setter below, so
//! its reasons and messages are written in one place.
//!
//! Cluster conditions: `MachinesReady`, `EtcdReady`, `ControlPlaneReady`,
//! `EndpointReady`, `Ready`, `Reconciled` (whether the service's own passes
//! over the cluster complete). Pool conditions: `MachinesReady`,
//! `NodesReady`, `AutoRepair`.

use chrono::{DateTime, Utc};

use crate::condition::{set_condition, Condition, ConditionStatus as S, Phase};
use crate::spec::AutoRepair;

/// What became of a cluster's (or pool's) machines this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachinesObservation {
    /// Every wanted machine runs (`n` of them).
    AllRunning(usize),
    /// Some are still on their way up.
    Starting,
    /// The provider has nothing to make them on yet; the message says why.
    WaitingForCapacity(String),
    /// A permanent failure (`reason`, e.g. `ProviderRejected`).
    Failed { reason: String, message: String },
}

/// Sets the cluster's `MachinesReady`; returns whether it changed.
pub fn set_machines_ready(
    conditions: &mut Vec<Condition>,
    obs: &MachinesObservation,
    now: DateTime<Utc>,
) -> bool {
    let (status, reason, message) = match obs {
        MachinesObservation::AllRunning(n) => {
            (S::True, "AllRunning", format!("{n} machines running"))
        }
        MachinesObservation::Starting => (
            S::False,
            "MachinesStarting",
            "some machines are still starting".to_string(),
        ),
        MachinesObservation::WaitingForCapacity(m) => (S::False, "WaitingForCapacity", m.clone()),
        MachinesObservation::Failed { reason, message } => {
            (S::False, reason.as_str(), message.clone())
        }
    };
    set_condition(conditions, "MachinesReady", status, reason, &message, now)
}

/// One node pool as its cluster's `NodePoolsReady` sums it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSummary<'a> {
    pub name: &'a str,
    /// Desired nodes.
    pub size: usize,
    /// Nodes Ready.
    pub ready: usize,
}

/// Sets the cluster's `NodePoolsReady` from its live pools, in the same
/// numbers each pool shows (`ready_nodes` of `size`): True when every
/// pool has all its nodes Ready (or there is no pool), else False naming
/// each pool that does not. Returns whether it changed.
pub fn set_node_pools_ready(
    conditions: &mut Vec<Condition>,
    pools: &[PoolSummary<'_>],
    now: DateTime<Utc>,
) -> bool {
    let short: Vec<String> = pools
        .iter()
        .filter(|p| p.ready < p.size)
        .map(|p| format!("{}: {} of {} nodes ready", p.name, p.ready, p.size))
        .collect();
    let (status, reason, message) = if pools.is_empty() {
        (
            S::True,
            "NoNodePools",
            "the cluster has no node pools".to_string(),
        )
    } else if short.is_empty() {
        let nodes: usize = pools.iter().map(|p| p.size).sum();
        (
            S::True,
            "AllReady",
            format!("{} pools, {nodes} of {nodes} nodes ready", pools.len()),
        )
    } else {
        (S::False, "NodesNotReady", short.join("; "))
    };
    set_condition(conditions, "NodePoolsReady", status, reason, &message, now)
}

/// What the reconciler saw of the control plane this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlPlaneObservation {
    /// This service cannot bootstrap the cluster's machines (started
    /// without machine access, or a provider whose machines take no SSH).
    BootstrapUnavailable,
    /// Not every control-plane machine (or the load balancer) runs yet.
    WaitingForMachines,
    /// The members could not be looked at (the pass failed; retried).
    Unreachable(String),
    /// The members were looked at.
    Observed {
        healthy_members: usize,
        members: usize,
        /// Why not healthy, per member.
        problems: Vec<String>,
        /// A component restarting too often, worded, if any.
        restarting: Option<String>,
        /// The endpoint, when it answers.
        endpoint: Option<String>,
        /// The service's own RBAC is in effect (it may act in the cluster).
        rbac_applied: bool,
    },
    /// The cluster failed for good (`reason`, e.g. `ProviderRejected`).
    Failed { reason: String, message: String },
}

/// What the control plane's conditions come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneVerdict {
    /// The API answers through the endpoint and the service may act in it:
    /// worker pools can be reconciled.
    pub serving: bool,
    /// Serving, and no component keeps restarting.
    pub ready: bool,
    /// Why not ready, for the create operation's step.
    pub waiting_for: Option<String>,
}

const NO_ACCESS: &str = "control-plane bootstrap needs machine access (SSH key and Kubernetes \
                         binaries), which this service was started without";

/// Sets `EtcdReady`, `ControlPlaneReady`, `EndpointReady` and `Ready` from
/// `obs` (`EtcdReady` and `EndpointReady` only when the members were
/// observed) and says what they come to.
pub fn set_control_plane(
    conditions: &mut Vec<Condition>,
    obs: &ControlPlaneObservation,
    now: DateTime<Utc>,
) -> ControlPlaneVerdict {
    use ControlPlaneObservation as O;
    let not_ready = |why: &str| (S::False, "ControlPlaneNotReady", why.to_string());
    let (cp, ready, waiting_for) = match obs {
        O::BootstrapUnavailable => (
            (S::False, "BootstrapUnavailable", NO_ACCESS.to_string()),
            not_ready("the control plane is not ready"),
            Some(NO_ACCESS.to_string()),
        ),
        O::WaitingForMachines => (
            (
                S::False,
                "WaitingForMachines",
                "control-plane machines are not all running".to_string(),
            ),
            not_ready("the control plane is not ready"),
            None,
        ),
        O::Unreachable(msg) => (
            (S::Unknown, "Unreachable", msg.clone()),
            (S::False, "ControlPlaneUnreachable", msg.clone()),
            None,
        ),
        O::Failed { reason, message } => {
            set_ready(conditions, (S::False, reason, message.clone()), now);
            return ControlPlaneVerdict {
                serving: false,
                ready: false,
                waiting_for: Some(message.clone()),
            };
        }
        O::Observed {
            healthy_members,
            members,
            problems,
            restarting,
            endpoint,
            rbac_applied,
        } => {
            let all = healthy_members == members;
            let etcd_why = if all {
                "Healthy".to_string()
            } else {
                problems.join("; ")
            };
            set_etcd_ready(conditions, all, &etcd_why, now);
            set_endpoint_ready(conditions, endpoint.as_deref(), now);
            let members_msg = format!("{healthy_members} of {members} members healthy");
            let cp = match (all, restarting) {
                (false, _) => (S::False, "MembersUnhealthy", members_msg),
                (true, Some(r)) => (S::False, "ComponentRestarting", r.clone()),
                (true, None) => (S::True, "Healthy", members_msg),
            };
            let serving = all && endpoint.is_some() && *rbac_applied;
            let ready = serving && restarting.is_none();
            // None exactly when ready.
            let why = if !all {
                Some(etcd_why)
            } else if endpoint.is_none() {
                Some("the endpoint does not answer yet".to_string())
            } else if !rbac_applied {
                Some("the service's access to the cluster is not in effect yet".to_string())
            } else {
                restarting.clone()
            };
            set_control_plane_ready(conditions, (cp.0, cp.1, &cp.2), now);
            let r = match &why {
                None => (S::True, "Ready", "the control plane is serving".to_string()),
                Some(w) => not_ready(w),
            };
            set_ready(conditions, (r.0, r.1, r.2), now);
            return ControlPlaneVerdict {
                serving,
                ready,
                waiting_for: why,
            };
        }
    };
    set_control_plane_ready(conditions, (cp.0, cp.1, &cp.2), now);
    set_ready(conditions, (ready.0, ready.1, ready.2), now);
    ControlPlaneVerdict {
        serving: false,
        ready: false,
        waiting_for,
    }
}

fn set_etcd_ready(conditions: &mut Vec<Condition>, all: bool, why: &str, now: DateTime<Utc>) {
    let (status, reason) = if all {
        (S::True, "Healthy")
    } else {
        (S::False, "MembersUnhealthy")
    };
    set_condition(conditions, "EtcdReady", status, reason, why, now);
}

fn set_endpoint_ready(conditions: &mut Vec<Condition>, endpoint: Option<&str>, now: DateTime<Utc>) {
    match endpoint {
        Some(e) => set_condition(conditions, "EndpointReady", S::True, "Serving", e, now),
        None => set_condition(
            conditions,
            "EndpointReady",
            S::False,
            "NotServing",
            "the endpoint does not answer yet",
            now,
        ),
    };
}

fn set_control_plane_ready(
    conditions: &mut Vec<Condition>,
    (status, reason, message): (S, &str, &str),
    now: DateTime<Utc>,
) {
    set_condition(
        conditions,
        "ControlPlaneReady",
        status,
        reason,
        message,
        now,
    );
}

fn set_ready(
    conditions: &mut Vec<Condition>,
    (status, reason, message): (S, &str, String),
    now: DateTime<Utc>,
) {
    set_condition(conditions, "Ready", status, reason, &message, now);
}

/// The cluster's phase after a pass: ready, or degraded once it had been
/// ready, or still provisioning.
pub fn cluster_phase(ready: bool, current: Phase) -> Phase {
    match (ready, current) {
        (true, _) => Phase::Ready,
        (false, Phase::Ready | Phase::Degraded) => Phase::Degraded,
        (false, _) => Phase::Provisioning,
    }
}

/// How the service's passes over a cluster are going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileObservation {
    /// The pass went through.
    Succeeded,
    /// Passes keep failing: `attempts` in a row, the last with `error`.
    /// They go on, at most `retry_within` apart.
    Failing {
        attempts: i32,
        error: String,
        retry_within: std::time::Duration,
    },
}

/// Sets the cluster's `Reconciled`; returns whether its status changed
/// (not merely its message), so a caller records one event per change.
pub fn set_reconciled(
    conditions: &mut Vec<Condition>,
    obs: &ReconcileObservation,
    now: DateTime<Utc>,
) -> bool {
    let before = conditions
        .iter()
        .find(|c| c.type_ == "Reconciled")
        .map(|c| c.status);
    let (status, reason, message) = match obs {
        ReconcileObservation::Succeeded => (
            S::True,
            "ReconcileSucceeded",
            "the last pass over the cluster went through".to_string(),
        ),
        ReconcileObservation::Failing {
            attempts,
            error,
            retry_within,
        } => (
            S::False,
            "ReconcileFailing",
            format!(
                "{attempts} pass{} in a row failed, the last with: {error}; \
                 retried with backoff, at most {}s apart",
                if *attempts == 1 { "" } else { "es" },
                retry_within.as_secs()
            ),
        ),
    };
    set_condition(conditions, "Reconciled", status, reason, &message, now);
    before != Some(status)
}

/// The phase of a cluster whose passes keep failing: one that had served is
/// `degraded` (it may well still serve), one that never did is `failed`,
/// one being deleted stays `deleting`.
pub fn failing_phase(current: Phase) -> Phase {
    match current {
        Phase::Ready | Phase::Degraded => Phase::Degraded,
        Phase::Deleting => Phase::Deleting,
        _ => Phase::Failed,
    }
}

/// What a pass saw of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolObservation {
    pub size: usize,
    /// Machines running.
    pub running: usize,
    /// Machines draining or being deleted.
    pub leaving: usize,
    /// What a drain under way waits for (the pod and the budget that
    /// refuses its eviction, or the pods still terminating), if one does.
    pub draining: Option<String>,
    /// What its new machines wait for when there is nothing to run them
    /// on (no free host matching the pool's selector, say).
    pub capacity_wait: Option<String>,
    pub nodes: NodesObservation,
    pub auto_repair: AutoRepair,
}

/// What a pass saw of a pool's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodesObservation {
    /// Looked at through the cluster's API.
    Observed {
        ready: usize,
        /// Why nodes are not ready, per node.
        problems: Vec<String>,
        /// Why a due repair waits, if one does.
        repair_note: Option<String>,
    },
    /// The cluster's API could not be asked (the message says why).
    Unreachable(String),
    /// Not looked at: the control plane does not serve yet.
    WaitingForControlPlane,
    /// Not looked at: this service has no machine access.
    JoinUnavailable,
}

/// Sets a pool's `MachinesReady`, `NodesReady` and `AutoRepair` and returns
/// its phase.
pub fn set_pool(
    conditions: &mut Vec<Condition>,
    obs: &PoolObservation,
    current: Phase,
    now: DateTime<Utc>,
) -> Phase {
    let mut msg = format!("{} of {} machines running", obs.running, obs.size);
    let (status, reason) = match &obs.draining {
        _ if obs.running == obs.size && obs.leaving == 0 => (S::True, "AllRunning"),
        Some(waiting) if obs.leaving > 0 => {
            msg.push_str("; ");
            msg.push_str(waiting);
            (S::False, "Draining")
        }
        _ if obs.running < obs.size && obs.capacity_wait.is_some() => {
            msg.push_str("; waiting for capacity: ");
            msg.push_str(obs.capacity_wait.as_deref().unwrap_or_default());
            (S::False, "WaitingForCapacity")
        }
        _ => (S::False, "Scaling"),
    };
    set_condition(conditions, "MachinesReady", status, reason, &msg, now);
    match &obs.nodes {
        NodesObservation::Observed {
            ready,
            problems,
            repair_note,
        } => {
            let all = *ready == obs.size;
            let (status, reason) = if all {
                (S::True, "AllReady")
            } else if !problems.is_empty() {
                (S::False, "NodesNotReady")
            } else {
                (S::False, "Joining")
            };
            let mut msg = format!("{ready} of {} nodes ready", obs.size);
            for problem in problems {
                msg.push_str("; ");
                msg.push_str(problem);
            }
            set_condition(conditions, "NodesReady", status, reason, &msg, now);
            set_auto_repair(conditions, repair_note.as_deref(), obs.auto_repair, now);
            match (all && obs.leaving == 0, current) {
                (true, _) => Phase::Ready,
                (false, Phase::Ready | Phase::Degraded) if !problems.is_empty() => Phase::Degraded,
                _ => Phase::Provisioning,
            }
        }
        NodesObservation::Unreachable(e) => {
            set_condition(conditions, "NodesReady", S::Unknown, "Unreachable", e, now);
            current
        }
        NodesObservation::WaitingForControlPlane | NodesObservation::JoinUnavailable => {
            let why = if obs.nodes == NodesObservation::JoinUnavailable {
                "node join needs machine access (SSH key and Kubernetes binaries), which \
                 this service was started without"
            } else {
                "waiting for the control plane to serve"
            };
            set_condition(
                conditions,
                "NodesReady",
                S::Unknown,
                "NodeJoinUnavailable",
                why,
                now,
            );
            Phase::Provisioning
        }
    }
}

fn set_auto_repair(
    conditions: &mut Vec<Condition>,
    waiting: Option<&str>,
    auto_repair: AutoRepair,
    now: DateTime<Utc>,
) {
    match waiting {
        Some(note) => set_condition(
            conditions,
            "AutoRepair",
            S::False,
            "RepairWaiting",
            note,
            now,
        ),
        None => set_condition(
            conditions,
            "AutoRepair",
            S::True,
            if auto_repair.enabled {
                "Enabled"
            } else {
                "Disabled"
            },
            &format!(
                "unhealthy nodes are replaced after {} s",
                auto_repair.after_seconds
            ),
            now,
        ),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(c: &'a [Condition], t: &str) -> &'a Condition {
        c.iter().find(|c| c.type_ == t).expect(t)
    }

    fn observed(
        healthy: usize,
        endpoint: bool,
        rbac: bool,
        restarting: bool,
    ) -> ControlPlaneObservation {
        ControlPlaneObservation::Observed {
            healthy_members: healthy,
            members: 3,
            problems: if healthy < 3 {
                vec!["cp-2: etcd is down".into()]
            } else {
                vec![]
            },
            restarting: restarting.then(|| "kube-apiserver on cp-0 restarted 4 times".into()),
            endpoint: endpoint.then(|| "https://10.0.0.2:6443".into()),
            rbac_applied: rbac,
        }
    }

    #[test]
    fn a_healthy_serving_control_plane_is_ready() {
        let mut c = vec![];
        let v = set_control_plane(&mut c, &observed(3, true, true, false), Utc::now());
        assert!(v.serving && v.ready && v.waiting_for.is_none());
        for t in ["EtcdReady", "ControlPlaneReady", "EndpointReady", "Ready"] {
            assert_eq!(get(&c, t).status, S::True, "{t}");
        }
        assert_eq!(
            get(&c, "ControlPlaneReady").message,
            "3 of 3 members healthy"
        );
    }

    #[test]
    fn each_way_of_not_being_ready_says_why() {
        let now = Utc::now();
        let cases = [
            (
                observed(2, true, true, false),
                false,
                "MembersUnhealthy",
                "cp-2: etcd is down",
            ),
            (
                observed(3, false, true, false),
                false,
                "Healthy",
                "the endpoint does not answer yet",
            ),
            (
                observed(3, true, false, false),
                false,
                "Healthy",
                "the service's access to the cluster is not in effect yet",
            ),
            (
                observed(3, true, true, true),
                true,
                "ComponentRestarting",
                "kube-apiserver on cp-0 restarted 4 times",
            ),
        ];
        for (obs, serving, cp_reason, why) in cases {
            let mut c = vec![];
            let v = set_control_plane(&mut c, &obs, now);
            assert_eq!(v.serving, serving, "{obs:?}");
            assert!(!v.ready);
            assert_eq!(v.waiting_for.as_deref(), Some(why), "{obs:?}");
            assert_eq!(get(&c, "ControlPlaneReady").reason, cp_reason, "{obs:?}");
            let ready = get(&c, "Ready");
            assert_eq!(
                (ready.status, ready.reason.as_str()),
                (S::False, "ControlPlaneNotReady")
            );
            assert_eq!(ready.message, why);
        }
    }

    #[test]
    fn before_the_members_are_observed_only_two_conditions_are_set() {
        let now = Utc::now();
        for (obs, cp, ready_reason) in [
            (
                ControlPlaneObservation::BootstrapUnavailable,
                "BootstrapUnavailable",
                "ControlPlaneNotReady",
            ),
            (
                ControlPlaneObservation::WaitingForMachines,
                "WaitingForMachines",
                "ControlPlaneNotReady",
            ),
            (
                ControlPlaneObservation::Unreachable("no route".into()),
                "Unreachable",
                "ControlPlaneUnreachable",
            ),
        ] {
            let mut c = vec![];
            let v = set_control_plane(&mut c, &obs, now);
            assert!(!v.serving && !v.ready);
            assert_eq!(c.len(), 2, "{c:?}");
            assert_eq!(get(&c, "ControlPlaneReady").reason, cp);
            assert_eq!(get(&c, "Ready").reason, ready_reason);
        }
        let mut c = vec![];
        set_control_plane(
            &mut c,
            &ControlPlaneObservation::Failed {
                reason: "ProviderRejected".into(),
                message: "bad image".into(),
            },
            now,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(
            (
                get(&c, "Ready").reason.as_str(),
                get(&c, "Ready").message.as_str()
            ),
            ("ProviderRejected", "bad image")
        );
    }

    #[test]
    fn machines_ready_follows_the_observation() {
        let now = Utc::now();
        let mut c = vec![];
        assert!(set_machines_ready(
            &mut c,
            &MachinesObservation::Starting,
            now
        ));
        assert!(
            !set_machines_ready(&mut c, &MachinesObservation::Starting, now),
            "unchanged"
        );
        assert!(set_machines_ready(
            &mut c,
            &MachinesObservation::AllRunning(3),
            now
        ));
        assert_eq!(get(&c, "MachinesReady").message, "3 machines running");
        set_machines_ready(
            &mut c,
            &MachinesObservation::WaitingForCapacity("no free host".into()),
            now,
        );
        assert_eq!(get(&c, "MachinesReady").reason, "WaitingForCapacity");
    }

    #[test]
    fn cluster_phase_degrades_only_after_ready() {
        assert_eq!(cluster_phase(true, Phase::Provisioning), Phase::Ready);
        assert_eq!(
            cluster_phase(false, Phase::Provisioning),
            Phase::Provisioning
        );
        assert_eq!(cluster_phase(false, Phase::Ready), Phase::Degraded);
        assert_eq!(cluster_phase(false, Phase::Degraded), Phase::Degraded);
        assert_eq!(cluster_phase(true, Phase::Degraded), Phase::Ready);
    }

    #[test]
    fn node_pools_ready_sums_up_the_pools_in_their_own_numbers() {
        let now = Utc::now();
        let mut c = vec![];
        assert!(set_node_pools_ready(&mut c, &[], now));
        assert_eq!(get(&c, "NodePoolsReady").reason, "NoNodePools");
        let pool = |name, size, ready| PoolSummary { name, size, ready };
        set_node_pools_ready(&mut c, &[pool("a", 2, 2), pool("b", 0, 0)], now);
        let k = get(&c, "NodePoolsReady");
        assert_eq!(
            (k.status, k.message.as_str()),
            (S::True, "2 pools, 2 of 2 nodes ready")
        );
        set_node_pools_ready(&mut c, &[pool("a", 2, 1), pool("b", 3, 0)], now);
        let k = get(&c, "NodePoolsReady");
        assert_eq!(
            (k.status, k.reason.as_str(), k.message.as_str()),
            (
                S::False,
                "NodesNotReady",
                "a: 1 of 2 nodes ready; b: 0 of 3 nodes ready"
            )
        );
        // The same again changes nothing.
        assert!(!set_node_pools_ready(
            &mut c,
            &[pool("a", 2, 1), pool("b", 3, 0)],
            now
        ));
    }

    #[test]
    fn pool_status_and_phase() {
        let now = Utc::now();
        let repair = AutoRepair {
            enabled: true,
            after_seconds: 300,
        };
        let pool = |running, leaving, nodes| PoolObservation {
            size: 2,
            running,
            leaving,
            draining: None,
            capacity_wait: None,
            nodes,
            auto_repair: repair,
        };
        let seen = |ready, problems: &[&str], note: Option<&str>| NodesObservation::Observed {
            ready,
            problems: problems.iter().map(|s| s.to_string()).collect(),
            repair_note: note.map(str::to_string),
        };
        let mut c = vec![];
        assert_eq!(
            set_pool(
                &mut c,
                &pool(2, 0, seen(2, &[], None)),
                Phase::Provisioning,
                now
            ),
            Phase::Ready
        );
        assert_eq!(get(&c, "NodesReady").reason, "AllReady");
        assert_eq!(get(&c, "AutoRepair").reason, "Enabled");
        // A node goes bad: degraded, and the repair's wait is visible.
        let phase = set_pool(
            &mut c,
            &pool(
                2,
                0,
                seen(1, &["node b: NotReady"], Some("waiting for the new node")),
            ),
            Phase::Ready,
            now,
        );
        assert_eq!(phase, Phase::Degraded);
        assert_eq!(
            get(&c, "NodesReady").message,
            "1 of 2 nodes ready; node b: NotReady"
        );
        assert_eq!(get(&c, "AutoRepair").reason, "RepairWaiting");
        // Growing is not degrading.
        let phase = set_pool(&mut c, &pool(1, 0, seen(1, &[], None)), Phase::Ready, now);
        assert_eq!(phase, Phase::Provisioning);
        assert_eq!(get(&c, "MachinesReady").reason, "Scaling");
        assert_eq!(get(&c, "NodesReady").reason, "Joining");
        // A drain held by a budget says so while it waits, and is not a
        // fault of the pool's nodes.
        let phase = set_pool(
            &mut c,
            &PoolObservation {
                draining: Some("draining b for 12 s: eviction of pod default/web-1 refused: the disruption budget web needs 1 healthy pods and has 1 currently".into()),
                ..pool(2, 1, seen(2, &[], None))
            },
            Phase::Ready,
            now,
        );
        assert_eq!(phase, Phase::Provisioning);
        let m = get(&c, "MachinesReady");
        assert_eq!((m.status, m.reason.as_str()), (S::False, "Draining"));
        assert!(m.message.starts_with("2 of 2 machines running; draining b for 12 s: eviction of pod default/web-1 refused: the disruption budget web"), "{}", m.message);
        assert_eq!(get(&c, "NodesReady").reason, "AllReady");
        // A pool whose new machine has no host to run on says what it
        // waits for, and is not degraded for it.
        let phase = set_pool(
            &mut c,
            &PoolObservation {
                capacity_wait: Some("no free host matching gpu=true".into()),
                ..pool(1, 0, seen(1, &[], None))
            },
            Phase::Ready,
            now,
        );
        assert_eq!(phase, Phase::Provisioning);
        let m = get(&c, "MachinesReady");
        assert_eq!(
            (m.status, m.reason.as_str()),
            (S::False, "WaitingForCapacity")
        );
        assert_eq!(
            m.message,
            "1 of 2 machines running; waiting for capacity: no free host matching gpu=true"
        );
        // Unreachable keeps the phase; not looked at is provisioning.
        assert_eq!(
            set_pool(
                &mut c,
                &pool(2, 0, NodesObservation::Unreachable("timeout".into())),
                Phase::Degraded,
                now
            ),
            Phase::Degraded
        );
        assert_eq!(get(&c, "NodesReady").status, S::Unknown);
        assert_eq!(
            set_pool(
                &mut c,
                &pool(2, 0, NodesObservation::JoinUnavailable),
                Phase::Ready,
                now
            ),
            Phase::Provisioning
        );
        assert!(get(&c, "NodesReady").message.contains("machine access"));
        set_pool(
            &mut c,
            &pool(2, 0, NodesObservation::WaitingForControlPlane),
            Phase::Provisioning,
            now,
        );
        assert_eq!(
            get(&c, "NodesReady").message,
            "waiting for the control plane to serve"
        );
    }

    #[test]
    fn reconciled_says_what_fails_and_changes_once_per_transition() {
        let mut c = vec![];
        let now = Utc::now();
        let failing = |n| ReconcileObservation::Failing {
            attempts: n,
            error: "provider: capacity exhausted".into(),
            retry_within: std::time::Duration::from_secs(300),
        };
        assert!(set_reconciled(&mut c, &failing(1), now));
        let r = get(&c, "Reconciled");
        assert_eq!(
            (r.status, r.reason.as_str()),
            (S::False, "ReconcileFailing")
        );
        assert!(
            r.message.starts_with("1 pass in a row failed"),
            "{}",
            r.message
        );
        assert!(r.message.contains("capacity exhausted") && r.message.contains("300s"));
        // A further failure updates the message but is no transition.
        assert!(!set_reconciled(&mut c, &failing(9), now));
        assert!(get(&c, "Reconciled").message.starts_with("9 passes"));
        assert!(set_reconciled(
            &mut c,
            &ReconcileObservation::Succeeded,
            now
        ));
        assert_eq!(get(&c, "Reconciled").status, S::True);
        assert!(!set_reconciled(
            &mut c,
            &ReconcileObservation::Succeeded,
            now
        ));
    }

    #[test]
    fn a_cluster_that_served_is_degraded_by_failing_passes_one_that_never_did_fails() {
        assert_eq!(failing_phase(Phase::Ready), Phase::Degraded);
        assert_eq!(failing_phase(Phase::Degraded), Phase::Degraded);
        assert_eq!(failing_phase(Phase::Provisioning), Phase::Failed);
        assert_eq!(failing_phase(Phase::Failed), Phase::Failed);
        assert_eq!(failing_phase(Phase::Deleting), Phase::Deleting);
    }
}
