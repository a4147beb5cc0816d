//! Upstream TLS for PostgreSQL: SSLRequest, then a rustls handshake.
//!
//! Modes follow libpq's `sslmode` names:
//! * `disable`: plaintext;
//! * `require`: encrypted, the certificate is not checked (the handshake
//!   signature still is: it proves the peer holds the key of the certificate
//!   it sent, which keeps a passive observer out but not an active MITM);
//! * `verify-ca`: the chain must lead to `ca_file`; the name is not checked
//!   (a server reached by an address its certificate does not list);
//! * `verify-full`: the chain must lead to `ca_file` and the certificate must
//!   name `server_name` (default: the destination IP).
//!
//! With `client_cert_file` and `client_key_file` the daemon presents that
//! certificate (libpq's `sslcert`/`sslkey`), for servers that authenticate
//! clients by certificate (`hostssl … cert`) or require one (`clientcert=`).
//!
//! A server answering `N` to the SSLRequest fails both encrypted modes: there
//! is no silent fallback to plaintext. Exactly one byte is read before the
//! handshake, so plaintext a server (or a MITM) sends after its `S` cannot be
//! mistaken for data of the encrypted session (CVE-2021-23222).
//!
//! The CA and client certificate files are read at every connection, so
//! rotated ones apply without a restart. Provider: ring, chosen explicitly (never a process-wide default).

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};
use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_util::either::Either;

use crate::protocol::postgres::build;

