//! SIGTERM and SIGINT turned into a `CancellationToken`: the one a service's
//! `run` watches to stop. The watching task ends at the first signal or
//! when the token is cancelled some other way, so nothing outlives the
//! service.
//!
//! Callers: the services' `main.rs`.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// A token cancelled by the first SIGTERM or SIGINT; `what` says in the
/// log what stopping means ("stopping every console"). Must be called
/// inside a tokio runtime.
pub fn on_signals(what: &'static str) -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let on_signal = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: {what}"),
            _ = int.recv() => tracing::info!("SIGINT: {what}"),
            _ = on_signal.cancelled() => return,
        }
        on_signal.cancel();
    });
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    #[expect(unsafe_code, reason = "libc::raise, to send this process SIGTERM")]
    async fn sigterm_cancels_the_token() {
        let token = on_signals("stopping the test").unwrap();
        assert!(!token.is_cancelled());
        // SAFETY: raise only sends a signal to this process; tokio's
        // handler (installed above) receives it instead of the default.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        tokio::time::timeout(Duration::from_secs(5), token.cancelled())
            .await
            .expect("cancelled by SIGTERM");
    }
}
