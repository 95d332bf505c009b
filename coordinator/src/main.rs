//! `tresnet-coordinator` binary: parse flags, run the subcommand, print the error chain, exit non-zero.

use std::process::ExitCode;

use clap::Parser;
use tresnet_coordinator::cli::{Cli, Command};
use tresnet_coordinator::run;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tresnet_common::logging::init(cli.log_json);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tresnet-coordinator: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tresnet-coordinator: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Run(args) => {
            let out = args.out.clone();
            let summary = run::run(args.into_config()?).await?;
            print_headline(&summary);
            println!("report: {}", out.join("summary.json").display());
            Ok(())
        }
        Command::Report(a) => {
            let summary = tresnet_coordinator::report::rerender(&a.run)?;
            print_headline(&summary);
            println!("report: {}", a.run.join("report.html").display());
            Ok(())
        }
        Command::Pack(a) => {
            use tresnet_common::storage::{StorageLocation, StorageOptions};
            let src = StorageLocation::parse(&a.data, &StorageOptions::default())?;
            let dst = StorageLocation::parse(&a.out, &StorageOptions::default())?;
            let index = tresnet_common::dataset::list_dataset(&src, &a.format).await?;
            let s = tresnet_common::dataset::tar::pack_dataset(
                &index,
                &src,
                &dst,
                a.shard_size,
                a.concurrency.max(1),
            )
            .await?;
            println!(
                "packed {} samples ({} bad) into {} shards, {} bytes, at {}",
                s.samples,
                s.bad_samples,
                s.shards.len(),
                s.bytes,
                dst.url()
            );
            Ok(())
        }
    }
}

fn print_headline(summary: &tresnet_coordinator::report::Summary) {
    if summary.synthetic {
        println!("SYNTHETIC run (no model): accuracy numbers are meaningless");
    }
    println!(
        "top-1 {:.3}%  top-{} {:.3}%  samples {}  bad {}  failed {}  (dataset {})",
        summary.top1,
        summary.top5_k,
        summary.top5,
        summary.samples,
        summary.bad_samples,
        summary.failed_samples,
        summary.dataset_size
    );
}
