//! Cost of one policy evaluation with the engine's parts split out: the
//! shipped attestation policy over the claims of the fixture launch (as the
//! verifier evaluates it: clone of the prepared engine, input conversion,
//! evaluation, decision), the input conversion alone, and optionally
//! another policy over the same input and data.
//!
//! `cargo bench -p tellus-policies --bench eval -- [--seconds S] [--policy FILE]`
//!
//! `--count N --policy FILE` evaluates FILE exactly N times and nothing
//! else, for `perf stat -e instructions:u`: instruction counts, unlike
//! times, stay put on a machine whose speed drifts.

#[path = "../tests/fixtures/mod.rs"]
mod fixtures;

use std::time::{Duration, Instant};
use tellus_policies::{Policy, ReferenceSet};

/// Microseconds per call of `f`, over about `seconds`.
fn per_call(seconds: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..100 {
        f();
    }
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs_f64(seconds) {
        for _ in 0..50 {
            f();
        }
        n += 50;
    }
    t0.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn main() {
    let seconds: f64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let refs = ReferenceSet::from_json(&fixtures::predict(), None, Some("fixture")).expect("refs");
    let data = tellus_policies::engine::policy_data(&refs, 1_700_000_000, &Default::default());
    let input = fixtures::predicted_claims().to_json();
    if let (Some(n), Some(file)) = (arg("--count"), arg("--policy")) {
        let n: u64 = n.parse().expect("--count N");
        let text = std::fs::read_to_string(&file).expect("read --policy");
        let policy =
            Policy::compile(&file, &text).expect("compile").prepare(&data).expect("prepare");
        for _ in 0..n {
            std::hint::black_box(policy.evaluate(&input).expect("evaluate"));
        }
        return;
    }
    let attestation = Policy::default_attestation().prepare(&data).expect("prepare");
    assert!(attestation.evaluate(&input).expect("evaluate").allow, "the fixture is allowed");
    let t = per_call(seconds, || {
        std::hint::black_box(attestation.evaluate(&input).expect("evaluate"));
    });
    println!("tpm-launch.rego, fixture claims: {t:.1} us per evaluation");
    let t = per_call(seconds, || {
        std::hint::black_box(regorus::Value::from(input.clone()));
    });
    println!("  of which input to regorus values: {t:.1} us");
    if let Some(file) = arg("--policy") {
        let text = std::fs::read_to_string(&file).expect("read --policy");
        let policy =
            Policy::compile(&file, &text).expect("compile").prepare(&data).expect("prepare");
        let allow = policy.evaluate(&input).expect("evaluate").allow;
        let t = per_call(seconds, || {
            std::hint::black_box(policy.evaluate(&input).expect("evaluate"));
        });
        println!("{file}: {t:.1} us per evaluation (allow: {allow})");
    }
}
