//! TLS material: server configs (ALPN h2 + http/1.1, TLS 1.2/1.3, optional mTLS) and client configs.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::config::Tls;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certs { path: String, reason: String },
    #[error("cannot read private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Certs {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_certs(&pem, path)
}

/// The certificates of PEM text read from `path` (named in errors).
pub fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Certs {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_key(&pem, path)
}

/// The private key of PEM text read from `path` (named in errors).
pub fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| TlsError::Certs {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Builds a server config from PEM files (re-read on every reload).
pub fn server_config(t: &Tls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(&t.cert)?;
    let key = load_key(&t.key)?;
    let builder = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ]);
    let builder = match &t.client_ca {
        Some(ca) => {
            let v = WebPkiClientVerifier::builder(Arc::new(roots_from(ca)?));
            let v = if t.client_auth_required {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| TlsError::Config(e.to_string()))?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // TLS 1.3 resumption (and TLS 1.2 session ids): stateful, each ticket names a session in
    // this bounded cache and is usable once; a resumed handshake skips the certificate signature.
    // A reload builds a new configuration, and so a new (empty) cache.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    cfg.send_tls13_tickets = TICKETS_PER_HANDSHAKE;
    Ok(Arc::new(cfg))
}

/// Sessions a listener configuration remembers for resumption (least recently used go first).
pub const SESSION_CACHE: usize = 4096;
/// TLS 1.3 tickets sent after a full handshake: a client may open two connections at once.
pub const TICKETS_PER_HANDSHAKE: usize = 2;

/// System trust anchors, read once; an empty store (logged) when none can be read.
pub fn system_roots() -> RootCertStore {
    static ROOTS: std::sync::OnceLock<RootCertStore> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                tracing::warn!("no system CA certificates found; https upstreams and identity providers need a configured CA");
            }
            roots
        })
        .clone()
}

/// Client config for an upstream: configured CA or system roots, optional client certificate.
pub fn client_config(
    ca: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = match ca {
        Some(p) => roots_from(p)?,
        None => system_roots(),
    };
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsError::Config(e.to_string())),
        None => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Moves TLS records between the two sides until neither has anything to say.
    fn pump(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
        loop {
            let mut buf = Vec::new();
            let mut moved = 0;
            while client.wants_write() {
                moved += client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().unwrap();
            }
            buf.clear();
            while server.wants_write() {
                moved += server.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
            if moved == 0 {
                return;
            }
        }
    }

    #[test]
    fn a_second_connection_resumes_the_tls13_session() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let server = server_config(&Tls {
            cert: cert_path.clone(),
            key: key_path,
            client_ca: None,
            client_auth_required: false,
        })
        .unwrap();
        // The client keeps its sessions (rustls' default in-memory store) across connections.
        let client = Arc::new(client_config(Some(&cert_path), None).unwrap());
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let mut c = rustls::ClientConnection::new(client.clone(), name.clone()).unwrap();
            let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
            pump(&mut c, &mut s);
            assert!(!c.is_handshaking() && !s.is_handshaking());
            assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
            kinds.push(c.handshake_kind());
        }
        use rustls::HandshakeKind::{Full, Resumed};
        assert_eq!(kinds, [Some(Full), Some(Resumed), Some(Resumed)]);
    }
}
