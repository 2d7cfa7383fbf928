//! The `klaxon` binary: all logic lives in the library.

/// mimalloc: many small allocations on several threads during a fan-out,
/// where glibc's malloc was the top cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    klaxon::cli::main()
}
