//! `tellus measure snp`: the AMD SEV / SEV-ES / SEV-SNP launch digest of a
//! guest, without SEV hardware. Flags are named like sev-snp-measure's, so
//! its users can switch (`--mode`, `--vcpus`, `--vcpu-type`, `--vcpu-sig`,
//! `--vcpu-family/-model/-stepping`, `--vmm-type`, `--ovmf`, `--kernel`,
//! `--initrd`, `--append`, `--guest-features`, `--snp-ovmf-hash`,
//! `--output-format`, `--dump-vmsa`). The computation is
//! [`tellus_measured_boot::snp`].

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tellus_measured_boot::snp::{
    self, LaunchParams, SevHashes, SevMode, SnpMeasureError, VmmType, LD_SIZE, MAX_OVMF_SIZE,
};

/// How the digest is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Lowercase hex (sev-snp-measure's default).
    Hex,
    /// Standard base64.
    Base64,
    /// A JSON object with the digest and every input that determined it.
    Json,
}

/// Arguments of `tellus measure snp`.
#[derive(Debug, clap::Args)]
pub struct SnpMeasureArgs {
    /// Guest mode: snp, seves, sev, snp:svsm (Coconut SVSM below OVMF), or
    /// snp:ovmf-hash (only the OVMF pages' digest, to pass back later as
    /// --snp-ovmf-hash).
    #[arg(long, default_value = "snp")]
    mode: String,
    /// Number of vCPUs (required except for --mode sev).
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// QEMU CPU model of the vCPUs (EPYC-v4, EPYC-Milan, EPYC-Genoa, …).
    #[arg(long, value_name = "CPUTYPE")]
    vcpu_type: Option<String>,
    /// CPUID(1).EAX signature of the vCPUs, instead of --vcpu-type.
    #[arg(long, value_name = "VALUE", value_parser = parse_u32)]
    vcpu_sig: Option<u32>,
    /// vCPU family (with --vcpu-model and --vcpu-stepping).
    #[arg(long, value_name = "FAMILY", requires_all = ["vcpu_model", "vcpu_stepping"])]
    vcpu_family: Option<u32>,
    /// vCPU model.
    #[arg(long, value_name = "MODEL")]
    vcpu_model: Option<u32>,
    /// vCPU stepping.
    #[arg(long, value_name = "STEPPING")]
    vcpu_stepping: Option<u32>,
    /// The VMM that sets up the vCPUs: QEMU, EC2, GCE (EC2-legacy: EC2 as
    /// tooling before 2026-04-28 computed it).
    #[arg(long, value_name = "VMMTYPE", default_value = "QEMU")]
    vmm_type: String,
    /// The OVMF image (OVMF.fd) QEMU loads.
    #[arg(long, value_name = "PATH")]
    ovmf: PathBuf,
    /// Kernel for measured direct boot (QEMU kernel-hashes=on).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initrd (needs --kernel).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line (needs --kernel).
    #[arg(long, value_name = "CMDLINE")]
    append: Option<String>,
    /// SEV_FEATURES of the VMSA (bit 0 SNPActive, bit 5 DebugSwap).
    #[arg(long, value_name = "VALUE", default_value = "0x1", value_parser = parse_u64)]
    guest_features: u64,
    /// A precomputed OVMF digest (hex, from --mode snp:ovmf-hash).
    #[arg(long, value_name = "HASH")]
    snp_ovmf_hash: Option<String>,
    /// Output format.
    #[arg(long, alias = "output", value_enum, default_value = "hex")]
    output_format: OutputFormat,
    /// Write each vCPU's VMSA page as vmsa<N>.bin into the current directory.
    #[arg(long)]
    dump_vmsa: bool,
    /// (snp:svsm) The Coconut SVSM image.
    #[arg(long, value_name = "PATH")]
    svsm: Option<PathBuf>,
    /// (snp:svsm) Size of the OVMF_VARS file in bytes.
    #[arg(long, value_name = "SIZE", conflicts_with = "vars_file")]
    vars_size: Option<u64>,
    /// (snp:svsm) The OVMF_VARS file (its size is used).
    #[arg(long, value_name = "PATH")]
    vars_file: Option<PathBuf>,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    parse_u64(s).and_then(|v| u32::try_from(v).map_err(|e| format!("{s:?}: {e}")))
}

