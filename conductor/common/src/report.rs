//! An error as the one line a binary prints before it exits non-zero: the
//! whole chain of causes (`a: b: c`), never a backtrace, and no line breaks
//! even when a cause spans several lines (a TOML parse error does). Both
//! services' `main.rs` print failures through [`error_line`] (by way of
//! `service::exit`).

use std::error::Error;

/// `err` and its sources on one line, a cause its parent already quotes
/// (`#[error("{0}")]` over a `#[source]`) said once.
pub fn error_line(err: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut last = String::new();
    for cause in std::iter::successors(Some(err), |&e| e.source()) {
        let text = cause
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if text.is_empty() || last.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
        last = text;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("config file f.toml")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("TOML parse error at line 1\n  |\n1 | a b\n  |   ^\nexpected `=`")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start: {0}")]
    struct Quoting(#[source] Inner);

    #[test]
    fn causes_are_folded_onto_one_line() {
        assert_eq!(
            error_line(&Outer(Inner)),
            "config file f.toml: TOML parse error at line 1 | 1 | a b | ^ expected `=`"
        );
    }

    #[test]
    fn a_cause_the_parent_quotes_is_said_once() {
        let line = error_line(&Quoting(Inner));
        assert_eq!(line.matches("TOML parse error").count(), 1, "{line}");
    }
}
