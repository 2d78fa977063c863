//! One pod of the rehearsal: its container run as a local process with the
//! command, args and environment the manifest gives (downward-API fields,
//! Secret and ConfigMap values filled in; `$(VAR)` expanded; DNS names and
//! mount paths mapped in args, env values and ConfigMap files, see
//! [`super::expand`]), its volumes as directories
//! under the pod's own, its probes run by a tracker task as the kubelet
//! runs them, and its deletion as the kubelet does it (preStop, SIGTERM,
//! SIGKILL at the grace period). Created by [`super::cluster`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::expand::{expand, map_paths, resolve};
use super::manifest::{Container, EnvSource, Manifests, VolumeSource, Workload};
use super::probe;

/// The Secrets the rehearsal supplies: name → key → bytes.
pub type Secrets = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// Variables by name.
type Vars = BTreeMap<String, String>;

/// What a Debian-based image has on PATH.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the images' programs come from on this host.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// Porthole's own (`porthole/<service>` images): `target/debug`.
    pub porthole: PathBuf,
}

impl Binaries {
    /// The host program for `name` run in a container of `image`.
    pub fn program(&self, image: &str, name: &str) -> Result<PathBuf> {
        if image.starts_with("porthole/") {
            let p = self.porthole.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        let known = image.starts_with("porthole/") || image.contains("/etcd:");
        if !known {
            bail!("image {image}: the rehearsal knows no host programs for it");
        }
        IMAGE_PATH
            .split(':')
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("image {image} runs {name:?}, which is not on this host"))
    }
}

/// What the tracker saw, for readiness and the reports.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub ready: bool,
    pub started: bool,
    pub last_failure: Option<String>,
    pub exited: Option<String>,
    /// Every readiness change after the first ready: (when, ready, why).
    pub changes: Vec<(Instant, bool, String)>,
    pub terminating: bool,
    /// The liveness probe failed failureThreshold times in a row.
    pub liveness_failed: bool,
}

pub struct Pod {
    pub name: String,
    pub ip: String,
    pub workload: String,
    pub labels: BTreeMap<String, String>,
    pub container: Container,
    pub grace: Duration,
    pub root: PathBuf,
    image: String,
    program: PathBuf,
    argv: Vec<String>,
    pub env: Vec<(String, String)>,
    mounts: Vec<(String, String)>,
    names: BTreeMap<String, String>,
    pub status: Arc<Mutex<Status>>,
    pid: Option<i32>,
    cancel: CancellationToken,
}

/// Everything a pod is made from.
pub struct PodInput<'a> {
    pub manifests: &'a Manifests,
    pub workload: &'a Workload,
    pub name: String,
    pub ip: String,
    pub root: PathBuf,
    pub claims: PathBuf,
    pub names: &'a BTreeMap<String, String>,
    pub secrets: &'a Secrets,
    pub binaries: &'a Binaries,
}

fn field(
    path: &str,
    name: &str,
    ns: &str,
    ip: &str,
    labels: &BTreeMap<String, String>,
) -> Result<String> {
    Ok(match path {
        "metadata.name" => name.to_owned(),
        "metadata.namespace" => ns.to_owned(),
        "status.podIP" | "status.podIPs" => ip.to_owned(),
        "status.hostIP" => "127.0.0.1".to_owned(),
        "spec.nodeName" => "rehearsal-node".to_owned(),
        p => match p
            .strip_prefix("metadata.labels['")
            .and_then(|l| l.strip_suffix("']"))
        {
            Some(l) => labels.get(l).cloned().unwrap_or_default(),
            None => bail!("fieldRef {p}: not modelled by the rehearsal"),
        },
    })
}

impl Pod {
    /// Lay out the pod's volumes and work out its process; nothing runs yet.
    pub fn prepare(i: PodInput<'_>) -> Result<Pod> {
        let w = i.workload;
        let [c] = w.containers.as_slice() else {
            bail!("{}: the rehearsal runs pods of one container", w.name);
        };
        let what = format!("pod {} container {}", i.name, c.name);
        let _ = std::fs::remove_dir_all(&i.root);
        std::fs::create_dir_all(&i.root)?;
        let mounts = lay_out(&i, c, &what)?;
        let (vars, env) = environment(&i, c, &what, &mounts)?;
        let mut argv: Vec<String> = c
            .command
            .iter()
            .chain(&c.args)
            .map(|a| expand(a, &vars))
            .collect();
        if c.command.is_empty() {
            bail!("{what}: no command (the rehearsal does not read image entrypoints)");
        }
        let program = i
            .binaries
            .program(&c.image, &argv[0])
            .with_context(|| what.clone())?;
        argv = argv
            .iter()
            .map(|a| map_paths(&resolve(a, i.names), &mounts))
            .collect();
        Ok(Pod {
            name: i.name,
            ip: i.ip,
            workload: w.name.clone(),
            labels: w.labels.clone(),
            container: c.clone(),
            grace: w.grace,
            root: i.root,
            image: c.image.clone(),
            program,
            argv,
            env,
            mounts,
            names: i.names.clone(),
            status: Arc::default(),
            pid: None,
            cancel: CancellationToken::new(),
        })
    }

