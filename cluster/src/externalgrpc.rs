//! The upstream cluster-autoscaler's `externalgrpc` cloud provider, as
//! Kubeforge hands it out: the `--cloud-config` file that provider reads,
//! where the credentials it names live, and how long they may live.
//!
//! Guarantees: the file has exactly the four keys the provider needs
//! (`address`, `key`, `cert`, `cacert`), each value a YAML double-quoted
//! scalar with every quote, backslash and control character escaped, so
//! no address or path can add a key or a line; nothing here reads a
//! file, the clock or the network.

use chrono::TimeDelta;

/// Where the credentials go on the autoscaler's machine (or in its pod).
pub const CREDENTIALS_DIR: &str = "/etc/kubeforge-autoscaler";
/// The client key file's name in [`CREDENTIALS_DIR`] (or the CLI's `--out-dir`).
pub const KEY_FILE: &str = "tls.key";
/// The client certificate file's name.
pub const CERT_FILE: &str = "tls.crt";
/// The endpoint CA file's name.
pub const CA_FILE: &str = "ca.crt";
/// The cloud-config file's name, when the CLI writes one.
pub const CLOUD_CONFIG_FILE: &str = "cloud-config.yaml";

/// A client certificate's lifetime when the request names none.
pub const DEFAULT_CREDENTIALS_TTL: TimeDelta = TimeDelta::days(90);
/// The shortest lifetime that may be asked for.
pub const MIN_CREDENTIALS_TTL: TimeDelta = TimeDelta::hours(1);
/// The longest lifetime that may be asked for.
pub const MAX_CREDENTIALS_TTL: TimeDelta = TimeDelta::days(365);

/// The CN of a client certificate naming one cluster: `cluster:<id>`.
pub const CLIENT_CN_PREFIX: &str = "cluster:";
/// The URI SAN of a client certificate naming one cluster:
/// `kubeforge://clusters/<id>`.
pub const CLIENT_URI_PREFIX: &str = "kubeforge://clusters/";

/// The four settings of the provider's cloud-config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    /// `host:port` of the gRPC endpoint.
    pub address: String,
    /// Path of the client key.
    pub key: String,
    /// Path of the client certificate.
    pub cert: String,
    /// Path of the CA that signs the endpoint's serving certificate.
    pub cacert: String,
}

impl CloudConfig {
    /// The files [`KEY_FILE`], [`CERT_FILE`] and [`CA_FILE`] in `dir`
    /// (given without a trailing slash; one is tolerated).
    pub fn in_dir(address: &str, dir: &str) -> Self {
        let dir = if dir.len() > 1 {
            dir.trim_end_matches('/')
        } else {
            dir
        };
        let join = |file: &str| {
            if dir.ends_with('/') {
                format!("{dir}{file}")
            } else {
                format!("{dir}/{file}")
            }
        };
        Self {
            address: address.to_string(),
            key: join(KEY_FILE),
            cert: join(CERT_FILE),
            cacert: join(CA_FILE),
        }
    }

    /// The file as the service hands it out: paths in [`CREDENTIALS_DIR`].
    pub fn standard(address: &str) -> Self {
        Self::in_dir(address, CREDENTIALS_DIR)
    }

    /// The YAML text, one `key: "value"` line per setting after a comment
    /// saying how to use it.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# cluster-autoscaler --cloud-provider=externalgrpc --cloud-config=<this file>\n",
        );
        for (key, value) in [
            ("address", &self.address),
            ("key", &self.key),
            ("cert", &self.cert),
            ("cacert", &self.cacert),
        ] {
            out.push_str(key);
            out.push_str(": ");
            out.push_str(&yaml_quoted(value));
            out.push('\n');
        }
        out
    }
}

/// A YAML double-quoted scalar: `"` and `\` escaped, control characters
/// (and DEL, which YAML does not count as printable) as `\uXXXX`.
fn yaml_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the rendered file back: one `key: "value"` per line after the
    /// comment, each value a string JSON and YAML read alike.
    fn parse(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once(": ").expect("key: value");
                (
                    k.to_string(),
                    serde_json::from_str::<String>(v).expect("quoted"),
                )
            })
            .collect()
    }

    #[test]
    fn the_standard_file_points_at_the_credentials_dir() {
        let text = CloudConfig::standard("grpc.example.com:8443").render();
        assert_eq!(
            text,
            "# cluster-autoscaler --cloud-provider=externalgrpc --cloud-config=<this file>\n\
             address: \"grpc.example.com:8443\"\n\
             key: \"/etc/kubeforge-autoscaler/tls.key\"\n\
             cert: \"/etc/kubeforge-autoscaler/tls.crt\"\n\
             cacert: \"/etc/kubeforge-autoscaler/ca.crt\"\n"
        );
    }

    #[test]
    fn paths_join_the_dir_once() {
        for dir in ["/tmp/x", "/tmp/x/", "/tmp/x//"] {
            assert_eq!(CloudConfig::in_dir("a:1", dir).key, "/tmp/x/tls.key");
        }
        assert_eq!(CloudConfig::in_dir("a:1", "/").cacert, "/ca.crt");
        assert_eq!(CloudConfig::in_dir("a:1", "rel").cert, "rel/tls.crt");
    }

    #[test]
    fn nothing_in_a_value_adds_a_key_or_a_line() {
        let hostile = "x\"\nkey: /etc/shadow\\\u{7f}\t";
        let config = CloudConfig::in_dir(hostile, "/d\"ir\nx");
        let text = config.render();
        assert_eq!(text.lines().count(), 5, "{text}");
        let got = parse(&text);
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["address", "key", "cert", "cacert"]);
        assert_eq!(got[0].1, hostile);
        assert_eq!(got[1].1, config.key);
    }

    #[test]
    fn ttl_bounds_are_ordered() {
        assert!(MIN_CREDENTIALS_TTL < DEFAULT_CREDENTIALS_TTL);
        assert!(DEFAULT_CREDENTIALS_TTL < MAX_CREDENTIALS_TTL);
    }
}
