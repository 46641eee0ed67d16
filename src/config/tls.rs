//! Trust for portcullis's own TLS connections: a private CA for an IdP or for Redis, and the client
//! certificate a Redis with `tls-auth-clients` asks for. The files are read and parsed when the config
//! loads, so a missing or unreadable file fails start-up (or a reload) naming its key, not the first Check.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

/// PEM text read from a `*_file` key, checked to hold what the key is for.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem(Vec<u8>);

impl Pem {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Never the content (it may be a private key); a digest, so that a config comparison (reload's
/// restart-only check) still sees a file whose content changed.
impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = sha2::Sha256::digest(&self.0);
        write!(f, "Pem(sha256:{})", hex::encode(&d[..8]))
    }
}

/// What a `*_file` key must hold.
#[derive(Clone, Copy)]
pub enum Holds {
    /// One or more certificates (a CA bundle, or a certificate chain).
    Certificates,
    /// One private key.
    PrivateKey,
}

/// Reads `path` and checks that it holds what it should; the error says why not, naming the file.
pub fn load(path: &Path, holds: Holds) -> Result<Pem, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let problem = match holds {
        Holds::Certificates => match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if certs.is_empty() => Some("holds no PEM certificate".to_string()),
            Ok(_) => None,
            Err(e) => Some(format!("not a PEM certificate bundle: {e}")),
        },
        Holds::PrivateKey => PrivateKeyDer::from_pem_slice(&bytes).err().map(|e| format!("not a PEM private key: {e}")),
    };
    match problem {
        Some(p) => Err(format!("{}: {p}", path.display())),
        None => Ok(Pem(bytes)),
    }
}

/// Reads `file` into `into`, or names `key` in `errors`.
pub(super) fn read(file: &Option<PathBuf>, holds: Holds, into: &mut Option<Pem>, key: &str, errors: &mut Vec<String>) {
    if let Some(path) = file {
        match load(path, holds) {
            Ok(pem) => *into = Some(pem),
            Err(e) => errors.push(format!("{key}: {e}")),
        }
    }
}
