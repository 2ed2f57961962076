//! The externalgrpc provider in tests: the service's real tonic server on
//! a loopback port, and a client generated from Kubeforge's `.proto`
//! (tonic's generated client, the one an upstream cluster-autoscaler's
//! Go client mirrors) holding a credential from
//! `POST /v1/clusters/{cluster}/autoscaler/credentials`.

use std::net::SocketAddr;

use kubeforge::app::SharedApp;
use kubeforge::externalgrpc::proto::ca::cloud_provider_client::CloudProviderClient;
use serde_json::Value;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A loopback port for the gRPC server, bound before the app is built so
/// the app's `grpc_address` can name it.
pub async fn bind() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let addr = listener.local_addr().expect("local addr").to_string();
    (listener, addr)
}

/// The provider served until dropped.
pub struct GrpcServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Serves the provider of `app` on `listener`, as `kubeforge serve
/// --grpc-listen` does.
pub async fn start(app: &SharedApp, listener: tokio::net::TcpListener) -> GrpcServer {
    let addr = listener.local_addr().expect("local addr");
    let hosts = kubeforge::externalgrpc::serving_hosts(addr, &addr.to_string());
    let tls = kubeforge::externalgrpc::tls_config(app, &hosts)
        .await
        .expect("the server's TLS");
    let (stop, rx) = watch::channel(false);
    let app = app.clone();
    tokio::spawn(async move {
        if let Err(e) = kubeforge::externalgrpc::serve(app, listener, tls, rx).await {
            eprintln!("externalgrpc server stopped: {e:#}");
        }
    });
    GrpcServer { addr, stop }
}

/// A client holding the credential `creds` (the JSON of the credentials
/// route), dialing its `address` and checking the server against its
/// `ca_pem`.
pub async fn client(
    creds: &Value,
) -> Result<CloudProviderClient<Channel>, tonic::transport::Error> {
    let field = |k: &str| {
        creds[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} in {creds}"))
            .to_string()
    };
    connect(
        &field("address"),
        &field("ca_pem"),
        Some((&field("cert_pem"), &field("key_pem"))),
    )
    .await
}

/// A client with any CA and client identity (or none).
pub async fn connect(
    address: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<CloudProviderClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("127.0.0.1");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{address}"))
        .expect("a URI")
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(CloudProviderClient::new(channel))
}
