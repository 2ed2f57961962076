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
//! is a superset of JSON, and cloud-init reads it as such), rendered from
//! `templates/cloud-init/user-data.tera` with every value JSON-encoded: no
//! value can break out of its field. It also has cloud-init print the
//! machine's SSH host keys on its console, the channel the `aws` provider
//! pins them from ([`host_keys_in_console`]).

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

/// The user-data template (`templates/cloud-init/user-data.tera`).
const TEMPLATE: &str = include_str!("../../templates/cloud-init/user-data.tera");

/// The `#cloud-config` user-data for `identity`'s machine: its hostname
/// (the machine's name), `authorized_key` (an OpenSSH public key line,
/// `TYPE BASE64 [COMMENT]`) for root, password logins off, the identity
/// file, and the machine's SSH host keys printed to its console between
/// cloud-init's `-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST
/// KEY KEYS-----` lines, where the `aws` provider reads them through EC2's
/// authenticated `GetConsoleOutput` ([`host_keys_in_console`]).
pub fn render(identity: &MachineIdentity, authorized_key: &str) -> Result<String, ValidationError> {
    crate::names::check_dns_label(&identity.name, 63).map_err(|_| {
        ValidationError::new(
            "name",
            format!("{:?} is not a DNS-1123 label", identity.name),
        )
    })?;
    check_public_key(authorized_key)?;
    let mut context = tera::Context::new();
    context.insert("hostname", &identity.name);
    context.insert("authorized_key", authorized_key);
    context.insert("identity_path", IDENTITY_FILE);
    context.insert("identity", &format!("{}\n", identity.to_json()));
    let text = tera::Tera::one_off(TEMPLATE, &context, false)
        .expect("the user-data template renders any checked input");
    Ok(text)
}

/// The line cloud-init prints before a machine's host keys on its console.
pub const HOST_KEYS_BEGIN: &str = "-----BEGIN SSH HOST KEY KEYS-----";
/// And after them.
pub const HOST_KEYS_END: &str = "-----END SSH HOST KEY KEYS-----";

/// The host keys (`TYPE BASE64`, comments dropped) a console shows between
/// [`HOST_KEYS_BEGIN`] and [`HOST_KEYS_END`], in the order printed. Only
/// the last such block counts (a reboot prints it again; an earlier one may
/// be from an image's previous life). Lines may carry a console prefix
/// (`[  12.3] ` or `ci-info: `): a key is found anywhere in its line. Junk
/// between the markers is skipped, not an error.
pub fn host_keys_in_console(console: &str) -> Vec<String> {
    let lines: Vec<&str> = console.lines().collect();
    let Some(end) = lines.iter().rposition(|l| l.contains(HOST_KEYS_END)) else {
        return Vec::new();
    };
    let Some(begin) = lines[..end]
        .iter()
        .rposition(|l| l.contains(HOST_KEYS_BEGIN))
    else {
        return Vec::new();
    };
    lines[begin + 1..end]
        .iter()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.windows(2).find_map(|w| {
                let line = format!("{} {}", w[0], w[1]);
                check_public_key(&line).ok().map(|()| line)
            })
        })
        .collect()
}

/// The key to pin of those a console showed: ed25519 first, then ECDSA,
/// then RSA (what the service's SSH client prefers).
pub fn preferred_host_key(keys: &[String]) -> Option<&String> {
    ["ssh-ed25519 ", "ecdsa-sha2-nistp256 ", "ssh-rsa "]
        .iter()
        .find_map(|kind| keys.iter().find(|k| k.starts_with(kind)))
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
        assert_eq!(v["ssh"]["emit_keys_to_console"], true);
        assert_eq!(v["ssh_key_console_blacklist"], serde_json::json!([]));
    }

    #[test]
    fn host_keys_are_read_from_the_last_block_on_the_console() {
        let console = "\
[    1.0] booting
-----BEGIN SSH HOST KEY KEYS-----
ssh-ed25519 AAAAold root@old
-----END SSH HOST KEY KEYS-----
[   30.1] rebooting
ci-info: no authorized keys
-----BEGIN SSH HOST KEY KEYS-----
ecdsa-sha2-nistp256 AAAAE2VjZHNh root@web-cp-0
[   31.2] ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINew root@web-cp-0
not a key $(reboot)
ssh-rsa AAAAB3NzaC1yc2E= root@web-cp-0
-----END SSH HOST KEY KEYS-----
login:
";
        let keys = host_keys_in_console(console);
        assert_eq!(
            keys,
            vec![
                "ecdsa-sha2-nistp256 AAAAE2VjZHNh".to_string(),
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINew".to_string(),
                "ssh-rsa AAAAB3NzaC1yc2E=".to_string(),
            ]
        );
        assert_eq!(
            preferred_host_key(&keys).map(String::as_str),
            Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINew")
        );
        // No block, or a block not yet ended: nothing to pin.
        assert!(host_keys_in_console("booting\n").is_empty());
        assert!(
            host_keys_in_console("-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAA\n")
                .is_empty()
        );
        assert_eq!(preferred_host_key(&[]), None);
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
