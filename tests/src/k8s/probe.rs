//! Probes and hooks as the kubelet runs them: gRPC health (`Check` of the
//! named service, `""` when none, plaintext, SERVING or it fails), HTTP GET
//! (a status 200..399), a TCP connect, or a command (exit status 0), each
//! against the pod's address within the probe's timeout. Used by
//! [`super::pod`] and [`super::cluster`].

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::manifest::{Container, Handler};

/// How the pod runs a command in its container (mapped binary, the
/// container's environment): a `tokio` command ready to spawn.
pub type ExecFn<'a> = &'a (dyn Fn(&[String]) -> Result<tokio::process::Command, String> + Sync);

/// Run `h` once against `ip`; `Err` says why it failed, as the kubelet's
/// event would.
pub async fn run(
    h: &Handler,
    ip: &str,
    c: &Container,
    exec: ExecFn<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let fut = async {
        match h {
            Handler::Grpc { port, service } => grpc(ip, *port, service).await,
            Handler::Http { path, port } => {
                let port = c.port(port).map_err(|e| e.to_string())?;
                http_get(ip, port, path).await.map(|_| ())
            }
            Handler::Tcp { port } => {
                let port = c.port(port).map_err(|e| e.to_string())?;
                TcpStream::connect((ip, port))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("dial tcp {ip}:{port}: {e}"))
            }
            Handler::Exec { command } => run_exec(command, exec).await,
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("{} timed out after {timeout:?}", describe(h))),
    }
}

pub fn describe(h: &Handler) -> String {
    match h {
        Handler::Grpc { port, service } => format!("grpc :{port} service {service:?}"),
        Handler::Http { path, port } => format!("GET {path} on {port:?}"),
        Handler::Tcp { port } => format!("tcp {port:?}"),
        Handler::Exec { command } => format!("exec {command:?}"),
    }
}

async fn grpc(ip: &str, port: u16, service: &str) -> Result<(), String> {
    let url = format!("http://{ip}:{port}");
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("grpc {url}: {e}"))?;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|e| format!("grpc {url} Check({service:?}): {}", e.message()))?;
    match resp.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("grpc {url} Check({service:?}): {other:?}")),
    }
}

/// `GET path` over HTTP/1.1 (as the kubelet sends it); the status and body
/// of a 2xx/3xx answer, else an error naming the status.
pub async fn http_get(ip: &str, port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect((ip, port))
        .await
        .map_err(|e| format!("dial tcp {ip}:{port}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "GET http://{ip}:{port}{path}: no HTTP status in {:?}",
                &text[..text.len().min(80)]
            )
        })?;
    if !(200..400).contains(&status) {
        return Err(format!("GET http://{ip}:{port}{path}: HTTP {status}"));
    }
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn run_exec(command: &[String], exec: ExecFn<'_>) -> Result<(), String> {
    let mut cmd = exec(command)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("exec {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "exec {command:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
