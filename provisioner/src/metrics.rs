//! Prometheus metrics: requests by route and status, job queue depth and
//! latency, reconcile outcomes, control-plane component restarts, and the
//! autoscaler (pending pods, decisions, decision latency), the externalgrpc
//! provider's calls by method and status code, and the cluster DNS server's
//! answers by outcome. Rendered at
//! `/metrics`.
//!
//! The fleet: clusters by phase, each node pool's desired and ready nodes
//! and each cluster's certificate expiries are gauges read from the
//! database at scrape time ([`Fleet`]), so every replica reports the same
//! values; operation durations, node join times and repairs are counted by
//! the process that saw them (sum them over replicas). Series per cluster
//! or pool are labelled by id (never a tenant's or cluster's name, as
//! `/metrics` needs no token) and go when the cluster or pool does. The
//! list is in README.md ("Metrics").

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The cluster phases the `clusters` gauge always has a series for.
pub const PHASES: [&str; 5] = ["provisioning", "ready", "degraded", "deleting", "failed"];

/// The reasons a repair is counted under: a worker replaced by node
/// auto-repair (`NodeNotReady`, `NodeMissing`, `MachineStopped`, the
/// unhealthy reason's kind; `Other` for any other), or a machine the
/// provider lost, made again (`MachineLost`).
pub const REPAIR_REASONS: [&str; 5] = [
    "NodeNotReady",
    "NodeMissing",
    "MachineStopped",
    "MachineLost",
    "Other",
];

/// An operation that has just ended: its type, `succeeded` or `failed`,
/// and the seconds from its request to its end.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedOperation {
    pub kind: String,
    pub result: &'static str,
    pub seconds: f64,
}

/// What the fleet gauges show, read from the database at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// Live clusters by phase.
    pub clusters_by_phase: Vec<(String, i64)>,
    /// Per live node pool: cluster id, pool id, desired size, ready nodes.
    pub pools: Vec<(String, String, i64, i64)>,
    /// Per live cluster and certificate (`ca`, `etcd_ca`, `front_proxy_ca`,
    /// `apiserver`): its expiry, seconds since the epoch.
    pub certificate_expiries: Vec<(String, String, i64)>,
}

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
    /// Live clusters by phase (scrape time).
    pub clusters: IntGaugeVec,
    /// Each live node pool's size, by cluster id and pool id (scrape time).
    pub pool_desired_nodes: IntGaugeVec,
    /// Each live node pool's workers whose node is Ready (scrape time).
    pub pool_ready_nodes: IntGaugeVec,
    /// Operations from request to end, by type and result.
    pub operation_duration: HistogramVec,
    /// From a worker's machine being requested to its node Ready.
    pub node_join: Histogram,
    /// Repairs by reason ([`REPAIR_REASONS`]).
    pub repairs: IntCounterVec,
    /// Certificate expiry, by cluster id and certificate (scrape time).
    pub certificate_expiry: IntGaugeVec,
    /// One scrape at a time sets the fleet gauges and renders.
    scrape: Arc<Mutex<()>>,
}

