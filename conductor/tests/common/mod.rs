//! Harness for the conductor's acceptance tests: the conductor in-process
//! (`conductor::run` on a 127.0.0.1 listener, a temp state dir, restartable),
//! the OpenStack clients from `.venv-clients`, and the rig (through
//! `porthole_tests`: BMC leases, console-svc processes, serial wires).
//!
//! Tests skip with a notice when `PORTHOLE_RIG_JSON` or `.venv-clients` is
//! missing (scripts/test.sh provides both).

#![allow(dead_code)]

pub mod sushy;

use conductor::config::Layered as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use conductor::config::Config;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `.venv-clients/bin`, or `None` with a notice.
pub fn clients() -> Option<PathBuf> {
    let venv = std::env::var_os("PORTHOLE_VENV_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-clients"));
    let bin = venv.join("bin");
    if bin.join("openstack").exists() {
        Some(bin)
    } else {
        eprintln!(
            "notice: {} has no openstack client; skipping (run scripts/venv-clients.sh)",
            venv.display()
        );
        assert!(
            std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
            "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set (CI): see the notice above"
        );
        None
    }
}

/// A conductor served in-process; `stop` then `start` again keeps its database.
pub struct TestConductor {
    pub dir: tempfile::TempDir,
    pub console_svc: String,
    /// More `(section, key, value)` settings, e.g. the console TLS files.
    pub extra: Vec<(&'static str, &'static str, toml::Value)>,
    pub url: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), conductor::RunError>>>,
}

impl TestConductor {
    pub async fn start(console_svc: &str) -> Result<Self> {
        Self::start_with(console_svc, Vec::new()).await
    }

    /// [`TestConductor::start`] with more settings.
    pub async fn start_with(
        console_svc: &str,
        extra: Vec<(&'static str, &'static str, toml::Value)>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("porthole-conductor-")
            .tempdir()?;
        let mut c = Self {
            dir,
            console_svc: console_svc.to_owned(),
            extra,
            url: String::new(),
            shutdown: CancellationToken::new(),
            task: None,
        };
        c.restart().await?;
        Ok(c)
    }

    pub fn config(&self) -> Result<Config> {
        let s = |v: &str| toml::Value::String(v.to_owned());
        let db = self.dir.path().join("conductor.sqlite");
        let mut overrides = vec![
            ("console", "endpoint", s(&self.console_svc)),
            ("database", "path", s(&db.display().to_string())),
            ("power", "poll_interval", s("200ms")),
            ("power", "state_timeout", s("30s")),
        ];
        overrides.extend(self.extra.iter().cloned());
        Ok(Config::load(None, Vec::new(), &overrides)?)
    }

    /// Start (again) on a fresh port with the same database.
    pub async fn restart(&mut self) -> Result<()> {
        if self.task.is_some() {
            bail!("the conductor is running");
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        self.url = format!("http://{}", listener.local_addr()?);
        self.shutdown = CancellationToken::new();
        let config = self.config()?;
        self.task = Some(tokio::spawn(conductor::run(
            listener,
            config,
            self.shutdown.clone(),
        )));
        Ok(())
    }

    pub async fn stop(&mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .context("conductor stop")???;
        }
        Ok(())
    }
}

impl TestConductor {
    /// The openstack CLI in `bin` pointed at this conductor.
    pub fn cli(&self, bin: PathBuf) -> Cli {
        Cli {
            bin,
            url: self.url.clone(),
        }
    }
}

impl Drop for TestConductor {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `openstack --os-auth-type none --os-endpoint URL baremetal ...` results.
pub struct Cli {
    pub bin: PathBuf,
    pub url: String,
}

pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(out: Output) -> Self {
        Self {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("not JSON: {}\nstderr: {}", self.stdout, self.stderr))
    }
}

impl Cli {
    pub async fn run(&self, args: &[&str]) -> Result<Ran> {
        let mut cmd = tokio::process::Command::new(self.bin.join("openstack"));
        cmd.args([
            "--os-auth-type",
            "none",
            "--os-endpoint",
            &self.url,
            "baremetal",
        ])
        .args(args)
        .env_remove("OS_CLOUD")
        .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .with_context(|| format!("openstack baremetal {} took too long", args.join(" ")))??;
        let ran = Ran::from(out);
        eprintln!(
            "$ openstack baremetal {}\n{}{}",
            args.join(" "),
            ran.stdout,
            ran.stderr
        );
        Ok(ran)
    }

    /// Run and require success.
    pub async fn ok(&self, args: &[&str]) -> Result<Ran> {
        let r = self.run(args).await?;
        if !r.ok {
            bail!(
                "openstack baremetal {} failed: {}",
                args.join(" "),
                r.stderr
            );
        }
        Ok(r)
    }

