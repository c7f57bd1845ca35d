//! Measured launch against a real swtpm: what `tellus run` extends into PCR
//! 13 before any vCPU runs equals `tellus measure predict`, the host log
//! replays to the PCR, concurrent launches stay consistent, and every failure
//! stops the launch before the guest runs.

mod common;
use common::{predict_json, tellus, Launch, Swtpm};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const ONESHOT: &str = "console=ttyS0 reboot=t panic=-1 tsc_early_khz=2000000 tellus.oneshot";

fn replay(log: &Path) -> Value {
    let out = tellus().args(["eventlog", "show", "--output", "json"]).arg(log).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs a oneshot launch to its end against `tpm`/`state`; returns (exit code, stderr).
fn oneshot(tpm: &str, state: &Path) -> (i32, String) {
    let mut l = Launch::start_with(tpm, state, &["--cmdline", ONESHOT]);
    let st = l.wait_exit();
    (st.code().unwrap_or(-1), l.stderr().join("\n"))
}

#[test]
fn pcr13_during_a_run_equals_predict_and_the_log_replays_to_it() {
    let extra = ["--vcpus", "2", "--name", "vm-measured", "--memory", "192M"];
    let mut l = Launch::start(&extra);
    l.wait_for("guest agent ready after", 1);
    let tpm = l.tpm.take().unwrap();
    let predicted = predict_json(&extra);
    for bank in ["sha256", "sha384"] {
        let in_tpm = tpm.pcrread(bank, 13);
        assert_eq!(predicted["pcr_values"][bank], format!("{bank}:{in_tpm}"), "{bank}");
    }
    let log = tpm.dir.path().join("tellus-state/launch-log.cel");
    let r = replay(&log);
    assert_eq!(r["pcrs"]["sha256"]["13"], tpm.pcrread("sha256", 13));
    assert_eq!(r["records"].as_array().unwrap().len(), 10);
    assert_eq!(r["digest_mismatches"].as_array().unwrap().len(), 0);
    // The launcher holds no TPM connection while the guest runs: tpm2_pcrread got through above.
    assert!(l.ctl("shutdown").0);
    assert!(l.wait_exit().success());
    // After the stop: stop + console-log records, still replaying to the PCR.
    let r = replay(&log);
    let kinds: Vec<&str> = r["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["content"]["kind"].as_str())
        .collect();
    assert_eq!(&kinds[10..], ["stop", "console-log"]);
    assert_eq!(r["pcrs"]["sha256"]["13"], tpm.pcrread("sha256", 13));
    // The console-log record holds the digest of what the guest printed.
    let console = std::fs::read(l.dir.path().join("console.log")).unwrap();
    let out = Command::new("sha256sum").arg(l.dir.path().join("console.log")).output().unwrap();
    let want = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string();
    assert_eq!(r["records"][11]["content"]["sha256"], format!("sha256:{want}"));
    assert_eq!(r["records"][11]["content"]["size"], console.len());
}

#[test]
fn two_parallel_launches_share_one_tpm_and_log() {
    let tpm = Swtpm::start();
    let state = tpm.dir.path().join("state");
    let mut a = Launch::start_with(&tpm.addr(), &state, &["--cmdline", ONESHOT, "--name", "a"]);
    let mut b = Launch::start_with(&tpm.addr(), &state, &["--cmdline", ONESHOT, "--name", "b"]);
    let (sa, sb) = (a.wait_exit(), b.wait_exit());
    assert!(sa.success(), "{}", a.stderr().join("\n"));
    assert!(sb.success(), "{}", b.stderr().join("\n"));
    for l in [&a, &b] {
        assert!(l.stderr().iter().any(|x| x.contains("guest agent ready after")));
    }
    let r = replay(&state.join("launch-log.cel"));
    assert_eq!(r["records"].as_array().unwrap().len(), 24, "2 × (10 launch + 2 stop) records");
    for bank in ["sha1", "sha256", "sha384", "sha512"] {
        assert_eq!(r["pcrs"][bank]["13"], tpm.pcrread(bank, 13), "{bank}");
    }
    // Record numbers are unique and in order.
    let nums: Vec<u64> =
        r["records"].as_array().unwrap().iter().map(|x| x["recnum"].as_u64().unwrap()).collect();
    assert_eq!(nums, (0..24).collect::<Vec<_>>());
}

#[test]
fn no_tpm_no_vm() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, err) = oneshot(&format!("swtpm:host=127.0.0.1,port={port}"), dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the TPM"), "{err}");
    assert!(!err.contains("started /"), "QEMU was started:\n{err}");
}

#[test]
fn pcr_extended_behind_the_launchers_back_stops_the_next_launch() {
    let tpm = Swtpm::start();
    let state = tpm.dir.path().join("state");
    let (code, err) = oneshot(&tpm.addr(), &state);
    assert_eq!(code, 0, "{err}");
    let (k, v) = tpm.tcti_env();
    let st = Command::new("tpm2_pcrextend")
        .env(k, v)
        .arg(format!("13:sha256={}", "ab".repeat(32)))
        .status()
        .unwrap();
    assert!(st.success());
    let (code, err) = oneshot(&tpm.addr(), &state);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("something extended PCR 13 outside tellus"), "{err}");
    assert!(!err.contains("started /"), "QEMU was started:\n{err}");
}

