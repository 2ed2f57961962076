//! Operations, the record of each accepted request: the kinds there are,
//! the steps each kind moves through (in order), and the progress of an
//! operation and of each step. The ledger stores these spellings; the API
//! shows them.

use std::fmt;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    ClusterCreate,
    ClusterUpdate,
    ClusterDelete,
    NodePoolCreate,
    NodePoolUpdate,
    NodePoolDelete,
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
    pub const ALL: [OperationKind; 6] = [
        Self::ClusterCreate,
        Self::ClusterUpdate,
        Self::ClusterDelete,
        Self::NodePoolCreate,
        Self::NodePoolUpdate,
        Self::NodePoolDelete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterCreate => "cluster_create",
            Self::ClusterUpdate => "cluster_update",
            Self::ClusterDelete => "cluster_delete",
            Self::NodePoolCreate => "node_pool_create",
            Self::NodePoolUpdate => "node_pool_update",
            Self::NodePoolDelete => "node_pool_delete",
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

impl Progress {
    pub const ALL: [Progress; 4] = [Self::Pending, Self::Running, Self::Succeeded, Self::Failed];

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
