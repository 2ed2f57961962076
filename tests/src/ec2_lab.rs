//! "EC2 on the lab": moto's EC2 instances become real lab machines, so a
//! cluster on the `aws` provider reaches `ready` over real SSH here.
//!
//! [`Ec2OnLab::start`] makes, in moto, a VPC and a subnet whose CIDR is the
//! test's lab bridge subnet (moto hands out private addresses from `.4`, as
//! EC2 does: `.1` to `.3` are reserved, so the bridge's gateway `.1` is
//! never an instance's). A watcher then follows moto's instances in that
//! subnet, straight from moto (past the fault proxy, so the provider's
//! calls are the only ones the proxy counts):
//! - a new instance gets a lab machine at its private address
//!   ([`LabProvider::create_at`]), with no Kubeforge binaries bound in (an
//!   AMI has none), trusting only the harness's own key, plus what its
//!   user-data says, applied by [`CloudInitDouble`];
//! - once that machine's sshd answers, the proxy's console for the
//!   instance shows the machine's host keys as cloud-init prints them
//!   ([`crate::moto::FaultProxy::set_console`]);
//! - a stopped instance's machine is powered off, a terminated (or
//!   vanished) instance's machine deleted.
//!
//! What the watcher could not do (user-data it cannot apply, a lab error)
//! is kept in [`Ec2OnLab::problems`], which a test asserts empty.

use kubeforge::providers::lab::{LabConfig, LabFile, LabProvider};
use kubeforge::providers::{MachineRequest, Provider, ProviderMachineState, TAG_MACHINE};
use kubeforge::ssh::ClientKey;
use kubeforge_cluster::pools::MachineRole;
use kubeforge_cluster::{MachineType, ProviderSpec};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

use crate::moto;

/// TEST DOUBLE for cloud-init: no lab image carries cloud-init (and
/// nothing here could serve it a datasource), so the harness applies the
/// user-data itself, before the machine's first boot. It knows exactly the
/// cloud-config keys Kubeforge's template uses and refuses any other, so a
/// template change it cannot honour fails the test instead of being
/// skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInitDouble {
    pub hostname: String,
    /// Keys for root (`disable_root: false`); none when root is disabled.
    pub root_keys: Vec<String>,
    pub files: Vec<LabFile>,
    /// `ssh.emit_keys_to_console`.
    pub emit_keys: bool,
}

impl CloudInitDouble {
    /// Reads a `#cloud-config` user-data whose body is JSON (what the
    /// template renders).
    pub fn parse(user_data: &str) -> Result<Self, String> {
        let body = user_data
            .strip_prefix("#cloud-config\n")
            .ok_or("user-data does not start with #cloud-config")?;
        let doc: Value =
            serde_json::from_str(body).map_err(|e| format!("user-data is not JSON: {e}"))?;
        let doc = doc.as_object().ok_or("user-data is not an object")?;
        let mut out = CloudInitDouble {
            hostname: String::new(),
            root_keys: Vec::new(),
            files: Vec::new(),
            emit_keys: false,
        };
        let mut disable_root = true;
        let mut keys = Vec::new();
        for (key, value) in doc {
            match key.as_str() {
                "hostname" => {
                    out.hostname = value.as_str().ok_or("hostname is not a string")?.into()
                }
                "preserve_hostname" | "ssh_pwauth" | "ssh_key_console_blacklist" => {}
                "disable_root" => {
                    disable_root = value.as_bool().ok_or("disable_root is not a boolean")?
                }
                "ssh_authorized_keys" => {
                    for k in value
                        .as_array()
                        .ok_or("ssh_authorized_keys is not a list")?
                    {
                        keys.push(k.as_str().ok_or("a key is not a string")?.to_string());
                    }
                }
                "ssh" => {
                    for (k, v) in value.as_object().ok_or("ssh is not an object")? {
                        match k.as_str() {
                            "emit_keys_to_console" => {
                                out.emit_keys = v.as_bool().ok_or("emit_keys_to_console")?
                            }
                            other => return Err(format!("unknown ssh key {other:?}")),
                        }
                    }
                }
                "write_files" => {
                    for f in value.as_array().ok_or("write_files is not a list")? {
                        let f = f
                            .as_object()
                            .ok_or("a write_files entry is not an object")?;
                        if let Some(k) = f
                            .keys()
                            .find(|k| !["path", "permissions", "content"].contains(&k.as_str()))
                        {
                            return Err(format!("unknown write_files key {k:?}"));
                        }
                        let path = f["path"].as_str().ok_or("write_files path")?;
                        let mode = match f.get("permissions") {
                            Some(p) => u32::from_str_radix(
                                p.as_str().ok_or("permissions is not a string")?,
                                8,
                            )
                            .map_err(|e| format!("permissions: {e}"))?,
                            None => 0o644,
                        };
                        out.files.push(LabFile {
                            path: path.to_string(),
                            contents: f
                                .get("content")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                            mode,
                        });
                    }
                }
                other => return Err(format!("unknown cloud-config key {other:?}")),
            }
        }
        if out.hostname.is_empty() {
            return Err("user-data names no hostname".into());
        }
        if !disable_root {
            out.root_keys = keys;
        }
        Ok(out)
    }