/// The upstream connection: plaintext or TLS.
pub type UpstreamStream = Either<TcpStream, TlsStream<TcpStream>>;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    #[default]
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    fn name(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// `targets[].postgres.upstream.tls` (also `targets[].mysql.upstream.tls`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM file of the CA certificate(s) the server's chain must lead to
    /// (`verify-ca`, `verify-full`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name the certificate must carry (DNS name or IP); default: the
    /// destination's IP address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM certificate (chain) the daemon presents to the server.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

impl TlsConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        match (self.mode, &self.ca_file) {
            (TlsMode::VerifyCa | TlsMode::VerifyFull, None) => {
                return Err(format!(
                    "upstream.tls: mode {} needs ca_file",
                    self.mode.name()
                ));
            }
            (TlsMode::Disable | TlsMode::Require, Some(_)) => {
                return Err(
                    "upstream.tls: ca_file is only used with verify-ca and verify-full (require does not check the certificate)"
                        .into(),
                );
            }
            _ => {}
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "upstream.tls: client_cert_file and client_key_file go together".into(),
                );
            }
            (Some(_), Some(_)) if self.mode == TlsMode::Disable => {
                return Err(
                    "upstream.tls: a client certificate needs TLS (mode require, verify-ca or verify-full)"
                        .into(),
                );
            }
            _ => {}
        }
        if let Some(n) = &self.server_name {
            ServerName::try_from(n.as_str()).map_err(|_| {
                format!("upstream.tls.server_name `{n}` is not a DNS name or IP address")
            })?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the server at {0} does not accept TLS (answered N to SSLRequest) but tls.mode requires it"
    )]
    Refused(SocketAddr),
    #[error("the server at {dst} answered {byte:#04x} to SSLRequest")]
    BadAnswer { dst: SocketAddr, byte: u8 },
    #[error("ca_file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("client certificate {path}: {reason}")]
    ClientCert { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Config(#[from] rustls::Error),
    #[error("TLS handshake with {dst} failed: {source}")]
    Handshake {
        dst: SocketAddr,
        source: std::io::Error,
    },
    #[error("SSLRequest to {dst}: {source}")]
    Io {
        dst: SocketAddr,
        source: std::io::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate checks of modes `require` (none: any certificate) and
/// `verify-ca` (`chain`: the chain to the CA, not the name; webpki checks the
/// name last, so a name error means everything else passed). Handshake
/// signatures are verified against the certificate's key either way: they
/// prove the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The PEM certificates of `path`, at least one.
fn read_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(certs)
}

/// The client certificate chain and key.
fn load_client_cert(
    cert: &PathBuf,
    key: &PathBuf,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let err = |path: &PathBuf, reason: String| TlsError::ClientCert {
        path: path.clone(),
        reason,
    };
    let certs = read_certs(cert).map_err(|e| err(cert, e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e.to_string()))?;
    Ok((certs, key_der))
}

fn load_roots(path: &PathBuf) -> Result<RootCertStore, TlsError> {
    let err = |reason: String| TlsError::CaFile {
        path: path.clone(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for c in read_certs(path).map_err(err)? {
        roots.add(c).map_err(|e| err(e.to_string()))?;
    }
    Ok(roots)
}

/// The rustls client configuration for `cfg` (None for `disable`), with the
/// PostgreSQL ALPN.
pub fn client_config(cfg: &TlsConfig) -> Result<Option<ClientConfig>, TlsError> {
    let Some(mut config) = base_config(cfg)? else {
        return Ok(None);
    };
    // What libpq 17+ sends; servers without ALPN support ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Some(config))
}

/// The rustls client configuration for `cfg` (None for `disable`), no ALPN
/// (shared with the MySQL upstream, whose protocol has none).
pub fn base_config(cfg: &TlsConfig) -> Result<Option<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (cfg.mode, &cfg.ca_file) {
        (TlsMode::Disable, _) => return Ok(None),
        (TlsMode::Require, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient {
                chain: None,
                provider,
            })),
        (TlsMode::VerifyCa, Some(ca)) => {
            let chain = WebPkiServerVerifier::builder_with_provider(
                Arc::new(load_roots(ca)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::CaFile {
                path: ca.clone(),
                reason: e.to_string(),
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    chain: Some(chain),
                    provider,
                }))
        }
        (TlsMode::VerifyFull, Some(ca)) => builder.with_root_certificates(load_roots(ca)?),
        (mode @ (TlsMode::VerifyCa | TlsMode::VerifyFull), None) => {
            return Err(TlsError::CaFile {
                path: PathBuf::new(),
                reason: format!("{} needs ca_file", mode.name()),
            });
        }
    };
    let config = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert), Some(key)) => {
            let (chain, key_der) = load_client_cert(cert, key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsError::ClientCert {
                    path: cert.clone(),
                    reason: e.to_string(),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(config))
}

/// The `tls-server-end-point` channel binding data of a TLS session (RFC
/// 5929): the server certificate hashed with its signature's hash (SHA-256
/// for MD5 and SHA-1). `None` when there is no certificate or its signature
/// names no single hash (RSASSA-PSS, Ed25519): SCRAM then goes without
/// channel binding, as libpq does.
pub fn channel_binding(tls: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    let der = tls.get_ref().1.peer_certificates()?.first()?;
    end_point(der)
}

fn end_point(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha256, Sha384, Sha512};
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    Some(match oid.as_str() {
        // md5, sha1, sha224(RSA), sha256 with RSA; ecdsa with sha1, sha224, sha256.
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.14"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.1"
        | "1.2.840.10045.4.3.2" => Sha256::digest(der).to_vec(),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(der).to_vec(),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512::digest(der).to_vec(),
        _ => return None,
    })
}

fn server_name(cfg: &TlsConfig, dst: SocketAddr) -> Result<ServerName<'static>, TlsError> {
    match &cfg.server_name {
        Some(n) => ServerName::try_from(n.clone()).map_err(|_| {
            TlsError::Config(rustls::Error::General(format!(
                "server_name `{n}` is not a DNS name or IP address"
            )))
        }),
        None => Ok(ServerName::IpAddress(dst.ip().into())),
    }
}

