//! Issue 13's acceptance, conductor side: a `redfish` node on sushy-tools
//! deployed with the `iscsi` deploy and `redfish-virtual-media` boot
//! interfaces, driven by the `openstack` CLI (`node create`, `port create`,
//! `manage`, `provide`, `deploy`) up to `wait call-back`, with the built
//! `deploy` binary (`target/debug/deploy`, or `PORTHOLE_TEST_DEPLOY_BIN`)
//! as the deploy service and the conductor in-process. Once with the
//! embedded store, once (short, under Swift's machine-wide lock) with the
//! rig's Swift.
//!
//! sushy-tools really downloads both media: the floppy it holds is read
//! with mtools (`parameters.txt`, `token`), the CD is the deploy ISO's
//! bytes. The test then plays the deploy ramdisk with what the floppy
//! says: a wrong key, a missing field and a call in the wrong state are
//! 400 and change nothing; the right key is accepted, recorded, and the
//! hand-over fails honestly (the iSCSI write is issue 14) with the media
//! ejected; `error` fails the deploy with its words; no call back fails it
//! after the (short) `deploy_callback_timeout`, media ejected. sushy's
//! failure modes (a deploy ISO URL that 404s, a system it does not know)
//! end in `deploy failed` with its words; a second sushy whose systems
//! have no floppy device (`SUSHY_EMULATOR_VMEDIA_DEVICES`) ends in
//! `deploy failed` before anything is stored. No deployment key is logged.
//!
//! Peers: `PORTHOLE_REDFISH_URL` + `PORTHOLE_REDFISH_MEDIA_DIR` name a
//! running emulator with 2 systems (else one is started where the rig is,
//! `PORTHOLE_RIG_JSON`); `.venv-clients`; Swift through
//! `porthole_tests::peers::Swift`. Skips with a notice without them (fails
//! with `PORTHOLE_REQUIRE_PEERS`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{clients, eventually, Cli, TestConductor};
use porthole_tests::peers::{Sushy, Swift};
use serde_json::{json, Value};

const NO_CONSOLE_SVC: &str = "http://127.0.0.1:9";
/// The callback timeout here (Ironic's default is 1800 s).
const CALLBACK_TIMEOUT_S: u64 = 12;
/// What the gRPC interface's continue step says until issue 14.
const CONTINUE_UNAVAILABLE: &str = "the iSCSI write step that continues the deploy";

/// One test at a time: they share the emulator's media directory.
static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every log line of the in-process conductor, to look for keys in.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(|| LogSink)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(sub).unwrap();
    });
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn deploy_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("PORTHOLE_TEST_DEPLOY_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("debug/deploy"),
    };
    ensure!(
        path.is_file(),
        "{} does not exist: cargo build -p deploy (or set PORTHOLE_TEST_DEPLOY_BIN)",
        path.display()
    );
    Ok(path)
}

/// The `deploy` binary on `port`, its stderr in a file; killed on drop.
struct DeploySvc {
    child: tokio::process::Child,
    log: PathBuf,
    objects: PathBuf,
    _dir: tempfile::TempDir,
}

