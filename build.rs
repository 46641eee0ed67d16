//! Embeds the git revision so `portcullis --version` and `portcullis_build_info` say what is running.
use std::process::Command;

fn main() {
    // A build without .git (a container image) passes the revision in PORTCULLIS_GIT_REV.
    let from_env = std::env::var("PORTCULLIS_GIT_REV").ok().filter(|s| !s.trim().is_empty());
    let rev = from_env
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PORTCULLIS_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=PORTCULLIS_GIT_REV");
}
