//! Text log lines that a request cannot forge: the field formatter for the
//! text format writes every field and message with control characters
//! escaped (`\n`, `\r`, `\t`, others as `\u{..}`), so a `%0a` in a URL
//! path parameter, which appears decoded in error messages, cannot start a
//! new log line. (The JSON format escapes by itself.)
//!
//! Callers: `main.rs` (tracing init), tests.

use std::fmt::{self, Write};

use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{self, Writer};
use tracing_subscriber::fmt::FormatFields;

/// The field formatter for text log lines: `message` first as is, then
/// `name=value`, all escaped.
pub fn text_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    format::debug_fn(
        |w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
            let mut out = Escaping(w);
            match field.name() {
                "message" => write!(out, "{value:?}"),
                name => write!(out, "{}={value:?}", name.trim_start_matches("r#")),
            }
        },
    )
    .delimited(" ")
}

/// Passes text through with control characters escaped.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if c.is_control() => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn control_characters_cannot_forge_a_line() {
        let buf = Buf::default();
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || w.clone())
            .fmt_fields(super::text_fields())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let ident = "x\n2026-01-01T00:00:00Z  INFO forged\r\x1b[2J\u{85}";
            let span = tracing::info_span!("http", path = %ident);
            let _e = span.enter();
            tracing::info!(error = %format!("Node {ident} could not be found."), "request {}", ident);
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.contains(r"x\n2026-01-01T00:00:00Z  INFO forged\r\u{1b}[2J\u{85}"),
            "{out}"
        );
        assert!(out.contains("error=Node x\\n"), "{out}");
        assert!(out.contains("request x\\n"), "{out}");
    }
}
