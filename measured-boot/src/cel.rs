//! TCG Canonical Event Log (CEL), TLV and JSON forms.
//!
//! A CEL-TLV log is a sequence of records; each record is a sequence of TLVs
//! (type: u8, length: u32 big-endian, value):
//!
//! ```text
//! recnum  (type 0, unsigned big-endian, up to 8 bytes)
//! handle  (type 1 PCR | 2 NV index | 108 CCMR, unsigned, up to 4 bytes)
//! digests (type 3, nested TLVs: type = TPM_ALG_ID, value = digest)
//! content (type = content type, value = content-specific)
//! ```
//!
//! Content types: 4 CEL management, 5 PC Client standard event, 7 IMA
//! template, 8 IMA TLV, and [`CONTENT_TELLUS`] for tellus launch records.
//! Content of other types (e.g. 80, Google COS events) is carried as raw
//! bytes. Integers keep the width they were read with, so decode → encode is
//! byte-identical.
//!
//! Written by hand: no maintained Rust crate implements CEL.

use crate::digest::{Digest, HashAlg};
use crate::pcr::{PcrBanks, PcrError};
use crate::records::{LaunchRecord, RecordError};
use base64::Engine;
use serde_json::{json, Value};

/// TLV type of the record number.
pub const TYPE_RECNUM: u8 = 0;
/// TLV type of a PCR handle.
pub const TYPE_PCR: u8 = 1;
/// TLV type of an NV-index handle.
pub const TYPE_NV_INDEX: u8 = 2;
/// TLV type of the digest list.
pub const TYPE_DIGESTS: u8 = 3;
/// Handle type used by go-eventlog for confidential-computing measurement
/// registers (TDX RTMRs).
pub const TYPE_CCMR: u8 = 108;
/// Content type: CEL management event.
pub const CONTENT_CEL_MGMT: u8 = 4;
/// Content type: PC Client standard event (event type + event data).
pub const CONTENT_PCCLIENT_STD: u8 = 5;
/// Content type: IMA template event.
pub const CONTENT_IMA_TEMPLATE: u8 = 7;
/// Content type: IMA TLV event.
pub const CONTENT_IMA_TLV: u8 = 8;
/// Content type of tellus launch records ('t'). The record's digest in each
/// bank is the hash of the complete content TLV (type, length and value), so
/// a verifier recomputes it from the log alone.
pub const CONTENT_TELLUS: u8 = 0x74;

/// Largest log accepted by [`decode`] (256 MiB).
pub const MAX_LOG: usize = 256 << 20;
/// Most records accepted by [`decode`].
pub const MAX_RECORDS: usize = 1_000_000;

/// Errors of CEL decoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CelError {
    #[error("CEL truncated at byte {offset}: {what} needs {need} bytes, {have} left")]
    Truncated { offset: usize, what: &'static str, need: u64, have: usize },
    #[error("CEL record {index} at byte {offset}: expected {expected}, found TLV type {found}")]
    UnexpectedType { index: usize, offset: usize, expected: &'static str, found: u8 },
    #[error("CEL record {index}: {what} is {len} bytes, at most {max} allowed")]
    IntTooWide { index: usize, what: &'static str, len: usize, max: usize },
    #[error("CEL record {index}: digest TLV for algorithm 0x{alg:02x} is {len} bytes, expected {expected}")]
    DigestSize { index: usize, alg: u8, len: usize, expected: usize },
    #[error("CEL record {index}: algorithm 0x{alg:02x} appears twice")]
    DuplicateDigest { index: usize, alg: u8 },
    #[error("CEL log is {0} bytes, more than the {MAX_LOG}-byte limit")]
    TooLarge(usize),
    #[error("CEL log has more than {MAX_RECORDS} records")]
    TooManyRecords,
    #[error("CEL JSON: {0}")]
    Json(String),
}

/// Which register a record extends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    Pcr(u32),
    NvIndex(u32),
    Ccmr(u32),
}

impl Handle {
    fn tlv_type(self) -> u8 {
        match self {
            Handle::Pcr(_) => TYPE_PCR,
            Handle::NvIndex(_) => TYPE_NV_INDEX,
            Handle::Ccmr(_) => TYPE_CCMR,
        }
    }
    fn index(self) -> u32 {
        match self {
            Handle::Pcr(i) | Handle::NvIndex(i) | Handle::Ccmr(i) => i,
        }
    }
}

/// One digest of a record; `alg` is the TLV type (the low byte of the TPM_ALG_ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CelDigest {
    pub alg: u8,
    pub bytes: Vec<u8>,
}

