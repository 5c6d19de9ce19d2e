//! Certificate files and certificate names: reading PEM certificates, CA bundles and private keys, and the
//! name a server certificate must carry for a host. The one loader for both TLS sides (clients in
//! `frontend::tls`, nodes in `backend::tls`) and for config validation, which checks that CA files are
//! usable without building any TLS configuration.

use std::path::{Path, PathBuf};

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};

/// Why a certificate file or name cannot be used. Every variant names the file or host at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but its PEM is broken.
    #[error("cannot parse PEM in {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        source: std::io::Error,
    },
    /// The file holds no `CERTIFICATE` block.
    #[error("no certificate found in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key block.
    #[error(
        "no private key found in {} (expected a PKCS#8, RSA or SEC1 key in PEM: \
         BEGIN PRIVATE KEY, BEGIN RSA PRIVATE KEY or BEGIN EC PRIVATE KEY)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in a CA file cannot serve as a trust anchor.
    #[error("{} holds a certificate that cannot be used as a CA: {source}", path.display())]
    BadAnchor {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// A host is neither a DNS name nor an IP address.
    #[error("`{host}` is neither a DNS name nor an IP address that a certificate could name")]
    BadHost {
        /// The host.
        host: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file, in file order (for a chain: leaf first); at least one.
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Parse {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, RSA or SEC1) in a PEM file.
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| CertError::Parse {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| CertError::NoKey {
            path: path.to_owned(),
        })
}

/// A PEM bundle of CA certificates as trust anchors.
pub(crate) fn ca_roots(path: &Path) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|source| CertError::BadAnchor {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The name a server's certificate must carry: an IP address for a numeric host, else a DNS name.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, CertError> {
    ServerName::try_from(host.to_owned()).map_err(|_| CertError::BadHost {
        host: host.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        assert!(matches!(ca_roots(&missing), Err(CertError::Read { .. })));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        assert!(matches!(ca_roots(&empty), Err(CertError::NoCertificate { .. })));
        assert!(matches!(private_key(&empty), Err(CertError::NoKey { .. })));
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("db.internal").is_ok());
        assert!(matches!(server_name("bad host"), Err(CertError::BadHost { .. })));
    }
}
