//! The QEMU command line of an AMD SEV-SNP guest (QEMU 9.1 or later with a
//! host kernel that has SNP, KVM only): a pure function of the launch
//! configuration, so the exact invocation is testable without SEV hardware.
//! Launching it is the QEMU backend's job; this builds only the arguments.
//!
//! ```text
//! -nodefaults -no-user-config -accel kvm
//! -machine q35,confidential-guest-support=sev0,memory-backend=ram0,vmport=off
//! -object memory-backend-memfd,id=ram0,size=<M>M,share=true,prealloc=false
//! -object sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,
//!         kernel-hashes=on,host-data=<base64 of 32 bytes>
//! -cpu EPYC-v4 -smp N -m <M>M -bios OVMF.fd -kernel K -initrd I -append C
//! ```
//!
//! `-bios`, not pflash: SNP guests' firmware is measured as one ROM image,
//! the image tellus predicts the launch digest from.

use super::{image_args, q35_machine, CLOSED};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// SNP guest policy bit 17: reserved, must be 1.
pub const POLICY_RESERVED_1: u64 = 1 << 17;
/// SNP guest policy bit 19: debugging allowed (the host can read and write
/// guest memory).
pub const POLICY_DEBUG: u64 = 1 << 19;
/// SNP guest policy bit 18: a migration agent may be associated.
pub const POLICY_MIGRATE_MA: u64 = 1 << 18;
/// Default policy: SMT allowed, reserved bit set, ABI 0.0, no debug, no
/// migration agent.
pub const DEFAULT_POLICY: u64 = 0x30000;

/// What the SNP invocation is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpQemuConfig {
    /// OVMF image (an `OvmfPkg/AmdSev` build for measured direct boot). The
    /// QEMU backend passes its sealed copy, `/proc/self/fd/N` of a descriptor
    /// QEMU inherits (see [`crate::image`]), as for the kernel and initrd.
    pub ovmf: PathBuf,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// QEMU CPU model (its signature enters the launch digest).
    pub cpu_model: String,
    /// SNP guest policy.
    pub policy: u64,
    /// C-bit position (51 on Milan, Genoa, Turin).
    pub cbitpos: u32,
    /// Physical address bits the C-bit takes away.
    pub reduced_phys_bits: u32,
    /// HOST_DATA (tellus: SHA-256 of the launch-config record).
    pub host_data: Option<[u8; 32]>,
    /// Kernel for measured direct boot (`kernel-hashes=on`); QEMU hashes
    /// what it loads from this path, so it must be the sealed copy.
    pub kernel: Option<PathBuf>,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub append: Option<String>,
}

/// Why no invocation was built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnpQemuError {
    /// Policy with debugging allowed.
    #[error("SNP policy {0:#x} allows debugging (bit 19): the host could read guest memory; tellus refuses it")]
    DebugPolicy(u64),
    /// Policy with a migration agent.
    #[error("SNP policy {0:#x} allows a migration agent (bit 18); tellus refuses it")]
    MigrationAgent(u64),
    /// Policy without the reserved bit.
    #[error("SNP policy {0:#x} lacks reserved bit 17, which the firmware requires")]
    ReservedBit(u64),
    /// Initrd or cmdline without kernel.
    #[error("--initrd and --append need --kernel")]
    NoKernel,
    /// Zero vCPUs or memory.
    #[error("an SNP guest needs at least 1 vCPU and some memory")]
    Empty,
    /// A CPU model QEMU would parse as options.
    #[error("CPU model {0:?} is not a plain model name")]
    CpuModel(String),
}

/// C-bit position of Milan, Genoa and Turin.
pub const CBITPOS: u32 = 51;
/// Physical address bits the C-bit takes away (QEMU's value for these CPUs).
pub const REDUCED_PHYS_BITS: u32 = 1;
/// vCPU model of SNP guests unless `--snp-vcpu-type` says otherwise.
pub const DEFAULT_VCPU_TYPE: &str = "EPYC-v4";
/// SEV_FEATURES QEMU gives SNP guests' VMSAs (bit 0, SNPActive).
pub const GUEST_FEATURES: u64 = 0x1;

/// What `--sev-snp` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpSpec {
    /// SNP guest policy (`--snp-policy`).
    pub policy: u64,
    /// QEMU CPU model (`--snp-vcpu-type`); its signature enters the digest.
    pub vcpu_type: String,
}

impl Default for SnpSpec {
    fn default() -> Self {
        SnpSpec { policy: DEFAULT_POLICY, vcpu_type: DEFAULT_VCPU_TYPE.into() }
    }
}

