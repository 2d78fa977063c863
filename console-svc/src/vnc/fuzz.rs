//! proptest "fuzz" targets for the handshake parsers on both sides: any
//! bytes from a viewer or an upstream end in `Ok` or a `VncError`, never a
//! panic or a hang. Case counts are bounded so CI stays quick; raise them
//! with `PROPTEST_CASES=100000` for a longer run.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

use super::accept::{accept, Scheme, ViewerSettings};
use super::rfb::Version;
use super::testutil::{upstream_settings, viewer_settings, Certs};
use super::tls;
use super::upstream::{handshake, UpstreamSettings, UpstreamTarget};
use crate::secret::Secret;

/// 256 per target unless `PROPTEST_CASES` says otherwise.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Shared TLS material (made once: key generation is slow).
fn tls_material() -> &'static (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    static TLS: OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> = OnceLock::new();
    TLS.get_or_init(|| {
        let certs = Certs::new("fuzz");
        let server = certs.viewer_tls();
        let client = tls::client_config(&certs.path("selfsigned.pem")).unwrap();
        (server, client)
    })
}

/// Feeds `input` to the viewer side, then hangs up; must finish promptly.
fn run_viewer(input: Vec<u8>) {
    let settings = ViewerSettings {
        tls: Some(tls_material().0.clone()),
        max_handshake_bytes: 4096,
        ..viewer_settings(vec![Scheme::VeNCrypt, Scheme::None])
    };
    runtime().block_on(async move {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs.write_all(&input).await.unwrap();
        drop(theirs);
        let outcome = tokio::time::timeout(Duration::from_secs(5), accept(ours, &settings)).await;
        assert!(outcome.is_ok(), "the viewer side hung on {input:?}");
    });
}

/// Feeds `input` as an upstream's bytes, then hangs up.
fn run_upstream(input: Vec<u8>, settings: UpstreamSettings) {
    runtime().block_on(async move {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs.write_all(&input).await.unwrap();
        drop(theirs);
        let password = Secret::new("password");
        let target = UpstreamTarget {
            host: "127.0.0.1",
            password: Some(&password),
        };
        let run = handshake(ours, &target, &settings);
        let outcome = tokio::time::timeout(Duration::from_secs(5), run).await;
        assert!(outcome.is_ok(), "the upstream side hung on {input:?}");
    });
}

/// Plausible prefixes, so cases get past the version check.
fn with_prefix(prefixes: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    (
        0..prefixes.len(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(move |(i, tail)| {
            let mut v = prefixes[i].to_vec();
            v.extend(tail);
            v
        })
}

const VIEWER_PREFIXES: &[&[u8]] = &[
    b"",
    b"RFB 003.008\n",
    b"RFB 003.008\n\x01",
    b"RFB 003.008\n\x13",
    b"RFB 003.008\n\x13\x00\x02",
    b"RFB 003.008\n\x13\x00\x02\x00\x00\x01\x04",
    b"RFB 003.008\n\x13\x00\x02\x00\x00\x01\x04\x16\x03\x01",
];

const UPSTREAM_PREFIXES: &[&[u8]] = &[
    b"",
    b"RFB 003.003\n",
    b"RFB 003.007\n",
    b"RFB 003.008\n",
    b"RFB 003.008\n\x01\x02",
    b"RFB 003.008\n\x01\x13\x00\x02\x00",
    b"RFB 003.008\n\x01\x13\x00\x02\x00\x01\x00\x00\x01\x05\x01",
    b"RFB 003.003\n\x00\x00\x00\x02",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn version_parser_never_panics(raw in proptest::array::uniform12(any::<u8>())) {
        if let Some(v) = Version::parse(&raw) {
            prop_assert_eq!(&raw[..4], b"RFB ");
            let _ = v.dialect();
        }
    }

    #[test]
    fn viewer_side_survives_any_bytes(input in with_prefix(VIEWER_PREFIXES)) {
        run_viewer(input);
    }

    #[test]
    fn upstream_side_survives_any_bytes(input in with_prefix(UPSTREAM_PREFIXES)) {
        run_upstream(input, upstream_settings());
    }

    #[test]
    fn upstream_side_with_tls_survives_any_bytes(input in with_prefix(UPSTREAM_PREFIXES)) {
        let settings = UpstreamSettings { tls: Some(tls_material().1.clone()), ..upstream_settings() };
        run_upstream(input, settings);
    }
}
