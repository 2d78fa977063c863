//! Issue 11's nova acceptance: nova 34's real ironic virt driver
//! (`nova.virt.ironic.driver.IronicDriver`, run by `peers/nova_ironic.py`
//! in `.venv` from scripts/venv.sh) against a conductor started here, with
//! only Glance, Neutron and Placement stubbed. An `available`
//! `fake-hardware` node is deployed by `spawn` with a config drive (validate,
//! instance_info PATCH, VIF attach, provision `active` with `configdrive`),
//! brought back to `available` by `destroy`, and nova-compute's periodic calls
//! (`get_available_nodes`, `get_available_resource`, `update_provider_tree`
//! with `CUSTOM_<resource class>`) see it right before, while active and
//! after.
//!
//! Every check runs as far as the flow gets and all results are printed (a
//! failure names the request and the conductor's answer); the test fails
//! if any check failed. Skips with a notice without `.venv` (fails instead
//! with `PORTHOLE_REQUIRE_PEERS`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::{eventually, TestConductor};
use serde_json::{json, Value};

/// No console-svc is needed: nothing enables a console.
const NO_CONSOLE_SVC: &str = "http://127.0.0.1:9";
const RESOURCE_CLASS: &str = "baremetal.gold";
const RC_INVENTORY: &str = "CUSTOM_BAREMETAL_GOLD";
const TRAIT: &str = "CUSTOM_PORTHOLE_TEST";
const MAC: &str = "52:54:00:aa:bb:01";

/// `.venv/bin/python` with nova 34's ironic driver, or `None` with a notice.
fn nova_python() -> Option<PathBuf> {
    let venv = std::env::var_os("PORTHOLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let python = venv.join("bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import nova.virt.ironic.driver"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(python);
    }
    eprintln!(
        "notice: {} cannot import nova.virt.ironic.driver; skipping (run scripts/venv.sh)",
        python.display()
    );
    assert!(
        std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
        "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set (CI): see the notice above"
    );
    None
}

/// Named pass/fail results, all printed at the end.
#[derive(Default)]
struct Checks {
    results: Vec<(String, bool, String)>,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) -> bool {
        self.results.push((name.to_owned(), ok, detail.into()));
        ok
    }

    fn finish(self) -> Result<()> {
        let failed: Vec<_> = self.results.iter().filter(|r| !r.1).collect();
        for (name, ok, detail) in &self.results {
            eprintln!("{} {name}{}", if *ok { "PASS" } else { "FAIL" }, {
                if *ok {
                    String::new()
                } else {
                    format!("\n     {detail}")
                }
            });
        }
        if failed.is_empty() {
            return Ok(());
        }
        let names: Vec<_> = failed.iter().map(|r| r.0.as_str()).collect();
        bail!(
            "{} of {} checks failed: {}",
            failed.len(),
            self.results.len(),
            names.join(", ")
        )
    }
}

/// The conductor's REST API at one microversion (what it advertises).
struct Api {
    http: reqwest::Client,
    url: String,
    version: String,
}

impl Api {
    async fn new(url: &str) -> Result<Self> {
        let http = reqwest::Client::new();
        let root: Value = http.get(url).send().await?.json().await?;
        let version = root["default_version"]["version"]
            .as_str()
            .context("GET / has no default_version.version")?
            .to_owned();
        Ok(Self {
            http,
            url: url.to_owned(),
            version,
        })
    }

