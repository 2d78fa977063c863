//! The upstream side: console-svc plays an RFB client toward the BMC's VNC
//! server (RFB 3.3, 3.7 or 3.8) and authenticates with None, VNC
//! authentication, or VeNCrypt (X509Vnc/X509None over TLS, or its plain
//! VncAuth/None subtypes). It stops right after a successful SecurityResult:
//! the viewer's ClientInit is the next thing the upstream sees.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::rfb::{self, Dialect, Version};
use super::rfb::{SEC_NONE, SEC_VENCRYPT, SEC_VNC_AUTH};
use super::rfb::{VENCRYPT_PLAIN_NONE, VENCRYPT_PLAIN_VNC, VENCRYPT_X509_NONE, VENCRYPT_X509_VNC};
use super::stream::Stream;
use super::{des_auth, tls, VncError};
use crate::secret::Secret;

/// An upstream security method, in the order of `vnc.upstream_security`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    VeNCrypt,
    VncAuth,
    None,
}

/// What the upstream side needs, shared by every console.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// Preference order among what the server offers.
    pub prefer: Vec<Method>,
    /// Trust for VeNCrypt X509 upstreams; without it those are not used.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bound on connecting plus the whole handshake.
    pub timeout: Duration,
}

/// One console's upstream.
pub struct UpstreamTarget<'a> {
    /// The host name or address, for the TLS name check.
    pub host: &'a str,
    pub password: Option<&'a Secret>,
}

/// Authentication inside the chosen method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner {
    None,
    VncAuth,
}

/// Handshake with an upstream up to a successful SecurityResult.
pub async fn handshake<S>(
    mut io: S,
    target: &UpstreamTarget<'_>,
    settings: &UpstreamSettings,
) -> Result<(Stream<S>, Version), VncError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut raw = [0u8; 12];
    io.read_exact(&mut raw).await.map_err(not_rfb_on_eof)?;
    let version = Version::parse(&raw).ok_or(VncError::UpstreamNotRfb(rfb::show_bytes(&raw)))?;
    let dialect = version
        .dialect()
        .ok_or(VncError::UpstreamVersion(version))?;
    rfb::send(&mut io, dialect.wire()).await?;
    let offered = read_offer(&mut io, dialect).await?;
    let method = choose(&offered, target, settings)?;
    if dialect != Dialect::V33 {
        let wire = match method {
            Method::VeNCrypt => SEC_VENCRYPT,
            Method::VncAuth => SEC_VNC_AUTH,
            Method::None => SEC_NONE,
        };
        rfb::send(&mut io, &[wire]).await?;
    }
    let (mut stream, inner) = match method {
        Method::VeNCrypt => vencrypt(io, target, settings).await?,
        Method::VncAuth => (Stream::Plain(io), Inner::VncAuth),
        Method::None => (Stream::Plain(io), Inner::None),
    };
    if inner == Inner::VncAuth {
        vnc_auth(&mut stream, target.password).await?;
    }
    // RFB 3.3 and 3.7 send no SecurityResult after None.
    if inner == Inner::VncAuth || dialect == Dialect::V38 || method == Method::VeNCrypt {
        security_result(&mut stream, dialect).await?;
    }
    Ok((stream, version))
}

/// A server that hangs up before 12 bytes is no RFB server either.
fn not_rfb_on_eof(e: std::io::Error) -> VncError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        VncError::UpstreamNotRfb("a closed connection".into())
    } else {
        VncError::Io(e)
    }
}

/// The security types the server offers (3.3: the one it picked).
async fn read_offer<S>(io: &mut S, dialect: Dialect) -> Result<Vec<u32>, VncError>
where
    S: AsyncRead + Unpin,
{
    let offered = if dialect == Dialect::V33 {
        vec![io.read_u32().await?]
    } else {
        let n = io.read_u8().await? as usize;
        let mut types = vec![0u8; n];
        io.read_exact(&mut types).await?;
        types.into_iter().map(u32::from).collect()
    };
    if offered.is_empty() || offered == [0] {
        let reason = rfb::read_string(io, "refusal reason", rfb::MAX_REASON).await?;
        return Err(VncError::UpstreamRefused(reason));
    }
    Ok(offered)
}

fn choose(
    offered: &[u32],
    target: &UpstreamTarget<'_>,
    settings: &UpstreamSettings,
) -> Result<Method, VncError> {
    let has = |t: u8| offered.contains(&u32::from(t));
    // VeNCrypt without TLS trust only as a last resort (its plain subtypes).
    let usable = |m: &Method, last_resort: bool| match m {
        Method::VeNCrypt => has(SEC_VENCRYPT) && (settings.tls.is_some() || last_resort),
        Method::VncAuth => has(SEC_VNC_AUTH) && target.password.is_some(),
        Method::None => has(SEC_NONE),
    };
    for last_resort in [false, true] {
        if let Some(m) = settings.prefer.iter().find(|m| usable(m, last_resort)) {
            return Ok(*m);
        }
    }
    let names: Vec<String> = offered.iter().map(|t| rfb::security_name(*t)).collect();
    let hint = if (has(SEC_VNC_AUTH) || has(SEC_VENCRYPT)) && target.password.is_none() {
        "; the console has no VNC password"
    } else {
        ""
    };
    Err(VncError::NoCommonSecurity(format!(
        "{}{hint}",
        names.join(", ")
    )))
}

