//! Keystroke echo round trips: the bench plays the node on a BMC's
//! `host_console` ([`NodeEcho`]) and the viewer on the other end, one byte
//! at a time. The viewer end is a console-svc console
//! ([`echo_via_service`], called by `main::run_backend` per backend) or
//! `ipmitool sol activate` under a pty the bench opens itself, with no
//! bridge ([`echo_direct`], called by `main`). `report` prints the
//! [`EchoResult`]s.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use porthole_tests::rig::{Bmc, HostPort};

use crate::service::{port_of, wait_exit, Service};
use crate::stream::{drain, wait_for_byte, wait_for_text};
use crate::CIPHER_SUITE;

/// The longest one keystroke may take to come back before it counts as lost.
pub const KEY_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one keystroke series may take.
const ECHO_BUDGET: Duration = Duration::from_secs(90);

/// The node's OS: writes back every byte it reads on `host_console`.
struct NodeEcho {
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
    /// Bytes written back so far.
    echoed: Arc<AtomicUsize>,
}

impl NodeEcho {
    fn start(console: &HostPort) -> Result<Self> {
        let stream =
            TcpStream::connect((console.host.as_str(), console.port)).with_context(|| {
                format!(
                    "connecting to host_console {}:{}",
                    console.host, console.port
                )
            })?;
        stream.set_nodelay(true)?;
        let mut reader = stream.try_clone()?;
        let mut writer = stream.try_clone()?;
        let echoed = Arc::new(AtomicUsize::new(0));
        let count = echoed.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || writer.write_all(&buf[..n]).is_err() {
                    break;
                }
                count.fetch_add(n, Ordering::SeqCst);
            }
        });
        Ok(Self {
            stream,
            thread: Some(thread),
            echoed,
        })
    }

    fn echoed(&self) -> usize {
        self.echoed.load(Ordering::SeqCst)
    }
}

