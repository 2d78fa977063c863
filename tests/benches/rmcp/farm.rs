//! The BMC farm: many SOL-capable RMCP+ BMCs in one process (this bench's),
//! one UDP socket each on 127.0.22.x, for load tests only. Each is
//! porthole-rmcp's test BMC (`test_bmc::serve`) on a UDP socket: several
//! sessions (console-svc's SOL session and its ipmitool probe beside it),
//! Activate/Deactivate Payload, keystroke echo, and a
//! steady node output switched on and off from here. Correctness is proven
//! against ipmi_sim (the rig tests); the farm answers only what a console
//! needs and does not retransmit its output. Called by `main`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use porthole_rmcp::test_bmc::{self, BmcConfig, Control, Output};
use tokio::net::UdpSocket;

/// One farm BMC as a console sees it.
pub struct FarmBmc {
    pub addr: SocketAddr,
    pub ctl: Arc<Control>,
}

/// The farm's BMCs on their own runtime (one worker thread), stopped on drop.
pub struct Farm {
    pub bmcs: Vec<FarmBmc>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Farm {
    /// `n` BMCs with cipher suite 3 and `password`, on ports
    /// `first..first + per_addr` of 127.0.22.2, then 127.0.22.3, ...
    pub fn start(
        n: usize,
        first: u16,
        per_addr: u16,
        password: &str,
        output: Output,
    ) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bmc-farm")
            .enable_all()
            .build()?;
        let mut bmcs = Vec::with_capacity(n);
        for i in 0..n {
            let host = 2 + i / usize::from(per_addr);
            let host = u8::try_from(host).context("too many farm BMCs for 127.0.22.x")?;
            let port = first + (i % usize::from(per_addr)) as u16;
            let addr = SocketAddr::from((Ipv4Addr::new(127, 0, 22, host), port));
            let std_sock = std::net::UdpSocket::bind(addr)
                .with_context(|| format!("farm BMC {i}: binding {addr}"))?;
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
        Ok(Self { bmcs, rt: Some(rt) })
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
