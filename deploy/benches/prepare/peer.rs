//! The bench's peer: what PrepareRamdisk asks of the BMC and the store,
//! done straight with a plain HTTP client (reqwest), no service in
//! between: a plain upload (Swift: one `PUT` with the token fetched
//! beforehand; embedded store: writing the file), the two `InsertMedia`
//! POSTs, the boot-once `PATCH`, the `GET` of the system for its power
//! state and the `ComputerSystem.Reset` POST. The device paths are looked
//! up once per node before timing (the service looks them up per call: that
//! is part of what the ratio shows).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One node's resources at the BMC.
#[derive(Clone)]
pub struct Target {
    pub system: String,
    pub floppy: String,
    pub cd: String,
}

/// Where the peer uploads.
#[derive(Clone)]
pub enum PlainStore {
    /// A file in this directory (the embedded store keeps a file).
    Dir(PathBuf),
    /// `PUT <storage_url>/<container>/<name>` with this token.
    Swift {
        storage_url: String,
        container: String,
        token: String,
    },
}

/// One node's timings, seconds.
pub struct PeerTimes {
    pub upload: f64,
    pub insert: f64,
    pub power: f64,
    pub whole: f64,
}

pub struct Peer {
    pub http: reqwest::Client,
    pub bmc: String,
}

impl Peer {
    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.bmc))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) {
        let r = self
            .http
            .request(method.clone(), format!("{}{path}", self.bmc))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(
            status.is_success(),
            "{method} {path}: {status} {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// The node's floppy and CD devices (untimed).
    pub async fn target(&self, system: &str) -> Target {
        let sys = self.get(system).await;
        let coll = sys["VirtualMedia"]["@odata.id"]
            .as_str()
            .expect("sushy links VirtualMedia from the system")
            .to_owned();
        let (mut floppy, mut cd) = (None, None);
        for m in self.get(&coll).await["Members"].as_array().unwrap() {
            let p = m["@odata.id"].as_str().unwrap().to_owned();
            let dev = self.get(&p).await;
            let types: Vec<&str> = dev["MediaTypes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if types.contains(&"Floppy") {
                floppy = Some(p);
            } else if types.contains(&"CD") {
                cd = Some(p);
            }
        }
        Target {
            system: system.to_owned(),
            floppy: floppy.expect("a floppy device"),
            cd: cd.expect("a CD device"),
        }
    }

    /// Eject both (untimed clean up between rounds).
    pub async fn eject(&self, t: &Target) {
        for dev in [&t.floppy, &t.cd] {
            let path = format!("{dev}/Actions/VirtualMedia.EjectMedia");
            let _ = self
                .http
                .post(format!("{}{path}", self.bmc))
                .json(&json!({}))
                .send()
                .await;
        }
    }

    /// Upload `floppy` as `name`, insert `floppy_url` and `iso_url`, boot
    /// once from CD and power on or restart: the service's steps 2-4.
    pub async fn prepare(
        &self,
        t: &Target,
        store: &PlainStore,
        name: &str,
        floppy: bytes::Bytes,
        floppy_url: &str,
        iso_url: &str,
    ) -> PeerTimes {
        let start = Instant::now();
        match store {
            PlainStore::Dir(d) => tokio::fs::write(d.join(name), &floppy).await.unwrap(),
            PlainStore::Swift {
                storage_url,
                container,
                token,
            } => {
                let r = self
                    .http
                    .put(format!("{storage_url}/{container}/{name}"))
                    .header("X-Auth-Token", token)
                    .header("X-Delete-After", "600")
                    .body(floppy)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "PUT {name}: {}", r.status());
            }
        }
        let upload = start.elapsed();

        let t1 = Instant::now();
        for (dev, url) in [(&t.floppy, floppy_url), (&t.cd, iso_url)] {
            let body = json!({"Image": url, "Inserted": true, "WriteProtected": true});
            let action = format!("{dev}/Actions/VirtualMedia.InsertMedia");
            self.send(reqwest::Method::POST, &action, body).await;
        }
        let insert = t1.elapsed();

        let t2 = Instant::now();
        let boot = json!({"Boot": {"BootSourceOverrideTarget": "Cd",
                                   "BootSourceOverrideEnabled": "Once"}});
        self.send(reqwest::Method::PATCH, &t.system, boot).await;
        let sys = self.get(&t.system).await;
        let kind = if sys["PowerState"] == "On" {
            "ForceRestart"
        } else {
            "On"
        };
        let reset = format!("{}/Actions/ComputerSystem.Reset", t.system);
        self.send(reqwest::Method::POST, &reset, json!({"ResetType": kind}))
            .await;
        let power = t2.elapsed();
        PeerTimes {
            upload: upload.as_secs_f64(),
            insert: insert.as_secs_f64(),
            power: power.as_secs_f64(),
            whole: start.elapsed().as_secs_f64(),
        }
    }
}

/// A client for the peer with the service's Redfish timeout.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().unwrap()
}
