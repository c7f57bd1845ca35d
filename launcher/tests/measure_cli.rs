//! `tellus measure predict` and `tellus eventlog show` on real inputs: the
//! test guest's kernel and initrd, QEMU's firmware, and third-party logs
//! from ../shared/test-vectors.

mod common;
use common::{guest, json_of, kinds, predict_guest, tellus, QEMU_RECORD_KINDS};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn sha256sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn predict_names_every_record_and_replays_to_its_pcr() {
    let (kernel, initrd) = guest();
    let dir = tempfile::tempdir().unwrap();
    let cel_path = dir.path().join("predicted.cel");
    let p = json_of(
        predict_guest()
            .args(["--vcpus", "2", "--name", "vm-a", "--output", "json"])
            .arg("--cel-log")
            .arg(&cel_path),
    );
    assert_eq!(kinds(&p), QEMU_RECORD_KINDS);
    let rec =
        |k: &str| p["records"].as_array().unwrap().iter().find(|r| r["kind"] == k).unwrap().clone();
    // File digests agree with coreutils on the same files.
    assert_eq!(rec("kernel")["sha256"], format!("sha256:{}", sha256sum(&kernel)));
    assert_eq!(rec("initrd")["sha256"], format!("sha256:{}", sha256sum(&initrd)));
    assert_eq!(
        rec("launcher-binary")["sha256"],
        format!("sha256:{}", sha256sum(&PathBuf::from(env!("CARGO_BIN_EXE_tellus"))))
    );
    assert_eq!(rec("vm-identity")["name"], "vm-a");
    assert_eq!(rec("launch-config")["vcpus"], 2);
    let launch_config = rec("launch-config");
    let absent: Vec<&str> = launch_config["absent_features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(absent, ["introspection", "intervention", "snapshot", "migration"]);
    assert!(rec("cmdline")["cmdline"].as_str().unwrap().contains("console=ttyS0"));
    assert_eq!(p["pcr"], 13);

    // The CEL file replays, through `eventlog show`, to the predicted PCR.
    let shown = json_of(tellus().args(["eventlog", "show", "--output", "json"]).arg(&cel_path));
    assert_eq!(shown["format"], "cel");
    for bank in ["sha256", "sha384"] {
        let predicted = p["pcr_values"][bank].as_str().unwrap();
        let replayed = shown["pcrs"][bank]["13"].as_str().unwrap();
        assert_eq!(predicted, format!("{bank}:{replayed}"));
    }
    assert_eq!(shown["digest_mismatches"].as_array().unwrap().len(), 0);

    // A different vCPU count changes the launch config and the PCR; the kernel record does not change.
    let q = json_of(predict_guest().args(["--vcpus", "1", "--name", "vm-a", "--output", "json"]));
    assert_ne!(q["pcr_values"]["sha256"], p["pcr_values"]["sha256"]);
    assert_eq!(q["records"][6]["record_digests"], p["records"][6]["record_digests"]);
}

#[test]
fn predict_rejects_bad_input_like_run() {
    let out = predict_guest().args(["--vcpus", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vcpus 0"));
    let out = predict_guest().args(["--pcr", "16"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("never 16 or 23"));
}

#[test]
fn eventlog_show_replays_a_real_firmware_log() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/test-vectors/tpm-eventlogs/go-tpm-tools");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(base.join("expected.json")).unwrap()).unwrap();
    let file = "ubuntu-2104-no-dbx.bin";
    let shown =
        json_of(tellus().args(["eventlog", "show", "--output", "json"]).arg(base.join(file)));
    let mut compared = 0;
    for bank in ["sha1", "sha256"] {
        for (pcr, val) in expected[file][bank].as_object().unwrap() {
            assert_eq!(
                shown["pcrs"][bank][pcr].as_str().unwrap(),
                val.as_str().unwrap().to_lowercase(),
                "{bank} PCR {pcr}"
            );
            compared += 1;
        }
    }
    assert!(compared >= 10, "compared only {compared}");
    // Garbage is a specific error.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"\x01\x02\x03").unwrap();
    let out = tellus().args(["eventlog", "show"]).arg(&junk).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a valid PC Client event log"));
}
