//! Exclusive leases on shared resources, across threads and processes.
//!
//! Each BMC allows one SOL session, and each console-svc instance needs its
//! own ports, so tests lease them. A lease is an exclusive `flock` on a file:
//! two open file descriptions conflict even inside one process, and the kernel
//! drops the lock when a test process dies, so a crashed test never wedges
//! the others. Waits are bounded.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::rig::{Bmc, Rig};

/// How long a test waits for free BMCs before it fails.
pub const BMC_WAIT: Duration = Duration::from_secs(600);

/// An exclusive lock on one file, released on drop.
pub struct FileLock {
    _lock: Flock<File>,
    pub path: PathBuf,
}

/// Lock `path` now, or `None` if someone else holds it.
pub fn try_lock(path: &Path) -> Result<Option<FileLock>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(FileLock {
            _lock: lock,
            path: path.to_owned(),
        })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e).with_context(|| format!("flock {}", path.display())),
    }
}

/// BMCs leased to one test; they go back to the pool on drop.
pub struct BmcLease {
    pub bmcs: Vec<Bmc>,
    _locks: Vec<FileLock>,
}

impl BmcLease {
    pub fn get(&self, i: usize) -> &Bmc {
        &self.bmcs[i]
    }
}

impl std::ops::Index<usize> for BmcLease {
    type Output = Bmc;
    fn index(&self, i: usize) -> &Bmc {
        &self.bmcs[i]
    }
}

impl Rig {
    /// Lease `n` BMCs for the caller alone, waiting (bounded) for them.
    /// All or nothing, so two tests that each want two cannot deadlock.
    pub async fn lease_bmcs(&self, n: usize) -> Result<BmcLease> {
        if n > self.bmcs.len() {
            bail!("a test wants {n} BMCs but the rig has {}", self.bmcs.len());
        }
        let deadline = Instant::now() + BMC_WAIT;
        loop {
            if let Some(lease) = self.try_lease(n)? {
                return Ok(lease);
            }
            if Instant::now() > deadline {
                bail!("no {n} free BMCs within {BMC_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn try_lease(&self, n: usize) -> Result<Option<BmcLease>> {
        let mut lease = BmcLease {
            bmcs: Vec::new(),
            _locks: Vec::new(),
        };
        for bmc in &self.bmcs {
            let path = self
                .run_dir
                .join("porthole-test-locks")
                .join(format!("{}.lock", bmc.name));
            if let Some(lock) = try_lock(&path)? {
                lease.bmcs.push(bmc.clone());
                lease._locks.push(lock);
                if lease.bmcs.len() == n {
                    return Ok(Some(lease));
                }
            }
        }
        Ok(None)
    }
}
