//! The plumbing of a service binary and its serve loop, the same in every
//! Porthole service: bind the listen port, turn SIGTERM/SIGINT into a
//! `CancellationToken` and hand both to the service's `run` ([`serve`],
//! [`bind_and_run`]); print a failure as one line and exit 1 ([`exit`]);
//! serve a gRPC router plaintext or over TLS ([`serve_grpc`]); and bound a
//! graceful stop by a grace period ([`until_grace`]).
//!
//! Callers: the services' `main.rs` (the first three) and `lib.rs`/`server.rs`
//! (the last two). What differs per service (flags, config, what `run`
//! starts) stays in the service's crate.

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Router, TcpIncoming};
use tracing::warn;

use crate::metrics::grpc::WithGrpcMetrics;
use crate::tls::TlsAcceptor;

/// Why a service binary could not start its service, or how it stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Runtime(std::io::Error),
    #[error("binding the {what} {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Signals(std::io::Error),
    #[error(transparent)]
    Run(Box<dyn Error + Send + Sync>),
}

/// What `main` returns: success, or `name: <error: cause: ...>` on stderr
/// (one line, never a backtrace) and exit code 1.
pub fn exit<E: AsRef<dyn Error + 'static>>(name: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            #[expect(clippy::print_stderr, reason = "a binary's last word before exit 1")]
            {
                eprintln!("{name}: {}", crate::report::error_line(err.as_ref()));
            }
            ExitCode::FAILURE
        }
    }
}

/// On a new multi-threaded runtime: [`bind_and_run`].
pub fn serve<E, Fut>(
    listen: SocketAddr,
    what: &'static str,
    stopping: &'static str,
    run: impl FnOnce(TcpListener, CancellationToken) -> Fut,
) -> Result<(), ServeError>
where
    Fut: Future<Output = Result<(), E>>,
    E: Error + Send + Sync + 'static,
{
    tokio::runtime::Runtime::new()
        .map_err(ServeError::Runtime)?
        .block_on(bind_and_run(listen, what, stopping, run))
}

/// Bind `listen` (called `what` in the error, e.g. "gRPC port"), turn
/// SIGTERM/SIGINT into a token (logging `stopping` when one comes) and run
/// `run` with both until it returns.
pub async fn bind_and_run<E, Fut>(
    listen: SocketAddr,
    what: &'static str,
    stopping: &'static str,
    run: impl FnOnce(TcpListener, CancellationToken) -> Fut,
) -> Result<(), ServeError>
where
    Fut: Future<Output = Result<(), E>>,
    E: Error + Send + Sync + 'static,
{
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            what,
            addr: listen,
            source,
        })?;
    let shutdown = crate::shutdown::on_signals(stopping).map_err(ServeError::Signals)?;
    run(listener, shutdown)
        .await
        .map_err(|e| ServeError::Run(Box::new(e)))
}

/// `serving` until it ends, or until `grace` after `shutdown` began: a
/// graceful stop waits for every client connection, and one whose peer
/// never answers the GOAWAY (or a stream that never ends) would otherwise
/// keep a stopped service up for ever. `Ok` when the grace ran out.
pub async fn until_grace<E>(
    serving: impl Future<Output = Result<(), E>>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Result<(), E> {
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = serving => served,
        () = grace_over => {
            warn!(?grace, "client connections still open after shutdown began; closing them");
            Ok(())
        }
    }
}

/// `router` on `listener` until `shutdown`: plaintext with `TCP_NODELAY`,
/// or TLS with each handshake on its own task within `handshake_timeout`
/// (a client that connects and stalls holds up no one else).
pub async fn serve_grpc(
    router: Router<WithGrpcMetrics>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    match acceptor {
        Some(acceptor) => {
            let incoming =
                crate::tls::incoming(listener, acceptor, handshake_timeout, shutdown.clone());
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
        }
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("refusing to start: {0}")]
    struct Refused(&'static str);

    #[tokio::test]
    async fn a_taken_port_is_named_in_one_line() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_and_run(addr, "gRPC port", "stopping", |_, _| async {
            Ok::<(), Refused>(())
        })
        .await
        .unwrap_err();
        let line = crate::report::error_line(&err);
        assert!(
            line.starts_with(&format!("binding the gRPC port {addr}: ")),
            "{line}"
        );
    }

    #[tokio::test]
    async fn the_service_error_is_passed_through_as_it_is() {
        let err = bind_and_run(
            "127.0.0.1:0".parse().unwrap(),
            "API port",
            "stopping",
            |listener, _| async move {
                assert!(listener.local_addr().unwrap().port() != 0);
                Err(Refused("no"))
            },
        )
        .await
        .unwrap_err();
        assert_eq!(crate::report::error_line(&err), "refusing to start: no");
    }

    #[tokio::test(start_paused = true)]
    async fn a_serve_loop_that_never_ends_is_cut_after_the_grace() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<Result<(), Refused>>();
        until_grace(never, &shutdown, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