    /// `method path body` → (status, body as JSON or as a string).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method.parse()?, format!("{}{path}", self.url))
            .header("X-OpenStack-Ironic-API-Version", &self.version);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, v) = self.call(method, path, body.clone()).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} {body:?} → {status} {v}");
        }
        Ok(v)
    }

    /// Provision `target` and wait for the stable state `want`.
    /// A 409 "is locked" (the previous step's task still finishing after
    /// its state was saved) is retried, as ironicclient and openstacksdk
    /// retry it.
    async fn provision(&self, node: &str, target: &str, want: &str) -> Result<Value> {
        let path = format!("/v1/nodes/{node}/states/provision");
        let body = json!({ "target": target });
        for attempt in 1.. {
            let (status, v) = self.call("PUT", &path, Some(body.clone())).await?;
            let locked = status == 409 && v.to_string().contains("is locked by host");
            if (200..300).contains(&status) {
                break;
            } else if !locked || attempt == 10 {
                bail!("PUT {path} {body} → {status} {v}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eventually(
            Duration::from_secs(30),
            &format!("{node} reaching {want}"),
            || async move {
                let n = self.ok("GET", &format!("/v1/nodes/{node}"), None).await?;
                Ok(
                    (n["provision_state"] == want && n["target_provision_state"].is_null())
                        .then_some(n),
                )
            },
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nova_ironic_driver_spawn_and_destroy() {
    porthole_tests::run(nova_flow()).await
}

async fn nova_flow() -> Result<()> {
    let Some(python) = nova_python() else {
        return Ok(());
    };
    let cond = TestConductor::start(NO_CONSOLE_SVC).await?;
    let api = Api::new(&cond.url).await?;
    let mut c = Checks::default();

    let node = enroll(&api, &mut c).await?;
    let uuid = node["uuid"].as_str().context("uuid")?.to_owned();

    let work = tempfile::Builder::new()
        .prefix("porthole-nova-")
        .tempdir()?;
    let out_path = work.path().join("out.json");
    let log_path = work.path().join("nova.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/nova_ironic.py"))
        .args(["--ironic", &cond.url, "--node", &uuid])
        .arg("--workdir")
        .arg(work.path())
        .arg("--out")
        .arg(&out_path)
        .args(["--mkisofs", "xorrisofs", "--step-timeout", "60"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    if c.results.iter().any(|r| r.0 == "trait PUT" && r.1) {
        cmd.args(["--trait", TRAIT]);
    }
    let status = tokio::time::timeout(Duration::from_secs(420), cmd.status())
        .await
        .context("nova_ironic.py took longer than 420 s")??;
    let out: Value = serde_json::from_str(
        &std::fs::read_to_string(&out_path)
            .with_context(|| format!("nova_ironic.py ({status}) wrote no {out_path:?}"))?,
    )?;
    let trait_set = c.results.iter().any(|r| r.0 == "trait PUT" && r.1);
    judge(&mut c, &out, &uuid, trait_set);

    // The conductor's own view at the end.
    let n = api.ok("GET", &format!("/v1/nodes/{uuid}"), None).await?;
    c.check(
        "end: node available, no instance",
        n["provision_state"] == "available"
            && n["instance_uuid"].is_null()
            && n["instance_info"] == json!({}),
        format!(
            "GET /v1/nodes/{uuid} → provision_state {} instance_uuid {} instance_info {}",
            n["provision_state"], n["instance_uuid"], n["instance_info"]
        ),
    );

    if c.results.iter().any(|r| !r.1) {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<_> = log.lines().rev().take(40).collect();
        eprintln!("--- last lines of nova's log ---");
        for l in tail.into_iter().rev() {
            eprintln!("{l}");
        }
        eprintln!("--- nova's requests ---");
        for h in out["http"].as_array().into_iter().flatten() {
            eprintln!(
                "{} {} {} → {} {}",
                h["method"].as_str().unwrap_or(""),
                h["url"].as_str().unwrap_or(""),
                body_of(h),
                h["status"],
                cut(h["answer"].as_str().unwrap_or(""), 300)
            );
        }
    }
    c.finish()
}

/// An `available` fake-hardware node with one port and (when the API has
/// traits) a trait; its first checks go into `c`.
async fn enroll(api: &Api, c: &mut Checks) -> Result<Value> {
    let node = api
        .ok(
            "POST",
            "/v1/nodes",
            Some(json!({
                "driver": "fake-hardware",
                "name": "nova-bm-1",
                "resource_class": RESOURCE_CLASS,
                "properties": {"cpu_arch": "x86_64", "cpus": 4, "memory_mb": 4096, "local_gb": 20},
            })),
        )
        .await?;
    let uuid = node["uuid"].as_str().context("uuid")?.to_owned();
    api.ok(
        "POST",
        "/v1/ports",
        Some(json!({"node_uuid": uuid, "address": MAC})),
    )
    .await?;
    let (status, body) = api
        .call("PUT", &format!("/v1/nodes/{uuid}/traits/{TRAIT}"), None)
        .await?;
    c.check(
        "trait PUT",
        status == 204,
        format!("PUT /v1/nodes/{uuid}/traits/{TRAIT} → {status} {body}"),
    );
    api.provision(&uuid, "manage", "manageable").await?;
    api.provision(&uuid, "provide", "available").await?;
    // Ironic's fake power interface reports what was last set and nothing
    // before (nova counts a node without power_state as unavailable), so
    // the operator powers the node off first, as with Ironic.
    api.ok(
        "PUT",
        &format!("/v1/nodes/{uuid}/states/power"),
        Some(json!({"target": "power off"})),
    )
    .await?;
    let n = eventually(Duration::from_secs(30), "power off", || async {
        let n = api.ok("GET", &format!("/v1/nodes/{uuid}"), None).await?;
        Ok((n["power_state"] == "power off" && n["target_power_state"].is_null()).then_some(n))
    })
    .await?;
    Ok(n)
}

fn step<'a>(out: &'a Value, name: &str) -> Option<&'a Value> {
    out["steps"].as_array()?.iter().find(|s| s["step"] == name)
}

/// The step's result, or a check failure naming its error.
fn step_ok<'a>(c: &mut Checks, out: &'a Value, name: &str) -> Option<&'a Value> {
    match step(out, name) {
        None => {
            c.check(
                &format!("{name}: ran"),
                false,
                "not reached: an earlier step failed",
            );
            None
        }
        Some(s) if s.get("error").is_some() => {
            c.check(
                &format!("{name}: ran"),
                false,
                s["error"].as_str().unwrap_or("?"),
            );
            None
        }
        Some(s) => {
            c.check(&format!("{name}: ran"), true, "");
            Some(&s["saw"])
        }
    }
}

/// nova's requests whose method is `method` and whose URL ends with `path`.
fn requests<'a>(out: &'a Value, method: &str, path: &str) -> Vec<&'a Value> {
    out["http"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| {
            h["method"] == method
                && h["url"]
                    .as_str()
                    .is_some_and(|u| u.split('?').next().unwrap_or("").ends_with(path))
        })
        .collect()
}

