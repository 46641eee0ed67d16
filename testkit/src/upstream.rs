//! An echo upstream: answers every request with the JSON of what it received, and remembers how many
//! requests reached it (a deny must never get here).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::Json;
use serde::Deserialize;
use tokio::task::JoinHandle;

/// What the upstream saw: method, path with query, and every header (lower-cased name, all values in order).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, Vec<String>>,
}

impl Echo {
    /// The single value of `name`; panics when the header came more than once (a smuggled duplicate).
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.headers.get(name)?;
        assert_eq!(values.len(), 1, "{name} reached the upstream {} times: {values:?}", values.len());
        Some(values[0].as_str())
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind echo upstream");
        let addr = listener.local_addr().expect("echo upstream addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().fallback(echo).with_state(hits.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hits, task }
    }

    /// Requests that reached the upstream so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(State(hits): State<Arc<AtomicUsize>>, req: Request) -> Json<Echo> {
    hits.fetch_add(1, Ordering::SeqCst);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers.entry(k.as_str().to_string()).or_default().push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    Json(Echo { method: req.method().to_string(), path, headers })
}
