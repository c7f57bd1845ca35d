//! Trustee's SNP evidence: `{"attestation_report": …, "cert_chain": [{
//! "cert_type": "VCEK", "data": [bytes…]}, …]}` (kbs-types `SnpEvidence`;
//! the report in the `sev` crate's serde form). Also accepted, for tools
//! that hold raw reports: `attestation_report` as base64 of the 1184
//! bytes. The serde form is re-encoded to the firmware layout, whose bytes
//! the signature covers, so any field that differs fails the signature.

use super::certs::{pem_certificates, CertRole, MAX_CERT_LEN};
use super::report::{AttestationReport, Product, Tcb, REPORT_LEN};
use super::verify::{verify_report, VerifiedReport, VerifyOptions};
use super::SnpError;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Most `cert_chain` entries accepted.
pub const MAX_CERT_ENTRIES: usize = 8;

/// The evidence, decoded.
#[derive(Debug, Clone)]
pub struct SnpEvidence {
    /// The report (raw bytes, parsed).
    pub report: AttestationReport,
    /// Certificates it carries, by role.
    pub certs: Vec<(CertRole, Vec<u8>)>,
}

#[derive(Deserialize)]
struct SerdeTcb {
    fmc: Option<u8>,
    bootloader: u8,
    tee: u8,
    snp: u8,
    microcode: u8,
}

#[derive(Deserialize)]
struct SerdeVersion {
    major: u8,
    minor: u8,
    build: u8,
}

#[derive(Deserialize)]
struct SerdeSignature {
    r: Vec<u8>,
    s: Vec<u8>,
}

/// The `sev` crate's `AttestationReport` serde form.
#[derive(Deserialize)]
struct SerdeReport {
    version: u32,
    guest_svn: u32,
    policy: u64,
    family_id: Vec<u8>,
    image_id: Vec<u8>,
    vmpl: u32,
    sig_algo: u32,
    current_tcb: SerdeTcb,
    plat_info: u64,
    key_info: u32,
    report_data: Vec<u8>,
    measurement: Vec<u8>,
    host_data: Vec<u8>,
    id_key_digest: Vec<u8>,
    author_key_digest: Vec<u8>,
    report_id: Vec<u8>,
    report_id_ma: Vec<u8>,
    reported_tcb: SerdeTcb,
    cpuid_fam_id: Option<u8>,
    cpuid_mod_id: Option<u8>,
    cpuid_step: Option<u8>,
    chip_id: Vec<u8>,
    committed_tcb: SerdeTcb,
    current: SerdeVersion,
    committed: SerdeVersion,
    launch_tcb: SerdeTcb,
    launch_mit_vector: Option<u64>,
    current_mit_vector: Option<u64>,
    signature: SerdeSignature,
}

#[derive(Deserialize)]
struct CertEntry {
    cert_type: String,
    data: Value,
}

#[derive(Deserialize)]
struct RawEvidence {
    attestation_report: Value,
    #[serde(default)]
    cert_chain: Option<Vec<CertEntry>>,
}

fn malformed(detail: impl Into<String>) -> SnpError {
    SnpError::MalformedEvidence(detail.into())
}

fn tcb_raw(t: &SerdeTcb) -> u64 {
    match t.fmc {
        // Turin layout.
        Some(f) => u64::from_le_bytes([f, t.bootloader, t.tee, t.snp, 0, 0, 0, t.microcode]),
        None => u64::from_le_bytes([t.bootloader, t.tee, 0, 0, 0, 0, t.snp, t.microcode]),
    }
}

fn put(
    buf: &mut [u8; REPORT_LEN],
    off: usize,
    v: &[u8],
    name: &str,
    len: usize,
) -> Result<(), SnpError> {
    if v.len() != len {
        return Err(malformed(format!(
            "attestation_report.{name} has {} bytes, expected {len}",
            v.len()
        )));
    }
    buf[off..off + len].copy_from_slice(v);
    Ok(())
}

