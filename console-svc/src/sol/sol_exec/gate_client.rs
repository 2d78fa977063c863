//! The helper's connection to its replica's activation gate: one request
//! line, one answer line, within [`ANSWER_WITHIN`]; a connection that went
//! silent is dropped so a late answer is never taken for a later one.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::{GateRef, ANSWER_WITHIN};
use crate::sol::activation_gate::{Answer, Request};

/// Why asking failed.
#[derive(Debug)]
pub(super) enum AskError {
    /// No answer within [`ANSWER_WITHIN`] (the replica is paused or busy).
    Silent,
    /// The socket is gone or closed: the replica died.
    Gone(String),
}

/// One connection to the replica's gate.
pub(super) struct GateClient {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl GateClient {
    pub(super) async fn connect(gate: &GateRef) -> Result<Self, AskError> {
        let stream = tokio::time::timeout(ANSWER_WITHIN, UnixStream::connect(&gate.socket))
            .await
            .map_err(|_| AskError::Silent)?
            .map_err(|e| AskError::Gone(format!("{}: {e}", gate.socket.display())))?;
        let (read, write) = stream.into_split();
        Ok(Self {
            lines: BufReader::new(read).lines(),
            write,
        })
    }

    pub(super) async fn ask(&mut self, request: &Request) -> Result<Answer, AskError> {
        let exchange = async {
            self.write
                .write_all(request.line().as_bytes())
                .await
                .map_err(|e| AskError::Gone(e.to_string()))?;
            match self.lines.next_line().await {
                Ok(Some(line)) => Ok(Answer::parse(&line)),
                Ok(None) => Err(AskError::Gone("the replica closed the gate".into())),
                Err(e) => Err(AskError::Gone(e.to_string())),
            }
        };
        tokio::time::timeout(ANSWER_WITHIN, exchange)
            .await
            .map_err(|_| AskError::Silent)?
    }
}

/// Ask once on `client` (connecting first when there is none); a client
/// that went silent is dropped, so a late answer is never taken for the
/// answer to a later request. The deadline an answer gives counts from
/// before the request was sent.
pub(super) async fn ask(
    client: &mut Option<GateClient>,
    gate: &GateRef,
    request: &Request,
) -> Result<(Instant, Answer), AskError> {
    let sent = Instant::now();
    let c = match client {
        Some(c) => c,
        None => client.insert(GateClient::connect(gate).await?),
    };
    match c.ask(request).await {
        Ok(a) => Ok((sent, a)),
        Err(e) => {
            *client = None;
            Err(e)
        }
    }
}
