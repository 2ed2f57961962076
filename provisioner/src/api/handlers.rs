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
    CredentialsRevoked, EventView, HostCreated, HostView, Items, KubeconfigRequest,
    MachineTypeView, MachineView, NodePoolAccepted, NodePoolView, OperationAccepted, OperationView,
    PageQuery, PendingPodView, PoolReasonView, Problem, Quota, QuotaView, RevokeTokenRequest,
    TokenRevoked, UpdateClusterRequest, UpdateNodePoolRequest,
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

#[utoipa::path(post, path = "/v1/clusters", request_body = CreateClusterRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response")),
    responses((status = 202, body = ClusterAccepted, description = "{cluster, operation}"), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
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

#[utoipa::path(get, path = "/v1/clusters", params(ClusterListQuery),
    responses((status = 200, description = "{items, next_page_token}"), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn cluster_list(
    State(app): State<SharedApp>,
    ctx: OpContext,
    QueryParams(q): QueryParams<ClusterListQuery>,
) -> Result<Response> {
    Ok(Json(app.cluster_list(&ctx, q).await?).into_response())
}

#[utoipa::path(get, path = "/v1/clusters/{cluster}", params(("cluster" = String, Path, description = "id or name")),
    responses((status = 200, body = ClusterView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn cluster_get(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
) -> Result<Response> {
    let view = app.cluster_get(&ctx, &c).await?;
    Ok(with_etag(&view.etag.clone(), view))
}

#[utoipa::path(patch, path = "/v1/clusters/{cluster}", request_body = UpdateClusterRequest,
    params(("cluster" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = ClusterAccepted, description = "{cluster, operation}"), (status = 412, body = Problem, content_type = "application/problem+json")))]
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

#[utoipa::path(delete, path = "/v1/clusters/{cluster}",
    params(("cluster" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 202, body = OperationAccepted, description = "{operation}"), (status = 409, body = Problem, content_type = "application/problem+json")))]
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

#[utoipa::path(post, path = "/v1/clusters/{cluster}/node-pools", request_body = CreateNodePoolRequest,
    params(("cluster" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 202, body = NodePoolAccepted, description = "{node_pool, operation}"), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
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

#[utoipa::path(get, path = "/v1/clusters/{cluster}/node-pools", params(("cluster" = String, Path)),
    responses((status = 200, body = [NodePoolView])))]
pub async fn node_pool_list(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
) -> Result<Response> {
    let items = app.node_pool_list(&ctx, &c).await?;
    Ok(Json(Items { items }).into_response())
}

#[utoipa::path(get, path = "/v1/clusters/{cluster}/node-pools/{pool}",
    params(("cluster" = String, Path), ("pool" = String, Path)),
    responses((status = 200, body = NodePoolView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn node_pool_get(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath((c, p)): RefPath<(String, String)>,
) -> Result<Response> {
    let view = app.node_pool_get(&ctx, &c, &p).await?;
    Ok(with_etag(&view.etag.clone(), view))
}

#[utoipa::path(patch, path = "/v1/clusters/{cluster}/node-pools/{pool}", request_body = UpdateNodePoolRequest,
    params(("cluster" = String, Path), ("pool" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = NodePoolAccepted, description = "{node_pool, operation}"), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
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

#[utoipa::path(delete, path = "/v1/clusters/{cluster}/node-pools/{pool}",
    params(("cluster" = String, Path), ("pool" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 202, body = OperationAccepted, description = "{operation}")))]
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

#[utoipa::path(get, path = "/v1/clusters/{cluster}/machines", params(("cluster" = String, Path)),
    responses((status = 200, body = [MachineView])))]
pub async fn machine_list(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
) -> Result<Response> {
    let items = app.machine_list(&ctx, &c).await?;
    Ok(Json(Items { items }).into_response())
}

#[utoipa::path(get, path = "/v1/clusters/{cluster}/operations", params(("cluster" = String, Path)),
    responses((status = 200, body = [OperationView])))]
pub async fn operation_list(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
) -> Result<Response> {
    let items = app.operation_list(&ctx, &c).await?;
    Ok(Json(Items { items }).into_response())
}

#[utoipa::path(get, path = "/v1/operations/{operation}", params(("operation" = String, Path)),
    responses((status = 200, body = OperationView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn operation_get(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(o): RefPath<String>,
) -> Result<Response> {
    Ok(Json(app.operation_get(&ctx, &o).await?).into_response())
}

#[utoipa::path(get, path = "/v1/clusters/{cluster}/events", params(("cluster" = String, Path), PageQuery),
    responses((status = 200, description = "{items: [Event], next_page_token}, newest first")))]
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

#[utoipa::path(post, path = "/v1/clusters/{cluster}/kubeconfig", request_body = KubeconfigRequest,
    params(("cluster" = String, Path)),
    responses((status = 200, content_type = "application/yaml", description = "a kubeconfig; `Kubeforge-Expires-At` says when its certificate expires (RFC 3339)",
               headers(("Kubeforge-Expires-At" = String, description = "RFC 3339 expiry of the client certificate"))),
              (status = 403, body = Problem, content_type = "application/problem+json", description = "the caller's role may not mint a kubeconfig of this role"),
              (status = 409, body = Problem, content_type = "application/problem+json", description = "cluster_not_ready")))]
