//! vCPU types and their CPUID(1).EAX signatures, as QEMU names them. The
//! signature goes into the VMSA's RDX at reset (QEMU only).

/// CPUID Fn0000_0001_EAX from family, model and stepping (AMD CPUID
/// specification #25481: extended family above 0xF, extended model).
pub fn cpu_sig(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) =
        if family > 0xf { (0xf, (family - 0xf) & 0xff) } else { (family, 0) };
    (family_high << 20)
        | (((model >> 4) & 0xf) << 16)
        | (family_low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// QEMU CPU model names (the ones sev-snp-measure accepts) and their
/// family/model/stepping.
const VCPU_TYPES: &[(&str, u32, u32, u32)] = &[
    ("EPYC", 23, 1, 2),
    ("EPYC-v1", 23, 1, 2),
    ("EPYC-v2", 23, 1, 2),
    ("EPYC-IBPB", 23, 1, 2),
    ("EPYC-v3", 23, 1, 2),
    ("EPYC-v4", 23, 1, 2),
    ("EPYC-Rome", 23, 49, 0),
    ("EPYC-Rome-v1", 23, 49, 0),
    ("EPYC-Rome-v2", 23, 49, 0),
    ("EPYC-Rome-v3", 23, 49, 0),
    ("EPYC-Milan", 25, 1, 1),
    ("EPYC-Milan-v1", 25, 1, 1),
    ("EPYC-Milan-v2", 25, 1, 1),
    ("EPYC-Genoa", 25, 17, 0),
    ("EPYC-Genoa-v1", 25, 17, 0),
    ("EPYC-Turin", 26, 0, 0),
];

/// The signature of a QEMU vCPU model name (`EPYC-v4`, `EPYC-Milan`, …),
/// or `None` for a name not in the table.
pub fn vcpu_sig_of(name: &str) -> Option<u32> {
    VCPU_TYPES.iter().find(|(n, ..)| *n == name).map(|&(_, f, m, s)| cpu_sig(f, m, s))
}

/// The vCPU model names [`vcpu_sig_of`] knows.
pub fn vcpu_type_names() -> impl Iterator<Item = &'static str> {
    VCPU_TYPES.iter().map(|(n, ..)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        // tests/test_vcpu_types.py of sev-snp-measure.
        assert_eq!(cpu_sig(14, 1, 2), 0x0e12);
        assert_eq!(cpu_sig(23, 1, 2), 0x800f12);
        assert_eq!(vcpu_sig_of("EPYC-v4"), Some(0x800f12));
        assert_eq!(vcpu_sig_of("EPYC-Milan"), Some(0xa00f11));
        assert_eq!(vcpu_sig_of("EPYC-Genoa"), Some(0xa10f10));
        assert_eq!(vcpu_sig_of("EPYC-Turin"), Some(0xb00f00));
        assert_eq!(vcpu_sig_of("Skylake"), None);
        assert_eq!(vcpu_type_names().count(), VCPU_TYPES.len());
    }
}
