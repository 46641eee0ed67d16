//! `portcullis healthcheck`: one GET against the readiness route, exit 0 on a 2xx and 1 otherwise.
//!
//! The distroless image has no shell and no curl, so Docker's `HEALTHCHECK` and Kubernetes exec probes (the
//! sidecar manifests keep the HTTP listener on the pod's loopback) call the binary itself.

use std::time::Duration;

/// Where `serve` answers readiness with the shipped manifests (`server.http_addr = "127.0.0.1:9002"`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:9002/readyz";

/// Asks `url` once, within `timeout`. `Ok` names the status; `Err` says why the target is not healthy.
pub async fn probe(url: &str, timeout: Duration) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("healthcheck: cannot build an HTTP client: {e}"))?;
    let resp = client.get(url).send().await.map_err(|e| format!("healthcheck: {url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        Ok(format!("{url}: {status}"))
    } else {
        Err(format!("healthcheck: {url}: {status}"))
    }
}