impl DeploySvc {
    /// `service_tls`: more `[service]` lines (its TLS files).
    async fn start(port: u16, conductor_url: &str, swift: bool, service_tls: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("porthole-deploy-svc-")
            .tempdir()?;
        let mut toml = format!(
            "[service]\nlisten = \"127.0.0.1:{port}\"\n{service_tls}[conductor]\napi_url = \"{conductor_url}\"\n\
             [store]\nhttp_listen = \"127.0.0.1:{}\"\nhttp_dir = \"{}\"\nttl = \"120s\"\n",
            free_port()?,
            dir.path().join("objects").display()
        );
        if swift {
            let key = dir.path().join("swift-key");
            std::fs::write(&key, format!("{}\n", Swift::KEY))?;
            toml.push_str(&format!(
                "backend = \"swift\"\n[swift]\nauth_url = \"{}\"\nuser = \"{}\"\nkey_file = \"{}\"\n",
                Swift::AUTH_URL,
                Swift::USER,
                key.display()
            ));
        }
        let config = dir.path().join("deploy.toml");
        std::fs::write(&config, toml)?;
        let log = dir.path().join("deploy.log");
        let child = tokio::process::Command::new(deploy_bin()?)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("spawning the deploy binary")?;
        let svc = Self {
            child,
            log,
            objects: dir.path().join("objects"),
            _dir: dir,
        };
        eventually(
            Duration::from_secs(20),
            "the deploy service listening",
            || async {
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(drop))
            },
        )
        .await
        .with_context(|| svc.logs())?;
        Ok(svc)
    }

    /// Objects the embedded store holds.
    fn stored(&self) -> usize {
        std::fs::read_dir(&self.objects)
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn stop(mut self) -> String {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        self.logs()
    }
}

/// A second sushy-tools (the first one's venv) whose systems have a
/// virtual CD and no floppy: one system, on a free port in this helper's
/// range (20801-20899); killed on drop.
struct CdOnlySushy {
    url: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl CdOnlySushy {
    async fn start(first: &Sushy) -> Result<Self> {
        let venv = first
            .media
            .parent()
            .context("sushy media dir")?
            .join("venv/bin/sushy-emulator");
        ensure!(venv.exists(), "no sushy-emulator at {}", venv.display());
        let port = (20801..20900)
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .context("no free port in 20801-20899")?;
        let dir = tempfile::Builder::new()
            .prefix("porthole-sushy-cd-")
            .tempdir()?;
        let system = Sushy::system(0);
        let uuid = system.rsplit('/').next().unwrap_or_default();
        let conf = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_STATE_DIR = '{}'\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{uuid}', 'name': 'cd-only', \
             'power_state': 'Off', 'external_notifier': False, \
             'nics': [{{'mac': '52:54:00:12:35:56', 'ip': '192.0.2.50'}}]}}]\n\
             SUSHY_EMULATOR_VMEDIA_DEVICES = {{'Cd': {{'Name': 'Virtual CD', 'MediaTypes': ['CD', 'DVD']}}}}\n",
            dir.path().join("db").display()
        );
        std::fs::create_dir_all(dir.path().join("media"))?;
        std::fs::write(dir.path().join("emulator.conf"), conf)?;
        let child = tokio::process::Command::new(venv)
            .arg("--config")
            .arg(dir.path().join("emulator.conf"))
            .env("TMPDIR", dir.path().join("media"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("emulator.log"))?)
            .kill_on_drop(true)
            .spawn()
            .context("spawning sushy-emulator")?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually(
            Duration::from_secs(30),
            "the CD-only sushy answering",
            || async {
                let r = http.get(format!("{url}/redfish/v1/")).send().await;
                Ok(r.ok().filter(|r| r.status().is_success()).map(drop))
            },
        )
        .await?;
        Ok(Self {
            url,
            _child: child,
            _dir: dir,
        })
    }
}

