//! The command line: the service commands (`up`, `serve`, `migrate`,
//! `token`) and the API client commands (`clusters`, `nodepools`,
//! `operations`, `events`, `machines`, `hosts`, `quotas`, `kubeconfig`,
//! `autoscaler`, `machine-types`) in one binary.
//! [`kubeconfig`] merges kubeconfigs into files and is kubectl's
//! credential plugin.

pub mod admin;
pub mod autoscaler;
pub mod client;
pub mod credentials;
pub mod kubeconfig;
pub mod operations;
pub mod output;
pub mod wait;
