//! AMD's SEV-SNP key hierarchy: ARK (root, self-signed) → ASK (signs
//! VCEKs) or ASVK (signs VLEKs) → VCEK/VLEK (ECDSA P-384, signs reports).
//! Every certificate is RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48.
//!
//! The roots for Milan, Genoa and Turin are built in: AMD's KDS
//! `cert_chain` files (`https://kdsintf.amd.com/vcek/v1/<product>/cert_chain`
//! and `/vlek/v1/<product>/cert_chain`), as Trustee ships them, with each
//! ARK pinned by the SHA-256 of its DER and checked to be self-signed.

use super::report::{Product, Tcb};
use super::SnpError;
use ring::signature::{self, UnparsedPublicKey};
use std::sync::OnceLock;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_HASH_SHA384, OID_PKCS1_RSASSAPSS,
};
use x509_parser::prelude::FromDer;
use x509_parser::signature_algorithm::RsaSsaPssParams;

/// Largest certificate accepted (AMD's are under 2.5 KiB).
pub const MAX_CERT_LEN: usize = 16 << 10;

const MILAN_BUNDLE: &str = include_str!("amd/milan_ask_ark_asvk.pem");
const GENOA_BUNDLE: &str = include_str!("amd/genoa_ask_ark_asvk.pem");
const TURIN_BUNDLE: &str = include_str!("amd/turin_ask_ark_asvk.pem");

/// SHA-256 of AMD's ARK certificates (DER). The same certificates are
/// served by AMD's KDS and shipped byte-identical by Trustee, virtee/sev
/// and go-sev-guest.
pub const ARK_SHA256: [(Product, &str); 3] = [
    (Product::Milan, "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"),
    (Product::Genoa, "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1"),
    (Product::Turin, "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a"),
];

/// VCEK/VLEK extension OIDs under AMD's arc 1.3.6.1.4.1.3704.1.
pub mod oid {
    /// Product name (`Milan-B0`, `Genoa`, `Turin`).
    pub const PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
    /// Boot loader SPL.
    pub const BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
    /// PSP OS SPL.
    pub const TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
    /// SNP firmware SPL.
    pub const SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
    /// Microcode SPL.
    pub const UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
    /// FMC SPL (Turin).
    pub const FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
    /// Hardware ID (the chip ID; VCEK only).
    pub const HW_ID: &str = "1.3.6.1.4.1.3704.1.4";
    /// Cloud service provider (VLEK only).
    pub const CSP_ID: &str = "1.3.6.1.4.1.3704.1.5";
}

/// Which certificate of the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Key (signs VCEKs).
    Ask,
    /// AMD SEV VLEK Key (signs VLEKs).
    Asvk,
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
}

impl std::fmt::Display for CertRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertRole::Ark => "ARK",
            CertRole::Ask => "ASK",
            CertRole::Asvk => "ASVK",
            CertRole::Vcek => "VCEK",
            CertRole::Vlek => "VLEK",
        })
    }
}

/// Parses one DER certificate with nothing after it.
pub fn parse_cert(der: &[u8], role: CertRole) -> Result<X509Certificate<'_>, SnpError> {
    if der.len() > MAX_CERT_LEN {
        return Err(SnpError::Certificate {
            role,
            detail: format!("{} bytes (max {MAX_CERT_LEN})", der.len()),
        });
    }
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| SnpError::Certificate { role, detail: e.to_string() })?;
    if !rest.is_empty() {
        return Err(SnpError::Certificate {
            role,
            detail: format!("{} trailing byte(s) after the certificate", rest.len()),
        });
    }
    Ok(cert)
}

/// The subject's common name.
pub(crate) fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string()
}

