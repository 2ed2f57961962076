//! The lab network one `kubeforge up` holds on this host: a bridge and the
//! subnet on it, so that two `up` processes (two data dirs) never share
//! either.
//!
//! - Without `KUBEFORGE_LAB_BRIDGE`/`KUBEFORGE_LAB_SUBNET`, `up` takes the
//!   first free pair `kfbr<N>` / `10.77.<N>.0/24` (N = 0..=255): free means
//!   no link of that name exists, no address of the host lies in that
//!   subnet, and no other `up` holds its lock. The choice is kept in
//!   `<data dir>/lab/network.json`, so a restart finds its machines on the
//!   same bridge and subnet (if another `up` took that pair meanwhile, a
//!   data dir without machines picks again; one with machines is refused).
//! - With either variable set (the other defaulting to `kfbr0` /
//!   `10.77.0.0/24`), that pair is used, and a pair another `up` holds is
//!   refused naming the variables to set.
//! - Holding is a lock on `/run/kubeforge/lab/bridge-<name>.lock` and on
//!   `subnet-<a.b.c.d>-<len>.lock` (each names its holder's data dir and
//!   pid), taken before the bridge is looked at: the first `up` to lock a
//!   pair has it, whoever checked first.
//! - The bridge is made (and given the subnet's first address) when the
//!   network is claimed. When the claim is dropped (the `up` stops), the
//!   bridge is deleted if this process made it or an earlier `up` of the
//!   same data dir did, and no machine's interface is still on it; a
//!   bridge someone else made is left alone.
//!
//! Only `up` claims a network: `serve` replicas sharing a database share
//! the bridge the environment names, as before.

use anyhow::{bail, Context as _};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the locks live.
pub const LOCK_DIR: &str = "/run/kubeforge/lab";
/// The default bridge and subnet (N = 0).
pub const DEFAULT_BRIDGE: &str = "kfbr0";
pub const DEFAULT_SUBNET: &str = "10.77.0.0/24";

/// What `<data dir>/lab/network.json` records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    bridge: String,
    subnet: Ipv4Net,
    /// Whether an `up` of this data dir made the bridge (so it deletes it).
    made: bool,
}

/// A bridge and subnet this process holds until dropped.
#[derive(Debug)]
pub struct LabNetwork {
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// Delete the bridge when dropped (made by this data dir's `up`).
    owned: bool,
    _locks: [File; 2],
}

impl LabNetwork {
    /// Claims the data dir's lab network (see the module docs): `bridge`
    /// and `subnet` are `KUBEFORGE_LAB_BRIDGE` / `KUBEFORGE_LAB_SUBNET`
    /// when set. `state_dir` is `<data dir>/lab`.
    pub fn claim(
        state_dir: &Path,
        bridge: Option<&str>,
        subnet: Option<&str>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let record_path = state_dir.join("network.json");
        let recorded: Option<Record> = std::fs::read_to_string(&record_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let holder = format!(
            "{} (pid {})",
            state_dir.parent().unwrap_or(state_dir).display(),
            std::process::id()
        );
        let explicit = bridge.is_some() || subnet.is_some();
        let (bridge, subnet, locks, made_before) = if explicit {
            let bridge = bridge.unwrap_or(DEFAULT_BRIDGE).to_string();
            let subnet: Ipv4Net = subnet
                .unwrap_or(DEFAULT_SUBNET)
                .parse()
                .context("KUBEFORGE_LAB_SUBNET is not a CIDR")?;
            let locks = lock_pair(&bridge, subnet, &holder)?.map_err(|other| {
                anyhow::anyhow!(
                    "the lab bridge {bridge} or subnet {subnet} is held by another kubeforge up \
                     ({other}); set KUBEFORGE_LAB_BRIDGE and KUBEFORGE_LAB_SUBNET to a bridge \
                     and subnet of its own, or unset both to have one picked"
                )
            })?;
            let made = recorded
                .as_ref()
                .is_some_and(|r| r.made && r.bridge == bridge);
            (bridge, subnet, locks, made)
        } else if let Some((r, locks)) = match &recorded {
            Some(r) => match lock_pair(&r.bridge, r.subnet, &holder)? {
                Ok(locks) => Some((r, locks)),
                // Taken while this data dir's `up` was stopped: with no
                // machine of its own on it, another pair will do.
                Err(_) if !has_machines(state_dir) => None,
                Err(other) => bail!(
                    "this data dir's lab bridge {} and subnet {} (from {}, its machines \
                     are on them) are held by another kubeforge up ({other}); stop that one, \
                     or delete this data dir's lab machines",
                    r.bridge,
                    r.subnet,
                    record_path.display()
                ),
            },
            None => None,
        } {
            (r.bridge.clone(), r.subnet, locks, r.made)
        } else {
            let used = host_networks()?;
            let mut found = None;
            for n in 0..=255u8 {
                let bridge = format!("kfbr{n}");
                let subnet = Ipv4Net::new(Ipv4Addr::new(10, 77, n, 0), 24)?;
                if link_exists(&bridge) || used.iter().any(|u| overlaps(u, &subnet)) {
                    continue;
                }
                if let Ok(locks) = lock_pair(&bridge, subnet, &holder)? {
                    // Checked again under the lock: made by someone
                    // between the look and the lock.
                    if link_exists(&bridge) {
                        continue;
                    }
                    found = Some((bridge, subnet, locks, false));
                    break;
                }
            }
            found.context(
                "no free lab bridge kfbr0-kfbr255 with subnet 10.77.N.0/24 on this host; \
                 set KUBEFORGE_LAB_BRIDGE and KUBEFORGE_LAB_SUBNET",
            )?
        };
        let made_now = ensure_bridge(&bridge, subnet)?;
        let owned = made_now || made_before;
        let record = Record {
            bridge: bridge.clone(),
            subnet,
            made: owned,
        };
        if recorded.as_ref() != Some(&record) {
            let tmp = state_dir.join("network.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&record)?)
                .and_then(|()| std::fs::rename(&tmp, &record_path))
                .with_context(|| format!("writing {}", record_path.display()))?;
        }
        tracing::info!(%bridge, %subnet, made = made_now, "lab network claimed");
        Ok(Self {
            bridge,
            subnet,
            owned,
            _locks: locks,
        })
    }

    /// The host's address on the bridge: the subnet's first.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.hosts().next().unwrap_or(self.subnet.network())
    }
}

impl Drop for LabNetwork {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let attached = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
            .unwrap_or(0);
        if attached > 0 {
            tracing::warn!(bridge = %self.bridge, attached,
                "lab machines are still on the bridge: it stays for them");
            return;
        }
        match Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status()
        {
            Ok(s) if s.success() => {
                tracing::info!(bridge = %self.bridge, "lab bridge removed")
            }
            Ok(s) => {
                tracing::warn!(bridge = %self.bridge, status = %s, "removing the lab bridge failed")
            }
            Err(e) => {
                tracing::warn!(bridge = %self.bridge, error = %e, "removing the lab bridge failed")
            }
        }
    }
}

