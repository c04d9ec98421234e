//! TLS and credentials: [`TlsOptions`] (public), the credentials the builder holds, and
//! [`NodeChannel`], the channel every request to a node goes through, which stamps each request
//! with the `authorization` header.
//!
//! Credentials are applied below the generated gRPC clients, on the channel itself, so no call can
//! miss them: unary calls, the pipelined stream, topology fetches and watches, seed probes, and
//! channels made by a custom channel factory alike. The header value is encoded once, when the
//! client connects; each request only clones it (a reference count).

use std::{
    fmt,
    path::Path,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine as _;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tonic::{
    body::Body,
    codegen::{
        Service,
        http::{self, HeaderValue, header::AUTHORIZATION},
    },
    transport::{Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::Error;

/// TLS settings for the connections to the nodes: the CA certificate that signed the nodes'
/// certificates, optionally a client certificate and key (for nodes that require client
/// certificates), and optionally the name to verify the nodes' certificates against.
///
/// Only the given CA is trusted; the system's trust store is not used. Certificates and keys are
/// PEM. Without [`server_name`](TlsOptions::server_name), a node's certificate must name the
/// host the client dials (an IP address SAN when nodes are dialed by IP, as the topology gives
/// them).
///
/// ```no_run
/// # fn run() -> Result<(), ringcache::Error> {
/// use ringcache::TlsOptions;
///
/// let tls = TlsOptions::from_ca_file("/etc/ringcache/ca.pem")?
///     .client_identity_files("/etc/ringcache/client.pem", "/etc/ringcache/client.key")?
///     .server_name("cache.internal");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsOptions {
    ca: Pem,
    identity: Option<(Pem, Pem)>,
    server_name: Option<String>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca", &self.ca.what)
            .field(
                "client_certificate",
                &self.identity.as_ref().map(|(cert, _)| &cert.what),
            )
            .field("client_key", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// PEM text and what it is, for error messages ("tls ca file \"/etc/ca.pem\"").
#[derive(Clone)]
struct Pem {
    bytes: Arc<[u8]>,
    what: String,
}

impl Pem {
    fn given(bytes: Vec<u8>, what: &str) -> Self {
        Pem {
            bytes: bytes.into(),
            what: what.to_owned(),
        }
    }

    fn read(path: &Path, what: &str) -> Result<Self, Error> {
        let what = format!("{what} file {:?}", path.display().to_string());
        let bytes = std::fs::read(path).map_err(|e| {
            Error::InvalidArgument(format!("cannot read {what}: {}", io_reason(&e)))
        })?;
        Ok(Pem {
            bytes: bytes.into(),
            what,
        })
    }

    fn invalid(&self, why: impl fmt::Display) -> Error {
        Error::InvalidArgument(format!("{}: {why}", self.what))
    }

    /// The certificates, at least one.
    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        let certificates = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid(format!("bad pem: {}", pem_reason(&e))))?;
        if certificates.is_empty() {
            return Err(
                self.invalid("no certificate in it (expected a pem \"BEGIN CERTIFICATE\" section)")
            );
        }
        Ok(certificates)
    }

    /// Checks that it holds one private key.
    fn check_private_key(&self) -> Result<(), Error> {
        match PrivateKeyDer::from_pem_slice(&self.bytes) {
            Ok(_) => Ok(()),
            Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(self.invalid(
                "no private key in it (expected a pem \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" section)",
            )),
            Err(e) => Err(self.invalid(format!("bad pem: {}", pem_reason(&e)))),
        }
    }
}

fn pem_reason(error: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match error {
        E::MissingSectionEnd { .. } => "a section has no end line".to_owned(),
        E::IllegalSectionStart { .. } => "a section start line is malformed".to_owned(),
        E::Base64Decode(why) => format!("a section is not valid base64 ({why})"),
        E::NoItemsFound => "nothing found".to_owned(),
        other => lowercase_first(&other.to_string()),
    }
}

/// An I/O error in words, lowercase, without "(os error N)".
pub(crate) fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    lowercase_first(text)
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}

