//! rustls configuration for mutual TLS 1.3 (RFC 8446) between nodes.
//!
//! Both directions trust exactly one root, the cluster CA. The acceptor demands a client
//! certificate (RFC 8446 §4.3.2, CertificateRequest) verified by
//! [`WebPkiClientVerifier`]; the dialer verifies the acceptor's certificate against the
//! server name `n<id>.<cluster>.synod` of the node it meant to reach. The crypto provider
//! is ring, passed explicitly so that nothing depends on a process-wide default.

use super::certs::{certificate_names_node, load_certs, load_key, node_dns_name, TlsFiles};
use super::TransportError;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;
use synod_core::NodeId;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// ALPN protocol id, so that a synod node never mistakes another TLS service for a peer.
const ALPN: &[u8] = b"synod-transport/1";

/// The loaded TLS state of one node.
pub(crate) struct TlsContext {
    pub(crate) connector: TlsConnector,
    pub(crate) acceptor: TlsAcceptor,
}

impl TlsContext {
    /// Load the CA, certificate and key, and check that the certificate names this node.
    pub(crate) fn load(
        files: &TlsFiles,
        cluster_id: &str,
        me: NodeId,
    ) -> Result<Self, TransportError> {
        let tls_error =
            |what: &str, e: &dyn std::fmt::Display| TransportError::Tls(format!("{what}: {e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in load_certs(&files.ca)? {
            roots
                .add(ca)
                .map_err(|e| tls_error(&format!("CA certificate {}", files.ca.display()), &e))?;
        }
        let roots = Arc::new(roots);
        let chain = load_certs(&files.cert)?;
        certificate_names_node(&chain[0], cluster_id, me).map_err(|e| {
            TransportError::Config(format!(
                "certificate {} is not node {me}'s: {e}",
                files.cert.display()
            ))
        })?;
        let key = load_key(&files.key)?;

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| tls_error("client certificate verifier", &e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("server protocol versions", &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_error("server certificate and key", &e))?;
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("client protocol versions", &e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_error("client certificate and key", &e))?;
        client.alpn_protocols = vec![ALPN.to_vec()];

        Ok(Self {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }
}

/// The TLS server name to dial node `node` with.
pub(crate) fn server_name(cluster_id: &str, node: NodeId) -> Result<ServerName<'static>, String> {
    ServerName::try_from(node_dns_name(cluster_id, node)).map_err(|e| e.to_string())
}

/// The identity check of the handshake: the verified end-entity certificate must name the
/// node id the peer claims.
pub(crate) fn check_peer_identity(
    certs: Option<&[CertificateDer<'_>]>,
    cluster_id: &str,
    claimed: NodeId,
) -> Result<(), String> {
    match certs.and_then(|c| c.first()) {
        None => Err("no certificate was presented".to_owned()),
        Some(cert) => certificate_names_node(cert, cluster_id, claimed),
    }
}
