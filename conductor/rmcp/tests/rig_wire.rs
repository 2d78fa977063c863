//! Wire-level interop: our RMCP+ packets, captured between us and the rig's
//! `ipmi_sim` by a relay in this test, written as a pcap and decoded by
//! Wireshark's IPMI/RMCP dissector (`tshark`, from Debian; installed by
//! scripts/setup.sh). Suite 3 shows the handshake (RAKP 1-4 in clear) and
//! encrypted session packets; suite 1 (no confidentiality) lets tshark
//! decode the SOL payloads themselves. Skips with a notice without the rig.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use porthole_rmcp::session::cmd;
use porthole_rmcp::{Session, SessionConfig, Sol, SolConfig};
use porthole_tests::node_side;
use porthole_tests::rig::{Bmc, Rig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// (to the BMC?, datagram)
type Log = Arc<Mutex<Vec<(bool, Vec<u8>)>>>;

/// A UDP relay to `bmc` that records every datagram; returns its address.
async fn relay(bmc: SocketAddr, log: Log) -> Result<SocketAddr> {
    let front = UdpSocket::bind("127.0.0.1:0").await?;
    let back = UdpSocket::bind("127.0.0.1:0").await?;
    back.connect(bmc).await?;
    let addr = front.local_addr()?;
    tokio::spawn(async move {
        let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
        let mut client = None;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut a) => {
                    client = Some(from);
                    log.lock().unwrap().push((true, a[..n].to_vec()));
                    let _ = back.send(&a[..n]).await;
                }
                Ok(n) = back.recv(&mut b) => {
                    log.lock().unwrap().push((false, b[..n].to_vec()));
                    if let Some(c) = client {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
            }
        }
    });
    Ok(addr)
}

/// A pcap (raw IPv4) of the datagrams, console 127.0.0.2:50000 <-> BMC 127.0.0.1:623.
fn write_pcap(path: &Path, log: &[(bool, Vec<u8>)]) -> Result<()> {
    let mut out = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 101] {
        if v == 0x0004_0002 {
            out.extend_from_slice(&2u16.to_le_bytes());
            out.extend_from_slice(&4u16.to_le_bytes());
        } else {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    for (i, (to_bmc, d)) in log.iter().enumerate() {
        let (src, dst, sport, dport) = if *to_bmc {
            ([127, 0, 0, 2], [127, 0, 0, 1], 50000u16, 623u16)
        } else {
            ([127, 0, 0, 1], [127, 0, 0, 2], 623, 50000)
        };
        let total = 20 + 8 + d.len();
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let sum = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut udp = Vec::new();
        udp.extend_from_slice(&sport.to_be_bytes());
        udp.extend_from_slice(&dport.to_be_bytes());
        udp.extend_from_slice(&((8 + d.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        for v in [i as u32, 0, total as u32, total as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&ip);
        out.extend_from_slice(&udp);
        out.extend_from_slice(d);
    }
    std::fs::write(path, out).context("writing the pcap")
}

fn tshark(args: &[&str]) -> Option<String> {
    let out = Command::new("tshark").args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

async fn sol_exchange(bmc: &Bmc, addr: SocketAddr, suite: u8) -> Result<()> {
    let mut node = node_side(bmc).await?;
    let mut cfg = SessionConfig::new(&bmc.username, bmc.password.as_bytes());
    cfg.cipher_suite = suite;
    let mut session = Session::open(support::pool().open(addr).await?, &cfg).await?;
    session
        .request(cmd::NETFN_APP, cmd::GET_DEVICE_ID, &[])
        .await?;
    let sol = Sol::activate(session, SolConfig::default()).await?;
    let (mut io, mut theirs) = tokio::io::duplex(4096);
    let brk = sol.break_sender();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let task = tokio::spawn(async move { sol.run(&mut theirs, stop).await });
    io.write_all(b"typed").await?;
    node.send(b"printed").await?;
    let mut got = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut got))
        .await?
        .context("SOL ended")?;
    anyhow::ensure!(&got == b"printed", "SOL output {got:?}");
    brk.send_break();
    // Bytes after the break reach the node too. (They also wake the rig
    // bridge's socat, which a break on its pty leaves blocked in read();
    // ended then, it would keep the line and take the next test's bytes.)
    io.write_all(b"after-break").await?;
    node.expect(b"after-break", Duration::from_secs(10)).await?;
    cancel.cancel();
    task.await??;
    Ok(())
}

#[tokio::test]
async fn tshark_decodes_our_handshake_session_and_sol_packets() -> Result<()> {
    let Some(rig) = Rig::from_env()? else {
        return Ok(());
    };
    if tshark(&["--version"]).is_none() {
        eprintln!("notice: tshark is not installed (scripts/setup.sh installs it); skipping");
        anyhow::ensure!(
            std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
            "tshark is missing and PORTHOLE_REQUIRE_PEERS is set"
        );
        return Ok(());
    }
    let lease = rig.lease_bmcs(1).await?;
    let bmc = &lease[0];
    let log: Log = Arc::default();
    let addr = relay(format!("{}:{}", bmc.host, bmc.port).parse()?, log.clone()).await?;
    sol_exchange(bmc, addr, 3).await?;
    sol_exchange(bmc, addr, 1).await?;
    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("rmcp.pcap");
    write_pcap(&pcap, &log.lock().unwrap())?;
    if let Some(keep) = std::env::var_os("PORTHOLE_RMCP_PCAP") {
        std::fs::copy(&pcap, keep)?; // for a look with wireshark
    }
    let pcap = pcap.to_str().context("path")?;
    let text = tshark(&["-r", pcap, "-V"]).context("tshark")?;
    std::fs::write(dir.path().join("decoded.txt"), &text)?;
    let frames = log.lock().unwrap().len();
    let summary = tshark(&["-r", pcap]).context("tshark")?;
    eprintln!("{frames} datagrams; tshark's summary:\n{summary}");
    anyhow::ensure!(
        !text.contains("Malformed"),
        "tshark: malformed packets:\n{text}"
    );
    anyhow::ensure!(
        !text.contains("[Expert Info (Error"),
        "tshark: errors:\n{text}"
    );
    // tshark 4.0 parses the session wrapper (type, flags, session id,
    // sequence, length) and IPMI messages; RAKP and SOL bodies it shows as data.
    for needed in [
        "RAKP Message 1 (0x12), not encrypted, not authenticated",
        "RAKP Message 2 (0x13)",
        "RAKP Message 3 (0x14), not encrypted, not authenticated",
        "RAKP Message 4 (0x15)",
        "RMCP+ Open Session Request (0x10)",
        "RMCP+ Open Session Response (0x11)",
        // suite 3: every session packet protected, ours and the BMC's
        "IPMI Message (0x00), encrypted, authenticated",
        "SOL (serial over LAN) (0x01), encrypted, authenticated",
        // suite 1: in clear
        "SOL (serial over LAN) (0x01), not encrypted, not authenticated",
    ] {
        anyhow::ensure!(
            text.contains(needed),
            "tshark shows no {needed:?}:\n{summary}"
        );
    }
    let plain_ipmi = text.matches("IPMI Message (0x00), not encrypted").count();
    anyhow::ensure!(plain_ipmi >= 6, "suite 1's IPMI messages: {plain_ipmi}");
    Ok(())
}
