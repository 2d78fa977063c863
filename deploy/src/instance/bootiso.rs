//! The instance's boot ISO, in the design's order: the image's or the
//! user's `boot_iso` (used as given, never counted); else an ISO this
//! service built earlier for the same (image, kernel, ramdisk), found in
//! the store under `boot-<sha256 of the three>`, whose `usage_count`
//! metadata is incremented; else one built now (the caller's `build`) and
//! stored without expiry with `usage_count` 1. [`BootIsos::release`]
//! decrements the count and deletes the ISO at 0.
//!
//! Counting is read-modify-write under a lock held in the store itself: an
//! object `<name>.lock` created only if absent (the embedded store's
//! mutex; Swift's `If-None-Match: *`), naming its holder (a random token),
//! expiring after `instance.lock_ttl` so a crashed holder cannot block the
//! ISO for ever, and deleted after the update. Swift's object server
//! checks `If-None-Match` against what is stored when a PUT starts, before
//! its body lands, so PUTs that overlap can all get 201 (on the rig's
//! Swift, 6 concurrent deploys without the read-back counted e.g.
//! [1,1,2,2,3,4], 3 runs of 3); there the holder reads the lock back after
//! [`SETTLE`] and only the newest PUT's writer goes on.
//! What remains is a PUT that overlaps the winner's yet takes longer than
//! `SETTLE` to land. Deploys in one process also queue on a local mutex first, so
//! they do not poll each other. The ISO is built before the lock is taken
//! (a build takes seconds); a deploy that finds the ISO stored meanwhile
//! discards its own and counts the stored one.
//!
//! Callers: [`super`] (ContinueDeploy; ReleaseBootIso).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::store::{Metadata, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BootIsoError {
    #[error("boot ISO {name}: {source}")]
    Store { name: String, source: StoreError },
    #[error("boot ISO {name}: its usage_count lock is still held after {waited:?}")]
    Locked { name: String, waited: Duration },
    #[error("boot ISO {name}: usage_count {value:?} is not a number")]
    Count { name: String, value: String },
}

/// Where the instance's boot ISO came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Given,
    Shared,
    Built,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Given => "given",
            Origin::Shared => "shared",
            Origin::Built => "built",
        }
    }
}

/// The chosen ISO.
#[derive(Clone, Debug)]
pub struct Chosen {
    /// For instance_info.boot_iso: the given URL or `<prefix>:<object>`.
    pub boot_iso: String,
    pub origin: Origin,
    pub usage_count: u64,
}

pub const USAGE_COUNT: &str = "usage_count";
/// Set on ISOs this service built: only those are ever deleted.
pub const BUILT_BY: &str = "built_by";
const BUILT_BY_US: &str = "porthole-deploy";
/// The lock object's metadata key naming its holder (a random token).
const HOLDER: &str = "holder";
/// How long after creating a lock object in a store without an atomic
/// conditional create it is read back (far longer than a PUT of an empty
/// object takes on the same proxy).
pub const SETTLE: Duration = Duration::from_millis(500);

pub struct BootIsos {
    store: Arc<dyn Store>,
    lock_ttl: Duration,
    local: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The object name of the ISO shared by deploys of (image, kernel, ramdisk).
pub fn object_name(image: &str, kernel: &str, ramdisk: &str) -> String {
    let text = format!("{image}\n{kernel}\n{ramdisk}");
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!("boot-{}", &crate::secret::hex(d.as_ref())[..40])
}

impl BootIsos {
    pub fn new(store: Arc<dyn Store>, lock_ttl: Duration) -> Self {
        Self {
            store,
            lock_ttl,
            local: tokio::sync::Mutex::default(),
        }
    }

    /// `swift:` or `store:`, as the backend is.
    pub fn prefix(&self) -> &'static str {
        if self.store.kind() == "swift" {
            "swift:"
        } else {
            "store:"
        }
    }

