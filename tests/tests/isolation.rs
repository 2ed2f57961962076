//! Tenant isolation matrix: every route of the router against every kind
//! of caller (owner, another tenant, a viewer, a platform admin and a
//! collection of bad tokens), each pair with its expected status.
//!
//! Rules the matrix encodes (API.md, "Auth"):
//! - the owner gets 2xx (kubeconfig answers the documented 409
//!   `cluster_not_ready`);
//! - another tenant gets 404 for tenant A's objects, never 403, and its
//!   lists show none of A's objects;
//! - a viewer reads (200) but may not write (403);
//! - every bad token is 401 `unauthenticated`;
//! - platform routes are 403 for tenant roles and 2xx for platform-admin;
//! - public routes answer 200 whatever the caller sends.
//!
//! Around every case the whole database is snapshotted: a read or a
//! refused request changes nothing, and no request changes the data of a
//! tenant other than the caller's.

use axum::http::Method;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubeforge::context::Role;
use kubeforge_tests::{cluster_body, Resp, TestApp};
use serde_json::{json, Value};
use std::collections::BTreeMap;

const A: &str = "acme";
const B: &str = "globex";
const OPS: &str = "ops";
const KEY: [u8; 32] = [7u8; 32];
const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIECs8RC9oOFHzT7eV0hhVjweTNpUKq72quyZrEZ+4sYV";

// ---------------------------------------------------------------- callers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// Tenant A, role editor.
    OwnerEditor,
    /// Tenant A, role admin.
    OwnerAdmin,
    /// Tenant B, role admin.
    OtherTenant,
    /// Tenant A, role viewer.
    Viewer,
    /// Tenant `ops`, role platform-admin.
    PlatformAdmin,
    NoToken,
    Expired,
    WrongAudience,
    WrongIssuer,
    AlgNone,
    BadSignature,
    /// A's valid token with its payload swapped for tenant B's claims.
    ForgedPayload,
    /// Signed with the right key but HS512.
    OtherAlgorithm,
    UnknownRole,
    /// Right key, but the tenant claim is not a valid tenant id.
    InvalidTenant,
    /// Right key, but no `exp` claim.
    NoExpiry,
    Garbage,
    /// `Authorization: Basic ...`
    NotBearer,
}

const CALLERS: &[Caller] = &[
    Caller::OwnerEditor,
    Caller::OwnerAdmin,
    Caller::OtherTenant,
    Caller::Viewer,
    Caller::PlatformAdmin,
    Caller::NoToken,
    Caller::Expired,
    Caller::WrongAudience,
    Caller::WrongIssuer,
    Caller::AlgNone,
    Caller::BadSignature,
    Caller::ForgedPayload,
    Caller::OtherAlgorithm,
    Caller::UnknownRole,
    Caller::InvalidTenant,
    Caller::NoExpiry,
    Caller::Garbage,
    Caller::NotBearer,
];

impl Caller {
    fn label(self) -> String {
        match self {
            Caller::OwnerEditor => format!("owner ({A} editor)"),
            Caller::OwnerAdmin => format!("owner ({A} admin)"),
            Caller::OtherTenant => format!("other tenant ({B} admin)"),
            Caller::Viewer => format!("viewer of {A}"),
            Caller::PlatformAdmin => format!("platform-admin ({OPS})"),
            other => format!("{other:?}"),
        }
    }