impl CelDigest {
    /// The digest as a typed [`Digest`], when the algorithm is known.
    pub fn digest(&self) -> Option<Digest> {
        let alg = HashAlg::from_tpm_alg_id(u16::from(self.alg))?;
        Digest::new(alg, self.bytes.clone()).ok()
    }
}

/// One CEL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CelRecord {
    pub recnum: u64,
    pub handle: Handle,
    pub digests: Vec<CelDigest>,
    pub content_type: u8,
    /// The content TLV's value, as logged.
    pub content: Vec<u8>,
    /// Byte widths of recnum and handle (for byte-identical re-encoding).
    widths: (u8, u8),
}

impl CelRecord {
    /// A tellus launch record: the digest in each bank of `banks` is the hash
    /// of the content TLV.
    pub fn tellus(recnum: u64, pcr: u32, record: &LaunchRecord, banks: &[HashAlg]) -> CelRecord {
        let content = record.encode_content();
        let tlv = content_tlv(CONTENT_TELLUS, &content);
        let digests = banks
            .iter()
            .map(|&a| CelDigest {
                alg: tpm_alg_byte(a),
                bytes: Digest::of(a, &tlv).as_bytes().to_vec(),
            })
            .collect();
        CelRecord {
            recnum,
            handle: Handle::Pcr(pcr),
            digests,
            content_type: CONTENT_TELLUS,
            content,
            widths: (8, 4),
        }
    }

    /// The complete content TLV (type, length, value) as logged.
    pub fn content_tlv(&self) -> Vec<u8> {
        content_tlv(self.content_type, &self.content)
    }

    /// The decoded tellus launch record, for content type [`CONTENT_TELLUS`].
    pub fn launch_record(&self) -> Option<Result<LaunchRecord, RecordError>> {
        (self.content_type == CONTENT_TELLUS).then(|| LaunchRecord::decode_content(&self.content))
    }

    /// For tellus records: the algorithms whose logged digest differs from
    /// the hash of the content TLV. Empty when all match (or not a tellus record).
    pub fn digest_mismatches(&self) -> Vec<u8> {
        if self.content_type != CONTENT_TELLUS {
            return Vec::new();
        }
        let tlv = self.content_tlv();
        self.digests
            .iter()
            .filter(|d| match HashAlg::from_tpm_alg_id(u16::from(d.alg)) {
                Some(a) => Digest::of(a, &tlv).as_bytes() != d.bytes.as_slice(),
                None => false,
            })
            .map(|d| d.alg)
            .collect()
    }
}

fn tpm_alg_byte(a: HashAlg) -> u8 {
    // Every supported TPM_ALG_ID is below 0x100.
    (a.tpm_alg_id() & 0xff) as u8
}

fn content_tlv(t: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + value.len());
    put_tlv(&mut out, t, value);
    out
}