/// The deploy ISO (and a URL beside it that 404s), served on 127.0.0.1
/// as an image server would.
async fn iso_server(iso: Vec<u8>) -> Result<String> {
    let app = axum::Router::new().route(
        "/deploy.iso",
        axum::routing::get(move || async move { iso }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// Everything one run needs.
struct Run {
    cli: Cli,
    cond: TestConductor,
    sushy: Sushy,
    iso: Vec<u8>,
    images: String,
    deploy_port: u16,
    http: reqwest::Client,
    /// Every deployment key seen (none may be logged).
    keys: Vec<String>,
}

impl Run {
    async fn start() -> Result<Option<Run>> {
        capture_logs();
        let Some(bin) = clients() else {
            return Ok(None);
        };
        let Some(sushy) = Sushy::get(
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-conductor-vmedia-sushy"),
            2,
        ) else {
            return Ok(None);
        };
        let iso: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let images = iso_server(iso.clone()).await?;
        let deploy_port = free_port()?;
        let s = |v: &str| toml::Value::String(v.to_owned());
        let cond = TestConductor::start_with(
            NO_CONSOLE_SVC,
            vec![
                (
                    "deploy",
                    "endpoint",
                    s(&format!("http://127.0.0.1:{deploy_port}")),
                ),
                (
                    "conductor",
                    "deploy_callback_timeout",
                    toml::Value::Integer(CALLBACK_TIMEOUT_S as i64),
                ),
                (
                    "conductor",
                    "check_provision_state_interval",
                    toml::Value::Integer(1),
                ),
            ],
        )
        .await?;
        let cli = cond.cli(bin);
        Ok(Some(Run {
            cli,
            cond,
            sushy,
            iso,
            images,
            deploy_port,
            http: reqwest::Client::new(),
            keys: Vec::new(),
        }))
    }

    async fn deploy_svc(&self, swift: bool) -> Result<DeploySvc> {
        DeploySvc::start(self.deploy_port, &self.cond.url, swift, "").await
    }

    async fn show(&self, node: &str) -> Result<Value> {
        self.cli.json(&["node", "show", node]).await
    }

    /// Wait until `node` rests in `state` (not locked).
    async fn rests_in(&self, node: &str, state: &str, within: Duration) -> Result<Value> {
        eventually(within, &format!("{node} in {state}"), || async {
            let n = self.show(node).await?;
            Ok((n["provision_state"] == state && n["reservation"].is_null()).then_some(n))
        })
        .await
    }

    /// A `redfish` node on sushy system `i`, with its port, in `available`.
    async fn available_node(&self, name: &str, i: usize) -> Result<String> {
        self.available_node_at(name, &self.sushy.url, i).await
    }

    /// The same on the emulator at `bmc`.
    async fn available_node_at(&self, name: &str, bmc: &str, i: usize) -> Result<String> {
        let info = |k: &str, v: &str| format!("{k}={v}");
        let n = self
            .cli
            .json(&[
                "node",
                "create",
                "--driver",
                "redfish",
                "--deploy-interface",
                "iscsi",
                "--boot-interface",
                "redfish-virtual-media",
                "--name",
                name,
                "--driver-info",
                &info("redfish_address", bmc),
                "--driver-info",
                &info("redfish_system_id", &Sushy::system(i)),
                "--driver-info",
                &info("deploy_iso", &format!("{}/deploy.iso", self.images)),
            ])
            .await?;
        let uuid = n["uuid"].as_str().context("uuid")?.to_owned();
        self.cli
            .ok(&[
                "node",
                "set",
                name,
                "--instance-info",
                "image_source=http://images/user.qcow2",
            ])
            .await?;
        let mac = format!("52:54:00:12:34:{:02x}", 0x56 + i);
        self.cli
            .ok(&["port", "create", &mac, "--node", &uuid])
            .await?;
        self.cli
            .ok(&["node", "manage", name, "--wait", "60"])
            .await?;
        self.cli
            .ok(&["node", "provide", name, "--wait", "60"])
            .await?;
        Ok(uuid)
    }

    /// `node deploy` up to `wait call-back`.
    async fn deploy_to_wait(&self, name: &str) -> Result<Value> {
        self.cli.ok(&["node", "deploy", name]).await?;
        self.rests_in(name, "wait call-back", Duration::from_secs(90))
            .await
    }

    /// The floppy and CD sushy downloaded: the CD must be the deploy ISO;
    /// the floppy's parameters.txt (as a map) and token, read with mtools.
    fn media(&mut self) -> Result<(BTreeMap<String, String>, String)> {
        let held = self.sushy.held();
        ensure!(
            held.contains(&self.iso),
            "the CD sushy holds is not the deploy ISO"
        );
        let floppy = held
            .iter()
            .find(|b| **b != self.iso)
            .context("sushy holds no floppy")?;
        let params: BTreeMap<String, String> = mtype(floppy, "parameters.txt")?
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let token = mtype(floppy, "token")?;
        ensure!(token.len() >= 32, "token file: {token:?}");
        if let Some(k) = params.get("deployment_key") {
            self.keys.push(k.clone());
        }
        self.keys.push(token.clone());
        Ok((params, token))
    }

    /// The ramdisk's pass_deploy_info, to where the floppy says.
    async fn callback(
        &self,
        params: &BTreeMap<String, String>,
        body: Value,
    ) -> Result<(u16, Value)> {
        let url = format!(
            "{}/v1/nodes/{}/vendor_passthru/pass_deploy_info",
            params["ironic_api_url"], params["deployment_id"]
        );
        let r = self.http.post(url).json(&body).send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Both virtual media ejected and sushy holds no file.
    async fn ejected(&self, i: usize) -> Result<()> {
        for dev in ["Floppy", "Cd"] {
            let url = format!("{}{}/VirtualMedia/{dev}", self.sushy.url, Sushy::system(i));
            let v: Value = self.http.get(url).send().await?.json().await?;
            ensure!(v["Inserted"] == false, "{dev} still inserted: {v}");
        }
        ensure!(self.sushy.held().is_empty(), "sushy still holds media");
        Ok(())
    }

    /// What sushy's `dev` was given (its Image URL).
    async fn image(&self, i: usize, dev: &str) -> Result<String> {
        let url = format!("{}{}/VirtualMedia/{dev}", self.sushy.url, Sushy::system(i));
        let v: Value = self.http.get(url).send().await?.json().await?;
        Ok(v["Image"].as_str().unwrap_or_default().to_owned())
    }

    fn assert_no_key_logged(&self, deploy_logs: &str) {
        let ours = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
        assert!(
            ours.contains("deploy ramdisk booting; waiting for its callback"),
            "the capture saw no deploy log"
        );
        for k in &self.keys {
            assert!(
                !ours.contains(k.as_str()),
                "a per-deploy secret is in the conductor's logs"
            );
            assert!(
                !deploy_logs.contains(k.as_str()),
                "a per-deploy secret is in the deploy service's logs"
            );
        }
    }
}

fn mtype(img: &[u8], file: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("floppy.img");
    std::fs::write(&path, img)?;
    let out = std::process::Command::new("mtype")
        .args(["-i", path.to_str().context("path")?, &format!("::{file}")])
        .output()
        .context("mtype (mtools)")?;
    if !out.status.success() {
        bail!("mtype {file}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The floppy's parameters as the design wants them for `uuid`.
fn check_params(p: &BTreeMap<String, String>, run: &Run, uuid: &str) -> Result<()> {
    ensure!(p["ironic_api_url"] == run.cond.url, "{p:?}");
    ensure!(p["deployment_id"] == uuid, "{p:?}");
    ensure!(p["iscsi_target_iqn"] == format!("iqn-{uuid}"), "{p:?}");
    ensure!(p["deployment_key"].len() >= 32, "{p:?}");
    ensure!(
        p["boot_option"] == "netboot" && p["boot_mode"] == "bios",
        "{p:?}"
    );
    Ok(())
}

/// The fields a refused callback must not change.
fn unchanged_view(n: &Value) -> Value {
    json!([
        n["provision_state"],
        n["target_provision_state"],
        n["last_error"],
        n["driver_internal_info"],
        n["updated_at"],
        n["provision_updated_at"]
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploy_on_sushy_with_the_embedded_store_then_the_ramdisks_callbacks() -> Result<()> {
    let _one = ONE.lock().await;
    let Some(mut run) = Run::start().await? else {
        return Ok(());
    };
    let svc = run.deploy_svc(false).await?;
    let uuid = run.available_node("vm-0", 0).await?;

    // 1. Up to wait call-back; sushy holds both media.
    run.deploy_to_wait("vm-0").await?;
    let (params, _token) = run.media()?;
    check_params(&params, &run, &uuid)?;
    let floppy_url = run.image(0, "Floppy").await?;
    ensure!(
        floppy_url.contains("/objects/"),
        "embedded store URL: {floppy_url}"
    );
    ensure!(run.image(0, "Cd").await? == format!("{}/deploy.iso", run.images));
    let key = params["deployment_key"].clone();
    let iqn = params["iscsi_target_iqn"].clone();

    // 2. Refusals: 400, nothing changes.
    let before = unchanged_view(&run.show("vm-0").await?);
    let mut wrong = key.clone();
    wrong.replace_range(0..1, if key.starts_with('a') { "b" } else { "a" });
    for (body, want) in [
        (
            json!({"address": "127.0.0.1", "iqn": iqn, "key": wrong, "error": ""}),
            "Invalid or missing agent token received.",
        ),
        (
            json!({"address": "127.0.0.1", "iqn": iqn, "error": ""}),
            "Invalid or missing agent token received.",
        ),
        (
            json!({"address": "127.0.0.1", "key": key, "error": ""}),
            "Parameters ['iqn'] were not passed to ironic for deploy.",
        ),
        (
            json!({"address": "not-an-ip", "iqn": iqn, "key": key}),
            "Invalid address \"not-an-ip\"",
        ),
    ] {
        let (status, answer) = run.callback(&params, body.clone()).await?;
        ensure!(status == 400, "{body}: {status} {answer}");
        let fault = common::faultstring(&answer)?;
        ensure!(fault.contains(want), "{body}: {fault}");
    }
    ensure!(
        unchanged_view(&run.show("vm-0").await?) == before,
        "a refused callback changed the node"
    );

    // 3. The right key: accepted and recorded; the hand-over fails honestly
    // (issue 14) and the deploy is cleaned up.
    let (status, answer) = run
        .callback(&params, json!({"address": "127.0.0.1", "iqn": iqn, "key": key, "error": "", "port": 3260, "lun": 1}))
        .await?;
    ensure!(status == 202, "{status} {answer}");
    let n = run
        .rests_in("vm-0", "deploy failed", Duration::from_secs(30))
        .await?;
    let err = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.starts_with("Deploy failed: ") && err.contains(CONTINUE_UNAVAILABLE),
        "{err}"
    );
    ensure!(
        n["driver_internal_info"]["iscsi_target"]
            == json!({"address": "127.0.0.1", "port": 3260, "iqn": iqn, "lun": 1}),
        "{n}"
    );
    run.ejected(0).await?;
    ensure!(
        run.http.get(&floppy_url).send().await?.status() == 404,
        "floppy outlived clean up"
    );
    // Wrong state now (the key died with the wait): 400, nothing changes.
    let before = unchanged_view(&n);
    let (status, _) = run
        .callback(
            &params,
            json!({"address": "127.0.0.1", "iqn": iqn, "key": key}),
        )
        .await?;
    ensure!(status == 400, "{status}");
    ensure!(unchanged_view(&run.show("vm-0").await?) == before);

    // 4. Again; the ramdisk reports an error: deploy failed in its words.
    run.deploy_to_wait("vm-0").await?;
    let (params2, _) = run.media()?;
    ensure!(params2["deployment_key"] != key, "a fresh key per deploy");
    let (status, _) = run
        .callback(&params2, json!({"address": "127.0.0.1", "iqn": iqn, "key": params2["deployment_key"], "error": "no disk found: /dev/sda"}))
        .await?;
    ensure!(status == 202, "{status}");
    let n = run
        .rests_in("vm-0", "deploy failed", Duration::from_secs(30))
        .await?;
    ensure!(
        n["last_error"] == "Error returned from deploy ramdisk: no disk found: /dev/sda",
        "{n}"
    );
    run.ejected(0).await?;

    // 5. Again; no call back: the timeout fails it and cleans up.
    run.deploy_to_wait("vm-0").await?;
    run.media()?;
    let t0 = std::time::Instant::now();
    let n = run
        .rests_in(
            "vm-0",
            "deploy failed",
            Duration::from_secs(CALLBACK_TIMEOUT_S + 20),
        )
        .await?;
    ensure!(
        n["last_error"] == format!("Timeout reached while waiting for callback for node {uuid}"),
        "{n}"
    );
    ensure!(
        t0.elapsed() + Duration::from_secs(3) >= Duration::from_secs(CALLBACK_TIMEOUT_S),
        "failed too early: {:?}",
        t0.elapsed()
    );
    run.ejected(0).await?;

    // 6. sushy's failure modes, in its words, nothing left inserted.
    run.cli
        .ok(&[
            "node",
            "set",
            "vm-0",
            "--driver-info",
            &format!("deploy_iso={}/gone.iso", run.images),
        ])
        .await?;
    run.cli.ok(&["node", "deploy", "vm-0"]).await?;
    let n = run
        .rests_in("vm-0", "deploy failed", Duration::from_secs(60))
        .await?;
    let err = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.starts_with("Deploy failed: ")
            && err.contains("Cannot download virtual media: got error 404"),
        "{err}"
    );
    run.ejected(0).await?;
    run.cli
        .ok(&[
            "node",
            "set",
            "vm-0",
            "--driver-info",
            &format!("deploy_iso={}/deploy.iso", run.images),
            "--driver-info",
            "redfish_system_id=/redfish/v1/Systems/no-such-system",
        ])
        .await?;
    run.cli.ok(&["node", "deploy", "vm-0"]).await?;
    let n = run
        .rests_in("vm-0", "deploy failed", Duration::from_secs(60))
        .await?;
    let err = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.starts_with("Deploy failed: ")
            && err.contains("404")
            && err.contains("Fake system no-such-system was not found"),
        "{err}"
    );
    run.ejected(0).await?;

    let deploy_logs = svc.stop().await;
    run.assert_no_key_logged(&deploy_logs);
    run.cond.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploy_on_sushy_with_swift_then_the_right_key() -> Result<()> {
    let _one = ONE.lock().await;
    let Some(mut run) = Run::start().await? else {
        return Ok(());
    };
    // Everything that needs no Swift first: its lock is machine-wide.
    let uuid = run.available_node("vm-1", 1).await?;
    let Some(swift) =
        Swift::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-conductor-swift"))
    else {
        return Ok(());
    };
    let svc = run.deploy_svc(true).await?;
    run.deploy_to_wait("vm-1").await?;
    let (params, _) = run.media()?;
    check_params(&params, &run, &uuid)?;
    let floppy_url = run.image(1, "Floppy").await?;
    ensure!(
        floppy_url.contains(&format!("/v1/AUTH_test/ironic_ilo_container/image-{uuid}"))
            && floppy_url.contains("temp_url_sig="),
        "{floppy_url}"
    );
    let (status, answer) = run
        .callback(&params, json!({"address": "127.0.0.1", "iqn": params["iscsi_target_iqn"], "key": params["deployment_key"]}))
        .await?;
    ensure!(status == 202, "{status} {answer}");
    let n = run
        .rests_in("vm-1", "deploy failed", Duration::from_secs(30))
        .await?;
    ensure!(
        n["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains(CONTINUE_UNAVAILABLE),
        "{n}"
    );
    run.ejected(1).await?;
    ensure!(
        run.http.get(&floppy_url).send().await?.status() == 404,
        "the Swift object outlived clean up"
    );
    let deploy_logs = svc.stop().await;
    drop(swift);
    run.assert_no_key_logged(&deploy_logs);
    run.cond.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmc_without_a_floppy_device_ends_in_deploy_failed_and_stores_nothing() -> Result<()> {
    let _one = ONE.lock().await;
    let Some(mut run) = Run::start().await? else {
        return Ok(());
    };
    let cd_only = CdOnlySushy::start(&run.sushy).await?;
    let svc = run.deploy_svc(false).await?;
    run.available_node_at("cd-only", &cd_only.url, 0).await?;
    run.cli.ok(&["node", "deploy", "cd-only"]).await?;
    let n = run
        .rests_in("cd-only", "deploy failed", Duration::from_secs(60))
        .await?;
    let err = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.starts_with("Deploy failed: ") && err.contains("no virtual media device for floppy"),
        "{err}"
    );
    ensure!(
        svc.stored() == 0,
        "a floppy was stored for a BMC without a floppy device"
    );
    svc.stop().await;
    run.cond.stop().await?;
    Ok(())
}

/// `node validate`'s deploy row: (result, reason).
async fn deploy_row(cli: &Cli, node: &str) -> Result<(bool, String)> {
    let v = cli.json(&["node", "validate", node]).await?;
    let row = v
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["Interface"] == "deploy"))
        .with_context(|| format!("no deploy row: {v}"))?;
    Ok((
        row["Result"] == true,
        row["Reason"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// `[deploy] tls_*` as `[inspect]`'s: over mutual TLS the service's
/// Validate answers (`node validate`: deploy true; then false with its
/// words for a node without ports); without a client certificate the
/// handshake is refused and the conductor says the service is unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conductor_reaches_the_deploy_service_over_mutual_tls() -> Result<()> {
    let Some(bin) = clients() else {
        return Ok(());
    };
    let pki = porthole_tests::pki::Pki::new()?;
    let (server, client) = (pki.server(), pki.client());
    let port = free_port()?;
    let tls = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_client_ca_file = \"{}\"\n",
        server.cert.display(),
        server.key.display(),
        pki.ca().display()
    );
    let svc = DeploySvc::start(port, "http://127.0.0.1:6385", false, &tls).await?;
    let s = |p: &Path| toml::Value::String(p.display().to_string());
    let endpoint = toml::Value::String(format!("https://127.0.0.1:{port}"));
    for with_cert in [true, false] {
        let mut extra = vec![
            ("deploy", "endpoint", endpoint.clone()),
            ("deploy", "tls_ca", s(&pki.ca())),
        ];
        if with_cert {
            extra.push(("deploy", "tls_cert", s(&client.cert)));
            extra.push(("deploy", "tls_key", s(&client.key)));
        }
        let mut cond = TestConductor::start_with(NO_CONSOLE_SVC, extra).await?;
        let cli = cond.cli(bin.clone());
        cli.ok(&[
            "node",
            "create",
            "--driver",
            "redfish",
            "--name",
            "t1",
            "--deploy-interface",
            "iscsi",
            "--boot-interface",
            "redfish-virtual-media",
            "--driver-info",
            "redfish_address=http://127.0.0.1:9",
            "--driver-info",
            "deploy_iso=http://images/deploy.iso",
        ])
        .await?;
        cli.ok(&[
            "node",
            "set",
            "t1",
            "--instance-info",
            "image_source=http://images/u.qcow2",
        ])
        .await?;
        let (ok, reason) = deploy_row(&cli, "t1").await?;
        if with_cert {
            ensure!(
                !ok && reason.contains("does not have any port associated with it"),
                "{reason}"
            );
            let uuid = cli.json(&["node", "show", "t1"]).await?["uuid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            cli.ok(&["port", "create", "52:54:00:aa:bb:01", "--node", &uuid])
                .await?;
            let (ok, reason) = deploy_row(&cli, "t1").await?;
            ensure!(ok, "the service's Validate over mTLS: {reason}");
        } else {
            ensure!(
                !ok && reason.contains(&format!(
                    "the deploy service at https://127.0.0.1:{port} is unavailable"
                )),
                "{reason}"
            );
        }
        cond.stop().await?;
    }
    svc.stop().await;
    Ok(())
}
