//! What a machine must know about itself before the service first logs in,
//! and the cloud-init user-data that carries it to machines whose images
//! boot with cloud-init (cloud instances).
//!
//! The lab and the `ssh` provider write the same facts themselves (the lab
//! into the machine's overlay before boot, the `ssh` provider over its
//! registered credentials): the hostname, the service's SSH key for root,
//! and the identity file `/etc/kubeforge/machine.json` (ledger id, cluster,
//! name and tags), which is what finds a machine when the ledger does not.
//!
//! The user-data is a `#cloud-config` document whose body is JSON (YAML 1.2
//! is a superset of JSON, and cloud-init reads it as such), built by serde
//! from typed fields: no value can break out of its field.

use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::ValidationError;

/// Where a machine records which machine it is.
pub const IDENTITY_FILE: &str = "/etc/kubeforge/machine.json";

/// The identity file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineIdentity {
    /// The ledger id.
    pub id: Uuid,
    pub cluster_id: Uuid,
    pub name: String,
    pub tags: BTreeMap<String, String>,
}

impl MachineIdentity {
    /// One line of JSON, as the file holds it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an identity always serializes")
    }
}

#[derive(Serialize)]
struct CloudConfig<'a> {
    hostname: &'a str,
    preserve_hostname: bool,
    /// Root logs in with the keys below (the service bootstraps as root).
    disable_root: bool,
    ssh_pwauth: bool,
    ssh_authorized_keys: [&'a str; 1],
    write_files: [WriteFile; 1],
}

#[derive(Serialize)]
struct WriteFile {
    path: &'static str,
    permissions: &'static str,
    content: String,
}

/// The `#cloud-config` user-data for `identity`'s machine: its hostname
/// (the machine's name), `authorized_key` (an OpenSSH public key line,
/// `TYPE BASE64 [COMMENT]`) for root, password logins off, and the
/// identity file.
pub fn render(identity: &MachineIdentity, authorized_key: &str) -> Result<String, ValidationError> {
    crate::names::check_dns_label(&identity.name, 63).map_err(|_| {
        ValidationError::new(
            "name",
            format!("{:?} is not a DNS-1123 label", identity.name),
        )
    })?;
    check_public_key(authorized_key)?;
    let config = CloudConfig {
        hostname: &identity.name,
        preserve_hostname: false,
        disable_root: false,
        ssh_pwauth: false,
        ssh_authorized_keys: [authorized_key],
        write_files: [WriteFile {
            path: IDENTITY_FILE,
            permissions: "0644",
            content: format!("{}\n", identity.to_json()),
        }],
    };
    let body = serde_json::to_string_pretty(&config).expect("a cloud-config always serializes");
    Ok(format!("#cloud-config\n{body}\n"))
}

/// `TYPE BASE64 [COMMENT]` on one line, printable.
fn check_public_key(line: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| ValidationError::new("authorized_key", why);
    if line.chars().any(|c| c.is_control()) {
        return Err(bad("must be one printable line"));
    }
    let mut parts = line.split(' ');
    let (Some(kind), Some(body)) = (parts.next(), parts.next()) else {
        return Err(bad("must be TYPE BASE64 [COMMENT]"));
    };
    let base64 = |b: u8| b.is_ascii_alphanumeric() || b"+/=".contains(&b);
    if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-"))
        || body.is_empty()
        || !body.bytes().all(base64)
    {
        return Err(bad("must be TYPE BASE64 [COMMENT]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBz0kPq1Gm kubeforge-service";

    fn identity() -> MachineIdentity {
        MachineIdentity {
            id: Uuid::from_u128(1),
            cluster_id: Uuid::from_u128(2),
            name: "web-cp-0".into(),
            tags: BTreeMap::from([
                ("Name".into(), "web-cp-0".into()),
                ("kubeforge:tenant".into(), "acme \"quoted\"\nline".into()),
            ]),
        }
    }

    #[test]
    fn user_data_is_cloud_config_with_the_identity() {
        let text = render(&identity(), KEY).unwrap();
        let body = text.strip_prefix("#cloud-config\n").expect("the header");
        let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(v["hostname"], "web-cp-0");
        assert_eq!(v["disable_root"], false);
        assert_eq!(v["ssh_pwauth"], false);
        assert_eq!(v["ssh_authorized_keys"], serde_json::json!([KEY]));
        let file = &v["write_files"][0];
        assert_eq!(file["path"], IDENTITY_FILE);
        assert_eq!(file["permissions"], "0644");
        // The identity survives any tag value, quotes and newlines included.
        let written: serde_json::Value =
            serde_json::from_str(file["content"].as_str().unwrap()).unwrap();
        assert_eq!(written["id"], Uuid::from_u128(1).to_string());
        assert_eq!(written["tags"]["kubeforge:tenant"], "acme \"quoted\"\nline");
    }

    #[test]
    fn bad_names_and_keys_are_refused() {
        let mut bad = identity();
        bad.name = "web;reboot".into();
        assert_eq!(render(&bad, KEY).unwrap_err().field, "name");
        for key in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 AAAA\nssh-rsa BBBB",
            "ssh-ed25519 AA$(reboot)",
            "rsa AAAA",
        ] {
            assert_eq!(
                render(&identity(), key).unwrap_err().field,
                "authorized_key",
                "{key:?}"
            );
        }
    }
}
