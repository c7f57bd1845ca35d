//! `tellus`: the launcher CLI.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use tellus_launcher::{accel, backend, control, run, vm_config};

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
    /// Send an availability request to a running `tellus run`.
    Ctl {
        /// The run's --control-socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        #[command(subcommand)]
        request: control::ControlRequest,
    },
}

#[derive(clap::Args)]
struct RunArgs {
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
    /// Also write the guest console to this file (created with mode 0600).
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
    /// Serve status/shutdown/reboot on this UNIX socket (see `tellus ctl`).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Which VMM runs the guest.
    #[arg(long, value_enum, default_value = "auto")]
    backend: backend::BackendChoice,
    /// kvm needs hardware KVM (not PVM); auto picks it where present, else tcg.
    #[arg(long, value_enum, default_value = "auto")]
    accel: accel::AccelChoice,
    /// QEMU executable [default: qemu-system-x86_64 from PATH].
    #[arg(long, value_name = "PATH", env = "TELLUS_QEMU")]
    qemu: Option<PathBuf>,
}

fn main() -> ExitCode {
    let started = Instant::now();
    match Cli::parse().command {
        Command::Run(a) => {
            let opts = run::RunOptions {
                kernel: a.kernel,
                initrd: a.initrd,
                cmdline: a.cmdline,
                memory: a.memory,
                vcpus: a.vcpus,
                console_log: a.console_log,
                control_socket: a.control_socket,
                backend: a.backend,
                accel: a.accel,
                qemu: a.qemu,
                started,
            };
            match run::run(opts) {
                Ok(o) => {
                    eprintln!(
                        "tellus: VM powered off ({}) after {} ms, {} boot(s)",
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
    }
}
