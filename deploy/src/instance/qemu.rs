//! `qemu-img` as the iSCSI initiator (libiscsi, user space, no root): the
//! image's format and virtual size (`info`), the target's size, the write
//! (`convert -n -O raw`, progress from `-p`) and the read-back comparison
//! (`compare`). Without CHAP a target is the URL
//! `iscsi://address:port/iqn/lun`; with CHAP it is `--image-opts` whose
//! password is a `--object secret,file=…` in a 0600 file removed when the
//! call ends, so the password never reaches argv or the environment.
//!
//! Callers: [`super`] (ContinueDeploy).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use porthole_bmc::Secret;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("{what} failed: {words}")]
    Failed { what: String, words: String },
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("{what} stalled at {percent:.2}%: no progress for {after:?} (the target stopped answering); qemu-img: {words}")]
    Stalled {
        what: String,
        percent: f64,
        after: Duration,
        words: String,
    },
    #[error("{what}: unexpected output: {detail}")]
    Output { what: String, detail: String },
    #[error("the image is {0}; only raw and qcow2 images are deployed")]
    Format(String),
    #[error("the image has a backing file ({0}); only self-contained images are deployed")]
    Backing(String),
    #[error("CHAP secret file: {0}")]
    SecretFile(std::io::Error),
}

/// The node's disk as exported by the ramdisk.
#[derive(Clone, Debug)]
pub struct Target {
    pub address: String,
    pub port: u16,
    pub iqn: String,
    pub lun: u32,
    pub chap: Option<(String, Secret)>,
}

impl Target {
    /// `iscsi://address:port/iqn/lun` (IPv6 in brackets).
    pub fn url(&self) -> String {
        let host = if self.address.contains(':') {
            format!("[{}]", self.address)
        } else {
            self.address.clone()
        };
        format!("iscsi://{host}:{}/{}/{}", self.port, self.iqn, self.lun)
    }

    /// `driver=iscsi,…` for `--image-opts` (CHAP's password as secret
    /// `sec`); with a region, inside a raw driver limited to it.
    fn image_opts(&self, chap: Option<(&str, &str)>, region: Option<Region>) -> String {
        let esc = |s: &str| s.replace(',', ",,");
        let host = if self.address.contains(':') {
            format!("[{}]", self.address)
        } else {
            self.address.clone()
        };
        let (mut out, p) = match region {
            Some(r) => (
                format!("driver=raw,offset={},size={},", r.offset, r.size),
                "file.",
            ),
            None => (String::new(), ""),
        };
        out.push_str(&format!(
            "{p}driver=iscsi,{p}transport=tcp,{p}portal={}:{},{p}target={},{p}lun={}",
            esc(&host),
            self.port,
            esc(&self.iqn),
            self.lun,
        ));
        if let Some((user, sec)) = chap {
            out.push_str(&format!(",{p}user={},{p}password-secret={sec}", esc(user)));
        }
        out
    }
}

/// A byte range of the target (a partition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub offset: u64,
    pub size: u64,
}

/// What `qemu-img info` says about an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
}

/// A 0600 file holding a secret for `--object secret,file=`, removed on
/// drop.
struct SecretFile(PathBuf);

