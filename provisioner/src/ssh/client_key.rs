//! The service's own SSH identity and helpers for public key lines.
//!
//! Kubeforge logs into machines with one ed25519 key pair of its own,
//! kept in the data dir (mode 0600) and created on first start. Machines
//! trust its public key line (`ssh-ed25519 AAAA... kubeforge`); hosts are
//! identified by their SHA256 fingerprint, the form `ssh-keygen -l`
//! prints, in logs and errors.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use rand::RngCore as _;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey};

use super::{SshAuth, SshError};

/// The comment put on keys Kubeforge generates.
pub const CLIENT_KEY_COMMENT: &str = "kubeforge";

/// A private key with its public half, as Kubeforge uses it to log in.
///
/// `Debug` shows the public line and fingerprint only.
#[derive(Clone)]
pub struct ClientKey {
    private_openssh: String,
    public_line: String,
    fingerprint: String,
}

impl ClientKey {
    /// Generates a fresh ed25519 key pair from the OS random source.
    pub fn generate() -> Result<Self, SshError> {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        seed.fill(0);
        key.set_comment(CLIENT_KEY_COMMENT);
        Self::from_private_key(&key)
    }

    /// Parses an unencrypted OpenSSH private key (`-----BEGIN OPENSSH
    /// PRIVATE KEY-----`).
    pub fn from_openssh(pem: &str) -> Result<Self, SshError> {
        let key = parse_private_key(pem)?;
        Self::from_private_key(&key)
    }

    fn from_private_key(key: &PrivateKey) -> Result<Self, SshError> {
        let private_openssh = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| SshError::InvalidClientKey(e.to_string()))?
            .to_string();
        let public = key.public_key();
        Ok(Self {
            private_openssh,
            public_line: public_key_line(public)?,
            fingerprint: fingerprint(public),
        })
    }

    /// The private key in OpenSSH format. A secret: never log it.
    pub fn private_key_openssh(&self) -> &str {
        &self.private_openssh
    }

    /// The `authorized_keys` line: `ssh-ed25519 AAAA... kubeforge`.
    pub fn public_key_line(&self) -> &str {
        &self.public_line
    }

    /// `SHA256:...` of the public key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Credentials for [`SshExecutor`](super::SshExecutor) calls.
    pub fn auth(&self) -> SshAuth {
        SshAuth::PrivateKey(self.private_openssh.clone())
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("public_line", &self.public_line)
            .field("fingerprint", &self.fingerprint)
            .field("private_openssh", &"[REDACTED]")
            .finish()
    }
}

/// Reads the client key at `path`, or generates one and writes it there
/// with mode 0600 (parent directories created). The file is written under
/// a temporary name and renamed, so a crash never leaves half a key.
pub fn load_or_create_client_key(path: &Path) -> Result<ClientKey, SshError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => ClientKey::from_openssh(&pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ClientKey::generate()?;
            write_client_key(path, &key)?;
            tracing::info!(
                path = %path.display(),
                fingerprint = key.fingerprint(),
                "created the SSH client key"
            );
            Ok(key)
        }
        Err(e) => Err(SshError::KeyFile {
            path: path.display().to_string(),
            source: e,
        }),
    }
}

/// Writes `key` to `path` (mode 0600, its directory made if missing),
/// atomically: a reader sees the old file or the new one, never half.
pub fn write_client_key(path: &Path, key: &ClientKey) -> Result<(), SshError> {
    let key_file_error = |source| SshError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(key_file_error)?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = Path::new(&tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)?;
        f.write_all(key.private_key_openssh().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        key_file_error(e)
    })
}

/// Parses a public key line (`ssh-ed25519 AAAA... [comment]`).
pub fn parse_public_key(line: &str) -> Result<PublicKey, SshError> {
    PublicKey::from_openssh(line.trim()).map_err(|e| SshError::InvalidHostKey(e.to_string()))
}

/// The `SHA256:...` fingerprint of a public key line.
pub fn public_key_line_fingerprint(line: &str) -> Result<String, SshError> {
    parse_public_key(line).map(|key| fingerprint(&key))
}

/// The `SHA256:...` fingerprint of a key, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The OpenSSH line of a public key, with its comment if it has one.
pub fn public_key_line(key: &PublicKey) -> Result<String, SshError> {
    key.to_openssh()
        .map_err(|e| SshError::InvalidHostKey(e.to_string()))
}

pub(crate) fn parse_private_key(pem: &str) -> Result<PrivateKey, SshError> {
    let key = PrivateKey::from_openssh(pem.trim())
        .map_err(|e| SshError::InvalidClientKey(e.to_string()))?;
    if key.is_encrypted() {
        return Err(SshError::InvalidClientKey(
            "the private key is passphrase-protected".into(),
        ));
    }
    Ok(key)
}
