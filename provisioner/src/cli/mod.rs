//! The command line: the service commands (`up`, `serve`, `migrate`,
//! `token`) and the API client commands (`clusters`, `nodepools`,
//! `kubeconfig`, `autoscaler`, `machine-types`) in one binary.

pub mod autoscaler;
pub mod client;
pub mod credentials;
