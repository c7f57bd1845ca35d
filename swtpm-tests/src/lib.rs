//! A real swtpm for tests: TPM 2.0 over TCP on a free port pair (commands on
//! P, control on P + 1, as libtss2's `swtpm` TCTI expects), in a private
//! temporary directory, killed when dropped; and helpers to drive it with
//! tpm2-tools. The launcher's and the verifier's tests use it; so do the
//! end-to-end tests of this crate. [`verifier_process`] runs a real
//! `tellus-verifier serve` beside it.
//!
//! Layout of [`Swtpm::dir`]: `tpm/` holds swtpm's state, `localca/` and
//! `swtpm-config/` the private CA of [`Swtpm::start_provisioned`]; everything
//! else is free for the test (e.g. [`Swtpm::path`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `swtpm_localca`, which `swtpm_setup` calls to sign the EK certificates.
pub const SWTPM_LOCALCA: &str = "/usr/bin/swtpm_localca";

pub mod verifier_process;

/// A running swtpm; killed when dropped.
pub struct Swtpm {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}

/// A port P such that P and P + 1 were both free a moment ago.
///
/// Tried first below the kernel's ephemeral range: after a load test, tens
/// of thousands of client connections sit in TIME-WAIT on ephemeral ports
/// (seen: 31,065 of the 28,232 in 32768–60999), and a listener cannot bind
/// a port that one of them holds, so P + 1 beside a fresh ephemeral P was
/// taken 100 times in a row.
pub fn free_port_pair() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let pair_free = |p: u16| {
        let Ok(a) = std::net::TcpListener::bind(("127.0.0.1", p)) else { return false };
        let free = std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok();
        drop(a);
        free
    };
    if low > 20_002 {
        // Spread over the range so that parallel tests rarely collide.
        let seed = std::collections::hash_map::RandomState::new();
        let mut h = std::hash::BuildHasher::hash_one(&seed, std::process::id());
        for _ in 0..200 {
            h = h.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let p = 20_000 + (h >> 33) as u16 % (low - 20_001);
            if pair_free(p) {
                return p;
            }
        }
    }
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let p = l.local_addr().expect("local address").port();
        drop(l);
        if p < 65535 && pair_free(p) {
            return p;
        }
    }
    panic!("no free port pair");
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Swtpm {
    /// A fresh, unprovisioned TPM (all PCR banks allocated, no EK certificate).
    pub fn start() -> Swtpm {
        Swtpm::start_in(tempfile::tempdir().expect("temp dir"))
    }

    /// A TPM manufactured like a real one by `swtpm_setup --create-ek-cert
    /// --create-platform-cert`: RSA-2048 and ECC EKs with certificates in NV
    /// (0x01c00002, 0x01c00016) and a platform certificate, PCR banks SHA-256
    /// and SHA-384. The local CA that signs them lives in this TPM's own
    /// directory ([`Swtpm::local_ca`]), never in /var/lib/swtpm-localca.
    pub fn start_provisioned() -> Swtpm {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let (conf, ca, state) = (d.join("swtpm-config"), d.join("localca"), d.join("tpm"));
        for p in [&conf, &ca, &state] {
            std::fs::create_dir_all(p).expect("create dir");
        }
        let write = |name: &str, text: String| {
            std::fs::write(conf.join(name), text).expect("write swtpm config");
        };
        write(
            "swtpm_setup.conf",
            format!(
                "create_certs_tool = {SWTPM_LOCALCA}\n\
                 create_certs_tool_config = {c}/swtpm-localca.conf\n\
                 create_certs_tool_options = {c}/swtpm-localca.options\n\
                 active_pcr_banks = sha256,sha384\n",
                c = conf.display()
            ),
        );
        write(
            "swtpm-localca.conf",
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\n\
                 issuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n",
                ca = ca.display()
            ),
        );
        write(
            "swtpm-localca.options",
            "--platform-manufacturer tellus\n--platform-version 2.1\n--platform-model test\n"
                .into(),
        );
        let out = Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--create-platform-cert"])
            .args(["--pcr-banks", "sha256,sha384"])
            .arg("--tpmstate")
            .arg(&state)
            .arg("--config")
            .arg(conf.join("swtpm_setup.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("swtpm_setup (package swtpm-tools; scripts/setup.sh installs it)");
        assert_ok("swtpm_setup", &out);
        Swtpm::start_in(dir)
    }

    /// Starts swtpm on the TPM state in `dir/tpm` (created if missing), e.g.
    /// the directory of a killed [`Swtpm`]: a TPM reset with its state kept.
    pub fn start_in(mut dir: tempfile::TempDir) -> Swtpm {
        for _ in 0..5 {
            let state = dir.path().join("tpm");
            std::fs::create_dir_all(&state).expect("create TPM state dir");
            let port = free_port_pair();
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm (scripts/setup.sh installs it)");
            let mut t = Swtpm { child: Some(child), port, dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if t.exited() {
                    break; // the port was taken in the meantime: retry
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // A swtpm that lost the port to a concurrently started one
                    // exits at once, while the connect reached the other one:
                    // only a swtpm still running is ours.
                    std::thread::sleep(Duration::from_millis(150));
                    if !t.exited() {
                        return t;
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            t.kill();
            dir = std::mem::replace(&mut t.dir, tempfile::tempdir().expect("temp dir"));
        }
        panic!("swtpm did not start");
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The address for `tellus --tpm` and libtss2: `swtpm:host=127.0.0.1,port=P`.
    pub fn addr(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The environment variable that points tpm2-tools at this TPM.
    pub fn tcti_env(&self) -> (&'static str, String) {
        ("TPM2TOOLS_TCTI", self.addr())
    }

    /// A scratch file path in this TPM's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The local CA of [`Swtpm::start_provisioned`]: `issuercert.pem` (the
    /// EK certificates' issuer) and `swtpm-localca-rootca-cert.pem` (its root).
    pub fn local_ca(&self) -> PathBuf {
        self.dir.path().join("localca")
    }

    /// A command for a tpm2-tools program against this TPM, run in its directory.
    pub fn tool(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        let (k, v) = self.tcti_env();
        c.env(k, v).current_dir(self.dir.path()).stdin(Stdio::null());
        c
    }

    /// Runs a tpm2-tools program; the test decides what a failure means.
    pub fn try_run(&self, tool: &str, args: &[&str]) -> Output {
        self.tool(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool} (package tpm2-tools): {e}"))
    }

    /// Runs a tpm2-tools program, failing the test if it fails.
    pub fn run(&self, tool: &str, args: &[&str]) -> Output {
        let out = self.try_run(tool, args);
        assert_ok(&format!("{tool} {args:?}"), &out);
        out
    }

    /// Like [`Swtpm::run`], then flushes transient objects and loaded
    /// sessions (swtpm has no resource manager: leaked handles fill its slots).
    pub fn tpm2(&self, tool: &str, args: &[&str]) -> Output {
        let out = self.run(tool, args);
        for flag in ["-t", "-l"] {
            self.run("tpm2_flushcontext", &[flag]);
        }
        out
    }

    /// `tpm2_pcrread` of one PCR in one bank, as lower-case hex.
    pub fn pcrread(&self, bank: &str, pcr: u32) -> String {
        let out = self.run("tpm2_pcrread", &[&format!("{bank}:{pcr}")]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // tpm2_pcrread prints "13: 0x…" and, for one-digit PCRs, "0 : 0x…".
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == pcr.to_string())
                    .then(|| v.trim().trim_start_matches("0x").to_lowercase())
            })
            .unwrap_or_else(|| panic!("no PCR {pcr} in: {text}"))
    }

    /// swtpm's state directory (`dir/tpm`): the TPM's NV state, which a
    /// copy taken after [`Swtpm::shutdown`] captures whole (a snapshot).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("tpm")
    }

    /// An orderly power-down: TPM2_Shutdown(CLEAR), which saves the TPM's
    /// clock to NV, then swtpm stops. Without it ([`Swtpm::kill`]) the clock
    /// falls back to its last saved value at the next start, as after a
    /// power loss.
    pub fn shutdown(&mut self) {
        self.run("tpm2_shutdown", &["--clear"]);
        self.kill();
    }

    /// Starts swtpm again on the same state (after [`Swtpm::shutdown`] or
    /// [`Swtpm::kill`]; a running one is killed first): TPM2_Startup(CLEAR),
    /// a TPM Reset (resetCount + 1, PCRs cleared), on a new port pair
    /// ([`Swtpm::addr`] changes).
    pub fn restart(&mut self) {
        self.kill();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        *self = Swtpm::start_in(dir);
    }

    /// Stops swtpm (the directory stays until the value is dropped).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A provisioned swtpm (EK certificate from its private local CA) with
/// `tellus host init` done in its own state directory, run by the `tellus`
/// executable at `tellus` (each test crate passes the one it built).
pub struct TpmHost {
    pub tpm: Swtpm,
    pub state: PathBuf,
    tellus: PathBuf,
}

impl TpmHost {
    pub fn new(tellus: impl Into<PathBuf>) -> TpmHost {
        let tpm = Swtpm::start_provisioned();
        let state = tpm.path("tellus-state");
        let h = TpmHost { tpm, state, tellus: tellus.into() };
        h.init();
        h
    }

    /// `tellus host init` on this TPM and state directory.
    pub fn init(&self) {
        let out = self.tellus(&["host", "init"]);
        assert!(
            out.status.success(),
            "host init failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `tellus ARGS --tpm .. --state-dir ..`; a panic in it fails the
    /// test.
    pub fn tellus(&self, args: &[&str]) -> Output {
        let out = std::process::Command::new(&self.tellus)
            .args(args)
            .arg("--tpm")
            .arg(self.tpm.addr())
            .arg("--state-dir")
            .arg(&self.state)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "panic:\n{err}");
        out
    }

    /// `tellus host enroll --verifier URL`, which must succeed.
    pub fn enroll(&self, url: &str) {
        let out = self.tellus(&["host", "enroll", "--verifier", url]);
        assert!(out.status.success(), "enroll failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    /// This host's state directory and `tellus` on another TPM (a TPM
    /// swapped under an initialised host).
    pub fn with_tpm(&self, tpm: Swtpm) -> TpmHost {
        TpmHost { tpm, state: self.state.clone(), tellus: self.tellus.clone() }
    }

    /// The host id: SHA-256 of the EK's TPM2B_PUBLIC, as `host init` saved it.
    pub fn host_id(&self) -> String {
        std::fs::read_to_string(self.state.join("host/host-id")).unwrap().trim().to_string()
    }
}

/// Runs `openssl` in `dir`, failing the test if it fails.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    assert_ok(&format!("openssl {args:?}"), &out);
    out
}

/// Makes a self-signed EC P-256 CA certificate, subject `CN=cn`, valid
/// for a day, as `cert` (PEM) in `dir`, its key as `ca.key` beside it: a CA
/// that certified none of a swtpm's EKs.
pub fn self_signed_ca(dir: &Path, cert: &str, cn: &str) {
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            cert,
            "-subj",
            &subject,
            "-days",
            "1",
        ],
    );
}

/// The test guest `scripts/setup.sh` builds: (kernel, initrd), from
/// `$TELLUS_GUEST_KERNEL`/`$TELLUS_GUEST_INITRD` or the `env` file in
/// `${TELLUS_CACHE:-~/.cache/tellus}/guest`. Panics, naming the fix, when
/// set-up has not run.
pub fn test_guest() -> (PathBuf, PathBuf) {
    if let (Ok(k), Ok(i)) =
        (std::env::var("TELLUS_GUEST_KERNEL"), std::env::var("TELLUS_GUEST_INITRD"))
    {
        return (k.into(), i.into());
    }
    let cache = std::env::var_os("TELLUS_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/tellus")
    });
    let env = cache.join("guest/env");
    let text = std::fs::read_to_string(&env).unwrap_or_else(|e| {
        panic!("test guest missing ({}: {e}): run scripts/setup.sh first", env.display())
    });
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{key} missing in {}", env.display()))
    };
    (get("TELLUS_GUEST_KERNEL"), get("TELLUS_GUEST_INITRD"))
}

/// Environment variable naming the file where skipped tests are listed.
pub const SKIP_LOG_ENV: &str = "TELLUS_SKIP_LOG";

/// Reports a test that cannot run here (e.g. it needs hardware KVM and
/// finds PVM): prints `SKIP (<reason>): <test>` and appends the same line to
/// the file named by `$TELLUS_SKIP_LOG`. libtest has no runtime skip, so the
/// test then returns and libtest counts it as passed; `scripts/test.sh`
/// reads the file and reports these tests as skipped, never as passed.
pub fn skip(reason: &str, test: &str) {
    use std::io::Write;
    let line = format!("SKIP ({reason}): {test}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        // One write(2) of the whole line (O_APPEND): lines of tests running
        // in parallel do not interleave.
        match file.and_then(|mut f| f.write_all(format!("{line}\n").as_bytes())) {
            Ok(()) => {}
            Err(e) => panic!("cannot record the skip in {}: {e}", Path::new(&path).display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_reads_a_pcr_and_restarts_on_its_state() {
        let mut t = Swtpm::start();
        assert_eq!(t.pcrread("sha256", 13), "0".repeat(64));
        assert_eq!(t.pcrread("sha256", 0), "0".repeat(64));
        t.run("tpm2_pcrextend", &[&format!("13:sha256={}", "ab".repeat(32))]);
        assert_ne!(t.pcrread("sha256", 13), "0".repeat(64));
        t.kill();
        let dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
        let t2 = Swtpm::start_in(dir);
        assert_eq!(t2.pcrread("sha256", 13), "0".repeat(64), "a restart is a TPM reset");
    }

    /// `tpm2_readclock`: (reset_count, clock).
    fn readclock(t: &Swtpm) -> (u64, u64) {
        let out = String::from_utf8_lossy(&t.run("tpm2_readclock", &[]).stdout).to_string();
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {out}"))
        };
        (field("reset_count:"), field("clock:"))
    }

    #[test]
    fn shutdown_keeps_the_clock_and_restart_is_a_reset() {
        let mut t = Swtpm::start();
        std::thread::sleep(Duration::from_millis(300));
        let (reset, clock) = readclock(&t);
        t.shutdown();
        assert!(t.state_dir().join("tpm2-00.permall").is_file());
        t.restart();
        let (reset2, clock2) = readclock(&t);
        assert_eq!(reset2, reset + 1);
        assert!(clock2 >= clock, "the clock saved at shutdown goes on: {clock} -> {clock2}");
    }
}
