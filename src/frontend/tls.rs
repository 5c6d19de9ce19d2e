//! Server-side TLS for clients: turning `listen.tls_cert` / `listen.tls_key` into a rustls acceptor.
//!
//! This module owns the rustls configuration (ring provider, TLS 1.3 and, unless
//! `listen.tls_min_version = "1.3"`, TLS 1.2; no client certificates); `crate::certs` reads the PEM files.
//! Answering SSLRequest and wrapping the socket belong to the listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::certs::{self, CertError};
use crate::config::TlsVersion;

/// Why the TLS files could not be used. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no usable certificate or key.
    #[error(transparent)]
    File(#[from] CertError),
    /// rustls refused the pair, e.g. because the key does not belong to the certificate or uses an
    /// unsupported algorithm.
    #[error("cannot use certificate {} with key {}: {source}", cert.display(), key.display())]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
}

/// Builds the acceptor for client connections from a PEM certificate chain (leaf first) and a PEM private key,
/// accepting TLS versions from `min_version` up.
pub(crate) fn acceptor(cert: &Path, key: &Path, min_version: TlsVersion) -> Result<TlsAcceptor, TlsError> {
    let chain = certs::certificates(cert)?;
    let private_key = certs::private_key(key)?;
    let rejected = |source| TlsError::Rejected {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };

    // Named explicitly rather than relying on a process-wide default provider, which would be ambiguous
    // (or missing) if another crate in the build enabled aws-lc-rs as well.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(rejected)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A leaf certificate a client can verify for "localhost": openssl's default self-signed certificate is
    /// marked as a CA, which webpki refuses to accept as the server's own certificate.
    const LEAF: &[&str] = &[
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "subjectAltName=DNS:localhost",
    ];

    /// Writes a self-signed certificate and its key with the openssl CLI, as users make them
    /// (scripts/install-test-deps.sh installs it).
    fn self_signed(dir: &Path, name: &str, newkey: &[&str]) -> (PathBuf, PathBuf) {
        self_signed_with(dir, name, newkey, &[])
    }

    fn self_signed_with(dir: &Path, name: &str, newkey: &[&str], extra: &[&str]) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let mut cmd = Command::new("openssl");
        cmd.args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-newkey",
        ])
        .args(newkey)
        .args(extra)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert);
        match cmd.output() {
            Ok(out) if out.status.success() => (cert, key),
            Ok(out) => panic!("openssl failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(err) => panic!("cannot run openssl ({err}): run scripts/install-test-deps.sh"),
        }
    }

    fn err_of(cert: &Path, key: &Path) -> TlsError {
        match acceptor(cert, key, TlsVersion::Tls12) {
            Ok(_) => panic!("expected an error for {} / {}", cert.display(), key.display()),
            Err(err) => err,
        }
    }

    /// Tries a handshake through a pipe with a client that trusts `cert` and offers only `version`; the
    /// client's and the server's results.
    async fn try_handshake(
        acceptor: TlsAcceptor,
        cert: &Path,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (
        std::io::Result<tokio_rustls::client::TlsStream<tokio::io::DuplexStream>>,
        std::io::Result<tokio_rustls::server::TlsStream<tokio::io::DuplexStream>>,
    ) {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs::certificates(cert).expect("certs") {
            roots.add(c).expect("root");
        }
        let client =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[version])
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (client_io, server_io) = tokio::io::duplex(16 * 1024);
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        tokio::join!(connector.connect(name, client_io), acceptor.accept(server_io))
    }

    /// Completes a handshake limited to `version` and checks that version was used.
    async fn handshake(
        acceptor: TlsAcceptor,
        cert: &Path,
        version: &'static rustls::SupportedProtocolVersion,
    ) {
        let (client, server) = try_handshake(acceptor, cert, version).await;
        let client = client.expect("client handshake");
        server.expect("server handshake");
        assert_eq!(client.get_ref().1.protocol_version(), Some(version.version));
    }

    #[test]
    fn builds_from_plain_openssl_self_signed_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(dir.path(), "rsa", &["rsa:2048"]);
        assert!(acceptor(&cert, &key, TlsVersion::Tls12).is_ok());
    }

    #[tokio::test]
    async fn rsa_certificate_serves_tls13_and_tls12() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed_with(dir.path(), "rsa", &["rsa:2048"], LEAF);
        let acceptor = acceptor(&cert, &key, TlsVersion::Tls12).expect("acceptor");
        handshake(acceptor.clone(), &cert, &rustls::version::TLS13).await;
        handshake(acceptor, &cert, &rustls::version::TLS12).await;
    }

    #[tokio::test]
    async fn minimum_version_13_refuses_a_tls12_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed_with(dir.path(), "rsa", &["rsa:2048"], LEAF);
        let acceptor = acceptor(&cert, &key, TlsVersion::Tls13).expect("acceptor");
        handshake(acceptor.clone(), &cert, &rustls::version::TLS13).await;
        let (client, server) = try_handshake(acceptor, &cert, &rustls::version::TLS12).await;
        assert!(
            client.is_err() && server.is_err(),
            "a TLS 1.2 client must be refused"
        );
    }

    #[tokio::test]
    async fn builds_from_ec_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed_with(
            dir.path(),
            "ec",
            &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
            LEAF,
        );
        let acceptor = acceptor(&cert, &key, TlsVersion::Tls12).expect("acceptor");
        handshake(acceptor, &cert, &rustls::version::TLS13).await;
    }

    /// Rewrites `key` in its traditional (non-PKCS#8) form: `openssl rsa -traditional` gives PKCS#1, and
    /// `openssl ec` writes SEC1 by default.
    fn traditional(key: &Path, tool: &str, out: &Path, header: &str) {
        let flags: &[&str] = if tool == "rsa" { &["-traditional"] } else { &[] };
        let status = Command::new("openssl")
            .arg(tool)
            .args(flags)
            .arg("-in")
            .arg(key)
            .arg("-out")
            .arg(out)
            .output()
            .expect("openssl ran before");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let pem = std::fs::read_to_string(out).expect("converted key");
        assert!(pem.starts_with(header), "{pem}");
    }

    #[test]
    fn loads_pkcs1_rsa_and_sec1_ec_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(dir.path(), "rsa", &["rsa:2048"]);
        let pkcs1 = dir.path().join("rsa-pkcs1.key");
        traditional(&key, "rsa", &pkcs1, "-----BEGIN RSA PRIVATE KEY-----");
        assert!(acceptor(&cert, &pkcs1, TlsVersion::Tls12).is_ok());

        let ec = ["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let (cert, key) = self_signed(dir.path(), "ec", &ec);
        let sec1 = dir.path().join("ec-sec1.key");
        traditional(&key, "ec", &sec1, "-----BEGIN EC PRIVATE KEY-----");
        assert!(acceptor(&cert, &sec1, TlsVersion::Tls12).is_ok());
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let err = err_of(&missing, &missing);
        assert!(matches!(err, TlsError::File(CertError::Read { .. })), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("cannot read ") && text.contains("nope.pem"),
            "{text}"
        );
    }

    #[test]
    fn key_file_given_as_certificate_says_no_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, key) = self_signed(dir.path(), "rsa", &["rsa:2048"]);
        let err = err_of(&key, &key);
        assert_eq!(
            err.to_string(),
            format!("no certificate found in {}", key.display())
        );
    }

    #[test]
    fn certificate_given_as_key_says_no_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = self_signed(dir.path(), "rsa", &["rsa:2048"]);
        let err = err_of(&cert, &cert);
        assert!(
            err.to_string()
                .starts_with(&format!("no private key found in {}", cert.display())),
            "{err}"
        );
    }

    #[test]
    fn key_of_another_certificate_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = self_signed(dir.path(), "one", &["rsa:2048"]);
        let (_, other_key) = self_signed(dir.path(), "two", &["rsa:2048"]);
        let err = err_of(&cert, &other_key);
        assert!(matches!(err, TlsError::Rejected { .. }), "{err:?}");
    }
}
