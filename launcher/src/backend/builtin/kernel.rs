//! The kernel image: a bounded check of the bzImage boot header (the file is
//! untrusted), then loading through linux-loader.
//!
//! linux-loader's own checks are minimal (magic, `LOADED_HIGH`); the ones the
//! built-in VMM relies on (boot protocol 2.12 for a 64-bit entry described by
//! `xloadflags`, `XLF_KERNEL_64`, `init_size`) are made here first, from a
//! fixed-size header buffer, so a short or random file gets a specific error
//! before anything is written to guest memory.

use std::io::Read;

/// Where the protected-mode kernel is loaded (1 MiB, the boot protocol's
/// traditional `code32_start`). The 64-bit entry is 0x200 bytes into it.
pub const KERNEL_LOAD: u64 = 0x10_0000;
/// Offset of the 64-bit entry point in the loaded kernel (boot.rst).
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// Oldest boot protocol accepted: 2.12 introduced `xloadflags` with
/// `XLF_KERNEL_64`, which says the 64-bit entry exists.
pub const MIN_PROTOCOL: u16 = 0x020c;
/// `xloadflags` bit: the kernel has the legacy 64-bit entry at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `loadflags` bit: the protected-mode code is loaded at 0x100000.
pub const LOADED_HIGH: u8 = 1 << 0;
/// Bytes of the file the header check reads (up to and including `init_size`).
pub const HEADER_LEN: usize = 0x268;

/// Why a kernel image is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("kernel image is {len} bytes, too short for a bzImage boot header ({HEADER_LEN} bytes); pass the vmlinuz file")]
    TooShort { len: u64 },
    #[error("kernel image has no 0xAA55 boot signature at 0x1FE: not a bzImage (random bytes, vmlinux or an initrd?)")]
    NoBootSignature,
    #[error("kernel image has no 'HdrS' setup header magic at 0x202: not a bzImage")]
    NoHdrS,
    #[error("kernel boot protocol {major}.{minor} is too old: the built-in VMM needs 2.12 or newer (64-bit entry); use --backend qemu")]
    ProtocolTooOld { major: u8, minor: u8 },
    #[error("kernel has no 64-bit entry point (XLF_KERNEL_64 not set in xloadflags); build it for x86_64")]
    No64BitEntry,
    #[error("kernel is not a bzImage loaded high (LOADED_HIGH not set in loadflags)")]
    NotLoadedHigh,
    #[error("kernel image is truncated: the header announces {setup} bytes of real-mode setup and {payload} bytes of payload, the file has {len}")]
    Truncated { setup: u64, payload: u64, len: u64 },
    #[error("kernel image is too large ({len} bytes) for the built-in VMM's limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
}

/// What the header says, after the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelInfo {
    /// Boot protocol version (e.g. 0x020f).
    pub protocol: u16,
    /// Size of the real-mode setup in the file (the payload follows it).
    pub setup_len: u64,
    /// Bytes of protected-mode payload in the file.
    pub payload_len: u64,
    /// Memory the kernel needs from its load address while it decompresses.
    pub init_size: u64,
    /// Highest address the initrd may end at (inclusive).
    pub initrd_addr_max: u64,
    /// Longest command line, without the NUL.
    pub cmdline_size: u64,
}

/// Largest image accepted (a sanity bound; Debian's vmlinuz is ~8 MiB).
pub const MAX_IMAGE: u64 = 256 << 20;

/// Reads and checks the boot header of `file` (`len` is the file's size).
pub fn inspect(file: &mut impl Read, len: u64) -> Result<KernelInfo, KernelError> {
    if len < HEADER_LEN as u64 {
        return Err(KernelError::TooShort { len });
    }
    if len > MAX_IMAGE {
        return Err(KernelError::TooLarge { len, max: MAX_IMAGE });
    }
    let mut h = [0u8; HEADER_LEN];
    // The size was checked above; a read error here is a truncated file too.
    file.read_exact(&mut h).map_err(|_| KernelError::TooShort { len })?;
    parse_header(&h, len)
}

