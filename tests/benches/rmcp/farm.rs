//! The BMC farm: many SOL-capable RMCP+ BMCs in one process (this bench's),
//! one UDP socket each on 127.0.12.2 and up, for load tests only. Each is
//! porthole-rmcp's test BMC (`test_bmc::serve`) on a UDP socket: several
//! sessions (console-svc's SOL session and its ipmitool probe beside it),
//! Activate/Deactivate Payload, keystroke echo, and a
//! steady node output switched on and off from here. Correctness is proven
//! against ipmi_sim (the rig tests); the farm answers only what a console
//! needs and does not retransmit its output. Called by `main`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use porthole_rmcp::test_bmc::{self, BmcConfig, Control, Output};
use tokio::net::UdpSocket;

/// One farm BMC as a console sees it.
pub struct FarmBmc {
    pub addr: SocketAddr,
    pub ctl: Arc<Control>,
}

/// The farm's worker thread (its CPU is read by name).
pub const THREAD: &str = "bmc-farm";

/// The farm's BMCs on their own runtime (one worker thread), stopped on drop.
pub struct Farm {
    pub bmcs: Vec<FarmBmc>,
    /// Each BMC's steady output while it is on.
    pub output: Output,
    rt: Option<tokio::runtime::Runtime>,
}

/// Bind `addr`, retrying for 10 s while a farm dropped just before still
/// holds it (its runtime shuts down in the background).
fn bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::UdpSocket::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

impl Farm {
    /// `n` BMCs with cipher suite 3 and `password`, on ports
    /// `first..first + per_addr` of 127.0.12.2, then 127.0.12.3, ...
    pub fn start(
        n: usize,
        first: u16,
        per_addr: u16,
        password: &str,
        output: Output,
    ) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(THREAD)
            .enable_all()
            .build()?;
        let mut bmcs = Vec::with_capacity(n);
        for i in 0..n {
            let host = 2 + i / usize::from(per_addr);
            let host = u8::try_from(host).context("too many farm BMCs for 127.0.12.x")?;
            let port = first + (i % usize::from(per_addr)) as u16;
            let addr = SocketAddr::from((Ipv4Addr::new(127, 0, 12, host), port));
            let std_sock = bind(addr).with_context(|| format!("farm BMC {i}: binding {addr}"))?;
            std_sock.set_nonblocking(true)?;
            let ctl = Arc::new(Control::default());
            let cfg = BmcConfig {
                suite: 3,
                password: password.as_bytes().to_vec(),
                sol_port: port,
                output: Some(output),
            };
            let c = ctl.clone();
            rt.spawn(async move {
                match UdpSocket::from_std(std_sock) {
                    Ok(sock) => test_bmc::serve(sock, cfg, c).await,
                    Err(e) => eprintln!("farm BMC {addr}: {e}"),
                }
            });
            bmcs.push(FarmBmc { addr, ctl });
        }
        Ok(Self {
            bmcs,
            output,
            rt: Some(rt),
        })
    }

    /// SOL payloads active among the first `n` BMCs.
    pub fn active(&self, n: usize) -> usize {
        self.bmcs[..n]
            .iter()
            .filter(|b| *b.ctl.sol_active.lock().unwrap_or_else(|e| e.into_inner()))
            .count()
    }

    /// Switch steady output of the first `n` BMCs on or off.
    pub fn output(&self, n: usize, on: bool) {
        for b in &self.bmcs[..n] {
            b.ctl.output_on.send_replace(on);
        }
    }

    /// Switch steady output of the first `n` BMCs on, spread over one
    /// output period so that their packets do not all leave at once.
    pub async fn output_staggered(&self, n: usize) {
        let start = tokio::time::Instant::now();
        let per_ms = (n as u128 * 1000 / self.output.every.as_micros().max(1000)).max(1) as usize;
        for (k, chunk) in self.bmcs[..n].chunks(per_ms).enumerate() {
            tokio::time::sleep_until(start + Duration::from_millis(k as u64)).await;
            for b in chunk {
                b.ctl.output_on.send_replace(true);
            }
        }
    }

    /// Steady output bytes sent so far by the first `n` BMCs.
    pub fn output_bytes(&self, n: usize) -> u64 {
        self.bmcs[..n]
            .iter()
            .map(|b| b.ctl.output_bytes.load(Ordering::Relaxed))
            .sum()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
