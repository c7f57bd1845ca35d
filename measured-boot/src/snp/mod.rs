//! AMD SEV, SEV-ES and SEV-SNP launch-digest prediction: the measurement
//! the AMD Secure Processor reports for a guest launched from a given OVMF,
//! vCPU set-up and (with `kernel-hashes=on`) kernel, initrd and command
//! line. Reproduces sev-snp-measure's `--mode sev|seves|snp|snp:ovmf-hash`
//! and `snp:svsm` ([`svsm_launch_digest`]).
//!
//! Why not the `sev` crate's `measurement` module (evaluated: sev 8.0.0):
//! - its OVMF parser indexes and subtracts unchecked (a short or crafted
//!   image panics: `size - 32 - 18`, `entry[..4]`, `data.len() - offset`),
//!   and OVMF images are untrusted input here;
//! - it knows no GCE VMM type and computes EC2 VMSAs with RDX 0, the value
//!   sev-snp-measure dropped in commit 4a02bf0 (EC2 now sets 0x600);
//! - SEV and SEV-ES digests (`measurement::sev`) need its `openssl` feature,
//!   and this workspace avoids OpenSSL;
//! - it reads inputs only from file paths, whole, with no size bound.
//!
//! The algorithm is small (a SHA-384 chain over PAGE_INFO structures, a
//! fixed VMSA, a 176-byte hashes table), so it is written here against the
//! SEV-SNP ABI and checked against every sev-snp-measure and virtee/sev
//! vector (`tests/snp_measure_vectors.rs`).

mod gctx;
mod hashes;
mod ovmf;
mod vcpu;
mod vmsa;

pub use gctx::{Gctx, PageType, LD_SIZE, PAGE_SIZE, VMSA_GPA};
pub use hashes::{cmdline_hash, SevHashes, PADDED_TABLE_LEN};
pub use ovmf::{MetadataSection, Ovmf, SectionType, MAX_METADATA_ITEMS, MAX_OVMF_SIZE};
pub use vcpu::{cpu_sig, vcpu_sig_of, vcpu_type_names};
pub use vmsa::{save_area, svsm_save_area, BSP_EIP};

use ring::digest::{Context, SHA256};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Most vCPUs a prediction accepts (bounds the work of one request).
pub const MAX_VCPUS: u32 = 1024;
/// Most bytes all SEV metadata sections together may cover (each page is
/// one SHA-384; real OVMF builds describe well under 16 MiB).
pub const MAX_SECTIONS_BYTES: u64 = 256 << 20;

