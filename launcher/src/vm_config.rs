//! What a VM is launched with, and the checks every launch passes before any
//! backend is started.

use crate::image::{ImageError, SealedImage};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// Smallest memory size accepted: the Debian cloud kernel with a small
/// initramfs needs about this much to reach `/init`.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Largest memory size accepted (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Largest vCPU count accepted (QEMU's microvm and our MP table limit).
pub const MAX_VCPUS: u32 = 255;

/// Errors in a VM's configuration. Nothing has been started when one occurs.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read kernel {path}: {source}")]
    KernelUnreadable { path: PathBuf, source: std::io::Error },
    #[error("kernel {path} is not a bzImage ({reason}); pass the vmlinuz file, not vmlinux or an initrd")]
    NotBzImage { path: PathBuf, reason: &'static str },
    #[error("cannot read firmware {path}: {source}; pass --firmware FILE")]
    FirmwareUnreadable { path: PathBuf, source: std::io::Error },
    #[error("cannot read initrd {path}: {source}; pass an existing initramfs (scripts/setup.sh builds the test one)")]
    InitrdUnreadable { path: PathBuf, source: std::io::Error },
    #[error("initrd {path} is empty")]
    InitrdEmpty { path: PathBuf },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("--memory {mib} MiB is too small: at least {MIN_MEMORY_MIB} MiB is needed")]
    MemoryTooSmall { mib: u64 },
    #[error("--memory {mib} MiB is too large: at most {MAX_MEMORY_MIB} MiB")]
    MemoryTooLarge { mib: u64 },
    #[error("--vcpus 0: a VM needs at least one vCPU")]
    ZeroVcpus,
    #[error("--vcpus {0}: at most {MAX_VCPUS} vCPUs are supported")]
    TooManyVcpus(u32),
    #[error("kernel command line contains a NUL byte or a newline")]
    BadCmdline,
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
}

/// A memory size in MiB, parsed from `256M`, `1G`, `1024` (MiB) or `65536K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySize(pub u64);

impl FromStr for MemorySize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => s.split_at(i),
            None => (s, "M"),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a size; use e.g. 256M, 1G or 512 (MiB)"))?;
        let mib = match unit.to_ascii_uppercase().as_str() {
            "K" | "KIB" => Some(n / 1024).filter(|_| n % 1024 == 0),
            "M" | "MIB" => Some(n),
            "G" | "GIB" => n.checked_mul(1024),
            _ => return Err(format!("unknown size unit '{unit}' in '{s}'; use K, M or G")),
        };
        mib.map(MemorySize).ok_or_else(|| format!("'{s}' is not a whole number of MiB"))
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}M", self.0)
    }
}

/// A VM description, independent of the backend that runs it. The kernel,
/// initrd and firmware are sealed in-memory copies ([`SealedImage`]): what
/// [`VmConfig::validate`] checks, the launch records measure and the backend
/// loads are the same bytes, whatever happens to the files on disk.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: Arc<SealedImage>,
    pub initrd: Arc<SealedImage>,
    pub cmdline: String,
    pub memory: MemorySize,
    pub vcpus: u32,
    /// Firmware the VMM boots (QEMU: `-bios`); `None`: the VMM loads the
    /// kernel itself (the built-in VMM).
    pub firmware: Option<Arc<SealedImage>>,
}

impl VmConfig {
    /// Opens each file once and stages it ([`SealedImage::stage`]); nothing
    /// is checked beyond that (see [`VmConfig::validate`]).
    pub fn stage(
        kernel: &Path,
        initrd: &Path,
        firmware: Option<&Path>,
        cmdline: impl Into<String>,
        memory: MemorySize,
        vcpus: u32,
    ) -> Result<VmConfig, ConfigError> {
        let image = |what, path: &Path| SealedImage::stage(what, path).map(Arc::new);
        Ok(VmConfig {
            kernel: image("kernel", kernel).map_err(|e| match e {
                ImageError::Read { path, source, .. } => {
                    ConfigError::KernelUnreadable { path, source }
                }
                e => e.into(),
            })?,
            initrd: image("initrd", initrd).map_err(|e| match e {
                ImageError::Read { path, source, .. } => {
                    ConfigError::InitrdUnreadable { path, source }
                }
                e => e.into(),
            })?,
            firmware: firmware
                .map(|f| {
                    image("firmware", f).map_err(|e| match e {
                        ImageError::Read { path, source, .. } => {
                            ConfigError::FirmwareUnreadable { path, source }
                        }
                        e => e.into(),
                    })
                })
                .transpose()?,
            cmdline: cmdline.into(),
            memory,
            vcpus,
        })
    }

