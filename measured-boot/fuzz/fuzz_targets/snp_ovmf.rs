//! OVMF images (untrusted input to SEV/SNP launch-digest prediction): the
//! footer table, SEV metadata and every mode's digest must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_measured_boot::snp::{self, LaunchParams, SevHashes, SevMode, VmmType};

fuzz_target!(|data: &[u8]| {
    let _ = snp::snp_ovmf_hash(data);
    let hashes = SevHashes::from_bytes(b"kernel", Some(b"initrd"), Some("console=ttyS0"));
    for (mode, vmm, kernel) in [
        (SevMode::Snp, VmmType::Qemu, true),
        (SevMode::Snp, VmmType::Gce, false),
        (SevMode::Snp, VmmType::Ec2, true),
        (SevMode::SevEs, VmmType::Qemu, true),
        (SevMode::Sev, VmmType::Qemu, true),
    ] {
        let p = LaunchParams {
            mode,
            vcpus: 2,
            vcpu_sig: 0x800f12,
            vmm_type: vmm,
            ovmf: data,
            kernel_hashes: kernel.then_some(hashes),
            guest_features: 0x21,
            snp_ovmf_hash: None,
        };
        let _ = snp::launch_digest(&p);
    }
    // The same bytes as an SVSM image below a minimal OVMF position.
    let _ = snp::svsm_launch_digest(&snp::SvsmParams {
        ovmf: &[],
        svsm: data,
        ovmf_vars_size: 0x84000,
        vcpus: 1,
        vcpu_sig: 0x800f12,
    });
});
