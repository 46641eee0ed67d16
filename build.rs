//! Embeds the git revision so `portcullis --version` and `portcullis_build_info` say what is running.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    // A build without .git (a container image) passes the revision in PORTCULLIS_GIT_REV.
    let from_env = std::env::var("PORTCULLIS_GIT_REV").ok().filter(|s| !s.trim().is_empty());
    let rev = from_env.or_else(|| git(&["rev-parse", "--short=12", "HEAD"])).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PORTCULLIS_GIT_REV={rev}");
    // Ask git where HEAD and the refs live: in a worktree `.git` is a file, and a path that does not exist
    // would rebuild the crate on every `cargo build`.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        println!("cargo:rerun-if-changed={common}/refs/heads");
        if std::path::Path::new(&format!("{common}/packed-refs")).exists() {
            println!("cargo:rerun-if-changed={common}/packed-refs");
        }
    }
    println!("cargo:rerun-if-env-changed=PORTCULLIS_GIT_REV");
}
