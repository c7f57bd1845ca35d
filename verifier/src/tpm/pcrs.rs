//! PCR value files as tpm2-tools writes them (`tpm2_quote -o`,
//! `tpm2_pcrread -o`), selected by `-F/--pcrs_format`:
//!
//! - `serialized` (the default of tpm2-tools 5.x; keylime's `quotepcr.out`):
//!   the C structures dumped little-endian, `TPML_PCR_SELECTION` (u32 count,
//!   16 × 8-byte `TPMS_PCR_SELECTION` {u16 hash, u8 sizeofSelect, `u8[4]`
//!   pcrSelect, 1 pad byte}), a u32 count n, then n × `TPML_DIGEST` (u32
//!   count, 8 × `TPM2B_DIGEST` {u16 size, `u8[64]`}): 136 + 532 n bytes
//!   (tpm2-tools `lib/pcr.c` `pcr_fwrite_serialized`);
//! - `marshaled` (newer tpm2-tools): the same three parts in TPM (big-endian,
//!   variable-length) marshalling;
//! - `values`: the PCR values concatenated, in the quote's selection order;
//! - text as `tpm2_pcrread` prints it (`sha256:` then `  13: 0x…` lines).
//!
//! Digests follow the file's selection in order: banks in list order, PCRs
//! ascending.

use super::attest::{bitmap_pcrs, read_pcr_selection, PcrSelection};
use crate::tpm_types::marshal::Reader;
use crate::tpm_types::ParseError;
use tellus_measured_boot::{Digest, HashAlg, PcrBanks};

/// `sizeof(TPML_PCR_SELECTION)` in tpm2-tools' serialized form.
const SER_SELECTION: usize = 4 + 16 * 8;
/// `sizeof(TPML_DIGEST)` in tpm2-tools' serialized form.
const SER_DIGESTS: usize = 4 + 8 * (2 + 64);
/// Most `TPML_DIGEST`s (`TPM2_MAX_PCRS`).
const MAX_DIGEST_LISTS: u32 = 32;

/// Which encoding a PCR file used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcrsFormat {
    Serialized,
    Marshaled,
    Values,
    Text,
}

impl PcrsFormat {
    pub fn name(self) -> &'static str {
        match self {
            PcrsFormat::Serialized => "tpm2-tools serialized",
            PcrsFormat::Marshaled => "tpm2-tools marshaled",
            PcrsFormat::Values => "raw PCR values",
            PcrsFormat::Text => "tpm2_pcrread text",
        }
    }
}

/// Why a PCR file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PcrsFileError {
    #[error("PCR file ({format}): {reason}")]
    Invalid { format: &'static str, reason: String },
    #[error("PCR file ({format}): {source}")]
    Parse {
        format: &'static str,
        #[source]
        source: ParseError,
    },
    #[error(
        "PCR file: {len} bytes in no format tellus reads: not tpm2-tools serialized ({serialized}), \
         not marshaled ({marshaled}), not tpm2_pcrread text ({text}), and not the {values_len} \
         bytes of raw values the quote's selection ({selection}) needs"
    )]
    Unrecognised {
        len: usize,
        serialized: String,
        marshaled: String,
        text: String,
        values_len: usize,
        selection: String,
    },
}

fn invalid(format: PcrsFormat, reason: String) -> PcrsFileError {
    PcrsFileError::Invalid { format: format.name(), reason }
}

/// Reads a PCR file in any of the formats above; `quote_selection` (the
/// quote's `pcrSelect`) tells how to split `values` files.
pub fn parse_pcrs_file(
    bytes: &[u8],
    quote_selection: &[PcrSelection],
) -> Result<(PcrBanks, PcrsFormat), PcrsFileError> {
    let serialized = match parse_serialized(bytes) {
        Ok(b) => return Ok((b, PcrsFormat::Serialized)),
        Err(e) => e,
    };
    let marshaled = match parse_marshaled(bytes) {
        Ok(b) => return Ok((b, PcrsFormat::Marshaled)),
        Err(e) => e,
    };
    let text = match parse_text(bytes) {
        Ok(b) => return Ok((b, PcrsFormat::Text)),
        Err(e) => e,
    };
    let values_len: usize =
        quote_selection.iter().map(|s| s.bank().map_or(0, HashAlg::size) * s.pcrs.len()).sum();
    if bytes.len() == values_len && values_len > 0 {
        return parse_values(bytes, quote_selection).map(|b| (b, PcrsFormat::Values));
    }
    // A file of the serialized size is meant to be serialized: say why not.
    if bytes.len() >= SER_SELECTION + 4 && (bytes.len() - SER_SELECTION - 4) % SER_DIGESTS == 0 {
        return Err(serialized);
    }
    Err(PcrsFileError::Unrecognised {
        len: bytes.len(),
        serialized: serialized.to_string(),
        marshaled: marshaled.to_string(),
        text: text.to_string(),
        values_len,
        selection: super::attest::describe_selection(quote_selection),
    })
}

