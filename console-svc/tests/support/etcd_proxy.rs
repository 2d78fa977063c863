//! A TCP relay to etcd that a test can cut (every open connection dropped,
//! new ones refused) and restore. Included by tests with `#[path]`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

/// A TCP relay to etcd that the test can cut and restore.
pub struct Proxy {
    pub addr: String,
    open: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (o, c) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let (up, c) = (upstream.clone(), c.clone());
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(up).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = c.notified() => {}
                    }
                });
            }
        });
        Self { addr, open, cut }
    }

    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
        if !open {
            self.cut.notify_waiters();
        }
    }
}
