//! `deploy.v1.DeployService` over [`Deployer`]: requests in, statuses out.
//! A node that fails validation is INVALID_ARGUMENT (the conductor's 400)
//! with every problem; a store that cannot be reached is UNAVAILABLE; a BMC
//! or store that refuses is FAILED_PRECONDITION with "deploy failed: " and
//! the peer's words.
//!
//! Callers: [`crate::run`] serves it.

use std::sync::Arc;

use porthole_proto::deploy::v1::deploy_service_server::DeployService;
use porthole_proto::deploy::v1::{
    CleanUpRequest, CleanUpResponse, DeployNode, PrepareRamdiskRequest, PrepareRamdiskResponse,
    ValidateRequest, ValidateResponse,
};
use tonic::{Request, Response, Status};

use crate::deploy::{DeployError, Deployer};
use crate::store::StoreError;

pub struct DeployApi {
    deployer: Arc<Deployer>,
}

impl DeployApi {
    pub fn new(deployer: Arc<Deployer>) -> Self {
        Self { deployer }
    }
}

fn node(n: Option<DeployNode>) -> Result<DeployNode, Status> {
    n.ok_or_else(|| Status::invalid_argument("node is required"))
}

fn status(e: DeployError) -> Status {
    match &e {
        DeployError::Invalid(_) => Status::invalid_argument(e.to_string()),
        DeployError::Store(StoreError::Transport { .. }) => Status::unavailable(e.to_string()),
        _ => Status::failed_precondition(e.to_string()),
    }
}

#[tonic::async_trait]
impl DeployService for DeployApi {
    async fn validate(
        &self,
        req: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let n = node(req.into_inner().node)?;
        self.deployer.validate(&n).map_err(|e| status(e.into()))?;
        Ok(Response::new(ValidateResponse {}))
    }

    async fn prepare_ramdisk(
        &self,
        req: Request<PrepareRamdiskRequest>,
    ) -> Result<Response<PrepareRamdiskResponse>, Status> {
        let n = node(req.into_inner().node)?;
        let p = self.deployer.prepare(&n).await.map_err(status)?;
        Ok(Response::new(PrepareRamdiskResponse {
            deployment_key: p.deployment_key.expose().to_owned(),
            token: p.token.expose().to_owned(),
            floppy_url: p.floppy_url,
            floppy_build_seconds: p.floppy_build.as_secs_f64(),
            upload_seconds: p.upload.as_secs_f64(),
            insert_seconds: p.insert.as_secs_f64(),
            power_seconds: p.power.as_secs_f64(),
        }))
    }

    async fn clean_up(
        &self,
        req: Request<CleanUpRequest>,
    ) -> Result<Response<CleanUpResponse>, Status> {
        let n = node(req.into_inner().node)?;
        self.deployer.clean_up(&n).await.map_err(status)?;
        Ok(Response::new(CleanUpResponse {}))
    }
}