/// Checks a header buffer against the file length.
pub fn parse_header(h: &[u8; HEADER_LEN], len: u64) -> Result<KernelInfo, KernelError> {
    let u8_at = |o: usize| h[o];
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    if u16_at(0x1fe) != 0xaa55 {
        return Err(KernelError::NoBootSignature);
    }
    if &h[0x202..0x206] != b"HdrS" {
        return Err(KernelError::NoHdrS);
    }
    let protocol = u16_at(0x206);
    if protocol < MIN_PROTOCOL {
        return Err(KernelError::ProtocolTooOld {
            major: (protocol >> 8) as u8,
            minor: (protocol & 0xff) as u8,
        });
    }
    if u8_at(0x211) & LOADED_HIGH == 0 {
        return Err(KernelError::NotLoadedHigh);
    }
    if u16_at(0x236) & XLF_KERNEL_64 == 0 {
        return Err(KernelError::No64BitEntry);
    }
    let sects = match u8_at(0x1f1) {
        0 => 4,
        n => u64::from(n),
    };
    let setup_len = (sects + 1) * 512;
    // The payload must at least hold the 64-bit entry's first bytes.
    let payload_len = len.saturating_sub(setup_len);
    if payload_len <= ENTRY_64_OFFSET {
        return Err(KernelError::Truncated { setup: setup_len, payload: payload_len, len });
    }
    // `syssize` (0x1f4, in 16-byte units, rounded up) is what the image says
    // its payload is.
    let syssize = u64::from(u32_at(0x1f4)) * 16;
    if syssize > payload_len + 15 {
        return Err(KernelError::Truncated { setup: setup_len, payload: syssize, len });
    }
    let init_size = u64::from(u32_at(0x260)).max(payload_len);
    Ok(KernelInfo {
        protocol,
        setup_len,
        payload_len,
        init_size,
        initrd_addr_max: u64::from(u32_at(0x22c)),
        cmdline_size: u64::from(u32_at(0x238)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0x1f1] = 1;
        h[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        h[0x202..0x206].copy_from_slice(b"HdrS");
        h[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        h[0x211] = LOADED_HIGH;
        h[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        h[0x1f4..0x1f8].copy_from_slice(&(0x1000u32 / 16).to_le_bytes());
        h
    }

    #[test]
    fn accepts_a_good_header() {
        let i = parse_header(&header(), 1024 + 0x1000).unwrap();
        assert_eq!(i.setup_len, 1024);
        assert_eq!(i.payload_len, 0x1000);
        assert_eq!(i.protocol, 0x020f);
    }

    #[test]
    fn specific_errors() {
        let mut h = header();
        h[0x206] = 0x0b;
        assert_eq!(
            parse_header(&h, 0x2000),
            Err(KernelError::ProtocolTooOld { major: 2, minor: 11 })
        );
        let mut h = header();
        h[0x236] = 0;
        assert_eq!(parse_header(&h, 0x2000), Err(KernelError::No64BitEntry));
        let mut h = header();
        h[0x211] = 0;
        assert_eq!(parse_header(&h, 0x2000), Err(KernelError::NotLoadedHigh));
        assert!(matches!(
            parse_header(&header(), 1024 + 0x800),
            Err(KernelError::Truncated { .. })
        ));
        assert!(matches!(
            parse_header(&header(), 1024 + 0x100),
            Err(KernelError::Truncated { .. })
        ));
        let mut h = header();
        h[0x1fe] = 0;
        assert_eq!(parse_header(&h, 0x2000), Err(KernelError::NoBootSignature));
        let mut h = header();
        h[0x203] = 0;
        assert_eq!(parse_header(&h, 0x2000), Err(KernelError::NoHdrS));
        assert_eq!(inspect(&mut &[0u8; 100][..], 100), Err(KernelError::TooShort { len: 100 }));
    }
}