/// VeNCrypt 0.2 as the client: pick a subtype, start TLS if it has one.
async fn vencrypt<S>(
    mut io: S,
    target: &UpstreamTarget<'_>,
    settings: &UpstreamSettings,
) -> Result<(Stream<S>, Inner), VncError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut version = [0u8; 2];
    io.read_exact(&mut version).await?;
    if version < [0, 2] {
        return Err(VncError::UpstreamVencrypt(format!(
            "VeNCrypt version {}.{} (0.2 needed)",
            version[0], version[1]
        )));
    }
    rfb::send(&mut io, &[0, 2]).await?;
    if io.read_u8().await? != 0 {
        return Err(VncError::UpstreamVencrypt("it refused VeNCrypt 0.2".into()));
    }
    let n = io.read_u8().await? as usize;
    let mut subtypes = Vec::with_capacity(n);
    for _ in 0..n {
        subtypes.push(io.read_u32().await?);
    }
    let subtype = pick_subtype(&subtypes, target, settings)?;
    rfb::send(&mut io, &subtype.to_be_bytes()).await?;
    let inner = match subtype {
        VENCRYPT_X509_VNC | VENCRYPT_PLAIN_VNC => Inner::VncAuth,
        _ => Inner::None,
    };
    if subtype == VENCRYPT_PLAIN_VNC || subtype == VENCRYPT_PLAIN_NONE {
        return Ok((Stream::Plain(io), inner));
    }
    if io.read_u8().await? != 1 {
        return Err(VncError::UpstreamVencrypt(
            "it refused the TLS subtype".into(),
        ));
    }
    let config = settings
        .tls
        .clone()
        .expect("X509 subtypes are picked only with TLS settings");
    let tls = TlsConnector::from(config)
        .connect(tls::server_name(target.host)?, io)
        .await
        .map_err(VncError::UpstreamTls)?;
    Ok((
        Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))),
        inner,
    ))
}

/// X509Vnc, then X509None (with TLS trust); then plain VncAuth, then None.
fn pick_subtype(
    subtypes: &[u32],
    target: &UpstreamTarget<'_>,
    settings: &UpstreamSettings,
) -> Result<u32, VncError> {
    let with_tls = settings.tls.is_some();
    let with_password = target.password.is_some();
    let candidates = [
        (VENCRYPT_X509_VNC, with_tls && with_password),
        (VENCRYPT_X509_NONE, with_tls),
        (VENCRYPT_PLAIN_VNC, with_password),
        (VENCRYPT_PLAIN_NONE, true),
    ];
    if let Some((t, _)) = candidates
        .iter()
        .find(|(t, ok)| *ok && subtypes.contains(t))
    {
        return Ok(*t);
    }
    let names: Vec<String> = subtypes.iter().map(|t| rfb::security_name(*t)).collect();
    let anonymous_only = subtypes.iter().all(|t| (257..=259).contains(t));
    Err(if anonymous_only && !subtypes.is_empty() {
        VncError::AnonymousTlsOnly(names.join(", "))
    } else {
        VncError::NoCommonSecurity(format!("VeNCrypt subtypes {}", names.join(", ")))
    })
}

/// VNC authentication: answer the 16-byte challenge.
async fn vnc_auth<S>(io: &mut S, password: Option<&Secret>) -> Result<(), VncError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let password = password.ok_or(VncError::PasswordRequired)?;
    let mut challenge = [0u8; rfb::CHALLENGE_LEN];
    io.read_exact(&mut challenge).await?;
    let answer = des_auth::response(password.expose().as_bytes(), &challenge);
    rfb::send(io, &answer).await?;
    Ok(())
}

async fn security_result<S>(io: &mut S, dialect: Dialect) -> Result<(), VncError>
where
    S: AsyncRead + Unpin,
{
    match io.read_u32().await {
        Ok(rfb::RESULT_OK) => Ok(()),
        Ok(_) if dialect == Dialect::V38 => {
            let reason = rfb::read_string(io, "failure reason", rfb::MAX_REASON).await?;
            Err(VncError::AuthFailed(reason))
        }
        Ok(_) => Err(VncError::AuthFailed("authentication failed".into())),
        // Some servers just hang up on a wrong password.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(VncError::AuthFailed(
            "the server closed the connection".into(),
        )),
        Err(e) => Err(e.into()),
    }
}
