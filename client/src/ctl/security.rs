//! The TLS and credential flags of `ringctl` (and `ringbench`, which flattens [`SecurityArgs`]
//! into its own commands), and what they load into: [`Security`].

use std::{ffi::OsString, fmt, path::PathBuf, time::Duration};

use tonic::{codegen::http::HeaderValue, transport::ClientTlsConfig};

use crate::{ClientBuilder, Error, TlsOptions, security::Credentials};

/// The environment variable that may hold the secret itself (rather than a file holding it).
pub const PASSWORD_ENV: &str = "RINGCACHE_PASSWORD";

/// Ids of the [`SecurityArgs`] arguments, for commands that make them global.
pub(crate) const ARG_IDS: [&str; 7] = [
    "user",
    "password_file",
    "tls",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_server_name",
];

/// TLS and credential flags: `--user`, `--password-file`, `--tls`, `--tls-ca`, `--tls-cert`,
/// `--tls-key`, `--tls-server-name`, each also read from a `RINGCACHE_*` environment variable.
/// [`load`](SecurityArgs::load) reads the files they name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// User to authenticate as: every request carries `authorization: Basic` credentials. Needs
    /// a secret: --password-file, or the RINGCACHE_PASSWORD environment variable.
    #[arg(long, env = "RINGCACHE_USER", value_name = "USER")]
    pub user: Option<String>,

    /// File holding the user's secret (a trailing newline is ignored). The environment variable
    /// RINGCACHE_PASSWORD may hold the secret itself instead; that is less safe (other
    /// processes of the same user can read a process's environment, and it ends up in shell
    /// history and crash reports).
    #[arg(
        long,
        env = "RINGCACHE_PASSWORD_FILE",
        value_name = "FILE",
        requires = "user"
    )]
    pub password_file: Option<PathBuf>,

    /// Connect over TLS. Needs --tls-ca: only the given CA is trusted, never the system's
    /// trust store (--tls-ca alone also turns TLS on).
    #[arg(long, requires = "tls_ca")]
    pub tls: bool,

    /// CA certificate (PEM) that signed the nodes' certificates; turns TLS on.
    #[arg(long, env = "RINGCACHE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) to present to nodes that require one; needs --tls-key.
    #[arg(
        long,
        env = "RINGCACHE_TLS_CERT",
        value_name = "FILE",
        requires_all = ["tls_key", "tls_ca"]
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "RINGCACHE_TLS_KEY",
        value_name = "FILE",
        requires_all = ["tls_cert", "tls_ca"]
    )]
    pub tls_key: Option<PathBuf>,

    /// Name to verify the nodes' certificates against (a DNS name they hold) instead of the
    /// address dialed; nodes are usually dialed by IP address.
    #[arg(
        long,
        env = "RINGCACHE_TLS_SERVER_NAME",
        value_name = "NAME",
        requires = "tls_ca"
    )]
    pub tls_server_name: Option<String>,
}

/// A bad TLS or credential setting: a user without a secret, a file that cannot be read, a
/// certificate or key that does not parse. One lowercase line naming the flag or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityArgsError(String);

impl fmt::Display for SecurityArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SecurityArgsError {}

impl From<Error> for SecurityArgsError {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument(message) => SecurityArgsError(message),
            other => SecurityArgsError(other.to_string()),
        }
    }
}

impl SecurityArgs {
    /// Reads the secret (from `--password-file`, else from `RINGCACHE_PASSWORD`) and the TLS
    /// files, and checks them.
    ///
    /// # Errors
    ///
    /// A one-line reason: `--user` without a secret, a file that cannot be read or is empty, a
    /// certificate or key that does not parse, a user name that cannot be sent.
    pub fn load(&self) -> Result<Security, SecurityArgsError> {
        self.load_with(std::env::var_os(PASSWORD_ENV))
    }

    /// [`load`](SecurityArgs::load) with the value of `RINGCACHE_PASSWORD` given.
    pub(crate) fn load_with(
        &self,
        password_env: Option<OsString>,
    ) -> Result<Security, SecurityArgsError> {
        let credentials = match &self.user {
            None => None,
            Some(user) => {
                let secret = match (&self.password_file, password_env) {
                    (Some(path), _) => read_secret(path)?,
                    (None, Some(value)) => value.into_string().map_err(|_| {
                        SecurityArgsError(format!("{PASSWORD_ENV} is not valid utf-8"))
                    })?,
                    (None, None) => {
                        return Err(SecurityArgsError(format!(
                            "--user {user:?} needs a secret: give --password-file FILE (or set \
                             RINGCACHE_PASSWORD_FILE, or {PASSWORD_ENV})"
                        )));
                    }
                };
                let credentials = Credentials::new(user.clone(), secret);
                credentials.header()?;
                Some(credentials)
            }
        };
        let tls = match &self.tls_ca {
            None => None,
            Some(ca) => {
                let mut tls = TlsOptions::from_ca_file(ca)?;
                if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                    tls = tls.client_identity_files(cert, key)?;
                }
                if let Some(name) = &self.tls_server_name {
                    tls = tls.server_name(name);
                }
                Some(tls)
            }
        };
        let tls_config = tls
            .as_ref()
            .map(|tls| tls.prepare(DEFAULT_HANDSHAKE_TIMEOUT))
            .transpose()?;
        let authorization = credentials.as_ref().map(Credentials::header).transpose()?;
        Ok(Security {
            tls,
            tls_config,
            credentials,
            authorization,
        })
    }
}