/// Locks the bridge's and the subnet's lock files. The outer error is an
/// I/O failure; the inner one names the holder of a lock already taken.
fn lock_pair(
    bridge: &str,
    subnet: Ipv4Net,
    holder: &str,
) -> anyhow::Result<Result<[File; 2], String>> {
    let names = [
        format!("bridge-{bridge}.lock"),
        format!("subnet-{}-{}.lock", subnet.network(), subnet.prefix_len()),
    ];
    let mut files = Vec::new();
    for name in names {
        let path = PathBuf::from(LOCK_DIR).join(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0)
                    .and_then(|()| file.write_all(holder.as_bytes()))
                    .with_context(|| format!("writing {}", path.display()))?;
                files.push(file);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Ok(Err(if text.is_empty() {
                    "holder unknown".into()
                } else {
                    text
                }));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
    let [a, b]: [File; 2] = files.try_into().expect("two locks");
    Ok(Ok([a, b]))
}

/// Whether the lab has machines in this state dir.
fn has_machines(state_dir: &Path) -> bool {
    std::fs::read_dir(state_dir.join("machines"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The IPv4 networks of the host's addresses.
fn host_networks() -> anyhow::Result<Vec<Ipv4Net>> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("running ip -4 addr show")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.parse::<Ipv4Net>().ok()
        })
        .map(|n| n.trunc())
        .collect())
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Makes the bridge with the gateway address and raises it; true when it
/// did not exist.
fn ensure_bridge(bridge: &str, subnet: Ipv4Net) -> anyhow::Result<bool> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .with_context(|| format!("running ip {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let made = !link_exists(bridge);
    if made {
        run(&["link", "add", bridge, "type", "bridge"])?;
    }
    let gateway = subnet.hosts().next().unwrap_or(subnet.network());
    let cidr = format!("{gateway}/{}", subnet.prefix_len());
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", bridge])
        .output()
        .context("reading the bridge's addresses")?;
    if !String::from_utf8_lossy(&addrs.stdout).contains(&format!(" {cidr} ")) {
        run(&["addr", "add", &cidr, "dev", bridge])?;
    }
    run(&["link", "set", bridge, "up"])?;
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_networks() {
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert!(overlaps(&n("10.77.0.0/24"), &n("10.77.0.0/24")));
        assert!(overlaps(&n("10.0.0.0/8"), &n("10.77.3.0/24")));
        assert!(overlaps(&n("10.77.3.0/24"), &n("10.0.0.0/8")));
        assert!(!overlaps(&n("10.77.0.0/24"), &n("10.77.1.0/24")));
    }
}
