//! `tellus-verifier verify-evidence --tee snp`: offline verification of
//! Trustee-shaped SEV-SNP evidence with the built-in AMD roots.

use super::evidence::{verify_evidence, CertStore, SnpEvidence};
use super::verify::{binding_report_data, VerifyOptions};
use super::{AmdRoots, SnpError};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Largest evidence file read.
const MAX_EVIDENCE: u64 = 1 << 20;

/// SNP options of `verify-evidence`.
#[derive(Debug, Clone, clap::Args)]
pub struct SnpArgs {
    /// (tee snp) A directory of VCEKs/VLEKs fetched from AMD's KDS, used
    /// when the evidence carries none (`vcek-<chip_id>-<tcb>.der`, see
    /// `tellus_verifier::snp::CertStore`). Nothing is fetched.
    #[arg(long, value_name = "DIR")]
    pub vcek_dir: Option<PathBuf>,
    /// (tee snp) Validate certificates at this time instead of now: UNIX
    /// seconds or `YYYY-MM-DDTHH:MM:SSZ` (for archived evidence whose
    /// certificates have expired).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<i64>,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// UNIX seconds from `1663981200` or `2022-09-24T01:00:00Z`.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let bad = || format!("{s:?}: expected UNIX seconds or YYYY-MM-DDTHH:MM:SSZ");
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(bad());
    }
    let num =
        |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<i64>().ok()).ok_or_else(bad);
    let (y, mo, d, h, mi, se) =
        (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

enum Failure {
    Input(String),
    Verify(SnpError),
}

fn check(evidence: &Path, report_data_hex: &str, a: &SnpArgs) -> Result<Value, Failure> {
    let input = |e: String| Failure::Input(e);
    let bytes = if evidence == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::io::stdin(), MAX_EVIDENCE + 1),
            &mut b,
        )
        .map_err(|e| input(format!("cannot read standard input: {e}")))?;
        b
    } else {
        let len = std::fs::metadata(evidence)
            .map_err(|e| input(format!("cannot read --evidence {}: {e}", evidence.display())))?
            .len();
        if len > MAX_EVIDENCE {
            return Err(input(format!(
                "--evidence {} is larger than {MAX_EVIDENCE} bytes",
                evidence.display()
            )));
        }
        std::fs::read(evidence)
            .map_err(|e| input(format!("cannot read --evidence {}: {e}", evidence.display())))?
    };
    if bytes.len() as u64 > MAX_EVIDENCE {
        return Err(input(format!("the evidence is larger than {MAX_EVIDENCE} bytes")));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| input(format!("the evidence is not JSON: {e}")))?;
    let rd =
        hex::decode(report_data_hex).map_err(|e| input(format!("--nonce is not hex ({e})")))?;
    let report_data = match rd.len() {
        48 => {
            let mut b = [0u8; 48];
            b.copy_from_slice(&rd);
            binding_report_data(&b)
        }
        64 => {
            let mut b = [0u8; 64];
            b.copy_from_slice(&rd);
            b
        }
        n => {
            return Err(input(format!(
                "--nonce has {n} bytes; give the 48-byte binding (zero-padded to 64) or all 64 bytes of REPORT_DATA"
            )))
        }
    };
    let ev = SnpEvidence::from_json(&v).map_err(Failure::Verify)?;
    let roots = AmdRoots::builtin().map_err(Failure::Verify)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let store = a.vcek_dir.as_ref().map(CertStore::dir).unwrap_or_else(CertStore::none);
    let opts = VerifyOptions { roots, at: a.at.unwrap_or(now), report_data: Some(report_data) };
    let verified = verify_evidence(&ev, &store, &opts).map_err(Failure::Verify)?;
    Ok(verified.claims())
}

/// Runs the SNP verification: 0 verified, 1 not verified, 2 bad input.
pub fn verify_main(
    evidence: &Path,
    report_data_hex: &str,
    a: &SnpArgs,
    json_output: bool,
) -> ExitCode {
    match (check(evidence, report_data_hex, a), json_output) {
        (Ok(claims), true) => {
            let j = json!({"verified": true, "tee": "snp", "claims": claims});
            println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
            ExitCode::SUCCESS
        }
        (Ok(c), false) => {
            println!(
                "verified: the SEV-SNP report is signed by an AMD {} {}",
                c["product"].as_str().unwrap_or("?"),
                c["signer"]["kind"].as_str().unwrap_or("?")
            );
            for k in ["measurement", "host_data", "report_data", "chip_id", "family_id", "image_id"]
            {
                println!("  {k:<13} {}", c[k].as_str().unwrap_or(""));
            }
            println!("  version       {}", c["version"]);
            println!("  vmpl          {}", c["vmpl"]);
            println!("  guest_svn     {}", c["guest_svn"]);
            println!("  policy        {}", c["policy"]);
            println!("  reported_tcb  {}", c["reported_tcb"]);
            println!("  firmware      {}", c["current_firmware"].as_str().unwrap_or(""));
            ExitCode::SUCCESS
        }
        (Err(Failure::Verify(e)), false) => {
            println!("NOT verified: {e}");
            ExitCode::from(1)
        }
        (Err(Failure::Input(e)), false) => {
            eprintln!("tellus-verifier: {e}");
            ExitCode::from(2)
        }
        (Err(f), true) => {
            let (code, stage, reason) = match f {
                Failure::Verify(e) => (1, "verification", e.to_string()),
                Failure::Input(e) => (2, "input", e),
            };
            let j = json!({"verified": false, "tee": "snp", "stage": stage, "error": reason});
            println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("2022-09-24T01:00:00Z"), Ok(1_663_981_200));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2025-06-01T00:00:00Z"), Ok(1_748_736_000));
        assert_eq!(parse_time("12345"), Ok(12345));
        assert!(parse_time("2022-13-01T00:00:00Z").is_err());
        assert!(parse_time("yesterday").is_err());
    }
}
