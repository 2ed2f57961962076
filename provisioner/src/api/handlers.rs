//! Route handlers, one per API verb, named `<resource>_<verb>` like the
//! app methods and the CLI. Each extracts, builds the context, calls the
//! app and converts; the OpenAPI document is generated from their
//! annotations.

use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::OpenApi;

use super::extract::{idempotency, if_match, JsonBody, OptionalJsonBody, QueryParams, RefPath};
use crate::app::{Accepted, SharedApp};
use crate::context::OpContext;
use crate::error::{Error, Result};
use kubeforge_cluster::api::{
    AutoscalerCredentialsRequest, AutoscalerCredentialsView, AutoscalerDecisionView,
    AutoscalerPoolView, AutoscalerSettingsRequest, AutoscalerStatusView, ClusterAccepted,
    ClusterListQuery, ClusterView, CreateClusterRequest, CreateHostRequest, CreateNodePoolRequest,
    CredentialsRevoked, EventView, HostCreated, HostProblem, HostView, Items, KubeconfigIssued,
    KubeconfigRequest, MachineTypeListQuery, MachineTypeView, MachineView, NodePoolAccepted,
    NodePoolView, OperationAccepted, OperationView, Page, PageQuery, PendingPodView,
    PoolReasonView, Problem, Quota, QuotaView, RevokeTokenRequest, TokenRevoked,
    UpdateClusterRequest, UpdateNodePoolRequest,
};
use kubeforge_cluster::{AutoscalerMode, AutoscalerSettings, Expander, NodeResources};

fn accepted(a: Accepted) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
    (status, Json(a.body)).into_response()
}

fn with_etag<T: serde::Serialize>(etag: &str, body: T) -> Response {
    let mut resp = Json(body).into_response();
    if let Ok(v) = header::HeaderValue::from_str(etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// Create a cluster with its control plane and node pools.
#[utoipa::path(post, path = "/v1/clusters", tag = "clusters", operation_id = "create_cluster",
    request_body = CreateClusterRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response")),
    responses((status = 202, body = ClusterAccepted, description = "the cluster and the operation that provisions it"),
              (status = 409, body = Problem, content_type = "application/problem+json", description = "a cluster of this name exists"),
              (status = 422, body = Problem, content_type = "application/problem+json", description = "validation_failed, quota_exceeded or idempotency_mismatch")))]
pub async fn cluster_create(
    State(app): State<SharedApp>,
    ctx: OpContext,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: JsonBody<CreateClusterRequest>,
) -> Result<Response> {
    let idem = idempotency(&headers, "POST", uri.path(), &body.raw)?;
    Ok(accepted(app.cluster_create(&ctx, idem, body.value).await?))
}

/// List the tenant's clusters, a page at a time, optionally filtered by phase or label.
#[utoipa::path(get, path = "/v1/clusters", tag = "clusters", operation_id = "list_clusters",
    params(ClusterListQuery),
    responses((status = 200, body = Page<ClusterView>, description = "a page of clusters"),
              (status = 422, body = Problem, content_type = "application/problem+json", description = "a bad filter, limit or page token")))]
pub async fn cluster_list(
    State(app): State<SharedApp>,
    ctx: OpContext,
    QueryParams(q): QueryParams<ClusterListQuery>,
) -> Result<Response> {
    Ok(Json(app.cluster_list(&ctx, q).await?).into_response())
}

/// Read a cluster: spec, phase, conditions, endpoint.
#[utoipa::path(get, path = "/v1/clusters/{cluster}", tag = "clusters", operation_id = "get_cluster",
    params(("cluster" = String, Path, description = "id or name")),
    responses((status = 200, body = ClusterView, headers(("ETag" = String, description = "for If-Match"))),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn cluster_get(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
) -> Result<Response> {
    let view = app.cluster_get(&ctx, &c).await?;
    Ok(with_etag(&view.etag.clone(), view))
}

/// Change a cluster's labels, deletion protection or autoscaler settings.
#[utoipa::path(patch, path = "/v1/clusters/{cluster}", tag = "clusters", operation_id = "update_cluster",
    request_body = UpdateClusterRequest,
    params(("cluster" = String, Path, description = "id or name"), ("If-Match" = Option<String>, Header, description = "the cluster's etag")),
    responses((status = 200, body = ClusterAccepted, description = "the cluster and the operation that applies the change"),
              (status = 412, body = Problem, content_type = "application/problem+json", description = "stale etag")))]