fn issuer_common_name(cert: &X509Certificate<'_>) -> String {
    cert.issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Checks that `issuer` signed `cert` with RSASSA-PSS/SHA-384/salt 48 and
/// that `cert` names `issuer`'s subject as its issuer.
pub fn verify_pss_signed(
    cert: &X509Certificate<'_>,
    role: CertRole,
    issuer: &X509Certificate<'_>,
    issuer_role: CertRole,
) -> Result<(), SnpError> {
    let bad = |detail: String| SnpError::NotSignedBy { role, issuer: issuer_role, detail };
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(bad(format!(
            "its issuer is {:?}, the {issuer_role} is {:?}",
            issuer_common_name(cert),
            common_name(issuer)
        )));
    }
    let outer = &cert.signature_algorithm;
    let inner = &cert.tbs_certificate.signature;
    if outer.algorithm != OID_PKCS1_RSASSAPSS {
        return Err(bad(format!(
            "signature algorithm {} (AMD signs with RSASSA-PSS)",
            outer.algorithm.to_id_string()
        )));
    }
    if inner.algorithm != outer.algorithm
        || outer.parameters.as_ref().map(|p| p.data) != inner.parameters.as_ref().map(|p| p.data)
    {
        return Err(bad(
            "the signed and the outer signature algorithms differ (altered certificate)".into(),
        ));
    }
    let params = outer
        .parameters
        .as_ref()
        .and_then(|p| RsaSsaPssParams::try_from(p).ok())
        .ok_or_else(|| bad("RSASSA-PSS parameters do not parse".into()))?;
    let mgf = params.mask_gen_algorithm().map_err(|e| bad(format!("MGF: {e}")))?;
    if *params.hash_algorithm_oid() != OID_NIST_HASH_SHA384
        || mgf.hash != OID_NIST_HASH_SHA384
        || mgf.mgf.to_id_string() != "1.2.840.113549.1.1.8"
        || params.salt_length() != 48
        || params.trailer_field() != 1
    {
        return Err(bad("RSASSA-PSS parameters are not SHA-384/MGF1-SHA-384/salt 48".into()));
    }
    UnparsedPublicKey::new(
        &signature::RSA_PSS_2048_8192_SHA384,
        issuer.public_key().subject_public_key.data.as_ref(),
    )
    .verify(cert.tbs_certificate.as_ref(), cert.signature_value.data.as_ref())
    .map_err(|_| bad("the RSA-PSS signature does not verify".into()))
}

/// Checks the validity window at `at` (UNIX seconds).
pub fn check_validity(cert: &X509Certificate<'_>, role: CertRole, at: i64) -> Result<(), SnpError> {
    let v = cert.validity();
    let (nb, na) = (v.not_before.timestamp(), v.not_after.timestamp());
    if at < nb || at > na {
        return Err(SnpError::NotValidAt {
            role,
            at,
            not_before: v.not_before.to_string(),
            not_after: v.not_after.to_string(),
        });
    }
    Ok(())
}

/// One generation's CA certificates, checked to form AMD's hierarchy.
#[derive(Debug, Clone)]
pub struct ProductChain {
    /// The generation.
    pub product: Product,
    /// ARK (DER).
    pub ark: Vec<u8>,
    /// ASK (DER).
    pub ask: Vec<u8>,
    /// ASVK (DER), for VLEK-signed reports.
    pub asvk: Option<Vec<u8>>,
}

impl ProductChain {
    /// Checks that the ARK is self-signed and named `ARK-<product>`, and
    /// that the ASK (`SEV-<product>`) and ASVK (`SEV-VLEK-<product>`) are
    /// signed by it. Does not pin the ARK (see [`AmdRoots::builtin`]).
    pub fn new(
        product: Product,
        ark: Vec<u8>,
        ask: Vec<u8>,
        asvk: Option<Vec<u8>>,
    ) -> Result<ProductChain, SnpError> {
        let p = product.name();
        let ark_c = parse_cert(&ark, CertRole::Ark)?;
        expect_cn(&ark_c, CertRole::Ark, &format!("ARK-{p}"))?;
        verify_pss_signed(&ark_c, CertRole::Ark, &ark_c, CertRole::Ark)?;
        let ask_c = parse_cert(&ask, CertRole::Ask)?;
        expect_cn(&ask_c, CertRole::Ask, &format!("SEV-{p}"))?;
        verify_pss_signed(&ask_c, CertRole::Ask, &ark_c, CertRole::Ark)?;
        if let Some(asvk) = &asvk {
            let c = parse_cert(asvk, CertRole::Asvk)?;
            expect_cn(&c, CertRole::Asvk, &format!("SEV-VLEK-{p}"))?;
            verify_pss_signed(&c, CertRole::Asvk, &ark_c, CertRole::Ark)?;
        }
        Ok(ProductChain { product, ark, ask, asvk })
    }

