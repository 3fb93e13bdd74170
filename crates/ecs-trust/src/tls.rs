//! rustls configurations and CA pins.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// A certificate in DER.
pub type CertDer = CertificateDer<'static>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: String },
    #[error("{what}: no PEM private key found")]
    NoKey { what: String },
    #[error("{what}: not a usable CA certificate: {source}")]
    BadCertificate { what: String, source: rustls::Error },
    #[error("a CA pin is sha256:<64 hex digits>")]
    BadPin,
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("building the certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// The crypto provider used everywhere, client and server: aws-lc-rs (its
/// X25519 and P-256 in assembly; the same library ecs-seal seals with, built
/// by `cc`, no cmake or nasm). Key exchange X25519 first (X25519MLKEM768
/// offered, not preferred). Measured against ring in docs/benchmarks.md.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// SHA-256 of a CA certificate's DER `SubjectPublicKeyInfo`: the same value
/// as kubeadm's `--discovery-token-ca-cert-hash` and as
/// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaPin([u8; 32]);

impl CaPin {
    /// Parses `sha256:<hex>` (or bare hex).
    pub fn parse(s: &str) -> Result<CaPin, TlsError> {
        let hex_part = s.trim().strip_prefix("sha256:").unwrap_or(s.trim());
        let bytes = hex::decode(hex_part).map_err(|_| TlsError::BadPin)?;
        Ok(CaPin(bytes.try_into().map_err(|_| TlsError::BadPin)?))
    }

    /// The pin of a CA certificate.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<CaPin, TlsError> {
        let mut store = RootCertStore::empty();
        store
            .add(cert.clone().into_owned())
            .map_err(|source| TlsError::BadCertificate {
                what: "CA".into(),
                source,
            })?;
        let anchor = &store.roots[0];
        // webpki keeps the SPKI's contents; the pin covers the whole SEQUENCE.
        let contents = anchor.subject_public_key_info.as_ref();
        let mut spki = vec![0x30];
        spki.extend(der_length(contents.len()));
        spki.extend_from_slice(contents);
        Ok(CaPin(Sha256::digest(&spki).into()))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A DER length prefix.
fn der_length(n: usize) -> Vec<u8> {
    if n < 0x80 {
        return vec![n as u8];
    }
    let bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

/// Every certificate in a PEM text.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertDer>, TlsError> {
    let certs: Vec<CertDer> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what: what.into() });
    }
    Ok(certs)
}

/// Every certificate in a PEM file.
pub fn certs_from_file(path: &Path) -> Result<Vec<CertDer>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    certs_from_pem(&pem, &path.display().to_string())
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key_from_file(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?);
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey {
        what: path.display().to_string(),
    })
}

/// PEM text of certificates.
pub fn certs_to_pem(certs: &[CertDer]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for c in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Which certificate authorities a client trusts.
#[derive(Debug, Clone)]
pub enum Roots {
    /// The system's roots plus these (an operator's `--ca-file`).
    SystemAnd(Vec<CertDer>),
    /// Only these (an enrolled agent trusts only its control plane's CA).
    Only(Vec<CertDer>),
}

/// A client configuration verifying the server against `roots`.
///
/// With a CA file beside the system's roots, the system's roots are loaded
/// only if a server's chain does not verify against the CA file alone
/// ([`CaFileFirst`]): reading and parsing the system store (~150
/// certificates, ~300 files) was most of a CLI call's 40 ms on loopback.
pub fn client_config(roots: &Roots) -> Result<ClientConfig, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let store = match roots {
        Roots::SystemAnd(extra) if !extra.is_empty() => {
            let verifier = CaFileFirst::new(extra.clone())?;
            return Ok(builder
                .dangerous() // accepts exactly what the default would with these roots
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth());
        }
        Roots::SystemAnd(_) => system_roots(&[])?,
        Roots::Only(only) => roots_of(RootCertStore::empty(), only)?,
    };
    Ok(builder.with_root_certificates(store).with_no_client_auth())
}

fn roots_of(mut store: RootCertStore, certs: &[CertDer]) -> Result<RootCertStore, TlsError> {
    for c in certs {
        store
            .add(c.clone())
            .map_err(|source| TlsError::BadCertificate {
                what: "CA file".into(),
                source,
            })?;
    }
    Ok(store)
}

/// The system's roots plus `extra`.
fn system_roots(extra: &[CertDer]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system root certificate could not be loaded");
    }
    store.add_parsable_certificates(native.certs);
    roots_of(store, extra)
}

/// Verifies against the CA file's certificates first and, only when that
/// fails, against the system's roots plus the CA file (loaded then, once).
/// It accepts exactly the chains the second alone would: a chain valid for
/// a subset of the roots is valid for all of them, and every refusal of the
/// subset is decided again by the whole set.
#[derive(Debug)]
pub struct CaFileFirst {
    extra: Vec<CertDer>,
    ca_file: Arc<WebPkiServerVerifier>,
    with_system: std::sync::OnceLock<Result<Arc<WebPkiServerVerifier>, String>>,
    provider: Arc<CryptoProvider>,
}

impl CaFileFirst {
    pub fn new(extra: Vec<CertDer>) -> Result<Arc<CaFileFirst>, TlsError> {
        let provider = provider();
        let roots = roots_of(RootCertStore::empty(), &extra)?;
        let ca_file =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?;
        Ok(Arc::new(CaFileFirst {
            extra,
            ca_file,
            with_system: std::sync::OnceLock::new(),
            provider,
        }))
    }

    /// Whether the system's roots have been loaded (tests).
    pub fn loaded_system_roots(&self) -> bool {
        self.with_system.get().is_some()
    }

