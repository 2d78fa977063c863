//! The forward's call to the owner over mutual TLS, against an in-process
//! TLS server (porthole-common's accept loop, no console service behind
//! it) with certificates made by rcgen: a replica whose certificate the
//! owner's client CA signed gets the owner's answer; one the owner refuses
//! in the handshake is "unreachable" (UNAVAILABLE), not an answer.

use std::path::Path;
use std::time::Duration;

use porthole_common::tls::{incoming, ClientTls, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;

fn ca(dir: &Path, name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("porthole test {name}"));
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    (cert, key)
}

fn leaf(dir: &Path, name: &str, ca: &(rcgen::Certificate, KeyPair)) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca.0, &ca.1)
        .unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

fn peer(dir: &Path, name: &str) -> PeerTls {
    let tls = ClientTls {
        ca_file: Some(dir.join("ca.pem")),
        cert_file: Some(dir.join(format!("{name}.pem"))),
        key_file: Some(dir.join(format!("{name}.key"))),
        server_name: None,
    };
    PeerTls::tls(tls.tonic(("cert", "key")).unwrap())
}

fn request() -> tonic::Request<pb::GetConsoleLogRequest> {
    tonic::Request::new(pb::GetConsoleLogRequest {
        node_id: "node-1".into(),
        max_bytes: 0,
    })
}

#[tokio::test]
async fn a_replica_the_owner_refuses_in_the_handshake_is_unreachable_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ours = ca(d, "ca");
    leaf(d, "owner", &ours);
    leaf(d, "replica", &ours);
    let theirs = ca(d, "other-ca");
    leaf(d, "stranger", &theirs);

    let server = ServerTls {
        cert_file: d.join("owner.pem"),
        key_file: d.join("owner.key"),
        client_ca_file: Some(d.join("ca.pem")),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let stream = incoming(
        listener,
        server.acceptor().unwrap(),
        Duration::from_secs(5),
        cancel.clone(),
    );
    // Any service: the call's fate is decided in the handshake.
    let (_health, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(stream, cancel.clone().cancelled_owned()),
    );

    // Accepted: the owner answers (it serves no console API here).
    match call_owner(&url, &peer(d, "replica"), request()).await {
        Err(CallFailed::Answered(s)) => assert_eq!(s.code(), tonic::Code::Unimplemented),
        other => panic!("an accepted replica got {other:?}"),
    }
    // Refused in the handshake: no answer from the owner, whatever code
    // hyper's error maps to.
    match call_owner(&url, &peer(d, "stranger"), request()).await {
        Err(CallFailed::Unreachable(reason)) => {
            assert!(reason.contains("transport"), "{reason}")
        }
        other => panic!("a refused replica got {other:?}"),
    }
    // Plaintext to a TLS owner: no answer either.
    match call_owner(
        &url.replace("https", "http"),
        &PeerTls::default(),
        request(),
    )
    .await
    {
        Err(CallFailed::Unreachable(_)) => {}
        other => panic!("plaintext got {other:?}"),
    }
    cancel.cancel();
}
