//! Which cluster asks, and that cluster's zone as of now.
//!
//! **Who asks.** A query reaches the server from a node's address: pods'
//! queries to the `kube-dns` ClusterIP are DNATed by kube-proxy to the
//! server and leave the node masqueraded to its address; the node's own
//! queries come from it anyway. The ledger says which cluster has a live
//! worker at that address ([`crate::store::machine`]); an address no live
//! worker has, or more than one cluster's, is refused. Answers are cached
//! for [`SOURCE_TTL`] (unknown addresses for [`UNKNOWN_TTL`]), so a new
//! node is known within seconds and a removed one forgotten as fast.
//!
//! **The zone.** The first query from a cluster starts a follower: a task
//! that watches the cluster's Services and Endpoints as the service's
//! identity ([`crate::tenant::TenantApi`]) and publishes a fresh
//! [`Zone`] after the initial lists and after every change. The follower
//! re-connects with a fresh identity every [`FOLLOW_FOR`], ends when the
//! cluster is deleted, and is dropped after [`IDLE_FOR`] without a query
//! (the next query starts it again). The first query waits for the first
//! zone at most [`FIRST_ZONE_WAIT`]; a resolver retries after that.

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kubeforge_cluster::dns::Zone;
use kubeforge_cluster::dns::{EndpointAddress, Protocol, ServiceKind, ServicePort, ServiceRecord};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

use crate::state::SharedApp;
use crate::tenant::WatchEvent;

/// How long a source address's cluster is remembered.
pub const SOURCE_TTL: Duration = Duration::from_secs(5);
/// How long an address with no cluster is remembered.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(3);
/// A follower re-connects (a fresh identity) this often.
pub const FOLLOW_FOR: Duration = Duration::from_secs(20 * 60);
/// A follower with no query for this long is dropped.
pub const IDLE_FOR: Duration = Duration::from_secs(15 * 60);
/// How long the first query of a cluster waits for its zone.
pub const FIRST_ZONE_WAIT: Duration = Duration::from_secs(3);
/// Pause before a follower tries again after an error.
const RETRY_AFTER: Duration = Duration::from_secs(3);

/// Why a query gets no answer from a cluster's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoZone {
    /// The address is no live worker's (or several clusters'): REFUSED.
    Unknown,
    /// The cluster's zone is not listed yet, or the ledger did not answer:
    /// SERVFAIL, and the resolver asks again.
    NotReady,
}

/// The zones of the clusters that asked, by cluster.
pub struct Zones {
    app: SharedApp,
    sources: Mutex<HashMap<IpAddr, (Option<Uuid>, Instant)>>,
    followers: Mutex<HashMap<Uuid, Follower>>,
}

struct Follower {
    zone: watch::Receiver<Option<Arc<Zone>>>,
    last_query: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Zones {
    pub fn new(app: SharedApp) -> Self {
        Self {
            app,
            sources: Mutex::default(),
            followers: Mutex::default(),
        }
    }

    /// The zone of the cluster whose node `source` is.
    pub async fn for_source(&self, source: IpAddr) -> Result<Arc<Zone>, NoZone> {
        let cluster = self.cluster_of(source).await?.ok_or(NoZone::Unknown)?;
        let mut zone = self.follow(cluster);
        let ready = tokio::time::timeout(FIRST_ZONE_WAIT, zone.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(z)) => z.clone().ok_or(NoZone::NotReady),
            _ => Err(NoZone::NotReady),
        }
    }

    /// Drops the followers no query used for [`IDLE_FOR`], and the
    /// remembered addresses that are stale.
    pub fn sweep(&self) {
        let now = Instant::now();
        lock(&self.followers)
            .retain(|_, f| now.duration_since(f.last_query) < IDLE_FOR && !f.task.is_finished());
        lock(&self.sources).retain(|_, (_, at)| now.duration_since(*at) < SOURCE_TTL);
    }

