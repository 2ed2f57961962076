//! Prometheus metrics: requests by route and status, job queue depth and
//! latency, reconcile outcomes, control-plane component restarts, and the
//! autoscaler (pending pods, decisions, decision latency), the externalgrpc
//! provider's calls by method and status code, and the cluster DNS server's
//! answers by outcome. Rendered at
//! `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::time::Duration;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub job_queue_depth: IntGaugeVec,
    pub job_wait: HistogramVec,
    pub job_run: HistogramVec,
    pub reconcile: IntCounterVec,
    /// Restarts of control-plane components the engine counted (see
    /// `kubeforge_cluster::restarts`), by component: `etcd`,
    /// `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`.
    /// Per process; replicas' counts add up, each restart counted once.
    pub control_plane_restarts: IntCounterVec,
    /// Pods the autoscaler counts as pending, by cluster id, as of its
    /// last round (on the replica watching that cluster).
    pub autoscaler_pending_pods: IntGaugeVec,
    /// Autoscaler decisions by kind: `scale_up`, `scale_down`,
    /// `no_scale_up`.
    pub autoscaler_decisions: IntCounterVec,
    /// From a pod becoming unschedulable to the new size written for it,
    /// per scale-up (the oldest pod of the decision).
    pub autoscaler_decision_latency: HistogramVec,
    /// Calls to the externalgrpc provider by method and gRPC status code
    /// (`Ok`, `NotFound`, ...).
    pub grpc_calls: IntCounterVec,
    /// Their latency, by method.
    pub grpc_duration: HistogramVec,
    /// Cluster DNS queries by outcome: `answered`, `nodata`, `nxdomain`,
    /// `forwarded`, `upstream_failed`, `refused`, `not_ready`.
    pub dns_queries: IntCounterVec,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("kubeforge".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            ),
            &["route"],
        )?;
        let job_queue_depth = IntGaugeVec::new(
            Opts::new("job_queue_depth", "Jobs by state, read at scrape time"),
            &["state"],
        )?;
        let job_wait = HistogramVec::new(
            HistogramOpts::new("job_wait_seconds", "Time from due to claimed, by job kind"),
            &["kind"],
        )?;
        let job_run = HistogramVec::new(
            HistogramOpts::new("job_run_seconds", "Job run time by kind and outcome"),
            &["kind", "outcome"],
        )?;
        let reconcile = IntCounterVec::new(
            Opts::new("reconcile_total", "Reconcile runs by resource and outcome"),
            &["resource", "outcome"],
        )?;
        let control_plane_restarts = IntCounterVec::new(
            Opts::new(
                "control_plane_component_restarts_total",
                "Restarts of control-plane components seen by the engine, by component",
            ),
            &["component"],
        )?;
        let autoscaler_pending_pods = IntGaugeVec::new(
            Opts::new(
                "autoscaler_pending_pods",
                "Pods the autoscaler counts as pending, by cluster",
            ),
            &["cluster"],
        )?;
        let autoscaler_decisions = IntCounterVec::new(
            Opts::new("autoscaler_decisions_total", "Autoscaler decisions by kind"),
            &["kind"],
        )?;
        let autoscaler_decision_latency = HistogramVec::new(
            HistogramOpts::new(
                "autoscaler_decision_latency_seconds",
                "From a pod unschedulable to the new pool size written",
            )
            .buckets(vec![
                0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
            ]),
            &["kind"],
        )?;
        let grpc_calls = IntCounterVec::new(
            Opts::new(
                "externalgrpc_calls_total",
                "Calls to the cluster-autoscaler externalgrpc provider by method and code",
            ),
            &["method", "code"],
        )?;
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "externalgrpc_call_duration_seconds",
                "Latency of the externalgrpc provider's calls by method",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["method"],
        )?;
        let dns_queries = IntCounterVec::new(
            Opts::new("dns_queries_total", "Cluster DNS queries by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(dns_queries.clone()))?;
        registry.register(Box::new(grpc_calls.clone()))?;
        registry.register(Box::new(grpc_duration.clone()))?;
        registry.register(Box::new(autoscaler_pending_pods.clone()))?;
        registry.register(Box::new(autoscaler_decisions.clone()))?;
        registry.register(Box::new(autoscaler_decision_latency.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(job_queue_depth.clone()))?;
        registry.register(Box::new(job_wait.clone()))?;
        registry.register(Box::new(job_run.clone()))?;
        registry.register(Box::new(reconcile.clone()))?;
        registry.register(Box::new(control_plane_restarts.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            job_queue_depth,
            job_wait,
            job_run,
            reconcile,
            control_plane_restarts,
            autoscaler_pending_pods,
            autoscaler_decisions,
            autoscaler_decision_latency,
            grpc_calls,
            grpc_duration,
            dns_queries,
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// An externalgrpc call of `method` ended with `code` after `took`.
    pub fn observe_grpc_call(&self, method: &str, code: tonic::Code, took: Duration) {
        self.grpc_calls
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
        self.grpc_duration
            .with_label_values(&[method])
            .observe(took.as_secs_f64());
    }

    /// A job of `kind` started after waiting `waited` in the queue.
    pub fn observe_job_wait(&self, kind: &str, waited: Duration) {
        self.job_wait
            .with_label_values(&[kind])
            .observe(waited.as_secs_f64());
    }

    /// A job of `kind` ran for `took` and ended with `outcome`.
    pub fn observe_job_run(&self, kind: &str, outcome: &str, took: Duration) {
        self.job_run
            .with_label_values(&[kind, outcome])
            .observe(took.as_secs_f64());
    }
}