pub async fn cluster_update(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
    headers: HeaderMap,
    body: JsonBody<UpdateClusterRequest>,
) -> Result<Response> {
    let out = app
        .cluster_update(&ctx, &c, if_match(&headers).as_deref(), body.value)
        .await?;
    Ok(Json(out).into_response())
}

/// Delete a cluster, its node pools and machines.
#[utoipa::path(delete, path = "/v1/clusters/{cluster}", tag = "clusters", operation_id = "delete_cluster",
    params(("cluster" = String, Path, description = "id or name"), ("If-Match" = Option<String>, Header, description = "the cluster's etag")),
    responses((status = 202, body = OperationAccepted, description = "the operation that deletes the cluster"),
              (status = 409, body = Problem, content_type = "application/problem+json", description = "deletion_protected")))]
pub async fn cluster_delete(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let out = app
        .cluster_delete(&ctx, &c, if_match(&headers).as_deref())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(out)).into_response())
}

/// Add a node pool to a cluster.
#[utoipa::path(post, path = "/v1/clusters/{cluster}/node-pools", tag = "node-pools", operation_id = "create_node_pool",
    request_body = CreateNodePoolRequest,
    params(("cluster" = String, Path, description = "id or name"), ("Idempotency-Key" = Option<String>, Header, description = "replays the first response")),
    responses((status = 202, body = NodePoolAccepted, description = "the pool and the operation that creates its nodes")))]
pub async fn node_pool_create(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: JsonBody<CreateNodePoolRequest>,
) -> Result<Response> {
    let idem = idempotency(&headers, "POST", uri.path(), &body.raw)?;
    Ok(accepted(
        app.node_pool_create(&ctx, &c, idem, body.value).await?,
    ))
}

/// List a cluster's node pools.
#[utoipa::path(get, path = "/v1/clusters/{cluster}/node-pools", tag = "node-pools", operation_id = "list_node_pools",
    params(("cluster" = String, Path, description = "id or name")),
    responses((status = 200, body = Items<NodePoolView>, description = "every pool of the cluster, in one answer")))]
pub async fn node_pool_list(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
) -> Result<Response> {
    let items = app.node_pool_list(&ctx, &c).await?;
    Ok(Json(Items { items }).into_response())
}

/// Read a node pool with its nodes.
#[utoipa::path(get, path = "/v1/clusters/{cluster}/node-pools/{pool}", tag = "node-pools", operation_id = "get_node_pool",
    params(("cluster" = String, Path, description = "id or name"), ("pool" = String, Path, description = "id or name")),
    responses((status = 200, body = NodePoolView, headers(("ETag" = String, description = "for If-Match"))),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn node_pool_get(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath((c, p)): RefPath<(String, String)>,
) -> Result<Response> {
    let view = app.node_pool_get(&ctx, &c, &p).await?;
    Ok(with_etag(&view.etag.clone(), view))
}

/// Resize a node pool or change its autoscaling, repair and drain settings.
#[utoipa::path(patch, path = "/v1/clusters/{cluster}/node-pools/{pool}", tag = "node-pools", operation_id = "update_node_pool",
    request_body = UpdateNodePoolRequest,
    params(("cluster" = String, Path, description = "id or name"), ("pool" = String, Path, description = "id or name"), ("If-Match" = Option<String>, Header, description = "the pool's etag")),
    responses((status = 200, body = NodePoolAccepted, description = "the pool and the operation that applies the change"),
              (status = 412, body = Problem, content_type = "application/problem+json", description = "stale etag")))]
