//! The boot path: guest memory, kernel, initrd, command line, zero page with
//! the e820 map, GDT, identity page tables and the MP table. Everything here
//! runs before the first vCPU; the result is a sealed [`GuestRam`] and the
//! entry state of the boot vCPU.
//!
//! Layout of low memory (all below 1 MiB except the kernel and initrd):
//!
//! | address   | what                                   |
//! |-----------|----------------------------------------|
//! | 0x500     | GDT (null, null, code64 0x10, data 0x18) |
//! | 0x520     | IDT (empty)                            |
//! | 0x7000    | zero page (`boot_params`)              |
//! | 0x8ff0    | boot stack top                         |
//! | 0x9000    | PML4, 0xa000 PDPT, 0xb000 PD (1 GiB identity, 2 MiB pages) |
//! | 0x20000   | kernel command line                    |
//! | 0x9fc00   | MP table (last KiB of base memory, where Linux looks) |
//! | 0x100000  | protected-mode kernel                  |
//! | top of RAM below 3 GiB | initrd                    |

use super::kernel::{self, KernelError, KernelInfo, ENTRY_64_OFFSET, KERNEL_LOAD};
use super::ram::GuestRam;
use crate::image::{ImageReader, SealedImage};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};

type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Guest-physical address of the GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Guest-physical address of the (empty) IDT.
pub const IDT_ADDR: u64 = 0x520;
/// Guest-physical address of the zero page (`boot_params`); `rsi` at entry.
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Page-map level 4 of the identity map (CR3).
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table of the identity map.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory of the identity map (2 MiB pages, first GiB).
pub const PD_ADDR: u64 = 0xb000;
/// Guest-physical address of the kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Guest-physical address of the MP floating pointer and table.
pub const MPTABLE_ADDR: u64 = 0x9_fc00;
/// End of base memory the guest may use (the MP table sits above).
const EBDA_START: u64 = MPTABLE_ADDR;
/// RAM below this; the rest goes above 4 GiB (LAPIC/IOAPIC live below 4 GiB).
pub const LOW_RAM_MAX: u64 = 0xc000_0000;
const HIGH_RAM_START: u64 = 1 << 32;
/// Boot code selector (boot.rst: `__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Boot data selector (boot.rst: `__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// GDT entries: null, null, 64-bit code, data.
pub const GDT: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
/// Local APIC address (the MP table names it).
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// IO-APIC address (the MP table names it).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Most vCPUs the MP table is built for.
pub const MAX_VCPUS: u32 = 8;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// What is booted.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// bzImage, sealed (untrusted: checked before loading). Read with
    /// positional reads only, so [`load`] can run any number of times.
    pub kernel: Arc<SealedImage>,
    /// Initial ramdisk, sealed, loaded as is.
    pub initrd: Arc<SealedImage>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: u32,
}

/// Errors of the boot path. Nothing has run when one occurs.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("kernel {path}: {source}")]
    Kernel { path: PathBuf, source: KernelError },
    #[error("{mib} MiB of guest memory is too small: the kernel and initrd need at least {need_mib} MiB; pass a larger --memory")]
    MemoryTooSmall { mib: u64, need_mib: u64 },
    #[error("--vcpus {0}: the built-in VMM supports 1..={MAX_VCPUS} vCPUs")]
    Vcpus(u32),
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: u64 },
    #[error("kernel command line contains a NUL byte or a newline")]
    BadCmdline,
    #[error("cannot allocate {mib} MiB of guest memory: {detail}")]
    Memory { mib: u64, detail: String },
    #[error("cannot load the kernel into guest memory: {0}")]
    Load(String),
    #[error("cannot write {what} into guest memory: {detail}")]
    Write { what: &'static str, detail: String },
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// 64-bit entry point of the kernel.
    pub rip: u64,
}

fn read_err(what: &'static str, img: &SealedImage) -> impl FnOnce(std::io::Error) -> BootError {
    let path = img.path().to_path_buf();
    move |source| BootError::Read { what, path, source }
}

fn write_err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BootError {
    move |e| BootError::Write { what, detail: e.to_string() }
}

