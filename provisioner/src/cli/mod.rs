//! The command line: the service commands (`up`, `serve`, `migrate`,
//! `token`) and the API client commands (`clusters`, `nodepools`,
//! `kubeconfig`) in one binary.

pub mod client;