/// Why an SEV-SNP guest cannot be launched. Raised before anything is
/// measured or started.
#[derive(Debug, thiserror::Error)]
pub enum SnpError {
    /// The host has no SEV-SNP.
    #[error("--sev-snp needs an AMD SEV-SNP host, but {0}; nothing was measured or started. Run on an SNP-enabled EPYC host (kvm_amd sev_snp=1, /dev/sev), or drop --sev-snp")]
    NoHost(String),
    /// SNP guests run on q35 only.
    #[error("--sev-snp needs --machine q35 (an SNP guest cannot run on {0})")]
    NotQ35(&'static str),
    /// SNP guests run under KVM only.
    #[error("--sev-snp needs KVM (--accel kvm or auto on an SNP host); TCG has no SEV")]
    NotKvm,
    /// The command line was to be built before the launch records.
    #[error("internal: the SNP guest's HOST_DATA was not bound from its launch records")]
    NoHostData,
    /// No OVMF given.
    #[error("--sev-snp needs OVMF as --firmware (an OvmfPkg/AmdSev build)")]
    NoFirmware,
    /// The SNP arguments were refused.
    #[error(transparent)]
    Args(#[from] SnpQemuError),
}

/// Checks that this host can run SEV-SNP guests: `/dev/sev` exists and
/// `kvm_amd` was loaded with `sev_snp` on.
pub fn check_host() -> Result<(), SnpError> {
    check_host_in(Path::new("/"))
}

fn check_host_in(root: &Path) -> Result<(), SnpError> {
    let param = root.join("sys/module/kvm_amd/parameters/sev_snp");
    let snp =
        match std::fs::read_to_string(&param) {
            Ok(v) => matches!(v.trim(), "Y" | "y" | "1"),
            Err(_) if !root.join("sys/module/kvm_amd").exists() => return Err(SnpError::NoHost(
                "kvm_amd is not loaded (/sys/module/kvm_amd does not exist: not an AMD KVM host)"
                    .into(),
            )),
            Err(e) => {
                return Err(SnpError::NoHost(format!(
                    "{} cannot be read ({e}): this kvm_amd has no SEV-SNP support",
                    param.display()
                )))
            }
        };
    if !snp {
        return Err(SnpError::NoHost(format!(
            "{} is not Y: SEV-SNP is off in kvm_amd (firmware, BIOS or kernel lacks it)",
            param.display()
        )));
    }
    if !root.join("dev/sev").exists() {
        return Err(SnpError::NoHost("/dev/sev does not exist (no ccp/AMD-SP driver)".into()));
    }
    Ok(())
}

fn arg(v: impl Into<OsString>) -> OsString {
    v.into()
}

impl SnpSpec {
    /// Checks the policy and the CPU model before anything is measured
    /// (the same checks [`snp_qemu_args`] makes).
    pub fn check(&self) -> Result<(), SnpQemuError> {
        check_policy(self.policy)?;
        check_cpu_model(&self.vcpu_type)
    }
}

fn check_policy(policy: u64) -> Result<(), SnpQemuError> {
    if policy & POLICY_DEBUG != 0 {
        return Err(SnpQemuError::DebugPolicy(policy));
    }
    if policy & POLICY_MIGRATE_MA != 0 {
        return Err(SnpQemuError::MigrationAgent(policy));
    }
    if policy & POLICY_RESERVED_1 == 0 {
        return Err(SnpQemuError::ReservedBit(policy));
    }
    Ok(())
}

fn check_cpu_model(m: &str) -> Result<(), SnpQemuError> {
    if m.is_empty() || !m.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
        return Err(SnpQemuError::CpuModel(m.into()));
    }
    Ok(())
}

/// The QEMU arguments (without the program) of an SNP guest.
pub fn snp_qemu_args(c: &SnpQemuConfig) -> Result<Vec<OsString>, SnpQemuError> {
    check_policy(c.policy)?;
    if c.kernel.is_none() && (c.initrd.is_some() || c.append.is_some()) {
        return Err(SnpQemuError::NoKernel);
    }
    if c.vcpus == 0 || c.memory_mib == 0 {
        return Err(SnpQemuError::Empty);
    }
    check_cpu_model(&c.cpu_model)?;
    let mut guest = format!(
        "sev-snp-guest,id=sev0,cbitpos={},reduced-phys-bits={},policy={:#x}",
        c.cbitpos, c.reduced_phys_bits, c.policy
    );
    if c.kernel.is_some() {
        guest.push_str(",kernel-hashes=on");
    }
    if let Some(h) = &c.host_data {
        use base64::Engine;
        guest.push_str(",host-data=");
        guest.push_str(&base64::engine::general_purpose::STANDARD.encode(h));
    }
    // The q35 machine and images of every QEMU guest; SNP adds its guest
    // object and guest memory in a memfd (the backend of its private memory).
    let machine = q35_machine(&["confidential-guest-support=sev0", "memory-backend=ram0"]);
    let memory =
        format!("memory-backend-memfd,id=ram0,size={}M,share=true,prealloc=false", c.memory_mib);
    let mut a: Vec<OsString> = CLOSED.into_iter().map(arg).collect();
    a.extend([arg("-accel"), arg("kvm"), arg("-machine"), arg(machine)]);
    a.extend([arg("-object"), arg(memory), arg("-object"), arg(guest)]);
    a.extend([arg("-cpu"), arg(&c.cpu_model), arg("-smp"), arg(c.vcpus.to_string())]);
    a.extend([arg("-m"), arg(format!("{}M", c.memory_mib))]);
    let (kernel, initrd, append) = (c.kernel.as_deref(), c.initrd.as_deref(), c.append.as_deref());
    a.extend(image_args(Some(&c.ovmf), kernel, initrd, append));
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SnpQemuConfig {
        SnpQemuConfig {
            ovmf: "/usr/share/ovmf/OVMF.amdsev.fd".into(),
            vcpus: 2,
            memory_mib: 2048,
            cpu_model: "EPYC-v4".into(),
            policy: DEFAULT_POLICY,
            cbitpos: 51,
            reduced_phys_bits: 1,
            host_data: Some([0xab; 32]),
            kernel: Some("/var/lib/tellus/vmlinuz".into()),
            initrd: Some("/var/lib/tellus/initrd.img".into()),
            append: Some("console=ttyS0 tellus.channel=ttyS1".into()),
        }
    }

    #[test]
    fn golden_command_line() {
        let args = snp_qemu_args(&config()).unwrap();
        let line: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let golden = [
            "-nodefaults",
            "-no-user-config",
            "-accel",
            "kvm",
            "-machine",
            "q35,confidential-guest-support=sev0,memory-backend=ram0,vmport=off",
            "-object",
            "memory-backend-memfd,id=ram0,size=2048M,share=true,prealloc=false",
            "-object",
            "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on,\
             host-data=q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=",
            "-cpu",
            "EPYC-v4",
            "-smp",
            "2",
            "-m",
            "2048M",
            "-bios",
            "/usr/share/ovmf/OVMF.amdsev.fd",
            "-kernel",
            "/var/lib/tellus/vmlinuz",
            "-initrd",
            "/var/lib/tellus/initrd.img",
            "-append",
            "console=ttyS0 tellus.channel=ttyS1",
        ];
        assert_eq!(line, golden);
    }

    #[test]
    fn without_kernel_or_host_data() {
        let c =
            SnpQemuConfig { kernel: None, initrd: None, append: None, host_data: None, ..config() };
        let line: Vec<String> =
            snp_qemu_args(&c).unwrap().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(line.contains(
            &"sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000".to_string()
        ));
        assert!(!line.iter().any(|a| a == "-kernel" || a.contains("kernel-hashes")));
    }

    #[test]
    fn host_check() {
        let d = tempfile::tempdir().unwrap();
        let e = check_host_in(d.path()).unwrap_err().to_string();
        assert!(e.contains("kvm_amd is not loaded") && e.contains("nothing was measured"), "{e}");
        let params = d.path().join("sys/module/kvm_amd/parameters");
        std::fs::create_dir_all(&params).unwrap();
        let e = check_host_in(d.path()).unwrap_err().to_string();
        assert!(e.contains("no SEV-SNP support"), "{e}");
        std::fs::write(params.join("sev_snp"), "N\n").unwrap();
        assert!(check_host_in(d.path()).unwrap_err().to_string().contains("is not Y"));
        std::fs::write(params.join("sev_snp"), "Y\n").unwrap();
        assert!(check_host_in(d.path()).unwrap_err().to_string().contains("/dev/sev"));
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        std::fs::write(d.path().join("dev/sev"), b"").unwrap();
        check_host_in(d.path()).unwrap();
    }

    /// This machine (no SEV hardware) is refused with the reason.
    #[test]
    fn this_host() {
        match check_host() {
            Ok(()) => eprintln!("this host has SEV-SNP"),
            Err(e) => assert!(e.to_string().starts_with("--sev-snp needs an AMD SEV-SNP host")),
        }
    }

    #[test]
    fn refusals() {
        let with = |f: &dyn Fn(&mut SnpQemuConfig)| {
            let mut c = config();
            f(&mut c);
            snp_qemu_args(&c)
        };
        assert_eq!(with(&|c| c.policy |= POLICY_DEBUG), Err(SnpQemuError::DebugPolicy(0xb0000)));
        assert_eq!(
            with(&|c| c.policy |= POLICY_MIGRATE_MA),
            Err(SnpQemuError::MigrationAgent(0x70000))
        );
        assert_eq!(with(&|c| c.policy = 0x10000), Err(SnpQemuError::ReservedBit(0x10000)));
        assert_eq!(with(&|c| c.kernel = None), Err(SnpQemuError::NoKernel));
        assert_eq!(with(&|c| c.vcpus = 0), Err(SnpQemuError::Empty));
        assert!(matches!(
            with(&|c| c.cpu_model = "EPYC,+x".into()),
            Err(SnpQemuError::CpuModel(_))
        ));
    }
}
