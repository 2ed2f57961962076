//! The `aws` provider: machines are EC2 instances, launched into the
//! cluster's subnet with the cluster's security group, found again by their
//! tags, and terminated without a trace.
//!
//! - **Where.** A cluster names its region, subnet and image
//!   (`ProviderSpec::Aws`), and may name a role the service assumes for it
//!   (STS `AssumeRole` with the tenant's id as the external id). The engine
//!   hands the provider that scope ([`Provider::scoped`]); one EC2 client is
//!   kept per region, role and tenant.
//! - **Endpoint and credentials** come the standard SDK way: the credential
//!   chain (environment, profile, web identity, instance role) and
//!   `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_EC2` (tests point them at moto).
//!   Nothing here is read before the provider's first call.
//! - **Security group.** One per cluster (`kubeforge-<cluster id>`, tagged),
//!   in the subnet's VPC: all traffic between the cluster's machines, SSH
//!   from the service's networks, the API server port (6443) from those and
//!   the configured API networks. Made on the cluster's first launch,
//!   deleted by [`Provider::release_cluster`] once its machines are gone.
//! - **Idempotent launch.** Before `RunInstances` the instance tagged with
//!   the machine's ledger id is looked up; the launch carries a
//!   `ClientToken` derived from the ledger id (and the instance type), so
//!   EC2 itself returns the first instance for a repeated request. moto
//!   keeps the token but does not deduplicate by it; the lookup covers that,
//!   and a twin found later is terminated.
//! - **Fallback.** A pool's alternative instance types are tried in order
//!   when a type has no capacity (`InsufficientInstanceCapacity`); when none
//!   has, or an account limit is hit, the machine waits
//!   (`ProviderError::NoCapacity`).
//! - **Host keys.** cloud-init prints the instance's SSH host keys on its
//!   console (`kubeforge_cluster::userdata`); the provider reads them with
//!   `GetConsoleOutput` (authenticated by AWS, not learnt over the network)
//!   and reports the ed25519 key, which the engine pins.
//! - **Instance metadata** is IMDSv2-only with a hop limit of 1, so pods
//!   cannot read the user-data or the instance's role.
//! - **Delete** terminates every instance tagged with the machine (twins
//!   included) and waits until they are terminated; the cluster's sweep
//!   finds instances by the cluster tag, and `release_cluster` deletes the
//!   security group and any volume left tagged with the cluster.
//!
//! Every call goes through [`call::call`]: throttling and server errors are
//! retried with backoff and jitter, and counted in the service's metrics.

pub mod actions;
pub mod call;

use super::{
    ClusterScope, MachineRequest, Provider, ProviderError, ProviderMachine, ProviderMachineState,
    TAG_CLUSTER, TAG_MACHINE, TAG_TENANT,
};
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::types::{
    Filter, HttpTokensState, Instance, InstanceMetadataOptionsRequest, InstanceStateName,
    InstanceType, IpPermission, IpRange, ResourceType, Tag, TagSpecification, UserIdGroupPair,
};
use aws_sdk_ec2::Client;
use base64::Engine as _;
use call::{AwsCounters, AwsError, AwsErrorKind, RetryPolicy};
use ipnet::IpNet;
use kubeforge_cluster::spec::ProviderSpec;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub use call::AwsCounters as Counters;

/// The API server's port on every control-plane member and load balancer.
pub const API_PORT: i32 = 6443;

/// How long after a launch an instance the API does not list yet is still
/// taken to be pending (EC2's reads are eventually consistent).
const LAUNCH_GRACE: Duration = Duration::from_secs(300);

/// The states of instances that still exist (or are on their way out).
const LIVE_STATES: [&str; 5] = ["pending", "running", "stopping", "stopped", "shutting-down"];