/// Errors of launch-digest prediction.
#[derive(Debug, thiserror::Error)]
pub enum SnpMeasureError {
    /// The OVMF image is larger than [`MAX_OVMF_SIZE`].
    #[error("OVMF image of {size} bytes is larger than the {max}-byte limit; pass the OVMF.fd QEMU loads")]
    OvmfTooLarge {
        /// Size given.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The OVMF footer table or SEV metadata is inconsistent.
    #[error("malformed OVMF image: {0}; is this an OVMF build with SEV support?")]
    MalformedOvmf(String),
    /// A GUID table entry the mode needs is absent.
    #[error("OVMF has no {0} entry in its GUID table; use an OVMF built with SEV support (OvmfPkg/AmdSev)")]
    MissingTableEntry(&'static str),
    /// SNP needs whole pages.
    #[error("OVMF image size {0} is not a multiple of 4096 bytes")]
    OvmfNotPageAligned(usize),
    /// An SNP metadata section is not page-sized.
    #[error("SEV metadata section {section:?} at {gpa:#x} has size {size:#x}, not a multiple of 4096 (or not 4096 for the hashes page)")]
    SectionSize {
        /// Section type.
        section: SectionType,
        /// Its GPA.
        gpa: u32,
        /// Its size.
        size: u32,
    },
    /// The metadata sections cover more than [`MAX_SECTIONS_BYTES`].
    #[error("OVMF's SEV metadata sections cover {0:#x} bytes (more than {MAX_SECTIONS_BYTES:#x}); not a real OVMF build")]
    SectionsTooLarge(u64),
    /// SNP metadata names a section type this code does not know.
    #[error("unknown SEV metadata section type {0:#x}; this OVMF is newer than tellus's SNP measurement")]
    UnknownSection(u32),
    /// SNP with kernel hashes but OVMF has no SNP_KERNEL_HASHES section.
    #[error("Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section; use an OvmfPkg/AmdSev build or boot without --kernel")]
    NoSnpKernelHashesSection,
    /// SEV/SEV-ES with kernel hashes but OVMF has no hashes table.
    #[error("Kernel specified but OVMF doesn't support kernel/initrd/cmdline measurement; use an OvmfPkg/AmdSev build or boot without --kernel")]
    NoSevHashesTable,
    /// More than one vCPU but OVMF gives no AP reset address.
    #[error("OVMF's SEV-ES reset block gives AP EIP 0; only 1 vCPU can be measured")]
    NoApResetEip,
    /// vCPU count out of range.
    #[error("{0} vCPUs: expected 1 to {MAX_VCPUS}")]
    VcpuCount(u32),
    /// A precomputed OVMF hash was given for a mode other than SNP.
    #[error("a precomputed OVMF hash (--snp-ovmf-hash) only applies to mode snp")]
    OvmfHashNotSnp,
    /// A named value does not parse.
    #[error("invalid {what} {value:?}: {hint}")]
    Invalid {
        /// What was parsed.
        what: &'static str,
        /// The value.
        value: String,
        /// Accepted values.
        hint: String,
    },
    /// An input file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    File {
        /// Which input.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The guest's SEV mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SevMode {
    /// SEV: SHA-256 over OVMF (and the hashes table).
    Sev,
    /// SEV-ES: SEV plus the VMSA of each vCPU.
    SevEs,
    /// SEV-SNP: SHA-384 PAGE_INFO chain.
    Snp,
}

impl FromStr for SevMode {
    type Err = SnpMeasureError;
    fn from_str(s: &str) -> Result<SevMode, SnpMeasureError> {
        match s {
            "sev" | "SEV" => Ok(SevMode::Sev),
            "seves" | "sev-es" | "SEVES" | "SEV-ES" => Ok(SevMode::SevEs),
            "snp" | "sev-snp" | "SNP" | "SEV-SNP" => Ok(SevMode::Snp),
            _ => Err(SnpMeasureError::Invalid {
                what: "SEV mode",
                value: s.into(),
                hint: "expected sev, seves or snp".into(),
            }),
        }
    }
}

/// The VMM that sets up the vCPUs (their initial VMSA differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmType {
    /// QEMU/KVM.
    Qemu,
    /// AWS EC2 (VMSA RDX 0x600, sev-snp-measure from 2026-04-28 on).
    Ec2,
    /// AWS EC2 as sev-snp-measure and virtee/sev computed it before
    /// 2026-04-28 (VMSA RDX 0): reproduces digests of older tooling.
    Ec2Legacy,
    /// Google Compute Engine.
    Gce,
}

impl FromStr for VmmType {
    type Err = SnpMeasureError;
    fn from_str(s: &str) -> Result<VmmType, SnpMeasureError> {
        match s.to_ascii_lowercase().as_str() {
            "qemu" => Ok(VmmType::Qemu),
            "ec2" => Ok(VmmType::Ec2),
            "ec2-legacy" => Ok(VmmType::Ec2Legacy),
            "gce" => Ok(VmmType::Gce),
            _ => Err(SnpMeasureError::Invalid {
                what: "VMM type",
                value: s.into(),
                hint: "expected QEMU, EC2, EC2-legacy or GCE".into(),
            }),
        }
    }
}

impl fmt::Display for VmmType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmmType::Qemu => "QEMU",
            VmmType::Ec2 => "EC2",
            VmmType::Ec2Legacy => "EC2-legacy",
            VmmType::Gce => "GCE",
        })
    }
}

