//! The SEV-SNP ATTESTATION_REPORT (SEV-SNP firmware ABI, table
//! "ATTESTATION_REPORT Structure"): 1184 bytes, parsed by fixed offsets
//! with every field copied out, so nothing indexes past the buffer.

use super::SnpError;
use serde_json::{json, Value};

/// Size of a report.
pub const REPORT_LEN: usize = 0x4A0;
/// Bytes the signature covers: 0x000..0x2A0.
pub const SIGNED_LEN: usize = 0x2A0;
/// Oldest report version accepted (the first with SNP ABI 1.51 fields).
pub const MIN_VERSION: u32 = 2;
/// Newest report version this parser knows (v3 added CPUID fields, v5 the
/// mitigation vectors; v4 has v3's layout).
pub const MAX_VERSION: u32 = 5;
/// SIGNATURE_ALGO of ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// AMD EPYC generations with SNP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Product {
    /// 3rd generation (Zen 3).
    Milan,
    /// 4th generation (Zen 4: Genoa, Bergamo, Siena).
    Genoa,
    /// 5th generation (Zen 5).
    Turin,
}

impl Product {
    /// AMD's name (`Milan`, …), as in the KDS URLs and certificate CNs.
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// All generations with built-in roots.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The generation of a CPUID family/model (report v3+ fields).
    pub fn from_cpuid(family: u8, model: u8) -> Option<Product> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }
}

/// A TCB_VERSION decoded for a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcb {
    /// The raw 64-bit value.
    pub raw: u64,
    /// Boot loader SVN.
    pub bootloader: u8,
    /// PSP OS SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
    /// FMC SVN (Turin and later).
    pub fmc: Option<u8>,
}

impl Tcb {
    /// Decode: Milan/Genoa put bootloader, tee at bytes 0, 1 and snp,
    /// microcode at 6, 7; Turin puts fmc, bootloader, tee, snp at 0..4 and
    /// microcode at 7.
    pub fn decode(raw: u64, product: Product) -> Tcb {
        let b = raw.to_le_bytes();
        match product {
            Product::Milan | Product::Genoa => {
                Tcb { raw, bootloader: b[0], tee: b[1], snp: b[6], microcode: b[7], fmc: None }
            }
            Product::Turin => Tcb {
                raw,
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
        }
    }

    /// Claims form.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "raw": format!("{:016x}", self.raw),
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        });
        if let (Some(f), Some(o)) = (self.fmc, v.as_object_mut()) {
            o.insert("fmc".into(), json!(f));
        }
        v
    }

    /// Whether every component is at least `floor`'s.
    pub fn at_least(&self, floor: &Tcb) -> bool {
        self.bootloader >= floor.bootloader
            && self.tee >= floor.tee
            && self.snp >= floor.snp
            && self.microcode >= floor.microcode
            && self.fmc.unwrap_or(0) >= floor.fmc.unwrap_or(0)
    }
}

/// The guest policy (ABI "GUEST_POLICY").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    fn bit(self, n: u32) -> bool {
        self.0 >> n & 1 == 1
    }
    /// Minimum ABI minor version.
    pub fn abi_minor(self) -> u8 {
        self.0 as u8
    }
    /// Minimum ABI major version.
    pub fn abi_major(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// SMT allowed.
    pub fn smt(self) -> bool {
        self.bit(16)
    }
    /// Reserved, must be 1.
    pub fn reserved_1(self) -> bool {
        self.bit(17)
    }
    /// A migration agent may be associated.
    pub fn migrate_ma(self) -> bool {
        self.bit(18)
    }
    /// Debugging allowed (the host can read and write guest memory).
    pub fn debug(self) -> bool {
        self.bit(19)
    }
    /// Single socket only.
    pub fn single_socket(self) -> bool {
        self.bit(20)
    }
    /// Claims form.
    pub fn to_json(self) -> Value {
        json!({
            "raw": format!("{:#x}", self.0),
            "abi_major": self.abi_major(),
            "abi_minor": self.abi_minor(),
            "smt": self.smt(),
            "migrate_ma": self.migrate_ma(),
            "debug": self.debug(),
            "single_socket": self.single_socket(),
            "cxl_allow": self.bit(21),
            "mem_aes_256_xts": self.bit(22),
            "rapl_dis": self.bit(23),
            "ciphertext_hiding": self.bit(24),
            "page_swap_disable": self.bit(25),
        })
    }
}

