//! An EC2 API for the `aws` provider's tests: PyPI's `moto_server` on
//! loopback (installed by `scripts/python-tools`), behind [`FaultProxy`], a
//! small HTTP proxy that can throttle, fail or lose the answer to chosen
//! calls and records every call it passed on.
//!
//! The proxy also stands in for EC2's serial console where a test says so
//! ([`FaultProxy::set_console`]): moto's `GetConsoleOutput` answers the
//! same canned text for every instance, and the lab's "EC2 on the lab"
//! machines (`crate::ec2_lab`) need their own, with their host keys.
//!
//! The SDK finds them the standard way: [`shared`] points
//! `AWS_ENDPOINT_URL` at the proxy and sets dummy credentials in this test
//! process's environment, once, before any client is built. Both servers
//! run on threads of their own for the whole test process (each test has
//! its own runtime), and moto dies with the process (`PR_SET_PDEATHSIG`
//! on the thread that started it, which never ends).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The region the tests use.
pub const REGION: &str = "eu-west-1";

/// What the proxy does to a call that matches a [`Fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// 503 `RequestLimitExceeded`, EC2's throttling answer; not passed on.
    Throttle,
    /// 500 `InternalError`; not passed on.
    ServerError,
    /// 500 `InsufficientInstanceCapacity`; not passed on.
    NoCapacity,
    /// Passed on to moto (the work is done), then answered 504 without a
    /// body, as a gateway whose upstream timed out: the answer is lost.
    LoseAnswer,
}

/// A fault for the next `times` calls of `action` whose form body
/// contains every one of `needles` (a test's cluster or machine id, so
/// tests sharing the proxy do not hit each other's faults, and maybe
/// `InstanceType=m5.large`).
#[derive(Debug, Clone)]
pub struct Fault {
    pub action: String,
    pub needles: Vec<String>,
    pub kind: FaultKind,
    pub times: u32,
}

/// One call the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub action: String,
    /// The form body, decoded into pairs.
    pub params: Vec<(String, String)>,
    /// The access key id the request was signed with.
    pub access_key: String,
    /// Whether a fault answered it.
    pub faulted: bool,
}

