//! The rendered manifests (`scripts/k8s-check.sh` writes
//! `.run/k8s/<overlay>.json`, a JSON list of objects) as the rehearsal
//! reads them: workloads and their pod templates, Services, disruption
//! budgets, ConfigMaps. Only what the rehearsal acts on is read; a field
//! it would have to act on but does not model (a percentage budget, a
//! volume kind it cannot map) is an error naming the object.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::container::{container, port_ref};
pub use super::container::{Container, Env, EnvSource, Handler, Mount, PortRef, Probe};

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug)]
pub struct Manifests {
    pub namespace: String,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub budgets: Vec<Budget>,
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub kind: String,
    pub name: String,
    pub replicas: u32,
    /// `podManagementPolicy: Parallel` (StatefulSets); Deployments start
    /// every pod at once too.
    pub parallel: bool,
    /// A StatefulSet's governing (headless) Service.
    pub service_name: Option<String>,
    pub labels: Labels,
    pub grace: Duration,
    pub containers: Vec<Container>,
    pub volumes: Vec<Volume>,
}

#[derive(Clone, Debug)]
pub struct Volume {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Clone, Debug)]
pub enum VolumeSource {
    /// Keys projected as files: every key, or `items` (key → path).
    ConfigMap {
        name: String,
        items: Option<Vec<(String, String)>>,
    },
    Secret {
        name: String,
        items: Option<Vec<(String, String)>>,
    },
    EmptyDir,
    /// A volumeClaimTemplate's claim: kept when the pod is deleted.
    Claim,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub headless: bool,
    pub publish_not_ready: bool,
    pub selector: Labels,
    /// (port, targetPort).
    pub ports: Vec<(u16, PortRef)>,
}

#[derive(Clone, Debug)]
pub struct Budget {
    pub name: String,
    pub selector: Labels,
    pub max_unavailable: Option<u32>,
    pub min_available: Option<u32>,
}

impl Manifests {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the rendered manifests {}", path.display()))?;
        let docs: Vec<Value> = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a JSON list of objects", path.display()))?;
        Self::parse(&docs)
    }

    pub fn parse(docs: &[Value]) -> Result<Self> {
        let mut m = Manifests {
            namespace: String::new(),
            workloads: Vec::new(),
            services: Vec::new(),
            budgets: Vec::new(),
            config_maps: BTreeMap::new(),
        };
        for d in docs {
            let kind = s(d, "/kind")?;
            let name = s(d, "/metadata/name")?;
            let what = || format!("{kind}/{name}");
            if let Some(ns) = d.pointer("/metadata/namespace").and_then(Value::as_str) {
                m.namespace = ns.to_owned();
            }
            match kind.as_str() {
                "StatefulSet" | "Deployment" => m
                    .workloads
                    .push(workload(d, &kind, &name).with_context(what)?),
                "Service" => m.services.push(service(d, &name).with_context(what)?),
                "PodDisruptionBudget" => m.budgets.push(budget(d, &name).with_context(what)?),
                "ConfigMap" => {
                    let data = d.pointer("/data").cloned().unwrap_or(Value::Null);
                    let data: BTreeMap<String, String> =
                        serde_json::from_value(data).with_context(what)?;
                    m.config_maps.insert(name, data);
                }
                _ => {}
            }
        }
        if m.namespace.is_empty() {
            bail!("no object names a namespace");
        }
        Ok(m)
    }

    pub fn workload(&self, name: &str) -> Result<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.name == name)
            .ok_or_else(|| anyhow!("the manifests have no workload {name}"))
    }
}

pub(super) fn s(v: &Value, ptr: &str) -> Result<String> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{ptr} is missing or not a string"))
}

pub(super) fn strings(v: Option<&Value>) -> Result<Vec<String>> {
    match v {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone()).context("not a list of strings"),
    }
}

fn labels(v: Option<&Value>) -> Result<Labels> {
    match v {
        None => Ok(Labels::new()),
        Some(v) => serde_json::from_value(v.clone()).context("labels: not a string map"),
    }
}

pub(super) fn secs(v: &Value, key: &str, default: u64) -> Duration {
    Duration::from_secs(v.get(key).and_then(Value::as_u64).unwrap_or(default))
}

fn workload(d: &Value, kind: &str, name: &str) -> Result<Workload> {
    let pod = d
        .pointer("/spec/template/spec")
        .ok_or_else(|| anyhow!("no pod template"))?;
    if pod.get("enableServiceLinks").and_then(Value::as_bool) != Some(false) {
        bail!("the rehearsal does not model service-link variables: set enableServiceLinks: false");
    }
    let mut volumes = Vec::new();
    for v in pod
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        volumes.push(volume(v)?);
    }
    for c in d
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        volumes.push(Volume {
            name: s(c, "/metadata/name")?,
            source: VolumeSource::Claim,
        });
    }
    let mut containers = Vec::new();
    for c in pod
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let cname = s(c, "/name")?;
        containers.push(container(c).with_context(|| format!("container {cname}"))?);
    }
    Ok(Workload {
        kind: kind.to_owned(),
        name: name.to_owned(),
        replicas: d
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as u32,
        parallel: kind == "Deployment"
            || d.pointer("/spec/podManagementPolicy")
                .and_then(Value::as_str)
                == Some("Parallel"),
        service_name: d
            .pointer("/spec/serviceName")
            .and_then(Value::as_str)
            .map(str::to_owned),
        labels: labels(d.pointer("/spec/template/metadata/labels"))?,
        grace: secs(pod, "terminationGracePeriodSeconds", 30),
        containers,
        volumes,
    })
}