    /// The files the machine starts with: its hostname, root's keys (after
    /// `own_key`, the lab's own) and the user-data's files.
    pub fn lab_files(&self, own_key: &str) -> Vec<LabFile> {
        let mut keys = vec![own_key.trim().to_string()];
        keys.extend(self.root_keys.iter().cloned());
        let mut files = vec![
            LabFile {
                path: "/etc/hostname".into(),
                contents: format!("{}\n", self.hostname),
                mode: 0o644,
            },
            LabFile {
                path: "/root/.ssh/authorized_keys".into(),
                contents: keys.join("\n") + "\n",
                mode: 0o600,
            },
        ];
        files.extend(self.files.iter().cloned());
        files
    }

    /// The console once booted: some boot noise and, when asked for, the
    /// host keys in cloud-init's block.
    pub fn console(&self, host_key: &str) -> String {
        let mut text = format!(
            "[    0.000000] Linux version 6.1.0 (lab)\n\
             [    2.114210] systemd[1]: Hostname set to <{h}>.\n\
             ci-info: no authorized SSH keys fingerprints found for user admin.\n",
            h = self.hostname
        );
        if self.emit_keys {
            text.push_str(&format!(
                "{}\n{} root@{}\n{}\n",
                kubeforge_cluster::userdata::HOST_KEYS_BEGIN,
                host_key,
                self.hostname,
                kubeforge_cluster::userdata::HOST_KEYS_END
            ));
        }
        text.push_str(&format!(
            "\nDebian GNU/Linux 12 {} ttyS0\n\n{} login: \n",
            self.hostname, self.hostname
        ));
        text
    }
}

/// One instance's lab machine.
#[derive(Debug, Clone)]
pub struct LabInstance {
    pub instance_id: String,
    pub machine: Uuid,
    pub address: Ipv4Addr,
    pub host_key: String,
    /// Whether the proxy's console shows its keys yet.
    pub console: bool,
    pub double: CloudInitDouble,
}

#[derive(Default)]
struct Watched {
    live: BTreeMap<String, LabInstance>,
    /// Instances whose machines were deleted, in order.
    ended: Vec<String>,
    problems: Vec<String>,
}

