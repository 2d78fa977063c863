//! Certificates for TLS tests, made with rcgen into a temp dir that lives
//! as long as the [`Pki`]: a CA, a server certificate for `127.0.0.1` and
//! `localhost`, a client certificate it signed, and a second CA with a
//! client of its own (a stranger the first CA never signed).

use std::path::PathBuf;

use anyhow::Result;
use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};

pub struct Pki {
    dir: tempfile::TempDir,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Result<Self> {
        let pki = Self {
            dir: tempfile::Builder::new().prefix("porthole-pki-").tempdir()?,
        };
        let (ca, ca_key) = pki.make_ca("ca")?;
        pki.leaf("server", &["127.0.0.1", "localhost"], &ca, &ca_key)?;
        pki.leaf("client", &["porthole-client"], &ca, &ca_key)?;
        let (other, other_key) = pki.make_ca("other-ca")?;
        pki.leaf("stranger", &["stranger"], &other, &other_key)?;
        Ok(pki)
    }

    /// The CA that signed the server and the client.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    pub fn server(&self) -> Pair {
        self.pair("server")
    }

    /// Signed by [`Pki::ca`].
    pub fn client(&self) -> Pair {
        self.pair("client")
    }

    /// Signed by another CA.
    pub fn stranger(&self) -> Pair {
        self.pair("stranger")
    }

    fn pair(&self, name: &str) -> Pair {
        Pair {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn make_ca(&self, name: &str) -> Result<(Certificate, KeyPair)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("porthole test {name}"));
        let cert = params.self_signed(&key)?;
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem())?;
        Ok((cert, key))
    }

    fn leaf(&self, name: &str, sans: &[&str], ca: &Certificate, ca_key: &KeyPair) -> Result<()> {
        let key = KeyPair::generate()?;
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(sans)?.signed_by(&key, ca, ca_key)?;
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem())?;
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem())?;
        Ok(())
    }
}

/// tonic's client TLS config: trust `ca`, present `identity` if given.
pub fn client_tls(
    ca: &std::path::Path,
    identity: Option<&Pair>,
) -> Result<tonic::transport::ClientTlsConfig> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
    if let Some(p) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&p.cert)?,
            std::fs::read(&p.key)?,
        ));
    }
    Ok(tls)
}
