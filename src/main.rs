//! Starts things; everything else is the library.

/// mimalloc instead of glibc malloc: a Check allocates and frees many small buffers (gRPC frames, protobuf
/// strings, the Redis reply), and the allocator was the largest single share of its CPU in the profile
/// (BENCHMARKS.md, issue 11).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