#[test]
fn tpm_reset_starts_a_new_log() {
    let tpm = Swtpm::start();
    let state = tpm.dir.path().join("state");
    assert_eq!(oneshot(&tpm.addr(), &state).0, 0);
    // Restart swtpm on the same state: a TPM reset (PCRs back to zero).
    let mut tpm = tpm;
    tpm.kill();
    let dir = std::mem::replace(&mut tpm.dir, tempfile::tempdir().unwrap());
    let tpm2 = Swtpm::start_in(dir);
    assert_eq!(tpm2.pcrread("sha256", 13), "0".repeat(64));
    let (code, err) = oneshot(&tpm2.addr(), &state);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("new log: the TPM was reset"), "{err}");
    let r = replay(&state.join("launch-log.cel"));
    assert_eq!(r["pcrs"]["sha256"]["13"], tpm2.pcrread("sha256", 13));
    let old: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("before-reset"))
        .collect();
    assert_eq!(old.len(), 1);
}

/// A TCP proxy in front of swtpm's command port that kills swtpm when the
/// launcher sends its second TPM2_PCR_Extend, before forwarding it.
struct KillingProxy {
    port: u16,
    extends: Arc<AtomicUsize>,
}

const TPM_CC_PCR_EXTEND: u32 = 0x0000_0182;

impl KillingProxy {
    fn start(tpm: Arc<Mutex<Swtpm>>) -> KillingProxy {
        // Listen on P (commands) and P+1 (control), as the swtpm TCTI expects.
        let (cmd_l, ctrl_l) = loop {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let p = l.local_addr().unwrap().port();
            if let Ok(c) = TcpListener::bind(("127.0.0.1", p + 1)) {
                break (l, c);
            }
        };
        let port = cmd_l.local_addr().unwrap().port();
        let target = tpm.lock().unwrap().port;
        let extends = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for c in ctrl_l.incoming().flatten() {
                if let Ok(up) = TcpStream::connect(("127.0.0.1", target + 1)) {
                    pipe(c.try_clone().unwrap(), up.try_clone().unwrap());
                    pipe(up, c);
                }
            }
        });
        let ex = extends.clone();
        std::thread::spawn(move || {
            for mut c in cmd_l.incoming().flatten() {
                let Ok(up) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                pipe(up.try_clone().unwrap(), c.try_clone().unwrap());
                let (tpm, ex) = (tpm.clone(), ex.clone());
                std::thread::spawn(move || {
                    let mut up = up;
                    // swtpm serves one client at a time: close our upstream
                    // side as soon as the launcher's connection ends.
                    struct CloseOnDrop(TcpStream);
                    impl Drop for CloseOnDrop {
                        fn drop(&mut self) {
                            let _ = self.0.shutdown(std::net::Shutdown::Both);
                        }
                    }
                    let _close = CloseOnDrop(up.try_clone().unwrap());
                    loop {
                        let mut hdr = [0u8; 10];
                        if c.read_exact(&mut hdr).is_err() {
                            return;
                        }
                        let size = u32::from_be_bytes([hdr[2], hdr[3], hdr[4], hdr[5]]) as usize;
                        let cc = u32::from_be_bytes([hdr[6], hdr[7], hdr[8], hdr[9]]);
                        let mut body = vec![0u8; size.saturating_sub(10)];
                        if c.read_exact(&mut body).is_err() {
                            return;
                        }
                        if cc == TPM_CC_PCR_EXTEND && ex.fetch_add(1, Ordering::SeqCst) == 1 {
                            tpm.lock().unwrap().kill();
                            return;
                        }
                        // One write: swtpm takes what one read returns as the command.
                        let mut cmd = hdr.to_vec();
                        cmd.extend_from_slice(&body);
                        if up.write_all(&cmd).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        KillingProxy { port, extends }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

#[test]
fn swtpm_killed_between_two_extends_no_vcpu_runs() {
    let tpm = Arc::new(Mutex::new(Swtpm::start()));
    let state = tpm.lock().unwrap().dir.path().join("state");
    let proxy = KillingProxy::start(tpm.clone());
    let (code, err) = oneshot(&format!("swtpm:host=127.0.0.1,port={}", proxy.port), &state);
    assert_eq!(proxy.extends.load(Ordering::SeqCst), 2, "the proxy saw two extends:\n{err}");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("measured launch failed, no VM was started"), "{err}");
    assert!(err.contains("PCR_Extend"), "{err}");
    assert!(!err.contains("started /") && !err.contains("vCPUs running"), "{err}");
}

/// `--tpm swtpm:path=SOCK`: swtpm on UNIX sockets (SOCK and SOCK.ctrl).
#[test]
fn swtpm_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("tpm");
    std::fs::create_dir_all(&state).unwrap();
    let sock = dir.path().join("tpm.sock");
    let mut swtpm = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--server")
        .arg(format!("type=unixio,path={}", sock.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}.ctrl", sock.display()))
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "swtpm socket did not appear");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let addr = format!("swtpm:path={}", sock.display());
    let (code, err) = oneshot(&addr, &dir.path().join("state"));
    let pcr = Command::new("tpm2_pcrread")
        .env("TPM2TOOLS_TCTI", &addr)
        .arg("sha256:13")
        .output()
        .unwrap();
    let _ = swtpm.kill();
    let _ = swtpm.wait();
    assert_eq!(code, 0, "{err}");
    let r = replay(&dir.path().join("state/launch-log.cel"));
    let text = String::from_utf8_lossy(&pcr.stdout).to_lowercase();
    assert!(text.contains(r["pcrs"]["sha256"]["13"].as_str().unwrap()), "{text}");
}