/// What a launch digest is computed from.
#[derive(Debug, Clone)]
pub struct LaunchParams<'a> {
    /// SEV mode.
    pub mode: SevMode,
    /// Number of vCPUs (SEV-ES, SNP).
    pub vcpus: u32,
    /// CPUID(1).EAX signature of the vCPUs (see [`vcpu_sig_of`]); QEMU only.
    pub vcpu_sig: u32,
    /// The VMM.
    pub vmm_type: VmmType,
    /// The OVMF image QEMU maps below 4 GiB.
    pub ovmf: &'a [u8],
    /// Kernel/initrd/cmdline hashes for measured direct boot; `None` when
    /// no kernel is passed.
    pub kernel_hashes: Option<SevHashes>,
    /// SEV_FEATURES of the VMSA (SNP; bit 0 SNPActive, bit 5 DebugSwap).
    pub guest_features: u64,
    /// A precomputed [`snp_ovmf_hash`] to seed the SNP digest with instead
    /// of measuring the OVMF pages.
    pub snp_ovmf_hash: Option<[u8; LD_SIZE]>,
}

/// A launch digest: 48 bytes (SNP) or 32 (SEV, SEV-ES).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDigest(pub Vec<u8>);

impl LaunchDigest {
    /// Lowercase hex.
    pub fn hex(&self) -> String {
        hex::encode(&self.0)
    }
}

/// The SNP digest of the OVMF pages alone (`--mode snp:ovmf-hash`): a
/// digest to seed later predictions with.
pub fn snp_ovmf_hash(ovmf: &[u8]) -> Result<[u8; LD_SIZE], SnpMeasureError> {
    let o = Ovmf::parse(ovmf)?;
    if ovmf.len() % PAGE_SIZE != 0 {
        return Err(SnpMeasureError::OvmfNotPageAligned(ovmf.len()));
    }
    let mut g = Gctx::default();
    g.update_normal_pages(o.gpa(), o.data());
    Ok(g.ld())
}

/// The VMSA page of each vCPU, boot processor first (what
/// `--dump-vmsa` writes). Empty for SEV, which has no VMSA.
pub fn vmsa_pages(p: &LaunchParams<'_>) -> Result<Vec<[u8; PAGE_SIZE]>, SnpMeasureError> {
    if p.mode == SevMode::Sev {
        return Ok(Vec::new());
    }
    let ovmf = Ovmf::parse(p.ovmf)?;
    vmsas(p, &ovmf)
}

fn vmsas(p: &LaunchParams<'_>, ovmf: &Ovmf<'_>) -> Result<Vec<[u8; PAGE_SIZE]>, SnpMeasureError> {
    if p.vcpus == 0 || p.vcpus > MAX_VCPUS {
        return Err(SnpMeasureError::VcpuCount(p.vcpus));
    }
    // SEV-ES guests start with SEV_FEATURES 0 in the measured VMSA.
    let features = if p.mode == SevMode::SevEs { 0 } else { p.guest_features };
    let ap_eip = ovmf.sev_es_reset_eip()?;
    if p.vcpus > 1 && ap_eip == 0 {
        return Err(SnpMeasureError::NoApResetEip);
    }
    let bsp = save_area(BSP_EIP, features, p.vcpu_sig, p.vmm_type);
    let ap = save_area(ap_eip, features, p.vcpu_sig, p.vmm_type);
    Ok((0..p.vcpus).map(|i| if i == 0 { bsp } else { ap }).collect())
}