    /// The object a `boot_iso` value names in this store, if any.
    pub fn object_of<'a>(&self, boot_iso: &'a str) -> Option<&'a str> {
        boot_iso
            .strip_prefix(self.prefix())
            .filter(|o| !o.is_empty())
    }

    /// The shared ISO `name`, counted: incremented when stored, else
    /// `build` is awaited and stored with count 1.
    pub async fn acquire<F, Fut, E>(&self, name: &str, build: F) -> Result<Chosen, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: From<BootIsoError>,
    {
        let boot_iso = format!("{}{name}", self.prefix());
        let mut build = Some(build);
        let mut built: Option<Vec<u8>> = None;
        loop {
            if built.is_none() && self.meta(name).await?.is_none() {
                let f = build.take().expect("built at most once");
                built = Some(f().await?);
            }
            let step = self
                .locked(name, async {
                    if let Some(mut meta) = self.meta(name).await? {
                        let n = count(name, &meta)? + 1;
                        meta.insert(USAGE_COUNT.into(), n.to_string());
                        self.store
                            .set_metadata(name, &meta)
                            .await
                            .map_err(|e| store_err(name, e))?;
                        return Ok(Some((Origin::Shared, n)));
                    }
                    // Absent: store ours, or (it went between the look and
                    // the lock) build one and come back.
                    let Some(bytes) = built.take() else {
                        return Ok(None);
                    };
                    let meta = Metadata::from([
                        (USAGE_COUNT.to_owned(), "1".to_owned()),
                        (BUILT_BY.to_owned(), BUILT_BY_US.to_owned()),
                    ]);
                    self.store
                        .put_kept(name, Bytes::from(bytes), &meta)
                        .await
                        .map_err(|e| store_err(name, e))?;
                    Ok::<_, E>(Some((Origin::Built, 1)))
                })
                .await?;
            if let Some((origin, usage_count)) = step {
                tracing::info!(boot_iso = %boot_iso, origin = origin.as_str(), usage_count, "boot ISO chosen");
                return Ok(Chosen {
                    boot_iso,
                    origin,
                    usage_count,
                });
            }
            if build.is_none() {
                return Err(BootIsoError::Store {
                    name: name.to_owned(),
                    source: StoreError::Malformed(
                        "the ISO was deleted while it was being counted, twice".into(),
                    ),
                }
                .into());
            }
        }
    }

    /// Decrement the count of a `boot_iso` this service built; delete the
    /// ISO at 0. `(count left, deleted)`; `(0, false)` for anything else.
    pub async fn release(&self, boot_iso: &str) -> Result<(u64, bool), BootIsoError> {
        let Some(name) = self.object_of(boot_iso) else {
            return Ok((0, false));
        };
        self.locked(name, async {
            let Some(mut meta) = self.meta(name).await? else {
                return Ok((0, false));
            };
            if meta.get(BUILT_BY).map(String::as_str) != Some(BUILT_BY_US) {
                return Ok((0, false));
            }
            let n = count(name, &meta)?.saturating_sub(1);
            if n == 0 {
                self.store
                    .delete(name)
                    .await
                    .map_err(|e| store_err(name, e))?;
                tracing::info!(boot_iso = %boot_iso, "boot ISO unused: deleted");
                return Ok((0, true));
            }
            meta.insert(USAGE_COUNT.into(), n.to_string());
            self.store
                .set_metadata(name, &meta)
                .await
                .map_err(|e| store_err(name, e))?;
            Ok((n, false))
        })
        .await
    }

    /// One attempt at the lock object. Where the store's conditional
    /// create is not atomic (Swift), the lock is read back after
    /// [`SETTLE`]: of PUTs that overlapped, every one sees the newest,
    /// so only its writer goes on (the others retry, leaving it alone).
    async fn try_lock(
        &self,
        name: &str,
        lock: &str,
        holder: &Metadata,
        me: &str,
    ) -> Result<bool, BootIsoError> {
        let created = self
            .store
            .create_exclusive(lock, holder, self.lock_ttl)
            .await
            .map_err(|e| store_err(name, e))?;
        if !created || self.store.exclusive_is_atomic() {
            return Ok(created);
        }
        tokio::time::sleep(SETTLE).await;
        let now = self.meta(lock).await?;
        Ok(now.and_then(|m| m.get(HOLDER).cloned()).as_deref() == Some(me))
    }

    async fn meta(&self, name: &str) -> Result<Option<Metadata>, BootIsoError> {
        self.store
            .metadata(name)
            .await
            .map_err(|e| store_err(name, e))
    }

    /// Run `f` holding `name`'s lock: the local mutex, then the lock object
    /// in the store (polled until `lock_ttl` twice over has passed).
    async fn locked<T, E: From<BootIsoError>>(
        &self,
        name: &str,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let local = {
            let mut l = self.local.lock().await;
            l.entry(name.to_owned()).or_default().clone()
        };
        let _local = local.lock().await;
        let lock = format!("{name}.lock");
        let started = Instant::now();
        let me = crate::secret::DeployKey::generate().expose().to_owned();
        let holder = Metadata::from([(HOLDER.to_owned(), me.clone())]);
        loop {
            if self.try_lock(name, &lock, &holder, &me).await? {
                break;
            }
            if started.elapsed() > self.lock_ttl * 2 {
                return Err(BootIsoError::Locked {
                    name: name.to_owned(),
                    waited: started.elapsed(),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let result = f.await;
        if let Err(e) = self.store.delete(&lock).await {
            tracing::warn!(lock = %lock, error = %e, "cannot delete a boot ISO lock; it expires by itself");
        }
        result
    }
}

fn store_err(name: &str, source: StoreError) -> BootIsoError {
    BootIsoError::Store {
        name: name.to_owned(),
        source,
    }
}

fn count(name: &str, meta: &Metadata) -> Result<u64, BootIsoError> {
    let v = meta.get(USAGE_COUNT).cloned().unwrap_or_else(|| "0".into());
    v.trim().parse().map_err(|_| BootIsoError::Count {
        name: name.to_owned(),
        value: v,
    })
}

#[cfg(test)]
mod tests;
