//! The OVMF footer GUID table and SEV metadata, parsed with bounds checks
//! (an OVMF image is untrusted input).
//!
//! Layout (edk2 `OvmfPkg/ResetVector`): the table ends 32 bytes before the
//! end of the image with a footer entry `{u16 size, GUID}` whose size is the
//! whole table's; entries run backwards from there, each `data || u16 size
//! || GUID` with `size` counting the 18-byte header. The SEV metadata entry
//! points (offset from the end of the image) at an `ASEV` header followed by
//! `{u32 gpa, u32 size, u32 type}` section descriptors.

use super::SnpMeasureError;

/// Largest OVMF image accepted (real images are 2–4 MiB; this bounds the
/// memory and hashing an untrusted file can cost).
pub const MAX_OVMF_SIZE: usize = 64 << 20;
/// Most SEV metadata sections accepted.
pub const MAX_METADATA_ITEMS: usize = 256;

const FOUR_GB: u64 = 0x1_0000_0000;
const ENTRY_HEADER: usize = 18;

/// `96b582de-1fb2-45f7-baea-a366c55a082d`: footer of the GUID table.
pub const OVMF_TABLE_FOOTER_GUID: &str = "96b582de-1fb2-45f7-baea-a366c55a082d";
/// `7255371f-3a3b-4b04-927b-1da6efa8d454`: where the SEV hashes table lives.
pub const SEV_HASH_TABLE_RV_GUID: &str = "7255371f-3a3b-4b04-927b-1da6efa8d454";
/// `00f771de-1a7e-4fcb-890e-68c77e2fb44e`: the SEV-ES AP reset vector.
pub const SEV_ES_RESET_BLOCK_GUID: &str = "00f771de-1a7e-4fcb-890e-68c77e2fb44e";
/// `dc886566-984a-4798-a75e-5585a7bf67cc`: the SEV metadata (`ASEV`) offset.
pub const OVMF_SEV_META_DATA_GUID: &str = "dc886566-984a-4798-a75e-5585a7bf67cc";
/// `a789a612-0597-4c4b-a49f-cbb1fe9d1ddd`: the SVSM entry point (offset
/// from the SVSM image's start).
pub const SVSM_INFO_GUID: &str = "a789a612-0597-4c4b-a49f-cbb1fe9d1ddd";

/// A GUID string in the mixed-endian byte order EFI stores (first three
/// fields little-endian). `s` must be a well-formed GUID; only constants of
/// this crate are passed.
pub(crate) fn guid_le(s: &str) -> [u8; 16] {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// Types of SEV metadata sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionType {
    /// SNP_SEC_MEM: pre-validated memory (zero pages; unmeasured on GCE).
    SnpSecMem,
    /// SNP_SECRETS: the secrets page.
    SnpSecrets,
    /// CPUID: the CPUID page.
    Cpuid,
    /// SVSM_CAA: the SVSM calling area.
    SvsmCaa,
    /// SNP_KERNEL_HASHES: the page holding the SEV hashes table.
    SnpKernelHashes,
    /// A type this code does not know (an error when SNP measures it).
    Unknown(u32),
}

impl SectionType {
    fn from_u32(v: u32) -> SectionType {
        match v {
            1 => SectionType::SnpSecMem,
            2 => SectionType::SnpSecrets,
            3 => SectionType::Cpuid,
            4 => SectionType::SvsmCaa,
            0x10 => SectionType::SnpKernelHashes,
            other => SectionType::Unknown(other),
        }
    }
}

/// One SEV metadata section descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataSection {
    /// Guest-physical address.
    pub gpa: u32,
    /// Size in bytes.
    pub size: u32,
    /// What the section holds.
    pub section_type: SectionType,
}