    async fn cluster_of(&self, source: IpAddr) -> Result<Option<Uuid>, NoZone> {
        let now = Instant::now();
        if let Some((cluster, at)) = lock(&self.sources).get(&source).copied() {
            let ttl = if cluster.is_some() {
                SOURCE_TTL
            } else {
                UNKNOWN_TTL
            };
            if now.duration_since(at) < ttl {
                return Ok(cluster);
            }
        }
        let found =
            crate::store::machine::clusters_of_worker_address(&self.app.pool, &source.to_string())
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "cluster DNS: the ledger did not answer");
                    NoZone::NotReady
                })?;
        let cluster = match found.as_slice() {
            [one] => Some(*one),
            [] => None,
            many => {
                tracing::warn!(%source, clusters = many.len(),
                    "cluster DNS: several clusters have a worker at this address; refusing it");
                None
            }
        };
        lock(&self.sources).insert(source, (cluster, now));
        Ok(cluster)
    }

    /// The follower of `cluster`'s zone, started if there is none.
    fn follow(&self, cluster: Uuid) -> watch::Receiver<Option<Arc<Zone>>> {
        let mut followers = lock(&self.followers);
        if let Some(f) = followers.get_mut(&cluster) {
            if !f.task.is_finished() {
                f.last_query = Instant::now();
                return f.zone.clone();
            }
        }
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(follow(self.app.clone(), cluster, tx));
        followers.insert(
            cluster,
            Follower {
                zone: rx.clone(),
                last_query: Instant::now(),
                task,
            },
        );
        rx
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Follows one cluster's Services and Endpoints until it is deleted.
async fn follow(app: SharedApp, cluster: Uuid, zone: watch::Sender<Option<Arc<Zone>>>) {
    loop {
        let c = match crate::store::cluster::get_any(&app.pool, cluster).await {
            Ok(Some(c)) if c.deletion_requested_at.is_none() => c,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(%cluster, error = %e, "cluster DNS: reading the cluster");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        let Some(endpoint) = c.endpoint.clone() else {
            tokio::time::sleep(RETRY_AFTER).await;
            continue;
        };
        let api = match crate::engine::tenant_api(&app, &c, &endpoint).await {
            Ok(api) => api,
            Err(e) => {
                tracing::warn!(cluster = %c.name, error = %e, "cluster DNS: connecting to the cluster");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        let ranges = [c.network.pod_cidr, c.network.service_cidr]
            .iter()
            .filter_map(|r| r.to_string().parse().ok())
            .collect::<Vec<ipnet::Ipv4Net>>();
        let mirror = Mirror::new(ranges);
        let watched = mirror.run(api.watch_services(), api.watch_endpoints(), &zone);
        let _ = tokio::time::timeout(FOLLOW_FOR, watched).await;
    }
}

/// The cluster's Services and Endpoints as last listed and watched.
struct Mirror {
    reverse_ranges: Vec<ipnet::Ipv4Net>,
    services: HashMap<(String, String), Service>,
    endpoints: HashMap<(String, String), Endpoints>,
}

fn key<K: kube::Resource>(o: &K) -> (String, String) {
    let meta = o.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Applies one watch event to `store`; true when the store changed in a
/// way that is complete (not in the middle of a re-list).
fn apply<K: kube::Resource>(
    store: &mut HashMap<(String, String), K>,
    relist: &mut Option<HashMap<(String, String), K>>,
    listed: &mut bool,
    event: WatchEvent<K>,
) -> bool {
    match event {
        WatchEvent::Init => {
            *relist = Some(HashMap::new());
            false
        }
        WatchEvent::InitApply(o) => {
            relist.get_or_insert_with(HashMap::new).insert(key(&o), o);
            false
        }
        WatchEvent::InitDone => {
            *store = relist.take().unwrap_or_default();
            *listed = true;
            true
        }
        WatchEvent::Apply(o) => {
            store.insert(key(&o), o);
            *listed
        }
        WatchEvent::Delete(o) => {
            store.remove(&key(&o));
            *listed
        }
    }
}

impl Mirror {
    fn new(reverse_ranges: Vec<ipnet::Ipv4Net>) -> Self {
        Self {
            reverse_ranges,
            services: HashMap::new(),
            endpoints: HashMap::new(),
        }
    }

    /// Runs until both watches end (they do not by themselves), publishing
    /// a zone once both are listed and after every change.
    async fn run(
        mut self,
        mut services: crate::tenant::Watched<Service>,
        mut endpoints: crate::tenant::Watched<Endpoints>,
        zone: &watch::Sender<Option<Arc<Zone>>>,
    ) {
        use futures::StreamExt;
        let (mut s_relist, mut e_relist) = (None, None);
        let (mut s_listed, mut e_listed) = (false, false);
        loop {
            let changed = tokio::select! {
                Some(event) = services.next() => match event {
                    Ok(ev) => apply(&mut self.services, &mut s_relist, &mut s_listed, ev),
                    Err(e) => { tracing::debug!(error = %e, "cluster DNS: services watch"); false }
                },
                Some(event) = endpoints.next() => match event {
                    Ok(ev) => apply(&mut self.endpoints, &mut e_relist, &mut e_listed, ev),
                    Err(e) => { tracing::debug!(error = %e, "cluster DNS: endpoints watch"); false }
                },
                else => return,
            };
            if changed && s_listed && e_listed {
                zone.send_replace(Some(Arc::new(self.zone())));
            }
        }
    }

    fn zone(&self) -> Zone {
        let records = self
            .services
            .iter()
            .filter_map(|(k, s)| service_record(s, self.endpoints.get(k)))
            .collect();
        Zone::new(kubeforge_cluster::pki::DEFAULT_CLUSTER_DOMAIN, records)
            .with_reverse_ranges(self.reverse_ranges.clone())
    }
}

/// What the zone needs of a Service and its Endpoints. A Service whose
/// cluster IP is not IPv4 (or is being allocated) is left out.
fn service_record(s: &Service, e: Option<&Endpoints>) -> Option<ServiceRecord> {
    let (namespace, name) = key(s);
    let spec = s.spec.as_ref()?;
    let kind = match (spec.type_.as_deref(), spec.cluster_ip.as_deref()) {
        (Some("ExternalName"), _) => ServiceKind::ExternalName(spec.external_name.clone()?),
        (_, Some("None")) => ServiceKind::Headless,
        (_, Some(ip)) => ServiceKind::ClusterIp(ip.parse::<Ipv4Addr>().ok()?),
        (_, None) => return None,
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port(p.name.as_deref(), p.protocol.as_deref(), p.port))
        .collect();
    // Ready addresses, and the not-ready ones too when the Service asks
    // for them to be published (as StatefulSets' governing Services do).
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut endpoints = Vec::new();
    let mut endpoint_ports = Vec::new();
    for subset in e.and_then(|e| e.subsets.as_ref()).into_iter().flatten() {
        let not_ready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .filter(|_| publish_not_ready);
        for a in subset.addresses.iter().flatten().chain(not_ready) {
            if let Ok(ip) = a.ip.parse() {
                endpoints.push(EndpointAddress {
                    ip,
                    hostname: a.hostname.clone().filter(|h| !h.is_empty()),
                });
            }
        }
        for p in subset.ports.iter().flatten() {
            if let Some(p) = port(p.name.as_deref(), p.protocol.as_deref(), p.port) {
                if !endpoint_ports.contains(&p) {
                    endpoint_ports.push(p);
                }
            }
        }
    }
    Some(ServiceRecord {
        namespace,
        name,
        kind,
        ports,
        endpoints,
        endpoint_ports,
    })
}

fn port(name: Option<&str>, protocol: Option<&str>, port: i32) -> Option<ServicePort> {
    Some(ServicePort {
        name: name.unwrap_or_default().to_string(),
        protocol: match protocol.unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            _ => return None,
        },
        port: u16::try_from(port).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EndpointAddress as Addr, EndpointSubset, ServiceSpec};

    fn svc(name: &str, spec: ServiceSpec) -> Service {
        let mut s = Service {
            spec: Some(spec),
            ..Default::default()
        };
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        s
    }

    #[test]
    fn services_become_records_by_kind() {
        let ip = svc(
            "web",
            ServiceSpec {
                cluster_ip: Some("10.96.3.4".into()),
                ..Default::default()
            },
        );
        let r = service_record(&ip, None).unwrap();
        assert_eq!(r.kind, ServiceKind::ClusterIp(Ipv4Addr::new(10, 96, 3, 4)));
        let ext = svc(
            "out",
            ServiceSpec {
                type_: Some("ExternalName".into()),
                external_name: Some("example.org".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            service_record(&ext, None).unwrap().kind,
            ServiceKind::ExternalName("example.org".into())
        );
        // Not allocated yet, or not IPv4: not in the zone.
        let pending = svc("p", ServiceSpec::default());
        assert!(service_record(&pending, None).is_none());
    }

    #[test]
    fn headless_endpoints_are_ready_ones_unless_not_ready_are_published() {
        let mut s = svc(
            "db",
            ServiceSpec {
                cluster_ip: Some("None".into()),
                ..Default::default()
            },
        );
        let addr = |ip: &str, host: Option<&str>| Addr {
            ip: ip.into(),
            hostname: host.map(str::to_string),
            ..Default::default()
        };
        let e = Endpoints {
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![addr("10.244.1.5", Some("db-0"))]),
                not_ready_addresses: Some(vec![addr("10.244.2.6", None)]),
                ports: Some(vec![k8s_openapi::api::core::v1::EndpointPort {
                    name: Some("pg".into()),
                    port: 5432,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        };
        let r = service_record(&s, Some(&e)).unwrap();
        assert_eq!(r.kind, ServiceKind::Headless);
        assert_eq!(
            r.endpoints,
            [EndpointAddress {
                ip: Ipv4Addr::new(10, 244, 1, 5),
                hostname: Some("db-0".into())
            }]
        );
        assert_eq!(r.endpoint_ports[0].port, 5432);
        s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        assert_eq!(service_record(&s, Some(&e)).unwrap().endpoints.len(), 2);
    }
}
