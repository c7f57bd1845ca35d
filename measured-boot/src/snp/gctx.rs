//! The SNP guest context launch digest: each page the AMD-SP measures at
//! launch (SNP_LAUNCH_UPDATE) folds a PAGE_INFO structure into a running
//! SHA-384 (SEV-SNP ABI, "PAGE_INFO" layout).

use ring::digest::{digest, SHA384};

/// Size of the SNP launch digest (SHA-384).
pub const LD_SIZE: usize = 48;
/// Size of a guest page.
pub const PAGE_SIZE: usize = 4096;

/// The GPA the VMSA pages are recorded with: `(u64)-1` page-aligned, bits
/// above 51 cleared.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// Page types of SNP_LAUNCH_UPDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// Measured content.
    Normal = 0x01,
    /// A VMSA page.
    Vmsa = 0x02,
    /// A page of zeros.
    Zero = 0x03,
    /// Memory that is not measured.
    Unmeasured = 0x04,
    /// The secrets page.
    Secrets = 0x05,
    /// The CPUID page.
    Cpuid = 0x06,
}

/// The running launch digest.
#[derive(Debug, Clone)]
pub struct Gctx {
    ld: [u8; LD_SIZE],
}

impl Default for Gctx {
    fn default() -> Self {
        Gctx { ld: [0; LD_SIZE] }
    }
}

impl Gctx {
    /// A context seeded with a precomputed digest (the `--snp-ovmf-hash`
    /// shortcut: the OVMF pages were folded in elsewhere).
    pub fn with_seed(seed: [u8; LD_SIZE]) -> Self {
        Gctx { ld: seed }
    }

    /// The digest so far.
    pub fn ld(&self) -> [u8; LD_SIZE] {
        self.ld
    }

    fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; LD_SIZE]) {
        // PAGE_INFO: digest_cur(48) contents(48) length(u16) page_type(u8)
        // imi_page(u8) vmpl3/2/1 perms(u8 each) reserved(u8) gpa(u64) = 0x70.
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.ld);
        info[48..96].copy_from_slice(contents);
        info[96..98].copy_from_slice(&0x70u16.to_le_bytes());
        info[98] = page_type as u8;
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        self.ld.copy_from_slice(digest(&SHA384, &info).as_ref());
    }

    /// Measured pages; `data` must be whole pages (the caller checks).
    pub(crate) fn update_normal_pages(&mut self, start_gpa: u64, data: &[u8]) {
        debug_assert_eq!(data.len() % PAGE_SIZE, 0);
        for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
            let mut h = [0u8; LD_SIZE];
            h.copy_from_slice(digest(&SHA384, page).as_ref());
            self.update(PageType::Normal, start_gpa + (i * PAGE_SIZE) as u64, &h);
        }
    }

    /// One VMSA page.
    pub(crate) fn update_vmsa_page(&mut self, page: &[u8; PAGE_SIZE]) {
        let mut h = [0u8; LD_SIZE];
        h.copy_from_slice(digest(&SHA384, page).as_ref());
        self.update(PageType::Vmsa, VMSA_GPA, &h);
    }

    /// Pages of a type whose contents are not hashed (zero, unmeasured,
    /// secrets, CPUID): `len` bytes from `gpa`, whole pages.
    pub(crate) fn update_empty_pages(&mut self, page_type: PageType, gpa: u64, len: u64) {
        debug_assert_eq!(len % PAGE_SIZE as u64, 0);
        let mut off = 0;
        while off < len {
            self.update(page_type, gpa + off, &[0; LD_SIZE]);
            off += PAGE_SIZE as u64;
        }
    }
}