/// Guest memory regions for `mib` MiB: RAM below 3 GiB, the rest above 4 GiB.
pub fn regions(mib: u64) -> Vec<(u64, u64)> {
    let total = mib << 20;
    let low = total.min(LOW_RAM_MAX);
    let mut r = vec![(0, low)];
    if total > low {
        r.push((HIGH_RAM_START, total - low));
    }
    r
}

/// Checks everything [`load`] would refuse, without allocating guest
/// memory: run before the measured launch, so a kernel the built-in VMM
/// cannot boot is refused before anything is recorded.
pub fn preflight(spec: &BootSpec) -> Result<(), BootError> {
    check(spec, &mut spec.kernel.reader()).map(|_| ())
}

/// The checks shared by [`preflight`] and [`load`]; returns the kernel's
/// header facts and the initrd's address.
fn check(spec: &BootSpec, kernel: &mut ImageReader<'_>) -> Result<(KernelInfo, u64), BootError> {
    if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
        return Err(BootError::Vcpus(spec.vcpus));
    }
    let info = kernel::inspect(kernel, spec.kernel.len())
        .map_err(|source| BootError::Kernel { path: spec.kernel.path().to_path_buf(), source })?;
    if spec.cmdline.contains(['\0', '\n']) {
        return Err(BootError::BadCmdline);
    }
    if spec.cmdline.len() as u64 > info.cmdline_size.max(255) {
        return Err(BootError::CmdlineTooLong {
            len: spec.cmdline.len(),
            max: info.cmdline_size.max(255),
        });
    }
    let initrd_len = spec.initrd.len();
    let low_end = (spec.memory_mib << 20).min(LOW_RAM_MAX);
    let initrd_addr = place_initrd(&info, initrd_len, low_end).ok_or_else(|| {
        let need = KERNEL_LOAD + info.init_size + page_up(initrd_len) + (1 << 20);
        BootError::MemoryTooSmall { mib: spec.memory_mib, need_mib: need.div_ceil(1 << 20) }
    })?;
    Ok((info, initrd_addr))
}

/// Checks the inputs, then builds guest memory with everything the kernel
/// needs, and seals it. The kernel and initrd are the sealed copies the
/// launch measured, read from their first byte with positional reads: what
/// is checked is what is measured is what is loaded, and `load` may run
/// again (a reboot) with the same result. Opens no file.
pub fn load(spec: &BootSpec) -> Result<(GuestRam, Entry), BootError> {
    let mut kf = spec.kernel.reader();
    let initrd_len = spec.initrd.len();
    let (_, initrd_addr) = check(spec, &mut kf)?;

    let mem = GuestMemoryMmap::from_ranges(
        &regions(spec.memory_mib)
            .into_iter()
            .map(|(a, l)| (GuestAddress(a), l as usize))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| BootError::Memory { mib: spec.memory_mib, detail: e.to_string() })?;

    kf.seek(SeekFrom::Start(0)).map_err(read_err("kernel", &spec.kernel))?;
    let mut initrd = spec.initrd.reader();
    let loaded = BzImage::load(&mem, Some(GuestAddress(KERNEL_LOAD)), &mut kf, None)
        .map_err(|e| BootError::Load(e.to_string()))?;
    let Some(mut hdr) = loaded.setup_header else {
        return Err(BootError::Load("linux-loader returned no setup header".into()));
    };
    mem.read_exact_volatile_from(GuestAddress(initrd_addr), &mut initrd, initrd_len as usize)
        .map_err(write_err("the initrd"))?;

    let mut cmdline = spec.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(CMDLINE_ADDR)).map_err(write_err("the command line"))?;

    // Zero page: the kernel's setup header plus what a boot loader fills in.
    let mut params = boot_params::default();
    hdr.type_of_loader = 0xff;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = spec.cmdline.len() as u32;
    hdr.ramdisk_image = initrd_addr as u32;
    hdr.ramdisk_size = initrd_len as u32;
    params.hdr = hdr;
    let mut e820 =
        vec![(0, EBDA_START, E820_RAM), (EBDA_START, 0x10_0000 - EBDA_START, E820_RESERVED)];
    for (start, len) in regions(spec.memory_mib) {
        let (start, len) = if start == 0 { (KERNEL_LOAD, len - KERNEL_LOAD) } else { (start, len) };
        e820.push((start, len, E820_RAM));
    }
    for (i, (addr, size, typ)) in e820.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *typ;
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        &mem,
    )
    .map_err(write_err("the zero page"))?;

    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64)).map_err(write_err("the GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR)).map_err(write_err("the IDT"))?;
    // Identity map of the first GiB: PML4[0] -> PDPT[0] -> PD of 2 MiB pages.
    mem.write_obj(PDPT_ADDR | 0x03, GuestAddress(PML4_ADDR)).map_err(write_err("page tables"))?;
    mem.write_obj(PD_ADDR | 0x03, GuestAddress(PDPT_ADDR)).map_err(write_err("page tables"))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PD_ADDR + i * 8))
            .map_err(write_err("page tables"))?;
    }
    mem.write_slice(&mptable(spec.vcpus), GuestAddress(MPTABLE_ADDR))
        .map_err(write_err("the MP table"))?;

    let entry = Entry { rip: KERNEL_LOAD + ENTRY_64_OFFSET };
    Ok((GuestRam::seal(mem), entry))
}

