//! TLS towards nodes: what `nodes[i].tls` and `nodes[i].tls_ca` mean for every connection pgfleet opens to a
//! node, whichever code opens it.
//!
//! This module owns the rustls client configuration of each node ([`NodeTls`]), the SSLRequest exchange and
//! handshake of raw protocol connections ([`NodeTls::negotiate`], giving a [`NodeStream`]), the libpq
//! environment for `pg_dump` ([`NodeTls::libpq_env`]), and the words of TLS failures, which name the node's
//! settings. `verify` checks certificates, `stream` is the raw connection, `postgres` the adapter that lets
//! tokio-postgres and deadpool-postgres use the same configuration ([`PgTls`]).
//!
//! The modes follow libpq's `sslmode`: `disable` sends no SSLRequest; `prefer` uses TLS when the server
//! answers `S` and plain text when it answers `N`, without checking the certificate; `require` insists on TLS
//! and checks the certificate's chain only when `tls_ca` is set (libpq's `verify-ca`); `verify-full` checks the
//! chain against `tls_ca` and that the certificate names the host of the node's address (an IP address must
//! be among the certificate's IP subject alternative names).

mod postgres;
mod stream;
mod verify;

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, AlertDescription, CertificateError, ClientConfig};

pub(crate) use self::postgres::PgTls;
pub(crate) use self::stream::NodeStream;
use self::verify::NodeVerifier;
use crate::certs::{CertError, ca_roots, server_name};
use crate::config::{NodeConfig, NodeTlsMode, split_host_port, unix_socket_of};
use crate::protocol::startup::encode_ssl_request;

/// ALPN protocol name PostgreSQL 17 registered; older servers ignore it.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why a node's TLS settings cannot be used. Checked by config validation, so `--check` reports it too.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file (`tls_ca`) cannot be used, or the host cannot be named by a certificate.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The node's address has no host:port shape (config validation reports this first).
    #[error("{0}")]
    Address(String),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why TLS with a node did not come about. Every variant names the setting that asked for it.
#[derive(Debug, thiserror::Error)]
pub enum TlsConnectError {
    /// The server answered the SSLRequest with `N` and the mode does not allow plain text.
    #[error("server does not support TLS ({setting})")]
    NotSupported {
        /// E.g. `nodes[0].tls = "require"`.
        setting: String,
    },
    /// The server answered the SSLRequest with neither `S` nor `N`.
    #[error("server answered the SSLRequest with {answer:?} instead of S or N ({setting})")]
    BadAnswer {
        /// The byte, as a character.
        answer: char,
        /// E.g. `nodes[0].tls = "prefer"`.
        setting: String,
    },
    /// The handshake failed: certificate refused, no common version, connection closed...
    #[error("TLS handshake failed: {reason} ({setting})")]
    Handshake {
        /// In words, naming the file or host involved.
        reason: String,
        /// E.g. `nodes[0].tls = "verify-full"`.
        setting: String,
    },
    /// The connection failed during the SSLRequest exchange.
    #[error("{0}")]
    Io(io::Error),
}

/// One node's TLS settings, ready to use.
#[derive(Debug)]
pub struct NodeTls {
    mode: NodeTlsMode,
    index: usize,
    host: String,
    /// The node is reached through its Unix-domain socket, where PostgreSQL offers no TLS.
    local: bool,
    ca: Option<PathBuf>,
    name: ServerName<'static>,
    /// None with `disable`.
    config: Option<Arc<ClientConfig>>,
}

impl NodeTls {
    /// Builds node `index`'s settings (reads `tls_ca`).
    pub fn new(index: usize, node: &NodeConfig) -> Result<NodeTls, TlsSetupError> {
        let (host, _) = split_host_port(&node.address).map_err(TlsSetupError::Address)?;
        let name = match server_name(&host) {
            Ok(name) => name,
            Err(e) if node.tls == NodeTlsMode::VerifyFull => return Err(e.into()),
            // Only sent as SNI when nothing checks it; servers ignore it.
            Err(_) => {
                ServerName::try_from("node.invalid").map_err(|_| CertError::BadHost { host: host.clone() })?
            }
        };
        let config = match node.tls {
            NodeTlsMode::Disable => None,
            mode => {
                let roots = match &node.tls_ca {
                    Some(path) => Some(Arc::new(ca_roots(path)?)),
                    None => None,
                };
                let verifier = NodeVerifier {
                    roots,
                    check_name: mode == NodeTlsMode::VerifyFull,
                    provider: Arc::new(rustls::crypto::ring::default_provider()),
                };
                Some(Arc::new(client_config(verifier)?))
            }
        };
        Ok(NodeTls {
            mode: node.tls,
            index,
            host,
            local: unix_socket_of(&node.address).is_some(),
            ca: node.tls_ca.clone(),
            name,
            config,
        })
    }