/// The provider's settings.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// Networks the service connects from (SSH and the API server port).
    /// Empty: the cluster VPC's CIDR (the service runs in, or is peered
    /// with, the VPC).
    pub service_cidrs: Vec<IpNet>,
    /// Further networks allowed to reach clusters' API servers (tenants'
    /// kubectl); empty: only the service's.
    pub api_cidrs: Vec<IpNet>,
    pub retry: RetryPolicy,
    /// How long `delete` waits for its instances to be terminated before
    /// it reports a retryable error (the engine calls again).
    pub delete_wait: Duration,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            service_cidrs: Vec::new(),
            api_cidrs: Vec::new(),
            retry: RetryPolicy::default(),
            delete_wait: Duration::from_secs(180),
        }
    }
}

/// Where a cluster's machines are: what the EC2 calls about it need.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    cluster_id: Uuid,
    tenant: String,
    region: String,
    subnet_id: String,
    ami: String,
    role_arn: Option<String>,
    key_name: Option<String>,
}

impl Place {
    fn of(cluster_id: Uuid, tenant: &str, spec: &ProviderSpec) -> Result<Self, ProviderError> {
        match spec {
            ProviderSpec::Aws {
                region,
                subnet_id,
                ami,
                role_arn,
                key_name,
            } => Ok(Self {
                cluster_id,
                tenant: tenant.to_string(),
                region: region.clone(),
                subnet_id: subnet_id.clone(),
                ami: ami.clone(),
                role_arn: role_arn.clone(),
                key_name: key_name.clone(),
            }),
            other => Err(ProviderError::Permanent(format!(
                "the aws provider cannot serve a {} cluster",
                other.kind()
            ))),
        }
    }

    /// One client serves every cluster with the same region, role and
    /// tenant (the external id).
    fn client_key(&self) -> ClientKey {
        (
            self.region.clone(),
            self.role_arn.clone(),
            self.tenant.clone(),
        )
    }
}

/// Region, role and tenant.
type ClientKey = (String, Option<String>, String);

struct Shared {
    config: AwsConfig,
    counters: AwsCounters,
    base: tokio::sync::OnceCell<aws_config::SdkConfig>,
    clients: Mutex<HashMap<ClientKey, Client>>,
    /// Where each machine asked about lives, for calls that come without
    /// a cluster scope.
    places: Mutex<HashMap<Uuid, Place>>,
    /// Instances launched by this process: ledger id -> instance id and
    /// when, so a launch the API does not list yet is not taken as gone.
    launched: Mutex<HashMap<Uuid, (String, Instant)>>,
    /// Host keys read from consoles, by instance id.
    host_keys: Mutex<HashMap<String, String>>,
    /// Security groups made or found, by cluster.
    groups: Mutex<HashMap<Uuid, String>>,
}

/// The provider (see the module doc). Cheap to clone; a scoped copy
/// shares everything with the one it came from.
#[derive(Clone)]
pub struct AwsProvider {
    shared: Arc<Shared>,
    place: Option<Place>,
}

