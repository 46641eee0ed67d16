//! Starts things; everything else is the library.

/// mimalloc instead of glibc malloc: a Check allocates and frees many small buffers (gRPC frames, protobuf
/// strings, the Redis reply), and the allocator was the largest single share of its CPU in the profile
/// (BENCHMARKS.md, issue 11).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // One TLS crypto provider for the whole process, chosen here: redis-rs's `rediss://` connections ask
    // rustls for the process default, and rustls panics rather than choose when a build enables both of its
    // providers (feature unification did, in the test build).
    let _ = rustls::crypto::ring::default_provider().install_default();
    portcullis::cli::main()
}
