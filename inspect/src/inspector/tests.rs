//! The ironic-inspector client against an in-process stub that answers as
//! inspector 12.5 does (its headers, bodies and error format); the real
//! inspector is in `tests/inspector_real.rs`.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use super::*;

#[derive(Clone, Default)]
struct Stub {
    /// (min, max) version headers; None: none sent.
    versions: Option<(&'static str, &'static str)>,
    /// What was asked, in order: "POST /v1/introspection/<uuid>" ...
    calls: Arc<Mutex<Vec<String>>>,
    /// Version header of each call.
    asked_versions: Arc<Mutex<Vec<String>>>,
}

fn headers(s: &Stub) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some((min, max)) = s.versions {
        h.insert(MIN_VERSION_HEADER, HeaderValue::from_static(min));
        h.insert(MAX_VERSION_HEADER, HeaderValue::from_static(max));
    }
    h
}

const KNOWN: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
const FAILED: &str = "2be26c0b-03f2-4d2e-ae87-c02d7f33c123";
const STUCK: &str = "5be26c0b-03f2-4d2e-ae87-c02d7f33c123";

fn record(s: &Stub, call: String, h: &HeaderMap) {
    s.calls.lock().unwrap().push(call);
    let v = h
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    s.asked_versions.lock().unwrap().push(v);
}

