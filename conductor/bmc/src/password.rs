//! The password memfd: a BMC password in an anonymous, sealed memory file
//! that a child process reads as `/dev/fd/3` (ipmitool's `-f /dev/fd/3`),
//! so it never appears in argv, the environment or a file on disk.
//!
//! Callers: [`crate::ipmitool`] for every ipmitool it runs, and console-svc's
//! socat backend, which hands the fd to the ipmitool socat forks.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use tokio::process::Command;

use crate::Secret;

/// The fd number ipmitool reads its password from.
pub const PASSWORD_FD: RawFd = 3;

/// A password in an anonymous, sealed memory file. The child sees it as
/// `/dev/fd/3`; opening that path re-reads the file from the start, so a
/// socat that forks one ipmitool per connection can hand the same fd to each.
pub struct PasswordFd(OwnedFd);

impl PasswordFd {
    pub fn new(password: &Secret) -> io::Result<Self> {
        let fd = memfd_create(
            "porthole-bmc-password",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let mut file = std::fs::File::from(fd);
        file.write_all(password.expose().as_bytes())?;
        let fd = OwnedFd::from(file);
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        Ok(Self(fd))
    }

    /// Make the file the child's fd 3 (and only the child's: the original
    /// stays close-on-exec).
    #[expect(
        unsafe_code,
        reason = "Command::pre_exec runs code between fork and exec"
    )]
    pub fn attach(self, cmd: &mut Command) {
        let fd = self.0;
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and
        // exec, on an fd the closure owns.
        unsafe {
            cmd.pre_exec(move || {
                let raw = fd.as_raw_fd();
                if raw == PASSWORD_FD {
                    if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, PASSWORD_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[expect(unsafe_code, reason = "FromRawFd is an unsafe trait method")]
impl FromRawFd for PasswordFd {
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        // SAFETY: the caller guarantees `fd` is open and owned by nobody
        // else; ownership moves into the OwnedFd.
        Self(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_child_reads_the_password_from_fd_3_every_time() {
        // `cat /dev/fd/3` twice stands in for two ipmitool runs under one socat.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat /dev/fd/3; echo; cat /dev/fd/3"]);
        PasswordFd::new(&Secret::new("s3cret-pw"))
            .unwrap()
            .attach(&mut cmd);
        let out = cmd.output().await.unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "s3cret-pw\ns3cret-pw"
        );
    }

    #[test]
    fn the_file_is_sealed_against_writes() {
        let pw = PasswordFd::new(&Secret::new("x")).unwrap();
        let mut f = std::fs::File::from(pw.0);
        assert!(f.write_all(b"more").is_err());
    }
}