/// Predict the launch digest.
pub fn launch_digest(p: &LaunchParams<'_>) -> Result<LaunchDigest, SnpMeasureError> {
    if p.snp_ovmf_hash.is_some() && p.mode != SevMode::Snp {
        return Err(SnpMeasureError::OvmfHashNotSnp);
    }
    let ovmf = Ovmf::parse(p.ovmf)?;
    match p.mode {
        SevMode::Sev | SevMode::SevEs => {
            let mut h = Context::new(&SHA256);
            h.update(ovmf.data());
            if let Some(k) = &p.kernel_hashes {
                if !ovmf.supports_sev_hashes_table() {
                    return Err(SnpMeasureError::NoSevHashesTable);
                }
                h.update(&k.table());
            }
            if p.mode == SevMode::SevEs {
                for page in vmsas(p, &ovmf)? {
                    h.update(&page);
                }
            }
            Ok(LaunchDigest(h.finish().as_ref().to_vec()))
        }
        SevMode::Snp => snp_digest(p, &ovmf).map(|ld| LaunchDigest(ld.to_vec())),
    }
}

/// An SNP guest whose firmware is a Coconut SVSM below OVMF
/// (sev-snp-measure `--mode snp:svsm`, QEMU only): OVMF ends at 4 GiB, its
/// variable store (`ovmf_vars_size` bytes) below it, the SVSM image below
/// that. The digest covers the OVMF and SVSM pages, the SVSM's metadata
/// sections, and one SVSM VMSA per vCPU.
#[derive(Debug, Clone, Copy)]
pub struct SvsmParams<'a> {
    /// The OVMF image.
    pub ovmf: &'a [u8],
    /// The SVSM image.
    pub svsm: &'a [u8],
    /// Size of the OVMF variable store (OVMF_VARS) in bytes.
    pub ovmf_vars_size: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// CPUID(1).EAX signature of the vCPUs.
    pub vcpu_sig: u32,
}

fn svsm_parts<'a>(p: &SvsmParams<'a>) -> Result<(Ovmf<'a>, Ovmf<'a>), SnpMeasureError> {
    if p.vcpus == 0 || p.vcpus > MAX_VCPUS {
        return Err(SnpMeasureError::VcpuCount(p.vcpus));
    }
    let ovmf = Ovmf::parse(p.ovmf)?;
    let end = ovmf.gpa().checked_sub(p.ovmf_vars_size).ok_or_else(|| {
        SnpMeasureError::MalformedOvmf(format!(
            "OVMF vars size {:#x} exceeds 4 GiB",
            p.ovmf_vars_size
        ))
    })?;
    let svsm = Ovmf::parse_ending_at(p.svsm, end)?;
    for img in [&ovmf, &svsm] {
        if img.data().len() % PAGE_SIZE != 0 {
            return Err(SnpMeasureError::OvmfNotPageAligned(img.data().len()));
        }
    }
    Ok((ovmf, svsm))
}

/// The VMSA pages of an SVSM guest (all vCPUs alike).
pub fn svsm_vmsa_pages(p: &SvsmParams<'_>) -> Result<Vec<[u8; PAGE_SIZE]>, SnpMeasureError> {
    let (_, svsm) = svsm_parts(p)?;
    let page = save_area_svsm(&svsm, p.vcpu_sig)?;
    Ok(vec![page; p.vcpus as usize])
}

fn save_area_svsm(svsm: &Ovmf<'_>, vcpu_sig: u32) -> Result<[u8; PAGE_SIZE], SnpMeasureError> {
    Ok(svsm_save_area(svsm.svsm_entry()?, vcpu_sig))
}