fn error(code: StatusCode, msg: &str) -> (StatusCode, String) {
    (code, format!(r#"{{"error":{{"message":"{msg}"}}}}"#))
}

async fn serve(stub: Stub) -> String {
    let app = Router::new()
        .route(
            "/",
            get(|State(s): State<Stub>| async move {
                (headers(&s), r#"{"versions":[{"id":"1.18","status":"CURRENT"}]}"#)
            }),
        )
        .route(
            "/v1/introspection/{uuid}",
            post(
                |State(s): State<Stub>, Path(uuid): Path<String>, h: HeaderMap| async move {
                    record(&s, format!("POST /v1/introspection/{uuid}"), &h);
                    if uuid == KNOWN || uuid == FAILED {
                        (StatusCode::ACCEPTED, String::new())
                    } else {
                        error(
                            StatusCode::BAD_REQUEST,
                            &format!("Node {uuid} was not found in Ironic"),
                        )
                    }
                    .into_response()
                },
            )
            .get(
                |State(s): State<Stub>, Path(uuid): Path<String>, h: HeaderMap| async move {
                    record(&s, format!("GET /v1/introspection/{uuid}"), &h);
                    match uuid.as_str() {
                        KNOWN => (StatusCode::OK, format!(r#"{{"uuid":"{uuid}","finished":true,"error":null,"state":"finished"}}"#)),
                        FAILED => (StatusCode::OK, format!(r#"{{"uuid":"{uuid}","finished":true,"error":"The ramdisk said: boom","state":"error"}}"#)),
                        _ => error(StatusCode::NOT_FOUND, &format!("Could not find node {uuid} in cache")),
                    }
                },
            ),
        )
        .route(
            "/v1/introspection/{uuid}/abort",
            post(
                |State(s): State<Stub>, Path(uuid): Path<String>, h: HeaderMap| async move {
                    record(&s, format!("POST /v1/introspection/{uuid}/abort"), &h);
                    if uuid == STUCK {
                        return error(StatusCode::CONFLICT, "Node is locked, please, retry later");
                    }
                    if uuid == KNOWN {
                        (StatusCode::ACCEPTED, String::new())
                    } else {
                        error(
                            StatusCode::BAD_REQUEST,
                            &format!("Node {uuid} can not be aborted in state finished"),
                        )
                    }
                },
            ),
        )
        .with_state(stub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn config(url: Option<String>) -> InspectorConfig {
    InspectorConfig {
        enabled: true,
        service_url: url,
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

#[test]
fn service_url_with_or_without_v1() {
    let both = |u| split_url(u).unwrap();
    assert_eq!(
        both("http://h:5050/v1"),
        ("http://h:5050".into(), "http://h:5050/v1".into())
    );
    assert_eq!(
        both("http://h:5050/v1/"),
        ("http://h:5050".into(), "http://h:5050/v1".into())
    );
    assert_eq!(
        both("https://h:5050"),
        ("https://h:5050".into(), "https://h:5050/v1".into())
    );
    assert!(matches!(
        split_url("h:5050"),
        Err(InspectorError::BadUrl { .. })
    ));
}

#[tokio::test]
async fn connect_accepts_inspector_12_5s_versions() {
    let url = serve(Stub {
        versions: Some(("1.0", "1.18")),
        ..Default::default()
    })
    .await;
    InspectorClient::connect(&config(Some(format!("{url}/v1"))))
        .await
        .expect("1.0..1.18 includes 1.3");
}

#[tokio::test]
async fn connect_refuses_what_is_not_a_supported_inspector() {
    let err = InspectorClient::connect(&config(None)).await.unwrap_err();
    assert!(matches!(err, InspectorError::NoServiceUrl), "{err}");
    assert!(err.to_string().contains("[inspector] service_url"), "{err}");
    let err = InspectorClient::connect(&config(Some("  ".into())))
        .await
        .unwrap_err();
    assert!(matches!(err, InspectorError::NoServiceUrl), "{err}");

    for (min, max) in [("2.0", "2.5"), ("1.0", "1.2"), ("1.4", "1.18"), ("x", "y")] {
        let url = serve(Stub {
            versions: Some((min, max)),
            ..Default::default()
        })
        .await;
        let err = InspectorClient::connect(&config(Some(url.clone())))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, InspectorError::UnsupportedVersion { .. })
                && text.contains(&format!("supports API versions {min} to {max}"))
                && text.contains("needs 1.3"),
            "{text}"
        );
    }

    let url = serve(Stub::default()).await;
    let err = InspectorClient::connect(&config(Some(url)))
        .await
        .unwrap_err();
    assert!(matches!(err, InspectorError::NoVersion { .. }), "{err}");

    // Nothing listens there (bound, then closed).
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/v1", l.local_addr().unwrap());
    drop(l);
    let err = InspectorClient::connect(&config(Some(dead)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, InspectorError::Unreachable { .. })
            && err.to_string().contains("does not answer"),
        "{err}"
    );
}

#[tokio::test]
async fn start_status_abort_speak_inspectors_api() {
    let stub = Stub {
        versions: Some(("1.0", "1.18")),
        ..Default::default()
    };
    let url = serve(stub.clone()).await;
    let c = InspectorClient::connect(&config(Some(format!("{url}/v1/"))))
        .await
        .unwrap();
    let m = crate::metrics::get();
    let before = (
        m.inspector_requests("start", "ok"),
        m.inspector_requests("status", "ok"),
        m.inspector_requests("start", "refused"),
    );
    c.start(KNOWN).await.unwrap();
    assert_eq!(c.status(KNOWN).await.unwrap(), Status::Finished);
    assert_eq!(
        c.status(FAILED).await.unwrap(),
        Status::Failed("The ramdisk said: boom".into())
    );
    c.abort(KNOWN).await.unwrap();

    let other = "3be26c0b-03f2-4d2e-ae87-c02d7f33c123";
    let err = c.start(other).await.unwrap_err();
    match &err {
        InspectorError::Refused {
            status, message, ..
        } => {
            assert_eq!(*status, StatusCode::BAD_REQUEST);
            assert_eq!(message, &format!("Node {other} was not found in Ironic"));
        }
        e => panic!("{e}"),
    }
    // Counted (other tests run alongside: at least these).
    assert!(m.inspector_requests("start", "ok") > before.0);
    assert!(m.inspector_requests("status", "ok") >= before.1 + 2);
    assert!(m.inspector_requests("start", "refused") > before.2);
    let err = c.status(other).await.unwrap_err();
    assert!(
        matches!(&err, InspectorError::Refused { status, .. } if *status == StatusCode::NOT_FOUND),
        "{err}"
    );
    let err = c.abort(FAILED).await.unwrap_err().to_string();
    assert!(
        err.contains("can not be aborted in state finished"),
        "{err}"
    );

    assert_eq!(
        *stub.calls.lock().unwrap(),
        vec![
            format!("POST /v1/introspection/{KNOWN}"),
            format!("GET /v1/introspection/{KNOWN}"),
            format!("GET /v1/introspection/{FAILED}"),
            format!("POST /v1/introspection/{KNOWN}/abort"),
            format!("POST /v1/introspection/{other}"),
            format!("GET /v1/introspection/{other}"),
            format!("POST /v1/introspection/{FAILED}/abort"),
        ]
    );
    assert!(
        stub.asked_versions
            .lock()
            .unwrap()
            .iter()
            .all(|v| v == "1.3"),
        "{:?}",
        stub.asked_versions.lock().unwrap()
    );
}

#[tokio::test]
async fn a_locked_node_is_told_apart() {
    let stub = Stub {
        versions: Some(("1.0", "1.18")),
        ..Default::default()
    };
    let url = serve(stub.clone()).await;
    let c = InspectorClient::connect(&config(Some(url))).await.unwrap();
    let err = c.abort(STUCK).await.unwrap_err();
    assert!(is_locked(&err), "{err}");
    assert!(err.to_string().contains("Node is locked"), "{err}");
    let err = c.abort(FAILED).await.unwrap_err();
    assert!(!is_locked(&err), "{err}");
}
