//! TLS to PostgreSQL: libpq's `sslmode` over rustls.
//!
//! tokio-postgres negotiates TLS (the `SSLRequest` and the server's yes or no) and hands the
//! socket to a [`MakeTlsConnect`]; this module is that connector, over tokio-rustls, with the
//! checks of the mode: none (`prefer`, `require`), the chain against the root certificates
//! (`verify-ca`, and `prefer`/`require` when root certificates are given, as libpq does), or
//! the chain and the host name (`verify-full`). It is ours rather than
//! `tokio-postgres-rustls`'s because that crate verifies with rustls's defaults only (so
//! `require` and `verify-ca` would need verifiers of ours anyway) and brings `x509-cert`,
//! `der` and `spki` for SCRAM channel binding, which this output does not use; everything
//! here was already compiled into the persister (rustls, tokio-rustls and
//! rustls-native-certs come with redis and object_store).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`, the URL's (else `PGSSLMODE`, else `prefer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// No TLS.
    Disable,
    /// No TLS first; TLS (unverified) when the plain connection is refused.
    Allow,
    /// TLS when the server offers it, unverified (unless root certificates are given);
    /// plain otherwise. libpq's default.
    Prefer,
    /// TLS or no connection; the certificate unverified unless root certificates are given.
    Require,
    /// TLS, the server's certificate chain verified against the root certificates.
    VerifyCa,
    /// TLS, the chain verified and the certificate naming the host of the URL.
    VerifyFull,
}

impl SslMode {
    /// The mode `text` names, as libpq spells it.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// Its name in a URL.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where the root certificates come from: a PEM file, or the system's trust store
/// (`sslrootcert=system`, as in libpq 16).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RootCertificates {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// The operating system's trusted roots (rustls-native-certs).
    System,
}

impl std::fmt::Display for RootCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "sslrootcert={}", path.display()),
            Self::System => f.write_str("sslrootcert=system"),
        }
    }
}

impl RootCertificates {
    /// The roots from the URL's `sslrootcert` (`system` or a path), else `PGSSLROOTCERT`,
    /// else libpq's default file `~/.postgresql/root.crt` when it exists.
    pub(crate) fn locate(from_url: Option<&str>) -> Option<Self> {
        let given = from_url
            .map(str::to_owned)
            .or_else(|| std::env::var("PGSSLROOTCERT").ok())
            .filter(|text| !text.is_empty());
        match given.as_deref() {
            Some("system") => Some(Self::System),
            Some(path) => Some(Self::File(PathBuf::from(path))),
            None => {
                let default = Path::new(&std::env::var_os("HOME")?).join(".postgresql/root.crt");
                default.exists().then_some(Self::File(default))
            }
        }
    }

    /// The certificates, in a store.
    fn load(&self) -> Result<RootCertStore, String> {
        let mut store = RootCertStore::empty();
        match self {
            Self::File(path) => {
                let iter = CertificateDer::pem_file_iter(path)
                    .map_err(|err| format!("{self}: cannot read it ({err})"))?;
                for certificate in iter {
                    let certificate = certificate
                        .map_err(|err| format!("{self}: not a PEM certificate file ({err})"))?;
                    store
                        .add(certificate)
                        .map_err(|err| format!("{self}: a certificate rustls refuses ({err})"))?;
                }
            }
            Self::System => {
                let found = rustls_native_certs::load_native_certs();
                // A system store may hold a few certificates rustls cannot parse; they are
                // left out, as every rustls client does.
                store.add_parsable_certificates(found.certs);
            }
        }
        if store.is_empty() {
            return Err(format!("{self}: holds no CA certificate"));
        }
        Ok(store)
    }
}

/// What the connector checks in the server's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Nothing but the handshake's own signatures (the connection is encrypted, the server
    /// unauthenticated).
    Nothing,
    /// The chain up to a root certificate.
    Chain,
    /// The chain and the host name.
    ChainAndName,
}

/// A rustls connector for tokio-postgres with the checks of one `sslmode`. Cheap to clone
/// (one `Arc`), one per connection attempt.
#[derive(Clone)]
pub(crate) struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
    /// Where the roots came from, for messages (None when nothing is verified).
    roots: Option<RootCertificates>,
}