    /// The configured mode.
    pub fn mode(&self) -> NodeTlsMode {
        self.mode
    }

    /// `nodes[i].tls = "mode"`, for messages.
    pub fn setting(&self) -> String {
        format!("nodes[{}].tls = \"{}\"", self.index, self.mode.as_str())
    }

    /// Asks for TLS on a fresh connection as the mode says, before anything else is sent on it.
    pub async fn negotiate(&self, mut stream: TcpStream) -> Result<NodeStream, TlsConnectError> {
        let Some(config) = &self.config else {
            return Ok(NodeStream::Plain(stream));
        };
        stream
            .write_all(&encode_ssl_request())
            .await
            .map_err(TlsConnectError::Io)?;
        // Exactly one byte: anything after it before the handshake could be injected by a man in the
        // middle (CVE-2021-23222), so nothing more is read in plain text.
        let mut answer = [0u8; 1];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(TlsConnectError::Io)?;
        match answer[0] {
            b'S' => {}
            b'N' if self.mode == NodeTlsMode::Prefer => return Ok(NodeStream::Plain(stream)),
            b'N' => {
                return Err(TlsConnectError::NotSupported {
                    setting: self.setting(),
                });
            }
            other => {
                return Err(TlsConnectError::BadAnswer {
                    answer: other as char,
                    setting: self.setting(),
                });
            }
        }
        let tls = TlsConnector::from(config.clone())
            .connect(self.name.clone(), stream)
            .await
            .map_err(|e| self.handshake_error(&e))?;
        Ok(NodeStream::Tls(Box::new(tls)))
    }

    /// Sets tokio-postgres's `sslmode` for this node and returns the connector that performs the handshake.
    pub fn postgres(self: &Arc<Self>, pg: &mut tokio_postgres::Config) -> PgTls {
        pg.ssl_mode(match self.mode {
            // A socket directory: PostgreSQL refuses TLS on local sockets, so even asking would cost a round
            // trip for nothing (config validation refuses require and verify-full there).
            _ if self.local => SslMode::Disable,
            NodeTlsMode::Disable => SslMode::Disable,
            NodeTlsMode::Prefer => SslMode::Prefer,
            NodeTlsMode::Require | NodeTlsMode::VerifyFull => SslMode::Require,
        });
        PgTls(self.clone())
    }

    /// A tokio-postgres error in words (its Display leaves out the cause), with this node's setting when TLS
    /// was the problem.
    pub fn explain(&self, e: &tokio_postgres::Error) -> String {
        let source = std::error::Error::source(e);
        if let Some(tls) = source.and_then(|s| s.downcast_ref::<TlsConnectError>()) {
            return tls.to_string();
        }
        let kind = e.to_string();
        let text = match source {
            Some(source) => format!("{kind}: {source}"),
            None => kind.clone(),
        };
        // tokio-postgres's own TLS failures (the server answered N under require) know nothing of the config.
        if kind.starts_with("error performing TLS handshake") {
            format!("{text} ({})", self.setting())
        } else {
            text
        }
    }

    /// libpq's environment for a tool such as `pg_dump` connecting to this node: `PGSSLMODE` always, and
    /// `PGSSLROOTCERT` set to `tls_ca` or removed (None), so that nothing inherited changes the meaning.
    pub fn libpq_env(&self) -> Vec<(&'static str, Option<OsString>)> {
        let mode = match (self.mode, &self.ca) {
            (NodeTlsMode::Require, Some(_)) => "verify-ca",
            (mode, _) => mode.as_str(),
        };
        vec![
            ("PGSSLMODE", Some(mode.into())),
            (
                "PGSSLROOTCERT",
                self.ca.as_ref().map(|p| p.clone().into_os_string()),
            ),
        ]
    }

