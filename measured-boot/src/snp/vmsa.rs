//! Initial VMSA (SEV-ES save area, AMD APM vol. 2 table B-4) of each vCPU
//! at reset, as the VMM sets it up; SEV-ES and SEV-SNP measure these pages.

use super::gctx::PAGE_SIZE;
use super::VmmType;

/// EIP of the boot processor at reset.
pub const BSP_EIP: u32 = 0xffff_fff0;

// Offsets in the save area.
const ES: usize = 0x00;
const CS: usize = 0x10;
const SS: usize = 0x20;
const DS: usize = 0x30;
const FS: usize = 0x40;
const GS: usize = 0x50;
const GDTR: usize = 0x60;
const LDTR: usize = 0x70;
const IDTR: usize = 0x80;
const TR: usize = 0x90;
const EFER: usize = 0xd0;
const CR4: usize = 0x148;
const CR0: usize = 0x158;
const DR7: usize = 0x160;
const DR6: usize = 0x168;
const RFLAGS: usize = 0x170;
const RIP: usize = 0x178;
const G_PAT: usize = 0x268;
const RDX: usize = 0x310;
const SEV_FEATURES: usize = 0x3b0;
const XCR0: usize = 0x3e8;
const MXCSR: usize = 0x408;
const X87_FCW: usize = 0x410;

struct Page([u8; PAGE_SIZE]);

impl Page {
    fn seg(&mut self, at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
        self.0[at..at + 2].copy_from_slice(&selector.to_le_bytes());
        self.0[at + 2..at + 4].copy_from_slice(&attrib.to_le_bytes());
        self.0[at + 4..at + 8].copy_from_slice(&limit.to_le_bytes());
        self.0[at + 8..at + 16].copy_from_slice(&base.to_le_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn u16(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
}

/// The save area of a vCPU that starts at `eip`.
///
/// The VMMs differ: QEMU puts the CPUID signature in RDX and sets the FPU
/// control words; EC2 uses non-accessed CS (BSP), SS and TR types, RDX
/// 0x600 (0 before sev-snp-measure 4a02bf0: [`VmmType::Ec2Legacy`]) and no
/// FPU defaults; GCE overrides the PAT and uses RDX 0x600.
pub fn save_area(eip: u32, sev_features: u64, vcpu_sig: u32, vmm: VmmType) -> [u8; PAGE_SIZE] {
    let mut g_pat: u64 = 0x0007_0406_0007_0406;
    let (cs_flags, ss_flags, tr_flags, rdx, mxcsr, fcw) = match vmm {
        VmmType::Qemu => (0x9b, 0x93, 0x8b, u64::from(vcpu_sig), 0x1f80, 0x37f),
        VmmType::Ec2 | VmmType::Ec2Legacy => {
            let cs = if eip == BSP_EIP { 0x9a } else { 0x9b };
            let rdx = if vmm == VmmType::Ec2 { 0x600 } else { 0 };
            (cs, 0x92, 0x83, rdx, 0, 0)
        }
        VmmType::Gce => {
            g_pat = 0x0007_0106;
            (0x9b, 0x93, 0x8b, 0x600, 0, 0)
        }
    };
    let mut p = Page([0; PAGE_SIZE]);
    p.seg(ES, 0, 0x93, 0xffff, 0);
    p.seg(CS, 0xf000, cs_flags, 0xffff, u64::from(eip & 0xffff_0000));
    p.seg(SS, 0, ss_flags, 0xffff, 0);
    p.seg(DS, 0, 0x93, 0xffff, 0);
    p.seg(FS, 0, 0x93, 0xffff, 0);
    p.seg(GS, 0, 0x93, 0xffff, 0);
    p.seg(GDTR, 0, 0, 0xffff, 0);
    p.seg(IDTR, 0, 0, 0xffff, 0);
    p.seg(LDTR, 0, 0x82, 0xffff, 0);
    p.seg(TR, 0, tr_flags, 0xffff, 0);
    p.u64(EFER, 0x1000); // EFER.SVME, as KVM sets it
    p.u64(CR4, 0x40); // CR4.MCE
    p.u64(CR0, 0x10); // CR0.ET
    p.u64(DR7, 0x400);
    p.u64(DR6, 0xffff_0ff0);
    p.u64(RFLAGS, 0x2);
    p.u64(RIP, u64::from(eip & 0xffff));
    p.u64(G_PAT, g_pat);
    p.u64(RDX, rdx);
    p.u64(SEV_FEATURES, sev_features);
    p.u64(XCR0, 0x1);
    p.u32(MXCSR, mxcsr);
    p.u16(X87_FCW, fcw);
    p.0
}

/// The save area of every vCPU of an SNP guest under a Coconut SVSM (QEMU):
/// 32-bit protected mode at the SVSM entry point, SEV_FEATURES 0x1.
/// Like sev-snp-measure's `VMSA_SVSM`, the x87 control word stays 0 (its
/// field is not set there, and the recorded digests depend on that).
pub fn svsm_save_area(entry: u64, vcpu_sig: u32) -> [u8; PAGE_SIZE] {
    let mut p = Page([0; PAGE_SIZE]);
    p.seg(ES, 16, 0xc93, 0xffff_ffff, 0);
    p.seg(CS, 8, 0xc9b, 0xffff_ffff, 0);
    p.seg(SS, 16, 0xc93, 0xffff_ffff, 0);
    p.seg(DS, 16, 0xc93, 0xffff_ffff, 0);
    p.seg(FS, 16, 0xc93, 0xffff_ffff, 0);
    p.seg(GS, 0, 0x93, 0xffff, 0);
    p.seg(GDTR, 0, 0, 0xffff, 0);
    p.seg(IDTR, 0, 0, 0xffff, 0);
    p.seg(LDTR, 0, 0x82, 0xffff, 0);
    p.seg(TR, 0, 0x8b, 0xffff, 0);
    p.u64(EFER, 0x1000);
    p.u64(CR4, 0x40);
    p.u64(CR0, 0x11); // protected mode
    p.u64(DR7, 0x400);
    p.u64(DR6, 0xffff_0ff0);
    p.u64(RFLAGS, 0x2);
    p.u64(RIP, entry);
    p.u64(G_PAT, 0x0007_0406_0007_0406);
    p.u64(RDX, u64::from(vcpu_sig));
    p.u64(SEV_FEATURES, 0x1);
    p.u64(XCR0, 0x1);
    p.u32(MXCSR, 0x1f80);
    p.0
}
