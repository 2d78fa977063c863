//! The image checksums nova and Glance set: `image_checksum` (legacy MD5)
//! and `image_os_hash_algo` + `image_os_hash_value` (md5, sha256, sha384,
//! sha512), computed while the image is downloaded.
//!
//! Callers: [`super::cache`].

use md5::Digest as _;

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("image_os_hash_algo {0:?} is not supported (md5, sha256, sha384, sha512)")]
    Algorithm(String),
    #[error(
        "image checksum mismatch: {algo} of {image} is {actual}, instance_info says {expected}"
    )]
    Mismatch {
        image: String,
        algo: String,
        expected: String,
        actual: String,
    },
}

/// One running hash.
pub enum Hasher {
    Md5(md5::Md5),
    Ring(ring::digest::Context),
}

impl Hasher {
    pub fn new(algo: &str) -> Result<Hasher, DigestError> {
        use ring::digest::{Context, SHA256, SHA384, SHA512};
        Ok(match algo {
            "md5" => Hasher::Md5(md5::Md5::new()),
            "sha256" => Hasher::Ring(Context::new(&SHA256)),
            "sha384" => Hasher::Ring(Context::new(&SHA384)),
            "sha512" => Hasher::Ring(Context::new(&SHA512)),
            other => return Err(DigestError::Algorithm(other.to_owned())),
        })
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(bytes),
            Hasher::Ring(c) => c.update(bytes),
        }
    }

    /// Lower-case hex.
    pub fn finish(self) -> String {
        match self {
            Hasher::Md5(h) => crate::secret::hex(&h.finalize()),
            Hasher::Ring(c) => crate::secret::hex(c.finish().as_ref()),
        }
    }
}

/// What the image must hash to: `(algorithm, lower-case hex)` pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected(pub Vec<(String, String)>);

impl Expected {
    /// From instance_info: os_hash (algo + value) when set, and the legacy
    /// MD5 `image_checksum` when set; an unknown algorithm is refused.
    pub fn from_fields(checksum: &str, algo: &str, value: &str) -> Result<Expected, DigestError> {
        let mut out = Vec::new();
        if !algo.is_empty() && !value.is_empty() {
            let algo = algo.to_ascii_lowercase();
            Hasher::new(&algo)?;
            out.push((algo, value.trim().to_ascii_lowercase()));
        }
        if !checksum.is_empty() {
            out.push(("md5".to_owned(), checksum.trim().to_ascii_lowercase()));
        }
        Ok(Expected(out))
    }

    pub fn algorithms(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(a, _)| a.as_str())
    }

    /// Compare with computed `(algo, hex)` values.
    pub fn check(&self, image: &str, actual: &[(String, String)]) -> Result<(), DigestError> {
        for (algo, expected) in &self.0 {
            let got = actual.iter().find(|(a, _)| a == algo).map(|(_, v)| v);
            if got != Some(expected) {
                return Err(DigestError::Mismatch {
                    image: image.to_owned(),
                    algo: algo.clone(),
                    expected: expected.clone(),
                    actual: got.cloned().unwrap_or_else(|| "not computed".into()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(algo: &str, b: &[u8]) -> String {
        let mut h = Hasher::new(algo).unwrap();
        h.update(b);
        h.finish()
    }

    #[test]
    fn the_known_digests_of_abc() {
        // RFC 1321 and FIPS 180-2's test vectors for "abc".
        assert_eq!(hash("md5", b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hash("sha256", b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hash("sha512", b"abc").starts_with("ddaf35a193617aba"));
    }

    #[test]
    fn an_unknown_algorithm_is_refused_and_a_mismatch_names_both_values() {
        let err = Expected::from_fields("", "crc32", "00").unwrap_err();
        assert!(
            err.to_string().contains("\"crc32\" is not supported"),
            "{err}"
        );
        let e = Expected::from_fields("900150983CD24FB0D6963F7D28E17F72", "", "").unwrap();
        assert!(e
            .check("img", &[("md5".into(), hash("md5", b"abc"))])
            .is_ok());
        let err = e
            .check("img", &[("md5".into(), hash("md5", b"abd"))])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("image checksum mismatch: md5 of img is "),
            "{err}"
        );
        assert!(
            err.contains("instance_info says 900150983cd24fb0d6963f7d28e17f72"),
            "{err}"
        );
    }
}