    /// The tenant whose data this caller may change, if it authenticates.
    fn tenant(self) -> Option<&'static str> {
        match self {
            Caller::OwnerEditor | Caller::OwnerAdmin | Caller::Viewer => Some(A),
            Caller::OtherTenant => Some(B),
            Caller::PlatformAdmin => Some(OPS),
            _ => None,
        }
    }

    /// (bearer token, extra headers)
    fn credentials(self, app: &TestApp) -> (Option<String>, Vec<(&'static str, String)>) {
        let now = chrono::Utc::now().timestamp();
        let tok = match self {
            Caller::OwnerEditor => app.token(A, Role::Editor),
            Caller::OwnerAdmin => app.token(A, Role::Admin),
            Caller::OtherTenant => app.token(B, Role::Admin),
            Caller::Viewer => app.token(A, Role::Viewer),
            Caller::PlatformAdmin => app.token(OPS, Role::PlatformAdmin),
            Caller::NoToken => return (None, vec![]),
            Caller::NotBearer => {
                return (
                    None,
                    vec![("authorization", "Basic YWRtaW46YWRtaW4=".to_string())],
                )
            }
            Caller::Expired => sign(
                Algorithm::HS256,
                &KEY,
                &claims(A, "admin", "kubeforge", "kubeforge-api", now - 600),
            ),
            Caller::WrongAudience => sign(
                Algorithm::HS256,
                &KEY,
                &claims(A, "admin", "kubeforge", "some-other-api", now + 600),
            ),
            Caller::WrongIssuer => sign(
                Algorithm::HS256,
                &KEY,
                &claims(A, "admin", "evil-issuer", "kubeforge-api", now + 600),
            ),
            Caller::AlgNone => {
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
                let payload = b64.encode(
                    serde_json::to_vec(&claims(
                        A,
                        "admin",
                        "kubeforge",
                        "kubeforge-api",
                        now + 600,
                    ))
                    .unwrap(),
                );
                format!("{header}.{payload}.")
            }
            Caller::BadSignature => sign(
                Algorithm::HS256,
                &[8u8; 32],
                &claims(A, "admin", "kubeforge", "kubeforge-api", now + 600),
            ),
            Caller::ForgedPayload => {
                let good = app.token(A, Role::Admin);
                let parts: Vec<&str> = good.split('.').collect();
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let forged = b64.encode(
                    serde_json::to_vec(&claims(
                        B,
                        "admin",
                        "kubeforge",
                        "kubeforge-api",
                        now + 600,
                    ))
                    .unwrap(),
                );
                format!("{}.{}.{}", parts[0], forged, parts[2])
            }
            Caller::OtherAlgorithm => sign(
                Algorithm::HS512,
                &KEY,
                &claims(A, "admin", "kubeforge", "kubeforge-api", now + 600),
            ),
            Caller::UnknownRole => sign(
                Algorithm::HS256,
                &KEY,
                &claims(A, "root", "kubeforge", "kubeforge-api", now + 600),
            ),
            Caller::InvalidTenant => sign(
                Algorithm::HS256,
                &KEY,
                &claims(
                    "Acme/../globex",
                    "admin",
                    "kubeforge",
                    "kubeforge-api",
                    now + 600,
                ),
            ),
            Caller::NoExpiry => {
                let mut c = claims(A, "admin", "kubeforge", "kubeforge-api", now + 600);
                c.as_object_mut().unwrap().remove("exp");
                sign(Algorithm::HS256, &KEY, &c)
            }
            Caller::Garbage => "not-a-jwt".to_string(),
        };
        (Some(tok), vec![])
    }
}

fn claims(tenant: &str, role: &str, iss: &str, aud: &str, exp: i64) -> Value {
    json!({
        "sub": "mallory",
        "tenant": tenant,
        "role": role,
        "iss": iss,
        "aud": aud,
        "exp": exp,
        "iat": exp - 600,
    })
}

fn sign(alg: Algorithm, key: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
}

// ---------------------------------------------------------------- routes

/// What a caller should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exp {
    Ok(u16),
    Err(u16, &'static str),
}

impl Exp {
    fn success(self) -> bool {
        matches!(self, Exp::Ok(_))
    }
}

const NF: Exp = Exp::Err(404, "not_found");
const FORBIDDEN: Exp = Exp::Err(403, "forbidden");
const NOT_READY: Exp = Exp::Err(409, "cluster_not_ready");
const UNAUTH: Exp = Exp::Err(401, "unauthenticated");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Tenant API.
    Tenant,
    /// platform-admin only.
    Platform,
    /// No auth.
    Public,
}

