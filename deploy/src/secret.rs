//! The per-deploy secret: 256 random bits (ring's system RNG) written to the
//! floppy's `token` file and sent back by the ramdisk as pass_deploy_info's
//! `key`. It is never an operator credential, never printed (`Debug` and
//! `Display` show `******`, as [`porthole_bmc::Secret`] does) and its bytes
//! are wiped on drop; comparison is constant-time.
//!
//! Callers: [`crate::deploy`] (one per PrepareRamdisk), [`crate::image::vfat`].

use std::fmt;

use porthole_bmc::Secret;
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Clone)]
pub struct DeployKey(Secret);

impl DeployKey {
    /// A fresh key: 32 random bytes as 64 lower-case hex digits.
    pub fn generate() -> Self {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .expect("the system RNG does not fail on Linux");
        let key = Self(Secret::new(hex(&raw)));
        raw.fill(0);
        key
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// Whether `given` is this key, in time that depends only on the lengths.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.expose().as_bytes(), given.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for DeployKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("******")
    }
}

impl fmt::Display for DeployKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("******")
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_hex_and_never_print() {
        let (a, b) = (DeployKey::generate(), DeployKey::generate());
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose(), b.expose());
        assert_eq!(format!("{a:?} {a}"), "****** ******");
    }

    #[test]
    fn matches_only_the_same_key() {
        let a = DeployKey::generate();
        assert!(a.matches(a.expose()));
        assert!(!a.matches(DeployKey::generate().expose()));
        assert!(!a.matches(&a.expose()[1..]));
        assert!(!a.matches(""));
    }

    #[test]
    fn hex_is_lower_case_pairs() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
