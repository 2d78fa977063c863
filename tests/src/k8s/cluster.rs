//! A cluster without a cluster: every pod of the rendered manifests'
//! workloads (StatefulSets and Deployments) as local processes, each on its
//! own address (127.0.15.x from [`Options::first_ip`]), Services' cluster
//! IPs as [`super::proxy`] listeners further up the same /24, the cluster's
//! DNS names mapped to those addresses, pods started as the controllers
//! start them (Parallel at once, OrderedReady one after the other once the
//! previous is ready), evictions checked against the disruption budgets.
//! Used by the rehearsal test (`tests/tests/k8s_rehearsal.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use tokio_util::sync::CancellationToken;

use super::manifest::{selects, Manifests, PortRef};
use super::pod::{Binaries, Pod, PodInput, Secrets, Termination};
use super::proxy::{self, Endpoint};

pub struct Options {
    pub binaries: Binaries,
    pub secrets: Secrets,
    /// Pods get 127.0.15.{first_ip}, .{first_ip + 1}, ...
    pub first_ip: u8,
    /// Services' cluster IPs from 127.0.15.{first_vip}.
    pub first_vip: u8,
    /// Start only these workloads (all when `None`).
    pub only: Option<Vec<String>>,
}

pub const NET: &str = "127.0.15";

pub struct Cluster {
    pub manifests: Manifests,
    pub pods: Vec<Pod>,
    /// Service name → its cluster IP.
    pub vips: BTreeMap<String, String>,
    names: BTreeMap<String, String>,
    secrets: Secrets,
    binaries: Binaries,
    root: tempfile::TempDir,
    cancel: CancellationToken,
}

impl Cluster {
    /// Lay out every pod and start those their controller starts first
    /// (every pod of a Parallel workload, ordinal 0 of the others), and
    /// the Services' listeners.
    pub async fn start(manifests: Manifests, opts: Options) -> Result<Cluster> {
        let root = tempfile::Builder::new().prefix("porthole-k8s-").tempdir()?;
        let ns = manifests.namespace.clone();
        let mut plan = Vec::new();
        let mut ip = opts.first_ip;
        for w in &manifests.workloads {
            if opts.only.as_ref().is_some_and(|o| !o.contains(&w.name)) {
                continue;
            }
            for k in 0..w.replicas {
                let name = match w.kind.as_str() {
                    "StatefulSet" => format!("{}-{k}", w.name),
                    _ => format!("{}-rehearsal{k}", w.name),
                };
                plan.push((w.name.clone(), name, format!("{NET}.{ip}")));
                ip = ip
                    .checked_add(1)
                    .ok_or_else(|| anyhow!("out of addresses"))?;
            }
        }
        if ip > opts.first_vip {
            bail!("pod addresses run into the Service addresses");
        }
        let mut names = BTreeMap::new();
        let fq = |n: &str| {
            [
                n.to_owned(),
                format!("{n}.{ns}"),
                format!("{n}.{ns}.svc"),
                format!("{n}.{ns}.svc.cluster.local"),
            ]
        };
        let mut vips = BTreeMap::new();
        for (j, s) in manifests
            .services
            .iter()
            .filter(|s| !s.headless)
            .enumerate()
        {
            let vip = format!("{NET}.{}", opts.first_vip as usize + j);
            for n in fq(&s.name) {
                names.insert(n, vip.clone());
            }
            vips.insert(s.name.clone(), vip);
        }
        for (wname, pod, ip) in &plan {
            let w = manifests.workload(wname)?;
            let Some(svc) = w.service_name.as_ref() else {
                continue;
            };
            let published = manifests
                .services
                .iter()
                .any(|s| &s.name == svc && s.headless && s.publish_not_ready);
            if published {
                for n in fq(&format!("{pod}.{svc}")) {
                    names.insert(n, ip.clone());
                }
            }
        }
        let mut c = Cluster {
            pods: Vec::new(),
            vips,
            names,
            secrets: opts.secrets,
            binaries: opts.binaries,
            root,
            cancel: CancellationToken::new(),
            manifests,
        };
        for (wname, pod, ip) in plan {
            let p = c.prepare(&wname, &pod, &ip)?;
            c.pods.push(p);
        }
        c.start_services().await?;
        for i in 0..c.pods.len() {
            let w = c.manifests.workload(&c.pods[i].workload)?;
            if w.parallel || c.pods[i].name.ends_with("-0") {
                c.pods[i].start()?;
            }
        }
        Ok(c)
    }

    fn prepare(&self, workload: &str, pod: &str, ip: &str) -> Result<Pod> {
        Pod::prepare(PodInput {
            manifests: &self.manifests,
            workload: self.manifests.workload(workload)?,
            name: pod.to_owned(),
            ip: ip.to_owned(),
            root: self.root.path().join("pods").join(pod),
            claims: self.root.path().join("claims"),
            names: &self.names,
            secrets: &self.secrets,
            binaries: &self.binaries,
        })
    }

