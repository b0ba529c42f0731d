//! TLS for the shared agent: the built-in roots plus the extra CA bundles, always verified.
//!
//! ureq's own rustls connector takes either webpki's roots or a list of certificates,
//! and webpki's roots are trust anchors, not certificates, so "built-in PLUS extra"
//! cannot be said through its `TlsConfig`. This module builds the rustls client
//! configuration itself and plugs it into ureq as the TLS step of the connector
//! chain. Its verifier is webpki's, run first against the built-in roots and, only
//! when those do not know the issuer, against the extra CAs; it records which of the
//! two verified each host, so `check --connect` can say so. There is no way to skip
//! verification.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
    TransportAdapter,
};

/// Which roots verified a host's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustSource {
    BuiltIn,
    /// The extra bundles, named as in the configuration (`SP_TLS_CA_FILE=/ca.pem`).
    Extra(String),
}

impl fmt::Display for TrustSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustSource::BuiltIn => f.write_str("the built-in CA roots"),
            TrustSource::Extra(s) => write!(f, "the extra CA bundle ({s})"),
        }
    }
}

/// Host name → the roots that last verified it.
pub type TrustRecord = Arc<Mutex<HashMap<String, TrustSource>>>;

/// webpki against the built-in roots, then against the extra CAs.
struct Verifier {
    builtin: Arc<WebPkiServerVerifier>,
    extra: Option<(Arc<WebPkiServerVerifier>, String)>,
    record: TrustRecord,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    fn note(&self, name: &ServerName<'_>, source: TrustSource) {
        let host = name.to_str().into_owned();
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host, source);
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let first =
            self.builtin
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        match (first, &self.extra) {
            (Ok(v), _) => {
                self.note(server_name, TrustSource::BuiltIn);
                Ok(v)
            }
            (
                Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
                Some((extra, source)),
            ) => {
                let v =
                    extra.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
                self.note(server_name, TrustSource::Extra(source.clone()));
                Ok(v)
            }
            (Err(e), _) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.builtin.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.builtin.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.builtin.supported_verify_schemes()
    }
}

/// The rustls client configuration: built-in roots, plus `extra` (named `source` in
/// messages) when given.
pub fn client_config(
    extra: &[CertificateDer<'static>],
    source: &str,
    record: TrustRecord,
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = |roots: RootCertStore| {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("a non-empty root store builds a verifier")
    };
    let builtin = verifier(RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    });
    let extra = if extra.is_empty() {
        None
    } else {
        let mut roots = RootCertStore::empty();
        // Every certificate was checked when the configuration was read.
        roots.add_parsable_certificates(extra.iter().cloned());
        Some((verifier(roots), source.to_string()))
    };
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        // Not a way around verification: the verifier above is webpki's, run twice.
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier {
            builtin,
            extra,
            record,
        }))
        .with_no_client_auth();
    Arc::new(config)
}

/// The TLS step of the agent's connector chain (in place of ureq's own).
pub struct TlsConnector {
    pub config: Arc<ClientConfig>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConnector")
    }
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details
            .uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let name = ServerName::try_from(host).map_err(|_| ureq::Error::Tls("invalid host name"))?;
        let mut conn = ClientConnection::new(self.config.clone(), name)?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        if let Err(e) = conn.complete_io(&mut sock) {
            // A refused certificate comes back as an io::Error holding the rustls
            // error: hand that on as itself, so callers can tell it from a network
            // failure.
            return Err(
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(tls) => ureq::Error::Rustls(tls.clone()),
                    None => ureq::Error::Io(e),
                },
            );
        }
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport {
            buffers,
            stream: StreamOwned { conn, sock },
        })))
    }
}

pub struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsTransport")
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

/// When `e` is a refused server certificate: why, in words a user can act on.
/// Other TLS trouble (a reset, a protocol hiccup) is not reported here: it may heal.
pub fn verification_failure(e: &ureq::Error) -> Option<String> {
    let tls = match e {
        ureq::Error::Rustls(t) => t,
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        _ => return None,
    };
    let rustls::Error::InvalidCertificate(ce) = tls else {
        return None;
    };
    Some(match ce {
        CertificateError::UnknownIssuer => {
            "the certificate's issuer is unknown: no CA among the built-in roots or the extra \
             bundles signed it (behind a gateway with a private CA, add that CA's PEM with \
             SSL_CERT_FILE or SP_TLS_CA_FILE)"
                .to_string()
        }
        CertificateError::Expired => "the certificate has expired".to_string(),
        CertificateError::ExpiredContext { not_after, .. } => format!(
            "the certificate has expired (it was valid until {})",
            unix_date(not_after.as_secs())
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the certificate is not valid yet (check the clock of this machine)".to_string()
        }
        CertificateError::NotValidForName => {
            "the certificate is for another host name (wrong name)".to_string()
        }
        CertificateError::NotValidForNameContext { presented, .. } => format!(
            "the certificate is for another host name (wrong name): it is valid only for {}",
            if presented.is_empty() {
                "no name at all".to_string()
            } else {
                presented.join(", ")
            }
        ),
        CertificateError::Revoked => "the certificate has been revoked".to_string(),
        other => format!("the certificate was refused: {other}"),
    })
}

fn unix_date(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (UNIX time)"))
}