/// Puts `digests` (in selection order) into banks.
fn assign(
    format: PcrsFormat,
    selection: &[PcrSelection],
    digests: Vec<Vec<u8>>,
) -> Result<PcrBanks, PcrsFileError> {
    let wanted: usize = selection.iter().map(|s| s.pcrs.len()).sum();
    if digests.len() != wanted {
        return Err(invalid(
            format,
            format!(
                "the file selects {wanted} PCRs ({}) but holds {} values",
                super::attest::describe_selection(selection),
                digests.len()
            ),
        ));
    }
    let mut banks = PcrBanks::new();
    let mut it = digests.into_iter();
    for sel in selection {
        let bank = sel.bank().ok_or_else(|| {
            invalid(format, format!("PCR bank 0x{:04x} cannot be hashed here", sel.hash))
        })?;
        if banks.algorithms().any(|a| a == bank) {
            return Err(invalid(format, format!("the {bank} bank is listed twice")));
        }
        for &pcr in &sel.pcrs {
            let value = it.next().ok_or_else(|| invalid(format, "too few values".into()))?;
            let len = value.len();
            let d = Digest::new(bank, value).map_err(|_| {
                invalid(
                    format,
                    format!("PCR {bank}:{pcr} is {len} bytes, a {bank} PCR has {}", bank.size()),
                )
            })?;
            banks.init(pcr, d).map_err(|e| invalid(format, format!("PCR {bank}:{pcr}: {e}")))?;
        }
    }
    Ok(banks)
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

fn parse_serialized(b: &[u8]) -> Result<PcrBanks, PcrsFileError> {
    let f = PcrsFormat::Serialized;
    let short = || invalid(f, format!("{} bytes is too short", b.len()));
    let count = le_u32(b, 0).ok_or_else(short)?;
    if count > 16 {
        return Err(invalid(f, format!("TPML_PCR_SELECTION.count is {count}, at most 16")));
    }
    let mut selection = Vec::new();
    for i in 0..count as usize {
        let at = 4 + i * 8;
        let hash = le_u16(b, at).ok_or_else(short)?;
        let size = *b.get(at + 2).ok_or_else(short)?;
        if size > 4 {
            return Err(invalid(
                f,
                format!("pcrSelections[{i}].sizeofSelect is {size}, at most 4"),
            ));
        }
        let bitmap = b.get(at + 3..at + 3 + usize::from(size)).ok_or_else(short)?;
        selection.push(PcrSelection { hash, size_of_select: size, pcrs: bitmap_pcrs(bitmap) });
    }
    let lists = le_u32(b, SER_SELECTION).ok_or_else(short)?;
    if lists > MAX_DIGEST_LISTS {
        return Err(invalid(
            f,
            format!("the TPML_DIGEST count is {lists}, at most {MAX_DIGEST_LISTS}"),
        ));
    }
    let expected_len = SER_SELECTION + 4 + lists as usize * SER_DIGESTS;
    if b.len() != expected_len {
        return Err(invalid(
            f,
            format!(
                "{lists} TPML_DIGEST lists make {expected_len} bytes, the file has {}",
                b.len()
            ),
        ));
    }
    let mut digests = Vec::new();
    for l in 0..lists as usize {
        let at = SER_SELECTION + 4 + l * SER_DIGESTS;
        let n = le_u32(b, at).ok_or_else(short)?;
        if n > 8 {
            return Err(invalid(f, format!("TPML_DIGEST {l} counts {n} digests, at most 8")));
        }
        for k in 0..n as usize {
            let d = at + 4 + k * 66;
            let size = usize::from(le_u16(b, d).ok_or_else(short)?);
            if size > 64 {
                return Err(invalid(
                    f,
                    format!("TPML_DIGEST {l} digest {k} is {size} bytes, at most 64"),
                ));
            }
            digests.push(b.get(d + 2..d + 2 + size).ok_or_else(short)?.to_vec());
        }
    }
    assign(f, &selection, digests)
}

fn parse_marshaled(b: &[u8]) -> Result<PcrBanks, PcrsFileError> {
    let f = PcrsFormat::Marshaled;
    let parse = |source| PcrsFileError::Parse { format: f.name(), source };
    let mut r = Reader::new(b, "PCR file");
    let selection = read_pcr_selection(&mut r).map_err(parse)?;
    let lists = r.u32("TPML_DIGEST count").map_err(parse)?;
    if lists > MAX_DIGEST_LISTS {
        return Err(invalid(
            f,
            format!("the TPML_DIGEST count is {lists}, at most {MAX_DIGEST_LISTS}"),
        ));
    }
    let mut digests = Vec::new();
    for _ in 0..lists {
        let n = r.u32("TPML_DIGEST.count").map_err(parse)?;
        if n > 8 {
            return Err(invalid(f, format!("a TPML_DIGEST counts {n} digests, at most 8")));
        }
        for _ in 0..n {
            digests.push(r.tpm2b("TPML_DIGEST.digests[]", 64).map_err(parse)?.to_vec());
        }
    }
    r.finish().map_err(parse)?;
    assign(f, &selection, digests)
}

fn parse_values(b: &[u8], selection: &[PcrSelection]) -> Result<PcrBanks, PcrsFileError> {
    let mut digests = Vec::new();
    let mut at = 0usize;
    for sel in selection {
        let size = sel.bank().map_or(0, HashAlg::size);
        for _ in &sel.pcrs {
            let v = b
                .get(at..at + size)
                .ok_or_else(|| invalid(PcrsFormat::Values, "too short for the selection".into()))?;
            digests.push(v.to_vec());
            at += size;
        }
    }
    assign(PcrsFormat::Values, selection, digests)
}

/// `tpm2_pcrread` text: `sha256:` lines open a bank, `  13: 0x…` lines give
/// values; a `pcrs:` header (as in `tpm2_quote` output) is ignored.
fn parse_text(b: &[u8]) -> Result<PcrBanks, PcrsFileError> {
    let f = PcrsFormat::Text;
    let text = std::str::from_utf8(b).map_err(|_| invalid(f, "not UTF-8 text".into()))?;
    let mut banks = PcrBanks::new();
    let mut bank: Option<HashAlg> = None;
    let mut any = false;
    for (n, line) in (1..).zip(text.lines()) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == "pcrs:" {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(f, format!("line {n} has no ':' ({line:?})")))?;
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            bank = Some(HashAlg::from_name(key).ok_or_else(|| {
                invalid(
                    f,
                    format!("line {n}: {key:?} is not a PCR bank (sha1, sha256, sha384, sha512)"),
                )
            })?);
            continue;
        }
        let alg =
            bank.ok_or_else(|| invalid(f, format!("line {n}: a PCR value before any bank line")))?;
        let pcr: u32 =
            key.parse().map_err(|_| invalid(f, format!("line {n}: {key:?} is not a PCR index")))?;
        let hex_text =
            value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")).unwrap_or(value);
        let bytes = hex::decode(hex_text)
            .map_err(|e| invalid(f, format!("line {n}: PCR {alg}:{pcr} value is not hex: {e}")))?;
        let len = bytes.len();
        let d = Digest::new(alg, bytes).map_err(|_| {
            invalid(
                f,
                format!("line {n}: PCR {alg}:{pcr} is {len} bytes, a {alg} PCR has {}", alg.size()),
            )
        })?;
        if banks.get(alg, pcr).is_some() {
            return Err(invalid(f, format!("line {n}: PCR {alg}:{pcr} is given twice")));
        }
        banks.init(pcr, d).map_err(|e| invalid(f, format!("line {n}: {e}")))?;
        any = true;
    }
    if !any {
        return Err(invalid(f, "no PCR values".into()));
    }
    Ok(banks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel() -> Vec<PcrSelection> {
        vec![PcrSelection { hash: 0x000b, size_of_select: 3, pcrs: vec![13, 14] }]
    }

    #[test]
    fn text_and_values() {
        let t = format!("sha256:\n  13: 0x{}\n  14 : 0x{}\n", "AB".repeat(32), "00".repeat(32));
        let (b, f) = parse_pcrs_file(t.as_bytes(), &sel()).unwrap();
        assert_eq!(f, PcrsFormat::Text);
        assert_eq!(b.get(HashAlg::Sha256, 13).unwrap().as_bytes(), [0xab; 32]);
        let mut raw = vec![0xab; 32];
        raw.extend_from_slice(&[0; 32]);
        let (b2, f) = parse_pcrs_file(&raw, &sel()).unwrap();
        assert_eq!(f, PcrsFormat::Values);
        assert_eq!(b, b2);
    }

    #[test]
    fn marshaled() {
        let mut m = vec![0, 0, 0, 1, 0x00, 0x0b, 3, 0x00, 0x60, 0x00, 0, 0, 0, 1, 0, 0, 0, 2];
        for v in [0xabu8, 0] {
            m.extend_from_slice(&[0, 32]);
            m.extend_from_slice(&[v; 32]);
        }
        let (b, f) = parse_pcrs_file(&m, &sel()).unwrap();
        assert_eq!(f, PcrsFormat::Marshaled);
        assert_eq!(b.get(HashAlg::Sha256, 13).unwrap().as_bytes(), [0xab; 32]);
        assert_eq!(b.get(HashAlg::Sha256, 14).unwrap().as_bytes(), [0; 32]);
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [&b""[..], b"xyz", &[0xff; 668], &[0; 135]] {
            assert!(parse_pcrs_file(bad, &sel()).is_err());
        }
        let e = parse_pcrs_file(&[0xff; 668], &sel()).unwrap_err();
        assert!(e.to_string().contains("serialized"), "{e}");
    }
}
