//! The cluster-autoscaler's `externalgrpc` cloud provider, served with
//! tonic: platform teams that already run and tune the upstream
//! cluster-autoscaler point it at Kubeforge, and it drives the autoscaling
//! node pools of one cluster with the same guarantees as `PATCH size`.
//!
//! - **Wire contract.** `proto/externalgrpc.proto` is ours, written to be
//!   wire-compatible with upstream's (package, service, methods, messages,
//!   field numbers); `proto/k8s/` is the subset of Kubernetes' v1.Node the
//!   template node needs, with Kubernetes' field numbers. Both are compiled
//!   by `build.rs` (protox, no protoc) into [`proto`].
//! - **Who calls.** Only mTLS: the server's certificate and every client
//!   certificate come from the service-wide CA of [`crate::grpc_pki`]; a
//!   client certificate names exactly one cluster of one tenant, and every
//!   call sees that cluster only. A cluster that is gone, or of another
//!   tenant, is `NotFound`, the same as one that never existed.
//! - **One autoscaler at a time.** The calls that change sizes act only on a
//!   cluster whose `autoscaler.mode` is `external` (the built-in autoscaler
//!   leaves those alone); otherwise they are refused with
//!   `FailedPrecondition` naming the mode. The calls that only read answer
//!   in any mode, so a cluster-autoscaler can be set up before the switch.
//! - **Same writes as the API.** A size change is the pool's new size, an
//!   operation authored by `cluster-autoscaler` (with the credential's
//!   serial), an event and the cluster's reconcile job, in one transaction
//!   with the pool's row locked ([`crate::autoscaler::apply::write_size`]).
//!   A deleted node is marked draining in that transaction, so the pool's
//!   pass drains it through the Eviction API and removes that node and no
//!   other.
//! - **Instances.** Every worker's kubelet registers `spec.providerID =
//!   kubeforge://<machine id>` (`kubeforge_cluster::names::provider_id`);
//!   the same string is the instance id here and `node_provider_id` in the
//!   API's machine views.

pub mod service;
pub mod template;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::grpc_pki::GrpcPki;
use crate::state::SharedApp;

/// The Rust types of `proto/`, nested as their protobuf packages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    pub mod clusterautoscaler {
        pub mod cloudprovider {
            pub mod v1 {
                pub mod externalgrpc {
                    tonic::include_proto!("clusterautoscaler.cloudprovider.v1.externalgrpc");
                }
            }
        }
    }
    pub mod k8s {
        pub mod io {
            pub mod api {
                pub mod core {
                    pub mod v1 {
                        tonic::include_proto!("k8s.io.api.core.v1");
                    }
                }
            }
            pub mod apimachinery {
                pub mod pkg {
                    pub mod api {
                        pub mod resource {
                            tonic::include_proto!("k8s.io.apimachinery.pkg.api.resource");
                        }
                    }
                    pub mod apis {
                        pub mod meta {
                            pub mod v1 {
                                tonic::include_proto!("k8s.io.apimachinery.pkg.apis.meta.v1");
                            }
                        }
                    }
                }
            }
        }
    }
    pub use clusterautoscaler::cloudprovider::v1::externalgrpc as ca;
    pub use k8s::io::api::core::v1 as core_v1;
    pub use k8s::io::apimachinery::pkg::api::resource;
    pub use k8s::io::apimachinery::pkg::apis::meta::v1 as meta_v1;
}

/// How long one call may take before the server gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The hosts the serving certificate names: the host of `advertise`, the
/// listen address when it is not a wildcard, and loopback.
pub fn serving_hosts(listen: SocketAddr, advertise: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    let advertised = advertise
        .rsplit_once(':')
        .map_or(advertise, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if !advertised.is_empty() {
        hosts.push(advertised.to_string());
    }
    if !listen.ip().is_unspecified() {
        hosts.push(listen.ip().to_string());
    }
    for h in ["127.0.0.1", "localhost"] {
        hosts.push(h.to_string());
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The server's TLS: a fresh serving certificate for `hosts` from the
/// service's gRPC CA, and client certificates required, verified against
/// that CA (a certificate from any other CA fails the handshake).
pub async fn tls_config(app: &SharedApp, hosts: &[String]) -> anyhow::Result<ServerTlsConfig> {
    let pki = GrpcPki::load_or_create(&app.pool, &app.secrets)
        .await
        .context("loading the externalgrpc CA")?;
    let serving = pki
        .server_cert(hosts, chrono::Utc::now())
        .context("issuing the externalgrpc serving certificate")?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(
            serving.cert_pem.as_bytes(),
            serving.key_pem.as_bytes(),
        ))
        .client_ca_root(Certificate::from_pem(pki.ca_pem().as_bytes()))
        .client_auth_optional(false))
}

/// Serves the provider on `listener` until `stop` turns true.
pub async fn serve(
    app: SharedApp,
    listener: tokio::net::TcpListener,
    tls: ServerTlsConfig,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let svc =
        proto::ca::cloud_provider_server::CloudProviderServer::new(service::Provider::new(app));
    Server::builder()
        .tls_config(tls)
        .context("configuring the externalgrpc TLS")?
        .timeout(CALL_TIMEOUT)
        .concurrency_limit_per_connection(64)
        .add_service(svc)
        .serve_with_incoming_shutdown(
            // Small answers: without TCP_NODELAY one waits for the
            // peer's delayed ACK (40 ms on Linux).
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60))),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )
        .await
        .context("serving externalgrpc")
}
