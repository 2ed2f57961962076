//! The command line: the service commands (`up`, `serve`, `migrate`,
//! `token`) and the API client commands (`clusters`, `nodepools`,
//! `operations`, `events`, `machines`, `hosts`, `quotas`, `kubeconfig`,
//! `autoscaler`, `machine-types`) in one binary.

pub mod admin;
pub mod autoscaler;
pub mod client;
pub mod credentials;
pub mod operations;
pub mod output;
pub mod wait;