    /// Reads a KDS-style PEM bundle: certificates named `ARK-<p>`,
    /// `SEV-<p>` and optionally `SEV-VLEK-<p>`, in any order.
    pub fn from_pem_bundle(product: Product, pem: &[u8]) -> Result<ProductChain, SnpError> {
        let p = product.name();
        let (mut ark, mut ask, mut asvk) = (None, None, None);
        for der in pem_certificates(pem, CertRole::Ark)? {
            let cn = common_name(&parse_cert(&der, CertRole::Ark)?);
            if cn == format!("ARK-{p}") {
                ark = Some(der);
            } else if cn == format!("SEV-{p}") {
                ask = Some(der);
            } else if cn == format!("SEV-VLEK-{p}") {
                asvk = Some(der);
            }
        }
        let missing = |role| SnpError::Certificate {
            role,
            detail: format!("no {role} for {p} in the PEM bundle"),
        };
        ProductChain::new(
            product,
            ark.ok_or_else(|| missing(CertRole::Ark))?,
            ask.ok_or_else(|| missing(CertRole::Ask))?,
            asvk,
        )
    }

    /// SHA-256 of the ARK (DER), hex.
    pub fn ark_sha256(&self) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &self.ark))
    }
}

fn expect_cn(cert: &X509Certificate<'_>, role: CertRole, want: &str) -> Result<(), SnpError> {
    let cn = common_name(cert);
    if cn != want {
        return Err(SnpError::Certificate {
            role,
            detail: format!("named {cn:?}, expected {want:?}"),
        });
    }
    Ok(())
}

/// PEM certificates of a buffer, as DER.
pub fn pem_certificates(pem: &[u8], role: CertRole) -> Result<Vec<Vec<u8>>, SnpError> {
    let mut out = Vec::new();
    for (i, p) in x509_parser::pem::Pem::iter_from_buffer(pem).enumerate() {
        let p =
            p.map_err(|e| SnpError::Certificate { role, detail: format!("PEM block {i}: {e}") })?;
        if p.label == "CERTIFICATE" {
            out.push(p.contents);
        }
        if out.len() > 16 {
            return Err(SnpError::Certificate { role, detail: "more than 16 certificates".into() });
        }
    }
    Ok(out)
}

/// The CA chains a verification may end in.
#[derive(Debug, Clone)]
pub struct AmdRoots {
    chains: Vec<ProductChain>,
}

impl AmdRoots {
    /// AMD's roots for Milan, Genoa and Turin, built in. Each ARK is
    /// self-signed and its SHA-256 is one of [`ARK_SHA256`].
    pub fn builtin() -> Result<&'static AmdRoots, SnpError> {
        static ROOTS: OnceLock<Result<AmdRoots, String>> = OnceLock::new();
        ROOTS
            .get_or_init(|| {
                let mut chains = Vec::new();
                for (product, pem) in [
                    (Product::Milan, MILAN_BUNDLE),
                    (Product::Genoa, GENOA_BUNDLE),
                    (Product::Turin, TURIN_BUNDLE),
                ] {
                    let c = ProductChain::from_pem_bundle(product, pem.as_bytes())
                        .map_err(|e| e.to_string())?;
                    let pinned = ARK_SHA256.iter().find(|(p, _)| *p == product).map(|(_, h)| *h);
                    if pinned != Some(c.ark_sha256().as_str()) {
                        return Err(format!(
                            "built-in ARK-{} fingerprint mismatch",
                            product.name()
                        ));
                    }
                    chains.push(c);
                }
                Ok(AmdRoots { chains })
            })
            .as_ref()
            .map_err(|e| SnpError::BuiltinRoots(e.clone()))
    }

    /// Roots from explicit chains (tests, or a pinned subset).
    pub fn from_chains(chains: Vec<ProductChain>) -> AmdRoots {
        AmdRoots { chains }
    }

    /// The chain of a generation.
    pub fn chain(&self, product: Product) -> Option<&ProductChain> {
        self.chains.iter().find(|c| c.product == product)
    }
}

/// What a VCEK/VLEK certifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// VCEK or VLEK.
    pub role: CertRole,
    /// The generation (from the issuer's name).
    pub product: Product,
    /// The product-name extension, if present.
    pub product_name: Option<String>,
    /// The TCB the key was derived for.
    pub tcb: Tcb,
    /// hwID (VCEK): 64 bytes, 8 on Turin.
    pub hw_id: Option<Vec<u8>>,
    /// CSP id (VLEK).
    pub csp_id: Option<String>,
    /// The uncompressed P-384 public key (97 bytes).
    pub public_key: Vec<u8>,
}

