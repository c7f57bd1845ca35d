//! Added latency of attestation: `tellus launch` of the test guest asking
//! for one secret (enrolled host, real verifier, real swtpm) against the
//! same VM launched without attestation (no resources, no verifier),
//! alternating, N runs each (`TELLUS_BENCH_RUNS`, default 7). Prints the
//! medians of the wall time to power-off, of the time from the agent's
//! `Ready` to the end of the launch (which leaves out the boot's own
//! variance), of the boot, and of the attest and release phases.
//!
//! `cargo bench -p swtpm-tests --bench attest_latency`

#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;

use e2e_support::{launch, Verifier, VmToml};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let runs: usize =
        std::env::var("TELLUS_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let host = e2e_support::host();
    let verifier = Verifier::start(&host.tpm.local_ca());
    host.enroll(&verifier.url());
    verifier.upload("default/key/bench", b"bench secret");
    let plain = VmToml::guest();
    let mut attested = VmToml::guest();
    attested.resources = vec!["default/key/bench".into()];
    attested.verifier = Some(verifier.url());
    let refs = attested.predict(&host, verifier.dir.path());
    let out = verifier.refs_add(&refs);
    assert!(out.status.success(), "refs add failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let (mut wall_p, mut wall_a, mut attest, mut release) = (vec![], vec![], vec![], vec![]);
    let (mut ready_p, mut ready_a) = (vec![], vec![]);
    // From the agent's Ready to the end of the launch: the boot's own
    // variance (seconds under TCG on a busy machine) drops out.
    let (mut tail_p, mut tail_a) = (vec![], vec![]);
    // One warm-up of each, not counted.
    for i in 0..=runs {
        let p = launch(&host, &plain);
        assert_eq!(p.status, 0, "{}", p.dump());
        let a = launch(&host, &attested);
        assert_eq!(a.status, 0, "{}", a.dump());
        assert_eq!(a.summary["verdict"], "released", "{}", a.dump());
        if i == 0 {
            continue;
        }
        let f = |l: &e2e_support::Launched, k: &str| l.summary["phases_ms"][k].as_f64().unwrap();
        wall_p.push(p.wall.as_secs_f64() * 1e3);
        wall_a.push(a.wall.as_secs_f64() * 1e3);
        ready_p.push(f(&p, "boot"));
        ready_a.push(f(&a, "boot"));
        tail_p.push(f(&p, "total") - f(&p, "agent_ready_at"));
        tail_a.push(f(&a, "total") - f(&a, "agent_ready_at"));
        attest.push(f(&a, "attest"));
        release.push(f(&a, "release"));
        eprintln!(
            "run {i}: plain {:.0} ms, attested {:.0} ms (attest {:.1} ms {}, release {:.1} ms)",
            wall_p[i - 1],
            wall_a[i - 1],
            attest[i - 1],
            a.summary["phases_ms"]["attest_steps"],
            release[i - 1]
        );
    }
    let (mp, ma) = (median(&mut wall_p), median(&mut wall_a));
    println!("runs per variant:                    {runs} (alternating, after one warm-up each)");
    println!("launch to power-off, no attestation: median {mp:.0} ms");
    println!("launch to power-off, attested:       median {ma:.0} ms");
    println!("added wall time:                     median difference {:.0} ms", ma - mp);
    let (tp, ta) = (median(&mut tail_p), median(&mut tail_a));
    println!("agent ready to launch end, plain:    median {tp:.1} ms");
    println!("agent ready to launch end, attested: median {ta:.1} ms");
    println!("added after agent ready:             median difference {:.1} ms", ta - tp);
    println!("attest phase (request to verdict):   median {:.1} ms", median(&mut attest));
    println!("release phase (verdict to stored):   median {:.1} ms", median(&mut release));
    println!(
        "boot to agent ready:                 median {:.0} ms plain, {:.0} ms attested",
        median(&mut ready_p),
        median(&mut ready_a)
    );
}