impl SecretFile {
    fn write(dir: &Path, secret: &Secret) -> Result<SecretFile, QemuError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let name = format!("chap-{}", crate::secret::DeployKey::generate().expose());
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(QemuError::SecretFile)?;
        let written = f
            .write_all(secret.expose().as_bytes())
            .and_then(|()| f.sync_all());
        let file = SecretFile(path);
        written.map_err(QemuError::SecretFile)?;
        Ok(file)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `qemu-img` at a path, with a directory for its secret files.
#[derive(Clone, Debug)]
pub struct QemuImg {
    pub tool: PathBuf,
    pub secret_dir: PathBuf,
}

/// How a target appears on the command line: the arguments that name it
/// and the secret file they refer to (kept alive for the call).
struct TargetArgs {
    objects: Vec<String>,
    opts: bool,
    spec: String,
    _secret: Option<SecretFile>,
}

impl QemuImg {
    fn target_args(&self, t: &Target, region: Option<Region>) -> Result<TargetArgs, QemuError> {
        Ok(match &t.chap {
            None if region.is_none() => TargetArgs {
                objects: vec![],
                opts: false,
                spec: t.url(),
                _secret: None,
            },
            None => TargetArgs {
                objects: vec![],
                opts: true,
                spec: t.image_opts(None, region),
                _secret: None,
            },
            Some((user, password)) => {
                let file = SecretFile::write(&self.secret_dir, password)?;
                TargetArgs {
                    objects: vec![
                        "--object".into(),
                        format!("secret,id=chap0,file={}", file.0.display()),
                    ],
                    opts: true,
                    spec: t.image_opts(Some((user, "chap0")), region),
                    _secret: Some(file),
                }
            }
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.tool);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env("LC_ALL", "C");
        c
    }

    /// Run to the end within `limit`: stdout, or the tool's words.
    async fn run(&self, what: &str, mut c: Command, limit: Duration) -> Result<String, QemuError> {
        let spawned = c.spawn().map_err(|source| QemuError::Spawn {
            tool: self.tool.display().to_string(),
            source,
        })?;
        let out = tokio::time::timeout(limit, spawned.wait_with_output())
            .await
            .map_err(|_| QemuError::Timeout {
                what: what.to_owned(),
                after: limit,
            })?
            .map_err(|source| QemuError::Spawn {
                tool: self.tool.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(QemuError::Failed {
                what: what.to_owned(),
                words: words(&out.stderr, out.status),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Format and virtual size of a local image file; only raw and qcow2
    /// without a backing file pass.
    pub async fn image_info(&self, file: &Path) -> Result<ImageInfo, QemuError> {
        let mut c = self.command();
        c.args(["info", "--output=json"]).arg(file);
        let what = "qemu-img info of the image";
        let out = self.run(what, c, Duration::from_secs(60)).await?;
        let info = parse_info(what, &out)?;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if let Some(b) = v["backing-filename"].as_str() {
            return Err(QemuError::Backing(b.to_owned()));
        }
        if !["raw", "qcow2"].contains(&info.format.as_str()) {
            return Err(QemuError::Format(info.format));
        }
        Ok(info)
    }

    /// The target's size in bytes (a login and READ CAPACITY).
    pub async fn target_size(&self, t: &Target, limit: Duration) -> Result<u64, QemuError> {
        let a = self.target_args(t, None)?;
        let mut c = self.command();
        c.args(["info", "--output=json"]).args(&a.objects);
        if a.opts {
            c.arg("--image-opts");
        }
        c.arg(&a.spec);
        let what = format!("reading the size of {}", t.url());
        let out = self.run(&what, c, limit).await?;
        Ok(parse_info(&what, &out)?.virtual_size)
    }

    /// `convert -n -O raw image target` (or into `region` of it), calling
    /// `progress` with each
    /// percentage qemu-img prints. libiscsi keeps reconnecting to a target
    /// that went away, silently: no new percentage for `limits.stall` ends
    /// the write (qemu-img is killed).
    pub async fn write(
        &self,
        image: &Path,
        format: &str,
        t: &Target,
        region: Option<Region>,
        limits: WriteLimits,
        mut progress: impl FnMut(f64) + Send,
    ) -> Result<(), QemuError> {
        let limit = limits.total;
        let a = self.target_args(t, region)?;
        let mut c = self.command();
        c.args(["convert", "-p", "-n", "-f", format])
            .args(&a.objects);
        if a.opts {
            c.arg("--target-image-opts");
        } else {
            c.args(["-O", "raw"]);
        }
        c.arg(image).arg(&a.spec);
        let what = format!("writing the image to {}", t.url());
        let tool = self.tool.display().to_string();
        let mut child = c.spawn().map_err(|source| QemuError::Spawn {
            tool: tool.clone(),
            source,
        })?;
        let run = follow(&mut child, &what, limits.stall, &mut progress);
        let (status, err) =
            tokio::time::timeout(limit, run)
                .await
                .map_err(|_| QemuError::Timeout {
                    what: what.clone(),
                    after: limit,
                })??;
        let status = status.map_err(|source| QemuError::Spawn { tool, source })?;
        if !status.success() {
            return Err(QemuError::Failed {
                what,
                words: words(&err, status),
            });
        }
        Ok(())
    }

    /// Whether the target's first bytes equal the image's contents
    /// (`qemu-img compare`, a read of both); Err with qemu-img's words
    /// when they differ.
    pub async fn compare(
        &self,
        image: &Path,
        format: &str,
        t: &Target,
        region: Option<Region>,
        limit: Duration,
    ) -> Result<(), QemuError> {
        let a = self.target_args(t, region)?;
        let mut c = self.command();
        c.arg("compare").args(&a.objects);
        if a.opts {
            // --image-opts covers both names: the image as options too.
            let esc = image.display().to_string().replace(',', ",,");
            c.arg("--image-opts")
                .arg(format!("driver={format},file.filename={esc}"))
                .arg(&a.spec);
        } else {
            c.args(["-f", format, "-F", "raw"]).arg(image).arg(&a.spec);
        }
        let what = format!("comparing {} with the image", t.url());
        self.run(&what, c, limit).await.map(drop)
    }
}

/// Read a running `convert -p`'s progress to its end: its exit status and
/// stderr, or [`QemuError::Stalled`] (the child killed) when no output
/// came for `stall`.
async fn follow(
    child: &mut tokio::process::Child,
    what: &str,
    stall: Duration,
    progress: &mut (impl FnMut(f64) + Send),
) -> Result<(std::io::Result<std::process::ExitStatus>, Vec<u8>), QemuError> {
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let err_task = tokio::spawn(async move {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b).await;
        b
    });
    let mut parser = Progress::default();
    let mut buf = [0u8; 512];
    let mut percent = 0.0;
    loop {
        match tokio::time::timeout(stall, stdout.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => parser.feed(&buf[..n], &mut |p| {
                percent = p;
                progress(p)
            }),
            Err(_) => {
                let _ = child.kill().await;
                let err = err_task.await.unwrap_or_default();
                return Err(QemuError::Stalled {
                    what: what.to_owned(),
                    percent,
                    after: stall,
                    words: words_or(&err, "nothing"),
                });
            }
        }
    }
    let status = child.wait().await;
    let err = err_task.await.unwrap_or_default();
    Ok((status, err))
}

/// Bounds on a write: all of it, and the longest wait for progress.
#[derive(Clone, Copy, Debug)]
pub struct WriteLimits {
    pub total: Duration,
    pub stall: Duration,
}

/// The tool's last lines of stderr, or its exit status when silent.
fn words(stderr: &[u8], status: std::process::ExitStatus) -> String {
    words_or(stderr, &format!("exited with {status}"))
}

fn words_or(stderr: &[u8], silent: &str) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("; ");
    if tail.is_empty() {
        silent.to_owned()
    } else {
        tail.chars().take(600).collect()
    }
}

fn parse_info(what: &str, out: &str) -> Result<ImageInfo, QemuError> {
    let v: serde_json::Value = serde_json::from_str(out).map_err(|e| QemuError::Output {
        what: what.to_owned(),
        detail: e.to_string(),
    })?;
    match (v["format"].as_str(), v["virtual-size"].as_u64()) {
        (Some(f), Some(s)) => Ok(ImageInfo {
            format: f.to_owned(),
            virtual_size: s,
        }),
        _ => Err(QemuError::Output {
            what: what.to_owned(),
            detail: "no format or virtual-size".into(),
        }),
    }
}

/// qemu-img's `-p` output: `    (12.34/100%)\r`, possibly split across
/// reads.
#[derive(Default)]
struct Progress {
    pending: Vec<u8>,
}

impl Progress {
    fn feed(&mut self, bytes: &[u8], out: &mut impl FnMut(f64)) {
        for &b in bytes {
            if b == b'\r' || b == b'\n' {
                let line = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                if let Some(p) = parse_percent(&line) {
                    out(p);
                }
            } else {
                self.pending.push(b);
            }
        }
    }
}

fn parse_percent(line: &str) -> Option<f64> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("%)")?;
    let (done, _) = inner.split_once('/')?;
    done.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_split_anywhere_are_parsed() {
        let mut p = Progress::default();
        let mut seen = Vec::new();
        for chunk in [
            &b"    (0.00/100%)\r    (12."[..],
            b"50/100%)\r",
            b"    (100.00/100%)\r\n",
        ] {
            p.feed(chunk, &mut |v| seen.push(v));
        }
        assert_eq!(seen, [0.0, 12.5, 100.0]);
        assert_eq!(parse_percent("qemu-img: error"), None);
    }

    #[test]
    fn a_url_without_chap_and_image_opts_with_escaped_commas() {
        let mut t = Target {
            address: "127.0.0.1".into(),
            port: 3260,
            iqn: "iqn.2008-10.org.openstack:node-1".into(),
            lun: 1,
            chap: None,
        };
        assert_eq!(
            t.url(),
            "iscsi://127.0.0.1:3260/iqn.2008-10.org.openstack:node-1/1"
        );
        t.address = "::1".into();
        assert_eq!(
            t.url(),
            "iscsi://[::1]:3260/iqn.2008-10.org.openstack:node-1/1"
        );
        assert_eq!(
            t.image_opts(Some(("a,b", "s")), None),
            "driver=iscsi,transport=tcp,portal=[::1]:3260,target=iqn.2008-10.org.openstack:node-1,lun=1,user=a,,b,password-secret=s"
        );
        let r = Region {
            offset: 1 << 20,
            size: 512,
        };
        assert_eq!(
            t.image_opts(None, Some(r)),
            "driver=raw,offset=1048576,size=512,file.driver=iscsi,file.transport=tcp,file.portal=[::1]:3260,file.target=iqn.2008-10.org.openstack:node-1,file.lun=1"
        );
    }

    #[test]
    fn the_chap_password_is_in_a_0600_file_that_goes_with_the_arguments() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let q = QemuImg {
            tool: "qemu-img".into(),
            secret_dir: dir.path().to_owned(),
        };
        let t = Target {
            address: "127.0.0.1".into(),
            port: 3260,
            iqn: "iqn.x".into(),
            lun: 1,
            chap: Some(("u".into(), Secret::new("s3cret-chap"))),
        };
        let a = q.target_args(&t, None).unwrap();
        let argv = format!("{:?} {}", a.objects, a.spec);
        assert!(!argv.contains("s3cret-chap"), "{argv}");
        let file = a._secret.as_ref().unwrap().0.clone();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "s3cret-chap");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(argv.contains(&format!("file={}", file.display())), "{argv}");
        drop(a);
        assert!(!file.exists(), "the secret file outlived the call");
    }
}