pub async fn node_pool_update(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath((c, p)): RefPath<(String, String)>,
    headers: HeaderMap,
    body: JsonBody<UpdateNodePoolRequest>,
) -> Result<Response> {
    let out = app
        .node_pool_update(&ctx, &c, &p, if_match(&headers).as_deref(), body.value)
        .await?;
    Ok(Json(out).into_response())
}

/// Drain and delete a node pool.
#[utoipa::path(delete, path = "/v1/clusters/{cluster}/node-pools/{pool}", tag = "node-pools", operation_id = "delete_node_pool",
    params(("cluster" = String, Path, description = "id or name"), ("pool" = String, Path, description = "id or name"), ("If-Match" = Option<String>, Header, description = "the pool's etag")),
    responses((status = 202, body = OperationAccepted, description = "the operation that drains and deletes the pool")))]
pub async fn node_pool_delete(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath((c, p)): RefPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let out = app
        .node_pool_delete(&ctx, &c, &p, if_match(&headers).as_deref())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(out)).into_response())
}

/// List the machines behind a cluster's nodes.
#[utoipa::path(get, path = "/v1/clusters/{cluster}/machines", tag = "machines", operation_id = "list_machines",
    params(("cluster" = String, Path, description = "id or name")),
    responses((status = 200, body = Items<MachineView>, description = "every machine of the cluster, in one answer")))]
pub async fn machine_list(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
) -> Result<Response> {
    let items = app.machine_list(&ctx, &c).await?;
    Ok(Json(Items { items }).into_response())
}

/// List a cluster's operations.
#[utoipa::path(get, path = "/v1/clusters/{cluster}/operations", tag = "operations", operation_id = "list_operations",
    params(("cluster" = String, Path, description = "id or name")),
    responses((status = 200, body = Items<OperationView>, description = "every operation of the cluster, in one answer")))]
pub async fn operation_list(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
) -> Result<Response> {
    let items = app.operation_list(&ctx, &c).await?;
    Ok(Json(Items { items }).into_response())
}

/// Read an operation and its steps by id.
#[utoipa::path(get, path = "/v1/operations/{operation}", tag = "operations", operation_id = "get_operation",
    params(("operation" = String, Path, description = "operation id")),
    responses((status = 200, body = OperationView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn operation_get(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(o): RefPath<String>,
) -> Result<Response> {
    Ok(Json(app.operation_get(&ctx, &o).await?).into_response())
}

/// List what happened to a cluster, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/clusters/{cluster}/events", tag = "events", operation_id = "list_events",
    params(("cluster" = String, Path, description = "id or name"), PageQuery),
    responses((status = 200, body = Page<EventView>, description = "a page of events, newest first")))]
pub async fn event_list(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response> {
    Ok(Json(app.event_list(&ctx, &c, q).await?).into_response())
}

/// The header that says when a kubeconfig's certificate expires (RFC 3339).
pub const KUBECONFIG_EXPIRES_AT: &str = "kubeforge-expires-at";

/// Mint a kubeconfig for a cluster, with a client certificate of the asked role.
#[utoipa::path(post, path = "/v1/clusters/{cluster}/kubeconfig", tag = "credentials", operation_id = "create_kubeconfig",
    request_body = KubeconfigRequest,
    params(("cluster" = String, Path, description = "id or name")),
    responses((status = 200, description = "a kubeconfig (`application/yaml`, the default), or with `Accept: application/json` the kubeconfig with its expiry, role, context name and credential generation; `Kubeforge-Expires-At` says when its certificate expires (RFC 3339)",
               content((String = "application/yaml"), (KubeconfigIssued = "application/json")),
               headers(("Kubeforge-Expires-At" = String, description = "RFC 3339 expiry of the client certificate"))),
              (status = 403, body = Problem, content_type = "application/problem+json", description = "the caller's role may not mint a kubeconfig of this role"),
              (status = 409, body = Problem, content_type = "application/problem+json", description = "cluster_not_ready")))]
