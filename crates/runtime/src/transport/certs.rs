//! Cluster certificates: a private CA and one certificate per node, made with rcgen.
//!
//! [`init_cluster_certs`] writes, into one directory:
//!
//! | file          | what                                             | mode |
//! |---------------|--------------------------------------------------|------|
//! | `ca.pem`      | the cluster CA certificate (the only trust root)  | 0644 |
//! | `ca.key`      | the CA private key (keep it offline)              | 0600 |
//! | `n<id>.pem`   | node `id`'s certificate, signed by the CA         | 0644 |
//! | `n<id>.key`   | node `id`'s private key (PKCS#8)                  | 0600 |
//!
//! A node certificate names its node in a DNS subject alternative name,
//! `n<id>.<cluster>.synod` ([`node_dns_name`]), beside `localhost`, `127.0.0.1` and any
//! extra names asked for. The transport dials peer `n2` with TLS server name
//! `n2.<cluster>.synod`, so the peer must hold a certificate for that name; the acceptor
//! checks the dialer's client certificate against the node id its handshake claims
//! ([`certificate_names_node`]). The id is thus bound to the key, not to an address.
//! Keys are ECDSA P-256; certificates are valid from the start of last year for ten years.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use synod_core::NodeId;
use thiserror::Error;

/// Why certificates could not be made or loaded.
#[derive(Debug, Error)]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The directory already holds a cluster CA; overwriting it would lock every node
    /// signed by it out of the cluster.
    #[error("{0} already exists: refusing to overwrite an existing cluster CA")]
    AlreadyExists(PathBuf),
    /// The cluster id cannot be used in a DNS name.
    #[error("invalid cluster id {id:?}: {reason}")]
    InvalidClusterId {
        /// The id.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same node id was listed twice.
    #[error("node {0} is listed twice")]
    DuplicateNode(NodeId),
    /// rcgen refused the parameters.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file holds no certificate.
    #[error("{0}: no certificate found in the PEM file")]
    NoCertificate(PathBuf),
    /// A PEM file holds no private key.
    #[error("{0}: no private key found in the PEM file")]
    NoPrivateKey(PathBuf),
}

/// The paths of the three files a node needs for mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate (`ca.pem`): the only root trusted for peers.
    pub ca: PathBuf,
    /// This node's certificate chain (`n<id>.pem`).
    pub cert: PathBuf,
    /// This node's private key (`n<id>.key`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of node `node` in a directory made by [`init_cluster_certs`].
    pub fn in_dir(dir: &Path, node: NodeId) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}.key")),
        }
    }
}

/// One node to make a certificate for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertSpec {
    /// The node.
    pub node: NodeId,
    /// DNS names or IP addresses to add beside `n<id>.<cluster>.synod`, `localhost` and
    /// `127.0.0.1` (for example the host the node runs on).
    pub extra_names: Vec<String>,
}

impl From<NodeId> for NodeCertSpec {
    fn from(node: NodeId) -> Self {
        Self {
            node,
            extra_names: Vec::new(),
        }
    }
}

/// What [`init_cluster_certs`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterCertPaths {
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The CA private key.
    pub ca_key: PathBuf,
    /// Each node's files.
    pub nodes: BTreeMap<NodeId, TlsFiles>,
}

/// The DNS name that identifies node `node` of cluster `cluster_id` in certificates and in
/// the TLS server name: `n<id>.<cluster>.synod`.
pub fn node_dns_name(cluster_id: &str, node: NodeId) -> String {
    format!("{node}.{cluster_id}.synod")
}