    /// Checks every field; reads the kernel header from the sealed copy.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let kernel = check_bzimage(&self.kernel)?;
        if self.initrd.is_empty() {
            return Err(ConfigError::InitrdEmpty { path: self.initrd.path().to_path_buf() });
        }
        if self.memory.0 < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall { mib: self.memory.0 });
        }
        if self.memory.0 > MAX_MEMORY_MIB {
            return Err(ConfigError::MemoryTooLarge { mib: self.memory.0 });
        }
        match self.vcpus {
            0 => return Err(ConfigError::ZeroVcpus),
            n if n > MAX_VCPUS => return Err(ConfigError::TooManyVcpus(n)),
            _ => {}
        }
        if self.cmdline.contains(['\0', '\n']) {
            return Err(ConfigError::BadCmdline);
        }
        if self.cmdline.len() > kernel.max_cmdline {
            return Err(ConfigError::CmdlineTooLong {
                len: self.cmdline.len(),
                max: kernel.max_cmdline,
            });
        }
        Ok(())
    }
}

/// What the boot header says about a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BzImageInfo {
    /// Longest command line the kernel accepts, without the terminating NUL.
    pub max_cmdline: usize,
}

/// Checks the x86 Linux boot protocol header of a (sealed) bzImage.
///
/// Written by hand because linux-loader validates a bzImage only while loading
/// it into guest memory; here we want the check before any backend starts.
pub fn check_bzimage(kernel: &SealedImage) -> Result<BzImageInfo, ConfigError> {
    let path = kernel.path();
    let unreadable = |source| ConfigError::KernelUnreadable { path: path.to_path_buf(), source };
    let not = |reason| ConfigError::NotBzImage { path: path.to_path_buf(), reason };
    let mut f = kernel.reader();
    let mut hdr = [0u8; 0x240];
    let mut got = 0;
    while got < hdr.len() {
        match f.read(&mut hdr[got..]).map_err(unreadable)? {
            0 => break,
            n => got += n,
        }
    }
    parse_setup_header(&hdr[..got]).map_err(not)
}

/// Offsets from Documentation/arch/x86/boot.rst.
fn parse_setup_header(h: &[u8]) -> Result<BzImageInfo, &'static str> {
    let at = |o: usize, n: usize| h.get(o..o + n).ok_or("file too short for a boot header");
    if at(0x1fe, 2)? != [0x55, 0xaa] {
        return Err("no 0xAA55 boot signature at 0x1FE");
    }
    if at(0x202, 4)? != b"HdrS" {
        return Err("no 'HdrS' setup header magic at 0x202");
    }
    let version = u16::from_le_bytes([at(0x206, 2)?[0], at(0x206, 2)?[1]]);
    if version < 0x0206 {
        return Err("boot protocol older than 2.06");
    }
    let loadflags = at(0x211, 1)?[0];
    if loadflags & 0x01 == 0 {
        return Err("not loaded high (a zImage, not a bzImage)");
    }
    let setup_sects = at(0x1f1, 1)?[0];
    if setup_sects == 0 {
        return Err("setup_sects is 0");
    }
    let c = at(0x238, 4)?;
    let cmdline_size = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    Ok(BzImageInfo { max_cmdline: usize::try_from(cmdline_size).unwrap_or(usize::MAX) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut h = vec![0u8; 0x240];
        h[0x1f1] = 4;
        h[0x1fe] = 0x55;
        h[0x1ff] = 0xaa;
        h[0x202..0x206].copy_from_slice(b"HdrS");
        h[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        h[0x211] = 0x01;
        h[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        h
    }

    #[test]
    fn memory_sizes() {
        assert_eq!("256M".parse::<MemorySize>().unwrap(), MemorySize(256));
        assert_eq!("1G".parse::<MemorySize>().unwrap(), MemorySize(1024));
        assert_eq!("512".parse::<MemorySize>().unwrap(), MemorySize(512));
        assert_eq!("131072K".parse::<MemorySize>().unwrap(), MemorySize(128));
        assert!("1000K".parse::<MemorySize>().is_err());
        assert!("12X".parse::<MemorySize>().is_err());
        assert!("M".parse::<MemorySize>().is_err());
        assert!("99999999999999999999G".parse::<MemorySize>().is_err());
    }

    #[test]
    fn bzimage_header() {
        assert_eq!(parse_setup_header(&header()), Ok(BzImageInfo { max_cmdline: 2047 }));
        let mut h = header();
        h[0x1fe] = 0;
        assert_eq!(parse_setup_header(&h), Err("no 0xAA55 boot signature at 0x1FE"));
        let mut h = header();
        h[0x211] = 0;
        assert!(parse_setup_header(&h).unwrap_err().contains("zImage"));
        assert!(parse_setup_header(&header()[..0x100]).is_err());
        assert!(parse_setup_header(&[]).is_err());
        let mut h = header();
        h[0x206] = 0x01;
        h[0x207] = 0x02;
        assert!(parse_setup_header(&h).unwrap_err().contains("2.06"));
    }
}