    fn handshake_error(&self, e: &io::Error) -> TlsConnectError {
        let reason = match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(cert)) => self.describe_certificate(cert),
            Some(rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)) => {
                "the server accepts no TLS version pgfleet speaks (1.2, 1.3)".to_owned()
            }
            Some(other) => other.to_string(),
            None if e.kind() == io::ErrorKind::UnexpectedEof => {
                "the server closed the connection during the handshake".to_owned()
            }
            None => e.to_string(),
        };
        TlsConnectError::Handshake {
            reason,
            setting: self.setting(),
        }
    }

    fn describe_certificate(&self, cert: &CertificateError) -> String {
        let ca = self
            .ca
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match cert {
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not signed by a CA in nodes[{}].tls_ca ({ca})",
                self.index
            ),
            CertificateError::NotValidForName => format!(
                "the server's certificate is not valid for \"{}\", the host of nodes[{}].address",
                self.host, self.index
            ),
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "the server's certificate is not valid for \"{}\", the host of nodes[{}].address (it names {})",
                self.host,
                self.index,
                if presented.is_empty() {
                    "no host".to_owned()
                } else {
                    presented
                        .iter()
                        .map(|n| plain_name(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet".to_owned()
            }
            other => format!("the server's certificate was refused: {other}"),
        }
    }
}

/// `db.example.com` for webpki's `DnsName("db.example.com")`, `10.0.0.1` for `IpAddress(10.0.0.1)`; any other
/// shape as it is.
fn plain_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

