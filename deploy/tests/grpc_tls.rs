//! deploy.v1 over mutual TLS, with porthole-common's server TLS as the
//! other services use it: a client with a certificate from the configured
//! CA is served; a stranger's certificate, no certificate and plaintext
//! are refused before any RPC runs.

use std::time::Duration;

use deploy::config::Config;
use porthole_proto::deploy::v1::deploy_service_client::DeployServiceClient;
use porthole_proto::deploy::v1::{DeployNode, ValidateRequest};
use porthole_tests::pki::{client_tls, Pki};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

async fn validate(ep: Endpoint) -> Result<tonic::Status, String> {
    let channel = ep
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let err = DeployServiceClient::new(channel)
        .validate(ValidateRequest {
            node: Some(DeployNode::default()),
        })
        .await
        .unwrap_err();
    Ok(err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_our_clients_only() {
    let pki = Pki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.service.tls_cert_file = Some(pki.server().cert);
    config.service.tls_key_file = Some(pki.server().key);
    config.service.tls_client_ca_file = Some(pki.ca());
    config.store.http_listen = "127.0.0.1:0".parse().unwrap();
    config.store.http_dir = dir.path().join("objects");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(deploy::run(listener, config, stop.clone()));

    let url = format!("https://localhost:{}", addr.port());
    let ours = Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(client_tls(&pki.ca(), Some(&pki.client())).unwrap())
        .unwrap();
    // Served: the service itself answers (a node with nothing is invalid).
    let status = validate(ours).await.unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("does not have any port"),
        "{status:?}"
    );

    for (who, tls) in [
        (
            "a stranger",
            Some(client_tls(&pki.ca(), Some(&pki.stranger())).unwrap()),
        ),
        ("no certificate", Some(client_tls(&pki.ca(), None).unwrap())),
        ("plaintext", None),
    ] {
        let ep = match tls {
            Some(t) => Endpoint::from_shared(url.clone())
                .unwrap()
                .tls_config(t)
                .unwrap(),
            None => Endpoint::from_shared(format!("http://localhost:{}", addr.port())).unwrap(),
        };
        match validate(ep).await {
            Err(_) => {}
            Ok(status) => assert_ne!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{who} reached the service: {status:?}"
            ),
        }
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}