impl Drop for NodeEcho {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One keystroke series.
pub struct EchoResult {
    pub rtts: Vec<Duration>,
    pub lost: usize,
    /// Bytes the node side echoed during the timed keystrokes (should be
    /// one per keystroke: a byte that came back without passing the node
    /// would show here).
    pub node_bytes: usize,
    /// From `since` (before the connect, or before ipmitool's `sol
    /// deactivate` + `sol activate`) until the first echo.
    pub first_echo: Duration,
}

/// Keystrokes through a console-svc backend.
pub fn echo_via_service(svc: &Service, bmc: &Bmc, n: usize) -> Result<EchoResult> {
    let echo = NodeEcho::start(&bmc.host_console)?;
    let node = format!("bench-echo-{}", svc.backend.as_str());
    let port = port_of(&svc.enable(&node, bmc)?)?;
    let result = (|| {
        let since = Instant::now();
        let mut viewer = TcpStream::connect(("127.0.0.1", port))?;
        viewer.set_nodelay(true)?;
        measure_keystrokes(&mut viewer, &echo, n, since)
    })();
    svc.disable(&node)?;
    result
}

/// Keystrokes straight through ipmitool under the bench's own pty.
pub fn echo_direct(bmc: &Bmc, n: usize) -> Result<EchoResult> {
    let echo = NodeEcho::start(&bmc.host_console)?;
    let since = Instant::now();
    let mut sol = DirectSol::start(bmc)?;
    let result = measure_keystrokes(&mut sol.master, &echo, n, since);
    sol.quit()?;
    result
}

/// Get the path to echo: `\r` primer, drain, then a `#` that must come back.
fn warm_up(io: &mut (impl Read + Write + AsFd)) -> Result<()> {
    let start = Instant::now();
    for _ in 0..20 {
        io.write_all(b"\r")?;
        drain(io, Duration::from_millis(300), Duration::from_secs(2))?;
        io.write_all(b"#")?;
        if wait_for_byte(io, b'#', Duration::from_secs(1))? {
            return Ok(());
        }
    }
    bail!("no echo after {:?} of primers", start.elapsed())
}

/// Warm up, then send `n` single bytes, each after the previous came back.
fn measure_keystrokes(
    io: &mut (impl Read + Write + AsFd),
    node: &NodeEcho,
    n: usize,
    since: Instant,
) -> Result<EchoResult> {
    warm_up(io)?;
    let first_echo = since.elapsed();
    drain(io, Duration::from_millis(300), Duration::from_secs(3))?;
    let node_before = node.echoed();
    let budget = Instant::now() + ECHO_BUDGET;
    let mut rtts = Vec::with_capacity(n);
    let mut lost = 0;
    for i in 0..n {
        if Instant::now() > budget {
            lost += n - i;
            break;
        }
        let key = b'a' + (i % 26) as u8;
        let sent = Instant::now();
        io.write_all(&[key])?;
        if wait_for_byte(io, key, KEY_TIMEOUT)? {
            rtts.push(sent.elapsed());
        } else {
            lost += 1;
        }
    }
    Ok(EchoResult {
        rtts,
        lost,
        node_bytes: node.echoed() - node_before,
        first_echo,
    })
}

/// `ipmitool sol activate` under a pty the bench opens: no bridge at all.
struct DirectSol {
    bmc: Bmc,
    child: Child,
    master: File,
}

impl DirectSol {
    #[expect(
        unsafe_code,
        reason = "Command::pre_exec runs code between fork and exec"
    )]
    fn start(bmc: &Bmc) -> Result<Self> {
        deactivate(bmc)?;
        let pty = raw_pty()?;
        let mut cmd = Command::new("ipmitool");
        cmd.args(ipmitool_args(bmc, &["sol", "activate"]))
            .stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting ipmitool sol activate")?;
        drop(cmd); // the parent's copies of the slave
        let mut sol = Self {
            bmc: bmc.clone(),
            child,
            master: File::from(pty.master),
        };
        wait_for_text(
            &mut sol.master,
            b"SOL Session operational",
            Duration::from_secs(15),
        )?;
        Ok(sol)
    }

    /// `~.` quits and deactivates; a stuck ipmitool is killed and the
    /// payload freed with `sol deactivate`.
    fn quit(mut self) -> Result<()> {
        let _ = self.master.write_all(b"\r~.");
        let pid = self.child.id();
        if wait_exit(&mut self.child, Duration::from_secs(3)).is_none() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        deactivate(&self.bmc)
    }
}

impl Drop for DirectSol {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A pty in raw mode, both ends close-on-exec.
fn raw_pty() -> Result<nix::pty::OpenptyResult> {
    let pty = nix::pty::openpty(None, None).context("openpty")?;
    let mut termios = nix::sys::termios::tcgetattr(&pty.slave)?;
    nix::sys::termios::cfmakeraw(&mut termios);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &termios)?;
    set_cloexec(&pty.master)?;
    set_cloexec(&pty.slave)?;
    Ok(pty)
}

fn set_cloexec(fd: &OwnedFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// `ipmitool ... sol deactivate`, bounded; "already de-activated" is fine.
fn deactivate(bmc: &Bmc) -> Result<()> {
    let mut child = Command::new("ipmitool")
        .args(ipmitool_args(bmc, &["sol", "deactivate"]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ipmitool sol deactivate")?;
    if wait_exit(&mut child, Duration::from_secs(15)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("ipmitool sol deactivate on {} took over 15 s", bmc.name);
    }
    Ok(())
}

/// ipmitool's arguments for `command` on `bmc`; the password comes from `-f`.
fn ipmitool_args(bmc: &Bmc, command: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-I".into(),
        "lanplus".into(),
        "-C".into(),
        CIPHER_SUITE.to_string(),
    ];
    args.extend([
        "-H".into(),
        bmc.host.clone(),
        "-p".into(),
        bmc.port.to_string(),
    ]);
    args.extend(["-U".into(), bmc.username.clone(), "-f".into()]);
    args.push(bmc.password_file.to_string_lossy().into_owned());
    args.extend(command.iter().map(|s| s.to_string()));
    args
}
