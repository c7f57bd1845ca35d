//! `tellus-verifier serve`: arguments and entry point, for `main.rs` to
//! call (`Command::Serve(args) => service::cli::serve_main(args)`).
//!
//! Exit status: 0 after a clean shutdown, 2 when the configuration or the
//! set-up is wrong (the reason is printed), 1 when the server fails later.

use super::ServiceError;
use crate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `serve`; each flag overrides the configuration file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (every field optional).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// State directory (default /var/lib/tellus-verifier).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve plain HTTP (loopback addresses only).
    #[arg(long)]
    pub insecure_http: bool,
    /// Print the default configuration, documented, and exit.
    #[arg(long)]
    pub print_default_config: bool,
}

impl ServeArgs {
    /// The configuration file (or defaults) with the flags applied.
    pub fn config(&self) -> Result<Config, ServiceError> {
        let mut c = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(l) = self.listen {
            c.listen = l;
        }
        if let Some(d) = &self.state_dir {
            c.state_dir = d.clone();
        }
        if self.insecure_http {
            c.insecure_http = true;
        }
        c.validate()?;
        Ok(c)
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`).
///
/// The allocator (mimalloc) asks for huge pages on its arenas
/// (`MADV_HUGEPAGE`), so each first touch of a 2 MiB region makes the
/// kernel clear all of it while the request that touched it waits, for
/// memory a request uses a few KiB of: 3.8 % of the CPU samples of the KBS
/// round-trip bench, whose heap grows, and 1.04× the CPU per round trip
/// with huge pages on (`BENCHMARKS.md`). A failure leaves the service as
/// it was, with a warning.
pub fn no_transparent_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off (prctl PR_SET_THP_DISABLE); the service runs, with more CPU per request");
    }
}

/// Runs the service; returns the process exit status.
pub fn serve_main(args: ServeArgs) -> ExitCode {
    if args.print_default_config {
        print!("{}", Config::documented_default_toml());
        return ExitCode::SUCCESS;
    }
    init_tracing();
    no_transparent_huge_pages();
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tellus-verifier serve: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tellus-verifier serve: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        let server = match super::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tellus-verifier serve: {e}");
                return ExitCode::from(2);
            }
        };
        match server.run(super::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tellus-verifier serve: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
