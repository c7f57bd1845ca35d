//! `TPM_ECC_CURVE` values (TPM 2.0 Library Part 2 §6.4).

pub const NIST_P256: u16 = 0x0003;
pub const NIST_P384: u16 = 0x0004;
pub const NIST_P521: u16 = 0x0005;
