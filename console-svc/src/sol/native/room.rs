//! Making room on a full console (part of the hub, `hub.rs`): idle
//! connections never lock a viewer out. Called by `Hub::on_join` before a
//! new viewer is added; `eviction_tests.rs` tests it.

use bytes::Bytes;
use tracing::info;

use super::super::viewer::{self, ViewerHandle};
use super::Hub;

impl Hub {
    /// Idle connections never lock a viewer out: when `peer`'s address
    /// already has `max_viewers_per_address` viewers, its longest-idle one
    /// makes room; when the console has `max_viewers`, the longest-idle of
    /// all does ("idle": nothing sent, since connecting for a viewer that
    /// never sent anything).
    pub(super) fn make_room_for(&mut self, peer: &str) {
        self.viewers.retain(|_, v| !v.is_gone());
        let host = viewer::peer_host(peer);
        let per_address = self.cfg.max_viewers_per_address;
        let same_host = self.viewers.values().filter(|v| v.host() == host).count();
        let (victim, why) = if per_address > 0 && same_host >= per_address {
            let victim = self.longest_idle(|v| v.host() == host);
            (victim, format!("{per_address} viewers from {host}"))
        } else if self.viewers.len() >= self.cfg.max_viewers.max(1) {
            let victim = self.longest_idle(|_| true);
            (victim, format!("{} viewers", self.cfg.max_viewers))
        } else {
            return;
        };
        let Some(id) = victim else { return };
        if let Some(v) = self.viewers.remove(&id) {
            info!(viewer = id, peer = %peer, limit = %why, "console full: the longest-idle viewer makes room for a new one");
            v.kick(Bytes::from(format!(
                "\r\n[porthole: disconnected: the console is full ({why}) and this connection had sent nothing for the longest]\r\n"
            )));
        }
    }

    fn longest_idle(&self, eligible: impl Fn(&ViewerHandle) -> bool) -> Option<u64> {
        self.viewers
            .iter()
            .filter(|(_, v)| eligible(v))
            .min_by_key(|(id, v)| (v.idle_since(), **id))
            .map(|(id, _)| *id)
    }
}
