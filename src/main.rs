//! Starts things; everything else is the library.
fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