    fn base_env(&self, cmd: &mut tokio::process::Command) {
        cmd.env_clear()
            .env("PATH", IMAGE_PATH)
            .env("HOSTNAME", &self.name)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
    }

    /// Start the container's process and its probe tracker.
    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.log_path())?;
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        self.base_env(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("pod {}: starting {}", self.name, self.program.display()))?;
        let pid = child
            .id()
            .map(|p| p as i32)
            .ok_or_else(|| anyhow!("no pid"))?;
        crate::svc::note_pid(pid, true);
        self.pid = Some(pid);
        *self.status.lock().expect("status") = Status::default();
        self.cancel = CancellationToken::new();
        tokio::spawn(super::tracker::track(self.tracker_input(), child));
        Ok(())
    }

    fn tracker_input(&self) -> super::tracker::Input {
        super::tracker::Input {
            pod: self.name.clone(),
            ip: self.ip.clone(),
            container: self.container.clone(),
            status: self.status.clone(),
            cancel: self.cancel.clone(),
            exec: Arc::new({
                let me = self.exec_parts();
                move |argv: &[String]| me.command(argv)
            }),
        }
    }

    fn exec_parts(&self) -> ExecParts {
        ExecParts {
            program: self.program.clone(),
            first: self.argv[0].clone(),
            image: self.image.clone(),
            env: self.env.clone(),
            name: self.name.clone(),
            names: self.names.clone(),
            mounts: self.mounts.clone(),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("container.log")
    }

    /// The last `n` lines the container wrote.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn status(&self) -> Status {
        self.status.lock().expect("status").clone()
    }

    /// Signal the container's process group (a paused or continued
    /// container); false when it is not running.
    pub fn signal(&self, sig: Signal) -> bool {
        match self.pid {
            Some(pid) if self.alive() => killpg(Pid::from_raw(pid), sig).is_ok(),
            _ => false,
        }
    }

    pub fn alive(&self) -> bool {
        self.pid.is_some() && self.status().exited.is_none()
    }

    /// Delete the pod as the kubelet does: it leaves the Service endpoints
    /// at once, preStop runs, then SIGTERM, and whatever still runs at the
    /// grace period is SIGKILLed (with the whole process group, as the
    /// container's namespace would be torn down). Returns how long preStop
    /// and the exit took; an error if it needed the SIGKILL.
    pub async fn delete(&mut self) -> Result<Termination> {
        let since = Instant::now();
        self.status.lock().expect("status").terminating = true;
        let mut t = Termination::default();
        if let Some(h) = self.container.pre_stop.clone() {
            let parts = self.exec_parts();
            let exec = move |argv: &[String]| parts.command(argv);
            let r = probe::run(&h, &self.ip, &self.container, &exec, self.grace).await;
            t.pre_stop = Some((since.elapsed(), r));
        }
        let Some(pid) = self.pid else { return Ok(t) };
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        let term_at = Instant::now();
        let deadline = since + self.grace;
        while self.status().exited.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t.exit_after_sigterm = term_at.elapsed();
        t.total = since.elapsed();
        let exited = self.status().exited.is_some();
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        self.cancel.cancel();
        crate::svc::note_pid(pid, false);
        self.pid = None;
        if !exited {
            bail!(
                "pod {}: still running at terminationGracePeriodSeconds ({:?}); SIGKILLed",
                self.name,
                self.grace
            );
        }
        Ok(t)
    }
}