/// See the module doc.
pub struct Ec2OnLab {
    pub vpc_id: String,
    pub subnet_id: String,
    pub lab: Arc<LabProvider>,
    watched: Arc<Mutex<Watched>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Ec2OnLab {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Ec2OnLab {
    /// The VPC and subnet on `subnet` (the lab bridge's), the lab under
    /// `state_dir` on `bridge`, and the watcher.
    pub async fn start(state_dir: &Path, bridge: &str, subnet: &str) -> Ec2OnLab {
        let ec2 = moto::direct_client().await;
        let vpc_id = ec2
            .create_vpc()
            .cidr_block(subnet)
            .send()
            .await
            .expect("a moto VPC on the lab subnet")
            .vpc()
            .and_then(|v| v.vpc_id())
            .unwrap()
            .to_string();
        let subnet_id = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(subnet)
            .send()
            .await
            .expect("a moto subnet on the lab subnet")
            .subnet()
            .and_then(|s| s.subnet_id())
            .unwrap()
            .to_string();
        let image = kubeforge::server::lab_image(&kubeforge::server::cache_dir())
            .expect("no lab image: run scripts/build-lab-image");
        let own_key = ClientKey::generate().unwrap().public_key_line().to_string();
        let lab = Arc::new(
            LabProvider::new(LabConfig {
                image_rootfs: image,
                state_dir: state_dir.to_path_buf(),
                bridge: bridge.to_string(),
                subnet: subnet.parse().unwrap(),
                authorized_key: own_key.clone(),
                bind_ro: vec![],
            })
            .unwrap(),
        );
        let watched = Arc::new(Mutex::new(Watched::default()));
        let task = tokio::spawn(watch(
            ec2,
            subnet_id.clone(),
            lab.clone(),
            own_key,
            watched.clone(),
        ));
        Ec2OnLab {
            vpc_id,
            subnet_id,
            lab,
            watched,
            task,
        }
    }

    /// The instances with a lab machine now.
    pub fn live(&self) -> Vec<LabInstance> {
        self.watched
            .lock()
            .unwrap()
            .live
            .values()
            .cloned()
            .collect()
    }

    /// Instances whose machines were deleted, in order.
    pub fn ended(&self) -> Vec<String> {
        self.watched.lock().unwrap().ended.clone()
    }

    /// What the watcher could not do.
    pub fn problems(&self) -> Vec<String> {
        self.watched.lock().unwrap().problems.clone()
    }
}

async fn watch(
    ec2: aws_sdk_ec2::Client,
    subnet_id: String,
    lab: Arc<LabProvider>,
    own_key: String,
    watched: Arc<Mutex<Watched>>,
) {
    loop {
        if let Err(e) = watch_once(&ec2, &subnet_id, &lab, &own_key, &watched).await {
            watched.lock().unwrap().problems.push(e);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One pass of the watcher (see the module doc).
async fn watch_once(
    ec2: &aws_sdk_ec2::Client,
    subnet_id: &str,
    lab: &LabProvider,
    own_key: &str,
    watched: &Mutex<Watched>,
) -> Result<(), String> {
    let out = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("subnet-id")
                .values(subnet_id)
                .build(),
        )
        .send()
        .await
        .map_err(|e| format!("describing moto's instances: {e:?}"))?;
    let instances: Vec<_> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances().iter().cloned())
        .collect();
    let present: Vec<String> = instances
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    for inst in &instances {
        let id = inst.instance_id().unwrap_or_default().to_string();
        let state = inst
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default();
        let known = watched.lock().unwrap().live.get(&id).cloned();
        match (state.as_str(), known) {
            ("pending" | "running", None) => {
                let booted = boot(ec2, lab, own_key, inst).await?;
                watched.lock().unwrap().live.insert(id, booted);
            }
            ("pending" | "running", Some(known)) => {
                let pm = lab
                    .get(known.machine)
                    .await
                    .map_err(|e| format!("{id}: {e}"))?;
                match pm.map(|m| m.state) {
                    // Started again after a stop: the same machine, its disk.
                    Some(ProviderMachineState::Stopped) | None => {
                        let req = lab_request(known.machine, &known.double.hostname);
                        lab.create_at(&req, known.address, &[])
                            .await
                            .map_err(|e| format!("{id}: starting again: {e}"))?;
                    }
                    Some(ProviderMachineState::Running) if !known.console => {
                        moto::shared()
                            .proxy
                            .set_console(&id, &known.double.console(&known.host_key));
                        if let Some(k) = watched.lock().unwrap().live.get_mut(&id) {
                            k.console = true;
                        }
                    }
                    _ => {}
                }
            }
            ("stopping" | "stopped", Some(known)) => {
                lab.power_off(known.machine)
                    .await
                    .map_err(|e| format!("{id}: powering off: {e}"))?;
            }
            ("shutting-down" | "terminated", Some(known)) => {
                end(lab, watched, &id, known.machine).await?;
            }
            _ => {}
        }
    }
    let vanished: Vec<(String, Uuid)> = watched
        .lock()
        .unwrap()
        .live
        .iter()
        .filter(|(id, _)| !present.contains(id))
        .map(|(id, m)| (id.clone(), m.machine))
        .collect();
    for (id, machine) in vanished {
        end(lab, watched, &id, machine).await?;
    }
    Ok(())
}

/// Deletes an ended instance's machine.
async fn end(
    lab: &LabProvider,
    watched: &Mutex<Watched>,
    id: &str,
    machine: Uuid,
) -> Result<(), String> {
    lab.delete(machine)
        .await
        .map_err(|e| format!("{id}: deleting its machine: {e}"))?;
    let mut w = watched.lock().unwrap();
    w.live.remove(id);
    w.ended.push(id.to_string());
    Ok(())
}

/// What the lab is asked for: the machine keyed by the instance's
/// `kubeforge:machine` tag (or a fresh id, for an instance not
/// Kubeforge's).
fn lab_request(machine: Uuid, hostname: &str) -> MachineRequest {
    MachineRequest::new(
        machine,
        hostname,
        "ec2",
        Uuid::nil(),
        MachineRole::Worker,
        MachineType::SMALL,
        None,
        ProviderSpec::Lab {},
    )
}

/// Boots a lab machine for a new instance at its private address, its
/// user-data applied.
async fn boot(
    ec2: &aws_sdk_ec2::Client,
    lab: &LabProvider,
    own_key: &str,
    inst: &aws_sdk_ec2::types::Instance,
) -> Result<LabInstance, String> {
    use base64::Engine as _;
    let id = inst.instance_id().unwrap_or_default().to_string();
    let address: Ipv4Addr = inst
        .private_ip_address()
        .ok_or_else(|| format!("{id} has no private address"))?
        .parse()
        .map_err(|e| format!("{id}: private address: {e}"))?;
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(&id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .map_err(|e| format!("{id}: reading its user-data: {e:?}"))?;
    let encoded = attr
        .user_data()
        .and_then(|u| u.value())
        .ok_or_else(|| format!("{id} has no user-data"))?;
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("{id}: user-data is not base64: {e}"))?;
    let double = CloudInitDouble::parse(&String::from_utf8_lossy(&user_data))
        .map_err(|e| format!("{id}: {e}"))?;
    let machine = inst
        .tags()
        .iter()
        .find(|t| t.key() == Some(TAG_MACHINE))
        .and_then(|t| t.value())
        .and_then(|v| Uuid::parse_str(v).ok())
        .unwrap_or_else(Uuid::new_v4);
    let req = lab_request(machine, &double.hostname);
    let pm = lab
        .create_at(&req, address, &double.lab_files(own_key))
        .await
        .map_err(|e| format!("{id}: booting its lab machine at {address}: {e}"))?;
    Ok(LabInstance {
        instance_id: id,
        machine,
        address,
        host_key: pm.host_key.unwrap_or_default(),
        console: false,
        double,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> String {
        let req = MachineRequest::new(
            Uuid::nil(),
            "web-cp-0",
            "acme",
            Uuid::nil(),
            MachineRole::ControlPlane,
            MachineType::SMALL,
            None,
            ProviderSpec::Lab {},
        );
        kubeforge_cluster::userdata::render(&req.identity(), "ssh-ed25519 AAAAservice kubeforge")
            .unwrap()
    }

    #[test]
    fn the_double_applies_the_templates_user_data() {
        let d = CloudInitDouble::parse(&rendered()).unwrap();
        assert_eq!(d.hostname, "web-cp-0");
        assert_eq!(d.root_keys, vec!["ssh-ed25519 AAAAservice kubeforge"]);
        assert!(d.emit_keys);
        assert_eq!(d.files.len(), 1);
        assert_eq!(d.files[0].path, kubeforge_cluster::userdata::IDENTITY_FILE);
        assert_eq!(d.files[0].mode, 0o644);
        let files = d.lab_files("ssh-ed25519 AAAAown lab");
        let keys = files
            .iter()
            .find(|f| f.path == "/root/.ssh/authorized_keys")
            .unwrap();
        assert_eq!(
            keys.contents,
            "ssh-ed25519 AAAAown lab\nssh-ed25519 AAAAservice kubeforge\n"
        );
        // The console shows the key where the provider looks for it.
        let console = d.console("ssh-ed25519 AAAAhostkey");
        assert_eq!(
            kubeforge_cluster::userdata::host_keys_in_console(&console),
            vec!["ssh-ed25519 AAAAhostkey"]
        );
    }

    #[test]
    fn the_double_refuses_what_it_cannot_apply() {
        let with = |extra: &str| {
            let r = rendered();
            let body = r.strip_prefix("#cloud-config\n").unwrap();
            let mut v: Value = serde_json::from_str(body).unwrap();
            let (k, val) = extra.split_once('=').unwrap();
            v[k] = serde_json::from_str(val).unwrap();
            format!("#cloud-config\n{v}")
        };
        let err = CloudInitDouble::parse(&with("runcmd=[\"id\"]")).unwrap_err();
        assert!(err.contains("runcmd"), "{err}");
        let err = CloudInitDouble::parse(&with("ssh={\"emit_keys_to_console\":true,\"x\":1}"))
            .unwrap_err();
        assert!(err.contains("\"x\""), "{err}");
        let err = CloudInitDouble::parse("#!/bin/sh\necho hi\n").unwrap_err();
        assert!(err.contains("#cloud-config"), "{err}");
        // disable_root: root gets no keys.
        let d = CloudInitDouble::parse(&with("disable_root=true")).unwrap();
        assert!(d.root_keys.is_empty());
        // No console keys unless asked.
        let d = CloudInitDouble::parse(&with("ssh={}")).unwrap();
        assert!(
            kubeforge_cluster::userdata::host_keys_in_console(&d.console("ssh-ed25519 AAAA"))
                .is_empty()
        );
    }
}