pub async fn kubeconfig_create(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
    headers: header::HeaderMap,
    body: JsonBody<KubeconfigRequest>,
) -> Result<Response> {
    let issued = app.kubeconfig_create(&ctx, &c, body.value).await?;
    let expires = issued
        .expires_at
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let expires_header = (
        header::HeaderName::from_static(KUBECONFIG_EXPIRES_AT),
        expires,
    );
    if wants_json(&headers) {
        let answer = KubeconfigIssued {
            kubeconfig: issued.yaml,
            expires_at: issued.expires_at,
            role: issued.role.as_str().to_string(),
            context: issued.context,
            credential_generation: issued.generation,
        };
        return Ok(([expires_header], Json(answer)).into_response());
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/yaml".to_string()),
            expires_header,
        ],
        issued.yaml,
    )
        .into_response())
}

/// Whether `Accept` names `application/json` (with any parameters) before
/// `application/yaml`, or without it. A missing `Accept`, `*/*` or
/// `application/yaml` gets the YAML, which was the only answer once.
fn wants_json(headers: &header::HeaderMap) -> bool {
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|r| {
            r.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    for range in ranges {
        match range.as_str() {
            "application/json" => return true,
            "application/yaml" => return false,
            _ => {}
        }
    }
    false
}

/// Revoke every kubeconfig issued for a cluster so far.
#[utoipa::path(post, path = "/v1/clusters/{cluster}/credentials/revoke", tag = "credentials", operation_id = "revoke_credentials",
    params(("cluster" = String, Path, description = "id or name")),
    responses((status = 202, body = CredentialsRevoked, description = "{credential_generation, operation}: kubeconfigs of earlier generations are refused once the operation succeeds"),
              (status = 403, body = Problem, content_type = "application/problem+json", description = "needs role admin"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn credentials_revoke(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
) -> Result<Response> {
    let answer = app.credentials_revoke(&ctx, &c).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Revoke an API token, by token or by id.
#[utoipa::path(post, path = "/v1/tokens/revoke", tag = "tokens", operation_id = "revoke_token",
    request_body = RevokeTokenRequest,
    responses((status = 200, body = TokenRevoked),
              (status = 403, body = Problem, content_type = "application/problem+json", description = "by jti: platform-admin only; by token: admin of the token's tenant"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn token_revoke(
    State(app): State<SharedApp>,
    ctx: OpContext,
    body: JsonBody<RevokeTokenRequest>,
) -> Result<Response> {
    Ok(Json(app.token_revoke(&ctx, body.value).await?).into_response())
}

/// Read the cluster autoscaler's recent decisions.
#[utoipa::path(get, path = "/v1/clusters/{cluster}/autoscaler", tag = "autoscaler", operation_id = "get_autoscaler",
    params(("cluster" = String, Path, description = "id or name")),
    responses((status = 200, body = AutoscalerStatusView, description = "per pool its recent decisions, per pending pod where it goes or why no pool takes it"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn autoscaler_get(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
) -> Result<Response> {
    Ok(Json(app.autoscaler_get(&ctx, &c).await?).into_response())
}

/// Issue credentials for an external cluster autoscaler.
#[utoipa::path(post, path = "/v1/clusters/{cluster}/autoscaler/credentials", tag = "autoscaler", operation_id = "create_autoscaler_credentials",
    request_body(content = Option<AutoscalerCredentialsRequest>, description = "optional; ttl_seconds defaults to 90 days"),
    params(("cluster" = String, Path, description = "id or name")),
    responses((status = 200, body = AutoscalerCredentialsView, description = "the endpoint, its CA, a client certificate and key naming the cluster (the key is not kept: it cannot be fetched again), and the cloud-config file"),
              (status = 403, body = Problem, content_type = "application/problem+json", description = "viewers may not"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json", description = "no externalgrpc endpoint is served, or the cluster is being deleted"),
              (status = 422, body = Problem, content_type = "application/problem+json", description = "ttl_seconds out of range")))]
pub async fn autoscaler_credentials_create(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
    body: OptionalJsonBody<AutoscalerCredentialsRequest>,
) -> Result<Response> {
    let out = app.autoscaler_credentials_create(&ctx, &c, body.0).await?;
    Ok(Json(out).into_response())
}

/// List the machine types, what their nodes offer to pods and which
/// providers offer them.
#[utoipa::path(get, path = "/v1/machine-types", tag = "machine-types", operation_id = "list_machine_types",
    params(MachineTypeListQuery),
    responses((status = 200, body = Items<MachineTypeView>, description = "every machine type (or those `provider` offers) with what its nodes offer to pods, in one answer"),
              (status = 422, body = Problem, content_type = "application/problem+json", description = "unknown provider kind")))]
pub async fn machine_type_list(
    State(app): State<SharedApp>,
    ctx: OpContext,
    QueryParams(q): QueryParams<MachineTypeListQuery>,
) -> Result<Response> {
    let items = app.machine_type_list(&ctx, q.provider.as_deref())?;
    Ok(Json(Items { items }).into_response())
}

/// Register a host in the ssh provider's pool.
#[utoipa::path(post, path = "/v1/hosts", tag = "hosts", operation_id = "create_host",
    request_body = CreateHostRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response")),
    responses((status = 201, body = HostCreated, description = "the host as registered"),
              (status = 403, body = Problem, content_type = "application/problem+json", description = "platform-admin only")))]
pub async fn host_create(
    State(app): State<SharedApp>,
    ctx: OpContext,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: JsonBody<CreateHostRequest>,
) -> Result<Response> {
    let idem = idempotency(&headers, "POST", uri.path(), &body.raw)?;
    Ok(accepted(app.host_create(&ctx, idem, body.value).await?))
}

/// List the registered hosts.
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", operation_id = "list_hosts",
    responses((status = 200, body = Items<HostView>, description = "every registered host, in one answer"),
              (status = 403, body = Problem, content_type = "application/problem+json", description = "platform-admin only")))]
pub async fn host_list(State(app): State<SharedApp>, ctx: OpContext) -> Result<Response> {
    let items = app.host_list(&ctx).await?;
    Ok(Json(Items { items }).into_response())
}

/// Remove a host that no cluster claims.
#[utoipa::path(delete, path = "/v1/hosts/{host}", tag = "hosts", operation_id = "delete_host",
    params(("host" = String, Path, description = "host id")),
    responses((status = 204, description = "deleted"), (status = 409, body = Problem, content_type = "application/problem+json", description = "the host is claimed by a cluster")))]
