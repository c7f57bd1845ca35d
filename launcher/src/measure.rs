//! What the launcher measures for a launch: the inputs of
//! [`tellus_measured_boot::records::launch_records`], built from a resolved
//! [`VmSpec`](crate::run::VmSpec). `tellus run` (measured launch, next issue)
//! and `tellus measure predict` both go through [`launch_inputs`], so a
//! prediction names exactly what a launch measures.

use crate::backend::{builtin, qemu};
use crate::image::SealedImage;
use crate::run::{Resolved, VmSpec, Vmm};
use std::path::PathBuf;
use tellus_measured_boot::records::{
    LaunchConfig, LaunchInputs, LauncherConfig, SnpLaunch, ABSENT_FEATURES,
};
use tellus_measured_boot::snp::{self, cmdline_hash, SevHashes, SevMode, SnpMeasureError, VmmType};

/// The running launcher's executable, as the kernel holds it.
const SELF_EXE: &str = "/proc/self/exe";

/// Default PCR for launch records (UAPI registry: OS range, not resettable).
pub const DEFAULT_PCR: u32 = 13;

/// Errors of building the measurement inputs.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error(
        "--pcr {0}: launch records go into PCR 8..=15 (never 16 or 23: resettable from locality 0)"
    )]
    BadPcr(u32),
    #[error("cannot predict the SEV-SNP launch digest: {0}")]
    SnpDigest(#[from] SnpMeasureError),
    #[error("--snp-vcpu-type {0}: unknown vCPU model; use one of: {1}")]
    SnpVcpuType(String, String),
    #[error("--sev-snp needs the OVMF image as firmware")]
    SnpNoFirmware,
}

/// Largest OVMF image read for the SNP prediction (as the parser's limit).
const MAX_OVMF: u64 = 64 << 20;

/// Checks the PCR choice: the OS range of the PC Client registry only.
pub fn check_pcr(pcr: u32) -> Result<u32, MeasureError> {
    if (8..=15).contains(&pcr) {
        Ok(pcr)
    } else {
        Err(MeasureError::BadPcr(pcr))
    }
}

/// The measurement inputs of a launch. `launch_ticket` is the verifier's
/// per-launch value, when there is one.
pub fn launch_inputs(
    spec: &VmSpec,
    r: &Resolved,
    pcr: u32,
    launch_ticket: Option<String>,
) -> Result<LaunchInputs, MeasureError> {
    // The image this process runs, through the magic link: it opens the
    // executed inode itself, so a binary replaced (or deleted) on disk after
    // the launcher started cannot stand in for the one that runs.
    let launcher = PathBuf::from(SELF_EXE);
    let qemu = r.vmm.qemu();
    let snp = match qemu.and_then(|q| q.snp()) {
        Some(s) => Some(snp_launch(s, r)?),
        None => None,
    };
    Ok(LaunchInputs {
        launcher,
        // The VMM's sealed copy, which is what is executed.
        vmm: Some(match &r.vmm {
            Vmm::Qemu(q) => q.executable().fd_path(),
            Vmm::Builtin(b) => b.executable().fd_path(),
        }),
        launcher_config: LauncherConfig { pcr: check_pcr(pcr)? },
        name: spec.name.clone(),
        launch_ticket,
        launch_config: LaunchConfig {
            backend: if qemu.is_some() { "qemu" } else { "builtin" }.into(),
            accel: r.accel.to_string(),
            machine: qemu.map_or(builtin::MACHINE, |q| q.machine().name()).into(),
            vcpus: r.vm.vcpus,
            memory_mib: r.vm.memory.0,
            devices: if qemu.is_some() { &qemu::DEVICES[..] } else { &builtin::DEVICES[..] }
                .iter()
                .map(|s| s.to_string())
                .collect(),
            sev_policy: snp.as_ref().map(|s| s.policy),
            absent_features: ABSENT_FEATURES.iter().map(|s| s.to_string()).collect(),
        },
        // The sealed copies the backend loads, not the files on disk: the
        // records hash exactly the bytes the VM gets (see crate::image).
        firmware: r.vm.firmware.as_ref().map(|f| f.fd_path()),
        kernel: r.vm.kernel.fd_path(),
        initrd: r.vm.initrd.fd_path(),
        cmdline: r.vm.cmdline.clone(),
        snp,
    })
}

/// Predicts the MEASUREMENT of an SNP guest QEMU launches from the resolved
/// OVMF, kernel, initrd and command line (`kernel-hashes=on`).
fn snp_launch(s: &qemu::snp::SnpSpec, r: &Resolved) -> Result<SnpLaunch, MeasureError> {
    let fw = r.vm.firmware.as_ref().ok_or(MeasureError::SnpNoFirmware)?;
    let file_err = |img: &SealedImage, source| SnpMeasureError::File {
        what: img.what(),
        path: img.path().to_path_buf(),
        source,
    };
    let ovmf = fw.read_all(MAX_OVMF).map_err(|e| file_err(fw, e))?;
    let vcpu_sig = snp::vcpu_sig_of(&s.vcpu_type).ok_or_else(|| {
        MeasureError::SnpVcpuType(
            s.vcpu_type.clone(),
            snp::vcpu_type_names().collect::<Vec<_>>().join(", "),
        )
    })?;
    let sha256 = |img: &SealedImage| -> Result<[u8; 32], SnpMeasureError> {
        let m = img.measurement().map_err(|e| file_err(img, e))?;
        m.sha256
            .as_bytes()
            .try_into()
            .map_err(|_| file_err(img, std::io::Error::other("the SHA-256 digest is not 32 bytes")))
    };
    let hashes = SevHashes {
        kernel: sha256(&r.vm.kernel)?,
        initrd: sha256(&r.vm.initrd)?,
        cmdline: cmdline_hash(Some(&r.vm.cmdline)),
    };
    let digest = snp::launch_digest(&snp::LaunchParams {
        mode: SevMode::Snp,
        vcpus: r.vm.vcpus,
        vcpu_sig,
        vmm_type: VmmType::Qemu,
        ovmf: &ovmf,
        kernel_hashes: Some(hashes),
        guest_features: qemu::snp::GUEST_FEATURES,
        snp_ovmf_hash: None,
    })?;
    Ok(SnpLaunch {
        measurement: digest.hex(),
        policy: s.policy,
        vcpu_type: s.vcpu_type.clone(),
        vmm_type: VmmType::Qemu.to_string(),
        guest_features: qemu::snp::GUEST_FEATURES,
    })
}
