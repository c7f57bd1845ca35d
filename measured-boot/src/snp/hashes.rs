//! The SEV hashes table QEMU writes into guest memory for measured direct
//! boot (`kernel-hashes=on`): SHA-256 of the kernel, initrd and command line
//! under fixed GUIDs (QEMU `target/i386/sev.c`, `SevHashTable`). OVMF checks
//! the loaded files against it; the launch digest covers it.

use super::gctx::PAGE_SIZE;
use super::ovmf::guid_le;
use super::SnpMeasureError;
use ring::digest::{Context, SHA256};
use std::io::Read;
use std::path::Path;

/// Table header GUID.
pub const SEV_HASH_TABLE_HEADER_GUID: &str = "9438d606-4f22-4cc9-b479-a793d411fd21";
/// Kernel entry GUID.
pub const SEV_KERNEL_ENTRY_GUID: &str = "4de79437-abd2-427f-b835-d5b172d2045b";
/// Initrd entry GUID.
pub const SEV_INITRD_ENTRY_GUID: &str = "44baf731-3a2f-4bd7-9af1-41e29169781d";
/// Command-line entry GUID.
pub const SEV_CMDLINE_ENTRY_GUID: &str = "97d02dd8-bd20-4c94-aa78-e7714d36ab2a";

const ENTRY_LEN: usize = 16 + 2 + 32;
const TABLE_LEN: usize = 16 + 2 + 3 * ENTRY_LEN;
/// The table padded to a multiple of 16 bytes, as QEMU places it.
pub const PADDED_TABLE_LEN: usize = (TABLE_LEN + 15) & !15;

/// SHA-256 of the three direct-boot inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevHashes {
    /// SHA-256 of the kernel image.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd (of no bytes when there is none).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line with its NUL (of `"\0"` when empty).
    pub cmdline: [u8; 32],
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&SHA256, data).as_ref());
    out
}

fn sha256_file(what: &'static str, path: &Path) -> Result<[u8; 32], SnpMeasureError> {
    let err = |source| SnpMeasureError::File { what, path: path.to_path_buf(), source };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// SHA-256 of the command line as QEMU hashes it: the string and a NUL.
pub fn cmdline_hash(append: Option<&str>) -> [u8; 32] {
    let mut c = append.unwrap_or("").as_bytes().to_vec();
    c.push(0);
    sha256(&c)
}

impl SevHashes {
    /// Hashes of in-memory inputs.
    pub fn from_bytes(kernel: &[u8], initrd: Option<&[u8]>, append: Option<&str>) -> SevHashes {
        SevHashes {
            kernel: sha256(kernel),
            initrd: sha256(initrd.unwrap_or(&[])),
            cmdline: cmdline_hash(append),
        }
    }

    /// Hashes of files, read in chunks.
    pub fn from_files(
        kernel: &Path,
        initrd: Option<&Path>,
        append: Option<&str>,
    ) -> Result<SevHashes, SnpMeasureError> {
        Ok(SevHashes {
            kernel: sha256_file("kernel", kernel)?,
            initrd: match initrd {
                Some(p) => sha256_file("initrd", p)?,
                None => sha256(&[]),
            },
            cmdline: cmdline_hash(append),
        })
    }

    /// The padded table bytes: header GUID, length, then the cmdline,
    /// initrd and kernel entries (GUID, length, SHA-256), zero padding.
    pub fn table(&self) -> [u8; PADDED_TABLE_LEN] {
        let mut t = [0u8; PADDED_TABLE_LEN];
        t[0..16].copy_from_slice(&guid_le(SEV_HASH_TABLE_HEADER_GUID));
        t[16..18].copy_from_slice(&(TABLE_LEN as u16).to_le_bytes());
        let entries = [
            (SEV_CMDLINE_ENTRY_GUID, &self.cmdline),
            (SEV_INITRD_ENTRY_GUID, &self.initrd),
            (SEV_KERNEL_ENTRY_GUID, &self.kernel),
        ];
        for (i, (guid, hash)) in entries.iter().enumerate() {
            let o = 18 + i * ENTRY_LEN;
            t[o..o + 16].copy_from_slice(&guid_le(guid));
            t[o + 16..o + 18].copy_from_slice(&(ENTRY_LEN as u16).to_le_bytes());
            t[o + 18..o + 50].copy_from_slice(*hash);
        }
        t
    }

    /// The page that holds the table at `offset` within it.
    pub fn page(&self, offset: usize) -> Result<[u8; PAGE_SIZE], SnpMeasureError> {
        let end =
            offset.checked_add(PADDED_TABLE_LEN).filter(|e| *e <= PAGE_SIZE).ok_or_else(|| {
                SnpMeasureError::MalformedOvmf(format!(
                    "SEV hashes table at page offset {offset:#x} does not fit its page"
                ))
            })?;
        let mut p = [0u8; PAGE_SIZE];
        p[offset..end].copy_from_slice(&self.table());
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(TABLE_LEN, 168);
        assert_eq!(PADDED_TABLE_LEN, 176);
        let h = SevHashes::from_bytes(b"k", None, Some("console=ttyS0"));
        let t = h.table();
        // GUID bytes little-endian in the first three fields.
        assert_eq!(&t[0..4], &[0x06, 0xd6, 0x38, 0x94]);
        assert_eq!(&t[16..18], &[168, 0]);
        assert_eq!(&t[18 + 18..18 + 50], &cmdline_hash(Some("console=ttyS0")));
        assert_eq!(&t[168..], &[0u8; 8]);
        assert_eq!(cmdline_hash(None), cmdline_hash(Some("")));
        assert!(h.page(4096 - 176).is_ok());
        assert!(h.page(4096 - 175).is_err());
    }
}
