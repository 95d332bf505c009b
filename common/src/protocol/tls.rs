//! TLS on the coordinator's gRPC endpoint (rustls through tonic): the server's certificate and key, and
//! the trust workers use for `https://` coordinator URLs, read and checked up front so that a bad path
//! or file is an error naming it rather than a failed handshake later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The io error is in the message rather than a `#[source]`, so that `{:#}` does not say it twice.
    #[error("cannot read {what} {path}: {error}")]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{what} {path} holds no PEM {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{what} {path} is not valid PEM: {reason}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS certificate {cert} and key {key} cannot be used together: {reason}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Picks ring as rustls's process-wide crypto provider. Both ring and aws-lc-rs are compiled into this
/// tree (object_store's reqwest brings the latter), and rustls refuses to guess between them.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "CERTIFICATE",
        });
    }
    Ok(pem)
}

/// The coordinator's certificate chain and private key (PEM), checked to parse and to belong together.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl ServerTls {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        install_crypto_provider();
        let cert_pem = certificates("TLS certificate", cert)?;
        let key_pem = read("TLS key", key)?;
        let parsed_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
                what: "TLS key",
                path: key.to_path_buf(),
                expected: "PRIVATE KEY",
            },
            e => TlsError::Parse {
                what: "TLS key",
                path: key.to_path_buf(),
                reason: e.to_string(),
            },
        })?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Parse {
                what: "TLS certificate",
                path: cert.to_path_buf(),
                reason: e.to_string(),
            })?;
        // The same check tonic would make at the first handshake, made now: a key that does not match
        // the certificate is a configuration error, not a per-connection one.
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, parsed_key))
        .map_err(|e| TlsError::Identity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(ServerTls {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            cert_pem,
            key_pem,
        })
    }

    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// What a worker trusts for an `https://` coordinator: the CA in `ca` (PEM) if given, else the system's
/// roots; `domain` overrides the name checked against the certificate (default: the URL's host).
pub fn client_config(ca: Option<&Path>, domain: Option<&str>) -> Result<ClientTlsConfig, TlsError> {
    install_crypto_provider();
    let mut config = ClientTlsConfig::new();
    config = match ca {
        Some(path) => config.ca_certificate(Certificate::from_pem(certificates("TLS CA", path)?)),
        None => config.with_native_roots(),
    };
    if let Some(d) = domain {
        config = config.domain_name(d);
    }
    Ok(config)
}

/// Whether a coordinator URL asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = ServerTls::load(&missing, &missing).unwrap_err().to_string();
        assert!(
            e.contains("TLS certificate") && e.contains("nope.pem"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let e = ServerTls::load(&empty, &missing).unwrap_err().to_string();
        assert!(
            e.contains("holds no PEM CERTIFICATE") && e.contains("empty.pem"),
            "{e}"
        );
        let e = client_config(Some(&empty), None).unwrap_err().to_string();
        assert!(e.contains("TLS CA") && e.contains("empty.pem"), "{e}");
    }

    #[test]
    fn https_is_recognised_case_insensitively() {
        assert!(is_https("https://10.0.0.1:7000"));
        assert!(is_https("HTTPS://coord:7000"));
        assert!(!is_https("http://coord:7000"));
        assert!(!is_https("http"));
    }
}
