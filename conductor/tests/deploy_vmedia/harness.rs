//! The harness of `deploy_vmedia.rs`: the `deploy` binary as a child
//! process ([`DeploySvc`]), a second sushy-tools without a floppy device
//! ([`CdOnlySushy`]), the deploy ISO's image server, the in-process
//! conductor with its logs captured, and [`Run`]: the CLI steps, the media
//! sushy holds, the ramdisk's callback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use porthole_tests::peers::{Sushy, Swift};
use serde_json::{json, Value};

use crate::common::{clients, eventually, Cli, TestConductor};

pub const NO_CONSOLE_SVC: &str = "http://127.0.0.1:9";
/// The callback timeout here (Ironic's default is 1800 s).
pub const CALLBACK_TIMEOUT_S: u64 = 12;

/// One test at a time: they share the emulator's media directory.
pub static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every log line of the in-process conductor, to look for keys in.
pub static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

pub struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() {
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

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn deploy_bin() -> Result<PathBuf> {
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
pub struct DeploySvc {
    child: tokio::process::Child,
    log: PathBuf,
    objects: PathBuf,
    _dir: tempfile::TempDir,
}

impl DeploySvc {
    /// `service_tls`: more `[service]` lines (its TLS files).
    pub async fn start(
        port: u16,
        conductor_url: &str,
        swift: bool,
        service_tls: &str,
    ) -> Result<Self> {
        Self::start_with(port, conductor_url, swift, service_tls, "").await
    }

    /// The same with `sections` (more TOML sections, e.g. `[instance]`)
    /// at the end of its configuration.
    pub async fn start_with(
        port: u16,
        conductor_url: &str,
        swift: bool,
        service_tls: &str,
        sections: &str,
    ) -> Result<Self> {
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
        toml.push_str(sections);
        let config = dir.path().join("deploy.toml");
        std::fs::write(&config, toml)?;
        let log = dir.path().join("deploy.log");
        let child = tokio::process::Command::new(deploy_bin()?)
            .arg("--config")
            .arg(&config)
            .env("PORTHOLE_LOG", "debug")
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
    pub fn stored(&self) -> usize {
        std::fs::read_dir(&self.objects)
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Files in its image cache (beside the store's objects).
    #[allow(dead_code)] // deploy_iscsi.rs
    pub fn cached(&self) -> Vec<String> {
        std::fs::read_dir(self.objects.with_file_name("images"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn stop(mut self) -> String {
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
pub struct CdOnlySushy {
    pub url: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl CdOnlySushy {
    pub async fn start(first: &Sushy) -> Result<Self> {
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
pub async fn iso_server(iso: Vec<u8>) -> Result<String> {
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
pub struct Run {
    pub cli: Cli,
    pub cond: TestConductor,
    pub sushy: Sushy,
    pub iso: Vec<u8>,
    pub images: String,
    pub deploy_port: u16,
    pub http: reqwest::Client,
    /// Every deployment key seen (none may be logged).
    pub keys: Vec<String>,
}

impl Run {
    pub async fn start() -> Result<Option<Run>> {
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
        // What an earlier (failed) run left inserted goes first.
        let bmc = porthole_bmc::redfish::Client::new(Duration::from_secs(10))?;
        for i in 0..2 {
            let mut ep = porthole_bmc::redfish::Endpoint::new(&sushy.url);
            ep.system_id = Some(Sushy::system(i));
            for m in [
                porthole_bmc::vmedia::Media::Floppy,
                porthole_bmc::vmedia::Media::Cd,
            ] {
                bmc.eject_media(&ep, m).await?;
            }
        }
        ensure!(sushy.held().is_empty(), "sushy holds media after eject");
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

    pub async fn deploy_svc(&self, swift: bool) -> Result<DeploySvc> {
        DeploySvc::start(self.deploy_port, &self.cond.url, swift, "").await
    }

    pub async fn show(&self, node: &str) -> Result<Value> {
        self.cli.json(&["node", "show", node]).await
    }

    /// Wait until `node` rests in `state` (not locked).
    pub async fn rests_in(&self, node: &str, state: &str, within: Duration) -> Result<Value> {
        eventually(within, &format!("{node} in {state}"), || async {
            let n = self.show(node).await?;
            Ok((n["provision_state"] == state && n["reservation"].is_null()).then_some(n))
        })
        .await
    }

    /// A `redfish` node on sushy system `i`, with its port, in `available`.
    pub async fn available_node(&self, name: &str, i: usize) -> Result<String> {
        self.available_node_at(name, &self.sushy.url, i).await
    }

    /// The same on the emulator at `bmc`.
    pub async fn available_node_at(&self, name: &str, bmc: &str, i: usize) -> Result<String> {
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
    pub async fn deploy_to_wait(&self, name: &str) -> Result<Value> {
        self.cli.ok(&["node", "deploy", name]).await?;
        self.rests_in(name, "wait call-back", Duration::from_secs(90))
            .await
    }

    /// The floppy and CD sushy downloaded: the CD must be the deploy ISO;
    /// the floppy's parameters.txt (as a map) and token, read with mtools.
    pub fn media(&mut self) -> Result<(BTreeMap<String, String>, String)> {
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
    pub async fn callback(
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
    pub async fn ejected(&self, i: usize) -> Result<()> {
        for dev in ["Floppy", "Cd"] {
            let url = format!("{}{}/VirtualMedia/{dev}", self.sushy.url, Sushy::system(i));
            let v: Value = self.http.get(url).send().await?.json().await?;
            ensure!(v["Inserted"] == false, "{dev} still inserted: {v}");
        }
        ensure!(self.sushy.held().is_empty(), "sushy still holds media");
        Ok(())
    }

    /// Sushy system `i`'s PowerState (`On`, `Off`).
    pub async fn sushy_power(&self, i: usize) -> Result<String> {
        let url = format!("{}{}", self.sushy.url, Sushy::system(i));
        let v: Value = self.http.get(url).send().await?.json().await?;
        Ok(v["PowerState"].as_str().unwrap_or_default().to_owned())
    }

    /// Wait until sushy system `i` is on (its fake driver applies a power
    /// change 1 to 11 s after the request, and ignores a ForceOff while
    /// an On is still pending).
    pub async fn sushy_on(&self, i: usize) -> Result<()> {
        eventually(Duration::from_secs(20), "sushy system on", || async {
            Ok((self.sushy_power(i).await? == "On").then_some(()))
        })
        .await
    }

    /// `[deploy] power_off_after_deploy_failure`: `node` (sushy system
    /// `i`) off after its failed deploy, on the BMC and in the node.
    pub async fn powered_off(&self, node: &str, i: usize) -> Result<()> {
        let n = self.show(node).await?;
        ensure!(n["power_state"] == "power off", "{n}");
        let p = self.sushy_power(i).await?;
        ensure!(
            p == "Off",
            "sushy system {i} is {p:?} after the failed deploy"
        );
        Ok(())
    }

    /// What sushy's `dev` was given (its Image URL).
    pub async fn image(&self, i: usize, dev: &str) -> Result<String> {
        let url = format!("{}{}/VirtualMedia/{dev}", self.sushy.url, Sushy::system(i));
        let v: Value = self.http.get(url).send().await?.json().await?;
        Ok(v["Image"].as_str().unwrap_or_default().to_owned())
    }

    pub fn assert_no_key_logged(&self, deploy_logs: &str) {
        let ours = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
        assert!(
            ours.contains("deploy ramdisk booting; waiting for its callback"),
            "the capture saw no deploy log"
        );
        assert!(
            deploy_logs.contains("deploy ramdisk booting from virtual media"),
            "the deploy service's log has no PrepareRamdisk line: {deploy_logs}"
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

pub fn mtype(img: &[u8], file: &str) -> Result<String> {
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
pub fn check_params(p: &BTreeMap<String, String>, run: &Run, uuid: &str) -> Result<()> {
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
pub fn unchanged_view(n: &Value) -> Value {
    json!([
        n["provision_state"],
        n["target_provision_state"],
        n["last_error"],
        n["driver_internal_info"],
        n["updated_at"],
        n["provision_updated_at"]
    ])
}

/// `node validate`'s deploy row: (result, reason).
pub async fn deploy_row(cli: &Cli, node: &str) -> Result<(bool, String)> {
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
