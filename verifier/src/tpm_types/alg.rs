//! `TPM_ALG_ID` values (TPM 2.0 Library Part 2 §6.3) and their names.
//!
//! Hash algorithms are [`tellus_measured_boot::HashAlg`]
//! (`HashAlg::from_tpm_alg_id`, `HashAlg::tpm_alg_id`); the constants here
//! are for the other algorithms, and for matching raw ids.

pub const RSA: u16 = 0x0001;
pub const SHA1: u16 = 0x0004;
pub const HMAC: u16 = 0x0005;
pub const AES: u16 = 0x0006;
pub const MGF1: u16 = 0x0007;
pub const KEYEDHASH: u16 = 0x0008;
pub const XOR: u16 = 0x000A;
pub const SHA256: u16 = 0x000B;
pub const SHA384: u16 = 0x000C;
pub const SHA512: u16 = 0x000D;
pub const NULL: u16 = 0x0010;
pub const SM3_256: u16 = 0x0012;
pub const SM4: u16 = 0x0013;
/// RSASSA-PKCS1-v1_5 signatures.
pub const RSASSA: u16 = 0x0014;
/// RSAES-PKCS1-v1_5 (its scheme details are empty).
pub const RSAES: u16 = 0x0015;
pub const RSAPSS: u16 = 0x0016;
pub const OAEP: u16 = 0x0017;
pub const ECDSA: u16 = 0x0018;
pub const ECDH: u16 = 0x0019;
/// ECDAA (its scheme details carry a counter too).
pub const ECDAA: u16 = 0x001A;
pub const SM2: u16 = 0x001B;
pub const ECSCHNORR: u16 = 0x001C;
pub const ECMQV: u16 = 0x001D;
pub const KDF1_SP800_56A: u16 = 0x0020;
pub const KDF2: u16 = 0x0021;
pub const KDF1_SP800_108: u16 = 0x0022;
pub const ECC: u16 = 0x0023;
pub const SYMCIPHER: u16 = 0x0025;
pub const CAMELLIA: u16 = 0x0026;
pub const SHA3_256: u16 = 0x0027;
pub const SHA3_384: u16 = 0x0028;
pub const SHA3_512: u16 = 0x0029;
pub const CFB: u16 = 0x0043;

/// The name of a `TPM_ALG_ID`, for messages (`"unknown"` when not listed
/// here).
pub fn name(alg: u16) -> &'static str {
    match alg {
        RSA => "RSA",
        SHA1 => "SHA1",
        HMAC => "HMAC",
        AES => "AES",
        MGF1 => "MGF1",
        KEYEDHASH => "KEYEDHASH",
        XOR => "XOR",
        SHA256 => "SHA256",
        SHA384 => "SHA384",
        SHA512 => "SHA512",
        NULL => "NULL",
        SM3_256 => "SM3_256",
        SM4 => "SM4",
        RSASSA => "RSASSA",
        RSAES => "RSAES",
        RSAPSS => "RSAPSS",
        OAEP => "OAEP",
        ECDSA => "ECDSA",
        ECDH => "ECDH",
        ECDAA => "ECDAA",
        SM2 => "SM2",
        ECSCHNORR => "ECSCHNORR",
        ECMQV => "ECMQV",
        KDF1_SP800_56A => "KDF1_SP800_56A",
        KDF2 => "KDF2",
        KDF1_SP800_108 => "KDF1_SP800_108",
        ECC => "ECC",
        SYMCIPHER => "SYMCIPHER",
        CAMELLIA => "CAMELLIA",
        SHA3_256 => "SHA3_256",
        SHA3_384 => "SHA3_384",
        SHA3_512 => "SHA3_512",
        CFB => "CFB",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tellus_measured_boot::HashAlg;

    #[test]
    fn hash_ids_agree_with_measured_boot() {
        for (id, alg) in [
            (SHA1, HashAlg::Sha1),
            (SHA256, HashAlg::Sha256),
            (SHA384, HashAlg::Sha384),
            (SHA512, HashAlg::Sha512),
        ] {
            assert_eq!(HashAlg::from_tpm_alg_id(id), Some(alg));
            assert_eq!(alg.tpm_alg_id(), id);
            assert_eq!(name(id), alg.name().to_uppercase());
        }
        assert_eq!(HashAlg::from_tpm_alg_id(SM3_256), None);
        assert_eq!(name(0x7777), "unknown");
    }
}
