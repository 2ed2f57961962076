//! Encryption of secrets at rest: AES-256-GCM with a random 96-bit nonce
//! per value, the owning cluster and secret name bound in as associated
//! data (a ciphertext moved to another row does not decrypt), and a key id
//! stored beside each value so keys can be rotated.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::anyhow;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A sealed value.
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The service's data-encryption key.
#[derive(Clone)]
pub struct SecretBox {
    key_id: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SecretBox {
    /// From 32 raw key bytes. The key id is derived from the key, so it
    /// names the key without revealing it.
    pub fn new(key: &[u8]) -> anyhow::Result<Self> {
        let cipher =
            Aes256Gcm::new_from_slice(key).map_err(|_| anyhow!("secret key must be 32 bytes"))?;
        let digest = Sha256::digest(key);
        Ok(Self {
            key_id: format!("k1-{}", hex::encode(&digest[..6])),
            cipher,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> anyhow::Result<Sealed> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| anyhow!("encryption failed"))?;
        Ok(Sealed {
            key_id: self.key_id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    pub fn open(&self, aad: &[u8], sealed: &Sealed) -> anyhow::Result<Vec<u8>> {
        if sealed.key_id != self.key_id {
            return Err(anyhow!(
                "secret was sealed with key {}, not {}",
                sealed.key_id,
                self.key_id
            ));
        }
        if sealed.nonce.len() != 12 {
            return Err(anyhow!("bad nonce length"));
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map_err(|_| anyhow!("secret failed authentication"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let b = SecretBox::new(&[7u8; 32]).unwrap();
        let s = b.seal(b"cluster-1/ca.key", b"very secret").unwrap();
        assert!(!s.ciphertext.windows(6).any(|w| w == b"secret"));
        assert_eq!(b.open(b"cluster-1/ca.key", &s).unwrap(), b"very secret");
        assert!(b.open(b"cluster-2/ca.key", &s).is_err());
        let other = SecretBox::new(&[8u8; 32]).unwrap();
        assert!(other.open(b"cluster-1/ca.key", &s).is_err());
    }
}