fn put_tlv(out: &mut Vec<u8>, t: u8, value: &[u8]) {
    out.push(t);
    // Values come from our own types, far below 4 GiB.
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

fn put_int(out: &mut Vec<u8>, t: u8, v: u64, width: u8) {
    let bytes = v.to_be_bytes();
    put_tlv(out, t, &bytes[8 - usize::from(width)..]);
}

/// Encodes records as CEL-TLV.
pub fn encode(records: &[CelRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        put_int(&mut out, TYPE_RECNUM, r.recnum, r.widths.0);
        put_int(&mut out, r.handle.tlv_type(), u64::from(r.handle.index()), r.widths.1);
        let mut d = Vec::new();
        for dg in &r.digests {
            put_tlv(&mut d, dg.alg, &dg.bytes);
        }
        put_tlv(&mut out, TYPE_DIGESTS, &d);
        put_tlv(&mut out, r.content_type, &r.content);
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn tlv(&mut self, what: &'static str) -> Result<(u8, &'a [u8]), CelError> {
        let start = self.pos;
        let have = self.buf.len() - self.pos;
        let hdr = self.buf.get(self.pos..self.pos + 5).ok_or(CelError::Truncated {
            offset: start,
            what,
            need: 5,
            have,
        })?;
        let t = hdr[0];
        let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]);
        let body_start = self.pos + 5;
        let value = usize::try_from(len)
            .ok()
            .and_then(|l| self.buf.get(body_start..body_start.checked_add(l)?))
            .ok_or(CelError::Truncated { offset: start, what, need: 5 + u64::from(len), have })?;
        self.pos = body_start + value.len();
        Ok((t, value))
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

fn be_int(index: usize, what: &'static str, v: &[u8], max: usize) -> Result<u64, CelError> {
    if v.len() > max || v.is_empty() {
        return Err(CelError::IntTooWide { index, what, len: v.len(), max });
    }
    Ok(v.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Decodes a CEL-TLV log. Every length is checked against the input.
pub fn decode(bytes: &[u8]) -> Result<Vec<CelRecord>, CelError> {
    if bytes.len() > MAX_LOG {
        return Err(CelError::TooLarge(bytes.len()));
    }
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut out = Vec::new();
    while !r.done() {
        let index = out.len();
        if index >= MAX_RECORDS {
            return Err(CelError::TooManyRecords);
        }
        let at = r.pos;
        let (t, v) = r.tlv("recnum")?;
        if t != TYPE_RECNUM {
            return Err(CelError::UnexpectedType {
                index,
                offset: at,
                expected: "recnum (0)",
                found: t,
            });
        }
        let recnum = be_int(index, "recnum", v, 8)?;
        let rw = v.len() as u8;
        let at = r.pos;
        let (t, v) = r.tlv("handle")?;
        let hv = be_int(index, "handle", v, 4)? as u32;
        let hw = v.len() as u8;
        let handle = match t {
            TYPE_PCR => Handle::Pcr(hv),
            TYPE_NV_INDEX => Handle::NvIndex(hv),
            TYPE_CCMR => Handle::Ccmr(hv),
            found => {
                return Err(CelError::UnexpectedType {
                    index,
                    offset: at,
                    expected: "handle (1 PCR, 2 NV index, 108 CCMR)",
                    found,
                })
            }
        };
        let at = r.pos;
        let (t, v) = r.tlv("digests")?;
        if t != TYPE_DIGESTS {
            return Err(CelError::UnexpectedType {
                index,
                offset: at,
                expected: "digests (3)",
                found: t,
            });
        }
        let mut dr = Reader { buf: v, pos: 0 };
        let mut digests: Vec<CelDigest> = Vec::new();
        while !dr.done() {
            let (alg, d) = dr.tlv("digest")?;
            if let Some(a) = HashAlg::from_tpm_alg_id(u16::from(alg)) {
                if d.len() != a.size() {
                    return Err(CelError::DigestSize {
                        index,
                        alg,
                        len: d.len(),
                        expected: a.size(),
                    });
                }
            }
            if digests.iter().any(|x| x.alg == alg) {
                return Err(CelError::DuplicateDigest { index, alg });
            }
            digests.push(CelDigest { alg, bytes: d.to_vec() });
        }
        let (content_type, content) = r.tlv("content")?;
        out.push(CelRecord {
            recnum,
            handle,
            digests,
            content_type,
            content: content.to_vec(),
            widths: (rw, hw),
        });
    }
    Ok(out)
}

/// Replays PCR-handle records into PCR banks (records for NV indexes and
/// CCMRs are not PCR extends and are skipped). Digests of unknown algorithms
/// are skipped too.
pub fn replay(records: &[CelRecord]) -> Result<PcrBanks, PcrError> {
    let mut banks = PcrBanks::new();
    for r in records {
        if let Handle::Pcr(pcr) = r.handle {
            for d in &r.digests {
                if let Some(a) = HashAlg::from_tpm_alg_id(u16::from(d.alg)) {
                    banks.extend(a, pcr, &d.bytes)?;
                }
            }
        }
    }
    Ok(banks)
}

fn content_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        CONTENT_CEL_MGMT => "cel",
        CONTENT_PCCLIENT_STD => "pcclient_std",
        CONTENT_IMA_TEMPLATE => "ima_template",
        CONTENT_IMA_TLV => "ima_tlv",
        CONTENT_TELLUS => "tellus",
        _ => return None,
    })
}

/// The CEL-JSON form of one record: `{"recnum", "pcr"|"nv_index"|"ccmr",
/// "digests": [{"hashAlg", "digest"}], "content_type", "content"}`. Tellus
/// content is shown decoded (with its raw bytes in `content_raw` for exact
/// decoding); other content as base64.
pub fn record_to_json(r: &CelRecord) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let digests: Vec<Value> = r
        .digests
        .iter()
        .map(|d| {
            let name = HashAlg::from_tpm_alg_id(u16::from(d.alg))
                .map(|a| a.name().to_string())
                .unwrap_or_else(|| format!("0x{:02x}", d.alg));
            json!({ "hashAlg": name, "digest": hex::encode(&d.bytes) })
        })
        .collect();
    let mut o = serde_json::Map::new();
    o.insert("recnum".into(), json!(r.recnum));
    let key = match r.handle {
        Handle::Pcr(_) => "pcr",
        Handle::NvIndex(_) => "nv_index",
        Handle::Ccmr(_) => "ccmr",
    };
    o.insert(key.into(), json!(r.handle.index()));
    o.insert("digests".into(), Value::Array(digests));
    o.insert(
        "content_type".into(),
        content_type_name(r.content_type).map(Value::from).unwrap_or(json!(r.content_type)),
    );
    if let Some(Ok(rec)) = r.launch_record() {
        o.insert("content".into(), rec.to_json());
    }
    o.insert("content_raw".into(), json!(b64.encode(&r.content)));
    o.insert("widths".into(), json!([r.widths.0, r.widths.1]));
    Value::Object(o)
}

