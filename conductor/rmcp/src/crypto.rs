//! Cipher suites and the crypto an RMCP+ session needs: the RAKP HMACs,
//! SIK/K1/K2 derivation, the integrity trailer MAC and AES-CBC-128 with
//! IPMI's confidentiality padding. The primitives are kept crates (ring for
//! HMAC-SHA1/-SHA256 and randomness, `aes` + `cbc` for AES-CBC); this file
//! only says which one each step uses. Called by `handshake` and `wire`.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{Result, RmcpError};

/// RAKP authentication algorithm (the key exchange HMAC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthAlg {
    None = 0,
    HmacSha1 = 1,
    HmacSha256 = 3,
}

/// Integrity algorithm of the session trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityAlg {
    None = 0,
    HmacSha1_96 = 1,
    HmacSha256_128 = 4,
}

/// Confidentiality algorithm of session payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfAlg {
    None = 0,
    AesCbc128 = 1,
}

/// A cipher suite as `ipmitool -C` names them (IPMI v2.0 table 22-20).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CipherSuite {
    pub id: u8,
    pub auth: AuthAlg,
    pub integrity: IntegrityAlg,
    pub conf: ConfAlg,
}

impl CipherSuite {
    /// The suites this client speaks: 0-3 (SHA1) and 17 (SHA256).
    pub fn from_id(id: u8) -> Result<Self> {
        use {AuthAlg as A, ConfAlg as C, IntegrityAlg as I};
        let (auth, integrity, conf) = match id {
            0 => (A::None, I::None, C::None),
            1 => (A::HmacSha1, I::None, C::None),
            2 => (A::HmacSha1, I::HmacSha1_96, C::None),
            3 => (A::HmacSha1, I::HmacSha1_96, C::AesCbc128),
            15 => (A::HmacSha256, I::None, C::None),
            16 => (A::HmacSha256, I::HmacSha256_128, C::None),
            17 => (A::HmacSha256, I::HmacSha256_128, C::AesCbc128),
            other => return Err(RmcpError::UnsupportedCipherSuite(other)),
        };
        Ok(Self {
            id,
            auth,
            integrity,
            conf,
        })
    }
}

impl AuthAlg {
    fn ring_alg(self) -> Option<hmac::Algorithm> {
        match self {
            Self::None => None,
            Self::HmacSha1 => Some(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
            Self::HmacSha256 => Some(hmac::HMAC_SHA256),
        }
    }

    /// HMAC(key, parts...) under this algorithm; empty for `None`.
    pub fn mac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let Some(alg) = self.ring_alg() else {
            return Vec::new();
        };
        let key = hmac::Key::new(alg, key);
        let mut ctx = hmac::Context::with_key(&key);
        for part in parts {
            ctx.update(part);
        }
        ctx.sign().as_ref().to_vec()
    }

    /// Length of the RAKP 4 integrity check value (HMAC-SHA1-96 / HMAC-SHA256-128).
    pub fn icv_len(self) -> usize {
        match self {
            Self::None => 0,
            Self::HmacSha1 => 12,
            Self::HmacSha256 => 16,
        }
    }
}

impl IntegrityAlg {
    /// Length of the AuthCode field in the session trailer.
    pub fn mac_len(self) -> usize {
        match self {
            Self::None => 0,
            Self::HmacSha1_96 => 12,
            Self::HmacSha256_128 => 16,
        }
    }

    /// The truncated trailer MAC of `data` under K1.
    pub fn mac(self, k1: &[u8], data: &[u8]) -> Vec<u8> {
        let full = match self {
            Self::None => return Vec::new(),
            Self::HmacSha1_96 => AuthAlg::HmacSha1.mac(k1, &[data]),
            Self::HmacSha256_128 => AuthAlg::HmacSha256.mac(k1, &[data]),
        };
        full[..self.mac_len()].to_vec()
    }
}

/// The session keys derived after RAKP 2 (IPMI v2.0 §13.31-13.32).
pub struct SessionKeys {
    pub sik: Zeroizing<Vec<u8>>,
    pub k1: Zeroizing<Vec<u8>>,
    pub k2: Zeroizing<Vec<u8>>,
}

impl SessionKeys {
    /// K1 = HMAC(SIK, 0x01 x 20), K2 = HMAC(SIK, 0x02 x 20); the constants are
    /// 20 bytes for SHA256 too, as ipmitool and OpenBMC use them.
    pub fn derive(auth: AuthAlg, sik: Vec<u8>) -> Self {
        let k1 = auth.mac(&sik, &[&[0x01; 20]]);
        let k2 = auth.mac(&sik, &[&[0x02; 20]]);
        Self {
            sik: Zeroizing::new(sik),
            k1: Zeroizing::new(k1),
            k2: Zeroizing::new(k2),
        }
    }
}

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

/// IV || AES-CBC-128(K2[..16], data || 1,2,..,n || n), padded to 16 bytes.
pub fn aes_encrypt(k2: &[u8], iv: [u8; 16], data: &[u8]) -> Vec<u8> {
    let pad = (16 - (data.len() + 1) % 16) % 16;
    let mut body = Vec::with_capacity(16 + data.len() + pad + 1);
    body.extend_from_slice(&iv);
    body.extend_from_slice(data);
    body.extend((1..=pad).map(|i| i as u8));
    body.push(pad as u8);
    let mut enc = Aes128CbcEnc::new(GenericArray::from_slice(&k2[..16]), &iv.into());
    for block in body[16..].chunks_exact_mut(16) {
        enc.encrypt_block_mut(GenericArray::from_mut_slice(block));
    }
    body
}

