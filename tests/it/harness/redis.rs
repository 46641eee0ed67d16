//! A real `redis-server` on a free port, owned by the test (killed on drop).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

fn spawn(port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
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
        let s = Self { port, child: Some(spawn(port)) };
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
        self.child = Some(spawn(self.port));
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