/// Decodes one record from its JSON form (as written by [`record_to_json`]).
pub fn record_from_json(v: &Value) -> Result<CelRecord, CelError> {
    let err = |m: &str| CelError::Json(m.to_string());
    let recnum = v.get("recnum").and_then(Value::as_u64).ok_or_else(|| err("recnum missing"))?;
    let idx = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .map(|x| u32::try_from(x).map_err(|_| err("handle too large")))
    };
    let handle = if let Some(i) = idx("pcr") {
        Handle::Pcr(i?)
    } else if let Some(i) = idx("nv_index") {
        Handle::NvIndex(i?)
    } else if let Some(i) = idx("ccmr") {
        Handle::Ccmr(i?)
    } else {
        return Err(err("one of pcr, nv_index, ccmr is required"));
    };
    let mut digests = Vec::new();
    for d in v.get("digests").and_then(Value::as_array).ok_or_else(|| err("digests missing"))? {
        let name =
            d.get("hashAlg").and_then(Value::as_str).ok_or_else(|| err("hashAlg missing"))?;
        let alg = match HashAlg::from_name(name) {
            Some(a) => tpm_alg_byte(a),
            None => name
                .strip_prefix("0x")
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| CelError::Json(format!("unknown hashAlg '{name}'")))?,
        };
        let hexd = d.get("digest").and_then(Value::as_str).ok_or_else(|| err("digest missing"))?;
        digests.push(CelDigest {
            alg,
            bytes: hex::decode(hexd).map_err(|_| err("digest is not hex"))?,
        });
    }
    let content_type =
        match v.get("content_type") {
            Some(Value::String(s)) => (0..=255u8)
                .find(|t| content_type_name(*t) == Some(s.as_str()))
                .ok_or_else(|| CelError::Json(format!("unknown content_type '{s}'")))?,
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| err("content_type out of range"))?,
            _ => return Err(err("content_type missing")),
        };
    let raw =
        v.get("content_raw").and_then(Value::as_str).ok_or_else(|| err("content_raw missing"))?;
    let content = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|_| err("content_raw is not base64"))?;
    let widths = match v.get("widths").and_then(Value::as_array).map(Vec::as_slice) {
        Some([a, b]) => (
            a.as_u64().filter(|w| (1..=8).contains(w)).ok_or_else(|| err("bad recnum width"))?
                as u8,
            b.as_u64().filter(|w| (1..=4).contains(w)).ok_or_else(|| err("bad handle width"))?
                as u8,
        ),
        _ => (8, 4),
    };
    Ok(CelRecord { recnum, handle, digests, content_type, content, widths })
}

