//! `tresnet-coordinator` binary: parse flags, run the subcommand, print the error chain, exit non-zero.

use std::process::ExitCode;

use clap::Parser;
use tresnet_coordinator::cli::GateArgs;
use tresnet_coordinator::cli::{Cli, Command};
use tresnet_coordinator::shutdown::Interrupted;
use tresnet_coordinator::{compare, gate, run, sweep};

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
        Ok(code) => code,
        Err(e) => {
            eprintln!("tresnet-coordinator: error: {e:#}");
            // A drained run exits as the signal's default action would have: 128 + its number.
            match e.downcast_ref::<Interrupted>() {
                Some(i) => ExitCode::from(i.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Exit status of `gate` on bad input (missing or invalid baseline or run files), as clap's usage errors.
const GATE_INPUT_ERROR: u8 = 2;
/// `bench --fail-on-slow` found a device more than 10% below the median of its kind: distinct from a
/// failed bench (1) so that a script can tell a sick device from a broken pool.
const SLOW_DEVICES_EXIT: u8 = 3;

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run(args) => {
            let out = args.out.clone();
            let summary = run::run(args.into_config()?).await?;
            print_headline(&summary);
            println!("report: {}", out.join("summary.json").display());
            if let Some(why) = summary.shortfall(&out.join("summary.json")) {
                anyhow::bail!("{why}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(a) => {
            let summary = tresnet_coordinator::report::rerender(&a.run)?;
            print_headline(&summary);
            println!("report: {}", a.run.join("report.html").display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Rescore(a) => {
            let summary = tresnet_coordinator::rescore::rescore(&a.run, &a.out, &a.rule())?;
            print_headline(&summary);
            println!("report: {}", a.out.join("report.html").display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Pack(a) => {
            use tresnet_common::storage::StorageLocation;
            let src = StorageLocation::parse(&a.data, &a.store.options())?;
            let dst = StorageLocation::parse(&a.out, &a.store.options())?;
            let format = tresnet_coordinator::job_args::with_absolute_paths(
                a.format.clone(),
                a.allow_absolute_paths,
            )?;
            let index = tresnet_common::dataset::list_dataset(&src, &format).await?;
            if index.label_sets.is_some() || !index.excluded.is_empty() {
                anyhow::bail!(
                    "pack writes one label per sample and every image, so --format {}'s label lists \
                     would be lost; pack the images as --format imagenet and score the run with \
                     `rescore --labels`",
                    a.format.name()
                );
            }
            let s = if a.decoded {
                let threads = a
                    .decode_threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                tresnet_coordinator::decoded_pack::pack_decoded(
                    &index,
                    &src,
                    &dst,
                    &a.preprocess,
                    a.shard_size,
                    a.concurrency.max(1),
                    threads,
                )
                .await?
            } else {
                if a.preprocess != tresnet_common::preprocess::PreprocessConfig::default() {
                    anyhow::bail!(
                        "--resolution, --crop-pct, --crop-mode, --max-pixels and --dct-scaling \
                         decide the pixels of a decoded pack; add --decoded"
                    );
                }
                tresnet_coordinator::pack::pack_dataset(
                    &index,
                    &src,
                    &dst,
                    a.shard_size,
                    a.concurrency.max(1),
                )
                .await?
            };
            println!(
                "packed {} samples ({} bad) into {} {}shards, {} bytes, at {}",
                s.samples,
                s.bad_samples,
                s.shards.len(),
                if a.decoded { "decoded " } else { "" },
                s.bytes,
                dst.url()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Gate(a) => Ok(gate_command(a)),
        Command::Compare(a) => {
            let c = compare::compare(&a.run_a, &a.run_b)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", c.render(a.classes));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(a) => {
            let cfg = a.into_config()?;
            let report = tresnet_coordinator::pool_bench::bench(&cfg).await?;
            print!("{}", report.markdown());
            println!("tables: {}", cfg.out.join("bench.md").display());
            if cfg.fail_on_slow && report.any_slow() {
                eprintln!(
                    "tresnet-coordinator: error: {} slow device(s) (--fail-on-slow)",
                    report.slow.len()
                );
                return Ok(ExitCode::from(SLOW_DEVICES_EXIT));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep(a) => {
            let o = sweep::sweep(&sweep::SweepConfig {
                file: a.file,
                out: a.out,
            })
            .await?;
            print!("{}", sweep::markdown(&o));
            println!("tables: {}", o.out.join("sweep.md").display());
            if o.failed() > 0 {
                anyhow::bail!("{} of {} cells failed", o.failed(), o.cells.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// 0 within bounds, 1 with the violations, 2 when the inputs cannot be checked.
fn gate_command(a: GateArgs) -> ExitCode {
    let result = if a.write_baseline {
        gate::write_baseline(&a.run, &a.baseline).map(|b| {
            println!(
                "wrote baseline {} (top-1 {:.3}%, top-{} {:.3}%, {} samples, {} classes)",
                a.baseline.display(),
                b.top1,
                b.top5_k,
                b.top5,
                b.samples,
                b.classes.len()
            );
            ExitCode::SUCCESS
        })
    } else {
        match a.into_config() {
            Ok(cfg) => gate::gate(&cfg).map(|r| {
                print!("{}", r.render());
                if r.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }),
            Err(e) => {
                eprintln!("tresnet-coordinator: error: {e:#}");
                return ExitCode::from(GATE_INPUT_ERROR);
            }
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("tresnet-coordinator: error: {e}");
        ExitCode::from(GATE_INPUT_ERROR)
    })
}

fn print_headline(summary: &tresnet_coordinator::run_dir::Summary) {
    if summary.synthetic {
        println!("SYNTHETIC run (no model): accuracy numbers are meaningless");
    }
    if summary.samples == 0 {
        println!(
            "no samples evaluated  bad {}  failed {}  (dataset {})",
            summary.bad_samples, summary.failed_samples, summary.dataset_size
        );
        return;
    }
    println!(
        "top-1 {:.3}%  top-{} {:.3}%  samples {}  bad {}  failed {}  (dataset {})",
        summary.top1.unwrap_or_default(),
        summary.top5_k,
        summary.top5.unwrap_or_default(),
        summary.samples,
        summary.bad_samples,
        summary.failed_samples,
        summary.dataset_size
    );
    if let (Some(t1), Some(t5)) = (summary.top1_ci95, summary.top5_ci95) {
        println!(
            "95% CI (Wilson): top-1 {:.2}-{:.2}%  top-{} {:.2}-{:.2}%",
            t1.low, t1.high, summary.top5_k, t5.low, t5.high
        );
    }
    if summary.excluded_samples > 0 {
        println!(
            "excluded {} samples by the scoring rule (reasons in outcome.json)",
            summary.excluded_samples
        );
    }
}