impl AwsProvider {
    pub fn new(config: AwsConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                counters: AwsCounters::new(),
                base: tokio::sync::OnceCell::new(),
                clients: Mutex::new(HashMap::new()),
                places: Mutex::new(HashMap::new()),
                launched: Mutex::new(HashMap::new()),
                host_keys: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
            }),
            place: None,
        }
    }

    /// The counters its calls report into (registered with the service's
    /// metrics by `server`).
    pub fn counters(&self) -> &AwsCounters {
        &self.shared.counters
    }

    /// A copy that serves one cluster: `get`, `delete`, `list_by_cluster`
    /// and `release_cluster` then know its region and role.
    pub fn for_cluster(
        &self,
        cluster_id: Uuid,
        tenant: &str,
        spec: &ProviderSpec,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            shared: self.shared.clone(),
            place: Some(Place::of(cluster_id, tenant, spec)?),
        })
    }

    /// The service's base SDK settings, loaded once, at first use: the
    /// standard credential chain and endpoint variables. Its region is
    /// a placeholder (each client names its own), given so that loading
    /// never asks the instance metadata service for one.
    async fn base(&self) -> &aws_config::SdkConfig {
        self.shared
            .base
            .get_or_init(|| async {
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::from_static("us-east-1"))
                    .http_client(http)
                    .load()
                    .await
            })
            .await
    }

    async fn client(&self, place: &Place) -> Client {
        let key = place.client_key();
        if let Some(c) = self.shared.clients.lock().unwrap().get(&key) {
            return c.clone();
        }
        let base = self.base().await;
        let region = Region::new(place.region.clone());
        // STS keeps the SDK's standard retries (credentials are fetched
        // inside the SDK); EC2 calls are retried and counted by `call`.
        let mut conf = aws_sdk_ec2::config::Builder::from(base)
            .region(region.clone())
            .retry_config(RetryConfig::disabled());
        if let Some(arn) = &place.role_arn {
            let session: String = format!("kubeforge-{}", place.tenant)
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(*c))
                .take(64)
                .collect();
            let role = aws_config::sts::AssumeRoleProvider::builder(arn)
                .session_name(session)
                .external_id(&place.tenant)
                .region(region)
                .configure(base)
                .build()
                .await;
            conf = conf.credentials_provider(role);
        }
        let client = Client::from_conf(conf.build());
        self.shared
            .clients
            .lock()
            .unwrap()
            .insert(key, client.clone());
        client
    }

    /// Where machine `id` lives: this copy's cluster, or what an earlier
    /// call taught the provider.
    fn place_of(&self, id: Uuid) -> Result<Place, ProviderError> {
        if let Some(p) = &self.place {
            return Ok(p.clone());
        }
        self.shared
            .places
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or_else(|| {
                ProviderError::Permanent(format!(
                    "the aws provider was asked about machine {id} without its cluster"
                ))
            })
    }

    async fn call<T, E, F, Fut>(&self, operation: &'static str, f: F) -> Result<T, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<
            Output = Result<
                T,
                aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
            >,
        >,
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        call::call(
            &self.shared.counters,
            &self.shared.config.retry,
            operation,
            f,
        )
        .await
    }

    /// The live instances carrying `tag = value`, oldest first.
    async fn instances_tagged(
        &self,
        client: &Client,
        tag: &str,
        value: &str,
    ) -> Result<Vec<Instance>, ProviderError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = client
                .describe_instances()
                .filters(filter(&format!("tag:{tag}"), [value]))
                .filters(filter("instance-state-name", LIVE_STATES))
                .set_next_token(token.clone());
            let page = self
                .call("DescribeInstances", || req.clone().send())
                .await
                .map_err(to_provider)?;
            for r in page.reservations() {
                out.extend(r.instances().iter().cloned());
            }
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        out.sort_by_key(|i| i.launch_time().map(|t| (t.secs(), t.subsec_nanos())));
        Ok(out)
    }

    /// The one instance of machine `id`; twins (a launch repeated where
    /// the token did not hold) are terminated.
    async fn instance_of(
        &self,
        client: &Client,
        id: Uuid,
    ) -> Result<Option<Instance>, ProviderError> {
        let mut found = self
            .instances_tagged(client, TAG_MACHINE, &id.to_string())
            .await?;
        found.retain(|i| !is_ending(i));
        if found.len() > 1 {
            let twins: Vec<String> = found[1..]
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect();
            tracing::warn!(machine = %id, ?twins, "more than one instance for a machine: terminating the newer");
            let req = client.terminate_instances().set_instance_ids(Some(twins));
            self.call("TerminateInstances", || req.clone().send())
                .await
                .map_err(to_provider)?;
        }
        Ok(found.into_iter().next())
    }

    /// The machine an instance is, with its host key once the console
    /// shows it.
    async fn machine(
        &self,
        client: &Client,
        id: Uuid,
        cluster_id: Uuid,
        inst: &Instance,
    ) -> Result<ProviderMachine, ProviderError> {
        let state = state_of(inst);
        let instance_id = inst.instance_id().unwrap_or_default().to_string();
        let host_key = if state == ProviderMachineState::Running {
            self.host_key(client, &instance_id).await?
        } else {
            None
        };
        Ok(ProviderMachine {
            id,
            cluster_id,
            provider_id: instance_id,
            address: inst.private_ip_address().map(str::to_string),
            host_key,
            state,
        })
    }

    /// The instance's SSH host key as its console shows it, once it does.
    async fn host_key(
        &self,
        client: &Client,
        instance_id: &str,
    ) -> Result<Option<String>, ProviderError> {
        if let Some(k) = self.shared.host_keys.lock().unwrap().get(instance_id) {
            return Ok(Some(k.clone()));
        }
        // `Latest` (the live buffer) is what Nitro instances offer; older
        // types refuse it and give the buffered output instead.
        let latest = client
            .get_console_output()
            .instance_id(instance_id)
            .latest(true);
        let out = match self
            .call("GetConsoleOutput", || latest.clone().send())
            .await
        {
            Ok(out) => out,
            Err(e) if e.kind == AwsErrorKind::Permanent => {
                let buffered = client.get_console_output().instance_id(instance_id);
                self.call("GetConsoleOutput", || buffered.clone().send())
                    .await
                    .map_err(to_provider)?
            }
            Err(e) => return Err(to_provider(e)),
        };
        let Some(encoded) = out.output() else {
            return Ok(None);
        };
        let console = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let keys = kubeforge_cluster::userdata::host_keys_in_console(&console);
        let key = kubeforge_cluster::userdata::preferred_host_key(&keys).cloned();
        if let Some(k) = &key {
            self.shared
                .host_keys
                .lock()
                .unwrap()
                .insert(instance_id.to_string(), k.clone());
        }
        Ok(key)
    }

    /// The cluster's security group, made (with its rules) if it is not
    /// there yet.
    async fn ensure_group(&self, client: &Client, place: &Place) -> Result<String, ProviderError> {
        if let Some(g) = self.shared.groups.lock().unwrap().get(&place.cluster_id) {
            return Ok(g.clone());
        }
        let req = client.describe_subnets().subnet_ids(&place.subnet_id);
        let subnets = self
            .call("DescribeSubnets", || req.clone().send())
            .await
            .map_err(|e| match e.kind {
                AwsErrorKind::NotFound => ProviderError::Permanent(format!(
                    "subnet {} does not exist in {}",
                    place.subnet_id, place.region
                )),
                _ => to_provider(e),
            })?;
        let Some(vpc) = subnets.subnets().first().and_then(|s| s.vpc_id()) else {
            return Err(ProviderError::Permanent(format!(
                "subnet {} does not exist in {}",
                place.subnet_id, place.region
            )));
        };
        let vpc = vpc.to_string();
        let name = group_name(place.cluster_id);
        let group = match self.find_group(client, place.cluster_id, &vpc).await? {
            Some(g) => g,
            None => {
                let req = client
                    .create_security_group()
                    .group_name(&name)
                    .description(format!("Kubeforge cluster {}", place.cluster_id))
                    .vpc_id(&vpc)
                    .tag_specifications(tags_for(ResourceType::SecurityGroup, &group_tags(place)));
                match self
                    .call("CreateSecurityGroup", || req.clone().send())
                    .await
                {
                    Ok(out) => out.group_id().unwrap_or_default().to_string(),
                    Err(e) if e.kind == AwsErrorKind::Duplicate => self
                        .find_group(client, place.cluster_id, &vpc)
                        .await?
                        .ok_or_else(|| ProviderError::Retryable(e.to_string()))?,
                    Err(e) => return Err(to_provider(e)),
                }
            }
        };
        // The rules, each on its own so one already there (a crash after
        // some were added) does not stop the rest.
        let service = if self.shared.config.service_cidrs.is_empty() {
            let req = client.describe_vpcs().vpc_ids(&vpc);
            let vpcs = self
                .call("DescribeVpcs", || req.clone().send())
                .await
                .map_err(to_provider)?;
            vpcs.vpcs()
                .first()
                .and_then(|v| v.cidr_block())
                .map(str::to_string)
                .into_iter()
                .collect::<Vec<_>>()
        } else {
            self.shared
                .config
                .service_cidrs
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let api: Vec<String> = service
            .iter()
            .cloned()
            .chain(self.shared.config.api_cidrs.iter().map(ToString::to_string))
            .collect();
        let mut rules = vec![IpPermission::builder()
            .ip_protocol("-1")
            .user_id_group_pairs(
                UserIdGroupPair::builder()
                    .group_id(&group)
                    .description("the cluster's machines")
                    .build(),
            )
            .build()];
        for (port, cidrs, what) in [
            (22, &service, "SSH from the Kubeforge service"),
            (API_PORT, &api, "the Kubernetes API"),
        ] {
            for cidr in cidrs {
                rules.push(
                    IpPermission::builder()
                        .ip_protocol("tcp")
                        .from_port(port)
                        .to_port(port)
                        .ip_ranges(IpRange::builder().cidr_ip(cidr).description(what).build())
                        .build(),
                );
            }
        }
        for rule in rules {
            let req = client
                .authorize_security_group_ingress()
                .group_id(&group)
                .ip_permissions(rule);
            match self
                .call("AuthorizeSecurityGroupIngress", || req.clone().send())
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind == AwsErrorKind::Duplicate => {}
                Err(e) => return Err(to_provider(e)),
            }
        }
        self.shared
            .groups
            .lock()
            .unwrap()
            .insert(place.cluster_id, group.clone());
        Ok(group)
    }

    async fn find_group(
        &self,
        client: &Client,
        cluster_id: Uuid,
        vpc: &str,
    ) -> Result<Option<String>, ProviderError> {
        let req = client
            .describe_security_groups()
            .filters(filter("vpc-id", [vpc]))
            .filters(filter("group-name", [group_name(cluster_id).as_str()]));
        let out = self
            .call("DescribeSecurityGroups", || req.clone().send())
            .await
            .map_err(to_provider)?;
        Ok(out
            .security_groups()
            .first()
            .and_then(|g| g.group_id())
            .map(str::to_string))
    }

    /// Launches machine `req` as `instance_type` (attempt `n` of its
    /// types).
    async fn launch(
        &self,
        client: &Client,
        place: &Place,
        req: &MachineRequest,
        group: &str,
        instance_type: &str,
        n: usize,
    ) -> Result<Instance, AwsError> {
        let mut run = client
            .run_instances()
            .image_id(&place.ami)
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1)
            .subnet_id(&place.subnet_id)
            .security_group_ids(group)
            .client_token(client_token(req.id, n))
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_put_response_hop_limit(1)
                    .build(),
            )
            .tag_specifications(tags_for(ResourceType::Instance, &req.tags))
            .tag_specifications(tags_for(ResourceType::Volume, &req.tags));
        if let Some(data) = &req.user_data {
            run = run.user_data(base64::engine::general_purpose::STANDARD.encode(data));
        }
        if let Some(key) = &place.key_name {
            run = run.key_name(key);
        }
        // Not `call`: a launch whose answer was lost (a timeout, a cut
        // connection, a 5xx after the work was done) may have made the
        // instance. Before trying again, look for it by its tag; the
        // client token covers what the lookup cannot see yet (on EC2).
        let counters = &self.shared.counters;
        let policy = &self.shared.config.retry;
        let mut retry = 0;
        loop {
            let failure = match run.clone().send().await {
                Ok(out) => {
                    call::count_ok(counters, "RunInstances");
                    return out.instances().first().cloned().ok_or_else(|| AwsError {
                        kind: AwsErrorKind::Transient,
                        operation: "RunInstances",
                        code: "NoInstance".into(),
                        message: "RunInstances answered without an instance".into(),
                    });
                }
                Err(e) => call::Failure::of(&e),
            };
            if failure.retry.is_none() || retry + 1 >= policy.max_attempts {
                return Err(failure.into_error(counters, "RunInstances", retry + 1));
            }
            failure.count_retry(counters, "RunInstances");
            tokio::time::sleep(policy.backoff(retry)).await;
            retry += 1;
            match self.instance_of(client, req.id).await {
                Ok(Some(inst)) => {
                    tracing::info!(machine = %req.id, "a launch whose answer was lost made its instance");
                    return Ok(inst);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(AwsError {
                        kind: AwsErrorKind::Transient,
                        operation: "DescribeInstances",
                        code: "LookupFailed".into(),
                        message: e.to_string(),
                    })
                }
            }
        }
    }
}

