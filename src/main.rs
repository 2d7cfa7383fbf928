//! The `klaxon` binary: all logic lives in the library.

fn main() -> std::process::ExitCode {
    klaxon::cli::main()
}