fn page_up(n: u64) -> u64 {
    n.div_ceil(4096) * 4096
}

/// Highest page-aligned place for the initrd below the kernel's limit and the
/// end of low RAM, above the kernel's decompression area; `None` if it does
/// not fit.
fn place_initrd(info: &KernelInfo, len: u64, low_end: u64) -> Option<u64> {
    let limit = match info.initrd_addr_max {
        0 => low_end,
        m => low_end.min(m.saturating_add(1)),
    };
    let kernel_end = KERNEL_LOAD.checked_add(info.init_size)?;
    let addr = limit.checked_sub(len)? & !0xfff;
    (addr >= page_up(kernel_end)).then_some(addr)
}

/// An Intel MultiProcessor Specification 1.4 table for `vcpus` processors:
/// floating pointer, configuration table header, one processor entry per
/// vCPU (APIC id = vCPU index), the ISA bus, the IO-APIC, ISA IRQs 0..15 to
/// IO-APIC pins 0..15, and LINT0 = ExtINT, LINT1 = NMI.
///
/// Hand-written: no maintained crate builds MP tables (the rust-vmm VMMs each
/// carry their own); the format is fixed and small.
pub fn mptable(vcpus: u32) -> Vec<u8> {
    let ioapic_id = vcpus as u8; // after the processors' APIC ids
    let mut entries = Vec::new();
    let mut count = 0u16;
    for id in 0..vcpus {
        let flags = if id == 0 { 0x03 } else { 0x01 }; // enabled, BSP
        entries.extend_from_slice(&[0, id as u8, 0x14, flags]);
        entries.extend_from_slice(&0x0000_0600_u32.to_le_bytes()); // CPU signature (family 6)
        entries.extend_from_slice(&0x0000_0201u32.to_le_bytes()); // FPU + APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    entries.extend_from_slice(&[2, ioapic_id, 0x11, 0x01]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for irq in 0..16u8 {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: type 4; ExtINT (3) to LINT0, NMI (1) to LINT1, all APICs.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = MPTABLE_ADDR as u32 + 16;
    let mut table = Vec::new();
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"TELLUS  ");
    table.extend_from_slice(b"BUILTIN-VMM ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 16 B, rev 1.4, checksum, features
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    fp
}

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |s, x| s.wrapping_add(*x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mptable_checksums_and_counts() {
        for n in 1..=MAX_VCPUS {
            let t = mptable(n);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(t[..16].iter().fold(0u8, |s, x| s.wrapping_add(*x)), 0);
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(16 + len, t.len());
            assert_eq!(t[16..].iter().fold(0u8, |s, x| s.wrapping_add(*x)), 0);
            let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
            assert_eq!(u32::from(count), n + 2 + 16 + 2);
            assert!(t.len() <= 1024, "fits in the last KiB of base memory");
        }
    }

    #[test]
    fn memory_regions_skip_the_32bit_hole() {
        assert_eq!(regions(256), vec![(0, 256 << 20)]);
        assert_eq!(regions(4096), vec![(0, LOW_RAM_MAX), (1 << 32, (4096 << 20) - LOW_RAM_MAX)]);
    }
}
