//! Unit tests of the `sol-exec` helper's side of the activation gate:
//! a silent replica is a no within the bound, a missing gate is gone, and
//! the holder stops on a no and on a closed gate.

use super::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

fn gate_at(dir: &std::path::Path) -> GateRef {
    GateRef {
        socket: dir.join("g.sock"),
        node: "n1".into(),
        token: 3,
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("porthole-solexec-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A replica that accepts but never answers (paused): refused after
/// the bound, and the silent connection is dropped.
#[tokio::test]
async fn a_silent_replica_is_a_no_within_the_bound() {
    let dir = tempdir("silent");
    let gate = gate_at(&dir);
    let listener = UnixListener::bind(&gate.socket).unwrap();
    let _held = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    let mut client = None;
    let req = Request::Activate {
        node: "n1".into(),
        token: 3,
    };
    let asked = std::time::Instant::now();
    let r = ask(&mut client, &gate, &req).await;
    assert!(matches!(r, Err(AskError::Silent)), "{r:?}");
    let took = asked.elapsed();
    assert!(
        took >= ANSWER_WITHIN && took < ANSWER_WITHIN * 3,
        "{took:?}"
    );
    assert!(client.is_none(), "a silent connection is not reused");
    let _ = std::fs::remove_dir_all(dir);
}

/// No socket (the replica never started its gate, or is gone).
#[tokio::test]
async fn no_gate_is_gone() {
    let dir = tempdir("gone");
    let mut client = None;
    let req = Request::Hold {
        node: "n1".into(),
        token: 3,
    };
    let r = ask(&mut client, &gate_at(&dir), &req).await;
    assert!(matches!(r, Err(AskError::Gone(_))), "{r:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The holder turns a replica that closes the socket (it died) into a
/// stop, and a replica's "no" into a stop with its reason.
#[tokio::test]
async fn the_holder_stops_on_a_no_and_on_a_closed_gate() {
    let dir = tempdir("hold");
    let gate = gate_at(&dir);
    let listener = UnixListener::bind(&gate.socket).unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        lines.next_line().await.unwrap();
        w.write_all(b"ok 1000\n").await.unwrap();
        lines.next_line().await.unwrap();
        w.write_all(b"no lease lost\n").await.unwrap();
        // A second connection, closed at once: the replica died.
        let (s, _) = listener.accept().await.unwrap();
        drop(s);
    });
    let (tx, mut rx) = watch::channel(Verdict::Until(None));
    tokio::spawn(hold(None, gate.clone(), tx));
    rx.wait_for(|v| matches!(v, Verdict::Until(Some(_))))
        .await
        .unwrap();
    let v = rx
        .wait_for(|v| matches!(v, Verdict::Stop(_)))
        .await
        .unwrap()
        .clone();
    assert_eq!(v, Verdict::Stop("lease lost".into()));

    let (tx, mut rx) = watch::channel(Verdict::Until(None));
    tokio::spawn(hold(None, gate, tx));
    let v = rx
        .wait_for(|v| matches!(v, Verdict::Stop(_)))
        .await
        .unwrap()
        .clone();
    assert!(
        matches!(v, Verdict::Stop(ref w) if w.contains("gone")),
        "{v:?}"
    );
    server.await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