pub async fn host_delete(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(h): RefPath<String>,
) -> Result<Response> {
    app.host_delete(&ctx, &h).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Read a tenant's quota and what it uses.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/quota", tag = "quotas", operation_id = "get_quota",
    params(("tenant" = String, Path)),
    responses((status = 200, body = QuotaView)))]
pub async fn quota_get(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(t): RefPath<String>,
) -> Result<Response> {
    Ok(Json(app.quota_get(&ctx, &t).await?).into_response())
}

/// Set a tenant's quota.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/quota", tag = "quotas", operation_id = "put_quota",
    request_body = Quota, params(("tenant" = String, Path)),
    responses((status = 200, body = QuotaView), (status = 403, body = Problem, content_type = "application/problem+json", description = "platform-admin only")))]
pub async fn quota_put(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(t): RefPath<String>,
    body: JsonBody<Quota>,
) -> Result<Response> {
    Ok(Json(app.quota_put(&ctx, &t, body.value).await?).into_response())
}

/// Process up.
#[utoipa::path(get, path = "/healthz", tag = "service", operation_id = "get_health", security(()),
    responses((status = 200, body = String, content_type = "text/plain", description = "`ok`")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Database reachable.
// `SELECT 1` must answer within READY_TIMEOUT.
#[utoipa::path(get, path = "/readyz", tag = "service", operation_id = "get_readiness", security(()),
    responses((status = 200, body = String, content_type = "text/plain", description = "`ok`"),
              (status = 503, body = Problem, content_type = "application/problem+json", description = "database unreachable")))]