impl MakeRustlsConnect {
    /// The connector for `mode` with `roots`.
    ///
    /// # Errors
    /// A message naming what is wrong: `verify-ca`/`verify-full` without root certificates,
    /// a root file that cannot be read or holds no certificate.
    pub(crate) fn new(mode: SslMode, roots: Option<RootCertificates>) -> Result<Self, String> {
        let check = match (mode, &roots) {
            (SslMode::VerifyFull, _) => Check::ChainAndName,
            (SslMode::VerifyCa, _) => Check::Chain,
            // libpq verifies the chain in these modes too when it finds root certificates.
            (_, Some(_)) => Check::Chain,
            (_, None) => Check::Nothing,
        };
        // ring, named rather than the process default: the workspace compiles aws-lc-rs into
        // rustls too (object_store), and which one is the default is not this module's call.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("TLS set-up: {err}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match check {
            Check::Nothing => Arc::new(RelaxedCheck {
                chain: None,
                provider,
            }),
            Check::Chain | Check::ChainAndName => {
                let Some(source) = &roots else {
                    return Err(format!(
                        "sslmode={} verifies the server's certificate, so it needs the CA certificates to trust: give sslrootcert=/path/to/ca.crt in the URL (or PGSSLROOTCERT, or ~/.postgresql/root.crt, or sslrootcert=system for the system's roots), or use sslmode=require to encrypt without verifying",
                        mode.as_str()
                    ));
                };
                let store = source.load()?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                        .build()
                        .map_err(|err| format!("{source}: {err}"))?;
                if check == Check::Chain {
                    Arc::new(RelaxedCheck {
                        chain: Some(webpki),
                        provider,
                    })
                } else {
                    webpki
                }
            }
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            roots: (check != Check::Nothing).then_some(roots).flatten(),
        })
    }

    /// What a failed handshake's rustls error means here, in a sentence naming the setting
    /// that decided it.
    fn explain(&self, host: &str, err: &rustls::Error) -> String {
        let roots = self
            .roots
            .as_ref()
            .map_or_else(String::new, ToString::to_string);
        match err {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "the server's certificate does not name the host {host:?} of the URL ({err}); sslmode=verify-full checks it (verify-ca checks the chain alone)"
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => format!(
                "the server's certificate is not signed by a CA of {roots} ({err}); give the CA that signed it"
            ),
            rustls::Error::InvalidCertificate(_) => {
                format!("the server's certificate was refused ({err}), checked against {roots}")
            }
            _ => format!("TLS handshake with the server failed: {err}"),
        }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        // An IP address is checked against the certificate's IP names, a DNS name against
        // its DNS names (webpki), as libpq does.
        let name = ServerName::try_from(domain.to_owned()).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{domain:?} cannot be a TLS server name ({err})"),
            )
        })?;
        Ok(RustlsConnect {
            connector: self.clone(),
            name,
        })
    }
}

/// One connection's handshake.
pub(crate) struct RustlsConnect {
    connector: MakeRustlsConnect,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.connector.config.clone());
        Box::pin(async move {
            let host = self.name.to_str().into_owned();
            match connector.connect(self.name, stream).await {
                Ok(stream) => Ok(RustlsStream(Box::new(stream))),
                Err(err) => {
                    let explained = err
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .map(|tls| self.connector.explain(&host, tls));
                    Err(match explained {
                        Some(message) => io::Error::new(err.kind(), message),
                        None => err,
                    })
                }
            }
        })
    }
}

/// A TLS connection to the server. No channel binding: SCRAM authenticates as without TLS
/// (channel binding needs the certificate's signature hash, which would bring an X.509
/// parser; a verified certificate already authenticates the server).
pub(crate) struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// The two checks libpq's modes relax, in one verifier so they share the handshake's
/// signature checks (made against the certificate's key with the provider's algorithms, as
/// webpki makes them): the session is encrypted to whoever holds that key either way.
#[derive(Debug)]
struct RelaxedCheck {
    /// `verify-ca`: the chain checked by webpki, the name not (webpki checks the chain before
    /// the name, so a name error means the chain was good). `None` for `prefer`/`require`
    /// without root certificates: any certificate, as libpq.
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for RelaxedCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_libpq_mode_parses_and_prints_back() {
        for mode in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(SslMode::parse(mode).unwrap().as_str(), mode);
        }
        assert_eq!(SslMode::parse("verify_full"), None);
    }

    #[test]
    fn verifying_modes_need_root_certificates_and_a_readable_file() {
        let err = MakeRustlsConnect::new(SslMode::VerifyFull, None)
            .err()
            .unwrap();
        assert!(err.contains("sslmode=verify-full verifies"), "{err}");
        assert!(err.contains("sslrootcert="), "{err}");
        let missing = RootCertificates::File("/nonexistent/ca.crt".into());
        let err = MakeRustlsConnect::new(SslMode::VerifyCa, Some(missing))
            .err()
            .unwrap();
        assert!(
            err.contains("sslrootcert=/nonexistent/ca.crt: cannot read it"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = MakeRustlsConnect::new(SslMode::VerifyCa, Some(RootCertificates::File(empty)))
            .err()
            .unwrap();
        assert!(err.contains("holds no CA certificate"), "{err}");
        // require needs none: it encrypts without verifying.
        assert!(MakeRustlsConnect::new(SslMode::Require, None).is_ok());
    }
}