    async fn start_services(&self) -> Result<()> {
        for s in self.manifests.services.iter().filter(|s| !s.headless) {
            let vip = &self.vips[&s.name];
            for (port, target) in &s.ports {
                let mut endpoints = Vec::new();
                for p in self.pods.iter().filter(|p| selects(&s.selector, &p.labels)) {
                    let tp = match target {
                        PortRef::Number(n) => *n,
                        r => p.container.port(r)?,
                    };
                    endpoints.push(Endpoint {
                        pod: p.name.clone(),
                        addr: format!("{}:{tp}", p.ip),
                        status: p.status.clone(),
                    });
                }
                proxy::serve(format!("{vip}:{port}"), endpoints, self.cancel.clone()).await?;
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> PathBuf {
        self.root.path().to_owned()
    }

    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow!("no pod {name}"))
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.pods
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| anyhow!("no pod {name}"))
    }

    /// Pods of `workload`.
    pub fn pods_of<'a>(&'a self, workload: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| p.workload == workload)
    }

    /// Until every pod is started and ready (starting OrderedReady pods as
    /// their predecessor gets ready); else an error with each laggard's
    /// state, last probe failure and log tail.
    pub async fn settle(&mut self, within: Duration) -> Result<Duration> {
        let since = Instant::now();
        loop {
            for i in 1..self.pods.len() {
                let prev_ready = self.pods[i - 1].workload == self.pods[i].workload
                    && self.pods[i - 1].status().ready;
                if !self.pods[i].alive() && self.pods[i].status().exited.is_none() && prev_ready {
                    self.pods[i].start()?;
                }
            }
            if self.pods.iter().all(|p| p.status().ready) {
                return Ok(since.elapsed());
            }
            let dead = self.pods.iter().any(|p| p.status().exited.is_some());
            if dead || since.elapsed() > within {
                bail!(
                    "not every pod became ready within {:?}:\n{}",
                    since.elapsed(),
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One line per pod that is not ready, with its log's last lines.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for p in &self.pods {
            let s = p.status();
            if s.ready {
                continue;
            }
            let state = match (&s.exited, p.alive(), s.started) {
                (Some(e), _, _) => format!("exited ({e})"),
                (None, false, _) => "not started (its predecessor is not ready)".into(),
                (None, true, false) => "running, startup probe not passed".into(),
                (None, true, true) => "running, not ready".into(),
            };
            out += &format!(
                "- {} ({}): {state}; last failure: {}\n  log: {}\n",
                p.name,
                p.ip,
                s.last_failure.as_deref().unwrap_or("none"),
                p.log_tail(6).replace('\n', "\n       ")
            );
        }
        out
    }

    /// The eviction API: refused when a disruption budget selecting the pod
    /// would go below its minimum; else the pod is deleted (preStop,
    /// SIGTERM, SIGKILL at the grace period).
    pub async fn evict(&mut self, name: &str) -> Result<Termination> {
        let i = self.index(name)?;
        let labels = self.pods[i].labels.clone();
        for b in self
            .manifests
            .budgets
            .iter()
            .filter(|b| selects(&b.selector, &labels))
        {
            let selected: Vec<&Pod> = self
                .pods
                .iter()
                .filter(|p| selects(&b.selector, &p.labels))
                .collect();
            let healthy = selected
                .iter()
                .filter(|p| {
                    let s = p.status();
                    s.ready && !s.terminating
                })
                .count() as u32;
            if !b.allows_eviction(healthy, selected.len() as u32) {
                bail!(
                    "Cannot evict pod {name} as it would violate the pod's disruption budget {} ({healthy} of {} healthy)",
                    b.name,
                    selected.len()
                );
            }
        }
        self.pods[i].delete().await
    }

    /// The StatefulSet controller's replacement of a deleted pod: the same
    /// name, address and claims, fresh emptyDirs; started at once.
    pub fn recreate(&mut self, name: &str) -> Result<()> {
        let i = self.index(name)?;
        let status = self.pods[i].status.clone();
        let (w, ip) = (self.pods[i].workload.clone(), self.pods[i].ip.clone());
        let mut p = self.prepare(&w, name, &ip)?;
        // The same status cell, so Service endpoints follow the new pod.
        p.status = status;
        self.pods[i] = p;
        self.pods[i].start()
    }

    /// `host:port` of Service `svc`'s port.
    pub fn service(&self, svc: &str, port: u16) -> Result<String> {
        let vip = self
            .vips
            .get(svc)
            .ok_or_else(|| anyhow!("no Service {svc} with a cluster IP"))?;
        Ok(format!("{vip}:{port}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
        // Pods kill their process groups as they drop.
        self.pods.clear();
    }
}
