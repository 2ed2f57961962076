//! The API's listener: HTTP/1.1 over TCP, or over TLS (rustls) when the
//! service is given a certificate, with the limits a door on a network
//! needs and `axum::serve` does not have.
//!
//! - At most [`HttpSettings::max_connections`] connections are open at
//!   once: the loop takes a permit before `accept`, so a connection beyond
//!   the cap waits in the kernel's backlog until one closes.
//! - A connection must complete a request's headers within
//!   [`HttpSettings::header_read_timeout`] of the server waiting for them:
//!   for the first request (the TLS handshake included) and for every next
//!   one on a kept-alive connection, so the same limit closes idle
//!   keep-alive connections. Handlers have their own timeout (`api`).
//! - Shutdown stops accepting, lets requests in flight finish, and returns
//!   once every connection has closed.
//!
//! HTTP/2 is not served: every client of the API speaks HTTP/1.1, and the
//! limits above are HTTP/1's.

use anyhow::Context as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
pub use tokio_rustls::TlsAcceptor;

/// Limits of the listener.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// Longest wait for a request's headers (and a TLS handshake); also
    /// how long a kept-alive connection may sit idle.
    pub header_read_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// A TLS server configuration from PEM files: the certificate chain
/// (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading --tls-cert {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--tls-cert {} is not PEM certificates", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "--tls-cert {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {} holds no PEM private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("--tls-cert and --tls-key do not make a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown` turns true, then waits
/// for the open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    settings: HttpSettings,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let max = settings.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.context("connection permits closed")?,
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, a connection reset before it was
                    // taken: none of it is the listener's end.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let settings = settings.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            connection(stream, peer, router, &settings, tls, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    // Every connection holds a permit until it closes.
    let _all = permits
        .acquire_many(u32::try_from(max).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: axum::Router,
    settings: &HttpSettings,
    tls: Option<TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
) {
    match tls {
        None => http1(stream, router, settings, shutdown).await,
        Some(acceptor) => {
            match tokio::time::timeout(settings.header_read_timeout, acceptor.accept(stream)).await
            {
                Ok(Ok(tls_stream)) => http1(tls_stream, router, settings, shutdown).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn http1<S>(
    stream: S,
    router: axum::Router,
    settings: &HttpSettings,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let outcome = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = outcome {
        // Header timeouts, resets and malformed requests: the client's doing.
        tracing::debug!(error = %e, "connection closed with an error");
    }
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
