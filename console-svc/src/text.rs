//! Caller input quoted in messages, bounded: an error names what was wrong
//! without echoing all of it (a 1 MiB node id in `grpc-message` would make
//! default clients fail with RESOURCE_EXHAUSTED instead of the reason).
//!
//! Used by `spec` (request validation) and `error` (the gRPC mapping).

/// Characters of caller input quoted in a message.
pub const QUOTED_CHARS: usize = 64;

/// `raw` quoted (Rust string escapes), cut to [`QUOTED_CHARS`] characters
/// with "…" when longer.
pub fn quoted(raw: &str) -> String {
    let mut chars = raw.chars();
    let head: String = chars.by_ref().take(QUOTED_CHARS).collect();
    match chars.next() {
        None => format!("{head:?}"),
        Some(_) => format!("{head:?}…"),
    }
}

/// `text` cut to at most `max` bytes at a character boundary, with "…"
/// when cut.
pub fn bounded(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_cut() {
        assert_eq!(quoted("a b"), "\"a b\"");
        let long = "x".repeat(1 << 20);
        let q = quoted(&long);
        assert_eq!(q, format!("\"{}\"…", "x".repeat(QUOTED_CHARS)));
        // Multi-byte characters are counted as characters, never split.
        assert_eq!(quoted(&"é".repeat(100)).chars().count(), QUOTED_CHARS + 3);
    }

    #[test]
    fn messages_are_bounded_at_char_boundaries() {
        assert_eq!(bounded("short".into(), 10), "short");
        let cut = bounded("é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
        assert!(cut.starts_with("éééé"), "{cut}");
    }
}
