//! `console-svc enable`'s arguments → the EnableConsole request: serial and
//! VNC, passwords read from files, options of the other kind refused.

use std::io::Write;

use super::*;

fn enable(args: &[&str]) -> Result<pb::EnableConsoleRequest> {
    let cli = Cli::try_parse_from(["console-svc", "enable"].iter().chain(args))?;
    match cli.command {
        Command::Enable(a) => a.request(),
        other => panic!("parsed as {other:?}"),
    }
}

fn password_file(content: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(content.as_bytes()).expect("write");
    f
}

#[test]
fn kind_vnc_names_the_vnc_server() {
    let pw = password_file("vnc-pass\n");
    let path = pw.path().to_str().unwrap();
    let req = enable(&[
        "n1",
        "--kind",
        "vnc",
        "--vnc-host",
        "10.0.0.5",
        "--vnc-port",
        "5901",
        "--vnc-password-file",
        path,
        "--port",
        "10005",
    ])
    .unwrap();
    assert_eq!(req.kind, pb::ConsoleKind::Vnc as i32);
    assert_eq!(req.node_id, "n1");
    assert_eq!(req.port, 10005);
    assert_eq!(req.ipmi, None);
    let vnc = req.vnc.expect("vnc target");
    assert_eq!((vnc.host.as_str(), vnc.port), ("10.0.0.5", 5901));
    assert_eq!(vnc.password, "vnc-pass");
}

#[test]
fn kind_vnc_defaults_port_and_password() {
    let req = enable(&["n1", "--kind", "vnc", "--vnc-host", "h"]).unwrap();
    let vnc = req.vnc.expect("vnc target");
    // 0 is the proto's "5900"; no password file means the server asks none.
    assert_eq!((vnc.port, vnc.password.as_str()), (0, ""));
}

#[test]
fn kind_vnc_needs_a_host_and_refuses_bmc_options() {
    let err = enable(&["n1", "--kind", "vnc"]).unwrap_err();
    assert_eq!(err.to_string(), "a vnc console needs --vnc-host");
    let err = enable(&[
        "n1",
        "--kind",
        "vnc",
        "--vnc-host",
        "h",
        "--bmc-address",
        "b",
        "--cipher-suite",
        "3",
    ])
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "--bmc-address, --cipher-suite not for a vnc console (--kind vnc)"
    );
}

#[test]
fn serial_is_the_default_and_refuses_vnc_options() {
    let pw = password_file("bmc-pass\r\n");
    let path = pw.path().to_str().unwrap();
    let req = enable(&[
        "n1",
        "--bmc-address",
        "10.0.0.9",
        "--bmc-username",
        "admin",
        "--bmc-password-file",
        path,
        "--cipher-suite",
        "3",
    ])
    .unwrap();
    assert_eq!(req.kind, pb::ConsoleKind::Serial as i32);
    assert_eq!(req.vnc, None);
    let ipmi = req.ipmi.expect("ipmi target");
    assert_eq!((ipmi.address.as_str(), ipmi.port), ("10.0.0.9", 623));
    assert_eq!(
        (ipmi.username.as_str(), ipmi.password.as_str()),
        ("admin", "bmc-pass")
    );
    assert_eq!(
        (ipmi.cipher_suite, ipmi.privilege_level.as_str()),
        (Some(3), "")
    );

    let err = enable(&["n1", "--bmc-address", "b", "--vnc-host", "h"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--vnc-host not for a serial console (--kind serial)"
    );
    let err = enable(&["n1", "--bmc-address", "b", "--bmc-password-file", path]).unwrap_err();
    assert_eq!(err.to_string(), "a serial console needs --bmc-username");
}

#[test]
fn a_missing_password_file_is_named() {
    let err = enable(&[
        "n1",
        "--kind",
        "vnc",
        "--vnc-host",
        "h",
        "--vnc-password-file",
        "/nonexistent/pw",
    ])
    .unwrap_err();
    assert_eq!(
        format!("{err:#}").split(':').next(),
        Some("reading /nonexistent/pw")
    );
}

#[test]
fn an_unknown_kind_is_refused_by_the_parser() {
    assert!(enable(&["n1", "--kind", "rdp"]).is_err());
}

#[test]
fn grpc_codes_are_named_as_grpc_names_them() {
    assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
    assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
    assert_eq!(code_name(tonic::Code::Ok), "OK");
    let e = rpc(tonic::Status::not_found("no console for node n1"));
    assert_eq!(e.to_string(), "no console for node n1 (NOT_FOUND)");
    let e = rpc(tonic::Status::unavailable(""));
    assert_eq!(
        e.to_string(),
        "The service is currently unavailable (UNAVAILABLE)"
    );
}

#[test]
fn serve_rmcp_udp_becomes_the_rmcp_udp_setting() {
    let cli = Cli::try_parse_from(["console-svc", "serve", "--rmcp-udp", "per-console"]).unwrap();
    let Command::Serve(args) = cli.command else {
        panic!("not serve");
    };
    let o = args.overrides();
    assert_eq!(
        o,
        vec![("rmcp", "udp", toml::Value::String("per-console".into()))]
    );
    use crate::config::Layered;
    let c = crate::config::Config::load(None, Vec::new(), &o).unwrap();
    assert_eq!(c.rmcp.udp, crate::config::RmcpUdp::PerConsole);
}