/// A logged request's body as sent (the log keeps it as a string).
fn body_of(h: &Value) -> String {
    match h.get("body") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

fn describe(reqs: &[&Value]) -> String {
    if reqs.is_empty() {
        return "nova sent no such request".into();
    }
    reqs.iter()
        .map(|h| {
            format!(
                "{} {} {} → {} {}",
                h["method"].as_str().unwrap_or(""),
                h["url"].as_str().unwrap_or(""),
                cut(&body_of(h), 300),
                h["status"],
                cut(h["answer"].as_str().unwrap_or(""), 400)
            )
        })
        .collect::<Vec<_>>()
        .join("\n     ")
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// The request with `needle` in its body was answered with `want`.
fn answered(
    c: &mut Checks,
    name: &str,
    out: &Value,
    method: &str,
    path: &str,
    needle: &str,
    want: u16,
) {
    let reqs = requests(out, method, path);
    let hit: Vec<_> = reqs
        .iter()
        .copied()
        .filter(|h| body_of(h).contains(needle))
        .collect();
    let ok = !hit.is_empty() && hit.iter().all(|h| h["status"] == want);
    c.check(
        name,
        ok,
        describe(if hit.is_empty() { &reqs } else { &hit }),
    );
}

/// The periodic resource update's view of the node.
fn periodic(
    c: &mut Checks,
    out: &Value,
    name: &str,
    uuid: &str,
    reserved: u64,
    instances: Value,
    trait_set: bool,
) {
    let Some(saw) = step_ok(c, out, name) else {
        return;
    };
    let listed = saw["available_nodes"]
        .as_array()
        .is_some_and(|a| a.iter().any(|n| n == uuid));
    c.check(
        &format!("{name}: get_available_nodes lists the node"),
        listed,
        format!("available_nodes {}", saw["available_nodes"]),
    );
    if !listed {
        return;
    }
    let r = &saw["resource"];
    c.check(
        &format!("{name}: get_available_resource"),
        r["uuid"] == uuid
            && r["hypervisor_type"] == "ironic"
            && r["resource_class"] == RESOURCE_CLASS
            && r["supported_instances"] == json!([["x86_64", "baremetal", "hvm"]]),
        format!("resource {r}"),
    );
    let inv = &saw["inventory"];
    c.check(
        &format!(
            "{name}: update_provider_tree inventory {RC_INVENTORY} total 1 reserved {reserved}"
        ),
        inv.as_object().is_some_and(|o| o.len() == 1)
            && inv[RC_INVENTORY]["total"] == 1
            && inv[RC_INVENTORY]["reserved"] == reserved
            && inv[RC_INVENTORY]["max_unit"] == 1,
        format!("inventory {inv}"),
    );
    if trait_set {
        c.check(
            &format!("{name}: update_provider_tree traits"),
            saw["traits"] == json!([TRAIT]),
            format!("traits {}", saw["traits"]),
        );
    }
    c.check(
        &format!("{name}: list_instance_uuids"),
        saw["instance_uuids"] == instances,
        format!(
            "instance_uuids {} (want {instances})",
            saw["instance_uuids"]
        ),
    );
}

fn judge(c: &mut Checks, out: &Value, uuid: &str, trait_set: bool) {
    step_ok(c, out, "setup");
    periodic(c, out, "periodic_before", uuid, 0, json!([]), trait_set);

    let instance = step(out, "prepare_for_spawn")
        .and_then(|s| s["saw"]["instance_uuid"].as_str())
        .map(str::to_owned);
    step_ok(c, out, "prepare_for_spawn");
    answered(
        c,
        "prepare_for_spawn: PATCH instance_uuid",
        out,
        "PATCH",
        &format!("/v1/nodes/{uuid}"),
        "/instance_uuid",
        200,
    );

    step_ok(c, out, "plug_vifs");
    answered(
        c,
        "plug_vifs: POST vifs",
        out,
        "POST",
        &format!("/v1/nodes/{uuid}/vifs"),
        "\"id\"",
        204,
    );

    let spawned = step_ok(c, out, "spawn").cloned();
    if let Some(s) = step(out, "failed_spawn_cleanup") {
        // not a check of its own: shown so a reader sees the clean-up's fate
        eprintln!(
            "failed_spawn_cleanup ran: {}",
            s.get("error").unwrap_or(&json!("ok"))
        );
    }
    answered(
        c,
        "spawn: PATCH instance_info",
        out,
        "PATCH",
        &format!("/v1/nodes/{uuid}"),
        "/instance_info/image_source",
        200,
    );
    let validate = requests(out, "GET", &format!("/v1/nodes/{uuid}/validate"));
    c.check(
        "spawn: GET validate",
        !validate.is_empty() && validate.iter().all(|h| h["status"] == 200),
        describe(&validate),
    );
    answered(
        c,
        "spawn: provision active with configdrive",
        out,
        "PUT",
        &format!("/v1/nodes/{uuid}/states/provision"),
        "\"configdrive\"",
        202,
    );
    if let Some(saw) = spawned {
        let n = &saw["node"];
        c.check(
            "spawn: node active with the instance",
            n["provision_state"] == "active"
                && n["instance_uuid"].as_str() == instance.as_deref()
                && n["instance_info"]["image_source"].is_string(),
            format!("node {n}"),
        );
        // Ironic keeps the config drive in instance_info (its
        // _store_configdrive) and shows it masked, "******".
        c.check(
            "spawn: configdrive kept in instance_info",
            n["instance_info"]["configdrive"] == "******",
            format!("instance_info {}", n["instance_info"]),
        );
        c.check(
            "spawn: the VIF is attached",
            n["vifs"].as_array().is_some_and(|v| v.len() == 1),
            format!("vifs {}", n["vifs"]),
        );
        c.check(
            "spawn: instance_exists",
            saw["exists"] == true,
            format!("{saw}"),
        );
    }

    let inst = instance
        .map(Value::from)
        .map(|v| json!([v]))
        .unwrap_or(json!(["?"]));
    periodic(c, out, "periodic_active", uuid, 1, inst, trait_set);

    let destroyed = step_ok(c, out, "destroy").cloned();
    answered(
        c,
        "destroy: provision deleted",
        out,
        "PUT",
        &format!("/v1/nodes/{uuid}/states/provision"),
        "\"deleted\"",
        202,
    );
    if let Some(saw) = destroyed {
        let n = &saw["node"];
        c.check(
            "destroy: node cleaning or available, instance_uuid and instance_info cleared",
            (n["provision_state"] == "available" || n["provision_state"] == "cleaning")
                && n["instance_uuid"].is_null()
                && n["instance_info"] == json!({}),
            format!("node {n}"),
        );
        c.check(
            "destroy: instance gone",
            saw["exists"] == false,
            format!("{saw}"),
        );
        // Ironic's tear down detaches the node's VIFs (remove_vifs_from_node)
        // before cleaning: nova's destroy of an active node leaves it to Ironic.
        c.check(
            "destroy: tear down detached the VIFs",
            n["vifs"] == json!([]),
            format!("GET /v1/nodes/{uuid}/vifs after destroy → {}", n["vifs"]),
        );
    }
    if let Some(saw) = step_ok(c, out, "wait_available") {
        c.check(
            "after destroy: node available",
            saw["provision_state"] == "available" && saw["last_error"].is_null(),
            format!("node {saw}"),
        );
    }
    periodic(c, out, "periodic_after", uuid, 0, json!([]), trait_set);
}