/// The inverse of [`aes_encrypt`]: checks the length and the pad bytes.
pub fn aes_decrypt(k2: &[u8], body: &[u8]) -> Result<Vec<u8>> {
    if body.len() < 32 || !body.len().is_multiple_of(16) {
        return Err(RmcpError::Malformed(format!(
            "encrypted payload of {} bytes is not IV + whole AES blocks",
            body.len()
        )));
    }
    let (iv, rest) = body.split_at(16);
    let mut plain = rest.to_vec();
    let mut dec = Aes128CbcDec::new(
        GenericArray::from_slice(&k2[..16]),
        GenericArray::from_slice(iv),
    );
    for block in plain.chunks_exact_mut(16) {
        dec.decrypt_block_mut(GenericArray::from_mut_slice(block));
    }
    let pad = usize::from(*plain.last().unwrap_or(&0));
    if pad + 1 > plain.len() {
        return Err(RmcpError::Malformed(
            "confidentiality pad longer than payload".into(),
        ));
    }
    let data_len = plain.len() - pad - 1;
    let pad_ok = plain[data_len..data_len + pad]
        .iter()
        .enumerate()
        .all(|(i, b)| usize::from(*b) == i + 1);
    if !pad_ok {
        return Err(RmcpError::Malformed(
            "bad confidentiality pad bytes (wrong K2?)".into(),
        ));
    }
    plain.truncate(data_len);
    Ok(plain)
}

/// Cryptographically random bytes (session IDs, Rm, IVs).
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SystemRandom reads getrandom(2); it only fails if the kernel has none.
    SystemRandom::new()
        .fill(&mut out)
        .unwrap_or_else(|_| panic!("the system random source failed"));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // RFC 2202 test case 2 and RFC 4231 test case 2: the HMACs are the right ones.
    #[test]
    fn hmac_known_answers() {
        let sha1 = AuthAlg::HmacSha1.mac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex(&sha1), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        let sha256 = AuthAlg::HmacSha256.mac(b"Jefe", &[b"what do ya want for nothing?"]);
        assert_eq!(
            hex(&sha256),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            IntegrityAlg::HmacSha1_96.mac(b"Jefe", b"what do ya want for nothing?"),
            sha1[..12]
        );
        assert_eq!(
            IntegrityAlg::HmacSha256_128.mac(b"Jefe", b"what do ya want for nothing?"),
            sha256[..16]
        );
    }

    // FIPS-197 / SP 800-38A F.2.1 CBC-AES128 block 1, then IPMI's padding.
    #[test]
    fn aes_cbc_known_answer_and_pad() {
        let key = unhex("2b7e151628aed2a6abf7158809cf4f3c");
        let iv: [u8; 16] = unhex("000102030405060708090a0b0c0d0e0f")
            .try_into()
            .unwrap();
        let block = unhex("6bc1bee22e409f96e93d7e117393172a");
        // 15 data bytes + pad length 0 = one block; check against SP 800-38A with the
        // last byte of the plaintext block being the pad length.
        let mut p = block.clone();
        p[15] = 0;
        let out = aes_encrypt(&key, iv, &p[..15]);
        assert_eq!(out.len(), 32);
        assert_eq!(&out[..16], &iv);
        let mut dec = Aes128CbcDec::new(GenericArray::from_slice(&key), &iv.into());
        let mut b = out[16..].to_vec();
        dec.decrypt_block_mut(GenericArray::from_mut_slice(&mut b));
        assert_eq!(b, p);
        // The full SP 800-38A vector: encrypting the raw block gives its ciphertext.
        let mut enc = Aes128CbcEnc::new(GenericArray::from_slice(&key), &iv.into());
        let mut raw = block.clone();
        enc.encrypt_block_mut(GenericArray::from_mut_slice(&mut raw));
        assert_eq!(hex(&raw), "7649abac8119b246cee98e9b12e9197d");
        for len in [0usize, 1, 14, 15, 16, 17, 31, 200] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let enc = aes_encrypt(&key, iv, &data);
            assert_eq!(enc.len() % 16, 0);
            assert_eq!(aes_decrypt(&key, &enc).unwrap(), data, "len {len}");
        }
        let wrong = unhex("000102030405060708090a0b0c0d0e0f");
        let enc = aes_encrypt(&key, iv, b"hello");
        assert!(
            aes_decrypt(&wrong, &enc).is_err(),
            "a wrong K2 shows in the pad"
        );
    }

    #[test]
    fn suites() {
        let s3 = CipherSuite::from_id(3).unwrap();
        assert_eq!(
            (s3.auth, s3.integrity, s3.conf),
            (
                AuthAlg::HmacSha1,
                IntegrityAlg::HmacSha1_96,
                ConfAlg::AesCbc128
            )
        );
        let s17 = CipherSuite::from_id(17).unwrap();
        assert_eq!(
            (s17.auth, s17.integrity, s17.conf),
            (
                AuthAlg::HmacSha256,
                IntegrityAlg::HmacSha256_128,
                ConfAlg::AesCbc128
            )
        );
        assert!(matches!(
            CipherSuite::from_id(8),
            Err(RmcpError::UnsupportedCipherSuite(8))
        ));
    }

    pub(crate) fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
