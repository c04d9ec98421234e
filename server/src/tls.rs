//! TLS with rustls (ring provider; no OpenSSL): the server configurations of the client and
//! cluster ports, the client configuration for calls to peers, and their reload.
//!
//! Certificates and keys are PEM files. [`ReloadableTls`] holds the current server configuration
//! behind a lock; every new connection takes the configuration current at its accept, so a
//! reload (the files changed, or SIGHUP) affects new connections and leaves open ones alone. A
//! reload that fails (a half-written file, a key that does not match) keeps the old
//! configuration and reports the error.
//!
//! The cluster port requires a client certificate chaining to the cluster CA, and peers verify
//! each other's certificate against the same CA with one shared DNS name
//! (`cluster_server_name`), so node certificates need no per-node IP addresses.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use parking_lot::RwLock;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// ALPN protocol of gRPC.
const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain; at least one certificate.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate found", path.display());
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("{}: no PEM private key found", path.display()))
}

/// A root store of the certificates in `path`.
pub fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
    }
    Ok(roots)
}

/// The server configuration of `files`: its certificate and key, and, when `files.ca` is set,
/// client certificates required and checked against that CA. ALPN offers HTTP/2 only.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<rustls::ServerConfig> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .with_context(|| format!("{}: cannot verify clients with it", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "{} and {} do not make a usable certificate and key",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The PEM bytes a tonic client needs to call peers on their cluster port: the cluster CA, and
/// this node's certificate and key as its client identity.
#[derive(Clone)]
pub struct PeerTls {
    /// The cluster CA (PEM).
    pub ca_pem: Vec<u8>,
    /// This node's certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// This node's key (PEM).
    pub key_pem: Vec<u8>,
    /// The DNS name every peer's certificate carries.
    pub server_name: String,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Reads and checks the cluster files.
    pub fn load(files: &TlsFiles, server_name: &str) -> anyhow::Result<Self> {
        let ca = files.ca.as_deref().context("cluster TLS needs a CA")?;
        // Parse now so a bad file fails here, with its name, rather than at the first call.
        load_roots(ca)?;
        load_certs(&files.cert)?;
        load_key(&files.key)?;
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        Ok(Self {
            ca_pem: read(ca)?,
            cert_pem: read(&files.cert)?,
            key_pem: read(&files.key)?,
            server_name: server_name.to_owned(),
        })
    }

    /// The tonic client configuration.
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .domain_name(self.server_name.clone())
    }
}

/// A server TLS configuration that can be replaced while the node runs.
#[derive(Debug)]
pub struct ReloadableTls {
    files: TlsFiles,
    /// For gRPC (ALPN h2), and the same without ALPN for the RESP port.
    current: RwLock<(Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>)>,
}

/// The gRPC configuration and its copy without ALPN (Redis clients offer none, and one that
/// offered something else than h2 must not be refused for it).
fn with_resp(
    config: rustls::ServerConfig,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>) {
    let mut resp = config.clone();
    resp.alpn_protocols.clear();
    (Arc::new(config), Arc::new(resp))
}

impl ReloadableTls {
    /// Loads `files` now; an error here stops the node from starting.
    pub fn load(files: TlsFiles) -> anyhow::Result<Self> {
        let config = server_config(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(with_resp(config)),
        })
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().0.clone()
    }

    /// The configuration for the next RESP connection: the same certificates and client
    /// verification, no ALPN.
    pub fn current_resp(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().1.clone()
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files; on error the current configuration stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = server_config(&self.files)?;
        *self.current.write() = with_resp(config);
        Ok(())
    }
}
