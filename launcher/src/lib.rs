//! The tellus launcher: the trusted VMM side of a tellus host.
//!
//! - [`vm_config`]: what a VM is launched with and the checks before launch;
//! - [`image`]: sealed in-memory copies of the kernel, initrd and firmware (measured = loaded);
//! - [`accel`]: hardware KVM vs. TCG (PVM's `/dev/kvm` does not count);
//! - [`backend`]: the one interface for running a VM, and its QEMU implementation;
//! - [`channel`]: host side of the guest-agent channel;
//! - [`control`]: the availability-only control socket;
//! - [`run`]: `tellus run`, tying the above together;
//! - [`attest`]: the KBS relay for the guest's attestation request;
//! - [`attest_snp`]: its SEV-SNP variant (the guest's report, the host's quote as additional evidence);
//! - [`launch`]: `tellus launch --config vm.toml` (run + attestation).

pub mod accel;
pub mod attest;
pub mod attest_snp;
pub mod backend;
pub mod channel;
pub mod cli;
pub mod control;
pub mod enroll_client;
pub mod image;
pub mod launch;
pub mod measure;
pub mod measured_launch;
pub mod privileges;
pub mod run;
pub mod tpm;
pub mod vm_config;
