//! Console evidence with a failure: when a node's deploy, inspection or
//! cleaning fails (the state machine's `fail` into `deploy failed`,
//! `inspect failed` or `clean failed`, whatever the cause: a timeout, a
//! service's error, the ramdisk's, the BMC's) and the node has its serial
//! console enabled, the conductor asks console-svc for the console's log
//! (GetConsoleLog), strips terminal escapes and appends the last lines to
//! the failure's own message in `last_error`, bounded in lines
//! (`[conductor] failure_console_log_lines`) and in bytes
//! ([`MAX_EVIDENCE_BYTES`]); the whole log it got goes to the tracing log.
//!
//! The ask is bounded in time (`[conductor] failure_console_log_timeout`):
//! a console-svc that is slow, down, or keeps no log (its socat backend)
//! costs the transition at most that, and the failure is recorded with a
//! note saying why there is no evidence.
//!
//! Called from one place, [`Conductor::advance`] (every `fail` goes through
//! it), via [`Conductor::with_console_evidence`].

use std::time::Duration;

use crate::config::ConductorConfig;
use crate::console::{self, ConsoleError, Kind};
use crate::model::Node;
use crate::provision::{transition, Event, State};
use crate::service::Conductor;

/// Most bytes of console text kept in last_error (the failure's own
/// message comes on top).
pub const MAX_EVIDENCE_BYTES: usize = 4096;

/// Most bytes asked of console-svc: its default ring (`native.log_ring_bytes`).
pub const FETCH_BYTES: u32 = 1 << 20;

/// How much evidence to gather, from `[conductor]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Lines kept in last_error; 0: no evidence at all.
    pub lines: usize,
    /// Longest wait for console-svc's answer.
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_config(&ConductorConfig::default())
    }
}

impl Settings {
    pub fn from_config(c: &ConductorConfig) -> Self {
        Self {
            lines: c.failure_console_log_lines,
            timeout: Duration::from_secs(c.failure_console_log_timeout),
        }
    }
}

/// The states a `fail` leads to that carry console evidence.
pub fn is_evidence_state(s: State) -> bool {
    matches!(
        s,
        State::DeployFailed | State::InspectFailed | State::CleanFailed
    )
}

impl Conductor {
    /// `message`, with the console evidence of `uuid` appended when `event`
    /// moves the node into a failed state and its serial console is
    /// enabled; `message` alone otherwise.
    pub(crate) async fn with_console_evidence(
        &self,
        uuid: &str,
        event: Event,
        message: String,
    ) -> String {
        if event != Event::Fail || self.evidence.lines == 0 {
            return message;
        }
        let Ok(node) = self.store.get_node(uuid).await else {
            return message;
        };
        let failed = State::parse(&node.provision_state)
            .ok()
            .and_then(|s| transition(s, event).ok())
            .is_some_and(|(next, _)| is_evidence_state(next));
        if !failed || !has_serial_console(&node) {
            return message;
        }
        let evidence = match self.console_log(&node).await {
            Ok(raw) => {
                let text = strip_escapes(&raw);
                tracing::warn!(node = %uuid, console_log = %text, "the node's serial console at the failure");
                shown(&text, self.evidence.lines)
            }
            Err(why) => {
                tracing::warn!(node = %uuid, reason = %why, "no console evidence for the failure");
                format!("No console log: {why}.")
            }
        };
        format!("{message}\n{evidence}")
    }

    /// The node's console log from console-svc, within the timeout, or
    /// why not (for the note in last_error).
    async fn console_log(&self, node: &Node) -> Result<Vec<u8>, String> {
        let limit = self.evidence.timeout;
        let asked = self.consoles.log(&node.uuid, FETCH_BYTES);
        match tokio::time::timeout(limit, asked).await {
            Ok(Ok(log)) => Ok(log.data),
            Ok(Err(e)) => Err(why_not(&e)),
            Err(_) => Err(format!(
                "the console service at {} did not answer within {}",
                self.consoles.endpoint(),
                humantime::format_duration(limit)
            )),
        }
    }
}

fn has_serial_console(node: &Node) -> bool {
    node.console_enabled
        && console::interface_kind(&node.console_interface).ok() == Some(Some(Kind::Serial))
}

