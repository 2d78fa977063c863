//! Byte streams with deadlines, for TCP sockets and pty masters alike:
//! bounded waits for a byte or a text, and draining until quiet. Owns no
//! state; `echo` reads viewers and the bare ipmitool pty through these.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use porthole_tests::wire::find;

/// Wait until `fd` is readable or `timeout` passes; true when readable.
#[expect(unsafe_code, reason = "poll(2) on one descriptor")]
fn wait_readable(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = nix::libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: nix::libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { nix::libc::poll(&mut pfd, 1, ms) };
    match n {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Read what is there before `deadline`: `None` on timeout, `Some(0)` on EOF.
fn read_until(
    io: &mut (impl Read + AsFd),
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<Option<usize>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() || !wait_readable(io, left)? {
        return Ok(None);
    }
    match io.read(buf) {
        Ok(n) => Ok(Some(n)),
        // A pty master reports the slave's last close as EIO.
        Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => Ok(Some(0)),
        Err(e) => Err(e),
    }
}

/// Wait for `byte`, skipping everything else; false on timeout.
pub fn wait_for_byte(io: &mut (impl Read + AsFd), byte: u8, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    loop {
        match read_until(io, &mut buf, deadline)? {
            None => return Ok(false),
            Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(n) if buf[..n].contains(&byte) => return Ok(true),
            Some(_) => {}
        }
    }
}

/// Wait for `needle` in the stream; what came before it is returned on
/// timeout or EOF, as the error.
pub fn wait_for_text(io: &mut (impl Read + AsFd), needle: &[u8], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while find(&seen, needle).is_none() {
        match read_until(io, &mut buf, deadline)? {
            Some(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => bail!(
                "no {:?} within {timeout:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    Ok(())
}

/// Read and drop until nothing arrives for `quiet` (at most `limit`).
pub fn drain(io: &mut (impl Read + AsFd), quiet: Duration, limit: Duration) -> io::Result<()> {
    let end = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match read_until(io, &mut buf, (Instant::now() + quiet).min(end))? {
            None => return Ok(()),
            Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(_) => {}
        }
    }
    Ok(())
}
