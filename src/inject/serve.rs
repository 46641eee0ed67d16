//! `portcullis webhook`: the admission decision (`webhook::review`) served at `POST /mutate` over TLS, with
//! `GET /healthz` and Prometheus `GET /metrics` on the same listener.
//! The certificate and key are read from files and read again on the first handshake after either file
//! changes (a Kubernetes Secret update swaps a symlink: the modification time of the target changes); a
//! pair that fails to load, or whose key is not the certificate's, keeps the previous one serving, with a
//! log line, and is tried again at the next handshake.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::routing::{get, post};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use super::webhook;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Stamp = (Option<SystemTime>, Option<SystemTime>);

/// The serving certificate, reloaded when its files change.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Stamp, Arc<CertifiedKey>)>,
}

fn modified(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load(cert: &PathBuf, key: &PathBuf) -> Result<Arc<CertifiedKey>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    // from_der also refuses a key that is not the certificate's: a renewal caught between its two files
    // keeps the previous pair serving instead of failing every handshake.
    let pair = CertifiedKey::from_der(certs, key_der, &rustls::crypto::ring::default_provider())
        .map_err(|e| format!("{} + {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(pair))
}

impl Reloading {
    fn new(cert: PathBuf, key: PathBuf) -> Result<Self, String> {
        let stamp = (modified(&cert), modified(&key));
        let first = load(&cert, &key)?;
        Ok(Self { cert, key, current: Mutex::new((stamp, first)) })
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut cur = self.current.lock().ok()?;
        let stamp = (modified(&self.cert), modified(&self.key));
        if stamp != cur.0 {
            match load(&self.cert, &self.key) {
                Ok(k) => {
                    tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
                    *cur = (stamp, k);
                }
                Err(e) => tracing::warn!(error = %e, "webhook certificate not reloaded: the previous one serves"),
            }
        }
        Some(cur.1.clone())
    }
}

async fn mutate(body: axum::body::Bytes) -> axum::Json<serde_json::Value> {
    axum::Json(webhook::review(&body))
}

async fn metrics() -> String {
    crate::telemetry::metrics().render()
}

/// Serves until SIGTERM or SIGINT.
pub async fn serve(listen: SocketAddr, cert: PathBuf, key: PathBuf) -> Result<(), String> {
    let resolver = Arc::new(Reloading::new(cert, key)?);
    crate::telemetry::metrics();
    // Every outcome is a series from the start: an alert on `not_injectable` needs no absent().
    for o in webhook::Reviewed::ALL {
        metrics::counter!("portcullis_webhook_reviews_total", "outcome" => o.label()).increment(0);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let app = axum::Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics));
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("{listen}: {e}"))?;
    tracing::info!(%listen, "webhook serving /mutate");
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Ok((tcp, _)) = accepted else { continue };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else { return };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "webhook connection");
            }
        });
    }
}