fn items(v: &Value) -> Result<Option<Vec<(String, String)>>> {
    let Some(list) = v.get("items").and_then(Value::as_array) else {
        return Ok(None);
    };
    list.iter()
        .map(|i| Ok((s(i, "/key")?, s(i, "/path")?)))
        .collect::<Result<_>>()
        .map(Some)
}

fn volume(v: &Value) -> Result<Volume> {
    let name = s(v, "/name")?;
    let source = if let Some(c) = v.get("configMap") {
        VolumeSource::ConfigMap {
            name: s(c, "/name")?,
            items: items(c)?,
        }
    } else if let Some(c) = v.get("secret") {
        VolumeSource::Secret {
            name: s(c, "/secretName")?,
            items: items(c)?,
        }
    } else if v.get("emptyDir").is_some() {
        VolumeSource::EmptyDir
    } else {
        bail!(
            "volume {name}: the rehearsal maps configMap, secret, emptyDir and claim volumes only"
        );
    };
    Ok(Volume { name, source })
}

fn service(d: &Value, name: &str) -> Result<Service> {
    let mut ports = Vec::new();
    for p in d
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let port = p.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
        let target = match p.get("targetPort") {
            None => PortRef::Number(port),
            t => port_ref(t)?,
        };
        ports.push((port, target));
    }
    Ok(Service {
        name: name.to_owned(),
        headless: d.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None"),
        publish_not_ready: d
            .pointer("/spec/publishNotReadyAddresses")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        selector: labels(d.pointer("/spec/selector"))?,
        ports,
    })
}

fn count(v: Option<&Value>) -> Result<Option<u32>> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_u64().map(|n| n as u32)),
        Some(other) => bail!("{other}: the rehearsal models whole-number budgets only"),
    }
}

fn budget(d: &Value, name: &str) -> Result<Budget> {
    Ok(Budget {
        name: name.to_owned(),
        selector: labels(d.pointer("/spec/selector/matchLabels"))?,
        max_unavailable: count(d.pointer("/spec/maxUnavailable"))?,
        min_available: count(d.pointer("/spec/minAvailable"))?,
    })
}

/// Whether `selector` selects a pod with `labels` (an empty selector
/// selects nothing here: no Service or budget of ours has one).
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Budget {
    /// The eviction API's answer: may one more of `healthy` out of
    /// `expected` pods go now? (`healthy` counts ready pods not already
    /// being deleted.)
    pub fn allows_eviction(&self, healthy: u32, expected: u32) -> bool {
        let min = match (self.min_available, self.max_unavailable) {
            (Some(min), _) => min,
            (None, Some(max)) => expected.saturating_sub(max),
            (None, None) => 0,
        };
        healthy > min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max: Option<u32>, min: Option<u32>) -> Budget {
        Budget {
            name: "b".into(),
            selector: Labels::new(),
            max_unavailable: max,
            min_available: min,
        }
    }

    #[test]
    fn budgets_count_like_the_eviction_api() {
        // maxUnavailable 1 of 3: one may go, not a second.
        assert!(budget(Some(1), None).allows_eviction(3, 3));
        assert!(!budget(Some(1), None).allows_eviction(2, 3));
        // minAvailable 2 of 3: the same.
        assert!(budget(None, Some(2)).allows_eviction(3, 3));
        assert!(!budget(None, Some(2)).allows_eviction(2, 3));
        // dev: maxUnavailable 1 of 1 lets the only member go.
        assert!(budget(Some(1), None).allows_eviction(1, 1));
    }

    #[test]
    fn refuses_what_it_cannot_model() {
        let sts = serde_json::json!([{
            "kind": "StatefulSet", "metadata": {"name": "x", "namespace": "n"},
            "spec": {"template": {"spec": {"containers": []}}}
        }]);
        let err = format!(
            "{:#}",
            Manifests::parse(sts.as_array().unwrap()).unwrap_err()
        );
        assert!(err.contains("enableServiceLinks"), "{err}");
        let pdb = serde_json::json!([{
            "kind": "PodDisruptionBudget", "metadata": {"name": "p", "namespace": "n"},
            "spec": {"maxUnavailable": "50%", "selector": {"matchLabels": {"a": "b"}}}
        }]);
        let err = format!(
            "{:#}",
            Manifests::parse(pdb.as_array().unwrap()).unwrap_err()
        );
        assert!(err.contains("whole-number"), "{err}");
    }
}