/// One route with the expected outcome per caller kind. Bad tokens are
/// 401 on every non-public route.
struct Row {
    class: Class,
    method: Method,
    /// Placeholders: {ac} A's cluster id, {acn} its name, {ap} A's pool id,
    /// {apn} its name, {aop} A's create operation, {host} a host id.
    path: &'static str,
    body: Option<Value>,
    owner: Exp,
    /// What the owner's editor gets where it differs from the owner's
    /// admin (admin-only routes).
    editor: Option<Exp>,
    viewer: Exp,
    other: Exp,
    platform: Exp,
    /// A tenant other than the caller's that this route legitimately changes.
    target_tenant: Option<&'static str>,
}

fn row(
    class: Class,
    method: Method,
    path: &'static str,
    body: Option<Value>,
    [owner, viewer, other, platform]: [Exp; 4],
) -> Row {
    Row {
        class,
        method,
        path,
        body,
        owner,
        editor: None,
        viewer,
        other,
        platform,
        target_tenant: None,
    }
}

/// A row of an admin-only route: the owner's editor gets `editor`.
fn admin_row(
    class: Class,
    method: Method,
    path: &'static str,
    body: Option<Value>,
    editor: Exp,
    outcomes: [Exp; 4],
) -> Row {
    Row {
        editor: Some(editor),
        ..row(class, method, path, body, outcomes)
    }
}