impl TlsOptions {
    /// TLS that trusts the CA certificate(s) in `ca_pem` (PEM, one or more certificates).
    ///
    /// The PEM is checked when the client connects: a bad one fails
    /// [`ClientBuilder::connect`](crate::ClientBuilder::connect) with
    /// [`Error::InvalidArgument`].
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        TlsOptions {
            ca: Pem::given(ca_pem.into(), "tls ca certificate"),
            identity: None,
            server_name: None,
        }
    }

    /// TLS that trusts the CA certificate(s) in the PEM file at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the file when it cannot be read or holds no valid PEM
    /// certificate.
    pub fn from_ca_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let ca = Pem::read(path.as_ref(), "tls ca")?;
        check_ca(&ca)?;
        Ok(TlsOptions {
            ca,
            identity: None,
            server_name: None,
        })
    }

    /// Presents this client certificate (PEM, the certificate first, then any intermediates)
    /// with its private key (PEM) to nodes that require client certificates.
    ///
    /// Both are checked when the client connects, as for [`new`](TlsOptions::new).
    #[must_use]
    pub fn client_identity(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((
            Pem::given(certificate_pem.into(), "tls client certificate"),
            Pem::given(key_pem.into(), "tls client key"),
        ));
        self
    }

    /// Presents the client certificate and private key in these PEM files; see
    /// [`client_identity`](TlsOptions::client_identity).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the file when one cannot be read or does not hold a
    /// valid PEM certificate (respectively private key).
    pub fn client_identity_files(
        mut self,
        certificate_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        let certificate = Pem::read(certificate_path.as_ref(), "tls client certificate")?;
        let key = Pem::read(key_path.as_ref(), "tls client key")?;
        certificate.certificates()?;
        key.check_private_key()?;
        self.identity = Some((certificate, key));
        Ok(self)
    }

    /// Verifies the nodes' certificates against `name` (a DNS name or an IP address) instead of
    /// the host each node is dialed at; also sent as the TLS server name (SNI). Nodes are usually
    /// dialed by IP address, so this lets their certificates name them by a DNS name.
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Checks everything and makes tonic's TLS settings, with a handshake bounded by
    /// `handshake_timeout`.
    pub(crate) fn prepare(&self, handshake_timeout: Duration) -> Result<ClientTlsConfig, Error> {
        let anchors = check_ca(&self.ca)?;
        let mut config = ClientTlsConfig::new()
            .trust_anchors(anchors.roots)
            // The nodes negotiate HTTP/2 by ALPN; should one not, speak HTTP/2 anyway (gRPC is
            // nothing else) rather than fail.
            .assume_http2(true)
            .timeout(handshake_timeout);
        if let Some((certificate, key)) = &self.identity {
            certificate.certificates()?;
            key.check_private_key()?;
            config = config.identity(Identity::from_pem(&*certificate.bytes, &*key.bytes));
        }
        if let Some(name) = &self.server_name {
            if name.trim().is_empty() {
                return Err(Error::InvalidArgument(
                    "tls server name must not be empty".to_owned(),
                ));
            }
            config = config.domain_name(name.trim());
        }
        // Building a connector checks what is left: the key against its certificate, and the
        // server name.
        Endpoint::from_static("https://localhost")
            .tls_config(config.clone())
            .map_err(|e| {
                let why = crate::error::describe_source(&e);
                match (&self.identity, &self.server_name) {
                    (Some((certificate, key)), _) if why.contains("KeyMismatch") => {
                        Error::InvalidArgument(format!(
                            "{} and {} do not match (the key is not the certificate's)",
                            certificate.what, key.what
                        ))
                    }
                    (Some((certificate, key)), _)
                        if why.contains("key") || why.contains("cert") =>
                    {
                        Error::InvalidArgument(format!(
                            "{} with {}: {why}",
                            certificate.what, key.what
                        ))
                    }
                    (_, Some(name)) => Error::InvalidArgument(format!(
                        "bad tls settings (server name {name:?}): {why}"
                    )),
                    _ => Error::InvalidArgument(format!("bad tls settings: {why}")),
                }
            })?;
        Ok(config)
    }
}

/// The CA certificates as trust anchors; each must be a valid X.509 certificate.
fn check_ca(ca: &Pem) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for (index, certificate) in ca.certificates()?.into_iter().enumerate() {
        roots.add(certificate).map_err(|e| {
            ca.invalid(format!(
                "certificate {} is not a valid ca certificate: {}",
                index + 1,
                lowercase_first(&e.to_string())
            ))
        })?;
    }
    Ok(roots)
}

