//! The `done` notice the deploy ramdisk waits for once its disk has been
//! written (Ironic's iscsi deploy `notify`): a TCP connection to the
//! ramdisk's port (10000) carrying `done`, then closed.
//!
//! Callers: [`super`] (ContinueDeploy).

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
#[error("cannot notify the deploy ramdisk at {at}: {reason}")]
pub struct NotifyError {
    pub at: String,
    pub reason: String,
}

/// Write `done` and shut the stream down.
pub async fn send_done<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    w.write_all(b"done").await?;
    w.flush().await?;
    w.shutdown().await
}

/// Connect to `host:port` and send `done`, all within `limit`.
pub async fn notify(host: &str, port: u16, limit: Duration) -> Result<(), NotifyError> {
    let at = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let err = |reason: String| NotifyError {
        at: at.clone(),
        reason,
    };
    let run = async {
        let mut s = tokio::net::TcpStream::connect(&at).await?;
        send_done(&mut s).await
    };
    match tokio::time::timeout(limit, run).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err(format!("no connection within {limit:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn the_ramdisk_reads_done_then_the_end_of_the_stream() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let read = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        notify("127.0.0.1", port, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(read.await.unwrap(), b"done");
    }

    #[tokio::test]
    async fn nobody_listening_is_an_error_naming_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let err = notify("127.0.0.1", port, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "cannot notify the deploy ramdisk at 127.0.0.1:{port}: "
            )),
            "{err}"
        );
    }
}
