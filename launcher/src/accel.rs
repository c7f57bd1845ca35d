//! Which accelerator a VM gets: hardware KVM where the host has it, TCG
//! emulation otherwise.
//!
//! `/dev/kvm` alone proves little: on PVM hosts (`kvm_pvm`) it is a software
//! layer that runs only PVM-enabled guest kernels, and a stock kernel dies in
//! KVM's instruction emulator there. Only `kvm_intel`/`kvm_amd` count.

use std::fmt;
use std::path::Path;

/// What the host's `/dev/kvm` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware-backed KVM (`kvm_intel` or `kvm_amd`).
    Hardware(&'static str),
    /// PVM: KVM API without hardware virtualization.
    Pvm,
    /// No usable `/dev/kvm`; the string says why.
    Unavailable(String),
}

impl fmt::Display for KvmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmKind::Hardware(m) => write!(f, "hardware KVM ({m})"),
            KvmKind::Pvm => {
                f.write_str("/dev/kvm is PVM (kvm_pvm), which runs only PVM-enabled guest kernels")
            }
            KvmKind::Unavailable(why) => f.write_str(why),
        }
    }
}

/// Inspects `/dev/kvm` and `/sys/module`.
pub fn detect() -> KvmKind {
    detect_in(Path::new("/"))
}

fn detect_in(root: &Path) -> KvmKind {
    let dev = root.join("dev/kvm");
    if !dev.exists() {
        return KvmKind::Unavailable("/dev/kvm does not exist".into());
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(&dev) {
        return KvmKind::Unavailable(format!("/dev/kvm cannot be opened: {e}"));
    }
    let module = |m: &str| root.join("sys/module").join(m).exists();
    if module("kvm_pvm") {
        KvmKind::Pvm
    } else if module("kvm_intel") {
        KvmKind::Hardware("kvm_intel")
    } else if module("kvm_amd") {
        KvmKind::Hardware("kvm_amd")
    } else {
        KvmKind::Unavailable("/dev/kvm exists but neither kvm_intel nor kvm_amd is loaded".into())
    }
}

/// `--accel` as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// `--accel kvm` on a host without hardware KVM.
#[derive(Debug, thiserror::Error)]
#[error("--accel kvm needs hardware KVM, but {0}; use --accel tcg or --accel auto")]
pub struct NoHardwareKvm(pub KvmKind);

/// Resolves the choice against the host; returns the accelerator and why.
pub fn choose(choice: AccelChoice, host: &KvmKind) -> Result<(Accel, String), NoHardwareKvm> {
    match (choice, host) {
        (AccelChoice::Tcg, _) => Ok((Accel::Tcg, "requested with --accel tcg".into())),
        (AccelChoice::Kvm | AccelChoice::Auto, KvmKind::Hardware(_)) => {
            Ok((Accel::Kvm, host.to_string()))
        }
        (AccelChoice::Kvm, other) => Err(NoHardwareKvm(other.clone())),
        (AccelChoice::Auto, other) => Ok((Accel::Tcg, format!("no hardware KVM: {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(modules: &[&str], dev: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        if dev {
            std::fs::write(d.path().join("dev/kvm"), b"").unwrap();
        }
        for m in modules {
            std::fs::create_dir_all(d.path().join("sys/module").join(m)).unwrap();
        }
        d
    }

    #[test]
    fn pvm_is_not_hardware() {
        let h = fake_host(&["kvm", "kvm_pvm"], true);
        assert_eq!(detect_in(h.path()), KvmKind::Pvm);
        let (a, why) = choose(AccelChoice::Auto, &KvmKind::Pvm).unwrap();
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("PVM"));
        assert!(choose(AccelChoice::Kvm, &KvmKind::Pvm).is_err());
    }

    #[test]
    fn hardware_and_missing() {
        let h = fake_host(&["kvm", "kvm_intel"], true);
        assert_eq!(detect_in(h.path()), KvmKind::Hardware("kvm_intel"));
        assert_eq!(choose(AccelChoice::Auto, &detect_in(h.path())).unwrap().0, Accel::Kvm);
        let h = fake_host(&[], false);
        assert!(matches!(detect_in(h.path()), KvmKind::Unavailable(_)));
        assert_eq!(choose(AccelChoice::Tcg, &KvmKind::Hardware("kvm_amd")).unwrap().0, Accel::Tcg);
    }
}
