//! The harness of `deploy_iscsi.rs`: an image file server, the deploy
//! ramdisk's `done` port, the floppy sushy holds for a node, [`Env`] (the
//! run, the deploy service, tgtd, the images) with the ramdisk's side of
//! `node deploy --wait`, and what the LUN, the conductor's log and sushy's
//! systems say.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use porthole_tests::peers::{Iscsi, Lun, Sushy};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::common::Cli;
use crate::harness::{check_params, mtype, DeploySvc, Run, LOGS};

/// Files served by name on 127.0.0.1 (the images, kernel, ramdisk).
pub async fn file_server(files: HashMap<String, Vec<u8>>) -> Result<String> {
    let files = Arc::new(files);
    let app = axum::Router::new().route(
        "/{name}",
        axum::routing::get(
            |axum::extract::State(f): axum::extract::State<Arc<HashMap<String, Vec<u8>>>>,
             axum::extract::Path(name): axum::extract::Path<String>| async move {
                match f.get(&name) {
                    Some(b) => Ok(b.clone()),
                    None => Err(axum::http::StatusCode::NOT_FOUND),
                }
            },
        ),
    );
    let app = app.with_state(files);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(b: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// The deploy ramdisk's `done` port: what each connection sent.
pub struct DonePort {
    pub port: u16,
    pub rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

pub async fn done_port() -> Result<DonePort> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            let _ = tx.send(got);
        }
    });
    Ok(DonePort { port, rx })
}

/// The floppy sushy downloaded for node `uuid`: its parameters.
pub fn floppy_of(sushy: &Sushy, uuid: &str) -> Result<BTreeMap<String, String>> {
    for img in sushy.held() {
        let Ok(text) = mtype(&img, "parameters.txt") else {
            continue;
        };
        let p: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if p.get("deployment_id").map(String::as_str) == Some(uuid) {
            return Ok(p);
        }
    }
    bail!("sushy holds no floppy for {uuid}")
}

pub struct Env {
    pub run: Run,
    pub svc: DeploySvc,
    pub iscsi: Iscsi,
    pub done: DonePort,
    pub files: String,
    pub image: Vec<u8>,
}