pub async fn readyz(State(app): State<SharedApp>) -> Result<&'static str> {
    match tokio::time::timeout(READY_TIMEOUT, sqlx::query("SELECT 1").execute(&app.pool)).await {
        Ok(Ok(_)) => Ok("ok"),
        Ok(Err(_)) | Err(_) => Err(Error::Unavailable("database unreachable".into())),
    }
}

/// How long `/readyz` waits for the database: a probe must learn that it
/// is gone well before requests give up on it (the pool's acquire timeout).
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The service's metrics, for Prometheus.
#[utoipa::path(get, path = "/metrics", tag = "service", operation_id = "get_metrics", security(()),
    responses((status = 200, body = String, content_type = "text/plain", description = "Prometheus text format 0.0.4")))]
pub async fn metrics(State(app): State<SharedApp>) -> Response {
    if let Ok((queued, running, dead)) = crate::store::job::depth(&app.pool).await {
        let g = &app.metrics.job_queue_depth;
        g.with_label_values(&["queued"]).set(queued);
        g.with_label_values(&["running"]).set(running);
        g.with_label_values(&["dead"]).set(dead);
    }
    let body = match fleet(&app).await {
        Ok(fleet) => app.metrics.render_fleet(&fleet),
        Err(e) => {
            // The process's own series still answer; the fleet's wait for
            // the database.
            tracing::warn!(error = %e, "reading the fleet for /metrics");
            app.metrics.render()
        }
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The fleet gauges' values, from the database.
async fn fleet(app: &SharedApp) -> Result<crate::metrics::Fleet> {
    use crate::store::fleet;
    let clusters_by_phase = fleet::clusters_by_phase(&app.pool).await?;
    let pools = fleet::pool_nodes(&app.pool)
        .await?
        .into_iter()
        .map(|p| {
            (
                p.cluster_id.to_string(),
                p.pool_id.to_string(),
                p.desired,
                p.ready,
            )
        })
        .collect();
    let mut certificate_expiries = Vec::new();
    for (cluster, certs) in fleet::certificates(&app.pool).await? {
        let Some(certs) = certs.as_object() else {
            continue;
        };
        for (key, value) in certs {
            let (Some(name), Some(at)) = (
                key.strip_suffix("_expires_at"),
                value
                    .as_str()
                    .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok()),
            ) else {
                continue;
            };
            certificate_expiries.push((cluster.to_string(), name.to_string(), at.timestamp()));
        }
    }
    Ok(crate::metrics::Fleet {
        clusters_by_phase,
        pools,
        certificate_expiries,
    })
}

/// The OpenAPI document, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(title = "Kubeforge API", version = "1", description = "Self-hosted managed Kubernetes."),
    paths(
        cluster_create, cluster_list, cluster_get, cluster_update, cluster_delete,
        node_pool_create, node_pool_list, node_pool_get, node_pool_update, node_pool_delete,
        machine_list, operation_list, operation_get, event_list, kubeconfig_create,
        credentials_revoke, token_revoke, autoscaler_get, autoscaler_credentials_create, machine_type_list, host_create, host_list, host_delete, quota_get,
        quota_put, healthz, readyz, metrics, openapi, super::docs::docs
    ),
    components(schemas(Problem, ClusterView, NodePoolView, MachineView, OperationView, EventView,
                       CreateClusterRequest, CreateNodePoolRequest, UpdateClusterRequest,
                       UpdateNodePoolRequest, KubeconfigRequest, KubeconfigIssued, CreateHostRequest, HostView, HostProblem,
                       Quota, QuotaView, ClusterAccepted, NodePoolAccepted, OperationAccepted,
                       HostCreated, AutoscalerSettings, AutoscalerSettingsRequest,
                       AutoscalerMode, Expander, AutoscalerStatusView, AutoscalerPoolView,
                       AutoscalerDecisionView, PendingPodView, PoolReasonView, MachineTypeView,
                       NodeResources, AutoscalerCredentialsRequest, AutoscalerCredentialsView,
                       CredentialsRevoked, RevokeTokenRequest, TokenRevoked)),
    modifiers(&BearerAuth, &ProblemResponses, &EnvelopeItemRefs),
    security(("bearer" = [])),
    tags(
        (name = "clusters", description = "Kubernetes clusters: create, list, read, change, delete"),
        (name = "node-pools", description = "Groups of worker nodes of a cluster"),
        (name = "operations", description = "Long-running work and its steps"),
        (name = "events", description = "What happened to a cluster, newest first"),
        (name = "machines", description = "The machines behind a cluster's nodes"),
        (name = "credentials", description = "Kubeconfigs, and revoking them"),
        (name = "tokens", description = "Revoking API tokens"),
        (name = "autoscaler", description = "The cluster autoscaler's decisions and an external autoscaler's credentials"),
        (name = "machine-types", description = "What each machine type offers"),
        (name = "hosts", description = "The `ssh` provider's machine pool (platform-admin)"),
        (name = "quotas", description = "Tenant quotas (platform-admin)"),
        (name = "service", description = "Probes, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// Every `/v1` operation may answer any 4xx or 5xx with a problem document
/// (bad token, rate limit, body too large, timeout, ...): declared once as
/// the shared `Problem` response, beside the specific statuses each
/// operation names.
struct ProblemResponses;

impl utoipa::Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let problem = ResponseBuilder::new()
            .description("a problem document (RFC 9457) with a stable `code`")
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .responses
            .insert("Problem".to_string(), RefOr::T(problem));
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") || path == "/v1/openapi.json" {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                for class in ["4XX", "5XX"] {
                    op.responses
                        .responses
                        .entry(class.to_string())
                        .or_insert_with(|| RefOr::Ref(Ref::new("#/components/responses/Problem")));
                }
            }
        }
    }
}