/// The host directory of each mount point (`(container path, host path)`)
/// and the volumes' files: ConfigMap and Secret keys, empty dirs, claims.
fn lay_out(i: &PodInput<'_>, c: &Container, what: &str) -> Result<Vec<(String, String)>> {
    let w = i.workload;
    // Mount points first: ConfigMap files are mapped through them.
    let mut mounts = Vec::new();
    for m in &c.mounts {
        let v = w
            .volumes
            .iter()
            .find(|v| v.name == m.volume)
            .ok_or_else(|| {
                anyhow!(
                    "{what}: mounts volume {} that the pod does not have",
                    m.volume
                )
            })?;
        let dir = match v.source {
            VolumeSource::Claim => i.claims.join(format!("{}-{}", v.name, i.name)),
            _ => i.root.join("volumes").join(&v.name),
        };
        let host = match &m.sub_path {
            Some(sp) => dir.join(sp),
            None => dir,
        };
        mounts.push((m.path.clone(), host.display().to_string()));
    }
    for v in &w.volumes {
        let dir = match v.source {
            VolumeSource::Claim => i.claims.join(format!("{}-{}", v.name, i.name)),
            _ => i.root.join("volumes").join(&v.name),
        };
        std::fs::create_dir_all(&dir)?;
        let files: Vec<(String, Vec<u8>)> = match &v.source {
            VolumeSource::ConfigMap { name, items } => {
                let data =
                    i.manifests.config_maps.get(name).ok_or_else(|| {
                        anyhow!("{what}: ConfigMap {name} is not in the manifests")
                    })?;
                project(
                    data.iter().map(|(k, s)| {
                        (
                            k.clone(),
                            map_paths(&resolve(s, i.names), &mounts).into_bytes(),
                        )
                    }),
                    items,
                )
                .with_context(|| format!("{what}: ConfigMap {name}"))?
            }
            VolumeSource::Secret { name, items } => {
                let data = i.secrets.get(name).ok_or_else(|| {
                    anyhow!("{what}: Secret {name} (the operator creates it) was not supplied")
                })?;
                project(data.iter().map(|(k, b)| (k.clone(), b.clone())), items)
                    .with_context(|| format!("{what}: Secret {name}"))?
            }
            VolumeSource::EmptyDir | VolumeSource::Claim => Vec::new(),
        };
        for (path, bytes) in files {
            let f = dir.join(path);
            if let Some(p) = f.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::write(&f, bytes)?;
        }
    }
    Ok(mounts)
}

/// The container's environment as the kubelet fills it in: `$(VAR)` of
/// the variables before it, fields, Secret and ConfigMap keys; returned
/// raw (for expanding command and args) and as the process gets it
/// (names resolved, paths mapped).
fn environment(
    i: &PodInput<'_>,
    c: &Container,
    what: &str,
    mounts: &[(String, String)],
) -> Result<(Vars, Vec<(String, String)>)> {
    let w = i.workload;
    let mut vars = BTreeMap::new();
    let mut env = Vec::new();
    for e in &c.env {
        let raw = match &e.source {
            EnvSource::Value(v) => expand(v, &vars),
            EnvSource::Field(f) => field(f, &i.name, &i.manifests.namespace, &i.ip, &w.labels)
                .with_context(|| format!("{what}: env {}", e.name))?,
            EnvSource::Secret { name, key } => i
                .secrets
                .get(name)
                .and_then(|s| s.get(key))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .ok_or_else(|| anyhow!("{what}: env {} needs Secret {name} key {key}", e.name))?,
            EnvSource::ConfigMap { name, key } => i
                .manifests
                .config_maps
                .get(name)
                .and_then(|m| m.get(key))
                .cloned()
                .ok_or_else(|| {
                    anyhow!("{what}: env {} needs ConfigMap {name} key {key}", e.name)
                })?,
        };
        vars.insert(e.name.clone(), raw.clone());
        env.push((e.name.clone(), map_paths(&resolve(&raw, i.names), mounts)));
    }
    Ok((vars, env))
}

/// What [`Pod::delete`] measured.
#[derive(Debug, Default)]
pub struct Termination {
    pub pre_stop: Option<(Duration, Result<(), String>)>,
    pub exit_after_sigterm: Duration,
    pub total: Duration,
}

/// A command run inside the container (exec probes, preStop): its program
/// mapped like the container's, no `$(VAR)` expansion (the kubelet does
/// none there), DNS names and mount paths mapped, the container's
/// environment. Owned, for the tracker task.
#[derive(Clone)]
struct ExecParts {
    program: PathBuf,
    first: String,
    image: String,
    env: Vec<(String, String)>,
    name: String,
    names: BTreeMap<String, String>,
    mounts: Vec<(String, String)>,
}

impl ExecParts {
    fn command(&self, argv: &[String]) -> Result<tokio::process::Command, String> {
        let (first, rest) = argv.split_first().ok_or("empty exec command")?;
        let program = if *first == self.first {
            self.program.clone()
        } else {
            Binaries {
                porthole: self
                    .program
                    .parent()
                    .map(Path::to_owned)
                    .unwrap_or_default(),
            }
            .program(&self.image, first)
            .map_err(|e| e.to_string())?
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(
            rest.iter()
                .map(|a| map_paths(&resolve(a, &self.names), &self.mounts)),
        )
        .env_clear()
        .env("PATH", IMAGE_PATH)
        .env("HOSTNAME", &self.name)
        .envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }
}

/// Files of a ConfigMap or Secret volume: every key, or just `items`.
fn project(
    data: impl Iterator<Item = (String, Vec<u8>)>,
    items: &Option<Vec<(String, String)>>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let data: BTreeMap<String, Vec<u8>> = data.collect();
    match items {
        None => Ok(data.into_iter().collect()),
        Some(items) => items
            .iter()
            .map(|(k, p)| {
                data.get(k)
                    .map(|b| (p.clone(), b.clone()))
                    .ok_or_else(|| anyhow!("has no key {k}"))
            })
            .collect(),
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(pid) = self.pid.take() {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            crate::svc::note_pid(pid, false);
        }
    }
}
