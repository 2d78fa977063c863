//! Bad input costs nothing and gets a clear error, against the built
//! console-svc binary (native backend; no BMC is reached, so no rig is
//! needed): refused enables leave nothing behind (no console, no memory),
//! ListConsoles pages, long input is refused without being echoed, and an
//! undecodable request is INVALID_ARGUMENT.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::BufMut;
use porthole_proto::console::v1 as pb;
use porthole_tests::{Backend, ConsoleSvc, SvcOptions};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// A serial console request whose BMC is never asked anything that
/// matters: `ipmitool_path = "true"` answers every probe.
fn request(node: &str, port: u32) -> pb::EnableConsoleRequest {
    pb::EnableConsoleRequest {
        node_id: node.into(),
        kind: pb::ConsoleKind::Serial as i32,
        ipmi: Some(pb::IpmiTarget {
            address: "127.0.0.1".into(),
            port: 9,
            username: "admin".into(),
            password: "not-used".into(),
            cipher_suite: Some(3),
            privilege_level: String::new(),
        }),
        port,
        vnc: None,
    }
}

async fn service(ports: u16) -> Result<ConsoleSvc> {
    ConsoleSvc::start_with(
        SvcOptions::new(Backend::Native)
            .ports(ports)
            .set("console", "ipmitool_path", "\"true\"")
            .log("warn"),
    )
    .await
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS")?.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_enables_leave_nothing_behind() {
    porthole_tests::run(async {
        let svc = service(2).await?;
        let mut client = svc.client().await?;
        let (start, end) = svc.port_range();
        client
            .enable_console(request("holder", start.into()))
            .await
            .context("the holder")?;
        let refuse = |i: usize| {
            let port = match i % 2 {
                0 => u32::from(end) + 7, // outside the range
                _ => u32::from(start),   // the holder's
            };
            request(&format!("refused-{i:05}"), port)
        };
        // Warm up the allocator and the connection, then measure.
        for i in 0..200 {
            ensure!(client.enable_console(refuse(i)).await.is_err(), "accepted");
        }
        let before = rss_kib(svc.pid())?;
        for i in 200..2200 {
            match client.enable_console(refuse(i)).await {
                Err(s) if matches!(s.code(), Code::InvalidArgument | Code::AlreadyExists) => {}
                other => bail!("refused request {i}: {other:?}"),
            }
        }
        let after = rss_kib(svc.pid())?;
        let all = pb::list_all(&mut client, 0).await?;
        let nodes: Vec<&str> = all.iter().map(|c| c.node_id.as_str()).collect();
        ensure!(
            nodes == ["holder"],
            "{} consoles listed, first {:?}",
            nodes.len(),
            &nodes[..nodes.len().min(3)]
        );
        ensure!(
            after <= before + 512,
            "2000 refused enables grew console-svc from {before} to {after} KiB"
        );
        // Still serving, and the second port was never held.
        let c = client
            .enable_console(request("second", 0))
            .await?
            .into_inner();
        ensure!(c.port == u32::from(start) + 1, "{c:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_consoles_pages() {
    porthole_tests::run(async {
        let svc = service(25).await?;
        let mut client = svc.client().await?;
        for i in 0..25 {
            client
                .enable_console(request(&format!("paged-{i:02}"), 0))
                .await
                .with_context(|| format!("enable {i}"))?;
        }
        let first = client
            .list_consoles(pb::ListConsolesRequest {
                page_size: 10,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        ensure!(first.consoles.len() == 10, "{}", first.consoles.len());
        ensure!(
            first.next_page_token == "paged-09",
            "{:?}",
            first.next_page_token
        );
        let all = pb::list_all(&mut client, 10).await?;
        let want: Vec<String> = (0..25).map(|i| format!("paged-{i:02}")).collect();
        let got: Vec<String> = all.into_iter().map(|c| c.node_id).collect();
        ensure!(got == want, "{got:?}");
        // An old caller (no page_size) gets everything in one page here.
        let old = client
            .list_consoles(pb::ListConsolesRequest::default())
            .await?
            .into_inner();
        ensure!(old.consoles.len() == 25 && old.next_page_token.is_empty());
        let bad = client
            .list_consoles(pb::ListConsolesRequest {
                page_size: 0,
                page_token: "not a token!".into(),
            })
            .await;
        ensure!(
            matches!(&bad, Err(s) if s.code() == Code::InvalidArgument),
            "{bad:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_input_is_refused_without_being_echoed() {
    porthole_tests::run(async {
        let svc = service(2).await?;
        let mut client = svc.client().await?;
        // 1 MiB node id: a default client sees the reason, not
        // RESOURCE_EXHAUSTED from an echoed 1 MiB grpc-message.
        let huge = "n".repeat(1 << 20);
        let err = client
            .get_console(pb::GetConsoleRequest {
                node_id: huge.clone(),
            })
            .await
            .err()
            .context("a 1 MiB node id was accepted")?;
        ensure!(err.code() == Code::InvalidArgument, "{err:?}");
        ensure!(err.message().contains("at most 128"), "{err:?}");
        ensure!(err.message().len() < 300, "{} bytes", err.message().len());
        let err = client
            .enable_console(request(&huge, 0))
            .await
            .err()
            .context("accepted")?;
        ensure!(err.code() == Code::InvalidArgument && err.message().len() < 300);
        let mut bad_address = request("addr", 0);
        bad_address.ipmi.as_mut().unwrap().address = "!".repeat(1 << 20);
        let err = client
            .enable_console(bad_address)
            .await
            .err()
            .context("accepted")?;
        ensure!(
            err.code() == Code::InvalidArgument && err.message().len() < 300,
            "{err:?}"
        );
        // 255 characters would name a log file too long for a file system.
        let err = client
            .enable_console(request(&"n".repeat(255), 0))
            .await
            .err()
            .context("a 255-character node id was accepted")?;
        ensure!(err.code() == Code::InvalidArgument, "{err:?}");
        client
            .enable_console(request(&"n".repeat(128), 0))
            .await
            .context("128 characters are fine")?;
        Ok(())
    })
    .await
}

/// Sends its bytes as they are; decodes like console.v1's client.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::Console;
    type Encoder = RawEncoder;
    type Decoder = porthole_proto::codec::MessageDecoder<pb::Console>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_request_is_invalid_argument() {
    porthole_tests::run(async {
        let svc = service(2).await?;
        let mut grpc = tonic::client::Grpc::new(svc.channel().await?);
        grpc.ready().await?;
        // Field 1 as a length-delimited string 1000 bytes long, then EOF.
        let garbage = vec![0x0a, 0xe8, 0x07, b'x'];
        let path = "/porthole.console.v1.ConsoleService/GetConsole".parse()?;
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            grpc.unary(tonic::Request::new(garbage), path, RawCodec),
        )
        .await?;
        let err = answer.err().context("garbage was decoded")?;
        ensure!(err.code() == Code::InvalidArgument, "{err:?}");
        ensure!(err.message().contains("could not be decoded"), "{err:?}");
        // The service keeps serving.
        let mut client = svc.client().await?;
        client
            .list_consoles(pb::ListConsolesRequest::default())
            .await?;
        Ok(())
    })
    .await
}