/// The leaf's role and generation from its issuer's name.
pub(crate) fn leaf_kind(cert: &X509Certificate<'_>) -> Result<(CertRole, Product), SnpError> {
    let issuer = issuer_common_name(cert);
    for p in Product::ALL {
        if issuer == format!("SEV-{}", p.name()) {
            return Ok((CertRole::Vcek, p));
        }
        if issuer == format!("SEV-VLEK-{}", p.name()) {
            return Ok((CertRole::Vlek, p));
        }
    }
    Err(SnpError::UnknownIssuer(issuer))
}

fn ext_value<'a>(cert: &'a X509Certificate<'_>, oid: &str) -> Option<&'a [u8]> {
    cert.extensions().iter().find(|e| e.oid.to_id_string() == oid).map(|e| e.value)
}

/// An SPL extension: a DER INTEGER 0..=255 (AMD has used a leading zero).
fn spl(cert: &X509Certificate<'_>, role: CertRole, oid: &str, name: &str) -> Result<u8, SnpError> {
    let v = ext_value(cert, oid).ok_or_else(|| SnpError::Certificate {
        role,
        detail: format!("no {name} extension ({oid})"),
    })?;
    let bad = || SnpError::Certificate {
        role,
        detail: format!("{name} extension is not a small INTEGER"),
    };
    match v {
        [0x02, 1, x] if *x < 0x80 => Ok(*x),
        [0x02, 2, 0, x] if *x >= 0x80 => Ok(*x),
        _ => Err(bad()),
    }
}

/// Decodes a VCEK/VLEK: issuer names the generation, the key is P-384,
/// and the TCB (and hwID / CSP) extensions are present and well-formed.
pub fn leaf_info(cert: &X509Certificate<'_>) -> Result<LeafInfo, SnpError> {
    let (role, product) = leaf_kind(cert)?;
    let spki = cert.public_key();
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_NIST_EC_P384) {
        return Err(SnpError::Certificate { role, detail: "the key is not ECDSA P-384".into() });
    }
    let public_key = spki.subject_public_key.data.to_vec();
    let bl = spl(cert, role, oid::BL_SPL, "blSPL")?;
    let tee = spl(cert, role, oid::TEE_SPL, "teeSPL")?;
    let snp = spl(cert, role, oid::SNP_SPL, "snpSPL")?;
    let ucode = spl(cert, role, oid::UCODE_SPL, "ucodeSPL")?;
    let fmc = match product {
        Product::Turin => Some(spl(cert, role, oid::FMC_SPL, "fmcSPL")?),
        _ => None,
    };
    let raw = match fmc {
        Some(f) => u64::from_le_bytes([f, bl, tee, snp, 0, 0, 0, ucode]),
        None => u64::from_le_bytes([bl, tee, 0, 0, 0, 0, snp, ucode]),
    };
    let tcb = Tcb { raw, bootloader: bl, tee, snp, microcode: ucode, fmc };
    let hw_len = if product == Product::Turin { 8 } else { 64 };
    let hw_id = match ext_value(cert, oid::HW_ID) {
        None => None,
        // An OCTET STRING, or (older certificates) the raw bytes.
        Some([0x04, l, rest @ ..]) if usize::from(*l) == hw_len && rest.len() == hw_len => {
            Some(rest.to_vec())
        }
        Some(raw) if raw.len() == hw_len => Some(raw.to_vec()),
        Some(_) => {
            return Err(SnpError::Certificate {
                role,
                detail: format!("hwID extension is not {hw_len} bytes"),
            })
        }
    };
    if role == CertRole::Vcek && hw_id.is_none() {
        return Err(SnpError::Certificate { role, detail: "no hwID extension".into() });
    }
    let text = |oid| {
        ext_value(cert, oid).map(|v| match v {
            // IA5String / UTF8String / PrintableString.
            [0x16 | 0x0c | 0x13, l, rest @ ..] if usize::from(*l) == rest.len() => {
                String::from_utf8_lossy(rest).into_owned()
            }
            other => String::from_utf8_lossy(other).into_owned(),
        })
    };
    Ok(LeafInfo {
        role,
        product,
        product_name: text(oid::PRODUCT_NAME),
        tcb,
        hw_id,
        csp_id: text(oid::CSP_ID),
        public_key,
    })
}