fn rows() -> Vec<Row> {
    use Class::*;
    use Exp::Ok as S;
    let get = || Method::GET;
    let platform = [FORBIDDEN, FORBIDDEN, FORBIDDEN];
    let p = |ok: Exp| [platform[0], platform[1], platform[2], ok];
    let mut quota_put = row(
        Platform,
        Method::PUT,
        "/v1/tenants/acme/quota",
        Some(json!({"max_clusters": 5, "max_nodes": 20, "max_cpus": 400})),
        p(S(200)),
    );
    quota_put.target_tenant = Some(A);
    vec![
        // clusters
        row(
            Tenant,
            Method::POST,
            "/v1/clusters",
            Some(cluster_body("alpha-two")),
            [S(202), FORBIDDEN, S(202), S(202)],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters",
            None,
            [S(200), S(200), S(200), S(200)],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters?label=team%3Dweb",
            None,
            [S(200), S(200), S(200), S(200)],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters/{ac}",
            None,
            [S(200), S(200), NF, NF],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters/{acn}",
            None,
            [S(200), S(200), NF, NF],
        ),
        row(
            Tenant,
            Method::PATCH,
            "/v1/clusters/{ac}",
            Some(json!({"labels": {"team": "ops"}})),
            [S(200), FORBIDDEN, NF, NF],
        ),
        row(
            Tenant,
            Method::PATCH,
            "/v1/clusters/{acn}",
            Some(json!({"deletion_protection": true})),
            [S(200), FORBIDDEN, NF, NF],
        ),
        row(
            Tenant,
            Method::DELETE,
            "/v1/clusters/{ac}",
            None,
            [S(202), FORBIDDEN, NF, NF],
        ),
        row(
            Tenant,
            Method::DELETE,
            "/v1/clusters/{acn}",
            None,
            [S(202), FORBIDDEN, NF, NF],
        ),
        // node pools
        row(
            Tenant,
            Method::POST,
            "/v1/clusters/{ac}/node-pools",
            Some(json!({"name": "extra", "machine_type": "small", "size": 1})),
            [S(202), FORBIDDEN, NF, NF],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters/{ac}/node-pools",
            None,
            [S(200), S(200), NF, NF],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters/{ac}/node-pools/{ap}",
            None,
            [S(200), S(200), NF, NF],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters/{acn}/node-pools/{apn}",
            None,
            [S(200), S(200), NF, NF],
        ),
        row(
            Tenant,
            Method::PATCH,
            "/v1/clusters/{ac}/node-pools/{ap}",
            Some(json!({"size": 3})),
            [S(200), FORBIDDEN, NF, NF],
        ),
        row(
            Tenant,
            Method::DELETE,
            "/v1/clusters/{ac}/node-pools/{ap}",
            None,
            [S(202), FORBIDDEN, NF, NF],
        ),
        // views of a cluster
        row(
            Tenant,
            get(),
            "/v1/clusters/{ac}/machines",
            None,
            [S(200), S(200), NF, NF],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters/{ac}/operations",
            None,
            [S(200), S(200), NF, NF],
        ),
        row(
            Tenant,
            get(),
            "/v1/operations/{aop}",
            None,
            [S(200), S(200), NF, NF],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters/{ac}/events",
            None,
            [S(200), S(200), NF, NF],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters/{ac}/events?limit=1",
            None,
            [S(200), S(200), NF, NF],
        ),
        // Admin kubeconfigs: tenant admins only (an editor is refused
        // before the cluster is looked at).
        admin_row(
            Tenant,
            Method::POST,
            "/v1/clusters/{ac}/kubeconfig",
            Some(json!({"role": "admin", "ttl_seconds": 3600})),
            FORBIDDEN,
            [NOT_READY, FORBIDDEN, NF, NF],
        ),
        row(
            Tenant,
            Method::POST,
            "/v1/clusters/{ac}/kubeconfig",
            Some(json!({"role": "editor", "ttl_seconds": 3600})),
            [NOT_READY, FORBIDDEN, NF, NF],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters/{ac}/autoscaler",
            None,
            [S(200), S(200), NF, NF],
        ),
        row(
            Tenant,
            get(),
            "/v1/clusters/{acn}/autoscaler",
            None,
            [S(200), S(200), NF, NF],
        ),
        // revoking a cluster's kubeconfigs: tenant admins only
        admin_row(
            Tenant,
            Method::POST,
            "/v1/clusters/{ac}/credentials/revoke",
            None,
            FORBIDDEN,
            [S(202), FORBIDDEN, NF, NF],
        ),
        // revoking an API token by jti: platform admins only
        row(
            Platform,
            Method::POST,
            "/v1/tokens/revoke",
            Some(json!({"jti": "0123456789abcdef"})),
            p(S(200)),
        ),
        // the same for every caller who authenticates
        row(
            Tenant,
            get(),
            "/v1/machine-types",
            None,
            [S(200), S(200), S(200), S(200)],
        ),
        row(
            Tenant,
            Method::POST,
            "/v1/clusters/{ac}/kubeconfig",
            Some(json!({"role": "viewer", "ttl_seconds": 3600})),
            [NOT_READY, NOT_READY, NF, NF],
        ),
        // platform
        row(
            Platform,
            Method::POST,
            "/v1/hosts",
            Some(json!({
                "address": "192.0.2.10",
                "credentials": {"password": "hunter2"},
                "host_key": HOST_KEY,
            })),
            p(S(201)),
        ),
        row(Platform, get(), "/v1/hosts", None, p(S(200))),
        row(
            Platform,
            Method::DELETE,
            "/v1/hosts/{host}",
            None,
            p(S(204)),
        ),
        row(Platform, get(), "/v1/tenants/acme/quota", None, p(S(200))),
        row(Platform, get(), "/v1/tenants/globex/quota", None, p(S(200))),
        quota_put,
        // public
        row(Public, get(), "/v1/openapi.json", None, [S(200); 4]),
        row(Public, get(), "/healthz", None, [S(200); 4]),
        row(Public, get(), "/readyz", None, [S(200); 4]),
        row(Public, get(), "/metrics", None, [S(200); 4]),
    ]
}

impl Row {
    fn expect(&self, c: Caller) -> Exp {
        if self.class == Class::Public {
            return Exp::Ok(200);
        }
        match c {
            Caller::OwnerEditor => self.editor.unwrap_or(self.owner),
            Caller::OwnerAdmin => self.owner,
            Caller::Viewer => self.viewer,
            Caller::OtherTenant => self.other,
            Caller::PlatformAdmin => self.platform,
            _ => UNAUTH,
        }
    }

