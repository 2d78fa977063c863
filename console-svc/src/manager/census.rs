//! The manager's answer to `porthole_console_consoles{kind,state}`: every
//! slot's kind and state, read at scrape time (see [`crate::metrics`]).

use super::{ConsoleState, Inner};
use crate::metrics::Census;
use crate::spec::ConsoleKind;

impl Census for Inner {
    fn census(&self) -> Vec<(&'static str, &'static str)> {
        let slots: Vec<_> = self
            .slots
            .lock()
            .expect("slots")
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .map(|slot| {
                let st = slot.state.lock().expect("slot lock");
                (kind_label(st.info.kind), state_label(st.info.state))
            })
            .collect()
    }
}

pub(super) fn kind_label(kind: ConsoleKind) -> &'static str {
    match kind {
        ConsoleKind::Serial => "serial",
        ConsoleKind::Vnc => "vnc",
    }
}

fn state_label(state: ConsoleState) -> &'static str {
    match state {
        ConsoleState::Starting => "starting",
        ConsoleState::Running => "running",
        ConsoleState::Failed => "failed",
        ConsoleState::Disabled => "disabled",
    }
}
