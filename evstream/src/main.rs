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
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cli.command.worker_threads(cores);
    let rt = cli::runtime(workers)?;
    if let Some(workers) = workers {
        tracing::info!(worker_threads = workers, cores, "runtime built");
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
