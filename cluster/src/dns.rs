//! The answers of a cluster's DNS zone, as plain values.
//!
//! A [`Zone`] holds what a cluster's Services and their ready endpoints
//! publish under the cluster domain `Z` (e.g. `cluster.local`), following
//! the Kubernetes DNS-Based Service Discovery specification, schema version
//! [`SCHEMA_VERSION`]. [`Zone::answer`] takes a query name and type and says
//! whether the name is someone else's ([`Answer::NotOurs`]: the caller
//! forwards it), does not exist ([`Answer::NxDomain`]) or exists
//! ([`Answer::Records`], empty for NODATA). The caller puts [`Zone::soa`] in
//! the authority section of negative answers and turns the records into
//! wire records; nothing here speaks DNS on the wire, reads a clock or
//! touches the network.
//!
//! Query names match without regard to ASCII case, with or without the
//! trailing dot. Answer names are lowercase and absolute (trailing dot).
//! Every record has the TTL [`DEFAULT_TTL`], which is also the SOA's
//! `minimum` (the negative-caching TTL).
//!
//! The names, for a Service `<svc>` in namespace `<ns>`:
//! - `<svc>.<ns>.svc.Z`: A the cluster IP (a Service with one); for a
//!   headless Service, one A per ready address (sorted, once each; with
//!   none the name still exists); for an ExternalName Service, a CNAME to
//!   its target for every query type but SOA and NS (not chased: the
//!   resolver follows it).
//! - `_<port>._<proto>.<svc>.<ns>.svc.Z`, for each *named* port: SRV
//!   `0 100 <port> <svc>.<ns>.svc.Z.` for a Service with a cluster IP (its
//!   own ports); for a headless Service, one SRV per ready address to
//!   `<host>.<svc>.<ns>.svc.Z.` (the Endpoints' ports). The targets' A
//!   records come in the additional section. Unnamed ports get no SRV; a
//!   port name asked with another protocol does not exist.
//! - `<host>.<svc>.<ns>.svc.Z`, for a headless Service: A the address of
//!   the endpoint whose host it is. An endpoint's host is its hostname when
//!   it has one, else its address with dashes (`10-244-1-2`); the dashed
//!   form answers for every endpoint, so both work.
//! - `<a>-<b>-<c>-<d>.<ns>.pod.Z`: A `a.b.c.d`, for any namespace and any
//!   address ("pods insecure", as kubeadm's CoreDNS answers).
//! - `<d>.<c>.<b>.<a>.in-addr.arpa`: PTR to the Service name of a cluster
//!   IP and to `<host>.<svc>.<ns>.svc.Z` of a headless Service's address,
//!   one record each when several share an address. An address nobody
//!   holds is not ours ([`Answer::NotOurs`]) unless it lies in one of the
//!   cluster's own ranges ([`Zone::with_reverse_ranges`]): then it does not
//!   exist.
//! - `dns-version.Z`: TXT [`SCHEMA_VERSION`].
//! - The apex `Z` has the SOA ([`Zone::soa`]) and NS `ns.dns.Z.`.
//! - Empty non-terminals exist with no data (NODATA, never NXDOMAIN, so a
//!   resolver that minimises query names finds what lies below): `Z`,
//!   `svc.Z`, `pod.Z`, `<ns>.pod.Z`, `<ns>.svc.Z` for a namespace with a
//!   Service, `_<proto>.<svc>.<ns>.svc.Z` for a port of that protocol.
//!
//! An existing name asked for a type it has no data for (AAAA above all:
//! glibc and musl ask A and AAAA together) is NODATA, never NXDOMAIN. ANY
//! answers every record of the name. Any other name under `Z`, and any
//! name under `Z` with an empty label or longer than 253 characters, does
//! not exist; names outside `Z` and `in-addr.arpa` are not ours.
//!
//! Deliberately not answered:
//! - wildcard queries (`*.<ns>.svc.Z` and the like), which the
//!   specification deprecates: `*` is a label like any other here, so such
//!   names do not exist;
//! - AAAA data and `ip6.arpa`: the clusters are IPv4 only, so AAAA is
//!   NODATA on every existing name and `ip6.arpa` names are not ours.
//!
//! [`Zone::new`] never panics on what a tenant's cluster holds. A namespace,
//! Service, port or host name that is not a Kubernetes DNS label (letters,
//! digits and `-`, at most 63 characters; uppercase is lowered) publishes
//! nothing, so a name with a dot cannot pose as a deeper one; an endpoint
//! with such a hostname is known by its dashed address only. An
//! ExternalName target that is not a DNS name leaves the Service name with
//! no data. When two Services reach one name, the first given wins.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

/// The version of the specification's schema this zone follows, answered
/// at `dns-version.Z` (TXT).
pub const SCHEMA_VERSION: &str = "1.1.0";

/// The TTL of every record, and the SOA's `minimum`.
pub const DEFAULT_TTL: u32 = 5;

const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86_400;
const SRV_PRIORITY: u16 = 0;
const SRV_WEIGHT: u16 = 100;
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;
const REVERSE_SUFFIX: &str = ".in-addr.arpa";

/// A port's protocol, as its SRV label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The label in SRV names: `_tcp`, `_udp` or `_sctp`.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "_tcp",
            Protocol::Udp => "_udp",
            Protocol::Sctp => "_sctp",
        }
    }
}

/// A port of a Service or of its Endpoints. An empty `name` is an unnamed
/// port, which gets no SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// How a Service is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// A Service with a cluster IP (ClusterIP, NodePort, LoadBalancer).
    ClusterIp(Ipv4Addr),
    /// `clusterIP: None`: the name answers the ready endpoints' addresses.
    Headless,
    /// An alias: the name is a CNAME to this target.
    ExternalName(String),
}

/// A ready endpoint address of a headless Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAddress {
    pub ip: Ipv4Addr,
    /// The endpoint's `hostname` field, if set.
    pub hostname: Option<String>,
}

/// A Service and what the zone needs of its Endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    /// The Service's ports (SRV records of a Service with a cluster IP).
    pub ports: Vec<ServicePort>,
    /// The ready addresses the caller chose (a headless Service's A, SRV
    /// and PTR records); ignored for other kinds.
    pub endpoints: Vec<EndpointAddress>,
    /// The Endpoints' ports (a headless Service's SRV records).
    pub endpoint_ports: Vec<ServicePort>,
}