    fn label(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

// ---------------------------------------------------------------- fixture

/// Tenant A and tenant B each with a cluster (A's is reconciled so it has
/// machines), and one registered host.
struct Fx {
    app: TestApp,
    vars: Vec<(&'static str, String)>,
}

async fn created(app: &TestApp, tenant: &str, role: Role, name: &str) -> Value {
    let tok = app.token(tenant, role);
    let r = app
        .call(
            Method::POST,
            "/v1/clusters",
            Some(&tok),
            Some(cluster_body(name)),
            &[],
        )
        .await;
    assert_eq!(
        r.status,
        202,
        "fixture create {tenant}/{name}: {}",
        short(&r.text)
    );
    r.body
}

async fn fixture() -> Fx {
    let app = TestApp::new().await;
    let a = created(&app, A, Role::Editor, "alpha-web").await;
    created(&app, B, Role::Admin, "beta-web").await;
    app.settle().await;
    let ac = a["cluster"]["id"].as_str().unwrap().to_string();
    let aop = a["operation"]["id"].as_str().unwrap().to_string();
    // What A's autoscaler saw, for its status route to show.
    kubeforge::store::autoscaler::put_snapshot(
        &app.pool,
        ac.parse().unwrap(),
        &kubeforge_cluster::api::AutoscalerSnapshot {
            observed_at: Some(chrono::Utc::now()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let tok = app.token(A, Role::Viewer);
    let pools = app
        .call(
            Method::GET,
            &format!("/v1/clusters/{ac}/node-pools"),
            Some(&tok),
            None,
            &[],
        )
        .await;
    assert_eq!(pools.status, 200, "{}", pools.text);
    let ap = pools.body["items"][0]["id"].as_str().unwrap().to_string();
    let ptok = app.token(OPS, Role::PlatformAdmin);
    let host = app
        .call(
            Method::POST,
            "/v1/hosts",
            Some(&ptok),
            Some(json!({
                "address": "192.0.2.1",
                "credentials": {"password": "pw"},
                "host_key": HOST_KEY,
            })),
            &[],
        )
        .await;
    assert_eq!(host.status, 201, "fixture host: {}", host.text);
    let host = host.body["host"]["id"].as_str().unwrap().to_string();
    Fx {
        app,
        vars: vec![
            ("{ac}", ac),
            ("{acn}", "alpha-web".into()),
            ("{ap}", ap),
            ("{apn}", "default".into()),
            ("{aop}", aop),
            ("{host}", host),
        ],
    }
}

impl Fx {
    fn path(&self, template: &str) -> String {
        let mut p = template.to_string();
        for (k, v) in &self.vars {
            p = p.replace(k, v);
        }
        p
    }
}

// ---------------------------------------------------------------- snapshots

type Snapshot = BTreeMap<String, Vec<Value>>;

/// Every row of every table, as JSON, in a stable order.
async fn snapshot(app: &TestApp) -> Snapshot {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
           AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut out = Snapshot::new();
    for t in tables {
        let rows: Vec<Value> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(t) FROM {t} t ORDER BY to_jsonb(t)::text"
        ))
        .fetch_all(&app.pool)
        .await
        .unwrap();
        out.insert(t, rows);
    }
    out
}

/// The rows that belong to `tenant`.
fn tenant_view(s: &Snapshot, tenant: &str) -> Snapshot {
    s.iter()
        .map(|(t, rows)| {
            let mine = rows
                .iter()
                .filter(|r| {
                    if t == "tenants" {
                        r["id"] == tenant
                    } else {
                        r["tenant"] == tenant
                    }
                })
                .cloned()
                .collect();
            (t.clone(), mine)
        })
        .collect()
}

fn diff_tables(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

/// Strings that identify `tenant`'s objects (ids and cluster names).
fn identifiers(s: &Snapshot, tenant: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (t, rows) in tenant_view(s, tenant) {
        if !["clusters", "node_pools", "machines", "operations"].contains(&t.as_str()) {
            continue;
        }
        for r in rows {
            if let Some(id) = r["id"].as_str() {
                out.push(id.to_string());
            }
            if t == "clusters" {
                if let Some(n) = r["name"].as_str() {
                    out.push(format!("\"{n}\""));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------- checks

/// A response body cut short for a failure message.
fn short(text: &str) -> String {
    text.chars().take(300).collect()
}

/// A problem document with every contract field.
fn check_problem(r: &Resp) -> Result<(), String> {
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != "application/problem+json" {
        return Err(format!(
            "content-type {ct:?}, want application/problem+json"
        ));
    }
    let b = &r.body;
    for (f, ok) in [
        ("type", b["type"].is_string()),
        ("title", b["title"].is_string()),
        ("status", b["status"].is_u64()),
        ("code", b["code"].is_string()),
        ("detail", b["detail"].is_string()),
        ("retryable", b["retryable"].is_boolean()),
    ] {
        if !ok {
            return Err(format!(
                "problem field {f:?} missing or mistyped: {}",
                r.text
            ));
        }
    }
    if b["status"].as_u64() != Some(u64::from(r.status.as_u16())) {
        return Err(format!(
            "problem status {} != HTTP {}",
            b["status"], r.status
        ));
    }
    Ok(())
}

/// Every tenant-owned object in a 2xx body belongs to the caller.
fn check_owned(body: &Value, tenant: &str) -> Result<(), String> {
    let mut objs: Vec<&Value> = Vec::new();
    if let Some(items) = body["items"].as_array() {
        objs.extend(items.iter());
    }
    objs.push(&body["cluster"]);
    objs.push(body);
    for o in objs {
        if let Some(t) = o.get("tenant").and_then(Value::as_str) {
            if t != tenant {
                return Err(format!("response shows an object of tenant {t:?}"));
            }
        }
    }
    Ok(())
}

async fn run_case(fx: &Fx, row: &Row, caller: Caller) -> Result<(), String> {
    let exp = row.expect(caller);
    let path = fx.path(row.path);
    let (tok, extra) = caller.credentials(&fx.app);
    let headers: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let before = snapshot(&fx.app).await;
    let r = fx
        .app
        .call(
            row.method.clone(),
            &path,
            tok.as_deref(),
            row.body.clone(),
            &headers,
        )
        .await;
    let after = snapshot(&fx.app).await;
    let status = r.status.as_u16();

    match exp {
        Exp::Ok(want) => {
            if status != want {
                return Err(format!("want {want}, got {status}: {}", short(&r.text)));
            }
        }
        Exp::Err(want, code) => {
            if status != want || r.body["code"] != code {
                return Err(format!(
                    "want {want} {code}, got {status}: {}",
                    short(&r.text)
                ));
            }
        }
    }
    if !r.status.is_success() {
        check_problem(&r)?;
    }

    // A read or a refused request writes nothing at all.
    if row.method == Method::GET || !r.status.is_success() {
        let changed = diff_tables(&before, &after);
        if !changed.is_empty() {
            return Err(format!("changed tables {changed:?} (status {status})"));
        }
    }
    // No request touches the data of a tenant other than the caller's.
    for t in [A, B, OPS] {
        if Some(t) == caller.tenant() || Some(t) == row.target_tenant {
            continue;
        }
        let changed = diff_tables(&tenant_view(&before, t), &tenant_view(&after, t));
        if !changed.is_empty() {
            return Err(format!("changed tenant {t}'s rows in {changed:?}"));
        }
    }
    // A 2xx shows nothing of another tenant.
    if r.status.is_success() && row.class == Class::Tenant {
        let me = caller.tenant().unwrap_or_default();
        check_owned(&r.body, me)?;
        for t in [A, B, OPS] {
            if t == me {
                continue;
            }
            for id in identifiers(&after, t) {
                if r.text.contains(&id) {
                    return Err(format!("response leaks {t}'s {id}: {}", short(&r.text)));
                }
            }
        }
    }
    Ok(())
}

/// Runs every (row, caller) pair of the selected rows; collects failures.
async fn run_matrix(select: impl Fn(&Row) -> bool) {
    let shared = fixture().await;
    let mut failures = Vec::new();
    let mut cases = 0;
    for row in rows().iter().filter(|r| select(r)) {
        for &caller in CALLERS {
            cases += 1;
            let exp = row.expect(caller);
            // A write that should succeed gets its own fresh fixture; all
            // other cases leave the shared one untouched (checked).
            let fresh;
            let fx = if row.method != Method::GET && exp.success() {
                fresh = fixture().await;
                &fresh
            } else {
                &shared
            };
            if let Err(e) = run_case(fx, row, caller).await {
                failures.push(format!(
                    "[{} x {}] expected {:?}: {e}",
                    row.label(),
                    caller.label(),
                    exp
                ));
            }
        }
    }
    assert!(cases > 0, "no cases selected");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn matrix_tenant_reads() {
    run_matrix(|r| {
        r.class == Class::Tenant && (r.method == Method::GET || r.path.ends_with("/kubeconfig"))
    })
    .await;
}

#[tokio::test]
async fn matrix_tenant_writes() {
    run_matrix(|r| {
        r.class == Class::Tenant && r.method != Method::GET && !r.path.ends_with("/kubeconfig")
    })
    .await;
}

#[tokio::test]
async fn matrix_platform_routes() {
    run_matrix(|r| r.class == Class::Platform).await;
}

#[tokio::test]
async fn matrix_public_routes() {
    run_matrix(|r| r.class == Class::Public).await;
}

/// Every route of the router appears in the matrix (by method and shape).
#[test]
fn matrix_covers_every_route() {
    let have: Vec<(String, String)> = rows()
        .iter()
        .map(|r| {
            let shape = r
                .path
                .split('?')
                .next()
                .unwrap()
                .replace("{acn}", "{ac}")
                .replace("{apn}", "{ap}");
            (r.method.to_string(), shape)
        })
        .collect();
    for (m, p) in [
        ("POST", "/v1/clusters"),
        ("GET", "/v1/clusters"),
        ("GET", "/v1/clusters/{ac}"),
        ("PATCH", "/v1/clusters/{ac}"),
        ("DELETE", "/v1/clusters/{ac}"),
        ("POST", "/v1/clusters/{ac}/node-pools"),
        ("GET", "/v1/clusters/{ac}/node-pools"),
        ("GET", "/v1/clusters/{ac}/node-pools/{ap}"),
        ("PATCH", "/v1/clusters/{ac}/node-pools/{ap}"),
        ("DELETE", "/v1/clusters/{ac}/node-pools/{ap}"),
        ("GET", "/v1/clusters/{ac}/machines"),
        ("GET", "/v1/clusters/{ac}/operations"),
        ("GET", "/v1/clusters/{ac}/events"),
        ("POST", "/v1/clusters/{ac}/kubeconfig"),
        ("POST", "/v1/clusters/{ac}/credentials/revoke"),
        ("POST", "/v1/tokens/revoke"),
        ("GET", "/v1/clusters/{ac}/autoscaler"),
        ("GET", "/v1/machine-types"),
        ("GET", "/v1/operations/{aop}"),
        ("POST", "/v1/hosts"),
        ("GET", "/v1/hosts"),
        ("DELETE", "/v1/hosts/{host}"),
        ("GET", "/v1/tenants/acme/quota"),
        ("PUT", "/v1/tenants/acme/quota"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    ] {
        assert!(
            have.iter().any(|(hm, hp)| hm == m && hp == p),
            "route {m} {p} is missing from the matrix"
        );
    }
}

/// Another tenant's object and a missing one answer the same 404: the
/// response says nothing about whether the object exists.
#[tokio::test]
async fn foreign_object_is_indistinguishable_from_missing() {
    let fx = fixture().await;
    let tok = fx.app.token(B, Role::Admin);
    let ac = fx.path("{ac}");
    let missing = uuid::Uuid::now_v7().to_string();
    for (foreign, absent) in [
        (
            format!("/v1/clusters/{ac}"),
            format!("/v1/clusters/{missing}"),
        ),
        (
            format!("/v1/clusters/{ac}/events"),
            format!("/v1/clusters/{missing}/events"),
        ),
        (
            fx.path("/v1/operations/{aop}"),
            format!("/v1/operations/{missing}"),
        ),
    ] {
        let f = fx
            .app
            .call(Method::GET, &foreign, Some(&tok), None, &[])
            .await;
        let m = fx
            .app
            .call(Method::GET, &absent, Some(&tok), None, &[])
            .await;
        assert_eq!(f.status, 404, "{foreign}: {}", f.text);
        assert_eq!(f.status, m.status);
        for k in ["type", "title", "status", "code", "retryable"] {
            assert_eq!(f.body[k], m.body[k], "{foreign} vs {absent}: field {k}");
        }
        let fd = f.body["detail"].as_str().unwrap().replace(
            foreign
                .trim_start_matches("/v1/clusters/")
                .trim_start_matches("/v1/operations/")
                .split('/')
                .next()
                .unwrap(),
            "X",
        );
        let md = m.body["detail"].as_str().unwrap().replace(&missing, "X");
        assert_eq!(fd, md, "404 details differ beyond the id");
    }
}

/// Names are per tenant: both tenants may have a cluster named `web`, and
/// each one's name resolves to its own cluster only.
#[tokio::test]
async fn same_name_in_two_tenants_resolves_per_tenant() {
    let app = TestApp::new().await;
    let a = created(&app, A, Role::Editor, "web").await;
    let b = created(&app, B, Role::Editor, "web").await;
    let (aid, bid) = (
        a["cluster"]["id"].as_str().unwrap(),
        b["cluster"]["id"].as_str().unwrap(),
    );
    assert_ne!(aid, bid);
    let ta = app.token(A, Role::Viewer);
    let tb = app.token(B, Role::Admin);
    let ga = app
        .call(Method::GET, "/v1/clusters/web", Some(&ta), None, &[])
        .await;
    let gb = app
        .call(Method::GET, "/v1/clusters/web", Some(&tb), None, &[])
        .await;
    assert_eq!(
        (ga.body["id"].as_str(), gb.body["id"].as_str()),
        (Some(aid), Some(bid))
    );
    // B deletes "its" web: A's web is untouched.
    let d = app
        .call(Method::DELETE, "/v1/clusters/web", Some(&tb), None, &[])
        .await;
    assert_eq!(d.status, 202, "{}", d.text);
    let ga2 = app
        .call(
            Method::GET,
            &format!("/v1/clusters/{aid}"),
            Some(&ta),
            None,
            &[],
        )
        .await;
    assert_eq!(ga2.status, 200);
    assert_eq!(ga2.body["phase"], ga.body["phase"]);
    assert_eq!(ga2.body["etag"], ga.body["etag"], "A's cluster changed");
}

/// A's pool cannot be reached through B's own cluster either.
#[tokio::test]
async fn foreign_pool_under_own_cluster_is_404() {
    let fx = fixture().await;
    let tb = fx.app.token(B, Role::Admin);
    let list = fx
        .app
        .call(Method::GET, "/v1/clusters/beta-web", Some(&tb), None, &[])
        .await;
    let bc = list.body["id"].as_str().unwrap().to_string();
    let ap = fx.path("{ap}");
    let before = snapshot(&fx.app).await;
    for (m, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"size": 4}))),
        (Method::DELETE, None),
    ] {
        let r = fx
            .app
            .call(
                m.clone(),
                &format!("/v1/clusters/{bc}/node-pools/{ap}"),
                Some(&tb),
                body,
                &[],
            )
            .await;
        assert_eq!(r.status, 404, "{m}: {}", short(&r.text));
        assert_eq!(r.body["code"], "not_found");
        check_problem(&r).unwrap();
    }
    assert_eq!(
        diff_tables(&before, &snapshot(&fx.app).await),
        Vec::<String>::new()
    );
}
