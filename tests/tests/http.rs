//! The API's listener on a real socket (`kubeforge::http`): a client that
//! never finishes its headers is cut off, idle kept-alive connections are
//! closed, connections past the cap wait, and TLS with a given certificate.

use kubeforge::http::HttpSettings;
use kubeforge_tests::TestApp;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _app: TestApp,
}

impl Server {
    async fn start(settings: HttpSettings, tls: Option<kubeforge::http::TlsAcceptor>) -> Server {
        let app = TestApp::new().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(kubeforge::http::serve(
            listener,
            app.router.clone(),
            settings,
            tls,
            rx,
        ));
        Server {
            addr,
            stop,
            task,
            _app: app,
        }
    }

    async fn shutdown(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

/// Reads until the peer closes; how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
}

/// Sends `GET /healthz` and reads the response's first line.
async fn healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn incomplete_headers_and_idle_connections_are_closed() {
    let server = Server::start(
        HttpSettings {
            max_connections: 16,
            header_read_timeout: Duration::from_secs(1),
        },
        None,
    )
    .await;
    // Half a request line, then nothing.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /heal").await.unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");

    // A kept-alive connection that sends nothing more goes the same way.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(healthz(&mut idle).await, "HTTP/1.1 200 OK");
    closed_within(&mut idle, Duration::from_secs(5)).await;

    // One that keeps sending requests is served each time.
    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..3 {
        assert_eq!(healthz(&mut busy).await, "HTTP/1.1 200 OK");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_one_to_close() {
    let server = Server::start(
        HttpSettings {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(30),
        },
        None,
    )
    .await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let second = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(healthz(&mut first).await, "HTTP/1.1 200 OK");
    // The third connection is made (the kernel queues it) but not served.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let waiting = tokio::spawn(async move {
        let line = healthz(&mut third).await;
        (line, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "served past the cap");
    let closed_at = Instant::now();
    drop(first);
    let (line, served_at) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(line, "HTTP/1.1 200 OK");
    assert!(served_at >= closed_at);
    drop(second);
    server.shutdown().await;
}

#[tokio::test]
async fn tls_with_the_given_certificate() {
    let dir = std::env::temp_dir().join(format!("kf-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_pem, cert, key) = kubeforge_tests::tls::server_cert(&dir);
    let tls = kubeforge::http::tls_acceptor(&cert, &key).expect("TLS config");
    let server = Server::start(HttpSettings::default(), Some(tls)).await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{}/healthz", server.addr.port()))
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::get(format!("http://localhost:{}/healthz", server.addr.port())).await;
    assert!(plain.is_err(), "{plain:?}");
    // A client that does not trust the CA is refused.
    let untrusting = reqwest::Client::new()
        .get(format!("https://localhost:{}/healthz", server.addr.port()))
        .send()
        .await;
    assert!(untrusting.is_err());
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_files_that_are_not_a_pair_are_refused() {
    let dir = std::env::temp_dir().join(format!("kf-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, cert, _) = kubeforge_tests::tls::server_cert(&dir);
    let err = kubeforge::http::tls_acceptor(&cert, &cert)
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("--tls-key"), "{err:#}");
    let missing = kubeforge::http::tls_acceptor(&dir.join("nope.pem"), &cert)
        .err()
        .expect("refused");
    assert!(format!("{missing:#}").contains("--tls-cert"), "{missing:#}");
    let _ = std::fs::remove_dir_all(&dir);
}
