//! Serial console benchmark against the real rig (`../shared/rig`): prints
//! figures, asserts nothing. `scripts/bench.sh` starts the rig, builds
//! console-svc in release and runs this as
//! `cargo bench -p porthole-tests --bench serial`.
//!
//! Everything runs in one process, one after the other, on one machine:
//!
//! 1. **Keystroke echo round trip.** The bench plays the node: it connects to
//!    the first BMC's `host_console` and writes back every byte it reads. As
//!    the viewer it sends one byte and waits until that byte comes back, for
//!    `PORTHOLE_BENCH_KEYSTROKES` bytes, through (a) console-svc's native
//!    backend, (b) its socat backend, (c) `ipmitool sol activate` run by the
//!    bench under a pty it opens itself (no bridge). Before measuring, each
//!    path gets a `\r` primer (the rig drops the first SOL packet of a new
//!    session) and is drained until quiet, so banners are not counted.
//! 2. **Enable latency.** From the `EnableConsole` call until the console's
//!    port is in LISTEN state in `/proc/net/tcp{,6}`. The listening socket
//!    is checked instead of connecting, because a connection to a socat
//!    console starts an ipmitool session. Measured twice per backend: first
//!    enables of fresh node ids (each disabled again, untimed) and
//!    disable+enable cycles of one node (nova's pattern; the disable is not
//!    timed).
//! 3. **Idle memory per console.** RSS and PSS (`/proc/PID/smaps_rollup`) of
//!    console-svc plus every descendant, with `PORTHOLE_BENCH_CONSOLES`
//!    enabled idle consoles minus a fresh service's baseline with none,
//!    divided by the number of consoles.
//!
//! Environment:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `PORTHOLE_BENCH_RIG_JSON` | (required) | the rig's `rig.json` |
//! | `PORTHOLE_BENCH_CONSOLE_SVC` | (required) | the `console-svc` binary |
//! | `PORTHOLE_BENCH_WORK_DIR` | `$TMPDIR/porthole-bench-<pid>` | logs, pid dirs, `pids` of started services |
//! | `PORTHOLE_BENCH_KEYSTROKES` | 200 | keystrokes per echo path |
//! | `PORTHOLE_BENCH_ENABLES` | 100 | enables per enable-latency series |
//! | `PORTHOLE_BENCH_CONSOLES` | 100 | idle consoles for the memory figure |
//! | `PORTHOLE_BENCH_PORT_BASE` | 27000 | gRPC on BASE (native), BASE+1 (socat); 250 console ports each from BASE+100, BASE+500 |
//!
//! The default ports (27000..27750) sit between the bench rig's layout
//! (26000..26603) and the test harness's port slots (28000..31999).
//!
//! Only 127.0.0.1 is used. Every wait is bounded, and every process the
//! bench starts is stopped by its pid (the services also by process group).
//! Figures go to stdout as markdown; progress goes to stderr.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use pb::console_service_client::ConsoleServiceClient;
use porthole_proto::console::v1 as pb;
use porthole_tests::procs::{self, Proc};
use porthole_tests::rig::{Bmc, HostPort, Rig};
use tonic::transport::Channel;

/// ipmitool `-C`: the rig's BMCs need it (no suite probing, which takes 10 s).
const CIPHER_SUITE: u32 = 3;
/// The longest one keystroke may take to come back before it counts as lost.
const KEY_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one keystroke series may take.
const ECHO_BUDGET: Duration = Duration::from_secs(90);
/// The longest a service may take to answer gRPC after it starts.
const SERVICE_START: Duration = Duration::from_secs(15);
/// The longest a service may take to stop after SIGTERM.
const SERVICE_STOP: Duration = Duration::from_secs(20);
/// The longest idle consoles may take to settle (BMC probes done).
const SETTLE_BUDGET: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Settings and the rig