/// Encrypts `tcp` as `cfg` says (a no-op for `disable`).
pub async fn negotiate(
    mut tcp: TcpStream,
    cfg: &TlsConfig,
    dst: SocketAddr,
) -> Result<UpstreamStream, TlsError> {
    let Some(config) = client_config(cfg)? else {
        return Ok(Either::Left(tcp));
    };
    let name = server_name(cfg, dst)?;
    let io = |source| TlsError::Io { dst, source };
    let mut req = Vec::with_capacity(8);
    build::ssl_request(&mut req);
    tcp.write_all(&req).await.map_err(io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => {}
        b'N' => return Err(TlsError::Refused(dst)),
        byte => return Err(TlsError::BadAnswer { dst, byte }),
    }
    Ok(Either::Right(
        handshake(tcp, cfg, dst, config, Some(name)).await?,
    ))
}

/// The TLS handshake proper, once the protocol has agreed to it.
pub async fn handshake(
    tcp: TcpStream,
    cfg: &TlsConfig,
    dst: SocketAddr,
    config: ClientConfig,
    name: Option<ServerName<'static>>,
) -> Result<TlsStream<TcpStream>, TlsError> {
    let name = match name {
        Some(n) => n,
        None => server_name(cfg, dst)?,
    };
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|source| TlsError::Handshake { dst, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tls-server-end-point` hashes with the certificate's signature hash;
    /// a signature without one (Ed25519) gives no binding.
    #[test]
    fn end_point_follows_the_signature_hash() {
        use rcgen13::{
            CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
            PKCS_ED25519,
        };
        use sha2::{Digest, Sha256, Sha384};
        let der = |alg| {
            let key = KeyPair::generate_for(alg).unwrap();
            let p = CertificateParams::new(vec!["db.internal".to_string()]).unwrap();
            p.self_signed(&key).unwrap().der().to_vec()
        };
        let p256 = der(&PKCS_ECDSA_P256_SHA256);
        assert_eq!(end_point(&p256), Some(Sha256::digest(&p256).to_vec()));
        let p384 = der(&PKCS_ECDSA_P384_SHA384);
        assert_eq!(end_point(&p384), Some(Sha384::digest(&p384).to_vec()));
        assert_eq!(end_point(&der(&PKCS_ED25519)), None);
        assert_eq!(end_point(b"not a certificate"), None);
    }

    #[test]
    fn configs_build() {
        let none = TlsConfig::default();
        assert!(client_config(&none).unwrap().is_none());
        let req = TlsConfig {
            mode: TlsMode::Require,
            ..Default::default()
        };
        let c = client_config(&req).unwrap().unwrap();
        assert_eq!(c.alpn_protocols, [b"postgresql".to_vec()]);
        let missing = TlsConfig {
            mode: TlsMode::VerifyFull,
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = client_config(&missing).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = client_config(&TlsConfig {
            ca_file: Some(junk),
            ..missing
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        // A client certificate that cannot be read is named.
        let e = client_config(&TlsConfig {
            mode: TlsMode::Require,
            client_cert_file: Some(dir.path().join("client.pem")),
            client_key_file: Some(dir.path().join("client.key")),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("client certificate") && e.contains("client.pem"),
            "{e}"
        );
    }

    #[test]
    fn default_server_name_is_the_destination_ip() {
        let dst: SocketAddr = "10.77.0.2:5432".parse().unwrap();
        let n = server_name(&TlsConfig::default(), dst).unwrap();
        assert_eq!(n, ServerName::IpAddress(dst.ip().into()));
    }

    #[tokio::test]
    async fn refusal_is_an_error_not_a_fallback() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dst = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 8];
            s.read_exact(&mut req).await.unwrap();
            s.write_all(b"N").await.unwrap();
            req
        });
        let tcp = TcpStream::connect(dst).await.unwrap();
        let cfg = TlsConfig {
            mode: TlsMode::Require,
            ..Default::default()
        };
        let e = negotiate(tcp, &cfg, dst).await.unwrap_err();
        assert!(matches!(e, TlsError::Refused(_)), "{e}");
        assert!(e.to_string().contains("does not accept TLS"));
        let mut want = Vec::new();
        build::ssl_request(&mut want);
        assert_eq!(server.await.unwrap().to_vec(), want);
    }
}
