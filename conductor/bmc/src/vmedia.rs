//! Redfish virtual media and the one-time boot override, on the shared
//! [`Client`]: the VirtualMedia collection is found by following links (the
//! system's `VirtualMedia`, else each manager in `Links.ManagedBy`, as iLO
//! 5/6 and sushy-tools place it), a device by its `MediaTypes`, and each
//! action at the `target` the device names. Never a built path.
//!
//! Callers: the deploy service (floppy and deploy ISO, boot once from CD).

use serde_json::{json, Value};

use crate::redfish::{Client, Endpoint, RedfishError};

/// A kind of virtual media device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// `Floppy` (or `USBStick`, where a BMC offers only that for it).
    Floppy,
    /// `CD` or `DVD`.
    Cd,
}

impl Media {
    fn types(self) -> &'static [&'static str] {
        match self {
            Media::Floppy => &["Floppy", "USBStick"],
            Media::Cd => &["CD", "DVD"],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Media::Floppy => "floppy",
            Media::Cd => "cd",
        }
    }
}

/// One virtual media device: its path and resource.
#[derive(Clone, Debug)]
pub struct Device {
    pub path: String,
    pub resource: Value,
}

impl Device {
    pub fn inserted(&self) -> bool {
        self.resource["Inserted"].as_bool().unwrap_or(false)
    }

    pub fn image(&self) -> Option<&str> {
        self.resource["Image"].as_str().filter(|s| !s.is_empty())
    }

    fn action(&self, name: &str) -> String {
        self.resource["Actions"][format!("#VirtualMedia.{name}")]["target"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}/Actions/VirtualMedia.{name}", self.path))
    }
}

impl Client {
    /// The VirtualMedia collection's path: the system's link, else the
    /// first manager of the system that has one. A BMC with neither has
    /// no virtual media ([`RedfishError::Unsupported`]).
    pub async fn virtual_media_path(&self, ep: &Endpoint) -> Result<String, RedfishError> {
        let (path, system) = self.system(ep).await?;
        if let Some(p) = system["VirtualMedia"]["@odata.id"].as_str() {
            return Ok(p.to_owned());
        }
        for m in system["Links"]["ManagedBy"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(mp) = m["@odata.id"].as_str() else {
                continue;
            };
            let manager = self.get(ep, mp, "get manager").await?;
            if let Some(p) = manager["VirtualMedia"]["@odata.id"].as_str() {
                return Ok(p.to_owned());
            }
        }
        Err(RedfishError::Unsupported(format!(
            "system {path} has no virtual media (no VirtualMedia link on it or its managers)"
        )))
    }

