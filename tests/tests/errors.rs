//! What callers see when things are wrong, both backends: an unreachable
//! BMC makes the console FAILED with a readable `last_error`, an exhausted
//! port range is RESOURCE_EXHAUSTED, and bad requests are INVALID_ARGUMENT
//! (the range's END is excluded, as in Ironic).

use std::net::UdpSocket;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use porthole_proto::console::v1 as pb;
use porthole_tests::session::{self, url_of, Client};
use porthole_tests::{both_backends, rig_or_skip, Backend, ConsoleSvc, SvcOptions};
use tonic::Code;

both_backends!(
    unreachable_bmc_makes_the_console_failed,
    exhausted_port_range_is_resource_exhausted,
    bad_requests_are_invalid_argument,
);

/// rmcp brings its session up without a viewer, so a wrong password shows
/// at once, in RMCP+'s own words (not ipmitool's "Unable to establish").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_wrong_password_and_unknown_user_are_named() {
    porthole_tests::run(rmcp_bad_credentials()).await
}

async fn rmcp_bad_credentials() -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(1).await?;
    let svc = ConsoleSvc::start(Backend::Rmcp).await?;
    let mut client = svc.client().await?;
    let cases = [
        (
            "wrongpw",
            bmcs[0].username.as_str(),
            "Wrong-Pw-9876",
            "wrong password for user",
        ),
        (
            "nouser",
            "nobody",
            bmcs[0].password.as_str(),
            "unauthorized name): unknown user name",
        ),
    ];
    for (tag, user, password, expected) in cases {
        let node = session::node_id(tag);
        let mut req = bmcs[0].enable_request(&node);
        if let Some(ipmi) = req.ipmi.as_mut() {
            ipmi.username = user.into();
            ipmi.password = password.into();
        }
        session::enable(&mut client, req).await?;
        let failed =
            session::wait_console(&mut client, &node, Duration::from_secs(30), "FAILED", |c| {
                c.state() == pb::ConsoleState::Failed
            })
            .await?;
        let why = failed.last_error;
        ensure!(
            why.contains(expected),
            "{tag}: last_error {why:?} lacks {expected:?}"
        );
        ensure!(
            !why.contains(password),
            "{tag}: last_error shows the password: {why:?}"
        );
    }
    Ok(())
}

/// A UDP port on 127.0.0.1 that nobody answers on: bound (so no one else
/// takes it) but never read.
fn black_hole() -> Result<UdpSocket> {
    UdpSocket::bind("127.0.0.1:0").context("binding a UDP black hole")
}

/// A request for a BMC that never answers.
fn unreachable_request(node: &str, udp_port: u16) -> pb::EnableConsoleRequest {
    pb::EnableConsoleRequest {
        node_id: node.into(),
        kind: pb::ConsoleKind::Serial as i32,
        ipmi: Some(pb::IpmiTarget {
            address: "127.0.0.1".into(),
            port: udp_port.into(),
            username: "admin".into(),
            password: "not-a-real-bmc".into(),
            cipher_suite: Some(3),
            privilege_level: String::new(),
        }),
        port: 0,
        vnc: None,
    }
}

async fn unreachable_bmc_makes_the_console_failed(backend: Backend) -> Result<()> {
    let _rig = rig_or_skip!();
    let hole = black_hole()?;
    let udp = hole.local_addr()?.port();
    let svc = ConsoleSvc::start(backend).await?;
    let mut client = svc.client().await?;
    let node = session::node_id("unreach");
    // Enable may answer at once (the port is up) or fail; either way the
    // console must end up FAILED and say why.
    if let Err(e) = client.enable_console(unreachable_request(&node, udp)).await {
        ensure!(e.code() == Code::Unavailable, "enable failed oddly: {e:?}");
    }
    let failed =
        session::wait_console(&mut client, &node, Duration::from_secs(30), "FAILED", |c| {
            c.state() == pb::ConsoleState::Failed
        })
        .await?;
    let why = failed.last_error.clone();
    ensure!(
        !why.trim().is_empty(),
        "FAILED without last_error: {failed:?}"
    );
    ensure!(
        why.contains(&format!("127.0.0.1:{udp}")),
        "last_error does not name the BMC 127.0.0.1:{udp}: {why:?}"
    );
    ensure!(
        why.len() < 1000 && !why.contains('\n'),
        "last_error is not one readable line: {why:?}"
    );
    ensure!(
        !why.contains("not-a-real-bmc"),
        "last_error shows the password: {why:?}"
    );
    Ok(())
}