/// The type asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryType {
    A,
    Aaaa,
    Srv,
    Ptr,
    Txt,
    Cname,
    Soa,
    Ns,
    Any,
    /// Any other type, by its code.
    Other(u16),
}

impl QueryType {
    /// The type with this code (`Other` for codes without a variant).
    pub fn from_code(code: u16) -> QueryType {
        match code {
            1 => QueryType::A,
            2 => QueryType::Ns,
            5 => QueryType::Cname,
            6 => QueryType::Soa,
            12 => QueryType::Ptr,
            16 => QueryType::Txt,
            28 => QueryType::Aaaa,
            33 => QueryType::Srv,
            255 => QueryType::Any,
            other => QueryType::Other(other),
        }
    }

    /// The type's code on the wire.
    pub fn code(self) -> u16 {
        match self {
            QueryType::A => 1,
            QueryType::Ns => 2,
            QueryType::Cname => 5,
            QueryType::Soa => 6,
            QueryType::Ptr => 12,
            QueryType::Txt => 16,
            QueryType::Aaaa => 28,
            QueryType::Srv => 33,
            QueryType::Any => 255,
            QueryType::Other(code) => code,
        }
    }

    fn matches(self, data: &RData) -> bool {
        self == QueryType::Any || self.code() == data.type_code()
    }
}

/// A record's data. Names in it are lowercase and absolute.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RData {
    A(Ipv4Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Ptr(String),
    Cname(String),
    Txt(String),
    Ns(String),
    Soa {
        mname: String,
        rname: String,
        serial: u32,
        refresh: i32,
        retry: i32,
        expire: i32,
        minimum: u32,
    },
}

impl RData {
    /// The record type's code on the wire (as [`QueryType::code`]).
    pub fn type_code(&self) -> u16 {
        let query_type = match self {
            RData::A(_) => QueryType::A,
            RData::Srv { .. } => QueryType::Srv,
            RData::Ptr(_) => QueryType::Ptr,
            RData::Cname(_) => QueryType::Cname,
            RData::Txt(_) => QueryType::Txt,
            RData::Ns(_) => QueryType::Ns,
            RData::Soa { .. } => QueryType::Soa,
        };
        query_type.code()
    }
}

/// Master-file form: `SRV 0 100 80 web.default.svc.cluster.local.`.
impl fmt::Display for RData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RData::A(ip) => write!(f, "A {ip}"),
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => write!(f, "SRV {priority} {weight} {port} {target}"),
            RData::Ptr(target) => write!(f, "PTR {target}"),
            RData::Cname(target) => write!(f, "CNAME {target}"),
            RData::Txt(text) => write!(f, "TXT \"{}\"", text.escape_default()),
            RData::Ns(target) => write!(f, "NS {target}"),
            RData::Soa {
                mname,
                rname,
                serial,
                refresh,
                retry,
                expire,
                minimum,
            } => write!(
                f,
                "SOA {mname} {rname} {serial} {refresh} {retry} {expire} {minimum}"
            ),
        }
    }
}

/// One resource record (class IN).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Record {
    /// Lowercase, absolute (trailing dot).
    pub name: String,
    pub ttl: u32,
    pub data: RData,
}

/// Master-file form: `web.default.svc.cluster.local. 5 IN A 10.96.0.10`.
impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} IN {}", self.name, self.ttl, self.data)
    }
}

/// What the zone says to a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not in this cluster's zone nor a reverse name it owns: the caller
    /// forwards it upstream.
    NotOurs,
    /// The name does not exist (NXDOMAIN; the caller adds [`Zone::soa`] to
    /// the authority section).
    NxDomain,
    /// The name exists: `answers` (empty = NODATA, the caller adds the
    /// SOA), plus `additional` records (the A records of SRV targets).
    Records {
        answers: Vec<Record>,
        additional: Vec<Record>,
    },
}

/// A cluster's DNS zone, indexed once by [`Zone::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Lowercase, without the trailing dot.
    domain: String,
    /// Every name of the zone (absolute) with its records; an empty set is
    /// a name with no data.
    names: BTreeMap<String, BTreeSet<Record>>,
    /// The PTR targets of each known address.
    pointers: BTreeMap<Ipv4Addr, BTreeSet<String>>,
    /// Where an unknown address is NXDOMAIN rather than not ours.
    reverse_ranges: Vec<Ipv4Net>,
    serial: u32,
}

impl Zone {
    /// The zone of `domain` (case and a trailing dot do not matter) holding
    /// these Services. Never panics: what cannot be published is left out
    /// (see the module documentation).
    pub fn new(domain: &str, services: Vec<ServiceRecord>) -> Zone {
        let mut index = Index::new(normalize_name(domain));
        index.add_fixed_names();
        for service in &services {
            index.add_service(service);
        }
        let serial = index.serial();
        let mut zone = Zone {
            domain: index.domain,
            names: index.names,
            pointers: index.pointers,
            reverse_ranges: Vec::new(),
            serial,
        };
        zone.add_apex_records();
        zone
    }

    /// The same zone, answering NXDOMAIN (instead of [`Answer::NotOurs`])
    /// for reverse names of unknown addresses in these ranges: the
    /// cluster's pod and service ranges.
    pub fn with_reverse_ranges(mut self, ranges: Vec<Ipv4Net>) -> Zone {
        self.reverse_ranges = ranges;
        self
    }

    /// The cluster domain: lowercase, without the trailing dot.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The answer to a query for `qname` (any case, trailing dot optional).
    pub fn answer(&self, qname: &str, qtype: QueryType) -> Answer {
        let qtype = QueryType::from_code(qtype.code());
        let name = normalize_name(qname);
        match relative_to(&name, &self.domain) {
            Some(relative) => self.answer_in_zone(&name, relative, qtype),
            None => self.answer_reverse(&name, qtype),
        }
    }

