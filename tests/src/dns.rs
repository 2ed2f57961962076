//! Cluster DNS in lab tests: the service's DNS server on the test bridge's
//! gateway, forwarding to an upstream that is itself a DNS server on
//! loopback (hickory's in-memory authority for [`OUTSIDE_ZONE`]), so a
//! query for a name outside the clusters never leaves the machine.

use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;
use kubeforge::app::SharedApp;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The zone the test upstream serves.
pub const OUTSIDE_ZONE: &str = "kubeforge.test.";
/// A name in it, and its address (TEST-NET-1, never routed).
pub const OUTSIDE_NAME: &str = "outside.kubeforge.test.";
pub const OUTSIDE_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// Starts the upstream on 127.0.0.1 (UDP and TCP, one port); it answers
/// until the test's runtime ends.
pub async fn start_upstream() -> SocketAddr {
    let origin = Name::from_ascii(OUTSIDE_ZONE).unwrap();
    let mut zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
    let soa = SOA::new(
        Name::from_ascii("ns.kubeforge.test.").unwrap(),
        Name::from_ascii("hostmaster.kubeforge.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        30,
    );
    zone.upsert_mut(Record::from_rdata(origin.clone(), 30, RData::SOA(soa)), 1);
    zone.upsert_mut(
        Record::from_rdata(
            Name::from_ascii(OUTSIDE_NAME).unwrap(),
            30,
            RData::A(A(OUTSIDE_ADDRESS)),
        ),
        1,
    );
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut server = ServerFuture::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5));
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    addr
}

/// The service's DNS server of a lab test, answering on port 53 of the
/// test bridge's gateway; stops when dropped.
pub struct ClusterDns {
    pub address: SocketAddrV4,
    pub upstream: SocketAddr,
    _stop: watch::Sender<bool>,
}

/// Sockets bound for [`ClusterDns`] before the app exists (the app's
/// settings name the address).
pub struct Bound {
    address: SocketAddrV4,
    sockets: (tokio::net::UdpSocket, tokio::net::TcpListener),
}

/// Binds port 53 on the first address of `subnet` (the lab gateway).
pub fn bind(subnet: &str) -> Bound {
    let net: ipnet::Ipv4Net = subnet.parse().expect("a lab subnet");
    let gateway = net.hosts().next().expect("a host address");
    let address = SocketAddrV4::new(gateway, 53);
    let sockets = kubeforge::dns::bind(SocketAddr::V4(address))
        .unwrap_or_else(|e| panic!("binding cluster DNS on {address}: {e}"));
    Bound { address, sockets }
}

impl Bound {
    pub fn address(&self) -> SocketAddrV4 {
        self.address
    }

    /// Serves `app`'s clusters, forwarding other names to a fresh test
    /// upstream.
    pub async fn serve(self, app: &SharedApp) -> ClusterDns {
        let upstream = start_upstream().await;
        let resolver = kubeforge::dns::resolver(&[upstream]).expect("resolver");
        let (stop, stop_rx) = watch::channel(false);
        let (udp, tcp) = self.sockets;
        tokio::spawn(kubeforge::dns::serve(
            app.clone(),
            udp,
            tcp,
            resolver,
            stop_rx,
        ));
        ClusterDns {
            address: self.address,
            upstream,
            _stop: stop,
        }
    }
}
