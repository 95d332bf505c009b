//! Entry point of `tresnet-coordinator`; the distributed pipeline is tracked in the distributed-core issue.

use clap::Parser;

/// Coordinates a TResNet evaluation job across workers.
#[derive(Debug, Parser)]
#[command(name = "tresnet-coordinator", version, about)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!(
        "tresnet-coordinator: the distributed pipeline is not built yet; use `tresnet-worker infer` (see README)"
    );
    std::process::ExitCode::from(2)
}
