//! The codec of the generated servers and clients (console.v1,
//! deploy.v1, inspect.v1): prost's, except
//! for what an undecodable message becomes. A request the server cannot
//! decode is the caller's mistake, so INVALID_ARGUMENT (tonic-prost says
//! INTERNAL, which tells a caller the service broke); a response the client
//! cannot decode stays INTERNAL. Named in `build.rs` (`codec_path`).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::ProstEncoder;

use crate::console::v1 as pb;
use crate::inspect::v1 as ipb;

/// The status code for a message of this type that cannot be decoded.
pub trait DecodeFailure {
    const CODE: Code;
}

macro_rules! decode_failure {
    ($code:ident: $($t:ty),+ $(,)?) => {$(
        impl DecodeFailure for $t {
            const CODE: Code = Code::$code;
        }
    )+};
}

// What the server decodes: requests.
decode_failure!(InvalidArgument:
    pb::EnableConsoleRequest,
    pb::DisableConsoleRequest,
    pb::GetConsoleRequest,
    pb::ListConsolesRequest,
    pb::WatchConsolesRequest,
    pb::GetConsoleLogRequest,
    pb::DrainReplicaRequest,
);
// What the client decodes: responses.
decode_failure!(Internal:
    pb::Console,
    pb::ListConsolesResponse,
    pb::ConsoleEvent,
    pb::GetConsoleLogResponse,
    pb::DrainReplicaResponse,
);

// deploy.v1: requests, then responses.
decode_failure!(InvalidArgument:
    crate::deploy::v1::ValidateRequest,
    crate::deploy::v1::PrepareRamdiskRequest,
    crate::deploy::v1::CleanUpRequest,
);
decode_failure!(Internal:
    crate::deploy::v1::ValidateResponse,
    crate::deploy::v1::PrepareRamdiskResponse,
    crate::deploy::v1::CleanUpResponse,
);

// deploy.v1 InstanceDeployService (issue 14): requests, then responses.
decode_failure!(InvalidArgument:
    crate::deploy::v1::ContinueDeployRequest,
    crate::deploy::v1::ReleaseBootIsoRequest,
    crate::deploy::v1::BootInstanceRequest,
);
decode_failure!(Internal:
    crate::deploy::v1::DeployProgress,
    crate::deploy::v1::ReleaseBootIsoResponse,
    crate::deploy::v1::BootInstanceResponse,
);

// inspect.v1: requests, then responses.
decode_failure!(InvalidArgument:
    ipb::ValidateInspectionRequest,
    ipb::StartInspectionRequest,
    ipb::GetInspectionRequest,
    ipb::AbortInspectionRequest,
    ipb::WatchInspectionsRequest,
);
decode_failure!(Internal: ipb::ValidateInspectionResponse, ipb::Inspection);
// inspect.v1's `agent` data (ContinueInspection).
decode_failure!(InvalidArgument: ipb::ContinueInspectionRequest);
decode_failure!(Internal: ipb::ContinueInspectionResponse);

/// Encodes `T`, decodes `U`.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + DecodeFailure + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

/// Decodes `U`; a failure gets `U`'s [`DecodeFailure::CODE`].
#[derive(Debug, Clone, Default)]
pub struct MessageDecoder<U>(PhantomData<U>);

impl<U: Message + Default + DecodeFailure> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            let what = std::any::type_name::<U>()
                .rsplit("::")
                .next()
                .unwrap_or("message");
            Status::new(U::CODE, format!("the {what} could not be decoded: {e}"))
        })
    }
}