/// Predict the launch digest of an SVSM guest.
pub fn svsm_launch_digest(p: &SvsmParams<'_>) -> Result<LaunchDigest, SnpMeasureError> {
    let (ovmf, svsm) = svsm_parts(p)?;
    let page = save_area_svsm(&svsm, p.vcpu_sig)?;
    let mut g = Gctx::default();
    g.update_normal_pages(ovmf.gpa(), ovmf.data());
    g.update_normal_pages(svsm.gpa(), svsm.data());
    let meta = LaunchParams {
        mode: SevMode::Snp,
        vcpus: p.vcpus,
        vcpu_sig: p.vcpu_sig,
        vmm_type: VmmType::Qemu,
        ovmf: p.svsm,
        kernel_hashes: None,
        guest_features: 1,
        snp_ovmf_hash: None,
    };
    update_sections(&mut g, &meta, &svsm)?;
    for _ in 0..p.vcpus {
        g.update_vmsa_page(&page);
    }
    Ok(LaunchDigest(g.ld().to_vec()))
}

fn snp_digest(p: &LaunchParams<'_>, ovmf: &Ovmf<'_>) -> Result<[u8; LD_SIZE], SnpMeasureError> {
    let mut g = match p.snp_ovmf_hash {
        Some(seed) => Gctx::with_seed(seed),
        None => {
            if ovmf.data().len() % PAGE_SIZE != 0 {
                return Err(SnpMeasureError::OvmfNotPageAligned(ovmf.data().len()));
            }
            let mut g = Gctx::default();
            g.update_normal_pages(ovmf.gpa(), ovmf.data());
            g
        }
    };
    update_sections(&mut g, p, ovmf)?;
    for page in vmsas(p, ovmf)? {
        g.update_vmsa_page(&page);
    }
    Ok(g.ld())
}

