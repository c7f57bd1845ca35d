//! Resources at rest: AES-256-GCM (ring) under the resource key, a random
//! 12-byte nonce per write kept beside the ciphertext, and the resource path
//! (`repo/type/tag`) as associated data, so a ciphertext moved to another
//! path in the database no longer opens.

use super::ResourcePath;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Why a resource could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the system random number generator failed; check /dev/urandom and retry")]
    Random,
    #[error("resource {0} does not decrypt under the configured resource key (wrong key, or the row was tampered with); check resource_key / TELLUS_VERIFIER_RESOURCE_KEY")]
    Open(String),
    #[error("encrypting resource {0} failed; retry")]
    Seal(String),
}

/// A sealed resource as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedResource {
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
}

/// The AES-256 key resources are sealed under.
pub struct ResourceKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResourceKey(..)")
    }
}

impl ResourceKey {
    /// A key from 32 raw bytes.
    pub fn new(bytes: &[u8; 32]) -> ResourceKey {
        // AES_256_GCM takes exactly 32 bytes, which the type guarantees.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256 key is 32 bytes");
        ResourceKey { key: LessSafeKey::new(unbound) }
    }

    /// Encrypts `plaintext` for storage at `path`.
    pub fn seal(
        &self,
        rng: &SystemRandom,
        path: &ResourcePath,
        plaintext: &[u8],
    ) -> Result<SealedResource, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut ciphertext = plaintext.to_vec();
        let aad = path.to_string();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut ciphertext,
            )
            .map_err(|_| SealError::Seal(aad.clone()))?;
        Ok(SealedResource { nonce, ciphertext })
    }

    /// Decrypts a resource read from `path`.
    pub fn open(&self, path: &ResourcePath, sealed: &SealedResource) -> Result<Vec<u8>, SealError> {
        let mut buf = sealed.ciphertext.clone();
        let aad = path.to_string();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Open(aad.clone()))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_path_binding() {
        let rng = SystemRandom::new();
        let k = ResourceKey::new(&[7u8; 32]);
        let p = ResourcePath::new("default", "key", "a").unwrap();
        let q = ResourcePath::new("default", "key", "b").unwrap();
        let s = k.seal(&rng, &p, b"secret").unwrap();
        assert_eq!(s.ciphertext.len(), 6 + 16);
        assert_eq!(k.open(&p, &s).unwrap(), b"secret");
        assert!(k.open(&q, &s).is_err());
        assert!(ResourceKey::new(&[8u8; 32]).open(&p, &s).is_err());
        let s2 = k.seal(&rng, &p, b"secret").unwrap();
        assert_ne!(s.nonce, s2.nonce);
    }
}
