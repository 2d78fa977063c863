//! A container of a pod template as the rehearsal reads it: command,
//! args, environment (values, downward-API fields, Secret and ConfigMap
//! keys), ports, probes and the preStop hook, volume mounts. Parsed for
//! [`super::manifest`].

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::manifest::{s, secs, strings};

#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<Env>,
    pub ports: Vec<(String, u16)>,
    pub startup: Option<Probe>,
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
    pub pre_stop: Option<Handler>,
    pub mounts: Vec<Mount>,
}

#[derive(Clone, Debug)]
pub struct Env {
    pub name: String,
    pub source: EnvSource,
}

#[derive(Clone, Debug)]
pub enum EnvSource {
    Value(String),
    Field(String),
    Secret { name: String, key: String },
    ConfigMap { name: String, key: String },
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub handler: Handler,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Handler {
    Grpc { port: u16, service: String },
    Http { path: String, port: PortRef },
    Tcp { port: PortRef },
    Exec { command: Vec<String> },
}

#[derive(Clone, Debug, PartialEq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug)]
pub struct Mount {
    pub volume: String,
    pub path: String,
    pub sub_path: Option<String>,
}

impl Container {
    /// A named or numbered port of this container.
    pub fn port(&self, p: &PortRef) -> Result<u16> {
        match p {
            PortRef::Number(n) => Ok(*n),
            PortRef::Name(name) => self
                .ports
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .ok_or_else(|| anyhow!("container {} has no port named {name}", self.name)),
        }
    }
}

pub(super) fn container(c: &Value) -> Result<Container> {
    let mut env = Vec::new();
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let name = s(e, "/name")?;
        let source = if let Some(v) = e.get("value") {
            EnvSource::Value(v.as_str().unwrap_or_default().to_owned())
        } else if let Some(f) = e.pointer("/valueFrom/fieldRef/fieldPath") {
            EnvSource::Field(f.as_str().unwrap_or_default().to_owned())
        } else if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
            EnvSource::Secret {
                name: s(r, "/name")?,
                key: s(r, "/key")?,
            }
        } else if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
            EnvSource::ConfigMap {
                name: s(r, "/name")?,
                key: s(r, "/key")?,
            }
        } else {
            EnvSource::Value(String::new())
        };
        env.push(Env { name, source });
    }
    let mut ports = Vec::new();
    for p in c
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let n = p.get("containerPort").and_then(Value::as_u64).unwrap_or(0) as u16;
        ports.push((
            p.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            n,
        ));
    }
    let mut mounts = Vec::new();
    for m in c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        mounts.push(Mount {
            volume: s(m, "/name")?,
            path: s(m, "/mountPath")?,
            sub_path: m.get("subPath").and_then(Value::as_str).map(str::to_owned),
        });
    }
    let probe = |key: &str| -> Result<Option<Probe>> {
        c.get(key)
            .map(|p| parse_probe(p).with_context(|| key.to_owned()))
            .transpose()
    };
    Ok(Container {
        name: s(c, "/name")?,
        image: s(c, "/image")?,
        command: strings(c.get("command"))?,
        args: strings(c.get("args"))?,
        env,
        ports,
        startup: probe("startupProbe")?,
        readiness: probe("readinessProbe")?,
        liveness: probe("livenessProbe")?,
        pre_stop: c
            .pointer("/lifecycle/preStop")
            .map(handler)
            .transpose()
            .context("preStop")?,
        mounts,
    })
}

pub(super) fn port_ref(v: Option<&Value>) -> Result<PortRef> {
    match v {
        Some(Value::Number(n)) => Ok(PortRef::Number(
            n.as_u64()
                .filter(|n| *n <= 65535)
                .ok_or_else(|| anyhow!("bad port {n}"))? as u16,
        )),
        Some(Value::String(name)) => Ok(PortRef::Name(name.clone())),
        _ => bail!("no port"),
    }
}

fn handler(v: &Value) -> Result<Handler> {
    if let Some(g) = v.get("grpc") {
        let port = g.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
        let service = g.get("service").and_then(Value::as_str).unwrap_or_default();
        return Ok(Handler::Grpc {
            port,
            service: service.to_owned(),
        });
    }
    if let Some(h) = v.get("httpGet") {
        if h.get("scheme").and_then(Value::as_str).unwrap_or("HTTP") != "HTTP" {
            bail!("httpGet: the rehearsal probes plain HTTP only");
        }
        return Ok(Handler::Http {
            path: h
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_owned(),
            port: port_ref(h.get("port"))?,
        });
    }
    if let Some(t) = v.get("tcpSocket") {
        return Ok(Handler::Tcp {
            port: port_ref(t.get("port"))?,
        });
    }
    if let Some(e) = v.get("exec") {
        return Ok(Handler::Exec {
            command: strings(e.get("command"))?,
        });
    }
    bail!("no grpc, httpGet, tcpSocket or exec handler")
}

fn parse_probe(p: &Value) -> Result<Probe> {
    Ok(Probe {
        handler: handler(p)?,
        initial_delay: secs(p, "initialDelaySeconds", 0),
        period: secs(p, "periodSeconds", 10),
        timeout: secs(p, "timeoutSeconds", 1),
        failure_threshold: p
            .get("failureThreshold")
            .and_then(Value::as_u64)
            .unwrap_or(3) as u32,
        success_threshold: p
            .get("successThreshold")
            .and_then(Value::as_u64)
            .unwrap_or(1) as u32,
    })
}
