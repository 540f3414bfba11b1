use clap::Parser;

/// mimalloc instead of glibc's malloc: the proxy allocates and frees a few dozen small objects
/// per call across threads, and glibc's arenas (consolidation, trimming) were about a tenth of
/// its CPU per call in profiles (bench/proxy.sh).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    scopegate::cli::run(scopegate::cli::Cli::parse())
}
