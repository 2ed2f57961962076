//! Cluster DNS: the service answers every cluster's `kube-dns` address.
//!
//! **The choice.** No CoreDNS (nor any image with a DNS server) can be
//! installed in the clusters here, and a per-node daemon would need a
//! binary of ours on every node and a credential on every node to watch
//! the API. So the service answers itself, as GKE's Cloud DNS for GKE
//! answers for the clusters in place of kube-dns: one server in the
//! service process, UDP and TCP (`serve --dns-listen`), on an address the
//! nodes reach (on the lab, the bridge's gateway). Each cluster's addons
//! hold the selector-less `kube-dns` Service on the address kubelets give
//! pods (the tenth of the service range); the engine points its Endpoints
//! at this server ([`kubeforge_cluster::addons::dns_endpoints`]), so
//! kube-proxy carries pods' queries here from every node.
//!
//! **The answers.** The query's source says which cluster asks
//! ([`zones`]); names in `cluster.local` and the reverse names of the
//! cluster's ranges are answered from that cluster's Services and
//! Endpoints by [`kubeforge_cluster::dns`] (the Kubernetes DNS-based
//! service discovery specification, 1.1.0); every other name is forwarded
//! to the upstream resolvers (`--dns-upstream`, default the service
//! host's `/etc/resolv.conf`) through `hickory-resolver`, with its cache.
//! A source that is no cluster's node is refused; nothing of one cluster
//! is ever answered to another.
//!
//! **What this costs.** Cluster DNS depends on the service being up, as
//! the API depends on it; run several `serve` replicas for it (each
//! answers every cluster). Answers of a cluster's own names carry a 5 s
//! TTL, so a change is seen within seconds.

pub mod zones;

use hickory_proto::op::{Edns, Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use kubeforge_cluster::dns::{self as records, Answer, QueryType};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::state::SharedApp;
use zones::{NoZone, Zones};

/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often idle followers are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The EDNS payload size answers advertise (the DNS flag day's 1232).
const EDNS_PAYLOAD: u16 = 1232;

/// Binds the server's UDP socket and TCP listener on `addr`. The address
/// need not be up yet (`IP_FREEBIND`): on the lab the bridge that holds it
/// is made with the first machine.
pub fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    // Port 0: the kernel picks a UDP port that may be taken for TCP (seen
    // when two `up` started at once); pick again.
    let mut tries = 0;
    loop {
        match bind_once(addr) {
            Err(e)
                if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && tries < 16 =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

fn bind_once(
    addr: SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = Domain::for_address(addr);
    let udp = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    udp.set_freebind_v4(true)?;
    udp.set_nonblocking(true)?;
    udp.bind(&addr.into())?;
    let bound = udp.local_addr()?.as_socket().unwrap_or(addr);
    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_freebind_v4(true)?;
    tcp.set_reuse_address(true)?;
    tcp.set_nonblocking(true)?;
    // The same port as UDP (which may have been 0: picked by the kernel).
    tcp.bind(&bound.into())?;
    tcp.listen(1024)?;
    Ok((
        tokio::net::UdpSocket::from_std(udp.into())?,
        tokio::net::TcpListener::from_std(tcp.into())?,
    ))
}

/// The resolver other names are forwarded to: `upstream` (UDP, then TCP
/// when an answer is truncated), or the host's `/etc/resolv.conf` when
/// empty.
pub fn resolver(upstream: &[SocketAddr]) -> anyhow::Result<TokioResolver> {
    let provider = TokioConnectionProvider::default();
    let mut builder = if upstream.is_empty() {
        TokioResolver::builder(provider)?
    } else {
        let mut config = ResolverConfig::new();
        for addr in upstream {
            config.add_name_server(NameServerConfig::new(
                *addr,
                hickory_proto::xfer::Protocol::Udp,
            ));
            config.add_name_server(NameServerConfig::new(
                *addr,
                hickory_proto::xfer::Protocol::Tcp,
            ));
        }
        TokioResolver::builder_with_config(config, provider)
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.preserve_intermediates = true;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    // Names arrive fully qualified: never append the host's search list.
    opts.ndots = 0;
    Ok(builder.build())
}

/// Serves DNS on `udp` and `tcp` until `stop` turns true.
pub async fn serve(
    app: SharedApp,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    upstream: TokioResolver,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let zones = Arc::new(Zones::new(app.clone()));
    let sweeper = {
        let zones = zones.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                zones.sweep();
            }
        })
    };
    let handler = Handler {
        app,
        zones,
        upstream,
    };
    let mut server = ServerFuture::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE);
    let _ = stop.wait_for(|s| *s).await;
    sweeper.abort();
    server.shutdown_gracefully().await?;
    Ok(())
}

/// Answers one query at a time (hickory runs many at once).
pub struct Handler {
    app: SharedApp,
    zones: Arc<Zones>,
    upstream: TokioResolver,
}

/// A response, before it is sent.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additional: Vec<Record>,
    outcome: &'static str,
}