async fn exhausted_port_range_is_resource_exhausted(backend: Backend) -> Result<()> {
    let _rig = rig_or_skip!();
    let hole = black_hole()?;
    let udp = hole.local_addr()?.port();
    let svc = ConsoleSvc::start_with(SvcOptions::new(backend).ports(1)).await?;
    let mut client = svc.client().await?;
    let a = session::node_id("full-a");
    let ca = session::enable(&mut client, unreachable_request(&a, udp)).await?;
    let (start, _) = svc.port_range();
    ensure!(
        ca.port == u32::from(start),
        "the only port is {start}, got {ca:?}"
    );

    let b = session::node_id("full-b");
    let err = expect_code(
        &mut client,
        unreachable_request(&b, udp),
        Code::ResourceExhausted,
    )
    .await?;
    ensure!(
        err.message().contains(&start.to_string()),
        "message should name the range: {err:?}"
    );
    // The first console is unaffected.
    let shown = session::get(&mut client, &a).await?;
    ensure!(
        shown.port == u32::from(start),
        "node a lost its port: {shown:?}"
    );
    Ok(())
}

async fn bad_requests_are_invalid_argument(backend: Backend) -> Result<()> {
    let _rig = rig_or_skip!();
    let hole = black_hole()?;
    let udp = hole.local_addr()?.port();
    let svc = ConsoleSvc::start_with(SvcOptions::new(backend).ports(4)).await?;
    let mut client = svc.client().await?;
    let (start, end) = svc.port_range();
    let node = session::node_id("bad");
    let req = |f: &dyn Fn(&mut pb::EnableConsoleRequest)| {
        let mut r = unreachable_request(&node, udp);
        f(&mut r);
        r
    };
    let cases = [
        ("empty node id", req(&|r| r.node_id.clear())),
        ("malformed address", req(&|r| set_address(r, "bad host!"))),
        ("impossible IPv4", req(&|r| set_address(r, "300.1.1.1"))),
        ("port = END (excluded)", req(&|r| r.port = end.into())),
        ("port below START", req(&|r| r.port = u32::from(start) - 1)),
        ("no BMC", req(&|r| r.ipmi = None)),
    ];
    for (what, r) in cases {
        expect_code(&mut client, r, Code::InvalidArgument)
            .await
            .with_context(|| what.to_owned())?;
    }
    let err = client
        .get_console(pb::GetConsoleRequest {
            node_id: String::new(),
        })
        .await;
    ensure!(
        matches!(&err, Err(s) if s.code() == Code::InvalidArgument),
        "GetConsole(\"\"): {err:?}"
    );
    let err = client
        .get_console(pb::GetConsoleRequest {
            node_id: "never-seen".into(),
        })
        .await;
    ensure!(
        matches!(&err, Err(s) if s.code() == Code::NotFound),
        "GetConsole(unknown): {err:?}"
    );

    // The last port inside the range is fine.
    let ok = session::enable(&mut client, req(&|r| r.port = u32::from(end) - 1)).await?;
    ensure!(
        ok.port == u32::from(end) - 1 && url_of(&ok).is_ok(),
        "explicit port: {ok:?}"
    );
    Ok(())
}

fn set_address(r: &mut pb::EnableConsoleRequest, address: &str) {
    if let Some(ipmi) = r.ipmi.as_mut() {
        ipmi.address = address.into();
    }
}

async fn expect_code(
    client: &mut Client,
    req: pb::EnableConsoleRequest,
    code: Code,
) -> Result<tonic::Status> {
    match client.enable_console(req).await {
        Ok(c) => bail!(
            "expected {code:?}, the console was enabled: {:?}",
            c.into_inner()
        ),
        Err(s) if s.code() == code => {
            ensure!(!s.message().is_empty(), "{code:?} without a message");
            Ok(s)
        }
        Err(s) => bail!("expected {code:?}, got {s:?}"),
    }
}