struct Settings {
    rig: Rig,
    console_svc: PathBuf,
    work_dir: PathBuf,
    keystrokes: usize,
    enables: usize,
    consoles: usize,
    port_base: u16,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let rig_json = required_path("PORTHOLE_BENCH_RIG_JSON")?;
        let work_dir = std::env::var_os("PORTHOLE_BENCH_WORK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("porthole-bench-{}", std::process::id()))
            });
        fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        Ok(Self {
            rig: Rig::load(&rig_json)?,
            console_svc: required_path("PORTHOLE_BENCH_CONSOLE_SVC")?,
            work_dir,
            keystrokes: env_number("PORTHOLE_BENCH_KEYSTROKES", 200)?,
            enables: env_number("PORTHOLE_BENCH_ENABLES", 100)?,
            consoles: env_number("PORTHOLE_BENCH_CONSOLES", 100)?,
            port_base: env_number("PORTHOLE_BENCH_PORT_BASE", 27000)?,
        })
    }
}

fn required_path(name: &str) -> Result<PathBuf> {
    let path = PathBuf::from(
        std::env::var_os(name)
            .ok_or_else(|| anyhow!("{name} is not set (see scripts/bench.sh)"))?,
    );
    if !path.exists() {
        bail!("{name}: {} does not exist", path.display());
    }
    Ok(path)
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
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

// ---------------------------------------------------------------------------
// Figures

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// p50, p99, min, max of a series, as table cells.
fn latency_cells(samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return "- | - | - | -".into();
    }
    format!(
        "{} | {} | {} | {}",
        ms(percentile(&sorted, 50.0)),
        ms(percentile(&sorted, 99.0)),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1])
    )
}

// ---------------------------------------------------------------------------
// Byte streams with deadlines (TCP sockets and pty masters alike)

