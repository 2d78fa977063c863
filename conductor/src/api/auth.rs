//! API authentication like Ironic's standalone modes: `noauth` (the
//! listener must be loopback unless explicitly allowed; `lib::run` checks),
//! or `http_basic` against an htpasswd file of bcrypt hashes. Version
//! discovery (`GET /`, `GET /v1`) needs no credentials, as in Ironic.
//!
//! Callers: the router in `api::mod` (middleware), `lib::run` (loading).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::{ApiError, AppState};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("htpasswd file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("htpasswd file {path} line {line}: expected user:bcrypt-hash")]
    Format { path: String, line: usize },
}

/// Users and their bcrypt hashes, plus Authorization values already checked
/// (bcrypt is slow on purpose; one check per distinct header value).
pub struct HttpBasic {
    users: HashMap<String, String>,
    verified: Mutex<HashSet<String>>,
}

impl HttpBasic {
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: p.clone(),
            source,
        })?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line.split_once(':').ok_or(AuthError::Format {
                path: p.clone(),
                line: i + 1,
            })?;
            if !hash.starts_with("$2") {
                return Err(AuthError::Format {
                    path: p,
                    line: i + 1,
                });
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Self {
            users,
            verified: Mutex::default(),
        })
    }

    /// Does this `Authorization` header value name a user with the right password?
    pub fn check(&self, header: &str) -> bool {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.contains(header) {
            return true;
        }
        let Some(b64) = header.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(raw) = B64.decode(b64.trim()) else {
            return false;
        };
        let Ok(raw) = String::from_utf8(raw) else {
            return false;
        };
        let Some((user, pass)) = raw.split_once(':') else {
            return false;
        };
        let ok = self
            .users
            .get(user)
            .map(|h| bcrypt::verify(pass, h).unwrap_or(false))
            .unwrap_or(false);
        if ok && verified.len() < 1024 {
            verified.insert(header.to_owned());
        }
        ok
    }
}

pub async fn middleware(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(basic) = &st.basic else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == "/" || path == "/v1" || path == "/v1/" {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let basic: Arc<HttpBasic> = basic.clone();
    let header = header.to_owned();
    let ok = tokio::task::spawn_blocking(move || basic.check(&header))
        .await
        .unwrap_or(false);
    if ok {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_htpasswd() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&f, format!("# users\nadmin:{hash}\n")).unwrap();
        let b = HttpBasic::load(&f).unwrap();
        let hdr = |u: &str, p: &str| format!("Basic {}", B64.encode(format!("{u}:{p}")));
        assert!(b.check(&hdr("admin", "s3cret")));
        assert!(b.check(&hdr("admin", "s3cret")));
        assert!(!b.check(&hdr("admin", "wrong")));
        assert!(!b.check(&hdr("nobody", "s3cret")));
        assert!(!b.check("Bearer x"));
        std::fs::write(&f, "admin:plaintext\n").unwrap();
        assert!(HttpBasic::load(&f).is_err());
    }
}
