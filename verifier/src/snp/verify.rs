//! Report verification: the VCEK/VLEK chains to AMD's built-in ARK for its
//! generation, certifies the report's TCB (and chip), and signed the report.

use super::certs::{
    check_validity, leaf_info, parse_cert, verify_pss_signed, AmdRoots, CertRole, LeafInfo,
};
use super::report::{AttestationReport, SigningKey, Tcb};
use super::SnpError;
use ring::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
use serde_json::{json, Value};

/// What a verification is checked against.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// The CA chains (normally [`AmdRoots::builtin`]).
    pub roots: &'a AmdRoots,
    /// Validation time, UNIX seconds (now, or a fixed time for archived
    /// evidence whose certificates have since expired).
    pub at: i64,
    /// The REPORT_DATA the report must carry, if any.
    pub report_data: Option<[u8; 64]>,
}

/// REPORT_DATA for a KBS binding: the 48-byte hash, zero-padded to 64.
pub fn binding_report_data(binding: &[u8; 48]) -> [u8; 64] {
    let mut rd = [0u8; 64];
    rd[..48].copy_from_slice(binding);
    rd
}

/// A report whose signature, chain and TCB were verified.
#[derive(Debug, Clone)]
pub struct VerifiedReport {
    /// The report.
    pub report: AttestationReport,
    /// What its signing certificate certifies.
    pub leaf: LeafInfo,
    /// Whether the chip ID was compared with the VCEK's hwID (not for VLEK
    /// or a masked chip ID).
    pub chip_id_checked: bool,
    /// Whether REPORT_DATA was compared with an expected value.
    pub report_data_checked: bool,
}

impl VerifiedReport {
    /// Claims for an attestation policy: the report's fields (TCBs decoded
    /// for the generation) and what certified it.
    pub fn claims(&self) -> Value {
        let mut c = self.report.to_claims(self.leaf.product);
        if let Some(o) = c.as_object_mut() {
            o.insert("product".into(), json!(self.leaf.product.name()));
            o.insert(
                "signer".into(),
                json!({
                    "kind": self.leaf.role.to_string(),
                    "product_name": self.leaf.product_name,
                    "tcb": self.leaf.tcb.to_json(),
                    "csp_id": self.leaf.csp_id,
                    "chip_id_checked": self.chip_id_checked,
                }),
            );
            o.insert("report_data_checked".into(), json!(self.report_data_checked));
        }
        c
    }
}

fn tcb_mismatch(component: &'static str, cert: u8, report: u8) -> SnpError {
    SnpError::TcbMismatch { component, cert, report }
}

/// Verifies `report` with the VCEK or VLEK `leaf_der`:
/// 1. the leaf's issuer names a generation and matches the report's
///    signing key (VCEK/VLEK) and, for v3+ reports, its CPUID generation;
/// 2. the leaf is signed by that generation's ASK (ASVK for VLEKs), whose
///    chain to the ARK the roots vouch for; all three are valid at `at`;
/// 3. the leaf's hwID equals the report's CHIP_ID (VCEK, unmasked) and its
///    TCB extensions equal REPORTED_TCB;
/// 4. the report's ECDSA P-384 signature verifies with the leaf's key;
/// 5. REPORT_DATA equals the expected value, when one is given.
pub fn verify_report(
    report: &AttestationReport,
    leaf_der: &[u8],
    opts: &VerifyOptions<'_>,
) -> Result<VerifiedReport, SnpError> {
    let leaf_c = parse_cert(leaf_der, CertRole::Vcek)?;
    let leaf = leaf_info(&leaf_c)?;
    let want_role = match report.signing_key()? {
        SigningKey::Vcek => CertRole::Vcek,
        SigningKey::Vlek => CertRole::Vlek,
    };
    if leaf.role != want_role {
        return Err(SnpError::SigningKeyMismatch { report: want_role, cert: leaf.role });
    }
    if let Some(p) = report.cpuid_product() {
        if p != leaf.product {
            return Err(SnpError::ProductMismatch { report: p, cert: leaf.product });
        }
    }
    let chain = opts.roots.chain(leaf.product).ok_or(SnpError::NoRoots(leaf.product))?;
    let ark = parse_cert(&chain.ark, CertRole::Ark)?;
    let (ca_role, ca_der) = match leaf.role {
        CertRole::Vlek => {
            (CertRole::Asvk, chain.asvk.as_deref().ok_or(SnpError::NoRoots(leaf.product))?)
        }
        _ => (CertRole::Ask, chain.ask.as_slice()),
    };
    let ca = parse_cert(ca_der, ca_role)?;
    // The roots were checked when built; the intermediate again here, so
    // a hand-built AmdRoots cannot skip it.
    verify_pss_signed(&ca, ca_role, &ark, CertRole::Ark)?;
    verify_pss_signed(&leaf_c, leaf.role, &ca, ca_role)?;
    check_validity(&ark, CertRole::Ark, opts.at)?;
    check_validity(&ca, ca_role, opts.at)?;
    check_validity(&leaf_c, leaf.role, opts.at)?;

    let mut chip_id_checked = false;
    if let (CertRole::Vcek, Some(hw_id), false) = (leaf.role, &leaf.hw_id, report.chip_id_masked())
    {
        let n = hw_id.len();
        if report.chip_id[..n] != hw_id[..] || report.chip_id[n..].iter().any(|&b| b != 0) {
            return Err(SnpError::ChipIdMismatch {
                report: hex::encode(report.chip_id),
                cert: hex::encode(hw_id),
            });
        }
        chip_id_checked = true;
    }
    let rt = Tcb::decode(report.reported_tcb, leaf.product);
    let ct = &leaf.tcb;
    for (name, c, r) in [
        ("bootloader", ct.bootloader, rt.bootloader),
        ("tee", ct.tee, rt.tee),
        ("snp", ct.snp, rt.snp),
        ("microcode", ct.microcode, rt.microcode),
        ("fmc", ct.fmc.unwrap_or(0), rt.fmc.unwrap_or(0)),
    ] {
        if c != r {
            return Err(tcb_mismatch(name, c, r));
        }
    }

    let mut sig = [0u8; 96];
    sig[..48].copy_from_slice(&report.sig_r);
    sig[48..].copy_from_slice(&report.sig_s);
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &leaf.public_key)
        .verify(report.signed_bytes(), &sig)
        .map_err(|_| SnpError::SignatureInvalid { role: leaf.role })?;

    let report_data_checked = match &opts.report_data {
        Some(want) => {
            if !crate::service::verifier::constant_time_eq(want, &report.report_data) {
                return Err(SnpError::ReportDataMismatch {
                    report: hex::encode(report.report_data),
                    expected: hex::encode(want),
                });
            }
            true
        }
        None => false,
    };
    Ok(VerifiedReport { report: report.clone(), leaf, chip_id_checked, report_data_checked })
}
