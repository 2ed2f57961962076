//! Operations, the record of each accepted request: the kinds there are,
//! the steps each kind moves through (in order), and the progress of an
//! operation and of each step. The ledger stores these spellings; the API
//! shows them.

use std::fmt;

use chrono::{DateTime, Utc};

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    ClusterCreate,
    ClusterUpdate,
    ClusterDelete,
    NodePoolCreate,
    NodePoolUpdate,
    NodePoolDelete,
    /// A cluster's kubeconfigs revoked: a new credential generation bound
    /// in the cluster (its target generation is that credential generation).
    CredentialsRevoke,
}

/// One step of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The machines the spec asks for exist and run.
    Machines,
    /// The control plane serves.
    ControlPlane,
    /// A cluster's changed fields are in effect.
    Apply,
    /// Every ledger machine deleted at its provider.
    DeleteMachines,
    /// Anything the provider still holds tagged with the cluster deleted.
    SweepProvider,
    /// The cluster's sealed secrets removed.
    RemoveSecrets,
    /// The resource leaves the API.
    Finalize,
    /// The pool's nodes joined and Ready.
    Join,
    /// Nodes being removed drained.
    Drain,
}

/// Where an operation, or one of its steps, stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Progress {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl OperationKind {
    pub const ALL: [OperationKind; 7] = [
        Self::ClusterCreate,
        Self::ClusterUpdate,
        Self::ClusterDelete,
        Self::NodePoolCreate,
        Self::NodePoolUpdate,
        Self::NodePoolDelete,
        Self::CredentialsRevoke,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterCreate => "cluster_create",
            Self::ClusterUpdate => "cluster_update",
            Self::ClusterDelete => "cluster_delete",
            Self::NodePoolCreate => "node_pool_create",
            Self::NodePoolUpdate => "node_pool_update",
            Self::NodePoolDelete => "node_pool_delete",
            Self::CredentialsRevoke => "credentials_revoke",
        }
    }

    /// The ledger's spelling; None for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The steps an operation of this kind goes through, in order.
    pub fn steps(self) -> &'static [Step] {
        use Step::*;
        match self {
            Self::ClusterCreate => &[Machines, ControlPlane],
            Self::ClusterUpdate => &[Apply],
            Self::ClusterDelete => &[DeleteMachines, SweepProvider, RemoveSecrets, Finalize],
            Self::NodePoolCreate => &[Machines, Join],
            Self::NodePoolUpdate => &[Machines, Join, Drain],
            Self::NodePoolDelete => &[Drain, DeleteMachines, Finalize],
            Self::CredentialsRevoke => &[Apply],
        }
    }
}

impl Step {
    pub const ALL: [Step; 9] = [
        Self::Machines,
        Self::ControlPlane,
        Self::Apply,
        Self::DeleteMachines,
        Self::SweepProvider,
        Self::RemoveSecrets,
        Self::Finalize,
        Self::Join,
        Self::Drain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Machines => "machines",
            Self::ControlPlane => "control_plane",
            Self::Apply => "apply",
            Self::DeleteMachines => "delete_machines",
            Self::SweepProvider => "sweep_provider",
            Self::RemoveSecrets => "remove_secrets",
            Self::Finalize => "finalize",
            Self::Join => "join",
            Self::Drain => "drain",
        }
    }

    /// The ledger's spelling; None for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The prefix of the steps a cluster's creation adds, one per node pool
/// it was created with: `node_pool/<pool>`. The creation succeeds when
/// the control plane serves and each of these pools has its nodes Ready.
pub const POOL_STEP_PREFIX: &str = "node_pool/";

/// The creation step that follows the initial pool `pool`.
pub fn pool_step(pool: &str) -> String {
    format!("{POOL_STEP_PREFIX}{pool}")
}

/// The pool a creation step follows, if it is a pool step.
pub fn step_pool(step: &str) -> Option<&str> {
    step.strip_prefix(POOL_STEP_PREFIX)
}

impl Progress {
    pub const ALL: [Progress; 4] = [Self::Pending, Self::Running, Self::Succeeded, Self::Failed];

    /// A step under way: succeeded once `done`, running until then.
    pub fn succeeded_if(done: bool) -> Self {
        if done {
            Self::Succeeded
        } else {
            Self::Running
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// The ledger's spelling; None for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Still to come or under way.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_says_each_point_reached_after_the_request() {
        let t0: DateTime<Utc> = "2026-12-02T00:00:00Z".parse().unwrap();
        let at = |ms: i64| Some(t0 + chrono::TimeDelta::milliseconds(ms));
        let mut t = Timeline {
            requested: t0,
            ..Timeline::default()
        };
        assert_eq!(t.describe(), "requested");
        t.running = at(3_140);
        t.bootstrap_started = at(3_420);
        assert_eq!(t.describe(), "running +3.1 s, bootstrap +3.4 s");
        t.registered = at(15_000);
        t.ready = at(24_160);
        assert_eq!(
            t.describe(),
            "running +3.1 s, bootstrap +3.4 s, registered +15.0 s, Ready +24.2 s"
        );
    }

    #[test]
    fn spellings_round_trip() {
        for k in OperationKind::ALL {
            assert_eq!(OperationKind::parse(k.as_str()), Some(k));
            assert!(!k.steps().is_empty());
        }
        for s in Step::ALL {
            assert_eq!(Step::parse(s.as_str()), Some(s));
        }
        for p in Progress::ALL {
            assert_eq!(Progress::parse(p.as_str()), Some(p));
        }
        assert_eq!(OperationKind::parse("ClusterCreate"), None);
        assert_eq!(Step::parse("sweep"), None);
        // Pool steps are not fixed steps, and read back to their pool.
        assert_eq!(Step::parse(&pool_step("web")), None);
        assert_eq!(step_pool(&pool_step("web")), Some("web"));
        assert_eq!(step_pool("machines"), None);
    }

    #[test]
    fn every_step_belongs_to_some_kind() {
        for s in Step::ALL {
            assert!(
                OperationKind::ALL.iter().any(|k| k.steps().contains(&s)),
                "{s:?} is in no kind's plan"
            );
        }
        assert_eq!(
            OperationKind::NodePoolUpdate.steps(),
            &[Step::Machines, Step::Join, Step::Drain]
        );
    }
}

/// Where a new node's time went, from its machine's request on: what an
/// operation that adds nodes shows per node, so the next second to cut is
/// visible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    pub requested: DateTime<Utc>,
    pub running: Option<DateTime<Utc>>,
    pub bootstrap_started: Option<DateTime<Utc>>,
    pub registered: Option<DateTime<Utc>>,
    pub ready: Option<DateTime<Utc>>,
}

impl Timeline {
    /// `running +3.1 s, bootstrap +3.4 s, registered +15.0 s, Ready
    /// +24.2 s`: each point reached, in seconds after the request.
    pub fn describe(&self) -> String {
        let points = [
            ("running", self.running),
            ("bootstrap", self.bootstrap_started),
            ("registered", self.registered),
            ("Ready", self.ready),
        ];
        let reached: Vec<String> = points
            .iter()
            .filter_map(|(what, at)| {
                let secs = ((*at)? - self.requested).num_milliseconds() as f64 / 1000.0;
                Some(format!("{what} +{secs:.1} s"))
            })
            .collect();
        if reached.is_empty() {
            "requested".into()
        } else {
            reached.join(", ")
        }
    }
}
