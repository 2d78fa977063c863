//! The viewer side: console-svc plays an RFB 3.8 server toward nova-novncproxy
//! (or any viewer), byte for byte as `shared/docs/compat.md` describes.
//!
//! [`accept`] runs the handshake up to the viewer's security choice (and the
//! VeNCrypt TLS handshake); the caller then reaches the upstream and ends it
//! with [`Pending::succeed`] or [`Pending::reject`]. Every message goes out
//! in a single write. The whole of [`accept`] is bounded by
//! `handshake_timeout`, and the viewer may send at most `max_handshake_bytes`
//! before [`Pending::succeed`] lifts the limit.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use super::rfb::{self, Dialect, Version, RFB_38, SEC_NONE, SEC_VENCRYPT, VENCRYPT_X509_NONE};
use super::stream::{Limited, Stream};
use super::VncError;

/// A security type console-svc offers viewers (nova's `auth_schemes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    None,
    /// VeNCrypt with subtype X509None: TLS with client certificates.
    VeNCrypt,
}

impl Scheme {
    pub fn wire(self) -> u8 {
        match self {
            Scheme::None => SEC_NONE,
            Scheme::VeNCrypt => SEC_VENCRYPT,
        }
    }
}

/// What the viewer side needs.
#[derive(Clone)]
pub struct ViewerSettings {
    /// Offered in this order; never empty.
    pub schemes: Vec<Scheme>,
    /// Required when `schemes` holds VeNCrypt.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub handshake_timeout: Duration,
    pub max_handshake_bytes: usize,
}

/// A viewer whose handshake waits for the upstream's outcome.
pub struct Pending<S> {
    stream: Stream<Limited<S>>,
    pub scheme: Scheme,
}

/// Handshake with a viewer up to (not including) the SecurityResult.
pub async fn accept<S>(io: S, settings: &ViewerSettings) -> Result<Pending<S>, VncError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = Limited::new(io, settings.max_handshake_bytes);
    let limit = settings.handshake_timeout;
    tokio::time::timeout(limit, handshake(io, settings))
        .await
        .map_err(|_| VncError::ViewerTimeout(limit))?
}

async fn handshake<S>(mut io: Limited<S>, settings: &ViewerSettings) -> Result<Pending<S>, VncError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    rfb::send(&mut io, RFB_38).await?;
    let mut raw = [0u8; 12];
    io.read_exact(&mut raw).await?;
    match Version::parse(&raw) {
        None => return Err(VncError::ViewerNotRfb(rfb::show_bytes(&raw))),
        Some(v) if v.dialect() != Some(Dialect::V38) => return Err(VncError::ViewerVersion(v)),
        Some(_) => {}
    }
    let mut offer = vec![settings.schemes.len() as u8];
    offer.extend(settings.schemes.iter().map(|s| s.wire()));
    rfb::send(&mut io, &offer).await?;
    let choice = io.read_u8().await?;
    let Some(scheme) = settings.schemes.iter().find(|s| s.wire() == choice) else {
        let reason = format!("security type {choice} was not offered");
        fail(&mut io, &reason).await;
        return Err(VncError::ViewerChoice(choice));
    };
    let stream = match scheme {
        Scheme::None => Stream::Plain(io),
        Scheme::VeNCrypt => vencrypt(io, settings.tls.clone()).await?,
    };
    Ok(Pending {
        stream,
        scheme: *scheme,
    })
}

/// VeNCrypt 0.2 with the one subtype X509None, then TLS as the server.
async fn vencrypt<S>(
    mut io: Limited<S>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Stream<Limited<S>>, VncError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls =
        tls.ok_or_else(|| VncError::Config("VeNCrypt offered without TLS settings".into()))?;
    rfb::send(&mut io, &[0, 2]).await?;
    let mut version = [0u8; 2];
    io.read_exact(&mut version).await?;
    if version != [0, 2] {
        let _ = rfb::send(&mut io, &[0xff]).await;
        return Err(VncError::ViewerVencrypt(format!(
            "VeNCrypt version {}.{} (only 0.2 is served)",
            version[0], version[1]
        )));
    }
    rfb::send(&mut io, &[0]).await?;
    let mut subtypes = vec![1u8];
    subtypes.extend_from_slice(&VENCRYPT_X509_NONE.to_be_bytes());
    rfb::send(&mut io, &subtypes).await?;
    let subtype = io.read_u32().await?;
    if subtype != VENCRYPT_X509_NONE {
        let _ = rfb::send(&mut io, &[0]).await;
        return Err(VncError::ViewerVencrypt(format!(
            "VeNCrypt subtype {subtype} was not offered"
        )));
    }
    rfb::send(&mut io, &[1]).await?;
    let tls = TlsAcceptor::from(tls)
        .accept(io)
        .await
        .map_err(VncError::ViewerTls)?;
    Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))))
}

/// SecurityResult "failed" with a reason (RFB 3.8), then close; best effort.
async fn fail<W: AsyncWrite + Unpin>(io: &mut W, reason: &str) {
    let mut msg = rfb::RESULT_FAILED.to_be_bytes().to_vec();
    rfb::put_reason(&mut msg, reason);
    let _ = rfb::send(io, &msg).await;
    let _ = io.shutdown().await;
}

impl<S: AsyncRead + AsyncWrite + Unpin> Pending<S> {
    /// SecurityResult OK; from here on the viewer's bytes are unlimited.
    pub async fn succeed(mut self) -> Result<Stream<Limited<S>>, VncError> {
        rfb::send(&mut self.stream, &rfb::RESULT_OK.to_be_bytes()).await?;
        self.stream.transport_mut().lift();
        Ok(self.stream)
    }

    /// SecurityResult failed with `reason`, then close.
    pub async fn reject(mut self, reason: &str) {
        fail(&mut self.stream, reason).await;
    }
}