    /// The zone's SOA record, for the authority section of negative
    /// answers. Its serial is a digest of the zone's records: the same
    /// records give the same serial, whoever builds the zone.
    pub fn soa(&self) -> Record {
        Record {
            name: absolute(&self.domain, ""),
            ttl: DEFAULT_TTL,
            data: RData::Soa {
                mname: absolute(&self.domain, "ns.dns"),
                rname: absolute(&self.domain, "hostmaster"),
                serial: self.serial,
                refresh: SOA_REFRESH,
                retry: SOA_RETRY,
                expire: SOA_EXPIRE,
                minimum: DEFAULT_TTL,
            },
        }
    }

    fn add_apex_records(&mut self) {
        let soa = self.soa();
        let ns = Record {
            name: soa.name.clone(),
            ttl: DEFAULT_TTL,
            data: RData::Ns(absolute(&self.domain, "ns.dns")),
        };
        let apex = self.names.entry(soa.name.clone()).or_default();
        apex.insert(soa);
        apex.insert(ns);
    }

    fn answer_in_zone(&self, name: &str, relative: &str, qtype: QueryType) -> Answer {
        if !is_well_formed(name) {
            return Answer::NxDomain;
        }
        match self.names.get(&format!("{name}.")) {
            Some(records) => self.select(records, qtype),
            None => answer_pod(name, relative, qtype),
        }
    }

    fn select(&self, records: &BTreeSet<Record>, qtype: QueryType) -> Answer {
        let cname = records
            .iter()
            .find(|record| matches!(record.data, RData::Cname(_)));
        let answers: Vec<Record> = match cname {
            Some(cname) if !matches!(qtype, QueryType::Soa | QueryType::Ns) => vec![cname.clone()],
            _ => records
                .iter()
                .filter(|record| qtype.matches(&record.data))
                .cloned()
                .collect(),
        };
        let additional = self.additional(&answers);
        Answer::Records {
            answers,
            additional,
        }
    }

    /// The A records of the SRV targets among `answers`.
    fn additional(&self, answers: &[Record]) -> Vec<Record> {
        let mut additional = BTreeSet::new();
        for answer in answers {
            let RData::Srv { target, .. } = &answer.data else {
                continue;
            };
            let Some(records) = self.names.get(target) else {
                continue;
            };
            let addresses = records.iter().filter(|r| matches!(r.data, RData::A(_)));
            additional.extend(addresses.cloned());
        }
        additional.into_iter().collect()
    }

    fn answer_reverse(&self, name: &str, qtype: QueryType) -> Answer {
        let Some(ip) = parse_reverse_name(name) else {
            return Answer::NotOurs;
        };
        match self.pointers.get(&ip) {
            Some(targets) => pointer_records(name, targets, qtype),
            None if self.reverse_ranges.iter().any(|net| net.contains(&ip)) => Answer::NxDomain,
            None => Answer::NotOurs,
        }
    }
}

/// The zone's names while [`Zone::new`] builds them.
struct Index {
    domain: String,
    names: BTreeMap<String, BTreeSet<Record>>,
    pointers: BTreeMap<Ipv4Addr, BTreeSet<String>>,
}

impl Index {
    fn new(domain: String) -> Index {
        Index {
            domain,
            names: BTreeMap::new(),
            pointers: BTreeMap::new(),
        }
    }

    fn absolute(&self, relative: &str) -> String {
        absolute(&self.domain, relative)
    }

    /// Makes `relative` a name of the zone, with or without records.
    fn touch(&mut self, relative: &str) {
        let name = self.absolute(relative);
        self.names.entry(name).or_default();
    }

    fn add(&mut self, relative: &str, data: RData) {
        let name = self.absolute(relative);
        let record = Record {
            name: name.clone(),
            ttl: DEFAULT_TTL,
            data,
        };
        self.names.entry(name).or_default().insert(record);
    }

    fn add_pointer(&mut self, ip: Ipv4Addr, relative_target: &str) {
        let target = self.absolute(relative_target);
        self.pointers.entry(ip).or_default().insert(target);
    }

    /// The apex (its records come with the serial), `svc.Z`, `pod.Z` and
    /// `dns-version.Z`.
    fn add_fixed_names(&mut self) {
        self.touch("");
        self.touch("svc");
        self.touch("pod");
        self.add("dns-version", RData::Txt(SCHEMA_VERSION.to_string()));
    }

    fn add_service(&mut self, service: &ServiceRecord) {
        let (Some(namespace), Some(name)) = (label(&service.namespace), label(&service.name))
        else {
            return;
        };
        let base = format!("{name}.{namespace}.svc");
        if self.names.contains_key(&self.absolute(&base)) {
            return;
        }
        self.touch(&format!("{namespace}.svc"));
        self.touch(&base);
        match &service.kind {
            ServiceKind::ClusterIp(ip) => self.add_cluster_ip(&base, *ip, &service.ports),
            ServiceKind::Headless => self.add_headless(&base, service),
            ServiceKind::ExternalName(target) => self.add_external_name(&base, target),
        }
    }

    fn add_cluster_ip(&mut self, base: &str, ip: Ipv4Addr, ports: &[ServicePort]) {
        self.add(base, RData::A(ip));
        self.add_pointer(ip, base);
        let target = self.absolute(base);
        for (srv_name, port) in self.srv_names(base, ports) {
            self.add(&srv_name, srv(port, &target));
        }
    }

    fn add_headless(&mut self, base: &str, service: &ServiceRecord) {
        let srv_names = self.srv_names(base, &service.endpoint_ports);
        for endpoint in &service.endpoints {
            let host = format!("{}.{base}", endpoint_host(endpoint));
            let dashed = format!("{}.{base}", dashed_ip(endpoint.ip));
            self.add(base, RData::A(endpoint.ip));
            self.add(&host, RData::A(endpoint.ip));
            self.add(&dashed, RData::A(endpoint.ip));
            self.add_pointer(endpoint.ip, &host);
            let target = self.absolute(&host);
            for (srv_name, port) in &srv_names {
                self.add(srv_name, srv(*port, &target));
            }
        }
    }

    fn add_external_name(&mut self, base: &str, target: &str) {
        if let Some(target) = external_target(target) {
            self.add(base, RData::Cname(target));
        }
    }