/// Encodes the serde form into the firmware layout.
fn encode_report(r: &SerdeReport) -> Result<[u8; REPORT_LEN], SnpError> {
    let mut b = [0u8; REPORT_LEN];
    b[0x00..0x04].copy_from_slice(&r.version.to_le_bytes());
    b[0x04..0x08].copy_from_slice(&r.guest_svn.to_le_bytes());
    b[0x08..0x10].copy_from_slice(&r.policy.to_le_bytes());
    put(&mut b, 0x10, &r.family_id, "family_id", 16)?;
    put(&mut b, 0x20, &r.image_id, "image_id", 16)?;
    b[0x30..0x34].copy_from_slice(&r.vmpl.to_le_bytes());
    b[0x34..0x38].copy_from_slice(&r.sig_algo.to_le_bytes());
    b[0x38..0x40].copy_from_slice(&tcb_raw(&r.current_tcb).to_le_bytes());
    b[0x40..0x48].copy_from_slice(&r.plat_info.to_le_bytes());
    b[0x48..0x4C].copy_from_slice(&r.key_info.to_le_bytes());
    put(&mut b, 0x50, &r.report_data, "report_data", 64)?;
    put(&mut b, 0x90, &r.measurement, "measurement", 48)?;
    put(&mut b, 0xC0, &r.host_data, "host_data", 32)?;
    put(&mut b, 0xE0, &r.id_key_digest, "id_key_digest", 48)?;
    put(&mut b, 0x110, &r.author_key_digest, "author_key_digest", 48)?;
    put(&mut b, 0x140, &r.report_id, "report_id", 32)?;
    put(&mut b, 0x160, &r.report_id_ma, "report_id_ma", 32)?;
    b[0x180..0x188].copy_from_slice(&tcb_raw(&r.reported_tcb).to_le_bytes());
    if r.version >= 3 {
        b[0x188] = r.cpuid_fam_id.unwrap_or(0);
        b[0x189] = r.cpuid_mod_id.unwrap_or(0);
        b[0x18A] = r.cpuid_step.unwrap_or(0);
    }
    put(&mut b, 0x1A0, &r.chip_id, "chip_id", 64)?;
    b[0x1E0..0x1E8].copy_from_slice(&tcb_raw(&r.committed_tcb).to_le_bytes());
    b[0x1E8..0x1EB].copy_from_slice(&[r.current.build, r.current.minor, r.current.major]);
    b[0x1EC..0x1EF].copy_from_slice(&[r.committed.build, r.committed.minor, r.committed.major]);
    b[0x1F0..0x1F8].copy_from_slice(&tcb_raw(&r.launch_tcb).to_le_bytes());
    if r.version >= 5 {
        b[0x1F8..0x200].copy_from_slice(&r.launch_mit_vector.unwrap_or(0).to_le_bytes());
        b[0x200..0x208].copy_from_slice(&r.current_mit_vector.unwrap_or(0).to_le_bytes());
    }
    put(&mut b, 0x2A0, &r.signature.r, "signature.r", 72)?;
    put(&mut b, 0x2E8, &r.signature.s, "signature.s", 72)?;
    Ok(b)
}

/// Bytes of a `data` field: a JSON array of bytes, or base64.
fn cert_bytes(v: &Value) -> Result<Vec<u8>, SnpError> {
    let out = match v {
        Value::Array(a) => {
            if a.len() > MAX_CERT_LEN {
                return Err(malformed(format!("a certificate of {} bytes", a.len())));
            }
            a.iter()
                .map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| malformed("cert_chain data is not an array of bytes"))?
        }
        Value::String(s) if s.len() <= MAX_CERT_LEN * 2 => STANDARD
            .decode(s)
            .or_else(|_| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')))
            .map_err(|_| malformed("cert_chain data is not base64"))?,
        _ => return Err(malformed("cert_chain data must be a byte array or base64")),
    };
    Ok(out)
}

impl SnpEvidence {
    /// Decodes Trustee-shaped evidence, with bounds.
    pub fn from_json(v: &Value) -> Result<SnpEvidence, SnpError> {
        let raw = RawEvidence::deserialize(v).map_err(|e| {
            malformed(format!("{e}; expected {{\"attestation_report\": …, \"cert_chain\": […]}}"))
        })?;
        let bytes = match &raw.attestation_report {
            Value::String(s) if s.len() <= 2 * REPORT_LEN => STANDARD
                .decode(s)
                .map_err(|_| malformed("attestation_report string is not base64"))?,
            Value::Object(_) => {
                let r = SerdeReport::deserialize(&raw.attestation_report)
                    .map_err(|e| malformed(format!("attestation_report: {e}")))?;
                encode_report(&r)?.to_vec()
            }
            _ => return Err(malformed("attestation_report must be an object or base64")),
        };
        let report = AttestationReport::parse(&bytes)?;
        let mut certs = Vec::new();
        let entries = raw.cert_chain.unwrap_or_default();
        if entries.len() > MAX_CERT_ENTRIES {
            return Err(malformed(format!(
                "{} cert_chain entries (max {MAX_CERT_ENTRIES})",
                entries.len()
            )));
        }
        for e in entries {
            let role = match e.cert_type.to_ascii_uppercase().as_str() {
                "VCEK" => CertRole::Vcek,
                "VLEK" => CertRole::Vlek,
                "ASK" => CertRole::Ask,
                "ASVK" => CertRole::Asvk,
                "ARK" => CertRole::Ark,
                // CRLs and other table entries play no part here.
                _ => continue,
            };
            certs.push((role, cert_bytes(&e.data)?));
        }
        Ok(SnpEvidence { report, certs })
    }
}

/// Where VCEKs/VLEKs come from when the evidence has none: a directory of
/// certificates fetched ahead of time from AMD's KDS (no network fetch).
///
/// Names: `vcek-<chip_id hex>-<reported_tcb hex>.der` (or `.pem`), then
/// `vcek-<chip_id hex>.der`; VLEKs `vlek-<reported_tcb hex>.der`. The TCB
/// is the 16-hex-digit little-endian u64 of REPORTED_TCB as printed by
/// `{:016x}`.
#[derive(Debug, Clone, Default)]
pub struct CertStore {
    dir: Option<PathBuf>,
}

