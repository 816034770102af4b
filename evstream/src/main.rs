//! The evstream binary: parses flags, initialises telemetry, and runs the chosen role(s).
//! `serve` runs every role in one process; `api`, `alerts` and `change-feed` run one role each so that roles
//! scale out separately; `bench` measures the ingest path.

mod alert_bench;
mod audit;
mod bench;
mod cli;
mod noisy;
mod platform;
mod policy_bench;

use clap::Parser;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

// glibc malloc dominated the ingest profile (many small JSON allocations across threads).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    producer::install_tls_provider();
    let filter = tracing_subscriber::EnvFilter::try_from_env("EVSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn,librdkafka=warn"));
    // `bench-producer` answers its parent on standard output, so it logs to standard error.
    let writer = match cli.command {
        cli::Command::BenchProducer(_) => BoxMakeWriter::new(std::io::stderr),
        _ => BoxMakeWriter::new(std::io::stdout),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(writer).init();
    // The platform's roles leave a core to librdkafka's threads (see `Common::workers`); the measurement programs
    // keep tokio's default of one worker per core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match &cli.command {
        cli::Command::Serve(o) | cli::Command::Api(o) | cli::Command::Alerts(o) | cli::Command::ChangeFeed(o) => {
            Some(o.workers(cores))
        }
        _ => None,
    };
    let rt = runtime(workers)?;
    if let Some(workers) = workers {
        tracing::info!(worker_threads = workers, cores, "runtime started");
    }
    rt.block_on(async move {
        match cli.command {
            cli::Command::Serve(o) => {
                platform::run(o, platform::Roles { api: true, alerts: true, change_feed: true }).await
            }
            cli::Command::Api(o) => {
                platform::run(o, platform::Roles { api: true, alerts: false, change_feed: false }).await
            }
            cli::Command::Alerts(o) => {
                platform::run(o, platform::Roles { api: false, alerts: true, change_feed: false }).await
            }
            cli::Command::ChangeFeed(o) => {
                platform::run(o, platform::Roles { api: false, alerts: false, change_feed: true }).await
            }
            cli::Command::Bench(b) => bench::run(b).await,
            cli::Command::BenchProducer(p) => bench::producer_child(p).await,
            cli::Command::BenchSummary(s) => bench::summary(s),
            cli::Command::NoisyNeighbour(n) => noisy::run(n).await,
            cli::Command::PolicyBench(p) => policy_bench::run(p),
            cli::Command::AuditVerify(a) => audit::run(a),
            cli::Command::AlertLatency(a) => alert_bench::run(a).await,
        }
    })
}

/// A multi-threaded runtime with `workers` worker threads, or tokio's default (one per core) when `None`.
fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(args: &[&str]) -> Result<cli::Common, clap::Error> {
        let cli = cli::Cli::try_parse_from(["evstream", "api"].iter().chain(args))?;
        match cli.command {
            cli::Command::Api(o) => Ok(o),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_roles_leave_one_core_to_librdkafka_unless_told() {
        let o = common(&[]).expect("no flags");
        assert_eq!([1, 2, 4, 16].map(|cores| o.workers(cores)), [1, 1, 3, 15]);
        let o = common(&["--worker-threads", "3"]).expect("a count");
        assert_eq!([1, 2, 16].map(|cores| o.workers(cores)), [3, 3, 3]);
    }

    #[test]
    fn a_worker_count_of_zero_or_not_a_number_is_refused_naming_the_flag() {
        for bad in ["0", "-1", "two", "1025"] {
            let e = common(&[&format!("--worker-threads={bad}")]).expect_err(bad).to_string();
            assert!(e.contains("--worker-threads"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_runtime_runs_the_workers_asked_for() {
        for n in [1, 3] {
            assert_eq!(runtime(Some(n)).expect("runtime").metrics().num_workers(), n);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(runtime(None).expect("runtime").metrics().num_workers(), cores);
    }
}