/// Check that a cluster id can be used in [`node_dns_name`]: a DNS label of 1 to 63
/// lowercase letters, digits and inner hyphens.
pub fn validate_cluster_id(id: &str) -> Result<(), CertError> {
    let fail = |reason| {
        Err(CertError::InvalidClusterId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() || id.len() > 63 {
        return fail("it must be 1 to 63 characters long");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("only lowercase ASCII letters, digits and '-' are allowed");
    }
    if id.starts_with('-') || id.ends_with('-') {
        return fail("it must not start or end with '-'");
    }
    Ok(())
}

/// Create a cluster CA and a certificate and key for every node in `nodes`, as PEM files
/// in `dir` (created if missing). Keys are written with mode 0600. Refuses to run if
/// `dir/ca.pem` exists.
pub fn init_cluster_certs(
    dir: &Path,
    cluster_id: &str,
    nodes: &[NodeCertSpec],
) -> Result<ClusterCertPaths, CertError> {
    validate_cluster_id(cluster_id)?;
    let mut seen = std::collections::BTreeSet::new();
    for spec in nodes {
        if !seen.insert(spec.node) {
            return Err(CertError::DuplicateNode(spec.node));
        }
    }
    let ca_cert_path = dir.join("ca.pem");
    if ca_cert_path.exists() {
        return Err(CertError::AlreadyExists(ca_cert_path));
    }
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;

    let year = current_year();
    let (not_before, not_after) = (
        rcgen::date_time_ymd(year - 1, 1, 1),
        rcgen::date_time_ymd(year + 10, 1, 1),
    );
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("synod cluster {cluster_id} CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let ca_key_path = dir.join("ca.key");
    write_file(&ca_key_path, ca_key.serialize_pem().as_bytes(), true)?;

    let mut paths = BTreeMap::new();
    for spec in nodes {
        let dns = node_dns_name(cluster_id, spec.node);
        let mut names = vec![dns.clone(), "localhost".to_owned(), "127.0.0.1".to_owned()];
        names.extend(spec.extra_names.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, dns);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every node is a TLS server (when dialed) and a TLS client (when dialing).
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        let files = TlsFiles::in_dir(dir, spec.node);
        write_file(&files.key, key.serialize_pem().as_bytes(), true)?;
        write_file(&files.cert, cert.pem().as_bytes(), false)?;
        paths.insert(spec.node, files);
    }
    // The CA certificate is written last: its presence marks a complete directory.
    write_file(&ca_cert_path, ca_cert.pem().as_bytes(), false)?;
    Ok(ClusterCertPaths {
        ca_cert: ca_cert_path,
        ca_key: ca_key_path,
        nodes: paths,
    })
}

/// Check that an end-entity certificate names node `node` of cluster `cluster_id`, that
/// is, carries the DNS name [`node_dns_name`]. The chain must have been verified already
/// (rustls does that during the TLS handshake); this checks the identity only.
pub fn certificate_names_node(
    cert: &CertificateDer<'_>,
    cluster_id: &str,
    node: NodeId,
) -> Result<(), String> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(node_dns_name(cluster_id, node)).map_err(|e| e.to_string())?;
    rustls::client::verify_server_name(&parsed, &name).map_err(|e| {
        format!(
            "{e} (expected the name {})",
            node_dns_name(cluster_id, node)
        )
    })
}

/// Read every certificate in a PEM file.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let file = fs::File::open(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Io {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Read the first private key in a PEM file, warning when others may read it.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let io_error = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(io_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "private key is readable by other users; chmod 600 it"
            );
        }
    }
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(io_error)?
        .ok_or_else(|| CertError::NoPrivateKey(path.to_owned()))
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    let io_error = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(io_error)?;
    #[cfg(unix)]
    if secret {
        // `mode` applies only when the file is created; tighten an existing one too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_error)?;
    }
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

/// The current year, for certificate validity: from January 1st of last year to ten years
/// on, so that a node whose clock is a little behind still accepts the certificates.
fn current_year() -> i32 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Average Gregorian year; off by at most a day, which the margin absorbs.
    1970 + i32::try_from(seconds / 31_556_952).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(ids: &[u32]) -> Vec<NodeCertSpec> {
        ids.iter().map(|&id| NodeId(id).into()).collect()
    }

    #[test]
    fn writes_a_ca_and_one_pair_per_node_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let paths = init_cluster_certs(dir.path(), "alpha", &specs(&[1, 2])).unwrap();
        assert_eq!(paths.nodes.len(), 2);
        for name in ["ca.pem", "ca.key", "n1.pem", "n1.key", "n2.pem", "n2.key"] {
            assert!(dir.path().join(name).exists(), "{name}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in ["ca.key", "n1.key", "n2.key"] {
                let mode = fs::metadata(dir.path().join(name))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
        }
        assert_eq!(
            paths.nodes[&NodeId(1)],
            TlsFiles::in_dir(dir.path(), NodeId(1))
        );
        assert_eq!(load_certs(&paths.ca_cert).unwrap().len(), 1);
        load_key(&paths.nodes[&NodeId(2)].key).unwrap();
    }

    #[test]
    fn refuses_to_overwrite_an_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        init_cluster_certs(dir.path(), "alpha", &specs(&[1])).unwrap();
        let err = init_cluster_certs(dir.path(), "alpha", &specs(&[1])).unwrap_err();
        assert!(matches!(err, CertError::AlreadyExists(_)), "{err}");
    }

    #[test]
    fn node_certificate_names_its_node_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let paths = init_cluster_certs(dir.path(), "alpha", &specs(&[1, 2])).unwrap();
        let cert = &load_certs(&paths.nodes[&NodeId(1)].cert).unwrap()[0];
        assert_eq!(certificate_names_node(cert, "alpha", NodeId(1)), Ok(()));
        let err = certificate_names_node(cert, "alpha", NodeId(2)).unwrap_err();
        assert!(err.contains("n2.alpha.synod"), "{err}");
        assert!(certificate_names_node(cert, "beta", NodeId(1)).is_err());
    }

    #[test]
    fn cluster_ids_must_be_dns_labels() {
        for good in ["alpha", "a", "prod-eu-1"] {
            validate_cluster_id(good).unwrap();
        }
        for bad in ["", "Alpha", "a.b", "-a", "a-", "a b", &"x".repeat(64)] {
            assert!(validate_cluster_id(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(init_cluster_certs(dir.path(), "a.b", &specs(&[1])).is_err());
        let twice = [NodeId(1).into(), NodeId(1).into()];
        assert!(matches!(
            init_cluster_certs(dir.path(), "a", &twice),
            Err(CertError::DuplicateNode(NodeId(1)))
        ));
    }

    #[test]
    fn missing_or_empty_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "not a pem file\n").unwrap();
        let err = load_certs(&empty).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        let err = load_key(&empty).unwrap_err();
        assert!(err.to_string().contains("no private key"), "{err}");
        let err = load_certs(&dir.path().join("missing.pem")).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