/// Wait until `fd` is readable or `timeout` passes; true when readable.
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
fn wait_for_byte(io: &mut (impl Read + AsFd), byte: u8, timeout: Duration) -> io::Result<bool> {
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
fn wait_for_text(io: &mut (impl Read + AsFd), needle: &[u8], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.windows(needle.len()).any(|w| w == needle) {
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
fn drain(io: &mut (impl Read + AsFd), quiet: Duration, limit: Duration) -> io::Result<()> {
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

// ---------------------------------------------------------------------------
// Keystroke echo

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
struct EchoResult {
    rtts: Vec<Duration>,
    lost: usize,
    /// Bytes the node side echoed during the timed keystrokes (should be
    /// one per keystroke: a byte that came back without passing the node
    /// would show here).
    node_bytes: usize,
    /// From `since` (before the connect, or before ipmitool's `sol
    /// deactivate` + `sol activate`) until the first echo.
    first_echo: Duration,
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
    fn start(bmc: &Bmc) -> Result<Self> {
        deactivate(bmc)?;
        let pty = nix::pty::openpty(None, None).context("openpty")?;
        let mut termios = nix::sys::termios::tcgetattr(&pty.slave)?;
        nix::sys::termios::cfmakeraw(&mut termios);
        nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &termios)?;
        set_cloexec(&pty.master)?;
        set_cloexec(&pty.slave)?;
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

/// Poll a child until it exits or `timeout` passes.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

// ---------------------------------------------------------------------------
// console-svc as a child process, and its gRPC API

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Native,
    Socat,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Socat => "socat",
        }
    }

    /// (gRPC port, first console port); each backend gets 250 console ports.
    fn ports(self, base: u16) -> (u16, u16) {
        match self {
            Self::Native => (base, base + 100),
            Self::Socat => (base + 1, base + 500),
        }
    }
}

/// One `console-svc serve`, stopped (by pid) when dropped.
struct Service {
    child: Child,
    client: ConsoleServiceClient<Channel>,
    rt: Arc<tokio::runtime::Runtime>,
    backend: Backend,
}

impl Service {
    fn start(
        s: &Settings,
        rt: &Arc<tokio::runtime::Runtime>,
        backend: Backend,
        label: &str,
    ) -> Result<Self> {
        let (grpc, first) = backend.ports(s.port_base);
        let dir = s.work_dir.join(format!("{}-{label}", backend.name()));
        fs::create_dir_all(&dir)?;
        let log = File::create(dir.join("console-svc.log"))?;
        let mut child = Command::new(&s.console_svc)
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--backend", backend.name()])
            .args(["--port-range", &format!("{first}:{}", first + 250)])
            .arg("--terminal-pid-dir")
            .arg(dir.join("pids"))
            .env("PORTHOLE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", s.console_svc.display()))?;
        record_pid(&s.work_dir, child.id())?;
        let url = format!("http://127.0.0.1:{grpc}");
        match wait_ready(&mut child, rt, &url) {
            Ok(client) => Ok(Self {
                child,
                client,
                rt: rt.clone(),
                backend,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e.context(format!("console-svc ({}) did not start", backend.name())))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn enable(&self, node: &str, bmc: &Bmc) -> Result<pb::Console> {
        let mut req = bmc.enable_request(node);
        if let Some(ipmi) = req.ipmi.as_mut() {
            ipmi.cipher_suite = Some(CIPHER_SUITE);
        }
        let mut client = self.client.clone();
        let reply = self
            .rt
            .block_on(client.enable_console(req))
            .with_context(|| format!("enabling {node}"))?;
        Ok(reply.into_inner())
    }

    fn disable(&self, node: &str) -> Result<()> {
        let req = pb::DisableConsoleRequest {
            node_id: node.to_owned(),
        };
        let mut client = self.client.clone();
        self.rt
            .block_on(client.disable_console(req))
            .with_context(|| format!("disabling {node}"))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<pb::Console>> {
        let mut client = self.client.clone();
        let reply = self
            .rt
            .block_on(client.list_consoles(pb::ListConsolesRequest {}))?;
        Ok(reply.into_inner().consoles)
    }

    /// SIGTERM (the service stops its consoles), then SIGKILL to its group
    /// and to any descendant left behind.
    fn stop(&mut self) {
        let pid = Pid::from_raw(self.pid() as i32);
        let children = procs::descendants(self.pid() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if wait_exit(&mut self.child, SERVICE_STOP).is_none() {
            eprintln!("console-svc {pid} did not stop within {SERVICE_STOP:?}; killing it");
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = self.child.wait();
        }
        let left: Vec<Proc> = children.into_iter().filter(Proc::alive).collect();
        for p in &left {
            eprintln!("killing leftover process {p} of console-svc");
        }
        procs::kill_groups(&left);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// Connect to a starting service's gRPC port, bounded by [`SERVICE_START`].
fn wait_ready(
    child: &mut Child,
    rt: &tokio::runtime::Runtime,
    url: &str,
) -> Result<ConsoleServiceClient<Channel>> {
    let end = Instant::now() + SERVICE_START;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("it exited: {status}");
        }
        if let Ok(c) = rt.block_on(ConsoleServiceClient::connect(url.to_owned())) {
            return Ok(c);
        }
        if Instant::now() > end {
            bail!("no answer on {url} within {SERVICE_START:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `<work_dir>/pids`: scripts/bench.sh stops whatever is listed and alive.
fn record_pid(work_dir: &Path, pid: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work_dir.join("pids"))?;
    writeln!(f, "{pid}")?;
    Ok(())
}

fn port_of(console: &pb::Console) -> Result<u16> {
    u16::try_from(console.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            anyhow!(
                "console {} has no port (state {})",
                console.node_id,
                console.state
            )
        })
}

// ---------------------------------------------------------------------------
// /proc: listening sockets, process trees, memory

/// Whether an IPv4 TCP socket is in LISTEN state on `port`.
fn is_listening(port: u16) -> io::Result<bool> {
    Ok(listening_ports_v4()?.contains(&port))
}

/// The ports of every listening IPv4 TCP socket, from the kernel's
/// sock_diag netlink interface (what `ss -ltn` asks). Reading
/// `/proc/net/tcp` takes about 2 ms on the bench machine (it walks every
/// socket hash bucket); this dump of listening sockets takes about 30 µs.
fn listening_ports_v4() -> io::Result<Vec<u16>> {
    use nix::libc as c;
    // SAFETY: socket(2) with constant arguments; the descriptor is owned
    // (and closed) by the File right below.
    let raw = unsafe {
        c::socket(
            c::AF_NETLINK,
            c::SOCK_DGRAM | c::SOCK_CLOEXEC,
            c::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let mut sock = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    sock.write_all(&sock_diag_request())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut ports = Vec::new();
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if parse_sock_diag(&buf[..n], &mut ports)? {
            return Ok(ports);
        }
    }
}

/// `SOCK_DIAG_BY_FAMILY` dump request: IPv4 TCP sockets in LISTEN state.
fn sock_diag_request() -> Vec<u8> {
    use nix::libc as c;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const TCP_LISTEN: u32 = 10;
    const LEN: u32 = 16 + 8 + 48; // nlmsghdr, inet_diag_req_v2 head, inet_diag_sockid
    let flags = (c::NLM_F_REQUEST | c::NLM_F_DUMP) as u16;
    let mut req = Vec::with_capacity(LEN as usize);
    req.extend_from_slice(&LEN.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&flags.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    req.extend_from_slice(&[c::AF_INET as u8, c::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]); // no socket id filter
    req
}

/// Add the source ports of one datagram's `inet_diag_msg`s to `ports`;
/// true once the dump is done.
fn parse_sock_diag(mut data: &[u8], ports: &mut Vec<u16>) -> io::Result<bool> {
    use nix::libc as c;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"));
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        let kind = i32::from(u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes")));
        if kind == c::NLMSG_DONE {
            return Ok(true);
        }
        if kind == c::NLMSG_ERROR {
            return Err(bad("the kernel answered with an error"));
        }
        if len < 16 + 8 || len > data.len() {
            return Err(bad("truncated message"));
        }
        // inet_diag_msg: family, state, timer, retrans, then id.idiag_sport (big-endian).
        ports.push(u16::from_be_bytes([data[20], data[21]]));
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    Ok(false)
}

/// Until `port` listens; `late` tells whether the first look missed it.
fn wait_listening(port: u16, timeout: Duration) -> Result<bool> {
    let end = Instant::now() + timeout;
    let mut late = false;
    while !is_listening(port)? {
        late = true;
        if Instant::now() > end {
            bail!("port {port} not listening within {timeout:?}");
        }
        thread::sleep(Duration::from_micros(200));
    }
    Ok(late)
}

/// `root` and every live process below it.
fn family(root: u32) -> Vec<Proc> {
    let root = root as i32;
    Proc::of(root)
        .into_iter()
        .chain(procs::descendants(root))
        .collect()
}

/// Whether `p` runs ipmitool (a BMC probe, a deactivate, a SOL session).
fn is_ipmitool(p: &Proc) -> bool {
    let program = p.what.split_whitespace().next().unwrap_or("");
    Path::new(program)
        .file_name()
        .is_some_and(|n| n == "ipmitool")
}

#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss_kib: u64,
    pss_kib: u64,
    processes: usize,
}

/// RSS and PSS summed over `root` and its descendants.
fn tree_memory(root: u32) -> Memory {
    let mut m = Memory::default();
    for p in family(root) {
        let Ok(text) = fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid)) else {
            continue;
        };
        m.rss_kib += smaps_field(&text, "Rss:");
        m.pss_kib += smaps_field(&text, "Pss:");
        m.processes += 1;
    }
    m
}

fn smaps_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The median (by PSS) of three samples, half a second apart.
fn sample_memory(root: u32) -> Memory {
    let mut samples: Vec<Memory> = (0..3)
        .map(|i| {
            if i > 0 {
                thread::sleep(Duration::from_millis(500));
            }
            tree_memory(root)
        })
        .collect();
    samples.sort_by_key(|m| m.pss_kib);
    samples[1]
}

// ---------------------------------------------------------------------------
// The three measurements

/// Keystrokes through a console-svc backend.
fn echo_via_service(svc: &Service, bmc: &Bmc, n: usize) -> Result<EchoResult> {
    let echo = NodeEcho::start(&bmc.host_console)?;
    let node = format!("bench-echo-{}", svc.backend.name());
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
fn echo_direct(bmc: &Bmc, n: usize) -> Result<EchoResult> {
    let echo = NodeEcho::start(&bmc.host_console)?;
    let since = Instant::now();
    let mut sol = DirectSol::start(bmc)?;
    let result = measure_keystrokes(&mut sol.master, &echo, n, since);
    sol.quit()?;
    result
}

/// Enable latencies: from the call until the port is in LISTEN state.
#[derive(Default)]
struct EnableResult {
    /// Until EnableConsole returned.
    rpc: Vec<Duration>,
    /// Until the port was seen listening (looked at once the reply is in).
    listening: Vec<Duration>,
    /// Replies after which the port was not listening yet.
    late: usize,
    /// Enables that failed (not in the figures), and the first error.
    failed: usize,
    first_error: Option<String>,
}

impl EnableResult {
    /// Count a failed enable; gives up once half of `n` failed.
    fn failure(&mut self, e: anyhow::Error, n: usize) -> Result<()> {
        self.failed += 1;
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
        if self.failed * 2 > n {
            bail!("{} of {n} enables failed; the first: {e:#}", self.failed);
        }
        Ok(())
    }
}

/// One timed enable; a failed one is counted, not timed.
fn timed_enable(
    svc: &Service,
    node: &str,
    bmc: &Bmc,
    out: &mut EnableResult,
    n: usize,
) -> Result<()> {
    let start = Instant::now();
    let console = match svc.enable(node, bmc) {
        Ok(c) => c,
        Err(e) => return out.failure(e, n),
    };
    out.rpc.push(start.elapsed());
    out.late += usize::from(wait_listening(port_of(&console)?, Duration::from_secs(10))?);
    out.listening.push(start.elapsed());
    Ok(())
}

/// First enables of fresh node ids, each disabled again (untimed).
fn enable_fresh(svc: &Service, bmcs: &[Bmc], n: usize) -> Result<EnableResult> {
    let mut out = EnableResult::default();
    for i in 0..n {
        let node = format!("bench-fresh-{i:03}");
        timed_enable(svc, &node, &bmcs[i % bmcs.len()], &mut out, n)?;
        svc.disable(&node)?;
    }
    Ok(out)
}

/// Disable (untimed) + enable (timed) of one node, `n` times.
fn enable_cycles(svc: &Service, bmc: &Bmc, n: usize) -> Result<EnableResult> {
    let node = "bench-cycle";
    let mut out = EnableResult::default();
    svc.enable(node, bmc)?;
    for _ in 0..n {
        svc.disable(node)?;
        timed_enable(svc, node, bmc, &mut out, n)?;
    }
    svc.disable(node)?;
    Ok(out)
}

struct MemoryResult {
    baseline: Memory,
    loaded: Memory,
    consoles: usize,
    settle: Duration,
}

/// Enable `n` idle consoles on a fresh service and compare with its baseline.
fn idle_memory(svc: &Service, bmcs: &[Bmc], n: usize) -> Result<MemoryResult> {
    thread::sleep(Duration::from_secs(1));
    let baseline = sample_memory(svc.pid());
    let nodes: Vec<String> = (0..n).map(|i| format!("bench-idle-{i:03}")).collect();
    for (i, node) in nodes.iter().enumerate() {
        svc.enable(node, &bmcs[i % bmcs.len()])?;
    }
    let settle = wait_settled(svc, n)?;
    thread::sleep(Duration::from_secs(1));
    let loaded = sample_memory(svc.pid());
    for node in &nodes {
        svc.disable(node)?;
    }
    Ok(MemoryResult {
        baseline,
        loaded,
        consoles: n,
        settle,
    })
}

/// Until all `n` consoles are RUNNING and no BMC probe (ipmitool) is left.
fn wait_settled(svc: &Service, n: usize) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let running = svc
            .list()?
            .iter()
            .filter(|c| c.state() == pb::ConsoleState::Running)
            .count();
        let probing = family(svc.pid()).iter().any(is_ipmitool);
        if running == n && !probing {
            return Ok(start.elapsed());
        }
        if start.elapsed() > SETTLE_BUDGET {
            bail!("{running}/{n} consoles running, probes still going, after {SETTLE_BUDGET:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// Running it all and printing the figures

#[derive(Default)]
struct Report {
    echo: Vec<(String, Result<EchoResult>)>,
    enable: Vec<(String, Result<EnableResult>)>,
    memory: Vec<(String, Result<MemoryResult>)>,
}

impl Report {
    fn failures(&self) -> usize {
        let e = self.echo.iter().filter(|r| r.1.is_err()).count();
        let n = self.enable.iter().filter(|r| r.1.is_err()).count();
        let m = self.memory.iter().filter(|r| r.1.is_err()).count();
        e + n + m
    }
}

fn run_backend(
    s: &Settings,
    rt: &Arc<tokio::runtime::Runtime>,
    backend: Backend,
    report: &mut Report,
) {
    let name = backend.name();
    let bmcs = &s.rig.bmcs;
    eprintln!("[{name}] idle memory with {} consoles", s.consoles);
    let memory = Service::start(s, rt, backend, "memory")
        .and_then(|svc| idle_memory(&svc, bmcs, s.consoles));
    report.memory.push((name.into(), memory));

    let mut svc = match Service::start(s, rt, backend, "latency") {
        Ok(svc) => svc,
        Err(e) => {
            let msg = format!("{e:#}");
            report
                .enable
                .push((format!("{name}, fresh node ids"), Err(anyhow!("{msg}"))));
            report
                .echo
                .push((format!("{name} backend"), Err(anyhow!("{msg}"))));
            return;
        }
    };
    eprintln!("[{name}] {} enables of fresh node ids", s.enables);
    report.enable.push((
        format!("{name}, fresh node ids"),
        enable_fresh(&svc, bmcs, s.enables),
    ));
    eprintln!("[{name}] {} disable+enable cycles", s.enables);
    report.enable.push((
        format!("{name}, disable+enable cycles"),
        enable_cycles(&svc, &bmcs[0], s.enables),
    ));
    eprintln!("[{name}] {} keystrokes", s.keystrokes);
    report.echo.push((
        format!("{name} backend"),
        echo_via_service(&svc, &bmcs[0], s.keystrokes),
    ));
    svc.stop();
}

fn print_echo(s: &Settings, rows: &[(String, Result<EchoResult>)]) {
    let b = &s.rig.bmcs[0];
    println!("## Keystroke echo round trip\n");
    println!(
        "{} keystrokes of 1 byte per path, one at a time, through {} (UDP {}); the bench plays the node on its \
         host_console (TCP {}) and writes back every byte. Round trip: from writing the byte until it is read back. \
         A keystroke not back within {} ms is lost. \"node bytes\": bytes the node side echoed during the timed \
         keystrokes. \"first echo\": from the viewer's connect (native, socat; the service activates SOL then) or \
         from starting `sol deactivate` + `sol activate` (bare ipmitool) until the first echoed byte, \
         `\\r` primer and its 300 ms drain included.\n",
        s.keystrokes,
        b.name,
        b.port,
        b.host_console.port,
        KEY_TIMEOUT.as_millis()
    );
    println!(
        "| path | echoed | lost | node bytes | p50 ms | p99 ms | min ms | max ms | first echo ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (label, r) in rows {
        match r {
            Ok(e) => println!(
                "| {label} | {} | {} | {} | {} | {} |",
                e.rtts.len(),
                e.lost,
                e.node_bytes,
                latency_cells(&e.rtts),
                ms(e.first_echo)
            ),
            Err(e) => println!("| {label} | failed: {e:#} | | | | | | | |"),
        }
    }
    println!();
}

fn print_enable(s: &Settings, rows: &[(String, Result<EnableResult>)]) {
    println!("## Enable latency\n");
    println!(
        "{} enables per row, one at a time. \"listening\": from the EnableConsole call until the port is in \
         LISTEN state, checked right after the reply through sock_diag netlink (as `ss -ltn`; about 30 µs a look), \
         polling every 0.2 ms if it is not yet; no connection is made (on socat one would start ipmitool). \
         \"rpc\": until EnableConsole returned. \"late\": replies after which the port was not listening yet. \
         Fresh node ids: each enable is a node's first, followed by an untimed disable. \
         Cycles: one node, untimed disable then timed enable (nova's reset pattern).\n",
        s.enables
    );
    println!(
        "| backend, series | n | listening p50 ms | listening p99 ms | min ms | max ms | rpc p50 ms | rpc p99 ms | late | failed |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (label, r) in rows {
        match r {
            Ok(e) => {
                let mut rpc = e.rpc.clone();
                rpc.sort();
                println!(
                    "| {label} | {} | {} | {} | {} | {} | {} |",
                    e.listening.len(),
                    latency_cells(&e.listening),
                    ms(percentile(&rpc, 50.0)),
                    ms(percentile(&rpc, 99.0)),
                    e.late,
                    e.failed
                );
            }
            Err(e) => println!("| {label} | failed: {e:#} | | | | | | | | |"),
        }
    }
    println!();
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|(label, r)| {
            let e = r.as_ref().ok()?;
            let why = e.first_error.as_ref()?;
            Some(format!(
                "- {label}: {} enable(s) failed; the first: {why}",
                e.failed
            ))
        })
        .collect();
    if !notes.is_empty() {
        println!("{}\n", notes.join("\n"));
    }
}

fn print_memory(rows: &[(String, Result<MemoryResult>)]) {
    println!("## Idle memory per enabled console\n");
    println!(
        "console-svc plus all its descendants, summed from /proc/PID/smaps_rollup (median of 3 samples); \
         baseline = the same fresh service with 0 consoles. Consoles are spread over the rig's BMCs; \
         measured once every console is RUNNING and its BMC probe has finished.\n"
    );
    println!("| backend | consoles | processes (base → loaded) | RSS KiB (base → loaded) | PSS KiB (base → loaded) | RSS KiB per console | PSS KiB per console |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (label, r) in rows {
        match r {
            Ok(m) => {
                let per = |a: u64, b: u64| (b as f64 - a as f64) / m.consoles as f64;
                println!(
                    "| {label} | {} | {} → {} | {} → {} | {} → {} | {:.1} | {:.1} |",
                    m.consoles,
                    m.baseline.processes,
                    m.loaded.processes,
                    m.baseline.rss_kib,
                    m.loaded.rss_kib,
                    m.baseline.pss_kib,
                    m.loaded.pss_kib,
                    per(m.baseline.rss_kib, m.loaded.rss_kib),
                    per(m.baseline.pss_kib, m.loaded.pss_kib)
                );
                eprintln!(
                    "[{label}] {} consoles settled in {:?}",
                    m.consoles, m.settle
                );
            }
            Err(e) => println!("| {label} | failed: {e:#} | | | | | |"),
        }
    }
    println!();
}

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("serial bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("serial bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut report = Report::default();
    run_backend(&settings, &rt, Backend::Native, &mut report);
    run_backend(&settings, &rt, Backend::Socat, &mut report);
    eprintln!("[direct] {} keystrokes", settings.keystrokes);
    report.echo.push((
        "ipmitool under the bench's pty (no bridge)".into(),
        echo_direct(&settings.rig.bmcs[0], settings.keystrokes),
    ));
    print_echo(&settings, &report.echo);
    print_enable(&settings, &report.enable);
    print_memory(&report.memory);
    println!("Bench wall time: {:.1} s.", started.elapsed().as_secs_f64());
    if report.failures() > 0 {
        eprintln!("serial bench: {} measurement(s) failed", report.failures());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