/// The TLS handshake bound until [`Security`] is given the command's timeout.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn read_secret(path: &std::path::Path) -> Result<String, SecurityArgsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        SecurityArgsError(format!(
            "cannot read --password-file {shown:?}: {}",
            crate::security::io_reason(&e)
        ))
    })?;
    let mut secret = String::from_utf8(bytes)
        .map_err(|_| SecurityArgsError(format!("--password-file {shown:?} is not valid utf-8")))?;
    let kept = secret.trim_end_matches(['\n', '\r']).len();
    secret.truncate(kept);
    if secret.is_empty() {
        return Err(SecurityArgsError(format!(
            "--password-file {shown:?} is empty"
        )));
    }
    Ok(secret)
}

/// TLS settings and credentials as loaded by [`SecurityArgs::load`]: applied to a
/// [`ClientBuilder`] with [`apply`](Security::apply), and to ringctl's direct connections.
/// The secret and the private key never show in `Debug` output.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<TlsOptions>,
    tls_config: Option<ClientTlsConfig>,
    credentials: Option<Credentials>,
    authorization: Option<HeaderValue>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl Security {
    /// Gives `builder` these TLS settings and credentials (those that are set).
    #[must_use]
    pub fn apply(&self, mut builder: ClientBuilder) -> ClientBuilder {
        if let Some(tls) = &self.tls {
            builder = builder.tls(tls.clone());
        }
        if let Some(credentials) = &self.credentials {
            builder = builder.credentials(credentials.user.clone(), credentials.secret());
        }
        builder
    }

    /// Whether TLS is on.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The user, when there are credentials.
    pub fn user(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.user.as_str())
    }

    /// The TLS settings of a direct connection whose handshake is bounded by `timeout`.
    pub(crate) fn tls_config(&self, timeout: Duration) -> Option<ClientTlsConfig> {
        self.tls_config
            .as_ref()
            .map(|config| config.clone().timeout(timeout))
    }

    /// The precomputed `authorization` header.
    pub(crate) fn authorization(&self) -> Option<HeaderValue> {
        self.authorization.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(user: Option<&str>, password_file: Option<PathBuf>) -> SecurityArgs {
        SecurityArgs {
            user: user.map(str::to_owned),
            password_file,
            ..SecurityArgs::default()
        }
    }

    /// A file with `contents` in a directory of its own, removed when the guard drops.
    struct ScratchFile {
        dir: PathBuf,
        path: PathBuf,
    }

    impl Drop for ScratchFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn scratch_file(name: &str, contents: &[u8]) -> ScratchFile {
        let dir =
            std::env::temp_dir().join(format!("ringctl-security-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        ScratchFile { dir, path }
    }

    #[test]
    fn a_user_without_a_secret_is_refused_in_one_line() {
        let error = args(Some("alice"), None).load_with(None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("--user \"alice\" needs a secret"),
            "{error}"
        );
        assert_eq!(error.to_string().lines().count(), 1);
    }

    #[test]
    fn the_password_file_loses_its_trailing_newline_and_wins_over_the_environment() {
        let file = scratch_file("secret-newline", b"s3cret \r\n\n");
        let security = args(Some("alice"), Some(file.path.clone()))
            .load_with(Some("from-env".into()))
            .unwrap();
        let header = security.authorization().unwrap();
        let expected = Credentials::new("alice".into(), "s3cret ".into())
            .header()
            .unwrap();
        assert_eq!(header, expected);
        assert_eq!(security.user(), Some("alice"));
        assert!(!format!("{security:?}").contains("s3cret"));
    }

    #[test]
    fn the_environment_may_hold_the_secret() {
        let security = args(Some("alice"), None)
            .load_with(Some("from-env".into()))
            .unwrap();
        let expected = Credentials::new("alice".into(), "from-env".into())
            .header()
            .unwrap();
        assert_eq!(security.authorization().unwrap(), expected);
    }

    #[test]
    fn unreadable_or_empty_password_files_are_named() {
        let error = args(Some("alice"), Some("/nonexistent/secret".into()))
            .load_with(None)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot read --password-file \"/nonexistent/secret\": no such file or directory"
        );
        let file = scratch_file("secret-empty", b"\n");
        let path = file.path.clone();
        let error = args(Some("alice"), Some(path.clone()))
            .load_with(None)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("--password-file {:?} is empty", path.display().to_string())
        );
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let file = scratch_file("not-a-ca.pem", b"hello");
        let path = file.path.clone();
        let security = SecurityArgs {
            tls_ca: Some(path.clone()),
            ..SecurityArgs::default()
        };
        let error = security.load_with(None).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "tls ca file {:?}: no certificate",
                path.display().to_string()
            )),
            "{error}"
        );
    }

    #[test]
    fn nothing_set_is_plain_text_without_credentials() {
        let security = SecurityArgs::default()
            .load_with(Some("ignored".into()))
            .unwrap();
        assert!(!security.is_tls());
        assert_eq!(security.user(), None);
        assert!(security.authorization().is_none());
    }
}