/// utoipa inlines the item type of a generic envelope (`Page<ClusterView>`
/// becomes `Page_ClusterView` with a copy of `ClusterView` inside); a
/// generated client would then have two cluster types. Items that equal a
/// named schema are replaced by a reference to it.
struct EnvelopeItemRefs;

impl utoipa::Modify for EnvelopeItemRefs {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ArrayItems, Schema};
        use utoipa::openapi::{Ref, RefOr};
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let named: Vec<(String, serde_json::Value)> = components
            .schemas
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), serde_json::to_value(s).ok()?)))
            .collect();
        for (name, schema) in components.schemas.iter_mut() {
            if !(name.starts_with("Page_") || name.starts_with("Items_")) {
                continue;
            }
            let RefOr::T(Schema::Object(envelope)) = schema else {
                continue;
            };
            let Some(RefOr::T(Schema::Array(list))) = envelope.properties.get_mut("items") else {
                continue;
            };
            let ArrayItems::RefOrSchema(item) = &mut list.items else {
                continue;
            };
            let Ok(value) = serde_json::to_value(&**item) else {
                continue;
            };
            if let Some((target, _)) = named.iter().find(|(n, v)| *v == value && n != name) {
                **item = RefOr::Ref(Ref::from_schema_name(target.clone()));
            }
        }
    }
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "service", operation_id = "get_openapi_document", security(()),
    responses((status = 200, body = Object, description = "this document")))]
pub async fn openapi() -> Response {
    Json(document()).into_response()
}

/// The OpenAPI document the service serves (`/v1/openapi.json`), from
/// which `/docs` is rendered too.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// [`document`] as JSON, exactly as served.
pub fn document_json() -> serde_json::Value {
    serde_json::to_value(document()).expect("the OpenAPI document serializes")
}
