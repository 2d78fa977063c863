//! VNC authentication (security type 2): the server sends a 16-byte
//! challenge, the client answers with it DES-encrypted (ECB, two blocks).
//!
//! The key is the password's first 8 bytes, zero-padded, with the bits of
//! every byte reversed (the historic quirk of the original VNC code).

use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt, KeyInit};
use des::Des;

use super::rfb::CHALLENGE_LEN;

/// The DES key VNC derives from `password`.
pub fn vnc_key(password: &[u8]) -> [u8; 8] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    key
}

/// The response to `challenge` for `password`.
pub fn response(password: &[u8], challenge: &[u8; CHALLENGE_LEN]) -> [u8; CHALLENGE_LEN] {
    let mut key = vnc_key(password);
    let cipher = Des::new(GenericArray::from_slice(&key));
    key.fill(0);
    let mut out = *challenge;
    for block in out.chunks_exact_mut(8) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_reverses_bits_and_pads_or_truncates() {
        assert_eq!(vnc_key(b"\x01\x80"), [0x80, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(vnc_key(b"abcdefghij"), vnc_key(b"abcdefgh"));
    }

    /// Known answer, computed independently with
    /// `openssl enc -des-ecb -K 0e86ceceeef64e26 -nopad` (the bit-reversed
    /// "password") over the bytes 0..16.
    #[test]
    fn matches_a_known_vnc_response() {
        let challenge: [u8; 16] = std::array::from_fn(|i| i as u8);
        let want = [
            0xb8, 0x66, 0x92, 0x41, 0x25, 0xc8, 0xee, 0xbb, 0x9d, 0xeb, 0xc1, 0xdb, 0x61, 0xc5,
            0x38, 0xe2,
        ];
        assert_eq!(response(b"password", &challenge), want);
        assert_eq!(response(b"passwordLONGER", &challenge), want);
    }
}
