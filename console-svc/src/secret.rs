//! `Secret`: a string that never shows itself.
//!
//! BMC passwords travel inside this type from the gRPC request to the memfd
//! that ipmitool reads (see `sol::ipmitool`). `Debug` and `Display` print
//! `******`, so a stray `?spec` in a tracing field cannot leak one, and the
//! bytes are wiped when the value is dropped.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The clear text; call sites are the few places that hand it to a BMC tool.
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

#[expect(
    unsafe_code,
    reason = "String::as_bytes_mut, to zero the password in place"
)]
impl Drop for Secret {
    fn drop(&mut self) {
        // SAFETY: zero bytes are valid UTF-8, so the String stays well formed.
        unsafe { self.0.as_bytes_mut().fill(0) };
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
}
