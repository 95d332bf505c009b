//! `tresnet-worker` binary: parse flags, run the subcommand, print the error chain, exit non-zero.

use std::process::ExitCode;

use clap::Parser;
use tresnet_worker::cli::{Cli, Command};
use tresnet_worker::preprocess::command::PreprocessCommand;
use tresnet_worker::{infer, join};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tresnet-worker: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(command) = cli.command else {
        return join::run(cli.join);
    };
    match command {
        Command::Infer(args) => {
            let cfg = infer::InferConfig::from_args(&args)?;
            let s = infer::run(&cfg)?;
            eprintln!(
                "wrote logits [{}, {}] to {} ({:?} checkpoint, {:?})",
                s.images,
                s.num_classes,
                cfg.output.display(),
                s.layout,
                s.device
            );
            Ok(())
        }
        Command::Preprocess(args) => {
            let cmd = PreprocessCommand::from_args(&args)?;
            let (h, w) = cmd.run()?;
            eprintln!("wrote [1, 3, {h}, {w}] to {}", cmd.output.display());
            Ok(())
        }
    }
}