pub async fn kubeconfig_create(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
    body: JsonBody<KubeconfigRequest>,
) -> Result<Response> {
    let issued = app.kubeconfig_create(&ctx, &c, body.value).await?;
    let expires = issued
        .expires_at
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok((
        [
            (header::CONTENT_TYPE, "application/yaml"),
            (
                header::HeaderName::from_static(KUBECONFIG_EXPIRES_AT),
                expires.as_str(),
            ),
        ],
        issued.yaml,
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/clusters/{cluster}/credentials/revoke",
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

#[utoipa::path(post, path = "/v1/tokens/revoke", request_body = RevokeTokenRequest,
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

#[utoipa::path(get, path = "/v1/clusters/{cluster}/autoscaler", params(("cluster" = String, Path, description = "id or name")),
    responses((status = 200, body = AutoscalerStatusView, description = "per pool its recent decisions, per pending pod where it goes or why no pool takes it"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn autoscaler_get(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(c): RefPath<String>,
) -> Result<Response> {
    Ok(Json(app.autoscaler_get(&ctx, &c).await?).into_response())
}

#[utoipa::path(post, path = "/v1/clusters/{cluster}/autoscaler/credentials",
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

#[utoipa::path(get, path = "/v1/machine-types",
    responses((status = 200, body = Items<MachineTypeView>, description = "{items}: every machine type with what its nodes offer to pods"),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn machine_type_list(State(app): State<SharedApp>, ctx: OpContext) -> Result<Response> {
    let items = app.machine_type_list(&ctx)?;
    Ok(Json(Items { items }).into_response())
}

#[utoipa::path(post, path = "/v1/hosts", request_body = CreateHostRequest,
    responses((status = 201, body = HostCreated, description = "{host}"), (status = 403, body = Problem, content_type = "application/problem+json")))]
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

#[utoipa::path(get, path = "/v1/hosts", responses((status = 200, body = [HostView])))]
pub async fn host_list(State(app): State<SharedApp>, ctx: OpContext) -> Result<Response> {
    let items = app.host_list(&ctx).await?;
    Ok(Json(Items { items }).into_response())
}

#[utoipa::path(delete, path = "/v1/hosts/{host}", params(("host" = String, Path)),
    responses((status = 204), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn host_delete(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(h): RefPath<String>,
) -> Result<Response> {
    app.host_delete(&ctx, &h).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/quota", params(("tenant" = String, Path)),
    responses((status = 200, body = QuotaView)))]
pub async fn quota_get(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(t): RefPath<String>,
) -> Result<Response> {
    Ok(Json(app.quota_get(&ctx, &t).await?).into_response())
}

#[utoipa::path(put, path = "/v1/tenants/{tenant}/quota", request_body = Quota, params(("tenant" = String, Path)),
    responses((status = 200, body = QuotaView)))]
pub async fn quota_put(
    State(app): State<SharedApp>,
    ctx: OpContext,
    RefPath(t): RefPath<String>,
    body: JsonBody<Quota>,
) -> Result<Response> {
    Ok(Json(app.quota_put(&ctx, &t, body.value).await?).into_response())
}

/// Process up.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Database reachable.
// `SELECT 1` must answer within READY_TIMEOUT.
#[utoipa::path(get, path = "/readyz", security(()), responses((status = 200), (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn readyz(State(app): State<SharedApp>) -> Result<&'static str> {
    match tokio::time::timeout(READY_TIMEOUT, sqlx::query("SELECT 1").execute(&app.pool)).await {
        Ok(Ok(_)) => Ok("ok"),
        Ok(Err(_)) | Err(_) => Err(Error::Unavailable("database unreachable".into())),
    }
}

/// How long `/readyz` waits for the database: a probe must learn that it
/// is gone well before requests give up on it (the pool's acquire timeout).
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

#[utoipa::path(get, path = "/metrics", security(()), responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(app): State<SharedApp>) -> Response {
    if let Ok((queued, running, dead)) = crate::store::job::depth(&app.pool).await {
        let g = &app.metrics.job_queue_depth;
        g.with_label_values(&["queued"]).set(queued);
        g.with_label_values(&["running"]).set(running);
        g.with_label_values(&["dead"]).set(dead);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
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
        quota_put, healthz, readyz, metrics, openapi
    ),
    components(schemas(Problem, ClusterView, NodePoolView, MachineView, OperationView, EventView,
                       CreateClusterRequest, CreateNodePoolRequest, UpdateClusterRequest,
                       UpdateNodePoolRequest, KubeconfigRequest, CreateHostRequest, HostView,
                       Quota, QuotaView, ClusterAccepted, NodePoolAccepted, OperationAccepted,
                       HostCreated, AutoscalerSettings, AutoscalerSettingsRequest,
                       AutoscalerMode, Expander, AutoscalerStatusView, AutoscalerPoolView,
                       AutoscalerDecisionView, PendingPodView, PoolReasonView, MachineTypeView,
                       NodeResources, AutoscalerCredentialsRequest, AutoscalerCredentialsView,
                       CredentialsRevoked, RevokeTokenRequest, TokenRevoked)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

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

#[utoipa::path(get, path = "/v1/openapi.json", security(()), responses((status = 200)))]
pub async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}