fn client_config(verifier: NodeVerifier) -> Result<ClientConfig, rustls::Error> {
    let provider = verifier.provider.clone();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    };
    use std::path::Path;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
    }

    /// A server answering one SSLRequest with `answer`, then (after `S`) a TLS handshake with a certificate
    /// for `names` signed by `issuer`, then "ok" through the tunnel.
    async fn fake_server(answer: u8, issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> String {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, issuer)
            .expect("cert");
        let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 8];
            socket.read_exact(&mut request).await.expect("SSLRequest");
            assert_eq!(&request[..], &encode_ssl_request()[..]);
            socket.write_all(&[answer]).await.expect("answer");
            if answer == b'S' {
                // A failed handshake is what some tests expect: nothing more to do then.
                if let Ok(mut tls) = TlsAcceptor::from(Arc::new(config)).accept(socket).await {
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.flush().await;
                }
            } else {
                let _ = socket.write_all(b"ok").await;
            }
        });
        address
    }

    fn node(address: &str, tls: NodeTlsMode, ca: Option<PathBuf>) -> NodeConfig {
        NodeConfig {
            name: "primary".into(),
            address: address.into(),
            role: Role::Primary,
            weight: 1,
            tls,
            tls_ca: ca,
            shard: None,
        }
    }

    fn write_ca(dir: &Path, issuer: &CertifiedIssuer<'static, KeyPair>) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, issuer.pem()).expect("write ca");
        path
    }

    /// Connects with the node's settings; Ok(whether TLS was used) once "ok" came through.
    async fn try_node(config: &NodeConfig) -> Result<bool, TlsConnectError> {
        let tls = NodeTls::new(0, config).expect("settings");
        let socket = TcpStream::connect(&config.address).await.expect("connect");
        let mut stream = tls.negotiate(socket).await?;
        let mut ok = [0u8; 2];
        stream.read_exact(&mut ok).await.map_err(TlsConnectError::Io)?;
        assert_eq!(&ok, b"ok");
        Ok(stream.is_tls())
    }

    #[tokio::test]
    async fn prefer_uses_tls_when_offered_and_plain_text_when_refused() {
        let issuer = ca("unknown CA");
        let address = fake_server(b'S', &issuer, &["elsewhere.example"]).await;
        assert!(
            try_node(&node(&address, NodeTlsMode::Prefer, None))
                .await
                .expect("tls")
        );
        let address = fake_server(b'N', &issuer, &[]).await;
        assert!(
            !try_node(&node(&address, NodeTlsMode::Prefer, None))
                .await
                .expect("plain")
        );
    }

    #[tokio::test]
    async fn require_refuses_plain_text_and_accepts_any_certificate_without_a_ca() {
        let issuer = ca("unknown CA");
        let address = fake_server(b'N', &issuer, &[]).await;
        let err = try_node(&node(&address, NodeTlsMode::Require, None))
            .await
            .expect_err("must refuse plain text");
        assert_eq!(
            err.to_string(),
            "server does not support TLS (nodes[0].tls = \"require\")"
        );
        let address = fake_server(b'S', &issuer, &["elsewhere.example"]).await;
        assert!(
            try_node(&node(&address, NodeTlsMode::Require, None))
                .await
                .expect("tls")
        );
    }

    #[tokio::test]
    async fn require_with_a_ca_checks_the_chain_but_not_the_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let right = ca("right CA");
        let ca_file = write_ca(dir.path(), &right);
        let address = fake_server(b'S', &right, &["elsewhere.example"]).await;
        assert!(
            try_node(&node(&address, NodeTlsMode::Require, Some(ca_file.clone())))
                .await
                .expect("chain is enough")
        );
        let address = fake_server(b'S', &ca("wrong CA"), &["127.0.0.1"]).await;
        let err = try_node(&node(&address, NodeTlsMode::Require, Some(ca_file.clone())))
            .await
            .expect_err("unknown issuer");
        let text = err.to_string();
        assert!(
            text.contains("not signed by a CA in nodes[0].tls_ca")
                && text.contains(&ca_file.display().to_string()),
            "{text}"
        );
    }

    #[tokio::test]
    async fn verify_full_checks_chain_and_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let right = ca("right CA");
        let ca_file = write_ca(dir.path(), &right);
        let address = fake_server(b'S', &right, &["localhost", "127.0.0.1"]).await;
        assert!(
            try_node(&node(&address, NodeTlsMode::VerifyFull, Some(ca_file.clone())))
                .await
                .expect("IP SAN matches")
        );
        let address = fake_server(b'S', &right, &["db.example.com", "10.1.2.3"]).await;
        let err = try_node(&node(&address, NodeTlsMode::VerifyFull, Some(ca_file.clone())))
            .await
            .expect_err("name mismatch");
        assert_eq!(
            err.to_string(),
            "TLS handshake failed: the server's certificate is not valid for \"127.0.0.1\", the host of \
             nodes[0].address (it names db.example.com, 10.1.2.3) (nodes[0].tls = \"verify-full\")"
        );
        let address = fake_server(b'S', &ca("wrong CA"), &["127.0.0.1"]).await;
        let err = try_node(&node(&address, NodeTlsMode::VerifyFull, Some(ca_file)))
            .await
            .expect_err("unknown issuer");
        assert!(err.to_string().contains("not signed by a CA"), "{err}");
    }

    #[test]
    fn disable_sends_nothing_and_settings_name_the_node() {
        let tls = NodeTls::new(3, &node("10.0.0.1:5432", NodeTlsMode::Disable, None)).expect("settings");
        assert!(tls.config.is_none());
        assert_eq!(tls.setting(), "nodes[3].tls = \"disable\"");
    }

    #[test]
    fn libpq_environment_matches_the_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = write_ca(dir.path(), &ca("CA"));
        let env = |mode, ca: Option<PathBuf>| {
            NodeTls::new(0, &node("127.0.0.1:5432", mode, ca))
                .expect("settings")
                .libpq_env()
        };
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(
            env(NodeTlsMode::Prefer, None),
            vec![("PGSSLMODE", some("prefer")), ("PGSSLROOTCERT", None)]
        );
        assert_eq!(
            env(NodeTlsMode::Require, Some(ca_file.clone())),
            vec![
                ("PGSSLMODE", some("verify-ca")),
                ("PGSSLROOTCERT", Some(ca_file.clone().into_os_string()))
            ]
        );
        assert_eq!(
            env(NodeTlsMode::VerifyFull, Some(ca_file.clone()))[0],
            ("PGSSLMODE", some("verify-full"))
        );
    }
}