impl Env {
    /// The images (an 8 MiB raw disk, a qcow2 of 2 GiB virtual size, a
    /// kernel and ramdisk) served, the `done` port, and the deploy service
    /// told to use it (with Swift as its store when `swift`).
    pub async fn start(run: Run, iscsi: Iscsi, swift: bool) -> Result<Env> {
        let mut image = vec![0u8; 8 << 20];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut image))?;
        let big = {
            let dir = tempfile::tempdir()?;
            let p = dir.path().join("big.qcow2");
            let out = std::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&p)
                .arg("2G")
                .output()?;
            ensure!(out.status.success(), "qemu-img create: {out:?}");
            std::fs::read(&p)?
        };
        let files = file_server(HashMap::from([
            ("disk.raw".to_owned(), image.clone()),
            ("big.qcow2".to_owned(), big),
            (
                "vmlinuz".to_owned(),
                b"a kernel, as far as this test goes".to_vec(),
            ),
            ("initrd".to_owned(), b"a ramdisk".to_vec()),
        ]))
        .await?;
        let done = done_port().await?;
        let sections = format!(
            "[instance]\nramdisk_port = {}\nwrite_timeout = \"60s\"\nnotify_timeout = \"10s\"\n",
            done.port
        );
        let svc =
            DeploySvc::start_with(run.deploy_port, &run.cond.url, swift, "", &sections).await?;
        Ok(Env {
            run,
            svc,
            iscsi,
            done,
            files,
            image,
        })
    }

    fn cli(&self) -> Cli {
        Cli {
            bin: self.run.cli.bin.clone(),
            url: self.run.cli.url.clone(),
        }
    }

    /// `instance_info` for the node (`extra` over the good image's).
    pub async fn instance_info(&self, node: &str, extra: &[(&str, String)]) -> Result<()> {
        let mut fields: BTreeMap<&str, String> = BTreeMap::from([
            ("image_source", format!("{}/disk.raw", self.files)),
            ("image_os_hash_algo", "sha256".into()),
            ("image_os_hash_value", sha256(&self.image)),
            ("root_gb", "1".into()),
            ("kernel", format!("{}/vmlinuz", self.files)),
            ("ramdisk", format!("{}/initrd", self.files)),
        ]);
        for (k, v) in extra {
            fields.insert(k, v.clone());
        }
        let mut args = vec!["node".to_owned(), "set".into(), node.into()];
        for (k, v) in fields {
            args.push("--instance-info".into());
            args.push(format!("{k}={v}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run.cli.ok(&args).await.map(drop)
    }

    /// `node deploy --wait` while this test plays the ramdisk: the CLI's
    /// outcome and the node as it rests.
    pub async fn deploy(&mut self, node: &str, uuid: &str) -> Result<(bool, Value)> {
        let cli = self.cli();
        let name = node.to_owned();
        let waiter =
            tokio::spawn(async move { cli.run(&["node", "deploy", &name, "--wait", "110"]).await });
        self.run
            .rests_in(node, "wait call-back", Duration::from_secs(90))
            .await?;
        let params = floppy_of(&self.run.sushy, uuid)?;
        check_params(&params, &self.run, uuid)?;
        self.run.keys.push(params["deployment_key"].clone());
        let body = json!({"address": Iscsi::ADDRESS, "iqn": params["iscsi_target_iqn"],
                          "key": params["deployment_key"], "error": "",
                          "port": Iscsi::PORT, "lun": 1});
        let (status, answer) = self.run.callback(&params, body).await?;
        ensure!(status == 202, "{status} {answer}");
        let ran = waiter.await??;
        let n = self.run.show(node).await?;
        Ok((ran.ok, n))
    }
}

/// The LUN's bytes: the image at its start, zeros after.
pub fn holds_image(lun: &Lun, image: &[u8]) -> Result<()> {
    let all = std::fs::read(&lun.backing)?;
    ensure!(all.len() > image.len(), "LUN of {} bytes", all.len());
    ensure!(&all[..image.len()] == image, "the LUN is not the image");
    ensure!(
        all[image.len()..].iter().all(|&b| b == 0),
        "bytes after the image"
    );
    Ok(())
}

pub fn blank(lun: &Lun) -> Result<bool> {
    Ok(std::fs::read(&lun.backing)?.iter().all(|&b| b == 0))
}

/// What the conductor logged since `from` (its capture).
pub fn logged_since(from: usize) -> String {
    let all = LOGS.lock().unwrap();
    String::from_utf8_lossy(&all[from.min(all.len())..]).into_owned()
}

pub fn log_len() -> usize {
    LOGS.lock().unwrap().len()
}

pub async fn system(run: &Run, i: usize) -> Result<Value> {
    let url = format!("{}{}", run.sushy.url, Sushy::system(i));
    Ok(run.http.get(url).send().await?.json().await?)
}

/// The bytes behind a CD's Image URL, which must be an ISO 9660 image
/// from the embedded store.
pub async fn iso9660(run: &Run, cd: &Value) -> Result<Vec<u8>> {
    let url = cd["Image"].as_str().unwrap_or_default();
    ensure!(
        url.contains("/objects/") && url.contains("temp_url_sig="),
        "{cd}"
    );
    let r = run.http.get(url).send().await?;
    ensure!(r.status().is_success(), "{url}: {}", r.status());
    let b = r.bytes().await?.to_vec();
    ensure!(
        b.get(0x8001..0x8006) == Some(&b"CD001"[..]),
        "not an ISO 9660 image"
    );
    Ok(b)
}

pub async fn cd(run: &Run, i: usize) -> Result<Value> {
    let url = format!("{}{}/VirtualMedia/Cd", run.sushy.url, Sushy::system(i));
    Ok(run.http.get(url).send().await?.json().await?)
}