impl CertStore {
    /// No store: the evidence must carry the certificate.
    pub fn none() -> CertStore {
        CertStore { dir: None }
    }

    /// A directory store.
    pub fn dir(path: impl Into<PathBuf>) -> CertStore {
        CertStore { dir: Some(path.into()) }
    }

    fn read(path: &Path) -> Result<Option<Vec<u8>>, SnpError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(SnpError::Store { path: path.to_path_buf(), detail: e.to_string() })
            }
        };
        if bytes.len() > 4 * MAX_CERT_LEN {
            return Err(SnpError::Store { path: path.to_path_buf(), detail: "too large".into() });
        }
        if bytes.starts_with(b"-----") {
            let mut certs = pem_certificates(&bytes, CertRole::Vcek)?;
            return Ok(if certs.is_empty() { None } else { Some(certs.swap_remove(0)) });
        }
        Ok(Some(bytes))
    }

    /// The stored certificate for a report, if any.
    pub fn lookup(&self, report: &AttestationReport) -> Result<Option<Vec<u8>>, SnpError> {
        let Some(dir) = &self.dir else { return Ok(None) };
        let tcb = format!("{:016x}", report.reported_tcb);
        let chip = hex::encode(report.chip_id);
        let stems = match report.signing_key()? {
            super::report::SigningKey::Vcek => {
                vec![format!("vcek-{chip}-{tcb}"), format!("vcek-{chip}")]
            }
            super::report::SigningKey::Vlek => vec![format!("vlek-{tcb}")],
        };
        for stem in stems {
            for ext in ["der", "pem", "crt", "cer"] {
                if let Some(b) = Self::read(&dir.join(format!("{stem}.{ext}")))? {
                    return Ok(Some(b));
                }
            }
        }
        Ok(None)
    }
}

/// AMD's KDS URL of the VCEK for a report (what to fetch into a store).
pub fn kds_vcek_url(report: &AttestationReport, product: Product) -> String {
    let t = Tcb::decode(report.reported_tcb, product);
    let chip = match product {
        Product::Turin => hex::encode(&report.chip_id[..8]),
        _ => hex::encode(report.chip_id),
    };
    let fmc = t.fmc.map(|f| format!("&fmcSPL={f}")).unwrap_or_default();
    format!(
        "https://kdsintf.amd.com/vcek/v1/{}/{chip}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}{fmc}",
        product.name(),
        t.bootloader,
        t.tee,
        t.snp,
        t.microcode
    )
}

/// Verifies Trustee-shaped evidence: the signing certificate from its
/// `cert_chain`, else from `store`; any ARK/ASK/ASVK it carries must be
/// byte-identical to the roots' (the roots alone are trusted).
pub fn verify_evidence(
    ev: &SnpEvidence,
    store: &CertStore,
    opts: &VerifyOptions<'_>,
) -> Result<VerifiedReport, SnpError> {
    let want = match ev.report.signing_key()? {
        super::report::SigningKey::Vcek => CertRole::Vcek,
        super::report::SigningKey::Vlek => CertRole::Vlek,
    };
    let leaf = match ev.certs.iter().find(|(r, _)| *r == want) {
        Some((_, der)) => der.clone(),
        None => match store.lookup(&ev.report)? {
            Some(der) => der,
            None => {
                // v2 reports do not name their generation: list each URL.
                let products = match ev.report.cpuid_product() {
                    Some(p) => vec![p],
                    None => Product::ALL.to_vec(),
                };
                let urls: Vec<String> =
                    products.iter().map(|p| kds_vcek_url(&ev.report, *p)).collect();
                return Err(SnpError::NoLeafCertificate {
                    role: want,
                    hint: match want {
                        CertRole::Vcek => format!(
                            "fetch it from {} into the VCEK store as vcek-{}-{:016x}.der",
                            urls.join(" or "),
                            hex::encode(ev.report.chip_id),
                            ev.report.reported_tcb
                        ),
                        _ => format!(
                            "ask the cloud provider for it; store it as vlek-{:016x}.der",
                            ev.report.reported_tcb
                        ),
                    },
                });
            }
        },
    };
    let v = verify_report(&ev.report, &leaf, opts)?;
    if let Some(chain) = opts.roots.chain(v.leaf.product) {
        for (role, der) in &ev.certs {
            let ours = match role {
                CertRole::Ark => Some(chain.ark.as_slice()),
                CertRole::Ask => Some(chain.ask.as_slice()),
                CertRole::Asvk => chain.asvk.as_deref(),
                _ => continue,
            };
            if ours != Some(der.as_slice()) {
                return Err(SnpError::UntrustedCa { role: *role, product: v.leaf.product });
            }
        }
    }
    Ok(v)
}
