//! The TPM evidence a KBS client sends (tee `tpm`) and the files
//! `verify-quote` reads: every parser of quote, signature, AK public key,
//! PCR values and event log must return a value or an error for any bytes,
//! never panic, and the evidence JSON must go through the whole
//! verification (refused at the signature for anything not made by a TPM).
//! The first byte picks the parser; the rest is its input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tellus_verifier::tpm::{
    evidence_from_json, parse_pcrs_file, verify_evidence, AkPublic, EventLog, EventLogFormat,
    QuoteAttest, TpmSignature,
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else { return };
    match which % 8 {
        0 => {
            // A quote whose selection then reads a PCR file from the same bytes.
            if let Ok(q) = QuoteAttest::parse(input) {
                let _ = parse_pcrs_file(input, &q.pcr_select);
            }
        }
        1 => {
            let _ = TpmSignature::parse(input);
        }
        2 => {
            let _ = AkPublic::from_tpm2b_public(input);
        }
        3 => {
            let _ = AkPublic::from_spki_der(input);
            let _ = AkPublic::from_pem(input);
        }
        4 => {
            let _ = parse_pcrs_file(input, &[]);
        }
        5 => {
            for f in [EventLogFormat::Auto, EventLogFormat::Cel, EventLogFormat::PcClient] {
                let _ = EventLog::parse(input, f);
            }
        }
        _ => {
            if let Ok(ev) = evidence_from_json(input) {
                let _ = verify_evidence(&ev, &[0u8; 48]);
            }
        }
    }
});
