//! Predicted measurements of a launch: the records as CEL and the PCR value
//! they produce from a freshly reset PCR.

use crate::cel::{self, CelRecord};
use crate::digest::{Digest, HashAlg};
use crate::records::LaunchRecord;
use serde_json::{json, Value};

/// A prediction.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub pcr: u32,
    pub records: Vec<CelRecord>,
    /// Final PCR value per bank.
    pub pcr_values: Vec<Digest>,
}

/// CEL records numbered from `first_recnum`, and the PCR values a fresh PCR
/// reaches after extending them in each of `banks`.
pub fn predict(
    records: &[LaunchRecord],
    pcr: u32,
    banks: &[HashAlg],
    first_recnum: u64,
) -> Prediction {
    let records: Vec<CelRecord> = records
        .iter()
        .zip(first_recnum..)
        .map(|(r, n)| CelRecord::tellus(n, pcr, r, banks))
        .collect();
    // Records are built with valid digests for `pcr`; an out-of-range PCR
    // shows up as zero values, and the launcher rejects such a PCR earlier.
    let replayed = cel::replay(&records).unwrap_or_default();
    let pcr_values = banks.iter().map(|&a| replayed.value(a, pcr)).collect();
    Prediction { pcr, records, pcr_values }
}

impl Prediction {
    /// Machine-readable form: per record its kind, payload and digests, and
    /// the final PCR per bank. `tellus-verifier refs add` reads this.
    pub fn to_json(&self) -> Value {
        let records: Vec<Value> = self
            .records
            .iter()
            .map(|r| {
                let mut o = match r.launch_record() {
                    Some(Ok(lr)) => lr.to_json(),
                    _ => json!({}),
                };
                let digests: serde_json::Map<String, Value> = r
                    .digests
                    .iter()
                    .filter_map(|d| d.digest())
                    .map(|d| (d.alg().name().to_string(), Value::from(d.to_string())))
                    .collect();
                if let Value::Object(m) = &mut o {
                    m.insert("recnum".into(), json!(r.recnum));
                    m.insert("record_digests".into(), Value::Object(digests));
                }
                o
            })
            .collect();
        let pcrs: serde_json::Map<String, Value> = self
            .pcr_values
            .iter()
            .map(|d| (d.alg().name().to_string(), Value::from(d.to_string())))
            .collect();
        json!({ "pcr": self.pcr, "records": records, "pcr_values": pcrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaying_a_prediction_gives_its_pcr() {
        let recs = [LaunchRecord::cmdline("a"), LaunchRecord::separator()];
        let banks = [HashAlg::Sha256, HashAlg::Sha384];
        let p = predict(&recs, 13, &banks, 0);
        let bytes = cel::encode(&p.records);
        let replayed = cel::replay(&cel::decode(&bytes).unwrap()).unwrap();
        for d in &p.pcr_values {
            assert_eq!(&replayed.value(d.alg(), 13), d);
        }
        let mut manual = Digest::zero(HashAlg::Sha256);
        for r in &recs {
            let tlv = {
                let c = r.encode_content();
                let mut t = vec![crate::cel::CONTENT_TELLUS];
                t.extend_from_slice(&(c.len() as u32).to_be_bytes());
                t.extend_from_slice(&c);
                t
            };
            manual = manual.extend(Digest::of(HashAlg::Sha256, &tlv).as_bytes());
        }
        assert_eq!(p.pcr_values[0], manual);
        assert_eq!(p.to_json()["records"][0]["kind"], "cmdline");
    }
}
