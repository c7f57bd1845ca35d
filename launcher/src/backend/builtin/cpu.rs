//! vCPU set-up: CPUID (KVM's supported set, normalised per vCPU), MSRs, FPU,
//! local APIC LINT0/LINT1, and the 64-bit entry state of the boot vCPU as the
//! Linux boot protocol asks for it (boot.rst, "64-bit boot protocol").
//! Application processors are left to KVM's in-kernel LAPIC: they wait for
//! INIT/SIPI from the guest.

use super::boot::{self, Entry};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_segment, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: HTT (the logical-processor count in EBX is valid).
const EDX_HTT: u32 = 1 << 28;

/// What went wrong setting up a vCPU (KVM refused a register set).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up vCPU {vcpu}: {what}: {source}")]
pub struct CpuError {
    /// The vCPU's index.
    pub vcpu: u32,
    /// What was being set.
    pub what: &'static str,
    /// KVM's answer.
    pub source: kvm_ioctls::Error,
}

/// Adapts KVM's supported CPUID to vCPU `id` of `count`: APIC ids, topology
/// (one socket, one thread per core, `count` cores) and the hypervisor bit.
pub fn normalize_cpuid(cpuid: &mut CpuId, id: u32, count: u32) {
    let core_bits = 32 - (count.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | (count.min(255) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            4 => {
                // Cores per package - 1 in EAX[31:26].
                e.eax = (e.eax & 0x03ff_ffff) | ((count - 1) << 26);
            }
            0xb | 0x1f => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8; // level 0: SMT
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1; // core level
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
            }
            _ => {}
        }
    }
}

fn msrs() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry { index, data, ..Default::default() };
    vec![
        e(0x174, 0),       // IA32_SYSENTER_CS
        e(0x175, 0),       // IA32_SYSENTER_ESP
        e(0x176, 0),       // IA32_SYSENTER_EIP
        e(0xc000_0081, 0), // STAR
        e(0xc000_0082, 0), // LSTAR
        e(0xc000_0083, 0), // CSTAR
        e(0xc000_0084, 0), // SYSCALL_MASK
        e(0xc000_0102, 0), // KERNEL_GS_BASE
        e(0x10, 0),        // TSC
        e(0x1a0, 1),       // IA32_MISC_ENABLE: fast strings
    ]
}

/// Sets up vCPU `id` of `count`. `entry` is given for the boot vCPU only.
pub fn setup(
    vcpu: &VcpuFd,
    id: u32,
    count: u32,
    supported: &CpuId,
    entry: Option<Entry>,
) -> Result<(), CpuError> {
    let err = |what| move |source| CpuError { vcpu: id, what, source };
    let mut cpuid = supported.clone();
    normalize_cpuid(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid).map_err(err("CPUID"))?;

    let entries = msrs();
    let m = Msrs::from_entries(&entries).map_err(|_| CpuError {
        vcpu: id,
        what: "MSRs",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    let set = vcpu.set_msrs(&m).map_err(err("MSRs"))?;
    if set != entries.len() {
        return Err(CpuError {
            vcpu: id,
            what: "MSRs (KVM accepted only some)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }

    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(err("FPU"))?;

    // LAPIC: LINT0 ExtINT (the PIC), LINT1 NMI, as the MP table says.
    let mut lapic = vcpu.get_lapic().map_err(err("LAPIC"))?;
    set_lvt(&mut lapic.regs, 0x350, 0x7); // ExtINT
    set_lvt(&mut lapic.regs, 0x360, 0x4); // NMI
    vcpu.set_lapic(&lapic).map_err(err("LAPIC"))?;

    if let Some(entry) = entry {
        let mut regs = vcpu.get_regs().map_err(err("registers"))?;
        regs.rflags = 0x2;
        regs.rip = entry.rip;
        regs.rsp = boot::BOOT_STACK;
        regs.rbp = boot::BOOT_STACK;
        regs.rsi = boot::ZERO_PAGE;
        vcpu.set_regs(&regs).map_err(err("registers"))?;

        let mut s = vcpu.get_sregs().map_err(err("special registers"))?;
        let seg = |selector: u16, type_: u8, l: u8, db: u8| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db,
            s: 1,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        s.cs = seg(boot::BOOT_CS, 0xb, 1, 0);
        let data = seg(boot::BOOT_DS, 0x3, 0, 1);
        (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
        s.gdt.base = boot::GDT_ADDR;
        s.gdt.limit = (boot::GDT.len() * 8 - 1) as u16;
        s.idt.base = boot::IDT_ADDR;
        s.idt.limit = 7;
        s.cr3 = boot::PML4_ADDR;
        s.cr4 |= 1 << 5; // PAE
        s.cr0 |= (1 << 0) | (1 << 31); // PE, PG
        s.efer |= (1 << 8) | (1 << 10); // LME, LMA
        vcpu.set_sregs(&s).map_err(err("special registers"))?;
    }
    Ok(())
}

/// Sets the delivery mode of a LAPIC local vector table entry.
fn set_lvt(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *x as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn cpuid_normalised_per_vcpu() {
        let leaf = |function, index| kvm_cpuid_entry2 { function, index, ..Default::default() };
        let mut c =
            CpuId::from_entries(&[leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(4, 0)]).unwrap();
        normalize_cpuid(&mut c, 3, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[2].ebx, 4);
        assert_eq!(e[2].eax, 2);
        assert_eq!(e[3].eax >> 26, 3);
    }

    #[test]
    fn lvt_delivery_mode() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[0x351] = 0x17u8 as std::os::raw::c_char; // masked bits stay
        set_lvt(&mut regs, 0x350, 0x7);
        assert_eq!(regs[0x351] as u8, 0x17);
        set_lvt(&mut regs, 0x350, 0x4);
        assert_eq!(regs[0x351] as u8, 0x14);
    }
}
