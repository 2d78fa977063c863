//! The Secrets the manifests reference and an operator creates (README,
//! "Kubernetes"), made fresh for each rehearsal: console-svc's sealing key,
//! etcd's peer certificate (one for all members, server and client auth,
//! the members' DNS names), the conductor's htpasswd file.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};

use super::cluster::NET;
use super::pod::Secrets;

/// The conductor's API user the rehearsal's htpasswd holds.
#[derive(Clone, Debug)]
pub struct ApiUser {
    pub user: String,
    pub password: String,
}

fn random(n: usize) -> Result<Vec<u8>> {
    let mut b = vec![0; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every Secret of the base, for namespace `ns`.
pub fn make(ns: &str) -> Result<(Secrets, ApiUser)> {
    let mut s = Secrets::new();
    s.insert(
        "console-svc-sealing-key".into(),
        BTreeMap::from([(
            "key".into(),
            format!("{}\n", hex(&random(32)?)).into_bytes(),
        )]),
    );
    s.insert("etcd-peer-tls".into(), etcd_peer_tls(ns)?);
    let user = ApiUser {
        user: "rehearsal".into(),
        password: hex(&random(12)?),
    };
    // Cost 4: the rehearsal checks the wiring, not bcrypt's cost.
    let hash = bcrypt::hash(&user.password, 4)?;
    s.insert(
        "conductor-htpasswd".into(),
        BTreeMap::from([(
            "htpasswd".into(),
            format!("{}:{hash}\n", user.user).into_bytes(),
        )]),
    );
    Ok((s, user))
}

/// The layout cert-manager writes (tls.crt, tls.key, ca.crt). Its names
/// are the members' (`*.etcd-peer.<ns>.svc`); the rehearsal's addresses are
/// added as IPs (etcd checks a peer's client certificate against the
/// address it connects from, which on loopback is 127.0.0.1).
fn etcd_peer_tls(ns: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "porthole rehearsal etcd CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut sans = vec![
        format!("*.etcd-peer.{ns}.svc"),
        format!("*.etcd-peer.{ns}.svc.cluster.local"),
        "127.0.0.1".to_owned(),
    ];
    sans.extend((1..=254).map(|i| format!("{NET}.{i}")));
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(sans)?;
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(BTreeMap::from([
        ("tls.crt".into(), cert.pem().into_bytes()),
        ("tls.key".into(), key.serialize_pem().into_bytes()),
        ("ca.crt".into(), ca_cert.pem().into_bytes()),
    ]))
}
