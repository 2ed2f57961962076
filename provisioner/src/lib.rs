//! Kubeforge: a self-hosted managed-Kubernetes service.
//!
//! This crate is the `kubeforge` binary's library: the HTTP API (`api`),
//! the application calls behind it (`app`), the Postgres store (`store`),
//! the job engine and reconcilers (`engine`), the builtin autoscaler
//! (`autoscaler`), machine providers
//! (`providers`), the PKI of the autoscaler's gRPC endpoint (`grpc_pki`),
//! the cluster DNS server (`dns`),
//! the embedded Postgres of `kubeforge up`
//! (`embedded_pg`), the server wiring (`server`) and the CLI client
//! (`cli`). The domain types live in the `kubeforge-cluster` crate.

pub mod api;
pub mod app;
pub mod artifacts;
pub mod auth;
pub mod autoscaler;
pub mod cli;
pub mod context;
pub mod crypto;
pub mod dns;
pub mod embedded_pg;
pub mod engine;
pub mod error;
pub mod externalgrpc;
pub mod grpc_pki;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod providers;
pub mod ratelimit;
pub mod server;
pub mod ssh;
pub mod state;
pub mod store;
pub mod tenant;
