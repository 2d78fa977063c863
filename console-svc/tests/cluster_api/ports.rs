//! Cluster mode (etcd) console ports that another program holds on the
//! owner's address: a port the service chose moves to the next free one, as
//! Ironic's `acquire_port` does; a node's kept port that is busy fails and
//! says so.
//!
//! ```text
//!  owner's address: range.start ◀─ a listener of another program
//!                   range.start+1 ◀─ a client connection in TIME_WAIT
//!  Enable (through the other replica, so the writer is not the owner)
//!    ─▶ served on range.start+2; nothing reserved for the busy ports
//!  disable, a listener on that port on every replica's address,
//!  Enable again ─▶ not served (DEADLINE_EXCEEDED saying the port is in use),
//!  the port still the node's
//! ```

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use console_svc::cluster::placement::rank;
use tokio::net::TcpSocket;

use crate::replicas::{enable_request, Cluster};
use crate::support::{options, rig};

const NODE: &str = "capi-busy-port";

#[tokio::test]
async fn a_chosen_port_busy_on_the_owner_moves_on_a_kept_one_fails() {
    let Some(rig) = rig() else { return };
    let _bmc = rig.lease_bmc(2).await;
    let cluster = Cluster::start(&rig, "ports", &options(), 2);
    let owner = if rank(NODE, ["replica-0", "replica-1"])[0] == "replica-0" {
        0
    } else {
        1
    };
    let writer = 1 - owner;
    let ip: IpAddr = cluster.replicas[owner].ip.parse().unwrap();
    let first = cluster.ports.start;
    let _listener = TcpListener::bind((ip, first)).expect("the first port is free");
    time_wait_on(ip, first + 1).await;

    let mut c = cluster.client(writer).await;
    let con = c
        .enable_console(enable_request(&rig, 2, NODE))
        .await
        .expect("a fresh choice skips the busy ports")
        .into_inner();
    assert_eq!(con.port, u32::from(first + 2), "{con:?}");
    assert_eq!(con.owner, format!("replica-{owner}"), "the best placed");
    std::net::TcpStream::connect((ip, first + 2)).expect("served on the port it moved to");
    for busy in [first, first + 1] {
        assert_eq!(
            cluster.etcd_get(&format!("ports/{busy}")),
            None,
            "nothing reserved on busy port {busy}"
        );
    }
    assert_eq!(
        cluster.etcd_get(&format!("ports/{}", first + 2)).as_deref(),
        Some(NODE)
    );

    // Its port is kept now: busy, it is not moved, and the error says why
    // (held on every replica's address: held on the owner's only, the
    // next replica serves it on its own address, same port).
    c.disable_console(porthole_proto::console::v1::DisableConsoleRequest {
        node_id: NODE.into(),
    })
    .await
    .expect("disable");
    let kept = first + 2;
    let _holder = bind_when_free(ip, kept).await;
    let other: IpAddr = cluster.replicas[writer].ip.parse().unwrap();
    let _other_holder = bind_when_free(other, kept).await;
    let err = c
        .enable_console(enable_request(&rig, 2, NODE))
        .await
        .expect_err("a kept port that is busy is not moved");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("could not start it") && err.message().contains("in use"),
        "the reason is given: {err:?}"
    );
    assert_eq!(
        cluster.etcd_get(&format!("ports/{kept}")).as_deref(),
        Some(NODE),
        "still the node's port"
    );
}

/// A client connection from `ip:port` that we closed first: its local end
/// sits in TIME_WAIT on that port for a minute.
async fn time_wait_on(ip: IpAddr, port: u16) {
    let server = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, port)).unwrap();
    let client = socket.connect(server.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = server.accept().await.unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(accepted);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpListener::bind((ip, port)).is_err(),
        "{port} should be held by TIME_WAIT"
    );
}

/// A listener on `ip:port` once the disabled console has let it go.
async fn bind_when_free(ip: IpAddr, port: u16) -> TcpListener {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind((ip, port)) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{ip}:{port} never became free after the disable");
}