/// Which key signed the report (flags bits 2..5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// The chip- and TCB-specific VCEK.
    Vcek,
    /// A cloud provider's VLEK.
    Vlek,
}

/// A parsed report. The raw bytes stay with it for the signature check.
#[derive(Debug, Clone)]
pub struct AttestationReport {
    /// The 1184 raw bytes.
    pub raw: Box<[u8; REPORT_LEN]>,
    /// Report format version.
    pub version: u32,
    /// Guest SVN.
    pub guest_svn: u32,
    /// Guest policy.
    pub policy: GuestPolicy,
    /// Family ID from the ID block.
    pub family_id: [u8; 16],
    /// Image ID from the ID block.
    pub image_id: [u8; 16],
    /// VMPL the report was requested from.
    pub vmpl: u32,
    /// Signature algorithm.
    pub sig_algo: u32,
    /// Current TCB (raw).
    pub current_tcb: u64,
    /// PLATFORM_INFO bits.
    pub platform_info: u64,
    /// Flags: author key enabled (bit 0), chip id masked (bit 1), signing key (bits 2..5).
    pub flags: u32,
    /// Guest-chosen data (the KBS binding).
    pub report_data: [u8; 64],
    /// The launch digest.
    pub measurement: [u8; 48],
    /// Host-chosen data given at launch.
    pub host_data: [u8; 32],
    /// SHA-384 of the ID key.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author key.
    pub author_key_digest: [u8; 48],
    /// Report ID of the guest.
    pub report_id: [u8; 32],
    /// Report ID of the migration agent.
    pub report_id_ma: [u8; 32],
    /// TCB the VCEK was derived from (raw).
    pub reported_tcb: u64,
    /// CPUID family (v3+).
    pub cpuid_fam_id: Option<u8>,
    /// CPUID model (v3+).
    pub cpuid_mod_id: Option<u8>,
    /// CPUID stepping (v3+).
    pub cpuid_step: Option<u8>,
    /// Chip identifier (zero when masked or VLEK-signed).
    pub chip_id: [u8; 64],
    /// Committed TCB (raw).
    pub committed_tcb: u64,
    /// Current firmware build, minor, major.
    pub current_version: (u8, u8, u8),
    /// Committed firmware build, minor, major.
    pub committed_version: (u8, u8, u8),
    /// TCB at launch (raw).
    pub launch_tcb: u64,
    /// Signature R, big-endian.
    pub sig_r: [u8; 48],
    /// Signature S, big-endian.
    pub sig_s: [u8; 48],
}

