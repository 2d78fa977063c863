//! Pseudo-terminals for `ipmitool sol activate` (native backend).
//!
//! ipmitool must run under a terminal in raw mode (`pty,raw,echo=0` in socat
//! terms): without one its messages are block-buffered, without raw mode early
//! keystrokes are echoed and CR becomes LF. [`spawn`] opens a pty, puts it in
//! raw mode, starts a command with the pty's slave as stdin/stdout/stderr and
//! as its controlling terminal (the child calls `setsid`, so it leads its own
//! session and process group), records it in the [`ProcessTable`], and hands
//! back the master as a [`PtyStream`] (tokio `AsyncRead + AsyncWrite`).
//!
//! Callers: `sol::native::launcher` (the real SOL launcher) and the socat
//! helper's input relay (`sol::socat_slot`: [`input_pair`], [`reopen_stdin`]).
//!
//! ```text
//!  spawn ──▶ PtyStream reads the child's output ──child exits, slave closed──▶ EIO = EOF
//!              └─ writes are the child's keystrokes
//! ```
//!
//! Every descriptor is opened close-on-exec, so a concurrent spawn elsewhere in
//! the process never inherits this pty (an inherited slave would hide EOF).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::process::Stdio;
use std::task::{ready, Context, Poll};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::stat::Mode;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::process::Command;

use crate::process::{ProcessTable, Supervised};

/// A fresh pty pair: the master (non-blocking) and the slave (raw mode).
struct PtyPair {
    master: OwnedFd,
    slave: OwnedFd,
}

fn open_pair() -> io::Result<PtyPair> {
    let master =
        posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave = open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut termios = tcgetattr(&slave)?;
    cfmakeraw(&mut termios);
    tcsetattr(&slave, SetArg::TCSANOW, &termios)?;
    Ok(PtyPair {
        master: master.into(),
        slave,
    })
}

/// A fresh raw-mode pty for a child's stdin only: the master as a
/// [`PtyStream`] (what is written is the child's input) and the slave to
/// hand to the child.
pub fn input_pair() -> io::Result<(PtyStream, OwnedFd)> {
    let pair = open_pair()?;
    Ok((PtyStream::new(pair.master)?, pair.slave))
}

/// This process's stdin (a terminal) opened again, non-blocking, as a
/// [`PtyStream`]: a new open file description, so the stdout that shares
/// the old one (and that children inherit) stays blocking.
pub fn reopen_stdin() -> io::Result<PtyStream> {
    let fd = open(
        "/proc/self/fd/0",
        OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )?;
    PtyStream::new(fd)
}

/// Start `cmd` under a new raw-mode pty and record it in `processes`.
///
/// `cmd` is consumed: it holds copies of the slave, and the parent must close
/// every copy for the master to report EOF when the child exits. The child
/// must not be configured with `process_group(0)`: it calls `setsid`, which
/// fails for a process group leader.
#[expect(
    unsafe_code,
    reason = "Command::pre_exec runs code between fork and exec"
)]
pub fn spawn(
    mut cmd: Command,
    processes: &ProcessTable,
    label: &str,
) -> io::Result<(Supervised, PtyStream)> {
    let pair = open_pair()?;
    cmd.stdin(Stdio::from(pair.slave.try_clone()?))
        .stdout(Stdio::from(pair.slave.try_clone()?))
        .stderr(Stdio::from(pair.slave));
    // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = processes.spawn(&mut cmd, label)?;
    drop(cmd);
    Ok((child, PtyStream::new(pair.master)?))
}

/// The master side of a pty: what the child prints is read here, what is
/// written here is the child's input. A read after the child (and everything
/// else holding the slave) has gone returns 0 (the kernel's EIO).
pub struct PtyStream {
    fd: AsyncFd<OwnedFd>,
}

impl PtyStream {
    #[expect(
        unsafe_code,
        reason = "AsyncFd::register: the descriptor must stay open while registered"
    )]
    fn new(master: OwnedFd) -> io::Result<Self> {
        // SAFETY: `master` is an open descriptor that the AsyncFd owns for
        // its whole life; nothing replaces or closes it meanwhile.
        let fd = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
        Ok(Self { fd })
    }
}

impl AsyncRead for PtyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let result =
                guard.try_io(
                    |fd| match nix::unistd::read(fd.get_ref().as_fd(), unfilled) {
                        Ok(n) => Ok(n),
                        // The slave's last holder closed it: end of stream.
                        Err(Errno::EIO) => Ok(0),
                        Err(e) => Err(io::Error::from(e)),
                    },
                );
            match result {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let result = guard.try_io(|fd| {
                nix::unistd::write(fd.get_ref().as_fd(), data).map_err(io::Error::from)
            });
            match result {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl std::fmt::Debug for PtyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PtyStream(fd {})", self.fd.get_ref().as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A process table in a scratch dir, removed when the guard drops.
    fn table(name: &str) -> (ProcessTable, tempfile::TempDir) {
        let dir = tempfile::Builder::new()
            .prefix(&format!("porthole-pty-{name}-"))
            .tempdir()
            .unwrap();
        let table = ProcessTable::open(dir.path(), Duration::from_secs(1)).unwrap();
        (table, dir)
    }

    async fn read_exactly(pty: &mut PtyStream, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), pty.read_exact(&mut out))
            .await
            .expect("pty output in time")
            .unwrap();
        out
    }

    #[tokio::test]
    async fn cat_echoes_bytes_eight_bit_clean_in_raw_mode() {
        let (t, _scratch) = table("cat");
        let (child, mut pty) = spawn(Command::new("cat"), &t, "cat").unwrap();
        // Raw mode: no echo, no ISIG for \x03, no VEOF for \x04, no CR/NL mapping.
        let data = b"hi\r\n\x00\x03\x04\x1b\xff~.\n".to_vec();
        pty.write_all(&data).await.unwrap();
        assert_eq!(read_exactly(&mut pty, data.len()).await, data);
        child.terminate().await;
    }

    #[tokio::test]
    async fn the_end_of_the_child_reads_as_eof() {
        let (t, _scratch) = table("eof");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf abc"]);
        let (mut child, mut pty) = spawn(cmd, &t, "sh").unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), pty.read_to_end(&mut out))
            .await
            .expect("EOF in time")
            .unwrap();
        assert_eq!(out, b"abc");
        assert!(child.wait().await.unwrap().success());
        child.terminate().await;
    }

    #[tokio::test]
    async fn the_child_leads_a_session_with_the_pty_as_controlling_terminal() {
        let (t, _scratch) = table("ctty");
        let mut cmd = Command::new("sh");
        // Opening /dev/tty only works with a controlling terminal.
        cmd.args([
            "-c",
            "exec 3</dev/tty && echo ctty-ok; cut -d' ' -f6 /proc/$$/stat",
        ]);
        let (child, mut pty) = spawn(cmd, &t, "sh").unwrap();
        let pid = child.pid();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), pty.read_to_end(&mut out))
            .await
            .expect("EOF in time")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("ctty-ok\n"), "{text:?}");
        assert_eq!(
            text.lines().nth(1),
            Some(pid.to_string().as_str()),
            "session id"
        );
        child.terminate().await;
    }
}
