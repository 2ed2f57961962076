//! Background work: the job queue's workers and the reconcilers they run.

pub mod controlplane;
pub mod pools;
pub mod reconcile;
pub mod worker;
