//! `Secret`: a string that never shows itself.
//!
//! BMC passwords travel inside this type from the request that carries them
//! to the memfd ipmitool reads ([`crate::password`]) or the Redfish request's
//! basic auth. `Debug` and `Display` print `******`, so a stray `?spec` in a
//! tracing field cannot leak one, and the bytes are wiped (`zeroize`) when
//! the value is dropped.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

#[derive(Clone, PartialEq, Eq, Default, Zeroize, ZeroizeOnDrop)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The clear text; call sites are the few places that hand it to a BMC.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("******")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("******")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_the_clear_text() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "****** ******");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn zeroize_wipes_the_bytes() {
        // What drop runs (ZeroizeOnDrop calls this very method).
        let mut s = Secret::new("hunter2");
        s.zeroize();
        assert!(s.is_empty());
        assert_eq!(s.expose(), "");
    }
}
