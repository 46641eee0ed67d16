//! A real `redis-server` on a free port, owned by the test (killed on drop).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// TLS only, client certificates required: `redis-server`'s and `redis-cli`'s TLS arguments.
    tls: Option<(Vec<String>, Vec<String>)>,
}

/// Every server writes (a replica's full sync, a cluster's node file) into its own temporary `dir`, never the
/// working directory. `extra` comes last, so it overrides (`--port 0` with TLS).
fn spawn(port: u16, dir: &Path, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}): install Debian's package `redis-server` (apt-get install redis-server)")
        })
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(super::free_port(), None)
    }

    /// TLS only (`rediss://`), its certificate signed by `pki`'s private CA, client certificates required.
    pub fn start_tls(pki: &super::tls::Pki) -> Self {
        let port = super::free_port();
        Self::start_on(port, Some((pki.server_args(port), pki.cli_args())))
    }

    fn start_on(port: u16, tls: Option<(Vec<String>, Vec<String>)>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = tls.as_ref().map(|t| t.0.clone()).unwrap_or_default();
        let s = Self { port, child: Some(spawn(port, dir.path(), &extra)), dir, tls };
        s.wait_up();
        s
    }

    fn wait_up(&self) {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some((_, cli_args)) = &self.tls {
                if cli(self.port, cli_args, &["ping"]).trim() == "PONG" {
                    return;
                }
            } else if let Ok(mut c) = self.conn_result() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against it (with its TLS arguments when it is TLS only): the output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, self.tls.as_ref().map_or(&[][..], |t| &t.1), args)
    }

    fn conn_result(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))
    }

    /// A plain synchronous connection for test assertions.
    pub fn conn(&self) -> redis::Connection {
        self.conn_result().expect("connect to test redis")
    }

    pub fn exists(&self, key: &str) -> bool {
        redis::cmd("EXISTS").arg(key).query::<i64>(&mut self.conn()).expect("EXISTS") == 1
    }

    /// Calls per command name since the last `CONFIG RESETSTAT`.
    pub fn commandstats(&self) -> HashMap<String, u64> {
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut self.conn()).expect("INFO");
        info.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }

    /// [`Self::commandstats`] without the test's own commands (`PING`, `CONFIG RESETSTAT`, `INFO`): what the
    /// code under test ran since the last reset (`INFO commandstats` counts the commands a script runs too).
    pub fn executed(&self) -> std::collections::BTreeMap<String, u64> {
        let ours = ["ping", "config|resetstat", "info"];
        self.commandstats().into_iter().filter(|(k, _)| !ours.contains(&k.as_str())).collect()
    }

    pub fn reset_stats(&self) {
        redis::cmd("CONFIG").arg("RESETSTAT").query::<()>(&mut self.conn()).expect("RESETSTAT");
    }

    /// Kills the server (the data goes with it).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a fresh server on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let extra = self.tls.as_ref().map(|t| t.0.clone()).unwrap_or_default();
        self.child = Some(spawn(self.port, self.dir.path(), &extra));
        self.wait_up();
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    /// SIGSTOP: a hung Redis that accepts nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.stop();
    }
}