/// `kubeforge-<cluster id>`.
fn group_name(cluster_id: Uuid) -> String {
    format!("kubeforge-{cluster_id}")
}

/// The token of launch attempt `n` (0: the machine's own type, then its
/// alternatives): at most 64 ASCII characters, the same for every retry of
/// one attempt, different per type so a fallback is not refused as a
/// mismatched repeat of the first.
fn client_token(id: Uuid, n: usize) -> String {
    if n == 0 {
        id.to_string()
    } else {
        format!("{id}-alt{n}")
    }
}

fn group_tags(place: &Place) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TAG_CLUSTER.to_string(), place.cluster_id.to_string()),
        (TAG_TENANT.to_string(), place.tenant.clone()),
        ("Name".to_string(), group_name(place.cluster_id)),
    ])
}

fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(str::to_string).collect()))
        .build()
}

fn tags_for(kind: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .build()
}

fn tag<'a>(inst: &'a Instance, key: &str) -> Option<&'a str> {
    inst.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn state_of(inst: &Instance) -> ProviderMachineState {
    match inst.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Running) => ProviderMachineState::Running,
        Some(InstanceStateName::Stopping) | Some(InstanceStateName::Stopped) => {
            ProviderMachineState::Stopped
        }
        Some(InstanceStateName::ShuttingDown) | Some(InstanceStateName::Terminated) => {
            ProviderMachineState::Terminated
        }
        _ => ProviderMachineState::Pending,
    }
}