impl Seen {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether any parameter value contains `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.params.iter().any(|(_, v)| v.contains(needle))
    }
}

#[derive(Default)]
struct ProxyState {
    faults: Vec<Fault>,
    seen: Vec<Seen>,
    /// Instance id -> its console text, answered instead of moto's.
    consoles: std::collections::HashMap<String, String>,
}

/// The proxy in front of moto.
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
}

impl FaultProxy {
    /// Adds a fault (see [`Fault`]).
    pub fn inject(&self, action: &str, needle: &str, kind: FaultKind, times: u32) {
        self.inject_where(action, &[needle], kind, times);
    }

    /// Adds a fault for calls whose body contains all of `needles`.
    pub fn inject_where(&self, action: &str, needles: &[&str], kind: FaultKind, times: u32) {
        self.state.lock().unwrap().faults.push(Fault {
            action: action.into(),
            needles: needles.iter().map(|n| n.to_string()).collect(),
            kind,
            times,
        });
    }

    /// Drops the faults still armed for `needle`.
    pub fn clear(&self, needle: &str) {
        self.state
            .lock()
            .unwrap()
            .faults
            .retain(|f| !f.needles.iter().any(|n| n == needle));
    }

    /// The calls seen so far that mention `needle` anywhere.
    pub fn seen(&self, needle: &str) -> Vec<Seen> {
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.mentions(needle))
            .cloned()
            .collect()
    }

    /// Every call seen so far.
    pub fn all_seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// From now on, `GetConsoleOutput` for `instance_id` answers `text`
    /// (the proxy as a TEST DOUBLE of EC2's console; see the module doc).
    pub fn set_console(&self, instance_id: &str, text: &str) {
        self.state
            .lock()
            .unwrap()
            .consoles
            .insert(instance_id.to_string(), text.to_string());
    }
}

/// The EC2 API of this test process: moto and the proxy in front of it.
pub struct Ec2Lab {
    pub moto: SocketAddr,
    pub proxy: FaultProxy,
}

impl Ec2Lab {
    /// The endpoint the SDK is pointed at (the proxy).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }
}

static LAB: OnceLock<Ec2Lab> = OnceLock::new();

/// Starts moto and the proxy once per test process and points the SDK's
/// standard settings at them.
pub fn shared() -> &'static Ec2Lab {
    LAB.get_or_init(|| {
        let moto = start_moto();
        let proxy = start_proxy(moto);
        let lab = Ec2Lab { moto, proxy };
        // Before any client exists, and only here: the SDK reads these.
        for (k, v) in [
            ("AWS_ENDPOINT_URL", lab.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ("AWS_CONFIG_FILE", "/dev/null".to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()),
        ] {
            std::env::set_var(k, v);
        }
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_SESSION_TOKEN");
        lab
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a loopback port")
        .local_addr()
        .unwrap()
        .port()
}

/// `moto_server` on a free loopback port, started from a thread that
/// lives as long as the process, so the child's death signal fires only
/// when the process ends.
fn start_moto() -> SocketAddr {
    let bin = crate::python::tool("moto_server");
    let port = free_port();
    let log = std::env::temp_dir().join(format!("kubeforge-moto-{port}.log"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = std::fs::File::create(&log).expect("moto's log");
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().expect("starting moto_server");
        tx.send(()).unwrap();
        let _ = child.wait();
    });
    rx.recv().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on {addr} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    addr
}

fn start_proxy(moto: SocketAddr) -> FaultProxy {
    let state = Arc::new(Mutex::new(ProxyState::default()));
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = state.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = reqwest::Client::new();
            let app = axum::Router::new().fallback(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let state = shared.clone();
                    let client = client.clone();
                    async move { forward(state, client, moto, method, uri, headers, body).await }
                },
            );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    FaultProxy { addr, state }
}

fn ec2_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>{message}</Message></Error></Errors><RequestID>kubeforge-fault-proxy</RequestID></Response>"
    );
    (status, [("content-type", "text/xml")], body).into_response()
}

async fn forward(
    state: Arc<Mutex<ProxyState>>,
    client: reqwest::Client,
    moto: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let action = params
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let access_key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').next())
        .unwrap_or_default()
        .to_string();
    let text = String::from_utf8_lossy(&body).into_owned();
    let console = (action == "GetConsoleOutput")
        .then(|| {
            let id = params.iter().find(|(k, _)| k == "InstanceId")?.1.clone();
            let text = state.lock().unwrap().consoles.get(&id).cloned()?;
            Some((id, text))
        })
        .flatten();
    let fault = {
        let mut st = state.lock().unwrap();
        let hit = st
            .faults
            .iter_mut()
            .find(|f| {
                f.times > 0 && f.action == action && f.needles.iter().all(|n| text.contains(n))
            })
            .map(|f| {
                f.times -= 1;
                f.kind
            });
        st.seen.push(Seen {
            action: action.clone(),
            params,
            access_key,
            faulted: hit.is_some(),
        });
        hit
    };
    match fault {
        Some(FaultKind::Throttle) => {
            return ec2_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "RequestLimitExceeded",
                "Request limit exceeded.",
            )
        }
        Some(FaultKind::ServerError) => {
            return ec2_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "An internal error has occurred.",
            )
        }
        Some(FaultKind::NoCapacity) => return ec2_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient capacity in the Availability Zone you requested.",
        ),
        Some(FaultKind::LoseAnswer) | None => {}
    }
    if let Some((id, text)) = console {
        use base64::Engine as _;
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<GetConsoleOutputResponse \
             xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>kubeforge-console</requestId>\
             <instanceId>{id}</instanceId><timestamp>{}</timestamp><output>{}</output></GetConsoleOutputResponse>",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S.000Z"),
            base64::engine::general_purpose::STANDARD.encode(text)
        );
        return (StatusCode::OK, [("content-type", "text/xml")], body).into_response();
    }
    let url = format!(
        "http://{moto}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut req = client.request(method, url).body(body);
    for (k, v) in headers.iter() {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    if fault == Some(FaultKind::LoseAnswer) {
        // The work is done; the caller never learns it.
        return (StatusCode::GATEWAY_TIMEOUT, Body::empty()).into_response();
    }
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .cloned()
        .unwrap_or_else(|| "text/xml".parse().unwrap());
    let bytes = resp.bytes().await.unwrap_or_default();
    (status, [("content-type", ctype)], bytes).into_response()
}

/// An EC2 client of the tests' own, through the proxy like the
/// provider's (the environment [`shared`] set), for setting up networks
/// and looking at what the provider made.
pub async fn ec2_client() -> aws_sdk_ec2::Client {
    shared();
    client_to(None).await
}

/// An EC2 client straight to moto, past the proxy: what the lab harness
/// does is not counted among the provider's calls.
pub async fn direct_client() -> aws_sdk_ec2::Client {
    let lab = shared();
    client_to(Some(format!("http://{}", lab.moto))).await
}

async fn client_to(endpoint: Option<String>) -> aws_sdk_ec2::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .http_client(http);
    if let Some(url) = endpoint {
        conf = conf.endpoint_url(url);
    }
    let conf = conf.load().await;
    aws_sdk_ec2::Client::new(&conf)
}

/// What is left in moto of cluster `cluster_id`, as boto3 (an independent
/// client, straight to moto) sees it: instances not terminated, security
/// groups and volumes tagged with the cluster, as `kind id` lines.
pub fn leftovers(cluster_id: &str) -> Vec<String> {
    let lab = shared();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/ec2_leftovers.py");
    let out = std::process::Command::new(crate::python::tool("python"))
        .arg(script)
        .arg(format!("http://{}", lab.moto))
        .arg(REGION)
        .arg(cluster_id)
        .output()
        .expect("running ec2_leftovers.py");
    assert!(
        out.status.success(),
        "ec2_leftovers.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