impl Reply {
    fn error(code: ResponseCode, outcome: &'static str) -> Self {
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
            outcome,
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let reply = self.reply(request).await;
        self.app
            .metrics
            .dns_queries
            .with_label_values(&[reply.outcome])
            .inc();
        let mut header = Header::response_from_request(request.header());
        header.set_message_type(MessageType::Response);
        header.set_response_code(reply.code);
        header.set_authoritative(reply.authoritative);
        header.set_recursion_available(true);
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if request.edns().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            builder.edns(edns);
        }
        let message = builder.build(
            header,
            reply.answers.iter(),
            std::iter::empty(),
            reply.authority.iter(),
            reply.additional.iter(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cluster DNS: sending an answer");
                let mut h = Header::response_from_request(request.header());
                h.set_response_code(ResponseCode::ServFail);
                h.into()
            }
        }
    }
}

impl Handler {
    async fn reply(&self, request: &Request) -> Reply {
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            return Reply::error(ResponseCode::NotImp, "refused");
        }
        let Ok(info) = request.request_info() else {
            return Reply::error(ResponseCode::FormErr, "refused");
        };
        let zone = match self.zones.for_source(request.src().ip()).await {
            Ok(zone) => zone,
            Err(NoZone::Unknown) => return Reply::error(ResponseCode::Refused, "refused"),
            Err(NoZone::NotReady) => return Reply::error(ResponseCode::ServFail, "not_ready"),
        };
        let name = info.query.name().to_string();
        let rtype = info.query.query_type();
        match zone.answer(&name, QueryType::from_code(u16::from(rtype))) {
            Answer::NotOurs => self.forward(&name, rtype).await,
            Answer::NxDomain => Reply {
                code: ResponseCode::NXDomain,
                authoritative: true,
                authority: wire(&[zone.soa()]),
                ..Reply::error(ResponseCode::NXDomain, "nxdomain")
            },
            Answer::Records {
                answers,
                additional,
            } => {
                let nodata = answers.is_empty();
                Reply {
                    code: ResponseCode::NoError,
                    authoritative: true,
                    answers: wire(&answers),
                    authority: if nodata {
                        wire(&[zone.soa()])
                    } else {
                        Vec::new()
                    },
                    additional: wire(&additional),
                    outcome: if nodata { "nodata" } else { "answered" },
                }
            }
        }
    }

    /// Asks the upstream resolvers; their answer (or their NXDOMAIN) is
    /// passed on, not authoritative.
    async fn forward(&self, name: &str, rtype: RecordType) -> Reply {
        match self.upstream.lookup(name, rtype).await {
            Ok(lookup) => Reply {
                code: ResponseCode::NoError,
                answers: lookup.records().to_vec(),
                outcome: "forwarded",
                ..Reply::error(ResponseCode::NoError, "forwarded")
            },
            Err(e) if e.is_no_records_found() => {
                let code = if e.is_nx_domain() {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                };
                let soa = e.into_soa().map(|s| s.into_record_of_rdata());
                Reply {
                    code,
                    authority: soa.into_iter().collect(),
                    ..Reply::error(code, "forwarded")
                }
            }
            Err(e) => {
                tracing::debug!(%name, error = %e, "cluster DNS: upstream failed");
                Reply::error(ResponseCode::ServFail, "upstream_failed")
            }
        }
    }
}

/// The zone's records as wire records; a name that does not parse (it
/// came from a tenant's cluster) is left out rather than answered wrong.
fn wire(list: &[records::Record]) -> Vec<Record> {
    list.iter().filter_map(to_wire).collect()
}

fn to_wire(r: &records::Record) -> Option<Record> {
    let name = |s: &str| Name::from_ascii(s).ok();
    let data = match &r.data {
        records::RData::A(ip) => RData::A(A(*ip)),
        records::RData::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
        records::RData::Ptr(target) => RData::PTR(PTR(name(target)?)),
        records::RData::Cname(target) => RData::CNAME(CNAME(name(target)?)),
        records::RData::Txt(text) => RData::TXT(TXT::new(vec![text.clone()])),
        records::RData::Ns(target) => RData::NS(NS(name(target)?)),
        records::RData::Soa {
            mname,
            rname,
            serial,
            refresh,
            retry,
            expire,
            minimum,
        } => RData::SOA(SOA::new(
            name(mname)?,
            name(rname)?,
            *serial,
            *refresh,
            *retry,
            *expire,
            *minimum,
        )),
    };
    Some(Record::from_rdata(name(&r.name)?, r.ttl, data))
}