impl Metrics {
    /// Adds a collector made elsewhere (a provider's call counters) to
    /// what `/metrics` renders.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

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
        let clusters = IntGaugeVec::new(
            Opts::new("clusters", "Live clusters by phase, read at scrape time"),
            &["phase"],
        )?;
        let pool_desired_nodes = IntGaugeVec::new(
            Opts::new(
                "node_pool_desired_nodes",
                "Each live node pool's desired size, by cluster id and pool id",
            ),
            &["cluster", "pool"],
        )?;
        let pool_ready_nodes = IntGaugeVec::new(
            Opts::new(
                "node_pool_ready_nodes",
                "Each live node pool's workers whose node is Ready, by cluster id and pool id",
            ),
            &["cluster", "pool"],
        )?;
        let operation_duration = HistogramVec::new(
            HistogramOpts::new(
                "operation_duration_seconds",
                "Operations from request to end, by type and result",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
            ]),
            &["type", "result"],
        )?;
        let node_join = Histogram::with_opts(
            HistogramOpts::new(
                "node_join_seconds",
                "From a worker's machine being requested to its node Ready",
            )
            .buckets(vec![
                5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
            ]),
        )?;
        let repairs = IntCounterVec::new(
            Opts::new(
                "repairs_total",
                "Workers replaced by auto-repair and lost machines made again, by reason",
            ),
            &["reason"],
        )?;
        for reason in REPAIR_REASONS {
            repairs.with_label_values(&[reason]);
        }
        let certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "cluster_certificate_expiry_timestamp_seconds",
                "When each cluster's CAs and earliest apiserver serving certificate expire",
            ),
            &["cluster", "certificate"],
        )?;
        for m in [
            &clusters,
            &pool_desired_nodes,
            &pool_ready_nodes,
            &certificate_expiry,
        ] {
            registry.register(Box::new(m.clone()))?;
        }
        registry.register(Box::new(operation_duration.clone()))?;
        registry.register(Box::new(node_join.clone()))?;
        registry.register(Box::new(repairs.clone()))?;
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
            clusters,
            pool_desired_nodes,
            pool_ready_nodes,
            operation_duration,
            node_join,
            repairs,
            certificate_expiry,
            scrape: Arc::new(Mutex::new(())),
        })
    }

    /// Sets the fleet gauges to `fleet` (series of clusters and pools no
    /// longer there go) and renders, one scrape at a time.
    pub fn render_fleet(&self, fleet: &Fleet) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.clusters.reset();
        for phase in PHASES {
            self.clusters.with_label_values(&[phase]).set(0);
        }
        for (phase, n) in &fleet.clusters_by_phase {
            self.clusters.with_label_values(&[phase]).set(*n);
        }
        self.pool_desired_nodes.reset();
        self.pool_ready_nodes.reset();
        for (cluster, pool, desired, ready) in &fleet.pools {
            self.pool_desired_nodes
                .with_label_values(&[cluster, pool])
                .set(*desired);
            self.pool_ready_nodes
                .with_label_values(&[cluster, pool])
                .set(*ready);
        }
        self.certificate_expiry.reset();
        for (cluster, cert, at) in &fleet.certificate_expiries {
            self.certificate_expiry
                .with_label_values(&[cluster, cert])
                .set(*at);
        }
        self.render()
    }

    /// An operation ended (`None`: it had already ended, nothing to count).
    pub fn observe_operation(&self, finished: Option<FinishedOperation>) {
        if let Some(f) = finished {
            self.operation_duration
                .with_label_values(&[&f.kind, f.result])
                .observe(f.seconds.max(0.0));
        }
    }

    /// A worker's node became Ready `seconds` after its machine was
    /// requested.
    pub fn observe_node_join(&self, seconds: f64) {
        self.node_join.observe(seconds.max(0.0));
    }

    /// A repair: `why` is the unhealthy reason (`NodeNotReady: ...`) or
    /// `MachineLost`; counted under its kind ([`REPAIR_REASONS`]).
    pub fn count_repair(&self, why: &str) {
        let kind = why.split(':').next().unwrap_or_default().trim();
        let reason = REPAIR_REASONS
            .iter()
            .find(|r| **r == kind)
            .copied()
            .unwrap_or("Other");
        self.repairs.with_label_values(&[reason]).inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_list_is_the_cluster_phases() {
        let phases: Vec<&str> = kubeforge_cluster::condition::Phase::ALL
            .iter()
            .map(|p| p.as_str())
            .collect();
        assert_eq!(phases, PHASES);
    }

    #[test]
    fn repairs_count_under_their_kind() {
        let m = Metrics::new().unwrap();
        m.count_repair("NodeNotReady: kubelet stopped posting");
        m.count_repair("NodeNotReady: again");
        m.count_repair("MachineLost");
        m.count_repair("something new: x");
        let n = |r: &str| m.repairs.with_label_values(&[r]).get();
        assert_eq!(
            (
                n("NodeNotReady"),
                n("MachineLost"),
                n("Other"),
                n("NodeMissing")
            ),
            (2, 1, 1, 0)
        );
    }
}
