//! gRPC between the conductor and the inspect service over mutual TLS
//! (`[service] tls_*` on the service, `[inspect] tls_*` on the conductor,
//! as console-svc and `[console]`): the conductor's call reaches the
//! service and gets its answer; a conductor without a client certificate
//! is refused in the handshake and says the service is unavailable.

mod common;

use anyhow::ensure;
use common::Api;
use porthole_tests::pki::Pki;
use tokio::net::TcpListener;

fn s(p: &std::path::Path) -> toml::Value {
    toml::Value::String(p.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductor_calls_the_inspect_service_over_mutual_tls() {
    porthole_tests::run(async {
        let pki = Pki::new()?;
        let (server, client) = (pki.server(), pki.client());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let (cert, key, ca) = (
            server.cert.display().to_string(),
            server.key.display().to_string(),
            pki.ca().display().to_string(),
        );
        let config = common::inspect_config_with(
            &[],
            &[
                ("tls_cert_file", &cert),
                ("tls_key_file", &key),
                ("tls_client_ca_file", &ca),
            ],
        )?;
        let mut inspect = common::serve_inspect(listener, config)?;

        let dir = tempfile::tempdir()?;
        let mut with_cert = common::conductor_with(
            dir.path(),
            &url,
            vec![
                ("inspect", "tls_ca", s(&pki.ca())),
                ("inspect", "tls_cert", s(&client.cert)),
                ("inspect", "tls_key", s(&client.key)),
            ],
        )
        .await?;
        let api = Api::new(&with_cert.url);
        let uuid = api.create_node("n-tls", "192.0.2.40").await?;
        api.manage(&uuid).await?;
        // The service's own answer (its inspector is disabled) came back.
        let (code, body) = api.provision(&uuid, "inspect").await?;
        ensure!(
            code == 400 && body.to_string().contains("[inspector] enabled = true"),
            "{code} {body}"
        );
        with_cert.stop().await?;

        let dir = tempfile::tempdir()?;
        let mut no_cert =
            common::conductor_with(dir.path(), &url, vec![("inspect", "tls_ca", s(&pki.ca()))])
                .await?;
        let api = Api::new(&no_cert.url);
        let uuid = api.create_node("n-tls", "192.0.2.40").await?;
        api.manage(&uuid).await?;
        let (code, body) = api.provision(&uuid, "inspect").await?;
        ensure!(
            code == 400 && body.to_string().contains("is unavailable"),
            "{code} {body}"
        );
        ensure!(api.node(&uuid).await?["provision_state"] == "manageable");
        no_cert.stop().await?;
        inspect.stop().await?;
        Ok(())
    })
    .await
}
