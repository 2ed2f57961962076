//! The HTTP API: routes, middleware (request ids, tracing, metrics, body
//! limit, timeouts), the OpenAPI document generated from the handlers and
//! the `/docs` page rendered from it.

pub mod docs;
pub mod extract;
pub mod handlers;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::time::{Duration, Instant};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::app::SharedApp;
use crate::error::Error;
use extract::REQUEST_ID;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Longest a handler may run.
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(30);

/// The whole API.
pub fn router(app: SharedApp) -> Router {
    use handlers::*;
    let request_id = HeaderName::from_static(REQUEST_ID);
    Router::new()
        .route("/v1/clusters", post(cluster_create).get(cluster_list))
        .route(
            "/v1/clusters/{cluster}",
            get(cluster_get).patch(cluster_update).delete(cluster_delete),
        )
        .route(
            "/v1/clusters/{cluster}/node-pools",
            post(node_pool_create).get(node_pool_list),
        )
        .route(
            "/v1/clusters/{cluster}/node-pools/{pool}",
            get(node_pool_get).patch(node_pool_update).delete(node_pool_delete),
        )
        .route("/v1/clusters/{cluster}/machines", get(machine_list))
        .route("/v1/clusters/{cluster}/operations", get(operation_list))
        .route("/v1/clusters/{cluster}/events", get(event_list))
        .route("/v1/clusters/{cluster}/kubeconfig", post(kubeconfig_create))
        .route(
            "/v1/clusters/{cluster}/credentials/revoke",
            post(credentials_revoke),
        )
        .route("/v1/tokens/revoke", post(token_revoke))
        .route("/v1/clusters/{cluster}/autoscaler", get(autoscaler_get))
        .route(
            "/v1/clusters/{cluster}/autoscaler/credentials",
            post(autoscaler_credentials_create),
        )
        .route("/v1/machine-types", get(machine_type_list))
        .route("/v1/operations/{operation}", get(operation_get))
        .route("/v1/hosts", post(host_create).get(host_list))
        .route("/v1/hosts/{host}", axum::routing::delete(host_delete))
        .route("/v1/tenants/{tenant}/quota", get(quota_get).put(quota_put))
        .route("/v1/openapi.json", get(openapi))
        .route("/docs", get(docs::docs))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { Error::not_found("route", "") })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(middleware::from_fn(timeout))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(app.clone(), record_metrics))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(app)
}

async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(HANDLER_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => Error::Timeout.into_response(),
    }
}

async fn record_metrics(State(app): State<SharedApp>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let started = Instant::now();
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    app.metrics
        .http_requests
        .with_label_values(&[&route, &method, &status])
        .inc();
    app.metrics
        .http_duration
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    if resp.status().is_client_error() || resp.status().is_server_error() {
        tracing::info!(status = %status, route = %route, "request refused");
    }
    resp.headers_mut()
        .entry("cache-control")
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}
