//! `deploy.v1.InstanceDeployService` over [`Instances`]: ContinueDeploy as
//! a server stream of [`DeployProgress`] (its last message carries the
//! result; a failure ends the stream with a status instead), and
//! ReleaseBootIso. A request missing fields is INVALID_ARGUMENT; a store
//! that cannot be reached UNAVAILABLE; every other failure
//! FAILED_PRECONDITION "deploy failed: …" with the peer's or the tool's
//! words.
//!
//! The deploy runs in a task of its own. A caller that goes away before
//! the boot ISO step cancels it (a running `qemu-img` is killed); from the
//! boot ISO step on it runs to its end, so a count it took is either
//! returned in the result or released on failure.
//!
//! Callers: [`crate::run`] serves it.

use std::pin::Pin;
use std::sync::Arc;

use porthole_proto::deploy::v1::instance_deploy_service_server::InstanceDeployService;
use porthole_proto::deploy::v1::{
    BootInstanceRequest, BootInstanceResponse, ContinueDeployRequest, DeployProgress,
    ReleaseBootIsoRequest, ReleaseBootIsoResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::instance::{Boot, InstanceError, Instances, Request as Continue};
use crate::store::StoreError;

pub struct InstanceApi {
    instances: Arc<Instances>,
    ramdisk_port: u16,
}

impl InstanceApi {
    pub fn new(instances: Arc<Instances>, ramdisk_port: u16) -> Self {
        Self {
            instances,
            ramdisk_port,
        }
    }
}

fn status(e: &InstanceError) -> Status {
    match e {
        InstanceError::Invalid(_) => Status::invalid_argument(e.to_string()),
        InstanceError::Store(StoreError::Transport { .. }) => Status::unavailable(e.to_string()),
        _ => Status::failed_precondition(e.to_string()),
    }
}

type Progress = Pin<Box<dyn Stream<Item = Result<DeployProgress, Status>> + Send>>;

#[tonic::async_trait]
impl InstanceDeployService for InstanceApi {
    type ContinueDeployStream = Progress;

    async fn continue_deploy(
        &self,
        req: Request<ContinueDeployRequest>,
    ) -> Result<Response<Progress>, Status> {
        let req = match Continue::parse(req.into_inner(), self.ramdisk_port) {
            Ok(r) => r,
            Err(e) => {
                crate::metrics::get().continued("invalid");
                return Err(status(&e));
            }
        };
        let (progress_tx, progress_rx) = mpsc::channel::<DeployProgress>(64);
        let (end_tx, end_rx) = mpsc::channel::<Result<DeployProgress, Status>>(1);
        let instances = self.instances.clone();
        let cancel = CancellationToken::new();
        let guard = cancel.clone().drop_guard();
        tokio::spawn(async move {
            let r = instances.continue_deploy(req, progress_tx, cancel).await;
            if let Err(e) = r {
                let _ = end_tx.send(Err(status(&e))).await;
            }
        });
        let stream = ReceiverStream::new(progress_rx)
            .map(Ok)
            .chain(ReceiverStream::new(end_rx))
            .map(move |item| {
                let _ = &guard;
                item
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn release_boot_iso(
        &self,
        req: Request<ReleaseBootIsoRequest>,
    ) -> Result<Response<ReleaseBootIsoResponse>, Status> {
        let boot_iso = req.into_inner().boot_iso;
        if boot_iso.is_empty() {
            return Err(Status::invalid_argument("boot_iso is required"));
        }
        let (usage_count, deleted) = self
            .instances
            .release_boot_iso(&boot_iso)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(ReleaseBootIsoResponse {
            usage_count,
            deleted,
        }))
    }

    async fn boot_instance(
        &self,
        req: Request<BootInstanceRequest>,
    ) -> Result<Response<BootInstanceResponse>, Status> {
        let r = req.into_inner();
        let node = r.node.unwrap_or_default();
        let how = Boot {
            persistent: r.persistent,
            reset: !r.skip_reset,
        };
        let reset = self
            .instances
            .boot_instance(&node, &r.boot_iso, how)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(BootInstanceResponse {
            reset: reset.to_owned(),
        }))
    }
}
