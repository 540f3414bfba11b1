use clap::Parser;

fn main() -> std::process::ExitCode {
    scopegate::cli::run(scopegate::cli::Cli::parse())
}