fn arr<const N: usize>(b: &[u8; REPORT_LEN], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

fn u32_at(b: &[u8; REPORT_LEN], off: usize) -> u32 {
    u32::from_le_bytes(arr(b, off))
}

fn u64_at(b: &[u8; REPORT_LEN], off: usize) -> u64 {
    u64::from_le_bytes(arr(b, off))
}

/// A 72-byte little-endian signature component as 48 big-endian bytes;
/// the 24 high bytes must be zero.
fn sig_component(b: &[u8; REPORT_LEN], off: usize, what: &str) -> Result<[u8; 48], SnpError> {
    if b[off + 48..off + 72].iter().any(|&x| x != 0) {
        return Err(SnpError::MalformedReport(format!(
            "signature {what} has non-zero bytes above 384 bits"
        )));
    }
    let mut out: [u8; 48] = arr(b, off);
    out.reverse();
    Ok(out)
}

impl AttestationReport {
    /// Parse a report: exactly [`REPORT_LEN`] bytes, version 2 to 5,
    /// ECDSA P-384 signature algorithm.
    pub fn parse(bytes: &[u8]) -> Result<AttestationReport, SnpError> {
        let raw: Box<[u8; REPORT_LEN]> = bytes
            .try_into()
            .map(Box::new)
            .map_err(|_| SnpError::ReportLength { len: bytes.len(), expected: REPORT_LEN })?;
        let b = &*raw;
        let version = u32_at(b, 0x00);
        if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
            return Err(SnpError::UnsupportedVersion(version));
        }
        let sig_algo = u32_at(b, 0x34);
        if sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(SnpError::UnsupportedSignatureAlgo(sig_algo));
        }
        let vmpl = u32_at(b, 0x30);
        if vmpl > 3 {
            return Err(SnpError::MalformedReport(format!("VMPL {vmpl} (0 to 3 exist)")));
        }
        let has_cpuid = version >= 3;
        let r = AttestationReport {
            version,
            guest_svn: u32_at(b, 0x04),
            policy: GuestPolicy(u64_at(b, 0x08)),
            family_id: arr(b, 0x10),
            image_id: arr(b, 0x20),
            vmpl,
            sig_algo,
            current_tcb: u64_at(b, 0x38),
            platform_info: u64_at(b, 0x40),
            flags: u32_at(b, 0x48),
            report_data: arr(b, 0x50),
            measurement: arr(b, 0x90),
            host_data: arr(b, 0xC0),
            id_key_digest: arr(b, 0xE0),
            author_key_digest: arr(b, 0x110),
            report_id: arr(b, 0x140),
            report_id_ma: arr(b, 0x160),
            reported_tcb: u64_at(b, 0x180),
            cpuid_fam_id: has_cpuid.then_some(b[0x188]),
            cpuid_mod_id: has_cpuid.then_some(b[0x189]),
            cpuid_step: has_cpuid.then_some(b[0x18A]),
            chip_id: arr(b, 0x1A0),
            committed_tcb: u64_at(b, 0x1E0),
            current_version: (b[0x1E8], b[0x1E9], b[0x1EA]),
            committed_version: (b[0x1EC], b[0x1ED], b[0x1EE]),
            launch_tcb: u64_at(b, 0x1F0),
            sig_r: sig_component(b, 0x2A0, "R")?,
            sig_s: sig_component(b, 0x2E8, "S")?,
            raw,
        };
        r.signing_key()?;
        Ok(r)
    }

    /// The signed bytes.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    /// The key that signed it.
    pub fn signing_key(&self) -> Result<SigningKey, SnpError> {
        match (self.flags >> 2) & 0x7 {
            0 => Ok(SigningKey::Vcek),
            1 => Ok(SigningKey::Vlek),
            7 => Err(SnpError::MalformedReport("report is unsigned (SIGNING_KEY = none)".into())),
            k => Err(SnpError::MalformedReport(format!("unknown SIGNING_KEY {k}"))),
        }
    }

    /// Whether the chip ID is masked (MASK_CHIP_ID).
    pub fn chip_id_masked(&self) -> bool {
        self.flags >> 1 & 1 == 1
    }

    /// The generation the report's CPUID fields name (v3+), if known.
    pub fn cpuid_product(&self) -> Option<Product> {
        Product::from_cpuid(self.cpuid_fam_id?, self.cpuid_mod_id?)
    }

    /// Claims for a policy, with TCBs decoded for `product`.
    pub fn to_claims(&self, product: Product) -> Value {
        let tcb = |raw| Tcb::decode(raw, product).to_json();
        let ver = |(build, minor, major): (u8, u8, u8)| format!("{major}.{minor}.{build}");
        json!({
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": self.policy.to_json(),
            "family_id": hex::encode(self.family_id),
            "image_id": hex::encode(self.image_id),
            "vmpl": self.vmpl,
            "platform_info": {
                "raw": format!("{:#x}", self.platform_info),
                "smt_enabled": self.platform_info & 1 == 1,
                "tsme_enabled": self.platform_info >> 1 & 1 == 1,
                "ecc_enabled": self.platform_info >> 2 & 1 == 1,
                "rapl_disabled": self.platform_info >> 3 & 1 == 1,
                "ciphertext_hiding_enabled": self.platform_info >> 4 & 1 == 1,
                "alias_check_complete": self.platform_info >> 5 & 1 == 1,
            },
            "author_key_en": self.flags & 1 == 1,
            "mask_chip_id": self.chip_id_masked(),
            "signing_key": match self.signing_key() {
                Ok(SigningKey::Vcek) => "vcek",
                Ok(SigningKey::Vlek) => "vlek",
                Err(_) => "unknown",
            },
            "report_data": hex::encode(self.report_data),
            "measurement": hex::encode(self.measurement),
            "host_data": hex::encode(self.host_data),
            "id_key_digest": hex::encode(self.id_key_digest),
            "author_key_digest": hex::encode(self.author_key_digest),
            "report_id": hex::encode(self.report_id),
            "report_id_ma": hex::encode(self.report_id_ma),
            "chip_id": hex::encode(self.chip_id),
            "cpuid": self.cpuid_fam_id.map(|f| json!({
                "family": f,
                "model": self.cpuid_mod_id.unwrap_or(0),
                "stepping": self.cpuid_step.unwrap_or(0),
            })),
            "current_tcb": tcb(self.current_tcb),
            "reported_tcb": tcb(self.reported_tcb),
            "committed_tcb": tcb(self.committed_tcb),
            "launch_tcb": tcb(self.launch_tcb),
            "current_firmware": ver(self.current_version),
            "committed_firmware": ver(self.committed_version),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Vec<u8> {
        let mut b = vec![0u8; REPORT_LEN];
        b[0] = 2;
        b[0x34] = 1;
        b
    }

    #[test]
    fn length_version_and_algorithm_are_checked() {
        assert!(AttestationReport::parse(&minimal()).is_ok());
        assert!(matches!(
            AttestationReport::parse(&minimal()[..REPORT_LEN - 1]),
            Err(SnpError::ReportLength { .. })
        ));
        let mut long = minimal();
        long.push(0);
        assert!(matches!(AttestationReport::parse(&long), Err(SnpError::ReportLength { .. })));
        for v in [0u8, 1, 6, 0xff] {
            let mut b = minimal();
            b[0] = v;
            assert!(matches!(
                AttestationReport::parse(&b),
                Err(SnpError::UnsupportedVersion(x)) if x == u32::from(v)
            ));
        }
        let mut b = minimal();
        b[0x34] = 2;
        assert!(matches!(AttestationReport::parse(&b), Err(SnpError::UnsupportedSignatureAlgo(2))));
        let mut b = minimal();
        b[0x30] = 4;
        assert!(matches!(AttestationReport::parse(&b), Err(SnpError::MalformedReport(_))));
        let mut b = minimal();
        b[0x2A0 + 50] = 1;
        assert!(matches!(AttestationReport::parse(&b), Err(SnpError::MalformedReport(_))));
        let mut b = minimal();
        b[0x48] = 7 << 2;
        assert!(matches!(AttestationReport::parse(&b), Err(SnpError::MalformedReport(_))));
    }

    #[test]
    fn tcb_layouts() {
        let raw = u64::from_le_bytes([3, 0, 0, 0, 0, 0, 8, 115]);
        let t = Tcb::decode(raw, Product::Milan);
        assert_eq!((t.bootloader, t.tee, t.snp, t.microcode, t.fmc), (3, 0, 8, 115, None));
        let raw = u64::from_le_bytes([5, 3, 1, 8, 0, 0, 0, 15]);
        let t = Tcb::decode(raw, Product::Turin);
        assert_eq!((t.bootloader, t.tee, t.snp, t.microcode, t.fmc), (3, 1, 8, 15, Some(5)));
        assert!(t.at_least(&Tcb::decode(0, Product::Turin)));
        assert!(!Tcb::decode(0, Product::Turin).at_least(&t));
    }

    #[test]
    fn products_from_cpuid() {
        assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
        assert_eq!(Product::from_cpuid(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x19, 0xA0), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x1A, 0x02), Some(Product::Turin));
        assert_eq!(Product::from_cpuid(0x17, 0x31), None);
    }
}