    fn with_system(&self) -> Result<&Arc<WebPkiServerVerifier>, rustls::Error> {
        self.with_system
            .get_or_init(|| {
                let roots = system_roots(&self.extra).map_err(|e| e.to_string())?;
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| rustls::Error::General(e.clone()))
    }
}

impl ServerCertVerifier for CaFileFirst {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.ca_file.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(_) => self.with_system()?.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca_file.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca_file.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca_file.supported_verify_schemes()
    }
}

/// Verifies a server whose chain contains a CA certificate with the pinned
/// public key, as if that CA were the only root: the chain must be valid
/// for the name, signed by that CA, and current. Nothing is sent to a
/// server that fails this (the handshake fails first).
#[derive(Debug)]
pub struct PinnedVerifier {
    pin: CaPin,
    provider: Arc<CryptoProvider>,
    matched: Mutex<Option<CertDer>>,
}

impl PinnedVerifier {
    pub fn new(pin: CaPin) -> Arc<PinnedVerifier> {
        Arc::new(PinnedVerifier {
            pin,
            provider: provider(),
            matched: Mutex::new(None),
        })
    }

    /// The CA certificate that matched the pin in the last verified handshake.
    pub fn matched_ca(&self) -> Option<CertDer> {
        self.matched.lock().expect("pin lock").clone()
    }

    /// A client configuration using this verifier.
    pub fn client_config(self: &Arc<Self>) -> Result<ClientConfig, TlsError> {
        Ok(ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous() // a stricter verifier than the default: one pinned root
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth())
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| CaPin::of_cert(c).is_ok_and(|p| p == self.pin))
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "no certificate in the server's chain matches the CA pin {}",
                    self.pin
                ))
            })?
            .clone()
            .into_owned();
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        *self.matched.lock().expect("pin lock") = Some(ca);
        Ok(verified)
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

/// Whether an `http://` URL's host is a loopback address (plain HTTP is
/// allowed only there).
pub fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_and_print() {
        let hex = "ab".repeat(32);
        let p = CaPin::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(p.to_string(), format!("sha256:{hex}"));
        assert_eq!(CaPin::parse(&hex).unwrap(), p);
        assert!(CaPin::parse("sha256:abcd").is_err());
        assert!(CaPin::parse(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn der_lengths() {
        assert_eq!(der_length(5), vec![5]);
        assert_eq!(der_length(127), vec![127]);
        assert_eq!(der_length(128), vec![0x81, 128]);
        assert_eq!(der_length(300), vec![0x82, 1, 44]);
    }

    /// The pin equals what operators compute with openssl (and kubeadm prints).
    #[test]
    fn the_pin_matches_openssl_over_the_whole_spki() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let pin = CaPin::of_cert(cert.der()).unwrap();
        let dir = std::env::temp_dir().join(format!("ecs-trust-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (pem, pubkey, der) = (dir.join("ca.pem"), dir.join("pub.pem"), dir.join("pub.der"));
        std::fs::write(&pem, cert.pem()).unwrap();
        let run = |args: &[&std::ffi::OsStr]| {
            let st = std::process::Command::new("openssl")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "openssl {args:?}");
        };
        run(&[
            "x509".as_ref(),
            "-in".as_ref(),
            pem.as_os_str(),
            "-pubkey".as_ref(),
            "-noout".as_ref(),
            "-out".as_ref(),
            pubkey.as_os_str(),
        ]);
        run(&[
            "pkey".as_ref(),
            "-pubin".as_ref(),
            "-in".as_ref(),
            pubkey.as_os_str(),
            "-outform".as_ref(),
            "der".as_ref(),
            "-out".as_ref(),
            der.as_os_str(),
        ]);
        let expected: [u8; 32] = Sha256::digest(std::fs::read(&der).unwrap()).into();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(pin, CaPin(expected));
    }

    /// A CA and a leaf it signed for `name`.
    fn ca_and_leaf(name: &str) -> (CertDer, CertDer) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        (ca.der().clone(), leaf.der().clone())
    }

    /// A chain from the CA file verifies without reading the system's
    /// roots; anything else is decided with them (loaded then) and still
    /// refused when it does not verify.
    #[test]
    fn a_ca_file_chain_verifies_without_loading_the_system_roots() {
        let (ca, leaf) = ca_and_leaf("ecsd.example");
        let (_, stranger) = ca_and_leaf("ecsd.example");
        let v = CaFileFirst::new(vec![ca]).unwrap();
        let name = ServerName::try_from("ecsd.example").unwrap();
        let check = |leaf: &CertDer, name: &ServerName<'_>| {
            v.verify_server_cert(leaf, &[], name, &[], UnixTime::now())
        };
        check(&leaf, &name).expect("signed by the CA file");
        assert!(!v.loaded_system_roots());
        let other = ServerName::try_from("other.example").unwrap();
        assert!(check(&leaf, &other).is_err(), "another name");
        assert!(v.loaded_system_roots());
        assert!(check(&stranger, &name).is_err(), "an unknown CA");
        check(&leaf, &name).expect("still verifies after the fallback");
    }

    #[test]
    fn only_loopback_http_is_loopback() {
        assert!(is_loopback_http("http://127.0.0.1:8080"));
        assert!(is_loopback_http("http://localhost/x"));
        assert!(is_loopback_http("http://[::1]:80/"));
        assert!(!is_loopback_http("http://10.0.0.1:8080"));
        assert!(!is_loopback_http("http://example.com"));
        assert!(!is_loopback_http("https://127.0.0.1:8443"));
        assert!(!is_loopback_http("http://127.0.0.1.evil.example:80"));
    }
}
