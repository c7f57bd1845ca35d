//! Hash algorithms (by their TPM 2.0 `TPM_ALG_ID`) and digests that carry
//! their algorithm.
//!
//! Hashing uses `ring`, whose SHA-1/SHA-2 code is the assembly of BoringSSL
//! (SHA-NI, AVX2 where present).

use std::fmt;
use std::io::Read;
use std::path::Path;

/// A hash algorithm a TPM PCR bank or an event log can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// Every supported algorithm.
    pub const ALL: [HashAlg; 4] =
        [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512];

    /// `TPM_ALG_ID` of the algorithm.
    pub fn tpm_alg_id(self) -> u16 {
        match self {
            HashAlg::Sha1 => 0x0004,
            HashAlg::Sha256 => 0x000B,
            HashAlg::Sha384 => 0x000C,
            HashAlg::Sha512 => 0x000D,
        }
    }

    /// The algorithm for a `TPM_ALG_ID`, if supported.
    pub fn from_tpm_alg_id(id: u16) -> Option<HashAlg> {
        HashAlg::ALL.into_iter().find(|a| a.tpm_alg_id() == id)
    }

    /// Digest size in bytes.
    pub fn size(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// Lower-case name (`sha256`), as used in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// Parses a name as printed by [`HashAlg::name`].
    pub fn from_name(name: &str) -> Option<HashAlg> {
        HashAlg::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    fn ring(self) -> &'static ring::digest::Algorithm {
        match self {
            HashAlg::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &ring::digest::SHA256,
            HashAlg::Sha384 => &ring::digest::SHA384,
            HashAlg::Sha512 => &ring::digest::SHA512,
        }
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for HashAlg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for HashAlg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HashAlg::from_name(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown hash algorithm '{s}'")))
    }
}

/// A digest together with its algorithm. Displays as `sha256:<hex>`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    alg: HashAlg,
    bytes: Vec<u8>,
}

/// A digest of the wrong length for its algorithm, or malformed text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("{alg} digest must be {expected} bytes, got {got}")]
    Length { alg: HashAlg, expected: usize, got: usize },
    #[error("'{0}' is not a digest; write it as ALG:HEX, e.g. sha256:ab12…")]
    Syntax(String),
    #[error("unknown hash algorithm '{0}'; use sha1, sha256, sha384 or sha512")]
    UnknownAlg(String),
}

impl Digest {
    /// Wraps `bytes`, checking the length.
    pub fn new(alg: HashAlg, bytes: Vec<u8>) -> Result<Digest, DigestError> {
        if bytes.len() != alg.size() {
            return Err(DigestError::Length { alg, expected: alg.size(), got: bytes.len() });
        }
        Ok(Digest { alg, bytes })
    }

    /// All-zero digest (the reset value of a PCR).
    pub fn zero(alg: HashAlg) -> Digest {
        Digest { alg, bytes: vec![0; alg.size()] }
    }

    /// Hash of `data`.
    pub fn of(alg: HashAlg, data: &[u8]) -> Digest {
        Digest { alg, bytes: ring::digest::digest(alg.ring(), data).as_ref().to_vec() }
    }

    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    pub fn to_base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    /// TPM extend: `H(self || other)`. `other` must use the same algorithm.
    pub fn extend(&self, other: &[u8]) -> Digest {
        let mut ctx = ring::digest::Context::new(self.alg.ring());
        ctx.update(&self.bytes);
        ctx.update(other);
        Digest { alg: self.alg, bytes: ctx.finish().as_ref().to_vec() }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg, self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Digest, DigestError> {
        let (alg, hex_part) = s.split_once(':').ok_or_else(|| DigestError::Syntax(s.into()))?;
        let alg = HashAlg::from_name(alg).ok_or_else(|| DigestError::UnknownAlg(alg.into()))?;
        let bytes = hex::decode(hex_part).map_err(|_| DigestError::Syntax(s.into()))?;
        Digest::new(alg, bytes)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Streaming hasher over several algorithms at once.
pub struct MultiHasher {
    ctxs: Vec<(HashAlg, ring::digest::Context)>,
}

impl MultiHasher {
    pub fn new(algs: &[HashAlg]) -> MultiHasher {
        MultiHasher {
            ctxs: algs.iter().map(|&a| (a, ring::digest::Context::new(a.ring()))).collect(),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        for (_, c) in &mut self.ctxs {
            c.update(data);
        }
    }

    pub fn finish(self) -> Vec<Digest> {
        self.ctxs
            .into_iter()
            .map(|(alg, c)| Digest { alg, bytes: c.finish().as_ref().to_vec() })
            .collect()
    }
}

/// Read size for file hashing: 64 KiB reads keep syscall overhead negligible
/// and the buffer small. (A 1 MiB buffer made glibc raise its mmap threshold
/// after the first free, so later buffers came from the brk heap and stayed
/// resident in the launcher for the VM's whole life: 0.7 MiB of its peak.)
const READ_CHUNK: usize = 64 << 10;

/// Hashes a file with every algorithm in `algs` in one pass; returns the
/// digests (in `algs` order) and the file size.
pub fn hash_file(path: &Path, algs: &[HashAlg]) -> std::io::Result<(Vec<Digest>, u64)> {
    let mut f = std::fs::File::open(path)?;
    hash_reader(&mut f, algs)
}

/// Like [`hash_file`] for any reader.
pub fn hash_reader(r: &mut impl Read, algs: &[HashAlg]) -> std::io::Result<(Vec<Digest>, u64)> {
    let mut h = MultiHasher::new(algs);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((h.finish(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(
            Digest::of(HashAlg::Sha256, b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            Digest::of(HashAlg::Sha384, b"abc").to_hex(),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(
            Digest::of(HashAlg::Sha1, b"abc").to_hex(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn display_parse_round_trip() {
        let d = Digest::of(HashAlg::Sha384, b"x");
        let s = d.to_string();
        assert!(s.starts_with("sha384:"));
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert!(matches!("sha256:abcd".parse::<Digest>(), Err(DigestError::Length { .. })));
        assert!(matches!("md5:abcd".parse::<Digest>(), Err(DigestError::UnknownAlg(_))));
        assert!(matches!("nocolon".parse::<Digest>(), Err(DigestError::Syntax(_))));
        assert_eq!(HashAlg::from_tpm_alg_id(0x000C), Some(HashAlg::Sha384));
        assert_eq!(HashAlg::from_tpm_alg_id(0x0012), None);
    }

    #[test]
    fn file_hash_matches_one_shot() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        std::io::Write::write_all(&mut f, &data).unwrap();
        let (ds, n) = hash_file(f.path(), &[HashAlg::Sha256, HashAlg::Sha384]).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(ds[0], Digest::of(HashAlg::Sha256, &data));
        assert_eq!(ds[1], Digest::of(HashAlg::Sha384, &data));
    }

    #[test]
    fn extend_is_hash_of_concatenation() {
        let z = Digest::zero(HashAlg::Sha256);
        let m = Digest::of(HashAlg::Sha256, b"m");
        let mut cat = vec![0u8; 32];
        cat.extend_from_slice(m.as_bytes());
        assert_eq!(z.extend(m.as_bytes()), Digest::of(HashAlg::Sha256, &cat));
    }
}
