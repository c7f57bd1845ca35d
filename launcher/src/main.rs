//! `tellus`: the launcher CLI.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use tellus_launcher::{
    accel, backend, cli, control, enroll_client, launch, measure, measured_launch, run, tpm,
    vm_config,
};

mod snp_cli;

/// tellus: measured, attested VM launches with availability-only host control.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a Linux kernel + initrd and run it until it powers off.
    ///
    /// The console goes to stdout (and --console-log); progress lines go to
    /// stderr. Exit status: 0 when the guest powered off, 1 when the VM could
    /// not be started, 3 when the VMM failed while the VM ran.
    Run(RunArgs),
    /// Launch a VM from a configuration file: measure it, boot it, relay
    /// its attestation request to the verifier and its secrets (encrypted
    /// to the guest) back; see `tellus_launcher::launch` for the format.
    ///
    /// Exit status: 0 when the guest powered off, 1 when the VM could not be
    /// started, 3 when the VMM failed, 4 when its stop could not be
    /// recorded, 5 when the attestation was denied and the VM powered off.
    Launch {
        /// The launch configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// `json`: a summary object on stdout at the end (the guest console
        /// then goes only to `console_log`).
        #[arg(long, value_enum, default_value = "text")]
        output: cli::Output,
    },
    /// Send an availability request to a running `tellus run`.
    Ctl {
        /// The run's --control-socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        #[command(subcommand)]
        request: control::ControlRequest,
    },
    /// Measurements without a TPM.
    Measure {
        #[command(subcommand)]
        command: MeasureCommand,
    },
    /// Event logs (TCG PC Client binary logs and Canonical Event Logs).
    Eventlog {
        #[command(subcommand)]
        command: EventlogCommand,
    },
    /// The host's identity in its TPM.
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Quote PCRs with the host's attestation key and write the evidence
    /// (Trustee's TPM evidence plus the host launch log) as JSON.
    Quote(QuoteArgs),
}

