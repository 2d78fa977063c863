//! A Service's cluster IP as kube-proxy gives it: a listener per Service
//! port on the rehearsal's address for the Service; each connection goes to
//! one ready endpoint (round robin over the selected pods whose readiness
//! probe passes, terminating ones excluded) and stays with it until either
//! side closes. Started by [`super::cluster`], stopped by its token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::pod::Status;

/// One pod behind a Service port.
#[derive(Clone)]
pub struct Endpoint {
    pub pod: String,
    pub addr: String,
    pub status: Arc<Mutex<Status>>,
}

impl Endpoint {
    fn ready(&self) -> bool {
        let s = self.status.lock().expect("status");
        s.ready && !s.terminating && s.exited.is_none()
    }
}

/// Serve `listen` until `cancel`, forwarding to `endpoints`.
pub async fn serve(
    listen: String,
    endpoints: Vec<Endpoint>,
    cancel: CancellationToken,
) -> Result<()> {
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("Service address {listen}"))?;
    let next = Arc::new(AtomicUsize::new(0));
    let endpoints = Arc::new(endpoints);
    tokio::spawn(async move {
        loop {
            let (mut client, _) = tokio::select! {
                r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                _ = cancel.cancelled() => return,
            };
            let _ = client.set_nodelay(true);
            let ready: Vec<Endpoint> = endpoints.iter().filter(|e| e.ready()).cloned().collect();
            if ready.is_empty() {
                // No endpoints: kube-proxy rejects the connection.
                continue;
            }
            let e = ready[next.fetch_add(1, Ordering::Relaxed) % ready.len()].clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(&e.addr).await else {
                    return;
                };
                let _ = upstream.set_nodelay(true);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    _ = cancel.cancelled() => {}
                }
            });
        }
    });
    Ok(())
}