/// Folds the SEV metadata sections of `ovmf` into `g`.
fn update_sections(
    g: &mut Gctx,
    p: &LaunchParams<'_>,
    ovmf: &Ovmf<'_>,
) -> Result<(), SnpMeasureError> {
    if p.kernel_hashes.is_some() && !ovmf.has_section(SectionType::SnpKernelHashes) {
        return Err(SnpMeasureError::NoSnpKernelHashesSection);
    }
    let total: u64 = ovmf.sections().iter().map(|s| u64::from(s.size)).sum();
    if total > MAX_SECTIONS_BYTES {
        return Err(SnpMeasureError::SectionsTooLarge(total));
    }
    for s in ovmf.sections() {
        let whole_pages = s.size % PAGE_SIZE as u32 == 0;
        let bad_size =
            || SnpMeasureError::SectionSize { section: s.section_type, gpa: s.gpa, size: s.size };
        let (gpa, size) = (u64::from(s.gpa), u64::from(s.size));
        match s.section_type {
            SectionType::SnpSecMem | SectionType::SvsmCaa => {
                if !whole_pages {
                    return Err(bad_size());
                }
                let t = if p.vmm_type == VmmType::Gce && s.section_type == SectionType::SnpSecMem {
                    PageType::Unmeasured
                } else {
                    PageType::Zero
                };
                g.update_empty_pages(t, gpa, size);
            }
            SectionType::SnpSecrets => {
                g.update_empty_pages(PageType::Secrets, gpa, PAGE_SIZE as u64)
            }
            SectionType::Cpuid => {
                // EC2 measures the CPUID page after all other sections.
                if !matches!(p.vmm_type, VmmType::Ec2 | VmmType::Ec2Legacy) {
                    g.update_empty_pages(PageType::Cpuid, gpa, PAGE_SIZE as u64);
                }
            }
            SectionType::SnpKernelHashes => match &p.kernel_hashes {
                Some(k) => {
                    if s.size as usize != PAGE_SIZE {
                        return Err(bad_size());
                    }
                    let table_gpa = ovmf.sev_hashes_table_gpa()?;
                    let page = k.page((table_gpa & 0xfff) as usize)?;
                    g.update_normal_pages(gpa, &page);
                }
                None => {
                    if !whole_pages {
                        return Err(bad_size());
                    }
                    g.update_empty_pages(PageType::Zero, gpa, size);
                }
            },
            SectionType::Unknown(t) => return Err(SnpMeasureError::UnknownSection(t)),
        }
    }
    if matches!(p.vmm_type, VmmType::Ec2 | VmmType::Ec2Legacy) {
        for s in ovmf.sections().iter().filter(|s| s.section_type == SectionType::Cpuid) {
            g.update_empty_pages(PageType::Cpuid, u64::from(s.gpa), PAGE_SIZE as u64);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_vmm_names() {
        assert_eq!("sev-snp".parse::<SevMode>().unwrap(), SevMode::Snp);
        assert_eq!("SEV-ES".parse::<SevMode>().unwrap(), SevMode::SevEs);
        assert!("tdx".parse::<SevMode>().is_err());
        assert_eq!("gce".parse::<VmmType>().unwrap(), VmmType::Gce);
        assert_eq!("EC2".parse::<VmmType>().unwrap(), VmmType::Ec2);
        assert!("kvm".parse::<VmmType>().is_err());
    }

    fn params(ovmf: &[u8]) -> LaunchParams<'_> {
        LaunchParams {
            mode: SevMode::Snp,
            vcpus: 1,
            vcpu_sig: 0x800f12,
            vmm_type: VmmType::Qemu,
            ovmf,
            kernel_hashes: None,
            guest_features: 1,
            snp_ovmf_hash: None,
        }
    }

    #[test]
    fn malformed_images_are_errors_not_panics() {
        // Empty and tiny images: no table, so no reset block.
        for len in [0usize, 1, 49, 50, 4095] {
            let img = vec![0u8; len];
            assert!(launch_digest(&params(&img)).is_err(), "{len}");
        }
        // A footer whose table claims more bytes than the image holds.
        let mut img = vec![0u8; 64];
        let footer = 64 - 32 - 18;
        img[footer..footer + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        img[footer + 2..footer + 18].copy_from_slice(&ovmf::guid_le(ovmf::OVMF_TABLE_FOOTER_GUID));
        assert!(matches!(Ovmf::parse(&img), Err(SnpMeasureError::MalformedOvmf(_))));
        // A table entry of size 0 inside a valid footer.
        let mut img = vec![0u8; 4096];
        let footer = 4096 - 50;
        img[footer..footer + 2].copy_from_slice(&(18u16 + 18).to_le_bytes());
        img[footer + 2..footer + 18].copy_from_slice(&ovmf::guid_le(ovmf::OVMF_TABLE_FOOTER_GUID));
        assert!(matches!(Ovmf::parse(&img), Err(SnpMeasureError::MalformedOvmf(_))));
        // Metadata pointing outside the image.
        let mut img = vec![0u8; 4096];
        let entry_end = footer; // entry: data(4) || size || guid, ends at the footer
        img[entry_end - 18..entry_end - 16].copy_from_slice(&22u16.to_le_bytes());
        img[entry_end - 16..entry_end]
            .copy_from_slice(&ovmf::guid_le(ovmf::OVMF_SEV_META_DATA_GUID));
        img[entry_end - 22..entry_end - 18].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        img[footer..footer + 2].copy_from_slice(&(18u16 + 22).to_le_bytes());
        img[footer + 2..footer + 18].copy_from_slice(&ovmf::guid_le(ovmf::OVMF_TABLE_FOOTER_GUID));
        assert!(matches!(Ovmf::parse(&img), Err(SnpMeasureError::MalformedOvmf(_))));
        // Too large.
        let big = vec![0u8; MAX_OVMF_SIZE + 1];
        assert!(matches!(Ovmf::parse(&big), Err(SnpMeasureError::OvmfTooLarge { .. })));
    }

    #[test]
    fn vcpu_bounds() {
        let mut p = params(&[]);
        p.vcpus = 0;
        assert!(launch_digest(&p).is_err());
        p.mode = SevMode::Sev;
        p.snp_ovmf_hash = Some([0; 48]);
        assert!(matches!(launch_digest(&p), Err(SnpMeasureError::OvmfHashNotSnp)));
    }
}
