//! `tresnet-worker` binary: parse flags, run the subcommand, print the error chain, exit non-zero.

use std::process::ExitCode;

use clap::Parser;
use tresnet_worker::cli::{Cli, Command};
use tresnet_worker::preprocess::command::PreprocessCommand;
use tresnet_worker::{bench, collective_check, infer, join};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once: typed errors name their source in their own message too.
            eprintln!(
                "tresnet-worker: error: {}",
                tresnet_common::error_text::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(command) = cli.command else {
        if cli.join.check_args {
            println!("{:#?}", cli.join);
            return Ok(());
        }
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
        Command::Bench(args) => {
            let cfg = bench::BenchConfig::from_args(&args)?;
            let report = bench::run(&cfg)?;
            // The table for a reader on stderr; stdout stays one JSON document for scripts.
            eprint!("{}", report.table());
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::CollectiveCheck(args) => {
            let devices = args
                .devices
                .iter()
                .map(|d| d.resolve())
                .collect::<Result<Vec<_>, _>>()?;
            let cfg = collective_check::CheckConfig {
                devices,
                backend: args.backend,
                rounds: args.rounds as usize,
                classes: args.classes,
            };
            let report = collective_check::run(&cfg)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
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
