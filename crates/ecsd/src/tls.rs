//! HTTPS for every listener (contract §6): the certificate chain and key
//! named in the configuration, reloaded on SIGHUP without dropping
//! connections, and the dev PKI `serve --dev` makes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use ecs_trust::CaPin;
use ecs_trust::tls::{CertDer, certs_from_file, key_from_file};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::Config;

/// The server's certificate, swappable while serving.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    fn load(cert: &Path, key: &Path) -> anyhow::Result<(Arc<CertifiedKey>, Vec<CertDer>)> {
        let chain = certs_from_file(cert)?;
        let key_der = key_from_file(key)?;
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
            .with_context(|| format!("{}: unsupported private key", key.display()))?;
        let certified = CertifiedKey::new(chain.clone(), signing);
        certified
            .keys_match()
            .with_context(|| format!("{} does not match {}", key.display(), cert.display()))?;
        Ok((Arc::new(certified), chain))
    }

    /// Reads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let (ck, _) = Self::load(&self.cert, &self.key)?;
        *self.current.write().expect("certificate lock") = ck;
        Ok(())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

/// What serving HTTPS needs.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub cert: Arc<ReloadingCert>,
    /// The pin of the CA agents enroll against (`tls_ca`, else the last
    /// certificate of the chain).
    pub ca_pin: CaPin,
}

impl Tls {
    pub fn load(cert: &Path, key: &Path, ca: Option<&Path>) -> anyhow::Result<Tls> {
        let (ck, chain) = ReloadingCert::load(cert, key)?;
        let ca_cert = match ca {
            Some(p) => certs_from_file(p)?.remove(0),
            None => chain.last().expect("a chain is never empty").clone(),
        };
        let ca_pin = CaPin::of_cert(&ca_cert).context("the CA certificate")?;
        let resolver = Arc::new(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(ck),
        });
        let mut sc = rustls::ServerConfig::builder_with_provider(ecs_trust::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        sc.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No session tickets or cache: agents hold one long-lived connection
        // each, so resumption saves little, and 10,000 reconnecting agents
        // would otherwise each get (and hold) tickets (docs/benchmarks.md).
        sc.send_tls13_tickets = 0;
        sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
            cert: resolver,
            ca_pin,
        })
    }
}

/// Why plain HTTP may not be served on this configuration, if it may not.
pub fn plain_http_refusal(config: &Config) -> Option<String> {
    if !config.insecure_http {
        return Some(
            "no TLS certificate is configured: set tls_cert and tls_key (ECSD_TLS_CERT, \
             ECSD_TLS_KEY), use --dev, or ask for plain HTTP with --insecure-http"
                .into(),
        );
    }
    if !config.listen.ip().is_loopback() && !config.insecure_http_non_loopback {
        return Some(format!(
            "refusing plain HTTP on {}, which is not a loopback address: passwords, tokens and \
             credentials would cross the network in the clear. Configure tls_cert and tls_key, \
             or add --insecure-http-non-loopback if something else encrypts this hop",
            config.listen
        ));
    }
    None
}

/// Loads TLS from the configuration, or `None` for plain HTTP when allowed.
pub fn from_config(config: &Config) -> anyhow::Result<Option<Tls>> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => Ok(Some(Tls::load(c, k, config.tls_ca.as_deref())?)),
        (Some(_), None) | (None, Some(_)) => {
            anyhow::bail!("tls_cert and tls_key must be set together")
        }
        (None, None) => match plain_http_refusal(config) {
            Some(why) => anyhow::bail!(why),
            None => {
                tracing::warn!(listen = %config.listen, "serving plain HTTP (--insecure-http): nothing on this listener is encrypted");
                Ok(None)
            }
        },
    }
}

/// On every SIGHUP: reloads the certificate (if serving HTTPS) and the
/// work-signing keys. Open connections are not touched.
pub fn reload_on_sighup(cert: Option<Arc<ReloadingCert>>, state: crate::state::AppState) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Some(cert) = &cert {
                match cert.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "TLS certificate reload failed; keeping the current one")
                    }
                }
            }
            match state.reload_work_keys().await {
                Ok(k) => tracing::info!(work_key = %k.public(), "work-signing keys reloaded"),
                Err(e) => tracing::error!(error = %e, "work-signing key reload failed"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (cert, state);
}

/// The dev PKI's files, beside `dev-credentials.json`.
pub struct DevPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

const DEV_CA_NAME: &str = "ecsd dev CA";

/// Makes (once) a dev CA and a server certificate for 127.0.0.1, ::1 and
/// localhost signed by it. The CA is kept across restarts so that enrolled
/// dev agents keep trusting it; the server certificate is re-issued when
/// missing.
pub fn dev_pki(data_dir: &Path) -> anyhow::Result<DevPki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(data_dir)?;
    let pki = DevPki {
        ca: data_dir.join("dev-ca.pem"),
        cert: data_dir.join("dev-server.pem"),
        key: data_dir.join("dev-server.key"),
    };
    let ca_key_path = data_dir.join("dev-ca.key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, DEV_CA_NAME);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(2045, 1, 1);

    let ca_key = match std::fs::read_to_string(&ca_key_path) {
        Ok(pem) if pki.ca.exists() => KeyPair::from_pem(&pem).context("dev-ca.key")?,
        _ => {
            let key = KeyPair::generate()?;
            let ca = ca_params.self_signed(&key)?;
            crate::dev::write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
            crate::dev::write_private(&pki.ca, ca.pem().as_bytes())?;
            let _ = std::fs::remove_file(&pki.cert);
            key
        }
    };
    if !(pki.cert.exists() && pki.key.exists()) {
        let ca_pem = std::fs::read_to_string(&pki.ca)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "ecsd dev server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2045, 1, 1);
        let cert = params.signed_by(&key, &issuer)?;
        // The chain carries the CA, so that pinned agents find it.
        let chain = format!("{}{}", cert.pem(), ca_pem);
        crate::dev::write_private(&pki.key, key.serialize_pem().as_bytes())?;
        crate::dev::write_private(&pki.cert, chain.as_bytes())?;
    }
    Ok(pki)
}