/// A three-master Redis Cluster on free ports (killed on drop).
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    /// `redis-cli`'s TLS arguments when every node is TLS only.
    cli_tls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Every node TLS only (the cluster bus too), certificates from `pki`'s private CA, client certificates
    /// required.
    pub fn start_tls(pki: &super::tls::Pki) -> Self {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&super::tls::Pki>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..3).map(|_| super::free_port()).collect();
        let children = ports
            .iter()
            .map(|p| {
                let conf = dir.path().join(format!("nodes-{p}.conf"));
                let tls = pki.map(|k| k.server_args(*p)).unwrap_or_default();
                // The bus port too is one `free_port` chose: Redis's default, the port + 10000, lands in the
                // ephemeral range, where a client connection (or its TIME_WAIT) may hold it.
                let bus = super::free_port().to_string();
                Command::new("redis-server")
                    .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-port", &bus, "--cluster-config-file"])
                    .arg(&conf)
                    .arg("--dir")
                    .arg(dir.path())
                    .args(&tls)
                    .args(if tls.is_empty() { &[][..] } else { &["--tls-cluster", "yes"][..] })
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start redis-server (install Debian's redis-server)")
            })
            .collect();
        let cli_tls = pki.map(|k| k.cli_args()).unwrap_or_default();
        let c = Self { ports, children, cli_tls, _dir: dir };
        for p in &c.ports {
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                let pong = cli(*p, &c.cli_tls, &["ping"]);
                if pong.trim() == "PONG" {
                    break;
                }
                assert!(Instant::now() < end, "cluster node {p} did not come up: {pong}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(&c.cli_tls)
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (Debian's redis-tools)");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let end = Instant::now() + Duration::from_secs(20);
        while !c.ports.iter().all(|p| cli(*p, &c.cli_tls, &["cluster", "info"]).contains("cluster_state:ok")) {
            assert!(Instant::now() < end, "cluster did not reach cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.cli_tls.is_empty() { "redis" } else { "rediss" };
        self.ports.iter().map(|p| format!("{scheme}://127.0.0.1:{p}")).collect()
    }

    /// `redis-cli -c` (following redirections) against the first node: the output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        cli(self.ports[0], &self.cli_tls, &all)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A master, one replica and one Sentinel watching them as `mymaster` (quorum 1); killed on drop.
pub struct RedisSentinel {
    pub master: u16,
    pub replica: u16,
    pub sentinel: u16,
    children: Vec<Child>,
    /// `redis-cli`'s TLS arguments when every node is TLS only.
    cli_tls: Vec<String>,
    _dir: tempfile::TempDir,
}

pub const SENTINEL_MASTER: &str = "mymaster";

fn cli(port: u16, tls: &[String], args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(tls)
        .args(args)
        .output()
        .expect("redis-cli (install Debian's redis-tools)");
    // Its errors too: they are why a wait timed out.
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

impl RedisSentinel {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Every node, the Sentinel included, TLS only with certificates from `pki`'s private CA and client
    /// certificates required; replication and Sentinel's own connections over TLS too.
    pub fn start_tls(pki: &super::tls::Pki) -> Self {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&super::tls::Pki>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (master, replica, sentinel) = (super::free_port(), super::free_port(), super::free_port());
        let tls_args = |port: u16| pki.map(|p| p.server_args(port)).unwrap_or_default();
        let node = |port: u16, extra: &[String]| {
            let own = dir.path().join(port.to_string());
            std::fs::create_dir(&own).expect("node dir");
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&own)
                .args(extra)
                .args(tls_args(port))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (install Debian's redis-server)")
        };
        let mut children =
            vec![node(master, &[]), node(replica, &["--replicaof".into(), "127.0.0.1".into(), master.to_string()])];
        // A config file's directives are the command line's arguments without the dashes.
        let tls_conf: String = tls_args(sentinel)
            .chunks(2)
            .map(|kv| format!("{} \"{}\"\n", kv[0].trim_start_matches('-'), kv[1]))
            .collect();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel}\nbind 127.0.0.1\n{tls_conf}sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\nsentinel failover-timeout {SENTINEL_MASTER} 5000\n"
            ),
        )
        .expect("sentinel.conf");
        children.push(
            Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel"),
        );
        let cli_tls = pki.map(|p| p.cli_args()).unwrap_or_default();
        let s = Self { master, replica, sentinel, children, cli_tls, _dir: dir };
        // Sentinel learns of replicas from the master's INFO (every 10 s): it can only promote one it knows.
        let end = Instant::now() + Duration::from_secs(30);
        while !(s.master_port() == Some(master)
            && s.cli(replica, &["info", "replication"]).contains("master_link_status:up")
            && s.cli(sentinel, &["sentinel", "replicas", SENTINEL_MASTER]).contains(&replica.to_string()))
        {
            assert!(Instant::now() < end, "sentinel/replica did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(port, &self.cli_tls, args)
    }

    pub fn url(&self) -> String {
        let scheme = if self.cli_tls.is_empty() { "redis" } else { "rediss" };
        format!("{scheme}://127.0.0.1:{}", self.sentinel)
    }

    /// The master's port as Sentinel reports it.
    pub fn master_port(&self) -> Option<u16> {
        self.cli(self.sentinel, &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER])
            .lines()
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }

    /// Kills the master (after its writes reached the replica) and waits until Sentinel promotes the replica.
    pub fn kill_master(&mut self) {
        let _ = self.cli(self.master, &["wait", "1", "2000"]);
        let _ = self.children[0].kill();
        let _ = self.children[0].wait();
        let end = Instant::now() + Duration::from_secs(30);
        while self.master_port() != Some(self.replica) {
            assert!(Instant::now() < end, "Sentinel did not promote the replica");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn exists_on(&self, port: u16, key: &str) -> bool {
        self.cli(port, &["exists", key]).trim() == "1"
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
