//! What the launcher measures for a launch: the inputs of
//! [`tellus_measured_boot::records::launch_records`], built from a resolved
//! [`VmSpec`](crate::run::VmSpec). `tellus run` (measured launch, next issue)
//! and `tellus measure predict` both go through [`launch_inputs`], so a
//! prediction names exactly what a launch measures.

use crate::backend::{builtin, qemu};
use crate::run::{Resolved, VmSpec};
use std::path::PathBuf;
use tellus_measured_boot::records::{LaunchConfig, LaunchInputs, LauncherConfig, ABSENT_FEATURES};

/// Default PCR for launch records (UAPI registry: OS range, not resettable).
pub const DEFAULT_PCR: u32 = 13;

/// Errors of building the measurement inputs.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("cannot locate the running launcher executable: {0}")]
    SelfExe(std::io::Error),
    #[error(
        "--pcr {0}: launch records go into PCR 8..=15 (never 16 or 23: resettable from locality 0)"
    )]
    BadPcr(u32),
}

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
    let launcher: PathBuf = std::env::current_exe().map_err(MeasureError::SelfExe)?;
    Ok(LaunchInputs {
        launcher,
        // The built-in VMM is the launcher itself (measured as `launcher`).
        vmm: r.qemu.as_ref().map(|q| q.program().to_path_buf()),
        launcher_config: LauncherConfig { pcr: check_pcr(pcr)? },
        name: spec.name.clone(),
        launch_ticket,
        launch_config: LaunchConfig {
            backend: if r.qemu.is_some() { "qemu" } else { "builtin" }.into(),
            accel: r.accel.to_string(),
            machine: if r.qemu.is_some() { qemu::MACHINE } else { builtin::MACHINE }.into(),
            vcpus: r.vm.vcpus,
            memory_mib: r.vm.memory.0,
            devices: if r.qemu.is_some() { &qemu::DEVICES[..] } else { &builtin::DEVICES[..] }
                .iter()
                .map(|s| s.to_string())
                .collect(),
            sev_policy: None,
            absent_features: ABSENT_FEATURES.iter().map(|s| s.to_string()).collect(),
        },
        firmware: r.vm.firmware.clone(),
        kernel: r.vm.kernel.clone(),
        initrd: r.vm.initrd.clone(),
        cmdline: r.vm.cmdline.clone(),
    })
}