/// Failures: bad flags (exit 2) or a measurement error (exit 1).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Measure(#[from] SnpMeasureError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

fn read_ovmf(path: &Path) -> Result<Vec<u8>, Failure> {
    let err =
        |source| SnpMeasureError::File { what: "OVMF image", path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(err)?.len();
    if len > MAX_OVMF_SIZE as u64 {
        return Err(SnpMeasureError::OvmfTooLarge {
            size: usize::try_from(len).unwrap_or(usize::MAX),
            max: MAX_OVMF_SIZE,
        }
        .into());
    }
    Ok(std::fs::read(path).map_err(err)?)
}

fn vcpu_sig(a: &SnpMeasureArgs, mode: SevMode, vmm: VmmType) -> Result<u32, Failure> {
    if mode == SevMode::Sev {
        return Ok(0);
    }
    if let (Some(f), Some(m), Some(s)) = (a.vcpu_family, a.vcpu_model, a.vcpu_stepping) {
        return Ok(snp::cpu_sig(f, m, s));
    }
    if let Some(sig) = a.vcpu_sig {
        return Ok(sig);
    }
    if let Some(t) = &a.vcpu_type {
        return snp::vcpu_sig_of(t).ok_or_else(|| {
            let known: Vec<_> = snp::vcpu_type_names().collect();
            Failure::Usage(format!("unknown --vcpu-type {t:?}; known: {}", known.join(", ")))
        });
    }
    match vmm {
        // QEMU puts the signature in the VMSA; EC2 and GCE a constant.
        VmmType::Qemu => Err(Failure::Usage(format!(
            "missing --vcpu-type or --vcpu-sig or --vcpu-family in guest mode '{}'",
            a.mode
        ))),
        _ => Ok(0),
    }
}

fn measure(a: &SnpMeasureArgs) -> Result<String, Failure> {
    let ovmf = read_ovmf(&a.ovmf)?;
    if a.mode == "snp:ovmf-hash" {
        let h = snp::snp_ovmf_hash(&ovmf)?;
        return Ok(format_digest(a.output_format, &h, json!({"mode": "snp:ovmf-hash"})));
    }
    if a.mode == "snp:svsm" || a.mode == "sev-snp:svsm" {
        return measure_svsm(a, &ovmf);
    }
    let mode: SevMode = a.mode.parse()?;
    let vmm: VmmType = a.vmm_type.parse()?;
    if a.kernel.is_none() && (a.initrd.is_some() || a.append.is_some()) {
        return Err(Failure::Usage("--kernel required when using --initrd or --append".into()));
    }
    let vcpus = match (mode, a.vcpus) {
        (SevMode::Sev, v) => v.unwrap_or(1),
        (_, Some(v)) => v,
        (_, None) => {
            return Err(Failure::Usage(format!("missing --vcpus N in guest mode '{}'", a.mode)))
        }
    };
    let seed = match &a.snp_ovmf_hash {
        Some(h) => {
            let v = hex::decode(h).map_err(|e| Failure::Usage(format!("--snp-ovmf-hash: {e}")))?;
            let arr: [u8; LD_SIZE] = v.try_into().map_err(|v: Vec<u8>| {
                Failure::Usage(format!("--snp-ovmf-hash has {} bytes, expected {LD_SIZE}", v.len()))
            })?;
            Some(arr)
        }
        None => None,
    };
    let kernel_hashes = match &a.kernel {
        Some(k) => Some(SevHashes::from_files(k, a.initrd.as_deref(), a.append.as_deref())?),
        None => None,
    };
    let p = LaunchParams {
        mode,
        vcpus,
        vcpu_sig: vcpu_sig(a, mode, vmm)?,
        vmm_type: vmm,
        ovmf: &ovmf,
        kernel_hashes,
        guest_features: a.guest_features,
        snp_ovmf_hash: seed,
    };
    let ld = snp::launch_digest(&p)?;
    if a.dump_vmsa {
        if mode == SevMode::Sev {
            return Err(Failure::Usage("--dump-vmsa is not available in mode sev".into()));
        }
        for (i, page) in snp::vmsa_pages(&p)?.iter().enumerate() {
            let path = PathBuf::from(format!("vmsa{i}.bin"));
            std::fs::write(&path, page).map_err(|source| Failure::Write { path, source })?;
        }
    }
    let details = json!({
        "mode": a.mode,
        "vmm_type": vmm.to_string(),
        "vcpus": vcpus,
        "vcpu_sig": format!("{:#x}", p.vcpu_sig),
        "guest_features": format!("{:#x}", p.guest_features),
        "ovmf": a.ovmf,
        "snp_ovmf_hash": a.snp_ovmf_hash,
        "kernel_hashes": p.kernel_hashes.map(|k| json!({
            "kernel": hex::encode(k.kernel),
            "initrd": hex::encode(k.initrd),
            "cmdline": hex::encode(k.cmdline),
        })),
    });
    Ok(format_digest(a.output_format, &ld.0, details))
}

fn measure_svsm(a: &SnpMeasureArgs, ovmf: &[u8]) -> Result<String, Failure> {
    let usage = |m: &str| Failure::Usage(m.into());
    if !a.vmm_type.eq_ignore_ascii_case("qemu") {
        return Err(usage("SVSM mode is only implemented for QEMU"));
    }
    if a.kernel.is_some() || a.snp_ovmf_hash.is_some() {
        return Err(usage("--kernel and --snp-ovmf-hash do not apply to snp:svsm"));
    }
    let svsm_path = a.svsm.as_ref().ok_or_else(|| usage("snp:svsm mode requires --svsm"))?;
    let vars_size = match (&a.vars_size, &a.vars_file) {
        (Some(n), _) => *n,
        (None, Some(f)) => std::fs::metadata(f)
            .map_err(|source| SnpMeasureError::File {
                what: "OVMF vars file",
                path: f.clone(),
                source,
            })?
            .len(),
        (None, None) => return Err(usage("snp:svsm mode requires --vars-size or --vars-file")),
    };
    let vcpus = a.vcpus.ok_or_else(|| usage("missing --vcpus N in guest mode 'snp:svsm'"))?;
    let svsm = read_ovmf(svsm_path)?;
    let p = snp::SvsmParams {
        ovmf,
        svsm: &svsm,
        ovmf_vars_size: vars_size,
        vcpus,
        vcpu_sig: vcpu_sig(a, SevMode::Snp, VmmType::Qemu)?,
    };
    let ld = snp::svsm_launch_digest(&p)?;
    if a.dump_vmsa {
        for (i, page) in snp::svsm_vmsa_pages(&p)?.iter().enumerate() {
            let path = PathBuf::from(format!("vmsa{i}.bin"));
            std::fs::write(&path, page).map_err(|source| Failure::Write { path, source })?;
        }
    }
    let details = json!({
        "mode": "snp:svsm",
        "vmm_type": "QEMU",
        "vcpus": vcpus,
        "vcpu_sig": format!("{:#x}", p.vcpu_sig),
        "ovmf": a.ovmf,
        "svsm": svsm_path,
        "ovmf_vars_size": vars_size,
    });
    Ok(format_digest(a.output_format, &ld.0, details))
}

fn format_digest(f: OutputFormat, d: &[u8], mut details: serde_json::Value) -> String {
    match f {
        OutputFormat::Hex => hex::encode(d),
        OutputFormat::Base64 => B64.encode(d),
        OutputFormat::Json => {
            if let Some(o) = details.as_object_mut() {
                o.insert("launch_digest".into(), json!(hex::encode(d)));
            }
            serde_json::to_string_pretty(&details).unwrap_or_default()
        }
    }
}

/// Runs `tellus measure snp`: prints the digest; exit 1 on a measurement
/// error, 2 on bad flags.
pub fn run(a: &SnpMeasureArgs) -> ExitCode {
    match measure(a) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tellus: error: {e}");
            ExitCode::from(if matches!(e, Failure::Usage(_)) { 2 } else { 1 })
        }
    }
}
