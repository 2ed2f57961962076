//! The shared state of one Kubeforge process: its database pool, keys,
//! providers, machine access, the clients of tenant clusters, metrics and
//! settings. The API's application layer (`app`) and the engine both work
//! on it; it depends on neither (the layers point one way:
//! api -> app -> {store, engine} -> {providers, ssh, tenant} -> cluster).

use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthKeys;
use crate::crypto::SecretBox;
use crate::metrics::Metrics;
use crate::providers::ProviderRegistry;
use crate::ratelimit::{RateLimiter, RateLimits};
use crate::store::tenant::Quota;

/// Service settings that app methods read.
#[derive(Debug, Clone)]
pub struct Config {
    /// Quota a tenant gets on its first write.
    pub default_quota: Quota,
    /// Failed passes in a row after which a cluster's operations fail (its
    /// reconcile goes on); attempts before any other job is dead-lettered.
    pub max_job_attempts: i32,
    /// Longest kubeconfig TTL a tenant may ask for.
    pub kubeconfig_max_ttl: Duration,
    /// How far back control-plane component restarts count towards
    /// degrading a cluster. Always
    /// `kubeforge_cluster::restarts::RESTART_WINDOW` in the service (no
    /// flag or variable sets it); tests shorten it so a cluster recovers
    /// within the test.
    pub control_plane_restart_window: Duration,
    /// The `host:port` external cluster-autoscalers dial for this
    /// service's `externalgrpc` endpoint; set by the server when it is
    /// started with `--grpc-listen`. None: no such endpoint, and
    /// autoscaler credentials are refused (409).
    pub grpc_address: Option<String>,
    /// Where the service's cluster DNS server answers, as the clusters'
    /// nodes reach it: every cluster's `kube-dns` Endpoints name it. Set by
    /// the server when it serves DNS (`--dns-listen`); None: clusters get
    /// no DNS Endpoints (their `kube-dns` Service has no backend).
    pub dns_address: Option<std::net::SocketAddrV4>,
    /// Requests per second and burst per tenant, reads and writes apart
    /// (`KUBEFORGE_RATE_LIMIT_READ`/`_WRITE`, see `server::service_config`).
    pub rate_limits: RateLimits,
    /// Tenants the lab provider makes clusters for. The library's default
    /// trusts every tenant (what `kubeforge up` on a laptop wants); `serve`
    /// trusts none unless `--lab-tenants` says so (see [`LabTenants`]).
    pub lab_tenants: LabTenants,
}

/// The tenants the lab provider serves. Lab machines are containers on the
/// service's own host and share its kernel (docs/SECURITY.md): a tenant's
/// privileged pod there is very likely root on the host, where every
/// tenant's sealed keys and the service's keys live. So the lab is for the
/// platform team's own development and tests, and serves only the tenants
/// it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabTenants {
    All,
    Only(std::collections::BTreeSet<String>),
}

impl LabTenants {
    /// `all`, or a comma-separated list of tenant ids (empty: none).
    pub fn parse(value: &str) -> Result<LabTenants, String> {
        let value = value.trim();
        if value == "all" {
            return Ok(LabTenants::All);
        }
        let mut only = std::collections::BTreeSet::new();
        for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !crate::auth::valid_tenant(t) {
                return Err(format!(
                    "{t:?} is not a tenant id (1-63 lowercase letters, digits and '-')"
                ));
            }
            only.insert(t.to_string());
        }
        Ok(LabTenants::Only(only))
    }

    pub fn trusts(&self, tenant: &str) -> bool {
        match self {
            LabTenants::All => true,
            LabTenants::Only(only) => only.contains(tenant),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_quota: Quota {
                max_clusters: 10,
                max_nodes: 50,
                // 50 nodes of the largest EC2 types in the catalogue (8
                // vCPUs): the node quota is what binds by default.
                max_cpus: 400,
            },
            max_job_attempts: 8,
            kubeconfig_max_ttl: Duration::from_secs(24 * 3600),
            control_plane_restart_window: kubeforge_cluster::restarts::RESTART_WINDOW,
            grpc_address: None,
            dns_address: None,
            rate_limits: RateLimits::default(),
            lab_tenants: LabTenants::All,
        }
    }
}

/// Shared state of one Kubeforge process.
pub struct App {
    pub pool: PgPool,
    pub auth: AuthKeys,
    pub providers: ProviderRegistry,
    pub secrets: SecretBox,
    pub metrics: Metrics,
    pub config: Config,
    /// SSH key and binaries for bootstrapping machines; None when this
    /// service cannot reach machines (then control planes wait, saying why).
    pub access: Option<Arc<crate::ssh::MachineAccess>>,
    /// The service's clients of tenant clusters, minted on first use.
    pub tenants: crate::tenant::Clients,
    /// Per-tenant request buckets (`config.rate_limits`), drawn from by
    /// every authenticated API request.
    pub rate_limiter: RateLimiter,
    /// This replica's copy of the revoked API tokens (`revoked_tokens`).
    pub revocations: crate::auth::Revocations,
}

pub type SharedApp = Arc<App>;

#[cfg(test)]
mod tests {
    use super::LabTenants;

    #[test]
    fn lab_tenants_parse() {
        assert_eq!(LabTenants::parse("all"), Ok(LabTenants::All));
        let none = LabTenants::parse("").unwrap();
        assert!(!none.trusts("acme"));
        let some = LabTenants::parse("acme, platform-dev").unwrap();
        assert!(some.trusts("acme") && some.trusts("platform-dev"));
        assert!(!some.trusts("other"));
        assert!(LabTenants::parse("Acme").is_err());
        assert!(LabTenants::parse("a b").is_err());
    }
}