    /// The SRV names (relative) of the named ports, with their port
    /// numbers; the names and their `_<proto>` parents exist from now on,
    /// with or without records.
    fn srv_names(&mut self, base: &str, ports: &[ServicePort]) -> Vec<(String, u16)> {
        let mut names = Vec::new();
        for port in ports {
            let Some(port_name) = label(&port.name) else {
                continue;
            };
            let parent = format!("{}.{base}", port.protocol.label());
            let name = format!("_{port_name}.{parent}");
            self.touch(&parent);
            self.touch(&name);
            names.push((name, port.port));
        }
        names
    }

    /// A digest of every name, record and pointer, in their (sorted)
    /// order.
    fn serial(&self) -> u32 {
        let mut hasher = Sha256::new();
        hasher.update(self.domain.as_bytes());
        for (name, records) in &self.names {
            hasher.update(format!("\n{name}").as_bytes());
            for record in records {
                hasher.update(format!("\n{record}").as_bytes());
            }
        }
        for (ip, targets) in &self.pointers {
            for target in targets {
                hasher.update(format!("\n{ip} {target}").as_bytes());
            }
        }
        let digest = hasher.finalize();
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
    }
}

fn srv(port: u16, target: &str) -> RData {
    RData::Srv {
        priority: SRV_PRIORITY,
        weight: SRV_WEIGHT,
        port,
        target: target.to_string(),
    }
}

/// An endpoint's host label: its hostname if that is a label, else its
/// dashed address.
fn endpoint_host(endpoint: &EndpointAddress) -> String {
    endpoint
        .hostname
        .as_deref()
        .and_then(label)
        .unwrap_or_else(|| dashed_ip(endpoint.ip))
}

/// `10.244.1.2` -> `10-244-1-2`.
fn dashed_ip(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a}-{b}-{c}-{d}")
}

/// A Kubernetes name as a DNS label: lowered, and only if it is non-empty,
/// at most 63 characters and made of letters, digits and `-`.
fn label(name: &str) -> Option<String> {
    let lowered = name.to_ascii_lowercase();
    let valid = !lowered.is_empty()
        && lowered.len() <= MAX_LABEL_LEN
        && lowered
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then_some(lowered)
}

/// An ExternalName target as an absolute lowercase name, if it is a DNS
/// name (labels of letters, digits, `-` and `_`).
fn external_target(target: &str) -> Option<String> {
    let name = normalize_name(target);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= MAX_LABEL_LEN
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let valid = name.len() <= MAX_NAME_LEN && name.split('.').all(valid_label);
    valid.then(|| format!("{name}."))
}

/// Lowercase, without one trailing dot.
fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// `relative` under `domain`, absolute (both without trailing dots).
fn absolute(domain: &str, relative: &str) -> String {
    match (relative.is_empty(), domain.is_empty()) {
        (true, _) => format!("{domain}."),
        (false, true) => format!("{relative}."),
        (false, false) => format!("{relative}.{domain}."),
    }
}

/// The part of `name` before `domain` ("" for the apex), if `name` is
/// `domain` or under it.
fn relative_to<'a>(name: &'a str, domain: &str) -> Option<&'a str> {
    if name == domain {
        return Some("");
    }
    if domain.is_empty() {
        return Some(name);
    }
    name.strip_suffix(domain)?.strip_suffix('.')
}

/// At most 253 characters and no empty label.
fn is_well_formed(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && (name.is_empty() || !name.split('.').any(str::is_empty))
}

/// `<a>-<b>-<c>-<d>.<ns>.pod` and `<ns>.pod`; anything else does not
/// exist.
fn answer_pod(name: &str, relative: &str, qtype: QueryType) -> Answer {
    let labels: Vec<&str> = relative.split('.').collect();
    match labels.as_slice() {
        [namespace, "pod"] if label(namespace).is_some() => no_data(),
        [host, namespace, "pod"] if label(namespace).is_some() => match parse_dashed(host) {
            Some(ip) => records_of_type(name, RData::A(ip), qtype),
            None => Answer::NxDomain,
        },
        _ => Answer::NxDomain,
    }
}

fn no_data() -> Answer {
    Answer::Records {
        answers: Vec::new(),
        additional: Vec::new(),
    }
}

/// `data` at `name` if the query asks for its type, else NODATA.
fn records_of_type(name: &str, data: RData, qtype: QueryType) -> Answer {
    if !qtype.matches(&data) {
        return no_data();
    }
    let record = Record {
        name: format!("{name}."),
        ttl: DEFAULT_TTL,
        data,
    };
    Answer::Records {
        answers: vec![record],
        additional: Vec::new(),
    }
}

fn pointer_records(name: &str, targets: &BTreeSet<String>, qtype: QueryType) -> Answer {
    if !matches!(qtype, QueryType::Ptr | QueryType::Any) {
        return no_data();
    }
    let answers = targets
        .iter()
        .map(|target| Record {
            name: format!("{name}."),
            ttl: DEFAULT_TTL,
            data: RData::Ptr(target.clone()),
        })
        .collect();
    Answer::Records {
        answers,
        additional: Vec::new(),
    }
}

/// `10-244-1-2` -> `10.244.1.2`.
fn parse_dashed(host: &str) -> Option<Ipv4Addr> {
    let octets = parse_octets(host.split('-'))?;
    Some(Ipv4Addr::from(octets))
}

/// `2.1.244.10.in-addr.arpa` -> `10.244.1.2`.
fn parse_reverse_name(name: &str) -> Option<Ipv4Addr> {
    let reversed = name.strip_suffix(REVERSE_SUFFIX)?;
    let [d, c, b, a] = parse_octets(reversed.split('.'))?;
    Some(Ipv4Addr::new(a, b, c, d))
}

/// Exactly four decimal octets, without signs or leading zeros.
fn parse_octets<'a>(mut parts: impl Iterator<Item = &'a str>) -> Option<[u8; 4]> {
    let mut octets = [0u8; 4];
    for octet in &mut octets {
        *octet = parse_octet(parts.next()?)?;
    }
    parts.next().is_none().then_some(octets)
}