fn is_ending(inst: &Instance) -> bool {
    state_of(inst) == ProviderMachineState::Terminated
}

/// A failed call as the engine sees it.
fn to_provider(e: AwsError) -> ProviderError {
    match e.kind {
        AwsErrorKind::Transient | AwsErrorKind::InUse | AwsErrorKind::NotFound => {
            ProviderError::Retryable(e.to_string())
        }
        AwsErrorKind::Capacity | AwsErrorKind::Quota => ProviderError::NoCapacity(e.to_string()),
        AwsErrorKind::Duplicate | AwsErrorKind::Permanent => {
            ProviderError::Permanent(e.to_string())
        }
    }
}

/// The instance types machine `req` may launch as, in order: its machine
/// type's, then its pool's alternatives (the catalogue says which
/// instance type each is; the API offers on `aws` only types that have
/// one).
fn instance_types(req: &MachineRequest) -> Result<Vec<&'static str>, ProviderError> {
    std::iter::once(req.machine_type)
        .chain(req.alternatives.iter().copied())
        .map(|t| {
            t.ec2_instance_type().ok_or_else(|| {
                ProviderError::Permanent(format!(
                    "machine type {} has no EC2 instance type",
                    t.as_str()
                ))
            })
        })
        .collect()
}

#[async_trait]
impl Provider for AwsProvider {
    fn kind(&self) -> &'static str {
        "aws"
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            ssh_bootstrap: true,
            hosts_workers: true,
            lab_machines: false,
            kube_binaries_bound: false,
        }
    }

    fn scoped(&self, scope: &ClusterScope) -> Option<Arc<dyn Provider>> {
        match self.for_cluster(scope.cluster_id, &scope.tenant, &scope.spec) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::error!(cluster = %scope.cluster_id, error = %e, "not an aws cluster");
                None
            }
        }
    }

    async fn create(&self, req: &MachineRequest) -> Result<ProviderMachine, ProviderError> {
        let place = Place::of(req.cluster_id, &req.tenant, &req.spec)?;
        self.shared
            .places
            .lock()
            .unwrap()
            .insert(req.id, place.clone());
        let client = self.client(&place).await;
        if let Some(inst) = self.instance_of(&client, req.id).await? {
            if state_of(&inst) == ProviderMachineState::Stopped {
                let id = inst.instance_id().unwrap_or_default().to_string();
                let start = client.start_instances().instance_ids(&id);
                self.call("StartInstances", || start.clone().send())
                    .await
                    .map_err(to_provider)?;
            }
            return self.machine(&client, req.id, req.cluster_id, &inst).await;
        }
        let group = self.ensure_group(&client, &place).await?;
        let mut short = Vec::new();
        for (n, instance_type) in instance_types(req)?.into_iter().enumerate() {
            match self
                .launch(&client, &place, req, &group, instance_type, n)
                .await
            {
                Ok(inst) => {
                    let instance_id = inst.instance_id().unwrap_or_default().to_string();
                    tracing::info!(machine = %req.id, instance = %instance_id, instance_type, "instance launched");
                    self.shared
                        .launched
                        .lock()
                        .unwrap()
                        .insert(req.id, (instance_id, Instant::now()));
                    return self.machine(&client, req.id, req.cluster_id, &inst).await;
                }
                Err(e) if e.kind == AwsErrorKind::Capacity => {
                    tracing::info!(machine = %req.id, instance_type, error = %e, "no capacity for the instance type");
                    short.push(format!("{instance_type} ({})", e.code));
                }
                Err(e) => return Err(to_provider(e)),
            }
        }
        Err(ProviderError::NoCapacity(format!(
            "no capacity in {} for {}",
            place.region,
            short.join(", ")
        )))
    }

    async fn get(&self, id: Uuid) -> Result<Option<ProviderMachine>, ProviderError> {
        let place = self.place_of(id)?;
        let client = self.client(&place).await;
        if let Some(inst) = self.instance_of(&client, id).await? {
            return Ok(Some(
                self.machine(&client, id, place.cluster_id, &inst).await?,
            ));
        }
        // Launched a moment ago and not listed yet: still pending.
        let recent = self
            .shared
            .launched
            .lock()
            .unwrap()
            .get(&id)
            .filter(|(_, at)| at.elapsed() < LAUNCH_GRACE)
            .cloned();
        Ok(recent.map(|(instance_id, _)| ProviderMachine {
            id,
            cluster_id: place.cluster_id,
            provider_id: instance_id,
            address: None,
            host_key: None,
            state: ProviderMachineState::Pending,
        }))
    }

    async fn delete(&self, id: Uuid) -> Result<(), ProviderError> {
        let place = self.place_of(id)?;
        let client = self.client(&place).await;
        let ids: Vec<String> = self
            .instances_tagged(&client, TAG_MACHINE, &id.to_string())
            .await?
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        if !ids.is_empty() {
            let req = client
                .terminate_instances()
                .set_instance_ids(Some(ids.clone()));
            match self.call("TerminateInstances", || req.clone().send()).await {
                Ok(_) => {}
                Err(e) if e.kind == AwsErrorKind::NotFound => {}
                Err(e) => return Err(to_provider(e)),
            }
            self.wait_terminated(&client, id).await?;
        }
        self.shared.launched.lock().unwrap().remove(&id);
        for i in &ids {
            self.shared.host_keys.lock().unwrap().remove(i);
        }
        Ok(())
    }

    async fn list_by_cluster(
        &self,
        cluster_id: Uuid,
    ) -> Result<Vec<ProviderMachine>, ProviderError> {
        let Some(place) = self.place.clone().filter(|p| p.cluster_id == cluster_id) else {
            return Err(ProviderError::Permanent(format!(
                "the aws provider was asked for cluster {cluster_id}'s machines without its scope"
            )));
        };
        let client = self.client(&place).await;
        let found = self
            .instances_tagged(&client, TAG_CLUSTER, &cluster_id.to_string())
            .await?;
        Ok(found
            .iter()
            .filter(|i| !is_ending(i))
            .filter_map(|i| {
                let id = tag(i, TAG_MACHINE).and_then(|v| Uuid::parse_str(v).ok())?;
                Some(ProviderMachine {
                    id,
                    cluster_id,
                    provider_id: i.instance_id().unwrap_or_default().to_string(),
                    address: i.private_ip_address().map(str::to_string),
                    host_key: None,
                    state: state_of(i),
                })
            })
            .collect())
    }

    async fn release_cluster(&self, cluster_id: Uuid) -> Result<(), ProviderError> {
        let Some(place) = self.place.clone().filter(|p| p.cluster_id == cluster_id) else {
            return Err(ProviderError::Permanent(format!(
                "the aws provider was asked to release cluster {cluster_id} without its scope"
            )));
        };
        let client = self.client(&place).await;
        // Instances still on their way out hold the group: wait for them.
        let ending = self
            .instances_tagged(&client, TAG_CLUSTER, &cluster_id.to_string())
            .await?;
        if let Some(i) = ending.first() {
            return Err(ProviderError::Retryable(format!(
                "instance {} of the cluster is not terminated yet",
                i.instance_id().unwrap_or_default()
            )));
        }
        let req = client
            .describe_volumes()
            .filters(filter(
                &format!("tag:{TAG_CLUSTER}"),
                [cluster_id.to_string().as_str()],
            ))
            .filters(filter("status", ["available"]));
        let volumes = self
            .call("DescribeVolumes", || req.clone().send())
            .await
            .map_err(to_provider)?;
        for v in volumes.volumes() {
            let Some(vid) = v.volume_id() else { continue };
            let del = client.delete_volume().volume_id(vid);
            match self.call("DeleteVolume", || del.clone().send()).await {
                Ok(_) => {}
                Err(e) if e.kind == AwsErrorKind::NotFound => {}
                Err(e) => return Err(to_provider(e)),
            }
        }
        let req = client.describe_security_groups().filters(filter(
            &format!("tag:{TAG_CLUSTER}"),
            [cluster_id.to_string().as_str()],
        ));
        let groups = self
            .call("DescribeSecurityGroups", || req.clone().send())
            .await
            .map_err(to_provider)?;
        for g in groups.security_groups() {
            let Some(gid) = g.group_id() else { continue };
            let del = client.delete_security_group().group_id(gid);
            match self
                .call("DeleteSecurityGroup", || del.clone().send())
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind == AwsErrorKind::NotFound => {}
                Err(e) => return Err(to_provider(e)),
            }
        }
        self.shared.groups.lock().unwrap().remove(&cluster_id);
        Ok(())
    }
}

impl AwsProvider {
    /// Waits (with backoff) until no instance of machine `id` is left
    /// but terminated ones, up to the configured wait.
    async fn wait_terminated(&self, client: &Client, id: Uuid) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.shared.config.delete_wait;
        let mut pause = Duration::from_millis(500);
        loop {
            let left = self
                .instances_tagged(client, TAG_MACHINE, &id.to_string())
                .await?;
            let Some(first) = left.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(ProviderError::Retryable(format!(
                    "instance {} of machine {id} is still {}",
                    first.instance_id().unwrap_or_default(),
                    first
                        .state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str())
                        .unwrap_or("unknown")
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}
