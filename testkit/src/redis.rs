//! A real `redis-server` on a free port, owned by the test (killed on drop).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// Every server writes (a replica's full sync, a cluster's node file) into its own temporary `dir`, never the
/// working directory.
fn spawn(port: u16, dir: &Path) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}): install Debian's package `redis-server` (apt-get install redis-server)")
        })
}

impl RedisServer {
    pub fn start() -> Self {
        let port = super::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Self { port, child: Some(spawn(port, dir.path())), dir };
        s.wait_up();
        s
    }

    fn wait_up(&self) {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(mut c) = self.conn_result() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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
        self.child = Some(spawn(self.port, self.dir.path()));
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
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..3).map(|_| super::free_port()).collect();
        let children = ports
            .iter()
            .map(|p| {
                let conf = dir.path().join(format!("nodes-{p}.conf"));
                Command::new("redis-server")
                    .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                    .arg(&conf)
                    .arg("--dir")
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start redis-server (install Debian's redis-server)")
            })
            .collect();
        let c = Self { ports, children, _dir: dir };
        for p in &c.ports {
            let url = format!("redis://127.0.0.1:{p}");
            let end = Instant::now() + Duration::from_secs(10);
            while redis::Client::open(url.as_str())
                .and_then(|cl| cl.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
                .is_err()
            {
                assert!(Instant::now() < end, "cluster node {p} did not come up");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (Debian's redis-tools)");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = c.ports.iter().all(|p| {
                Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                    .unwrap_or(false)
            });
            if ok {
                break;
            }
            assert!(Instant::now() < end, "cluster did not reach cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
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
    _dir: tempfile::TempDir,
}

pub const SENTINEL_MASTER: &str = "mymaster";

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).to_string()
}

impl RedisSentinel {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (master, replica, sentinel) = (super::free_port(), super::free_port(), super::free_port());
        let node = |port: u16, extra: &[String]| {
            let own = dir.path().join(port.to_string());
            std::fs::create_dir(&own).expect("node dir");
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&own)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (install Debian's redis-server)")
        };
        let mut children =
            vec![node(master, &[]), node(replica, &["--replicaof".into(), "127.0.0.1".into(), master.to_string()])];
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel}\nbind 127.0.0.1\nsentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 1\n\
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
        let s = Self { master, replica, sentinel, children, _dir: dir };
        // Sentinel learns of replicas from the master's INFO (every 10 s): it can only promote one it knows.
        let end = Instant::now() + Duration::from_secs(30);
        while !(s.master_port() == Some(master)
            && cli(replica, &["info", "replication"]).contains("master_link_status:up")
            && cli(sentinel, &["sentinel", "replicas", SENTINEL_MASTER]).contains(&replica.to_string()))
        {
            assert!(Instant::now() < end, "sentinel/replica did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel)
    }

    /// The master's port as Sentinel reports it.
    pub fn master_port(&self) -> Option<u16> {
        cli(self.sentinel, &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER])
            .lines()
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }

    /// Kills the master (after its writes reached the replica) and waits until Sentinel promotes the replica.
    pub fn kill_master(&mut self) {
        let _ = cli(self.master, &["wait", "1", "2000"]);
        let _ = self.children[0].kill();
        let _ = self.children[0].wait();
        let end = Instant::now() + Duration::from_secs(30);
        while self.master_port() != Some(self.replica) {
            assert!(Instant::now() < end, "Sentinel did not promote the replica");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn exists_on(&self, port: u16, key: &str) -> bool {
        cli(port, &["exists", key]).trim() == "1"
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