fn parse_octet(text: &str) -> Option<u8> {
    let digits = !text.is_empty() && text.len() <= 3 && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if !digits || leading_zero {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TCP: Protocol = Protocol::Tcp;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn port(name: &str, protocol: Protocol, number: u16) -> ServicePort {
        ServicePort {
            name: name.into(),
            protocol,
            port: number,
        }
    }

    fn endpoint(address: &str, hostname: Option<&str>) -> EndpointAddress {
        EndpointAddress {
            ip: ip(address),
            hostname: hostname.map(String::from),
        }
    }

    fn service(namespace: &str, name: &str, kind: ServiceKind) -> ServiceRecord {
        ServiceRecord {
            namespace: namespace.into(),
            name: name.into(),
            kind,
            ports: Vec::new(),
            endpoints: Vec::new(),
            endpoint_ports: Vec::new(),
        }
    }

    fn cluster_ip(namespace: &str, name: &str, address: &str) -> ServiceRecord {
        service(namespace, name, ServiceKind::ClusterIp(ip(address)))
    }

    fn services() -> Vec<ServiceRecord> {
        let mut web = cluster_ip("default", "web", "10.96.0.10");
        web.ports = vec![port("http", TCP, 80), port("", Protocol::Udp, 9000)];
        let mut db = service("data", "db", ServiceKind::Headless);
        db.endpoints = vec![
            endpoint("10.244.2.3", None),
            endpoint("10.244.1.2", Some("db-0")),
            endpoint("10.244.1.2", Some("db-0")),
        ];
        db.ports = vec![port("pg", TCP, 15432)];
        db.endpoint_ports = vec![port("pg", TCP, 5432), port("metrics", TCP, 9187)];
        vec![
            web,
            db,
            service("data", "empty", ServiceKind::Headless),
            service(
                "default",
                "ext",
                ServiceKind::ExternalName("Example.COM.".into()),
            ),
            cluster_ip("shared", "b", "10.96.0.20"),
            cluster_ip("shared", "a", "10.96.0.20"),
        ]
    }

    fn zone() -> Zone {
        let ranges = vec![
            "10.96.0.0/12".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        ];
        Zone::new("Cluster.Local.", services()).with_reverse_ranges(ranges)
    }

    fn record(name: &str, data: RData) -> Record {
        Record {
            name: name.into(),
            ttl: DEFAULT_TTL,
            data,
        }
    }

    fn a(name: &str, address: &str) -> Record {
        record(name, RData::A(ip(address)))
    }

    fn srv_record(name: &str, number: u16, target: &str) -> Record {
        record(name, srv(number, target))
    }

    fn ptr(name: &str, target: &str) -> Record {
        record(name, RData::Ptr(target.into()))
    }

    fn found(answers: Vec<Record>) -> Answer {
        Answer::Records {
            answers,
            additional: Vec::new(),
        }
    }

    fn with_additional(answers: Vec<Record>, additional: Vec<Record>) -> Answer {
        Answer::Records {
            answers,
            additional,
        }
    }

    fn assert_no_data(zone: &Zone, name: &str, qtype: QueryType) {
        assert_eq!(zone.answer(name, qtype), no_data(), "{name} {qtype:?}");
    }

    const WEB: &str = "web.default.svc.cluster.local.";
    const DB: &str = "db.data.svc.cluster.local.";

    #[test]
    fn a_service_with_a_cluster_ip_answers_it() {
        assert_eq!(
            zone().answer(WEB, QueryType::A),
            found(vec![a(WEB, "10.96.0.10")])
        );
    }

    #[test]
    fn a_headless_service_answers_each_ready_address_once_sorted() {
        assert_eq!(
            zone().answer(DB, QueryType::A),
            found(vec![a(DB, "10.244.1.2"), a(DB, "10.244.2.3")])
        );
    }

    #[test]
    fn a_headless_service_without_endpoints_still_exists() {
        assert_no_data(&zone(), "empty.data.svc.cluster.local", QueryType::A);
    }

    #[test]
    fn an_external_name_is_a_cname_for_every_type_but_soa_and_ns() {
        let zone = zone();
        let name = "ext.default.svc.cluster.local.";
        let cname = found(vec![record(name, RData::Cname("example.com.".into()))]);
        for qtype in [
            QueryType::A,
            QueryType::Aaaa,
            QueryType::Cname,
            QueryType::Srv,
            QueryType::Txt,
            QueryType::Any,
            QueryType::Other(99),
        ] {
            assert_eq!(zone.answer(name, qtype), cname, "{qtype:?}");
        }
        assert_no_data(&zone, name, QueryType::Soa);
        assert_no_data(&zone, name, QueryType::Ns);
    }

    #[test]
    fn an_external_name_that_is_no_dns_name_has_no_data() {
        let zone = Zone::new(
            "cluster.local",
            vec![service(
                "default",
                "bad",
                ServiceKind::ExternalName("a..b".into()),
            )],
        );
        assert_no_data(&zone, "bad.default.svc.cluster.local", QueryType::A);
    }

    #[test]
    fn aaaa_and_other_types_on_existing_names_are_no_data() {
        let zone = zone();
        for name in [
            WEB,
            DB,
            "db-0.db.data.svc.cluster.local",
            "_http._tcp.web.default.svc.cluster.local",
            "10-1-2-3.default.pod.cluster.local",
            "dns-version.cluster.local",
            "cluster.local",
        ] {
            assert_no_data(&zone, name, QueryType::Aaaa);
            assert_no_data(&zone, name, QueryType::Other(99));
            assert_no_data(&zone, name, QueryType::Cname);
        }
        assert_no_data(&zone, WEB, QueryType::Txt);
    }

    #[test]
    fn a_type_given_by_code_is_that_type() {
        assert_eq!(
            zone().answer(WEB, QueryType::Other(1)),
            zone().answer(WEB, QueryType::A)
        );
        for code in 0..=u16::MAX {
            assert_eq!(QueryType::from_code(code).code(), code);
        }
    }

    #[test]
    fn any_answers_every_record_of_the_name() {
        let zone = zone();
        assert_eq!(
            zone.answer(WEB, QueryType::Any),
            zone.answer(WEB, QueryType::A)
        );
        let Answer::Records { answers, .. } = zone.answer("cluster.local", QueryType::Any) else {
            panic!("the apex exists");
        };
        assert_eq!(answers.len(), 2);
        assert!(answers.contains(&zone.soa()));
    }

    #[test]
    fn srv_of_a_cluster_ip_service_points_at_its_name() {
        let name = "_http._tcp.web.default.svc.cluster.local.";
        assert_eq!(
            zone().answer(name, QueryType::Srv),
            with_additional(vec![srv_record(name, 80, WEB)], vec![a(WEB, "10.96.0.10")])
        );
    }

    #[test]
    fn srv_of_a_headless_service_points_at_each_endpoint_with_its_port() {
        let name = "_pg._tcp.db.data.svc.cluster.local.";
        let host = "db-0.db.data.svc.cluster.local.";
        let dashed = "10-244-2-3.db.data.svc.cluster.local.";
        assert_eq!(
            zone().answer(name, QueryType::Srv),
            with_additional(
                vec![srv_record(name, 5432, dashed), srv_record(name, 5432, host)],
                vec![a(dashed, "10.244.2.3"), a(host, "10.244.1.2")]
            )
        );
        let metrics = "_metrics._tcp.db.data.svc.cluster.local";
        let Answer::Records { answers, .. } = zone().answer(metrics, QueryType::Srv) else {
            panic!("{metrics} exists");
        };
        assert_eq!(answers.len(), 2);
    }

    #[test]
    fn an_unnamed_port_has_no_srv() {
        let zone = zone();
        assert_eq!(
            zone.answer("_udp.web.default.svc.cluster.local", QueryType::Any),
            Answer::NxDomain
        );
        assert_eq!(
            zone.answer("_9000._udp.web.default.svc.cluster.local", QueryType::Srv),
            Answer::NxDomain
        );
    }

    #[test]
    fn srv_labels_match_without_case_and_only_with_their_protocol() {
        let zone = zone();
        let Answer::Records { answers, .. } =
            zone.answer("_HTTP._Tcp.Web.Default.SVC.cluster.local", QueryType::Srv)
        else {
            panic!("the SRV name exists");
        };
        assert_eq!(answers.len(), 1);
        assert_eq!(
            zone.answer("_http._udp.web.default.svc.cluster.local", QueryType::Srv),
            Answer::NxDomain
        );
        assert_eq!(
            zone.answer("_nope._tcp.web.default.svc.cluster.local", QueryType::Srv),
            Answer::NxDomain
        );
    }

    #[test]
    fn other_types_on_srv_names_are_no_data() {
        let zone = zone();
        let name = "_http._tcp.web.default.svc.cluster.local";
        assert_no_data(&zone, name, QueryType::A);
        assert_no_data(&zone, name, QueryType::Ptr);
    }

    #[test]
    fn a_headless_endpoint_answers_at_its_hostname_and_its_dashed_address() {
        let zone = zone();
        for name in [
            "db-0.db.data.svc.cluster.local.",
            "10-244-1-2.db.data.svc.cluster.local.",
        ] {
            assert_eq!(
                zone.answer(name, QueryType::A),
                found(vec![a(name, "10.244.1.2")])
            );
        }
        let dashed = "10-244-2-3.db.data.svc.cluster.local.";
        assert_eq!(
            zone.answer(dashed, QueryType::A),
            found(vec![a(dashed, "10.244.2.3")])
        );
        assert_eq!(
            zone.answer("db-1.db.data.svc.cluster.local", QueryType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn services_with_a_cluster_ip_have_no_endpoint_names() {
        let mut web = cluster_ip("default", "web", "10.96.0.10");
        web.endpoints = vec![endpoint("10.244.1.9", Some("w"))];
        let zone = Zone::new("cluster.local", vec![web]);
        assert_eq!(
            zone.answer("w.web.default.svc.cluster.local", QueryType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn a_pod_name_answers_its_dashed_address_in_any_namespace() {
        let zone = zone();
        let name = "10-244-3-4.anywhere.pod.cluster.local.";
        assert_eq!(
            zone.answer("10-244-3-4.Anywhere.pod.cluster.local", QueryType::A),
            found(vec![a(name, "10.244.3.4")])
        );
        assert_eq!(
            zone.answer(name, QueryType::Any),
            found(vec![a(name, "10.244.3.4")])
        );
        for bad in [
            "10-244-3.x.pod.cluster.local",
            "10-244-3-256.x.pod.cluster.local",
            "10-244-3-04.x.pod.cluster.local",
            "10-244-3-+4.x.pod.cluster.local",
            "10-244-3-4-5.x.pod.cluster.local",
            "web.x.pod.cluster.local",
            "10-244-3-4.x_y.pod.cluster.local",
            "a.10-244-3-4.x.pod.cluster.local",
        ] {
            assert_eq!(zone.answer(bad, QueryType::A), Answer::NxDomain, "{bad}");
        }
    }

    #[test]
    fn ptr_of_a_cluster_ip_is_the_service_name() {
        let name = "10.0.96.10.in-addr.arpa.";
        assert_eq!(
            zone().answer("10.0.96.10.IN-ADDR.ARPA", QueryType::Ptr),
            found(vec![ptr(name, WEB)])
        );
        assert_no_data(&zone(), name, QueryType::A);
    }

    #[test]
    fn ptr_of_a_headless_address_is_its_host_name() {
        let zone = zone();
        let name = "2.1.244.10.in-addr.arpa.";
        assert_eq!(
            zone.answer(name, QueryType::Ptr),
            found(vec![ptr(name, "db-0.db.data.svc.cluster.local.")])
        );
        let name = "3.2.244.10.in-addr.arpa.";
        assert_eq!(
            zone.answer(name, QueryType::Ptr),
            found(vec![ptr(name, "10-244-2-3.db.data.svc.cluster.local.")])
        );
    }

    #[test]
    fn several_services_on_one_address_get_one_ptr_each_sorted() {
        let name = "20.0.96.10.in-addr.arpa.";
        assert_eq!(
            zone().answer(name, QueryType::Ptr),
            found(vec![
                ptr(name, "a.shared.svc.cluster.local."),
                ptr(name, "b.shared.svc.cluster.local."),
            ])
        );
    }

    #[test]
    fn an_unknown_address_is_nxdomain_in_the_clusters_ranges_and_not_ours_elsewhere() {
        let zone = zone();
        assert_eq!(
            zone.answer("99.0.96.10.in-addr.arpa", QueryType::Ptr),
            Answer::NxDomain
        );
        assert_eq!(
            zone.answer("9.9.244.10.in-addr.arpa", QueryType::Ptr),
            Answer::NxDomain
        );
        assert_eq!(
            zone.answer("8.8.8.8.in-addr.arpa", QueryType::Ptr),
            Answer::NotOurs
        );
        let without_ranges = Zone::new("cluster.local", services());
        assert_eq!(
            without_ranges.answer("99.0.96.10.in-addr.arpa", QueryType::Ptr),
            Answer::NotOurs
        );
    }

    #[test]
    fn malformed_reverse_names_are_not_ours() {
        let zone = zone();
        for name in [
            "in-addr.arpa",
            "10.in-addr.arpa",
            "0.96.10.in-addr.arpa",
            "1.10.0.96.10.in-addr.arpa",
            "010.0.96.10.in-addr.arpa",
            "x.0.96.10.in-addr.arpa",
            "256.0.96.10.in-addr.arpa",
            ".0.96.10.in-addr.arpa",
            "10.0.96.10.in-addr.arpa..",
        ] {
            assert_eq!(zone.answer(name, QueryType::Ptr), Answer::NotOurs, "{name}");
        }
    }

    #[test]
    fn dns_version_is_the_schema_version() {
        let name = "dns-version.cluster.local.";
        assert_eq!(
            zone().answer("dns-version.cluster.local", QueryType::Txt),
            found(vec![record(name, RData::Txt("1.1.0".into()))])
        );
    }

    #[test]
    fn empty_non_terminals_exist_without_data() {
        let zone = zone();
        for name in [
            "cluster.local",
            "svc.cluster.local",
            "pod.cluster.local",
            "anything.pod.cluster.local",
            "default.svc.cluster.local",
            "data.svc.cluster.local",
            "_tcp.web.default.svc.cluster.local",
            "_tcp.db.data.svc.cluster.local",
        ] {
            assert_no_data(&zone, name, QueryType::A);
        }
        assert_eq!(
            zone.answer("nobody.svc.cluster.local", QueryType::A),
            Answer::NxDomain
        );
        assert_eq!(
            zone.answer("_sctp.web.default.svc.cluster.local", QueryType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn the_apex_has_the_soa_and_ns() {
        let zone = zone();
        let soa = zone.soa();
        assert_eq!(soa.name, "cluster.local.");
        let RData::Soa {
            mname,
            rname,
            refresh,
            retry,
            expire,
            minimum,
            ..
        } = &soa.data
        else {
            panic!("{soa:?}");
        };
        assert_eq!(mname, "ns.dns.cluster.local.");
        assert_eq!(rname, "hostmaster.cluster.local.");
        assert_eq!((*refresh, *retry, *expire), (7200, 1800, 86_400));
        assert_eq!(*minimum, DEFAULT_TTL);
        assert_eq!(
            zone.answer("Cluster.Local.", QueryType::Soa),
            found(vec![soa.clone()])
        );
        let ns = record("cluster.local.", RData::Ns("ns.dns.cluster.local.".into()));
        assert_eq!(zone.answer("cluster.local", QueryType::Ns), found(vec![ns]));
    }

    #[test]
    fn the_serial_follows_the_records_not_their_order() {
        let serial = |zone: &Zone| match zone.soa().data {
            RData::Soa { serial, .. } => serial,
            _ => unreachable!(),
        };
        let mut reversed = services();
        reversed.reverse();
        assert_eq!(
            serial(&zone()),
            serial(&Zone::new("cluster.local", reversed))
        );
        let mut changed = services();
        changed[0].kind = ServiceKind::ClusterIp(ip("10.96.0.11"));
        assert_ne!(
            serial(&zone()),
            serial(&Zone::new("cluster.local", changed))
        );
    }

    #[test]
    fn unknown_names_in_the_zone_do_not_exist() {
        let zone = zone();
        for name in [
            "nope.cluster.local",
            "web.nobody.svc.cluster.local",
            "x.web.default.svc.cluster.local",
            "web.default.svc.cluster.local.extra.cluster.local",
            "ns.dns.cluster.local",
            "*.default.svc.cluster.local",
            "web..svc.cluster.local",
            ".cluster.local",
        ] {
            assert_eq!(zone.answer(name, QueryType::A), Answer::NxDomain, "{name}");
        }
        let long = format!("{}.cluster.local", ["x"; 125].join("."));
        assert!(long.len() > 253);
        assert_eq!(zone.answer(&long, QueryType::A), Answer::NxDomain);
    }

    #[test]
    fn names_outside_the_zone_are_not_ours() {
        let zone = zone();
        for name in [
            "example.com",
            "xcluster.local",
            "local",
            "cluster.local.example.com",
            "",
            ".",
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
        ] {
            assert_eq!(zone.answer(name, QueryType::A), Answer::NotOurs, "{name}");
        }
    }

    #[test]
    fn names_match_without_case_and_with_or_without_the_trailing_dot() {
        let zone = zone();
        let expected = found(vec![a(WEB, "10.96.0.10")]);
        for name in [
            "web.default.svc.cluster.local",
            "WEB.Default.Svc.CLUSTER.local.",
        ] {
            assert_eq!(zone.answer(name, QueryType::A), expected, "{name}");
        }
    }

    #[test]
    fn names_that_are_no_labels_publish_nothing() {
        let zone = Zone::new(
            "cluster.local",
            vec![
                cluster_ip("default", "a.b", "10.96.0.1"),
                cluster_ip("x.default", "c", "10.96.0.2"),
                cluster_ip("", "d", "10.96.0.3"),
                cluster_ip("default", "_tcp", "10.96.0.4"),
                cluster_ip("Default", "Upper", "10.96.0.5"),
            ],
        );
        for name in [
            "a.b.default.svc.cluster.local",
            "c.x.default.svc.cluster.local",
            "d..svc.cluster.local",
            "_tcp.default.svc.cluster.local",
        ] {
            assert_eq!(zone.answer(name, QueryType::A), Answer::NxDomain, "{name}");
        }
        let upper = "upper.default.svc.cluster.local.";
        assert_eq!(
            zone.answer(upper, QueryType::A),
            found(vec![a(upper, "10.96.0.5")])
        );
        assert_eq!(
            zone.answer("1.0.96.10.in-addr.arpa", QueryType::Ptr),
            Answer::NotOurs
        );
    }

    #[test]
    fn the_first_of_two_services_with_one_name_wins() {
        let zone = Zone::new(
            "cluster.local",
            vec![
                cluster_ip("default", "web", "10.96.0.1"),
                cluster_ip("Default", "WEB", "10.96.0.2"),
            ],
        );
        assert_eq!(
            zone.answer(WEB, QueryType::A),
            found(vec![a(WEB, "10.96.0.1")])
        );
    }

    #[test]
    fn a_hostname_that_is_no_label_leaves_the_dashed_address() {
        let mut db = service("data", "db", ServiceKind::Headless);
        db.endpoints = vec![endpoint("10.244.1.2", Some("x.y"))];
        let zone = Zone::new("cluster.local", vec![db]);
        let name = "2.1.244.10.in-addr.arpa.";
        assert_eq!(
            zone.answer(name, QueryType::Ptr),
            found(vec![ptr(name, "10-244-1-2.db.data.svc.cluster.local.")])
        );
        assert_eq!(
            zone.answer("x.y.db.data.svc.cluster.local", QueryType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn records_read_as_in_a_master_file() {
        let srv = srv_record("_http._tcp.web.default.svc.cluster.local.", 80, WEB);
        assert_eq!(
            srv.to_string(),
            "_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local."
        );
        let txt = record("dns-version.cluster.local.", RData::Txt("a\"b".into()));
        assert_eq!(
            txt.to_string(),
            "dns-version.cluster.local. 5 IN TXT \"a\\\"b\""
        );
    }

    fn query_type() -> impl Strategy<Value = QueryType> {
        any::<u16>().prop_map(QueryType::from_code)
    }

    fn query_name() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "([a-zA-Z0-9_*-]{0,12}\\.){0,6}(cluster\\.local|svc\\.cluster\\.local)\\.?",
            "(_?(web|db|http|pg|tcp|db-0|10-244-1-2|default|data)\\.){0,5}(svc|pod)\\.cluster\\.local\\.?",
            "([0-9]{1,3}\\.){0,5}in-addr\\.arpa\\.?",
        ]
    }

    fn any_service() -> impl Strategy<Value = ServiceRecord> {
        let text = || prop_oneof![any::<String>(), "[a-zA-Z0-9.-]{0,8}"];
        let address = || any::<u32>().prop_map(Ipv4Addr::from);
        let protocol = prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Sctp)
        ];
        let ports = prop::collection::vec(
            (text(), protocol, any::<u16>()).prop_map(|(name, protocol, port)| ServicePort {
                name,
                protocol,
                port,
            }),
            0..3,
        );
        let kind = prop_oneof![
            address().prop_map(ServiceKind::ClusterIp),
            Just(ServiceKind::Headless),
            text().prop_map(ServiceKind::ExternalName),
        ];
        let endpoints = prop::collection::vec(
            (address(), prop::option::of(text()))
                .prop_map(|(ip, hostname)| EndpointAddress { ip, hostname }),
            0..4,
        );
        (text(), text(), kind, ports.clone(), endpoints, ports).prop_map(
            |(namespace, name, kind, ports, endpoints, endpoint_ports)| ServiceRecord {
                namespace,
                name,
                kind,
                ports,
                endpoints,
                endpoint_ports,
            },
        )
    }

    fn assert_names_canonical(answer: &Answer) -> Result<(), TestCaseError> {
        if let Answer::Records {
            answers,
            additional,
        } = answer
        {
            for record in answers.iter().chain(additional) {
                prop_assert_eq!(&record.name.to_lowercase(), &record.name);
                prop_assert!(record.name.ends_with('.'), "{}", record.name);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn answers_never_panic_and_name_records_canonically(
            qname in query_name(),
            qtype in query_type(),
        ) {
            assert_names_canonical(&zone().answer(&qname, qtype))?;
        }

        #[test]
        fn any_services_build_a_zone_that_answers(
            domain in prop_oneof!["[a-zA-Z0-9.-]{0,20}", Just("cluster.local".to_string())],
            services in prop::collection::vec(any_service(), 0..6),
            qname in query_name(),
            qtype in query_type(),
        ) {
            let zone = Zone::new(&domain, services.clone());
            assert_names_canonical(&zone.answer(&qname, qtype))?;
            for service in &services {
                let name = format!("{}.{}.svc.{}", service.name, service.namespace, domain);
                assert_names_canonical(&zone.answer(&name, qtype))?;
            }
        }

        #[test]
        fn every_cluster_ip_answers_its_address_and_its_name(
            by_address in prop::collection::btree_map(
                any::<u32>(),
                ("[a-z][a-z0-9-]{0,9}", "[a-z][a-z0-9-]{0,9}"),
                1..20,
            ),
        ) {
            let mut seen = BTreeSet::new();
            let services: Vec<ServiceRecord> = by_address
                .into_iter()
                .filter(|(_, key)| seen.insert(key.clone()))
                .map(|(address, (namespace, name))| ServiceRecord {
                    kind: ServiceKind::ClusterIp(Ipv4Addr::from(address)),
                    ..service(&namespace, &name, ServiceKind::Headless)
                })
                .collect();
            let zone = Zone::new("cluster.local", services.clone());
            for service in &services {
                let ServiceKind::ClusterIp(address) = service.kind else { unreachable!() };
                let name = format!("{}.{}.svc.cluster.local.", service.name, service.namespace);
                prop_assert_eq!(
                    zone.answer(&name, QueryType::A),
                    found(vec![a(&name, &address.to_string())])
                );
                let [x, y, z, w] = address.octets();
                let reverse = format!("{w}.{z}.{y}.{x}.in-addr.arpa.");
                prop_assert_eq!(
                    zone.answer(&reverse, QueryType::Ptr),
                    found(vec![ptr(&reverse, &name)])
                );
            }
        }
    }
}
