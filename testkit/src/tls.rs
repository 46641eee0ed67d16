//! A private CA and what it signs, made by the real `openssl` CLI in a temporary directory: the PKI an
//! operator's Redis and IdP sit behind, which no public root trusts.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `ca.pem`; `server.pem`/`server.key` for `localhost` and `127.0.0.1` (server and client use: a Redis
    /// replica presents it to its master); `client.pem`/`client.key` for portcullis.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        openssl(
            d,
            &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"],
            |c| {
                c.args(["-subj", "/CN=portcullis test CA", "-keyout", "ca.key", "-out", "ca.pem"]).args([
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign",
                ]);
            },
        );
        sign(
            d,
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        sign(d, "client", "portcullis", "extendedKeyUsage=clientAuth\n");
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `redis-cli`'s TLS arguments (the client pair, trusting the CA).
    pub fn cli_args(&self) -> Vec<String> {
        let p = |f: &str| self.path(f).display().to_string();
        vec![
            "--tls".into(),
            "--cacert".into(),
            p("ca.pem"),
            "--cert".into(),
            p("client.pem"),
            "--key".into(),
            p("client.key"),
        ]
    }

    /// `redis-server`'s TLS arguments: TLS only (`port 0`), client certificates required.
    pub fn server_args(&self, port: u16) -> Vec<String> {
        let p = |f: &str| self.path(f).display().to_string();
        ["--port", "0", "--tls-port", &port.to_string(), "--tls-cert-file", &p("server.pem")]
            .into_iter()
            .map(String::from)
            .chain(["--tls-key-file".into(), p("server.key"), "--tls-ca-cert-file".into(), p("ca.pem")])
            .chain(["--tls-auth-clients".into(), "yes".into(), "--tls-replication".into(), "yes".into()])
            .collect()
    }

    /// The server pair, for the test IdP to serve HTTPS with.
    pub fn idp_tls(&self) -> crate::idp::IdpTls {
        crate::idp::IdpTls { cert: self.path("server.pem"), key: self.path("server.key"), ca: self.path("ca.pem") }
    }

    /// A browser that trusts this CA: a cookie jar, redirects left to the caller.
    pub fn browser(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.path("ca.pem")).expect("ca.pem")).expect("ca");
        let none = reqwest::redirect::Policy::none();
        reqwest::Client::builder().add_root_certificate(ca).redirect(none).cookie_store(true).build().expect("client")
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// `NAME.key` and `NAME.pem` for `cn`, signed by the CA, with the extensions in `ext`.
fn sign(d: &Path, name: &str, cn: &str, ext: &str) {
    let (key, csr, pem, extfile) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
    std::fs::write(d.join(&extfile), format!("basicConstraints=critical,CA:FALSE\n{ext}")).expect("ext file");
    openssl(d, &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"], |c| {
        c.args(["-subj", &format!("/CN={cn}"), "-keyout", &key, "-out", &csr]);
    });
    openssl(
        d,
        &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1"],
        |c| {
            c.args(["-extfile", &extfile, "-out", &pem]);
        },
    );
}

fn openssl(d: &Path, args: &[&str], more: impl FnOnce(&mut Command)) {
    let mut c = Command::new("openssl");
    c.current_dir(d).args(args);
    more(&mut c);
    let out = c.output().unwrap_or_else(|e| panic!("cannot run openssl ({e}): install Debian's package `openssl`"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