    /// `-f json` output of a successful command.
    pub async fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-f", "json"]);
        self.ok(&a).await?.json()
    }

    /// A python snippet in the clients' venv; its stdout as JSON.
    pub async fn python(&self, code: &str, args: &[&str]) -> Result<Value> {
        let mut cmd = tokio::process::Command::new(self.bin.join("python"));
        cmd.arg("-c").arg(code).args(args).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .context("python took too long")??;
        let ran = Ran::from(out);
        if !ran.ok {
            bail!("python failed: {}", ran.stderr);
        }
        ran.json()
    }
}

/// Poll `f` until it gives `Some`, for up to `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A BMC's `node_state_dir` from rig.json (not in porthole_tests' Bmc).
pub fn node_state_dir(bmc_name: &str) -> Result<PathBuf> {
    let path = std::env::var("PORTHOLE_RIG_JSON")?;
    let rig: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let bmcs = rig["bmcs"].as_array().context("rig.json: bmcs")?;
    let bmc = bmcs
        .iter()
        .find(|b| b["name"] == bmc_name)
        .context("rig.json: no such BMC")?;
    Ok(PathBuf::from(
        bmc["node_state_dir"].as_str().context("node_state_dir")?,
    ))
}

pub fn power_file(bmc_name: &str) -> Result<String> {
    Ok(
        std::fs::read_to_string(node_state_dir(bmc_name)?.join("power"))?
            .trim()
            .to_owned(),
    )
}

/// The faultstring inside an Ironic error body.
pub fn faultstring(body: &Value) -> Result<String> {
    let inner: Value =
        serde_json::from_str(body["error_message"].as_str().context("no error_message")?)?;
    Ok(inner["faultstring"]
        .as_str()
        .context("no faultstring")?
        .to_owned())
}

/// The conductor binary as a child process (for kill -9, SIGTERM and its
/// real stderr), with a config file in its own temp dir; killed on drop.
pub struct ConductorProc {
    pub dir: tempfile::TempDir,
    pub url: String,
    child: Option<std::process::Child>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ConductorProc {
    /// Start the conductor against `console_svc` and wait until it answers.
    pub async fn start(console_svc: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("porthole-conductor-proc-")
            .tempdir()?;
        // Port 0: the conductor picks a free one and logs it.
        let toml = format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n[database]\npath = \"{}\"\n[console]\nendpoint = \"{console_svc}\"\n",
            dir.path().join("conductor.sqlite").display()
        );
        std::fs::write(dir.path().join("conductor.toml"), toml)?;
        let mut c = Self {
            dir,
            url: String::new(),
            child: None,
            log: Default::default(),
        };
        c.restart().await?;
        Ok(c)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("conductor.sqlite")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Start again (same config and database, a new port) and wait until it answers.
    pub async fn restart(&mut self) -> Result<()> {
        use std::io::BufRead;
        if self.child.is_some() {
            bail!("the conductor is running");
        }
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_conductor"))
            .arg("--config")
            .arg(self.dir.path().join("conductor.toml"))
            .env_remove("PORTHOLE_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("spawning the conductor binary")?;
        let stderr = child.stderr.take().context("stderr")?;
        let seen = self.log.lock().expect("log lock").len();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("conductor| {line}");
                log.lock().expect("log lock").push(line);
            }
        });
        self.child = Some(child);
        let log = self.log.clone();
        let addr = eventually(
            Duration::from_secs(30),
            "the conductor's listen address",
            || {
                let log = log.clone();
                async move {
                    let lines = log.lock().expect("log lock");
                    Ok(lines[seen..].iter().find_map(|l| {
                        let rest = l.split("conductor API listening addr=").nth(1)?;
                        Some(rest.split_whitespace().next()?.to_owned())
                    }))
                }
            },
        )
        .await?;
        self.url = format!("http://{addr}");
        let http = reqwest::Client::new();
        let url = self.url.clone();
        eventually(Duration::from_secs(30), "the conductor answers", || {
            let http = http.clone();
            let url = url.clone();
            async move { Ok(http.get(&url).send().await.ok().map(drop)) }
        })
        .await
    }

    /// Every stderr line so far, all runs.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// `kill -9` by pid, and reap.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM; the exit status if it exits within `within`, else SIGKILL
    /// and `None`.
    pub fn terminate(&mut self, within: Duration) -> Result<Option<std::process::ExitStatus>> {
        let mut child = self.child.take().context("not running")?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill()?;
        child.wait()?;
        Ok(None)
    }
}

impl Drop for ConductorProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