/// The whole log as a JSON array.
pub fn to_json(records: &[CelRecord]) -> Value {
    Value::Array(records.iter().map(record_to_json).collect())
}

/// Decodes a JSON array of records.
pub fn from_json(v: &Value) -> Result<Vec<CelRecord>, CelError> {
    v.as_array()
        .ok_or_else(|| CelError::Json("a CEL-JSON log is an array of records".into()))?
        .iter()
        .map(record_from_json)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<CelRecord> {
        let rec = LaunchRecord::cmdline("console=ttyS0");
        vec![
            CelRecord::tellus(0, 13, &rec, &[HashAlg::Sha256, HashAlg::Sha384]),
            CelRecord::tellus(
                1,
                13,
                &LaunchRecord::separator(),
                &[HashAlg::Sha256, HashAlg::Sha384],
            ),
        ]
    }

    #[test]
    fn round_trips() {
        let recs = sample();
        let bytes = encode(&recs);
        let back = decode(&bytes).unwrap();
        assert_eq!(back, recs);
        assert_eq!(encode(&back), bytes);
        let j = to_json(&recs);
        assert_eq!(from_json(&j).unwrap(), recs);
        assert_eq!(j[0]["content"]["kind"], "cmdline");
        assert!(recs.iter().all(|r| r.digest_mismatches().is_empty()));
    }

    #[test]
    fn tampered_content_is_a_mismatch() {
        let mut r = sample().remove(0);
        let n = r.content.len();
        r.content[n - 2] ^= 1;
        assert_eq!(r.digest_mismatches().len(), 2);
    }

    #[test]
    fn bad_input() {
        assert_eq!(decode(&[]).unwrap(), vec![]);
        let bytes = encode(&sample());
        for n in 0..bytes.len() {
            let _ = decode(&bytes[..n]); // never panics
        }
        assert!(matches!(decode(&bytes[..3]), Err(CelError::Truncated { .. })));
        // A 4 GiB length field.
        let mut huge = vec![0u8, 0xff, 0xff, 0xff, 0xff];
        huge.extend_from_slice(&[0; 8]);
        assert!(matches!(decode(&huge), Err(CelError::Truncated { need: 0x1_0000_0004, .. })));
        // Zero-length recnum.
        assert!(matches!(decode(&[0, 0, 0, 0, 0]), Err(CelError::IntTooWide { .. })));
        // Wrong first type.
        assert!(matches!(decode(&[9, 0, 0, 0, 1, 0]), Err(CelError::UnexpectedType { .. })));
        // SHA-256 digest of 20 bytes.
        let mut b = Vec::new();
        put_int(&mut b, TYPE_RECNUM, 0, 8);
        put_int(&mut b, TYPE_PCR, 13, 4);
        let mut d = Vec::new();
        put_tlv(&mut d, 0x0b, &[0; 20]);
        put_tlv(&mut b, TYPE_DIGESTS, &d);
        put_tlv(&mut b, CONTENT_TELLUS, &[]);
        assert!(matches!(decode(&b), Err(CelError::DigestSize { alg: 0x0b, len: 20, .. })));
        // Random bytes never panic.
        let mut x = 0x2545F4914F6CDD1Du64;
        for len in 0..2000usize {
            let v: Vec<u8> = (0..len % 200)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&v);
        }
    }

    #[test]
    fn replay_extends_pcr_handles_only() {
        let recs = sample();
        let banks = replay(&recs).unwrap();
        let mut expect = Digest::zero(HashAlg::Sha256);
        for r in &recs {
            expect = expect.extend(Digest::of(HashAlg::Sha256, &r.content_tlv()).as_bytes());
        }
        assert_eq!(banks.value(HashAlg::Sha256, 13), expect);
    }
}
