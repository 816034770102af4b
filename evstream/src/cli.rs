//! Command-line flags. Every flag has an `EVSTREAM_*` environment variable; the README's table lists them.

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "evstream", version, about = "Multi-tenant event streaming on Kafka")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every role in one process.
    Serve(Common),
    /// Run the HTTP API only.
    Api(Common),
    /// Run the alert stream only.
    Alerts(Common),
    /// Run the Cosmos DB change feed only.
    ChangeFeed(Common),
    /// Measure the ingest path: raw producer vs POST /events/bulk vs POST /events.
    Bench(crate::bench::BenchArgs),
    /// Scenario (a) of `bench`, the raw producer, in a process of its own; `bench` starts it.
    #[command(hide = true)]
    BenchProducer(crate::bench::ProducerArgs),
    /// The summary of the rounds `bench --record FILE` recorded, over several runs.
    #[command(hide = true)]
    BenchSummary(crate::bench::SummaryArgs),
    /// Measure tenant isolation: a quiet tenant's p99 with and without a noisy tenant flooding at 10x its quota.
    NoisyNeighbour(crate::noisy::NoisyArgs),
    /// Measure alert latency end to end: POST /events to the webhook receiver.
    AlertLatency(crate::alert_bench::AlertLatencyArgs),
    /// Verify the audit trail's hash chains and report the first break.
    AuditVerify(crate::audit::AuditVerifyArgs),
    /// Measure alert-policy evaluation throughput (100 tenants x 1,000 policies on pre-built events).
    PolicyBench(crate::policy_bench::PolicyBenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Kafka bootstrap servers.
    #[arg(long, env = "EVSTREAM_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Redis URL.
    #[arg(long, env = "EVSTREAM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Address the HTTP API listens on.
    #[arg(long, env = "EVSTREAM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The admin API key. When unset, one is generated at first start, stored hashed, and printed once.
    #[arg(long, env = "EVSTREAM_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// The shared events topic (used by tenants that name no topics of their own).
    #[arg(long, env = "EVSTREAM_EVENTS_TOPIC", default_value = "evstream.events")]
    pub events_topic: String,
    /// The compacted configuration topic (tenants, keys, stream configs).
    #[arg(long, env = "EVSTREAM_CONFIG_TOPIC", default_value = "evstream.config")]
    pub config_topic: String,
    /// The dead-letter topic.
    #[arg(long, env = "EVSTREAM_DEADLETTER_TOPIC", default_value = "evstream.deadletter")]
    pub deadletter_topic: String,
    /// Alert transitions, keyed by alert id.
    #[arg(long, env = "EVSTREAM_ALERTS_TOPIC", default_value = "evstream.alerts")]
    pub alerts_topic: String,
    /// Notifications that could not be delivered after the last retry.
    #[arg(long, env = "EVSTREAM_ALERTS_DEADLETTER_TOPIC", default_value = "evstream.alerts.deadletter")]
    pub alerts_deadletter_topic: String,
    /// The hash-chained audit trail of configuration and alert actions.
    #[arg(long, env = "EVSTREAM_AUDIT_TOPIC", default_value = "evstream.audit")]
    pub audit_topic: String,
    /// Consumer group of the alert stream (every `evstream alerts` process of a deployment shares it).
    #[arg(long, env = "EVSTREAM_ALERTS_GROUP", default_value = "evstream-alerts")]
    pub alerts_group: String,
    /// Where a new alert consumer group starts: `latest` (only new events) or `earliest`.
    #[arg(long, env = "EVSTREAM_ALERTS_START_FROM", default_value = "latest", value_parser = ["latest", "earliest"])]
    pub alerts_start_from: String,
    /// Consumer-group session timeout of the alert stream.
    #[arg(long, env = "EVSTREAM_ALERTS_SESSION_TIMEOUT_MS", default_value_t = 10000)]
    pub alerts_session_timeout_ms: u64,
    /// Delivery attempts per notification before it goes to the alerts dead-letter topic.
    #[arg(long, env = "EVSTREAM_ALERTS_DELIVERY_ATTEMPTS", default_value_t = 5)]
    pub alerts_delivery_attempts: u32,
    /// Partitions of the topics evstream creates.
    #[arg(long, env = "EVSTREAM_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,
    /// Replication factor of the topics evstream creates.
    #[arg(long, env = "EVSTREAM_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,
    /// Longest wait for the broker's acknowledgement before a request fails with 503.
    #[arg(long, env = "EVSTREAM_KAFKA_DELIVERY_TIMEOUT_MS", default_value_t = 5000)]
    pub kafka_delivery_timeout_ms: u64,
    /// Producer linger (batching delay).
    #[arg(long, env = "EVSTREAM_KAFKA_LINGER_MS", default_value_t = producer::sinks::kafka::DEFAULT_LINGER_MS)]
    pub kafka_linger_ms: u64,
    /// Most records in one producer batch.
    #[arg(long, env = "EVSTREAM_KAFKA_BATCH_SIZE", default_value_t = 10000)]
    pub kafka_batch_size: u32,
    /// Use Kafka's idempotent producer. Turn off only for a broker whose idempotence support is broken.
    #[arg(long, env = "EVSTREAM_KAFKA_IDEMPOTENCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub kafka_idempotence: bool,
    /// Bound on records waiting in the producer.
    #[arg(long, env = "EVSTREAM_KAFKA_QUEUE_MAX", default_value_t = 100000)]
    pub kafka_queue_max: u32,
    /// Largest body of POST /events and config documents.
    #[arg(long, env = "EVSTREAM_MAX_BODY_BYTES", default_value_t = 1048576)]
    pub max_body_bytes: usize,
    /// Largest body of POST /events/bulk.
    #[arg(long, env = "EVSTREAM_MAX_BULK_BYTES", default_value_t = 10485760)]
    pub max_bulk_bytes: usize,
    /// Most events in one bulk request.
    #[arg(long, env = "EVSTREAM_MAX_BULK_ITEMS", default_value_t = 1000)]
    pub max_bulk_items: usize,
    /// Requests handled at once; beyond it: 503.
    #[arg(long, env = "EVSTREAM_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,
    /// How long a client-supplied event id or Idempotency-Key is remembered (retries within it write nothing).
    #[arg(long, env = "EVSTREAM_IDEMPOTENCY_WINDOW_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_window_secs: u64,
    /// Default per-tenant quota: events per second (a tenant's stream config may override it; admin only).
    #[arg(long, env = "EVSTREAM_QUOTA_EVENTS_PER_SEC", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub quota_events_per_sec: u64,
    /// Default per-tenant quota: bytes per second.
    #[arg(long, env = "EVSTREAM_QUOTA_BYTES_PER_SEC", default_value_t = 10485760, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    pub quota_bytes_per_sec: u64,
    /// Bursts may reach this many seconds' worth of the quota.
    #[arg(long, env = "EVSTREAM_QUOTA_BURST_SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub quota_burst_secs: u64,
    /// The Cosmos DB change-feed config (JSON: account, auth, start, tuning, container mappings; see the README).
    /// The change feed runs in `serve` when set and is required by `change-feed`.
    #[arg(long, env = "EVSTREAM_CHANGE_FEED_CONFIG")]
    pub change_feed_config: Option<String>,
    /// Events waiting for Redis; beyond it they are dropped from the real-time window (Kafka keeps them).
    #[arg(long, env = "EVSTREAM_REDIS_QUEUE", default_value_t = 100000)]
    pub redis_queue: usize,
    /// Threads that run the roles' work (HTTP, validation, alert evaluation), 1 to 1024. Unset: one fewer than
    /// the cores the process may use, at least one, so that librdkafka's own threads compete with fewer workers.
    #[arg(long, env = "EVSTREAM_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

/// The worker threads of a role: `flag` when given, else one fewer than `cores`, at least one.
pub fn role_workers(flag: Option<u16>, cores: usize) -> usize {
    match flag {
        Some(n) => usize::from(n),
        None => cores.saturating_sub(1).max(1),
    }
}

impl Command {
    /// The worker threads this command's runtime gets: the roles' count (see [`role_workers`]) for the roles;
    /// `None`, tokio's default of one per core, for the measurement and maintenance programs, whose figures are
    /// compared with earlier runs.
    pub fn worker_threads(&self, cores: usize) -> Option<usize> {
        match self {
            Command::Serve(o) | Command::Api(o) | Command::Alerts(o) | Command::ChangeFeed(o) => {
                Some(role_workers(o.worker_threads, cores))
            }
            Command::Bench(_)
            | Command::BenchProducer(_)
            | Command::BenchSummary(_)
            | Command::NoisyNeighbour(_)
            | Command::AlertLatency(_)
            | Command::AuditVerify(_)
            | Command::PolicyBench(_) => None,
        }
    }
}

/// A multi-threaded runtime with `workers` worker threads, or tokio's default when `None`.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn command(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("evstream").chain(args.iter().copied())).map(|c| c.command)
    }

    /// Unset, a role runs one worker fewer than the cores, and never none.
    #[test]
    fn by_default_a_role_runs_one_worker_fewer_than_the_cores() {
        assert_eq!([1, 2, 4, 16].map(|cores| role_workers(None, cores)), [1, 1, 3, 15]);
    }

    /// A count given with the flag is taken as it is, whatever the cores.
    #[test]
    fn a_given_worker_count_is_taken_as_it_is() {
        assert_eq!([1, 2, 16].map(|cores| role_workers(Some(3), cores)), [3, 3, 3]);
        let api = command(&["api", "--worker-threads", "3"]).expect("a count");
        assert_eq!(api.worker_threads(16), Some(3));
    }

    /// Every role gets the roles' count; the measurement programs keep tokio's default.
    #[test]
    fn only_the_roles_get_the_roles_worker_count() {
        for role in ["serve", "api", "alerts", "change-feed"] {
            let c = command(&[role, "--worker-threads", "5"]).expect(role);
            assert_eq!(c.worker_threads(2), Some(5), "{role}");
        }
        for program in [&["bench"][..], &["noisy-neighbour"], &["alert-latency"], &["policy-bench"]] {
            let c = command(program).expect(program[0]);
            assert_eq!(c.worker_threads(2), None, "{}", program[0]);
        }
    }

    /// Zero, a negative count, a word, or more than 1024 is refused with an error that names the flag.
    #[test]
    fn a_bad_worker_count_is_refused_naming_the_flag() {
        for bad in ["0", "-1", "two", "1025"] {
            let e = command(&["api", &format!("--worker-threads={bad}")]).expect_err(bad).to_string();
            assert!(e.contains("--worker-threads"), "{bad}: {e}");
        }
    }

    /// The runtime runs exactly the workers it was given.
    #[test]
    fn the_runtime_runs_the_workers_asked_for() {
        for n in [1, 3] {
            assert_eq!(runtime(Some(n)).expect("runtime").metrics().num_workers(), n);
        }
    }
}
