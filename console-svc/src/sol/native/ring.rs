//! A bounded byte ring: the newest `capacity` bytes of a console's output.
//!
//! The hub keeps one per console, shared with the console handle under a
//! mutex (so it only holds plain data): its newest `scrollback_bytes` are
//! replayed to a viewer that attaches, its newest `log_ring_bytes` are
//! `RunningConsole::log`. The session keeps a small one of its own (the
//! last words that explain why it ended).

use std::collections::VecDeque;

use crate::backend::LogSnapshot;

#[derive(Debug)]
pub(crate) struct ByteRing {
    buf: VecDeque<u8>,
    capacity: usize,
    /// Some output was pushed out of the ring.
    dropped: bool,
}

impl ByteRing {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            capacity,
            dropped: false,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        if self.capacity == 0 {
            self.dropped |= !data.is_empty();
            return;
        }
        let data = if data.len() > self.capacity {
            self.dropped = true;
            &data[data.len() - self.capacity..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.capacity);
        if overflow > 0 {
            self.dropped = true;
            self.buf.drain(..overflow);
        }
        self.buf.extend(data);
    }

    /// Whether anything was ever pushed (kept or dropped).
    pub(crate) fn has_output(&self) -> bool {
        self.dropped || !self.buf.is_empty()
    }

    /// Everything in the ring, oldest first.
    pub(crate) fn contents(&self) -> Vec<u8> {
        let (a, b) = self.buf.as_slices();
        [a, b].concat()
    }

    /// The newest `max_bytes` (0: all); truncated when older output was
    /// dropped or `max_bytes` cut some off.
    pub(crate) fn snapshot(&self, max_bytes: usize) -> LogSnapshot {
        let skip = match max_bytes {
            0 => 0,
            n => self.buf.len().saturating_sub(n),
        };
        LogSnapshot {
            data: self.buf.range(skip..).copied().collect(),
            truncated: self.dropped || skip > 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes_and_says_when_it_dropped_some() {
        let mut r = ByteRing::new(5);
        r.push(b"abc");
        assert_eq!(
            r.snapshot(0),
            LogSnapshot {
                data: b"abc".to_vec(),
                truncated: false
            }
        );
        assert_eq!(r.snapshot(2).data, b"bc");
        assert!(r.snapshot(2).truncated, "max_bytes cut it");
        r.push(b"defg");
        assert_eq!(r.contents(), b"cdefg");
        assert!(r.snapshot(0).truncated);
        r.push(b"0123456789");
        assert_eq!(r.contents(), b"56789");
    }

    #[test]
    fn a_zero_ring_keeps_nothing() {
        let mut r = ByteRing::new(0);
        r.push(b"x");
        assert!(r.contents().is_empty());
        assert!(r.snapshot(0).truncated);
    }
}