/// A parsed OVMF image.
#[derive(Debug, Clone)]
pub struct Ovmf<'a> {
    data: &'a [u8],
    gpa: u64,
    table: Vec<([u8; 16], &'a [u8])>,
    sections: Vec<MetadataSection>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn malformed(what: impl Into<String>) -> SnpMeasureError {
    SnpMeasureError::MalformedOvmf(what.into())
}

impl<'a> Ovmf<'a> {
    /// Parse an image that ends at 4 GiB (the OVMF flash mapping).
    pub fn parse(data: &'a [u8]) -> Result<Ovmf<'a>, SnpMeasureError> {
        Ovmf::parse_ending_at(data, FOUR_GB)
    }

    /// Parse an image mapped to end at `end_gpa` (an SVSM image sits below
    /// OVMF and its variable store). Both carry the same footer table.
    pub fn parse_ending_at(data: &'a [u8], end_gpa: u64) -> Result<Ovmf<'a>, SnpMeasureError> {
        if data.len() > MAX_OVMF_SIZE {
            return Err(SnpMeasureError::OvmfTooLarge { size: data.len(), max: MAX_OVMF_SIZE });
        }
        let gpa = end_gpa.checked_sub(data.len() as u64).ok_or_else(|| {
            malformed(format!("an image of {} bytes cannot end at {end_gpa:#x}", data.len()))
        })?;
        let mut o = Ovmf { data, gpa, table: Vec::new(), sections: Vec::new() };
        o.parse_footer_table()?;
        o.parse_sev_metadata()?;
        Ok(o)
    }

    /// The image bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Guest-physical address of the first byte.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The SEV metadata sections, in file order.
    pub fn sections(&self) -> &[MetadataSection] {
        &self.sections
    }

    /// Whether a section of that type is present.
    pub fn has_section(&self, t: SectionType) -> bool {
        self.sections.iter().any(|s| s.section_type == t)
    }

    /// The data of the GUID table entry named `guid` (string form).
    pub fn table_entry(&self, guid: &str) -> Option<&'a [u8]> {
        let g = guid_le(guid);
        self.table.iter().find(|(k, _)| *k == g).map(|(_, v)| *v)
    }

    fn table_u32(&self, guid: &'static str) -> Result<u32, SnpMeasureError> {
        let entry = self.table_entry(guid).ok_or(SnpMeasureError::MissingTableEntry(guid))?;
        u32_at(entry, 0)
            .ok_or_else(|| malformed(format!("table entry {guid} shorter than 4 bytes")))
    }

    /// Guest-physical address of the SEV hashes table.
    pub fn sev_hashes_table_gpa(&self) -> Result<u32, SnpMeasureError> {
        self.table_u32(SEV_HASH_TABLE_RV_GUID)
    }

    /// Whether OVMF verifies kernel/initrd/cmdline hashes (SEV, SEV-ES).
    pub fn supports_sev_hashes_table(&self) -> bool {
        matches!(self.sev_hashes_table_gpa(), Ok(gpa) if gpa != 0)
    }

    /// EIP at which application processors start (SEV-ES reset block).
    pub fn sev_es_reset_eip(&self) -> Result<u32, SnpMeasureError> {
        self.table_u32(SEV_ES_RESET_BLOCK_GUID)
    }

    /// Entry point of an SVSM image: its SVSM_INFO offset plus its GPA.
    pub fn svsm_entry(&self) -> Result<u64, SnpMeasureError> {
        Ok(u64::from(self.table_u32(SVSM_INFO_GUID)?) + self.gpa)
    }

    fn parse_footer_table(&mut self) -> Result<(), SnpMeasureError> {
        let size = self.data.len();
        let Some(footer_start) = size.checked_sub(32 + ENTRY_HEADER) else {
            // Too small to carry a table: like an image without one.
            return Ok(());
        };
        let footer = &self.data[footer_start..footer_start + ENTRY_HEADER];
        if footer[2..18] != guid_le(OVMF_TABLE_FOOTER_GUID) {
            return Ok(());
        }
        let table_len = usize::from(u16_at(footer, 0).unwrap_or(0));
        let Some(table_size) = table_len.checked_sub(ENTRY_HEADER) else {
            return Ok(());
        };
        let table_start = footer_start.checked_sub(table_size).ok_or_else(|| {
            malformed(format!("GUID table of {table_len} bytes exceeds the image"))
        })?;
        let mut table = &self.data[table_start..footer_start];
        while table.len() >= ENTRY_HEADER {
            let hdr = &table[table.len() - ENTRY_HEADER..];
            let entry_size = usize::from(u16_at(hdr, 0).unwrap_or(0));
            if entry_size < ENTRY_HEADER {
                return Err(malformed(format!("GUID table entry of size {entry_size} (< 18)")));
            }
            if entry_size > table.len() {
                return Err(malformed(format!(
                    "GUID table entry of size {entry_size} with {} bytes of table left",
                    table.len()
                )));
            }
            let mut guid = [0u8; 16];
            guid.copy_from_slice(&hdr[2..18]);
            let data = &table[table.len() - entry_size..table.len() - ENTRY_HEADER];
            // A repeated GUID: the entry nearer the start wins, as in
            // sev-snp-measure (later insertions replace).
            self.table.retain(|(g, _)| *g != guid);
            self.table.push((guid, data));
            table = &table[..table.len() - entry_size];
        }
        Ok(())
    }

    fn parse_sev_metadata(&mut self) -> Result<(), SnpMeasureError> {
        let Some(entry) = self.table_entry(OVMF_SEV_META_DATA_GUID) else {
            return Ok(());
        };
        let offset_from_end = u32_at(entry, 0)
            .ok_or_else(|| malformed("SEV metadata entry shorter than 4 bytes"))?
            as usize;
        let start = self.data.len().checked_sub(offset_from_end).ok_or_else(|| {
            malformed(format!("SEV metadata offset {offset_from_end} exceeds the image"))
        })?;
        let hdr = self
            .data
            .get(start..start + 16)
            .ok_or_else(|| malformed("SEV metadata header runs past the end of the image"))?;
        if &hdr[0..4] != b"ASEV" {
            return Err(malformed("SEV metadata signature is not ASEV"));
        }
        let hsize = u32_at(hdr, 4).unwrap_or(0) as usize;
        let version = u32_at(hdr, 8).unwrap_or(0);
        let num_items = u32_at(hdr, 12).unwrap_or(0) as usize;
        if version != 1 {
            return Err(malformed(format!("SEV metadata version {version} (expected 1)")));
        }
        if num_items > MAX_METADATA_ITEMS {
            return Err(malformed(format!(
                "{num_items} SEV metadata sections (max {MAX_METADATA_ITEMS})"
            )));
        }
        let items = hsize
            .checked_sub(16)
            .and_then(|n| self.data.get(start + 16..start + 16 + n))
            .ok_or_else(|| {
            malformed(format!("SEV metadata size {hsize} does not fit the image"))
        })?;
        for i in 0..num_items {
            let d = items.get(i * 12..i * 12 + 12).ok_or_else(|| {
                malformed(format!("SEV metadata section {i} beyond the header size"))
            })?;
            self.sections.push(MetadataSection {
                gpa: u32_at(d, 0).unwrap_or(0),
                size: u32_at(d, 4).unwrap_or(0),
                section_type: SectionType::from_u32(u32_at(d, 8).unwrap_or(0)),
            });
        }
        Ok(())
    }
}
