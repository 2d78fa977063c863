//! What the rig tests share: the UDP transport their sessions run over,
//! as console-svc's `[rmcp] udp` picks it. `PORTHOLE_TEST_RMCP_UDP` =
//! `shared` (the default) or `per-console` (a connected socket each).

use porthole_rmcp::udp::{UdpMode, UdpPool};

pub fn pool() -> UdpPool {
    let mode = match std::env::var("PORTHOLE_TEST_RMCP_UDP").as_deref() {
        Ok("per-console") => UdpMode::PerSession,
        Ok("shared") | Err(_) => UdpMode::Shared,
        Ok(other) => panic!("PORTHOLE_TEST_RMCP_UDP={other}: shared or per-console"),
    };
    UdpPool::new(mode)
}