    /// The device that takes `media`.
    pub async fn virtual_media(&self, ep: &Endpoint, media: Media) -> Result<Device, RedfishError> {
        let coll_path = self.virtual_media_path(ep).await?;
        let coll = self.get(ep, &coll_path, "list virtual media").await?;
        for member in coll["Members"].as_array().into_iter().flatten() {
            let Some(p) = member["@odata.id"].as_str() else {
                continue;
            };
            let resource = self.get(ep, p, "get virtual media").await?;
            let fits = resource["MediaTypes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|t| media.types().contains(&t));
            if fits {
                return Ok(Device {
                    path: p.to_owned(),
                    resource,
                });
            }
        }
        Err(RedfishError::Unsupported(format!(
            "no virtual media device for {} (MediaTypes {}) in {coll_path}",
            media.as_str(),
            media.types().join("/")
        )))
    }

    /// Insert `image` (a URL the BMC fetches) into the `media` device,
    /// ejecting what it holds first.
    pub async fn insert_media(
        &self,
        ep: &Endpoint,
        media: Media,
        image: &str,
    ) -> Result<(), RedfishError> {
        let dev = self.virtual_media(ep, media).await?;
        if dev.inserted() {
            self.post(
                ep,
                &dev.action("EjectMedia"),
                &json!({}),
                &format!("eject {}", media.as_str()),
            )
            .await?;
        }
        self.post(
            ep,
            &dev.action("InsertMedia"),
            &json!({"Image": image, "Inserted": true, "WriteProtected": true}),
            &format!("insert {}", media.as_str()),
        )
        .await
        .map(drop)
    }

    /// Eject the `media` device; an empty one is left alone.
    pub async fn eject_media(&self, ep: &Endpoint, media: Media) -> Result<(), RedfishError> {
        let dev = self.virtual_media(ep, media).await?;
        if !dev.inserted() && dev.image().is_none() {
            return Ok(());
        }
        self.post(
            ep,
            &dev.action("EjectMedia"),
            &json!({}),
            &format!("eject {}", media.as_str()),
        )
        .await
        .map(drop)
    }

    /// Boot once from `target` (`Cd`, `Pxe`, `Hdd`...): the next boot only.
    pub async fn boot_once(&self, ep: &Endpoint, target: &str) -> Result<(), RedfishError> {
        let path = self.system_path(ep).await?;
        self.patch(
            ep,
            &path,
            &json!({"Boot": {
                "BootSourceOverrideTarget": target,
                "BootSourceOverrideEnabled": "Once"
            }}),
            &format!("set boot once to {target}"),
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{Method, Uri};
    use axum::routing::any;
    use axum::{Json, Router};

    use super::*;

    type Seen = Arc<Mutex<Vec<String>>>;

    /// A BMC whose virtual media hang off its manager (as on iLO), at
    /// paths nothing would guess; records each request.
    async fn ilo_like(with_media: bool) -> (Endpoint, Seen) {
        let seen: Seen = Arc::default();
        let app = Router::new()
            .fallback(any(
                move |State(seen): State<Seen>, method: Method, uri: Uri, body: String| async move {
                    seen.lock()
                        .unwrap()
                        .push(format!("{method} {} {body}", uri.path()));
                    Json(match uri.path() {
                        "/redfish/v1" => json!({"Systems": {"@odata.id": "/s"}}),
                        "/s" => json!({"Members": [{"@odata.id": "/s/1"}]}),
                        "/s/1" => json!({"Links": {"ManagedBy": [{"@odata.id": "/m/1"}]}}),
                        "/m/1" if with_media => json!({"VirtualMedia": {"@odata.id": "/m/1/vm"}}),
                        "/m/1/vm" => json!({"Members": [{"@odata.id": "/m/1/vm/a"}, {"@odata.id": "/m/1/vm/b"}]}),
                        "/m/1/vm/a" => json!({"MediaTypes": ["Floppy", "USBStick"], "Inserted": false}),
                        "/m/1/vm/b" => json!({"MediaTypes": ["CD", "DVD"], "Inserted": true,
                            "Image": "http://old/x.iso",
                            "Actions": {"#VirtualMedia.InsertMedia": {"target": "/act/b/insert"},
                                        "#VirtualMedia.EjectMedia": {"target": "/act/b/eject"}}}),
                        _ => json!({}),
                    })
                },
            ))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (Endpoint::new(&format!("http://{addr}")), seen)
    }

    fn writes(seen: &Seen) -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| !s.starts_with("GET "))
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn cd_found_through_the_manager_ejected_then_inserted_at_its_targets() {
        let (ep, seen) = ilo_like(true).await;
        let client = Client::new(std::time::Duration::from_secs(5)).unwrap();
        client
            .insert_media(&ep, Media::Cd, "http://store/deploy.iso")
            .await
            .unwrap();
        assert_eq!(
            writes(&seen),
            [
                "POST /act/b/eject {}",
                r#"POST /act/b/insert {"Image":"http://store/deploy.iso","Inserted":true,"WriteProtected":true}"#
            ]
        );
    }

    #[tokio::test]
    async fn floppy_without_targets_uses_the_conventional_action_path() {
        let (ep, seen) = ilo_like(true).await;
        let client = Client::new(std::time::Duration::from_secs(5)).unwrap();
        client
            .insert_media(&ep, Media::Floppy, "http://store/f")
            .await
            .unwrap();
        // Empty floppy: no eject; eject of an empty device does nothing.
        client.eject_media(&ep, Media::Floppy).await.unwrap();
        assert_eq!(
            writes(&seen),
            [
                r#"POST /m/1/vm/a/Actions/VirtualMedia.InsertMedia {"Image":"http://store/f","Inserted":true,"WriteProtected":true}"#
            ]
        );
    }

    #[tokio::test]
    async fn a_bmc_without_virtual_media_is_a_clear_error() {
        let (ep, _) = ilo_like(false).await;
        let client = Client::new(std::time::Duration::from_secs(5)).unwrap();
        let err = client.virtual_media(&ep, Media::Cd).await.unwrap_err();
        assert!(matches!(err, RedfishError::Unsupported(_)), "{err:?}");
        assert!(err.to_string().contains("has no virtual media"), "{err}");
    }

    #[tokio::test]
    async fn boot_once_patches_target_and_once() {
        let (ep, seen) = ilo_like(true).await;
        let client = Client::new(std::time::Duration::from_secs(5)).unwrap();
        client.boot_once(&ep, "Cd").await.unwrap();
        assert_eq!(
            writes(&seen),
            [
                r#"PATCH /s/1 {"Boot":{"BootSourceOverrideEnabled":"Once","BootSourceOverrideTarget":"Cd"}}"#
            ]
        );
    }
}
