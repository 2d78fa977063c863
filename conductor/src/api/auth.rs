//! API authentication like Ironic's standalone modes: `noauth` (the
//! listener must be loopback unless explicitly allowed; `lib::run` checks),
//! or `http_basic` against an htpasswd file of bcrypt hashes. Version
//! discovery (`GET /`, `GET /v1`) needs no credentials, as in Ironic.
//!
//! The ramdisk's calls (`api::ramdisk::is_ramdisk_path`) are let through
//! without valid credentials, marked [`Caller::Anonymous`], for the
//! conductor to check the per-operation secret; every other call without
//! them is 401.
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

use super::ramdisk::{is_ramdisk_path, Caller};
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
    #[error("cannot make the dummy bcrypt hash: {0}")]
    Dummy(String),
}

/// Users and their bcrypt hashes, plus the SHA-256 digests of
/// Authorization values already verified (bcrypt is slow on purpose; one
/// check per distinct header value, and the header itself, which carries
/// the password, is never kept).
pub struct HttpBasic {
    users: HashMap<String, String>,
    /// A bcrypt hash of a random password at the users' highest cost: a
    /// user name that does not exist is verified against it, so it costs
    /// what a wrong password costs for one that does.
    dummy: String,
    /// Locked only to look up or insert, never across a verification, so
    /// logins of different users verify in parallel.
    verified: Mutex<HashSet<Digest>>,
    verify: fn(&str, &str) -> bool,
}

type Digest = [u8; 32];

/// Most verified header digests kept.
const CACHE_MAX: usize = 1024;

fn digest(header: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, header.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn bcrypt_verify(pass: &str, hash: &str) -> bool {
    bcrypt::verify(pass, hash).unwrap_or(false)
}

/// The cost of a `$2b$12$...` hash.
fn cost_of(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
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
            if !hash.starts_with("$2") || cost_of(hash).is_none() {
                return Err(AuthError::Format {
                    path: p,
                    line: i + 1,
                });
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        let cost = users
            .values()
            .filter_map(|h| cost_of(h))
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy = bcrypt::hash(uuid::Uuid::new_v4().to_string(), cost)
            .map_err(|e| AuthError::Dummy(e.to_string()))?;
        Ok(Self {
            users,
            dummy,
            verified: Mutex::default(),
            verify: bcrypt_verify,
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Does this `Authorization` header value name a user with the right password?
    pub fn check(&self, header: &str) -> bool {
        let key = digest(header);
        if self.cache().contains(&key) {
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
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let ok = (self.verify)(pass, hash) && known;
        if ok {
            let mut cache = self.cache();
            if cache.len() < CACHE_MAX {
                cache.insert(key);
            }
        }
        ok
    }
}

pub async fn middleware(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(basic) = &st.basic else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == "/" || path == "/v1" || path == "/v1/" {
        return next.run(req).await;
    }
    let ramdisk = is_ramdisk_path(path);
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
        req.extensions_mut().insert(Caller::Operator);
        next.run(req).await
    } else if ramdisk {
        req.extensions_mut().insert(Caller::Anonymous);
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    fn hdr(u: &str, p: &str) -> String {
        format!("Basic {}", B64.encode(format!("{u}:{p}")))
    }

    fn load(users: &[(&str, &str)], cost: u32) -> (tempfile::TempDir, HttpBasic) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("htpasswd");
        let mut text = String::from("# users\n");
        for (u, p) in users {
            text += &format!("{u}:{}\n", bcrypt::hash(p, cost).unwrap());
        }
        std::fs::write(&f, text).unwrap();
        let b = HttpBasic::load(&f).unwrap();
        (dir, b)
    }

    #[test]
    fn bcrypt_htpasswd() {
        let (dir, b) = load(&[("admin", "s3cret")], 4);
        assert!(b.check(&hdr("admin", "s3cret")));
        assert!(b.check(&hdr("admin", "s3cret")));
        assert!(!b.check(&hdr("admin", "wrong")));
        assert!(!b.check(&hdr("nobody", "s3cret")));
        assert!(!b.check("Bearer x"));
        let f = dir.path().join("htpasswd");
        std::fs::write(&f, "admin:plaintext\n").unwrap();
        assert!(HttpBasic::load(&f).is_err());
    }

    #[test]
    fn the_cache_keeps_digests_never_the_header() {
        let (_dir, b) = load(&[("admin", "s3cret")], 4);
        let h = hdr("admin", "s3cret");
        assert!(b.check(&h));
        let cache = b.cache();
        assert_eq!(cache.len(), 1);
        assert!(
            cache.contains(&digest(&h)),
            "the cache holds the header's SHA-256"
        );
    }

    /// The hashes [`record`] was asked to verify against.
    static VERIFIED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// A verifier that records the hash and refuses.
    fn record(_pass: &str, hash: &str) -> bool {
        VERIFIED.lock().unwrap().push(hash.to_owned());
        false
    }

    /// An unknown user costs what a wrong password costs: one verification
    /// against a hash of the same bcrypt cost (without the dummy hash it
    /// answered in microseconds, a wrong password in tens of milliseconds).
    /// Counted, not timed, so load cannot make it flaky.
    #[test]
    fn an_unknown_user_costs_what_a_wrong_password_costs() {
        let (_dir, mut b) = load(&[("admin", "s3cret")], 8);
        b.verify = record;
        assert!(!b.check(&hdr("admin", "wrong")));
        assert!(!b.check(&hdr("nobody", "wrong")));
        let seen = std::mem::take(&mut *VERIFIED.lock().unwrap());
        assert_eq!(seen.len(), 2, "one verification each: {seen:?}");
        assert_eq!(seen[0], b.users["admin"]);
        assert_ne!(
            seen[1], seen[0],
            "the unknown user is checked against the dummy"
        );
        assert_eq!(cost_of(&seen[1]), cost_of(&seen[0]), "at the same cost");
        assert_eq!(cost_of(&seen[1]), Some(8));
    }

    static INSIDE: AtomicUsize = AtomicUsize::new(0);
    static MET: AtomicUsize = AtomicUsize::new(0);

    /// A verifier that waits (2 s at most) until two verifications run at once.
    fn meet(_pass: &str, _hash: &str) -> bool {
        INSIDE.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if INSIDE.load(Ordering::SeqCst) >= 2 {
                MET.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn logins_of_different_users_verify_in_parallel() {
        let (_dir, mut b) = load(&[("a", "pa"), ("b", "pb")], 4);
        b.verify = meet;
        let b = Arc::new(b);
        let threads: Vec<_> = [("a", "pa"), ("b", "pb")]
            .into_iter()
            .map(|(u, p)| {
                let b = b.clone();
                std::thread::spawn(move || b.check(&hdr(u, p)))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            MET.load(Ordering::SeqCst),
            2,
            "the two verifications never ran at the same time"
        );
    }
}