/// A console-svc error as the note's reason.
fn why_not(e: &ConsoleError) -> String {
    match e {
        ConsoleError::Rejected(s) if s.code() == tonic::Code::Unimplemented => format!(
            "the console service keeps no log of this console (its socat backend keeps none): {}",
            s.message()
        ),
        ConsoleError::Rejected(s) if s.code() == tonic::Code::NotFound => {
            format!(
                "the console service has no console for this node: {}",
                s.message()
            )
        }
        other => other.to_string(),
    }
}

/// What goes into last_error: a heading and the last `lines` lines of
/// `text`, at most [`MAX_EVIDENCE_BYTES`] of them.
pub fn shown(text: &str, lines: usize) -> String {
    let tail = last_lines(text, lines, MAX_EVIDENCE_BYTES);
    if tail.is_empty() {
        return "The node's serial console printed nothing.".into();
    }
    let n = tail.lines().count();
    let what = if n == 1 { "line" } else { "lines" };
    format!("Last {n} {what} of the node's serial console:\n{tail}")
}

/// The last `n` lines of `text` (trailing blank lines dropped), at most
/// `max_bytes` bytes: older lines go first, and a single line too long
/// keeps its end behind "…".
pub fn last_lines(text: &str, n: usize, max_bytes: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    let mut kept: Vec<&str> = all[all.len().saturating_sub(n)..].to_vec();
    let size = |k: &[&str]| {
        k.iter()
            .map(|l| l.len() + 1)
            .sum::<usize>()
            .saturating_sub(1)
    };
    while kept.len() > 1 && size(&kept) > max_bytes {
        kept.remove(0);
    }
    match kept.as_slice() {
        [one] if one.len() > max_bytes => {
            let mut start = one.len() - max_bytes.saturating_sub('…'.len_utf8());
            while !one.is_char_boundary(start) {
                start += 1;
            }
            format!("…{}", &one[start..])
        }
        _ => kept.join("\n"),
    }
}

/// What a terminal would show of `raw`, as lines: escape sequences (CSI,
/// OSC, DCS and the other string controls, two- and three-byte escapes,
/// C1 CSI) dropped; carriage return and backspace move the cursor so that
/// later text overwrites earlier (a progress line keeps its last state);
/// `ESC [ K` erases; other control characters are dropped. Invalid UTF-8
/// becomes U+FFFD.
pub fn strip_escapes(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut line: Vec<char> = Vec::new();
    let mut col = 0usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                out.extend(line.drain(..));
                out.push('\n');
                col = 0;
            }
            '\r' => col = 0,
            '\x08' => col = col.saturating_sub(1),
            '\t' => put(&mut line, &mut col, '\t'),
            '\x1b' => match chars.next() {
                Some('[') => csi(&mut chars, &mut line, col),
                Some(']' | 'P' | 'X' | '^' | '_') => string_control(&mut chars),
                // ESC, intermediates (0x20-0x2F), one final: `ESC ( B`.
                Some(' '..='/') => {
                    while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
                    chars.next();
                }
                _ => {}
            },
            '\u{9b}' => csi(&mut chars, &mut line, col),
            c if c.is_control() => {}
            c => put(&mut line, &mut col, c),
        }
    }
    out.extend(line);
    out
}

/// Write `c` at the cursor.
fn put(line: &mut Vec<char>, col: &mut usize, c: char) {
    if *col < line.len() {
        line[*col] = c;
    } else {
        line.resize(*col, ' ');
        line.push(c);
    }
    *col += 1;
}

/// A CSI sequence after its introducer: parameters and intermediates up to
/// the final byte (0x40-0x7E). `K` (erase in line) is applied; the rest
/// (colours, cursor moves) only dropped.
fn csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &mut Vec<char>, col: usize) {
    let mut params = String::new();
    for c in chars.by_ref() {
        if ('\x40'..='\x7e').contains(&c) {
            if c == 'K' {
                match params.as_str() {
                    "" | "0" => line.truncate(col),
                    "2" => line.clear(),
                    _ => {}
                }
            }
            return;
        }
        params.push(c);
    }
}

/// OSC/DCS/SOS/PM/APC: up to BEL or ST (`ESC \`).
fn string_control(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\x07' => return,
            '\x1b' => {
                chars.next_if_eq(&'\\');
                return;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
