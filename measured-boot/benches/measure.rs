//! Benchmark: our file hashing against coreutils' `sha256sum`/`sha384sum` on
//! the same 256 MiB file in the same run, and PCR replay speed.
//!
//! Run: `cargo bench -p tellus-measured-boot --bench measure`.
//! Each figure is the best of `ROUNDS` runs (page cache warm for everyone:
//! the file is read once before timing). Ratios > 1 mean tellus is faster.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};
use tellus_measured_boot::cel::{self, CelRecord};
use tellus_measured_boot::digest::hash_file;
use tellus_measured_boot::records::LaunchRecord;
use tellus_measured_boot::{HashAlg, PcrBanks};

const FILE_MIB: usize = 256;
const ROUNDS: usize = 3;

fn best(mut f: impl FnMut() -> Duration) -> Duration {
    (0..ROUNDS).map(|_| f()).min().unwrap_or_default()
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("blob");
    {
        let mut f = std::fs::File::create(&path).expect("create");
        let mut x = 0x9E3779B97F4A7C15u64;
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for _ in 0..FILE_MIB {
            f.write_all(&chunk).expect("write");
        }
    }
    let _ = std::fs::read(&path); // warm the page cache
    println!("file: {FILE_MIB} MiB, best of {ROUNDS}");
    for (alg, tool) in [(HashAlg::Sha256, "sha256sum"), (HashAlg::Sha384, "sha384sum")] {
        let ours = best(|| {
            let t = Instant::now();
            let (d, _) = hash_file(&path, &[alg]).expect("hash");
            std::hint::black_box(d);
            t.elapsed()
        });
        let theirs = best(|| {
            let t = Instant::now();
            let out = Command::new(tool).arg(&path).output().expect("run coreutils");
            assert!(out.status.success());
            t.elapsed()
        });
        let mibs = |d: Duration| FILE_MIB as f64 / d.as_secs_f64();
        println!(
            "{alg}: tellus {:.0} MiB/s, {tool} {:.0} MiB/s, ratio (tellus speed / {tool} speed) {:.2}",
            mibs(ours),
            mibs(theirs),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }

    // Replay: 1,000,000 events into PCR 13 of the SHA-256 and SHA-384 banks.
    const EVENTS: usize = 1_000_000;
    let rec =
        CelRecord::tellus(0, 13, &LaunchRecord::separator(), &[HashAlg::Sha256, HashAlg::Sha384]);
    let records: Vec<CelRecord> = (0..EVENTS as u64)
        .map(|n| {
            let mut r = rec.clone();
            r.recnum = n;
            r
        })
        .collect();
    let d = best(|| {
        let t = Instant::now();
        let b = cel::replay(&records).expect("replay");
        std::hint::black_box(b);
        t.elapsed()
    });
    println!(
        "CEL replay, 2 banks: {:.2} M events/s ({:.2} M extends/s); goal 1 M events/s: ratio {:.2}",
        EVENTS as f64 / d.as_secs_f64() / 1e6,
        2.0 * EVENTS as f64 / d.as_secs_f64() / 1e6,
        EVENTS as f64 / d.as_secs_f64() / 1e6
    );
    let digest = [0x5au8; 32];
    let d = best(|| {
        let t = Instant::now();
        let mut b = PcrBanks::new();
        for i in 0..EVENTS {
            b.extend(HashAlg::Sha256, (i % 24) as u32, &digest).expect("extend");
        }
        std::hint::black_box(b);
        t.elapsed()
    });
    println!(
        "raw SHA-256 extends: {:.2} M/s; goal 1 M/s: ratio {:.2}",
        EVENTS as f64 / d.as_secs_f64() / 1e6,
        EVENTS as f64 / d.as_secs_f64() / 1e6
    );
}
