//! The test harness: real Postgres, a fresh database per test.
//!
//! One PostgreSQL server serves every test process of a run: it lives in
//! `target/kf-test-pg` and is started by the first test that needs it
//! (or by `scripts/test`, which also stops it). The schema is built once
//! into a template database named after the migrations' checksums; each
//! test then gets `CREATE DATABASE ... TEMPLATE`, which takes
//! milliseconds. `TestApp` wires the real app, router and engine on that
//! database, with the in-memory provider TEST DOUBLE registered for the
//! `lab` kind (the shipped binary registers no such thing).

pub mod cli;
pub mod conformance;
pub mod dns;
pub mod ec2_lab;
pub mod grpc;
pub mod hosts;
pub mod lab;
pub mod moto;
pub mod python;
pub mod tls;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use kubeforge::app::{Config, SharedApp};
use kubeforge::context::Role;
use kubeforge::embedded_pg::EmbeddedPostgres;
use kubeforge::engine::jobs::{Engine, EngineConfig};
use kubeforge::providers::test_double::InMemoryProvider;
use kubeforge::providers::ProviderRegistry;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tower::ServiceExt;

static SERVER: OnceCell<(EmbeddedPostgres, String)> = OnceCell::const_new();

/// The shared test server's data dir.
pub fn server_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KUBEFORGE_TEST_PG_DIR") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/kf-test-pg")
}

/// (the server, template database name), starting the server and
/// building the template once. The server's URLs carry its password.
async fn server() -> &'static (EmbeddedPostgres, String) {
    SERVER
        .get_or_init(|| async {
            let pg = EmbeddedPostgres::attach_or_start(&server_dir())
                .await
                .expect("starting the test PostgreSQL");
            let template = template_name();
            build_template(&pg.url("postgres"), &pg.url(&template), &template)
                .await
                .expect("building the template database");
            (pg, template)
        })
        .await
}

fn template_name() -> String {
    use fnv1a::hash;
    let mut all = Vec::new();
    for m in kubeforge::store::MIGRATOR.iter() {
        all.extend_from_slice(&m.checksum);
    }
    format!("kf_template_{}", hash(&all))
}

/// 64-bit FNV-1a (not a cryptographic hash): enough to name a template
/// after the migrations' checksums.
mod fnv1a {
    /// The FNV-1a hash of `data`, as 16 lowercase hex digits.
    pub fn hash(data: &[u8]) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in data {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("{h:016x}")
    }
}