/// A user name and secret, as [`ClientBuilder::credentials`](crate::ClientBuilder::credentials)
/// holds them. The secret never shows in `Debug` output.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub(crate) fn new(user: String, secret: String) -> Self {
        Credentials { user, secret }
    }

    /// The secret, to hand to a builder.
    #[cfg(feature = "cli")]
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// The `authorization` header value: `Basic base64(user ":" secret)`, marked sensitive (never
    /// indexed by HPACK, hidden from `Debug`).
    pub(crate) fn header(&self) -> Result<HeaderValue, Error> {
        if self.user.is_empty() {
            return Err(Error::InvalidArgument(
                "the credentials' user must not be empty".to_owned(),
            ));
        }
        if self.user.contains(':') {
            return Err(Error::InvalidArgument(format!(
                "the credentials' user {:?} must not contain ':'",
                self.user
            )));
        }
        if self.user.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "the credentials' user must not contain control characters".to_owned(),
            ));
        }
        if self.secret.is_empty() {
            return Err(Error::InvalidArgument(
                "the credentials' secret must not be empty".to_owned(),
            ));
        }
        let mut plain = Vec::with_capacity(self.user.len() + 1 + self.secret.len());
        plain.extend_from_slice(self.user.as_bytes());
        plain.push(b':');
        plain.extend_from_slice(self.secret.as_bytes());
        let mut value = String::from("Basic ");
        base64::engine::general_purpose::STANDARD.encode_string(&plain, &mut value);
        // Base64 is visible ASCII: the value is always valid.
        let mut header = HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
            .map_err(|_| Error::InvalidArgument("credentials do not fit a header".to_owned()))?;
        header.set_sensitive(true);
        Ok(header)
    }
}

/// The channel to one node that every request goes through: the channel factory's channel, with
/// the `authorization` header (when the client has credentials) put on every request.
#[derive(Clone, Debug)]
pub(crate) struct NodeChannel {
    channel: Channel,
    authorization: Option<HeaderValue>,
}

impl NodeChannel {
    pub(crate) fn new(channel: Channel, authorization: Option<HeaderValue>) -> Self {
        NodeChannel {
            channel,
            authorization,
        }
    }
}

impl Service<http::Request<Body>> for NodeChannel {
    type Response = <Channel as Service<http::Request<Body>>>::Response;
    type Error = <Channel as Service<http::Request<Body>>>::Error;
    type Future = <Channel as Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        self.channel.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_basic_base64_of_user_colon_secret() {
        let header = Credentials::new("alice".into(), "s3cret:with colon".into())
            .header()
            .unwrap();
        assert_eq!(
            header.to_str().unwrap(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with colon")
            )
        );
        assert!(header.is_sensitive());
        // Padding is kept.
        let header = Credentials::new("a".into(), "b".into()).header().unwrap();
        assert_eq!(header.to_str().unwrap(), "Basic YTpi");
        let header = Credentials::new("ab".into(), "c".into()).header().unwrap();
        assert_eq!(header.to_str().unwrap(), "Basic YWI6Yw==");
    }

    #[test]
    fn bad_users_and_empty_secrets_are_invalid() {
        for (user, secret, why) in [
            ("", "x", "must not be empty"),
            ("a:b", "x", "must not contain ':'"),
            ("a\nb", "x", "control characters"),
            ("alice", "", "secret must not be empty"),
        ] {
            let error = Credentials::new(user.into(), secret.into())
                .header()
                .unwrap_err();
            assert!(
                matches!(&error, Error::InvalidArgument(m) if m.contains(why)),
                "{user:?}: {error:?}"
            );
        }
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let credentials = Credentials::new("alice".into(), "hunter2".into());
        let debug = format!("{credentials:?}");
        assert!(
            debug.contains("alice") && !debug.contains("hunter2"),
            "{debug}"
        );
        let tls = TlsOptions::new("ca").client_identity("cert", "PRIVATE KEY material");
        let debug = format!("{tls:?}");
        assert!(!debug.contains("PRIVATE KEY material"), "{debug}");
    }

    #[test]
    fn pem_without_a_certificate_is_invalid_and_named() {
        let error = TlsOptions::new("not a pem")
            .prepare(Duration::from_secs(1))
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(m) if m.starts_with("tls ca certificate: no certificate")),
            "{error:?}"
        );
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let error = TlsOptions::new(broken)
            .prepare(Duration::from_secs(1))
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(m) if m.starts_with("tls ca certificate: bad pem")),
            "{error:?}"
        );
        let not_x509 = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let error = TlsOptions::new(not_x509)
            .prepare(Duration::from_secs(1))
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(m) if m.contains("certificate 1 is not a valid ca certificate")),
            "{error:?}"
        );
    }

    #[test]
    fn unreadable_files_are_named() {
        let error = TlsOptions::from_ca_file("/nonexistent/ca.pem").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid argument: cannot read tls ca file \"/nonexistent/ca.pem\": no such file or directory"
        );
    }
}