#[derive(Subcommand)]
enum HostCommand {
    /// Create the attestation key under the TPM's endorsement key (or reuse
    /// the saved one), and save the EK certificate and host id in
    /// <state-dir>/host/.
    Init {
        #[command(flatten)]
        tpm: TpmArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: cli::Output,
    },
    /// Print this host's enrollment request for a verifier (EK public and
    /// certificate, AK public and Name, host id) as JSON. Needs `host init`.
    EnrollRequest {
        #[command(flatten)]
        tpm: TpmArgs,
        /// Where to write the request JSON ("-": stdout).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Enroll this host with a verifier: send the enrollment request, answer
    /// the verifier's challenge with TPM2_ActivateCredential, send the
    /// proof, and print the result. Needs `host init`.
    Enroll {
        /// The verifier's base URL: https://HOST[:PORT] (http:// only to a
        /// loopback address).
        #[arg(long, value_name = "URL")]
        verifier: String,
        /// PEM file of the CA that issued the verifier's TLS certificate
        /// (default: the built-in web PKI roots).
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        #[command(flatten)]
        tpm: TpmArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: cli::Output,
    },
    /// Answer a verifier's enrollment challenge: recover its secret with
    /// TPM2_ActivateCredential and print the activation proof as JSON.
    Activate {
        /// The verifier's challenge JSON ("-": stdin).
        #[arg(long, value_name = "FILE")]
        challenge: PathBuf,
        #[command(flatten)]
        tpm: TpmArgs,
        /// Where to write the proof JSON ("-": stdout; files get mode 0600).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
    },
}

/// The host TPM and state directory (the same flags and environment as
/// `tellus run`).
#[derive(clap::Args)]
struct TpmArgs {
    /// The host TPM: swtpm:host=H,port=P (control port P+1) or device:/dev/tpmrm0.
    #[arg(long, env = "TELLUS_TPM", default_value = tpm::DEFAULT_TPM, value_name = "ADDR")]
    tpm: tpm::TpmAddress,
    /// Directory of the host state (host identity, launch-log.cel).
    #[arg(long, env = "TELLUS_STATE_DIR", default_value = "/var/lib/tellus", value_name = "DIR")]
    state_dir: PathBuf,
}

#[derive(clap::Args)]
struct QuoteArgs {
    /// The verifier's nonce, hex (1 to 64 bytes); it becomes the quote's
    /// qualifyingData unchanged.
    #[arg(long, value_name = "HEX")]
    nonce: tpm::quote::Nonce,
    /// PCRs (0..=23) of the SHA-256 bank to quote.
    #[arg(long, value_delimiter = ',', default_values_t = [measure::DEFAULT_PCR], value_name = "N,...")]
    pcrs: Vec<u32>,
    /// Where to write the evidence JSON ("-": stdout).
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    tpm: TpmArgs,
}

#[derive(Subcommand)]
enum MeasureCommand {
    /// Print the launch records `tellus run` would measure for these flags
    /// and the PCR value they produce from a reset PCR (reference values).
    Predict(PredictArgs),
    /// AMD SEV/SEV-ES/SEV-SNP launch digest (flags as sev-snp-measure's).
    Snp(snp_cli::SnpMeasureArgs),
}

#[derive(Subcommand)]
enum EventlogCommand {
    /// Print a log's events and the PCR values it replays to.
    Show {
        /// The event log file.
        file: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        format: cli::LogFormatChoice,
        #[arg(long, value_enum, default_value = "text")]
        output: cli::Output,
    },
}

/// The flags that describe a VM, shared by `run` and `measure predict`.
#[derive(clap::Args)]
struct VmArgs {
    /// VM identity (measured).
    #[arg(long, default_value = "tellus-vm", value_name = "NAME")]
    name: String,
    /// Linux bzImage.
    #[arg(long, value_name = "FILE")]
    kernel: PathBuf,
    /// Initramfs.
    #[arg(long, value_name = "FILE")]
    initrd: PathBuf,
    /// Kernel command line [default: "console=ttyS0 reboot=t panic=-1", plus
    /// "tsc_early_khz=2000000" under TCG].
    #[arg(long, value_name = "CMDLINE")]
    cmdline: Option<String>,
    /// Guest memory (K, M or G suffix; plain numbers are MiB).
    #[arg(long, default_value = "256M", value_name = "SIZE")]
    memory: vm_config::MemorySize,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    vcpus: u32,
    /// Firmware image [default: QEMU's bios-microvm.bin (qboot)].
    #[arg(long, value_name = "FILE")]
    firmware: Option<PathBuf>,
    /// Which VMM runs the guest.
    #[arg(long, value_enum, default_value = "auto")]
    backend: backend::BackendChoice,
    /// kvm needs hardware KVM (not PVM); auto picks it where present, else tcg.
    #[arg(long, value_enum, default_value = "auto")]
    accel: accel::AccelChoice,
    /// QEMU executable [default: qemu-system-x86_64 from PATH].
    #[arg(long, value_name = "PATH", env = "TELLUS_QEMU")]
    qemu: Option<PathBuf>,
    /// The built-in VMM's executable [default: tellus-vmm next to tellus].
    #[arg(long = "tellus-vmm", value_name = "PATH", env = "TELLUS_VMM")]
    vmm: Option<PathBuf>,
    /// QEMU machine: microvm (qboot) or q35 (OVMF, UEFI) [default: microvm; q35 with --sev-snp].
    #[arg(long, value_enum, value_name = "MACHINE")]
    machine: Option<backend::qemu::Machine>,
    /// Launch an AMD SEV-SNP guest (QEMU q35 + OVMF AmdSev build, KVM on an
    /// SNP host; refused elsewhere before anything is measured).
    #[arg(long)]
    sev_snp: bool,
    /// SNP guest policy (hex); debug and migration-agent policies are refused.
    #[arg(long, value_name = "HEX", value_parser = parse_hex_u64, requires = "sev_snp")]
    snp_policy: Option<u64>,
    /// vCPU model of the SNP guest (its signature enters the launch digest).
    #[arg(long, value_name = "MODEL", requires = "sev_snp")]
    snp_vcpu_type: Option<String>,
}

fn parse_hex_u64(s: &str) -> Result<u64, String> {
    let t = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    u64::from_str_radix(t, 16).map_err(|_| format!("'{s}' is not a hex number (e.g. 0x30000)"))
}

impl VmArgs {
    fn spec(self) -> run::VmSpec {
        run::VmSpec {
            name: self.name,
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            cmdline_extra: None,
            memory: self.memory,
            vcpus: self.vcpus,
            firmware: self.firmware,
            backend: self.backend,
            accel: self.accel,
            qemu: self.qemu,
            vmm: self.vmm,
            machine: self.machine,
            sev_snp: self.sev_snp.then(|| {
                let d = backend::qemu::snp::SnpSpec::default();
                backend::qemu::snp::SnpSpec {
                    policy: self.snp_policy.unwrap_or(d.policy),
                    vcpu_type: self.snp_vcpu_type.unwrap_or(d.vcpu_type),
                }
            }),
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Also write the guest console to this file (created with mode 0600).
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
    /// Serve status/shutdown/reboot on this UNIX socket (see `tellus ctl`).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    #[command(flatten)]
    measure: MeasureArgs,
}

/// Where a launch is measured.
#[derive(clap::Args)]
struct MeasureArgs {
    /// The host TPM: swtpm:host=H,port=P (control port P+1) or device:/dev/tpmrm0.
    #[arg(long, env = "TELLUS_TPM", default_value = tpm::DEFAULT_TPM, value_name = "ADDR")]
    tpm: tpm::TpmAddress,
    /// PCR the launch records are extended into (8..=15).
    #[arg(long, default_value_t = measure::DEFAULT_PCR, value_name = "N")]
    pcr: u32,
    /// Directory of the host-wide launch log (launch-log.cel).
    #[arg(long, env = "TELLUS_STATE_DIR", default_value = "/var/lib/tellus", value_name = "DIR")]
    state_dir: PathBuf,
}

#[derive(clap::Args)]
struct PredictArgs {
    #[command(flatten)]
    vm: Option<VmArgs>,
    /// Predict the launch of this `tellus launch` configuration instead
    /// (its kernel, initrd, full command line with `tellus.resources=`,
    /// memory, vCPUs, name, backend, PCR): the reference values the
    /// verifier needs for exactly that launch.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "VmArgs",
        required_unless_present = "VmArgs"
    )]
    config: Option<PathBuf>,
    /// PCR the records go into.
    #[arg(long, default_value_t = measure::DEFAULT_PCR, value_name = "N")]
    pcr: u32,
    /// PCR banks to predict.
    #[arg(long, value_delimiter = ',', default_value = "sha256,sha384", value_name = "ALG,...")]
    banks: Vec<cli::BankArg>,
    /// Launch ticket issued by the verifier for this launch, if any.
    #[arg(long, value_name = "TICKET")]
    launch_ticket: Option<String>,
    /// Also write the predicted records as a CEL-TLV log to this file.
    #[arg(long, value_name = "FILE")]
    cel_log: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    output: cli::Output,
}

fn main() -> ExitCode {
    let started = Instant::now();
    match Cli::parse().command {
        Command::Run(a) => {
            let opts = run::RunOptions {
                spec: a.vm.spec(),
                measure: measured_launch::MeasureConfig {
                    tpm: a.measure.tpm,
                    pcr: a.measure.pcr,
                    state_dir: a.measure.state_dir,
                },
                console_log: a.console_log,
                control_socket: a.control_socket,
                started,
                attest: None,
                on_attestation_failure: run::OnAttestationFailure::Continue,
                console_to_stdout: true,
                after_ready: None,
            };
            match run::run(opts) {
                Ok(o) => {
                    let how = if o.reason == "guest-shutdown" { "powered off" } else { "stopped" };
                    eprintln!(
                        "tellus: VM {how} ({}) after {} ms, {} boot(s)",
                        o.reason,
                        started.elapsed().as_millis(),
                        o.boots
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tellus: error: {e}");
                    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
                }
            }
        }
        Command::Launch { config, output } => {
            ExitCode::from(launch::launch(&config, output == cli::Output::Json, started))
        }
        Command::Ctl { socket, request } => match control::request(&socket, request) {
            Ok(resp) => {
                println!("{}", serde_json::to_string(&resp).unwrap_or_default());
                if resp.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("tellus: error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Measure { command: MeasureCommand::Predict(a) } => {
            let banks: Vec<_> = a.banks.iter().map(|b| b.0).collect();
            let (spec, pcr) = match (a.vm, &a.config) {
                (Some(vm), _) => (vm.spec(), a.pcr),
                (None, Some(config)) => match launch::predict_spec(config) {
                    Ok(sp) => sp,
                    Err(e) => {
                        eprintln!("tellus: error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                (None, None) => {
                    eprintln!(
                        "tellus: error: name the VM with --kernel/--initrd/... or --config FILE"
                    );
                    return ExitCode::from(2);
                }
            };
            report(cli::predict(
                &spec,
                pcr,
                &banks,
                a.launch_ticket,
                a.cel_log.as_deref(),
                a.output,
            ))
        }
        Command::Measure { command: MeasureCommand::Snp(a) } => snp_cli::run(&a),
        Command::Eventlog { command: EventlogCommand::Show { file, format, output } } => {
            report(cli::eventlog_show(&file, format, output))
        }
        Command::Host { command: HostCommand::Init { tpm: t, output } } => {
            match tpm::host::init(&t.tpm, &t.state_dir) {
                Ok(id) => {
                    match output {
                        cli::Output::Text => print!("{}", id.text()),
                        cli::Output::Json => {
                            println!("{}", serde_json::to_string_pretty(&id).unwrap_or_default())
                        }
                    }
                    if !id.ek_cert {
                        eprintln!(
                            "tellus: warning: the TPM has no EK certificate at NV index {}; \
                             enrolling this host with a verifier needs one",
                            id.ek_cert_nv_index
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Host { command: HostCommand::EnrollRequest { tpm: t, output } } => {
            let r = tpm::enroll::enrollment_request(&t.tpm, &t.state_dir)
                .and_then(|req| tpm::enroll::write_json(&output, &req).map(|()| req));
            match r {
                Ok(req) => {
                    if req.ek_cert.is_none() {
                        eprintln!(
                            "tellus: warning: the request has no EK certificate; a verifier \
                             that requires one will refuse it"
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Host { command: HostCommand::Enroll { verifier, ca_cert, tpm: t, output } } => {
            let r = enroll_client::VerifierClient::new(&verifier, ca_cert.as_deref())
                .and_then(|c| enroll_client::enroll(&c, &t.tpm, &t.state_dir));
            match r {
                Ok(res) => {
                    match output {
                        cli::Output::Text => {
                            println!("host id:   {}", res.host_id);
                            println!("activated: {}", res.activated);
                            for (k, v) in &res.labels {
                                println!("label:     {k}={v}");
                            }
                        }
                        cli::Output::Json => {
                            println!("{}", serde_json::to_string_pretty(&res).unwrap_or_default())
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Host { command: HostCommand::Activate { challenge, tpm: t, output } } => {
            let r = tpm::enroll::read_challenge(&challenge)
                .and_then(|c| tpm::enroll::activate(&t.tpm, &t.state_dir, &c))
                .and_then(|proof| tpm::enroll::write_json(&output, &proof));
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Quote(a) => {
            let r = tpm::quote::quote(&a.tpm.tpm, &a.tpm.state_dir, &a.nonce.0, &a.pcrs)
                .and_then(|ev| tpm::quote::write_evidence(&a.output, &ev).map(|()| ev));
            match r {
                Ok(ev) => {
                    // tpm::quote::quote always sets pcr_selection.
                    let (bank, pcrs) =
                        ev.pcr_selection.map(|s| (s.bank, s.pcrs)).unwrap_or_default();
                    eprintln!(
                        "tellus: quote of {} PCR {:?} written to {}",
                        bank,
                        pcrs,
                        a.output.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("tellus: error: {e}");
    ExitCode::FAILURE
}

fn report(r: Result<(), cli::CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tellus: error: {e}");
            ExitCode::FAILURE
        }
    }
}