async fn build_template(admin_url: &str, template_url: &str, template: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(admin_url).await?;
    // Several test processes may race here: one builds, the others wait.
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut admin)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(template)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {template}"))
            .execute(&mut admin)
            .await?;
        let pool = kubeforge::store::connect(template_url, 1).await?;
        kubeforge::store::migrate(&pool).await?;
        pool.close().await;
    }
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut admin)
        .await?;
    Ok(())
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let (_, template) = server().await;
        Self::create("t", &format!("TEMPLATE {template}")).await
    }

    /// An empty database (no schema), for migration tests.
    pub async fn empty() -> TestDb {
        Self::create("e", "").await
    }

    async fn create(prefix: &str, options: &str) -> TestDb {
        let (pg, _) = server().await;
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&pg.url("postgres"))
            .await
            .expect("admin connection");
        sqlx::query(&format!("CREATE DATABASE {name} {options}"))
            .execute(&mut admin)
            .await
            .expect("creating the test database");
        TestDb {
            url: pg.url(&name),
            name,
        }
    }

    pub async fn pool(&self, max: u32) -> PgPool {
        kubeforge::store::connect(&self.url, max)
            .await
            .expect("test pool")
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

/// The whole app on a fresh database.
pub struct TestApp {
    pub db: TestDb,
    pub app: SharedApp,
    pub router: axum::Router,
    pub pool: PgPool,
    /// TEST DOUBLE provider, registered for the `lab` kind (or the kind
    /// given to [`TestApp::with_double_kind`]).
    pub provider: Arc<InMemoryProvider>,
    pub engine: Engine,
    /// The service's cluster DNS server, in lab tests (on the test
    /// bridge's gateway, port 53).
    pub dns: Option<dns::ClusterDns>,
}

/// Engine settings for tests: short leases and backoff.
pub fn test_engine_config() -> EngineConfig {
    EngineConfig {
        lease: Duration::from_secs(2),
        poll_interval: Duration::from_millis(200),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..EngineConfig::default()
    }
}

/// Sends the service's log (info and up, or `RUST_LOG`) through the test
/// harness's capture: a lab test that fails prints what the engine did,
/// a passing one prints nothing. Events from threads the harness does not
/// capture (blocking pools) reach stderr. Installed once per test binary.
pub fn test_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

/// Engine settings for lab tests: [`test_engine_config`] with a 20 s
/// lease. Lab jobs run for tens of seconds over SSH on a machine that also
/// runs several clusters' control planes (in CI, the conformance cluster
/// beside the other end-to-end tests); a 2 s lease (renewed every 0.5 s)
/// was lost whenever the machine was starved for a few seconds, and the
/// job ran again. Now renewed every 5 s, and given up (the handler
/// cancelled) after 10 s without a successful renewal. No lab test waits
/// for a lease to expire.
pub fn lab_engine_config() -> EngineConfig {
    EngineConfig {
        lease: Duration::from_secs(20),
        ..test_engine_config()
    }
}

impl TestApp {
    /// The app with no rate limits (tests send requests far faster than
    /// tenants may); [`TestApp::with_config`] takes the service's defaults
    /// unless the test sets its own.
    pub async fn new() -> TestApp {
        Self::with_config(Config {
            rate_limits: kubeforge::ratelimit::RateLimits::UNLIMITED,
            ..Config::default()
        })
        .await
    }

    /// The real app and router on `pool` (which may reach no database at
    /// all), without an engine.
    pub fn app_on(pool: PgPool, config: Config) -> (SharedApp, axum::Router) {
        Self::app_with_double(pool, Arc::new(InMemoryProvider::new("lab")), config)
    }

    /// The real app and router on `pool` with `provider` (the TEST DOUBLE)
    /// registered for its kind, and the tests' fixed keys.
    pub fn app_with_double(
        pool: PgPool,
        provider: Arc<InMemoryProvider>,
        config: Config,
    ) -> (SharedApp, axum::Router) {
        Self::app_with_providers(pool, provider, Vec::new(), config)
    }

    /// [`TestApp::app_with_double`] with REAL providers registered too.
    pub fn app_with_providers(
        pool: PgPool,
        provider: Arc<InMemoryProvider>,
        real: Vec<Arc<dyn kubeforge::providers::Provider>>,
        config: Config,
    ) -> (SharedApp, axum::Router) {
        let mut providers = ProviderRegistry::default();
        providers.register(provider);
        for p in real {
            providers.register(p);
        }
        let app = kubeforge::server::build_app(
            pool,
            kubeforge::auth::AuthKeys::from_secret(&[7u8; 32]).expect("keys"),
            kubeforge::crypto::SecretBox::new(&[9u8; 32]).expect("secret box"),
            providers,
            config,
            None,
        )
        .expect("app");
        let router = kubeforge::api::router(app.clone());
        (app, router)
    }

    pub async fn with_config(config: Config) -> TestApp {
        Self::with_double_kind("lab", config).await
    }

    /// [`TestApp::with_config`] with the test double serving provider
    /// `kind` (`ssh`: clusters on it take node pools and host selectors at
    /// the API; nothing is claimed, the double makes machines in memory).
    pub async fn with_double_kind(kind: &'static str, config: Config) -> TestApp {
        Self::assemble(kind, Vec::new(), config).await
    }

    /// A fresh database, the app with the double for `kind` and `real`
    /// providers, and an engine.
    async fn assemble(
        kind: &'static str,
        real: Vec<Arc<dyn kubeforge::providers::Provider>>,
        config: Config,
    ) -> TestApp {
        let db = TestDb::new().await;
        let pool = db.pool(60).await;
        let provider = Arc::new(InMemoryProvider::new(kind));
        let (app, router) = Self::app_with_providers(pool.clone(), provider.clone(), real, config);
        let engine = kubeforge::server::build_engine(&app, test_engine_config());
        TestApp {
            db,
            app,
            router,
            pool,
            provider,
            engine,
            dns: None,
        }
    }

    /// [`TestApp::new`] with a REAL provider (the `aws` provider against
    /// moto) registered next to the lab double, without machine access
    /// (no SSH key: machines are made and deleted, never logged in to).
    pub async fn with_real_provider(real: Arc<dyn kubeforge::providers::Provider>) -> TestApp {
        let config = Config {
            rate_limits: kubeforge::ratelimit::RateLimits::UNLIMITED,
            ..Config::default()
        };
        Self::assemble("lab", vec![real], config).await
    }

    /// The whole app with the REAL lab provider (systemd-nspawn machines on
    /// `bridge`/`subnet`) and machine access, state under `data_dir`.
    /// Panics with how to fix it when the host lacks the lab's parts.
    pub async fn with_lab(data_dir: &std::path::Path, bridge: &str, subnet: &str) -> TestApp {
        Self::with_lab_config(data_dir, bridge, subnet, Config::default()).await
    }

    /// [`TestApp::with_lab`] with service settings of the test's choosing
    /// (e.g. a short control-plane restart window).
    pub async fn with_lab_config(
        data_dir: &std::path::Path,
        bridge: &str,
        subnet: &str,
        mut config: Config,
    ) -> TestApp {
        test_log();
        let db = TestDb::new().await;
        let pool = db.pool(60).await;
        let (providers, access) =
            kubeforge::server::machine_setup_on(data_dir, bridge, subnet).await;
        let dns = dns::bind(subnet);
        config.dns_address = Some(dns.address());
        assert!(
            providers.get("lab").is_some() && access.is_some(),
            "the lab provider is off on this host (see the log): run scripts/build-lab-image and scripts/build-kube as root"
        );
        let app = kubeforge::server::build_app(
            pool.clone(),
            kubeforge::auth::AuthKeys::from_secret(&[7u8; 32]).expect("keys"),
            kubeforge::crypto::SecretBox::new(&[9u8; 32]).expect("secret box"),
            providers,
            config,
            access,
        )
        .expect("app");
        let router = kubeforge::api::router(app.clone());
        let engine = kubeforge::server::build_engine(&app, lab_engine_config());
        let dns = Some(dns.serve(&app).await);
        TestApp {
            db,
            app,
            router,
            pool,
            provider: Arc::new(InMemoryProvider::new("unused")),
            engine,
            dns,
        }
    }

    /// [`TestApp::with_lab`] with the REAL `ssh` provider registered too:
    /// clusters with `{"kind": "ssh"}` claim hosts registered through
    /// `POST /v1/hosts` (the pool starts empty).
    pub async fn with_lab_and_ssh(
        data_dir: &std::path::Path,
        bridge: &str,
        subnet: &str,
    ) -> TestApp {
        Self::with_lab_plus(
            data_dir,
            bridge,
            subnet,
            |providers, access, pool, secrets| {
                kubeforge::server::register_ssh_provider(providers, access, pool, secrets);
            },
        )
        .await
    }

    /// [`TestApp::with_lab`] with the REAL `aws` provider registered too
    /// (its EC2 API: moto, see [`crate::ec2_lab`] for instances that are
    /// lab machines).
    pub async fn with_lab_and_aws(
        data_dir: &std::path::Path,
        bridge: &str,
        subnet: &str,
        aws: kubeforge::providers::aws::AwsProvider,
    ) -> TestApp {
        Self::with_lab_plus(data_dir, bridge, subnet, |providers, _, _, _| {
            providers.register(Arc::new(aws));
        })
        .await
    }

    /// The lab's providers and machine access, `add` registering more, the
    /// app and an engine (no cluster DNS).
    async fn with_lab_plus(
        data_dir: &std::path::Path,
        bridge: &str,
        subnet: &str,
        add: impl FnOnce(
            &mut ProviderRegistry,
            &kubeforge::ssh::MachineAccess,
            &PgPool,
            &kubeforge::crypto::SecretBox,
        ),
    ) -> TestApp {
        test_log();
        let db = TestDb::new().await;
        let pool = db.pool(60).await;
        let (mut providers, access) =
            kubeforge::server::machine_setup_on(data_dir, bridge, subnet).await;
        let Some(machine_access) = access.as_deref() else {
            panic!("the lab provider is off on this host (see the log): run scripts/build-lab-image and scripts/build-kube as root");
        };
        let secrets = kubeforge::crypto::SecretBox::new(&[9u8; 32]).expect("secret box");
        add(&mut providers, machine_access, &pool, &secrets);
        let app = kubeforge::server::build_app(
            pool.clone(),
            kubeforge::auth::AuthKeys::from_secret(&[7u8; 32]).expect("keys"),
            secrets,
            providers,
            Config::default(),
            access,
        )
        .expect("app");
        let router = kubeforge::api::router(app.clone());
        let engine = kubeforge::server::build_engine(&app, lab_engine_config());
        TestApp {
            db,
            app,
            router,
            pool,
            provider: Arc::new(InMemoryProvider::new("unused")),
            engine,
            dns: None,
        }
    }

    /// A valid token for `tenant` with `role`.
    pub fn token(&self, tenant: &str, role: Role) -> String {
        self.app
            .auth
            .mint(
                tenant,
                "tester",
                role,
                Duration::from_secs(600),
                chrono::Utc::now().timestamp(),
            )
            .expect("token")
    }

    /// Sends one request through the real router.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let raw = body.map(|b| serde_json::to_vec(&b).expect("json"));
        self.call_raw(method, path, token, raw, headers).await
    }

    /// Like [`call`] with a raw body (sent as application/json).
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map_or_else(Body::empty, Body::from))
            .expect("request");
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("infallible router");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    /// Runs due jobs until none is due.
    pub async fn run_jobs(&self) -> usize {
        self.engine.run_until_idle().await.expect("engine run")
    }

    /// Makes every queued job due now, then runs jobs until idle (bounded).
    pub async fn settle(&self) {
        for _ in 0..20 {
            sqlx::query("UPDATE jobs SET run_after = now() WHERE state = 'queued'")
                .execute(&self.pool)
                .await
                .expect("hurry jobs");
            let ran = self.run_jobs().await;
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM operations WHERE state IN ('pending','running')
                 AND type NOT IN ('cluster_create')",
            )
            .fetch_one(&self.pool)
            .await
            .expect("count");
            if ran == 0 || pending == 0 {
                // one more pass so status reflects the last change
                sqlx::query("UPDATE jobs SET run_after = now() WHERE state = 'queued'")
                    .execute(&self.pool)
                    .await
                    .expect("hurry jobs");
                self.run_jobs().await;
                return;
            }
        }
    }

    /// Row count of a table (for "nothing written" checks).
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Counts of every tenant-visible table, in a fixed order.
    pub async fn counts(&self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for t in [
            "tenants",
            "clusters",
            "node_pools",
            "machines",
            "operations",
            "events",
            "jobs",
            "idempotency_keys",
            "hosts",
        ] {
            out.push((t.to_string(), self.count(t).await));
        }
        out
    }
}

/// A minimal valid create body.
pub fn cluster_body(name: &str) -> Value {
    serde_json::json!({
        "name": name,
        "kubernetes_version": "1.20.2",
        "provider": {"kind": "lab"},
        "control_plane": {"replicas": 1, "machine_type": "small"},
        "network": {"pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12"},
        "node_pools": [{"name": "default", "machine_type": "small", "size": 2}],
        "labels": {"team": "web"}
    })
}
