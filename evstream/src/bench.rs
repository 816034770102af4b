//! `evstream bench`: the same events against the same broker in one run, three ways:
//! (a) a raw rdkafka producer (the ceiling), (b) `POST /events/bulk`, (c) `POST /events` one at a time from N
//! concurrent clients. Prints events/s, p50/p99 latency, the server's peak RSS, and the ratio (b)/(a).
//! The server is a child `evstream api` process so that its memory is measured alone, and the raw producer is a
//! child `evstream bench-producer` process, so that it shares no process with the HTTP client of (b) and (c).
//!
//! In a round with both (a) and (b), (a) runs twice, once before (b) and once after it, and its figures are the two
//! runs together (twice the events): this host's speed drifts, and a host that speeds up or slows down during the
//! round then weighs on both alike. Each run is whole, so (a) starts and drains as often per event as (b) does.
//!
//! With `--record FILE` a run appends its rounds to FILE instead of printing the summary, and `evstream
//! bench-summary FILE` prints the summary of every round recorded there. `scripts/bench` runs each round that way,
//! against a broker, Redis and server of its own: the local broker's cost per record grows once it holds about half a
//! million records (see BENCHMARKS.md), so later rounds on one broker would meet a slower broker than the first.

use anyhow::{bail, Context};
use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use producer::sinks::kafka::KafkaSinkConfig;
use producer::topics::{TopicSpec, Topics};
use rand::RngCore;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, env = "EVSTREAM_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    #[arg(long, env = "EVSTREAM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Events per scenario.
    #[arg(long, default_value_t = 20000)]
    pub events: usize,
    /// Concurrent clients for POST /events.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Events per bulk request.
    #[arg(long, default_value_t = 500)]
    pub bulk_size: usize,
    /// Concurrent bulk clients.
    #[arg(long, default_value_t = 4)]
    pub bulk_concurrency: usize,
    /// Rounds of (a), (b), (c), interleaved; the median round is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Which scenarios to run (letters a, b, c); the ratio needs a and b.
    #[arg(long, default_value = "abc")]
    pub scenarios: String,
    /// Port of the child server (0: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Pid of the Kafka broker: its CPU per event is printed beside the server's and this client's.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Pid of Redis: its CPU per event is printed too.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// A diagnostic: the bench tenant's Redis destination off, to show what the real-time window costs. The
    /// targets are for the platform as it runs, with the window on.
    #[arg(long)]
    pub without_window: bool,
    /// Appends each round's figures to this file (JSON lines) instead of printing the summary; `evstream
    /// bench-summary FILE` then summarises the rounds of several runs. `scripts/bench` runs each round this way,
    /// against a fresh broker, Redis and server.
    #[arg(long, hide = true)]
    pub record: Option<std::path::PathBuf>,
    /// The number the first round is printed and recorded with, so that recorded runs carry on one count.
    #[arg(long, hide = true, default_value_t = 1)]
    pub first_round: usize,
}

/// `evstream bench-summary FILE` (hidden): the summary of rounds recorded by `evstream bench --record FILE`.
#[derive(Args, Debug, Clone)]
pub struct SummaryArgs {
    pub file: std::path::PathBuf,
}

/// A line of a `--record` file: one scenario of one round, or the server's memory in one run.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Recorded {
    Scenario {
        round: usize,
        /// `a`, `b` or `c`.
        scenario: char,
        events: usize,
        elapsed_ns: u64,
        window_lag_ns: Option<u64>,
        latencies_ns: Vec<u64>,
    },
    Rss {
        peak_mb: Option<f64>,
        idle_mb: Option<f64>,
    },
}

const NAME_A: &str = "(a) raw rdkafka producer";
const NAME_B: &str = "(b) POST /events/bulk (per request)";
const NAME_C: &str = "(c) POST /events (one per request)";

/// Events that (a) and (b) each send before round 1 (fewer when `--events` is smaller; (c) sends at most 2,000),
/// not counted.
const WARM_UP_EVENTS: usize = 20_000;

pub(crate) struct Figures {
    name: &'static str,
    events: usize,
    /// From the first request (record) to the last acknowledgement.
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU seconds used while it ran, per process of the [`CpuMeter`], then the machine's steal. For the HTTP
    /// scenarios this runs on until the Redis window holds every event, so the window's writes are in it.
    cpu: Vec<Option<f64>>,
    /// For the HTTP scenarios: how long after the last response the Redis window held every event (in the rate
    /// and in `cpu`, not in `elapsed`).
    window_lag: Option<Duration>,
}

impl Figures {
    /// Two runs of one scenario as one: their events, times, latencies and CPU added up.
    fn merge(mut self, other: Figures) -> Figures {
        self.events += other.events;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        for (c, o) in self.cpu.iter_mut().zip(other.cpu) {
            *c = c.zip(o).map(|(c, o)| c + o);
        }
        self.window_lag = match (self.window_lag, other.window_lag) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self
    }

    /// This round's figures as a line of a `--record` file.
    fn recorded(&self, round: usize, scenario: char) -> Recorded {
        Recorded::Scenario {
            round,
            scenario,
            events: self.events,
            elapsed_ns: self.elapsed.as_nanos() as u64,
            window_lag_ns: self.window_lag.map(|l| l.as_nanos() as u64),
            latencies_ns: self.latencies.iter().map(|l| l.as_nanos() as u64).collect(),
        }
    }

    /// Events per second, until the last acknowledgement and, for the HTTP scenarios, until the window held every
    /// event: the server's work is done then, as (a)'s is at its last acknowledgement.
    fn rate(&self) -> f64 {
        self.events as f64 / self.measured().as_secs_f64()
    }

    /// The time the rate and the CPU figures are taken over: until the last acknowledgement, then until the window
    /// caught up.
    fn measured(&self) -> Duration {
        self.elapsed + self.window_lag.unwrap_or_default()
    }
    fn pct(&self, q: f64) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        if l.is_empty() {
            return 0.0;
        }
        let i = ((q * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1000.0
    }
    fn print(&self) {
        println!(
            "{:<34} {:>9} events {:>10.0} events/s   p50 {:>8.2} ms   p99 {:>8.2} ms",
            self.name,
            self.events,
            self.rate(),
            self.pct(0.5),
            self.pct(0.99)
        );
        if let Some(lag) = self.window_lag {
            println!(
                "    the Redis window held every event {:.1} ms after the last response ({:.0} events/s acknowledged)",
                lag.as_secs_f64() * 1e3,
                self.events as f64 / self.elapsed.as_secs_f64()
            );
        }
    }
}

/// The server's Redis window, watched so that an HTTP scenario ends only when every accepted event is in it. The
/// server writes the window after the Kafka acknowledgement, so the last response can come before the last
/// write; stopping the clock there would leave that work out of the figures. The lag is printed beside, with the
/// rate of acknowledged events. It reads the server's own count of events written to Redis
/// (`evstream_redis_stream_writes_total{result="ok"}` on `/metrics`).
struct Window {
    http: reqwest::Client,
    metrics: String,
}

impl Window {
    fn new(http: &reqwest::Client, base: &str) -> Self {
        Self { http: http.clone(), metrics: format!("{base}/metrics") }
    }

    /// Events the server has written to Redis so far, and those it had to leave out.
    async fn written(&self) -> anyhow::Result<(u64, u64)> {
        let text = self.http.get(&self.metrics).send().await?.error_for_status()?.text().await?;
        let count = |result: &str| {
            let series = format!("evstream_redis_stream_writes_total{{result=\"{result}\"}} ");
            let line = text.lines().find_map(|l| l.strip_prefix(series.as_str()));
            line.and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0) as u64
        };
        Ok((count("ok"), count("dropped")))
    }

    /// Waits until `n` events more than `from` were written; how long that took. Polled every 5 ms: each poll
    /// renders the server's metrics, which costs the server CPU that counts in the figures (about 0.1 ms a poll).
    async fn caught_up(&self, from: (u64, u64), n: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        loop {
            let (ok, dropped) = self.written().await?;
            anyhow::ensure!(dropped == from.1, "the server left {} events out of the Redis window", dropped - from.1);
            if ok >= from.0 + n as u64 {
                return Ok(t.elapsed());
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "the Redis window fell behind by more than a minute"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The status, after reading the body so that the connection can be reused.
async fn status_after_body(r: reqwest::Result<reqwest::Response>) -> u16 {
    match r {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    }
}

/// CPU time of the processes a scenario runs on: the server, this client (of (b) and (c)), the raw producer, and the
/// broker and Redis when their pids are given. Per event, the figures add up to what one event costs the machine.
struct CpuMeter {
    procs: Vec<(&'static str, u32)>,
}

impl CpuMeter {
    /// The processes' CPU seconds, then the machine's steal time (CPU the hypervisor gave to others).
    fn snapshot(&self) -> Vec<Option<f64>> {
        self.procs.iter().map(|(_, pid)| cpu_secs(*pid)).chain(std::iter::once(steal_secs())).collect()
    }

    /// CPU seconds used (and stolen) since `before`, a [`snapshot`](Self::snapshot); taken as soon as a scenario
    /// ends.
    fn used(&self, before: &[Option<f64>]) -> Vec<Option<f64>> {
        before.iter().zip(self.snapshot()).map(|(b, a)| b.zip(a).map(|(b, a)| a - b)).collect()
    }

    /// Prints the CPU a scenario used.
    fn print(&self, f: &Figures) {
        let wall = f.measured().as_secs_f64();
        let mut parts = Vec::new();
        let mut total = 0.0;
        for ((name, _), used) in self.procs.iter().zip(&f.cpu) {
            if let Some(used) = used {
                let us = 1e6 * used / f.events as f64;
                total += us;
                parts.push(format!("{name} {us:.1} ({:.0}%)", 100.0 * used / wall));
            }
        }
        let steal = match f.cpu.get(self.procs.len()).copied().flatten() {
            Some(stolen) => format!("; stolen by the hypervisor: {:.0}% of one core", 100.0 * stolen / wall),
            None => String::new(),
        };
        println!("    CPU µs per event (share of one core): {}; total {total:.1}{steal}", parts.join(", "));
    }
}

/// Steal time of the whole machine (all CPUs), in seconds: on a shared host, time our cores waited for others.
fn steal_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = s.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    Some(cpu.split_whitespace().nth(8)?.parse::<f64>().ok()? / 100.0)
}

fn median(mut v: Vec<Figures>) -> Option<Figures> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|x, y| x.rate().total_cmp(&y.rate()));
    let mid = v.len() / 2;
    Some(v.swap_remove(mid))
}

pub(crate) fn tag() -> String {
    let mut b = [0u8; 4];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn event(tenant: &str, i: usize) -> Value {
    json!({"tenantId": tenant, "eventType": "RISK_CREATED", "source": "FRONTEND_APP", "action": "CREATE",
           "entityId": format!("risk-{i}"), "entityType": "risk",
           "data": {"title": "Vendor breach exposure", "riskScore": (i % 100) as f64, "severity": "high", "owner": "secops"},
           "metadata": {"region": "eu-west-1"}})
}

/// A child `evstream api` process on its own topics, ready to serve.
pub(crate) struct ChildServer {
    /// Held so that the server is killed when this is dropped.
    _child: tokio::process::Child,
    pub pid: u32,
    pub base: String,
    pub admin: String,
}

impl ChildServer {
    pub async fn start(brokers: &str, redis: &str, port: u16, tag: &str, max_bulk: usize) -> anyhow::Result<Self> {
        Self::start_role("api", brokers, redis, port, tag, max_bulk).await
    }

    /// Starts `evstream <role>` (`api` or `serve`).
    pub async fn start_role(
        role: &str,
        brokers: &str,
        redis: &str,
        port: u16,
        tag: &str,
        max_bulk: usize,
    ) -> anyhow::Result<Self> {
        let port = if port == 0 { free_port()? } else { port };
        let admin = format!("bench-admin-{tag}");
        let log = std::fs::File::create(std::env::temp_dir().join(format!("evstream-bench-{tag}.log")))?;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .arg(role)
            .env("EVSTREAM_ALERTS_START_FROM", "earliest")
            .env("EVSTREAM_ALERTS_GROUP", format!("evstream-alerts-{tag}"))
            .env("EVSTREAM_ALERTS_TOPIC", format!("evstream.bench.alerts-{tag}"))
            .env("EVSTREAM_AUDIT_TOPIC", format!("evstream.bench.audit-{tag}"))
            .env("EVSTREAM_KAFKA_BROKERS", brokers)
            .env("EVSTREAM_REDIS_URL", redis)
            .env("EVSTREAM_LISTEN", format!("127.0.0.1:{port}"))
            .env("EVSTREAM_ADMIN_KEY", &admin)
            .env("EVSTREAM_EVENTS_TOPIC", format!("evstream.bench.events-{tag}"))
            .env("EVSTREAM_CONFIG_TOPIC", format!("evstream.bench.config-{tag}"))
            .env("EVSTREAM_DEADLETTER_TOPIC", format!("evstream.bench.deadletter-{tag}"))
            .env("EVSTREAM_MAX_BULK_ITEMS", max_bulk.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting the server")?;
        let pid = child.id().context("server pid")?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = http.get(format!("{base}/ready")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("server not ready within 90 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self { _child: child, pid, base, admin })
    }

    /// Registers a tenant with the given quota (events/s; bytes/s generous).
    pub async fn tenant(&self, http: &reqwest::Client, tenant: &str, events_per_second: u64) -> anyhow::Result<()> {
        let r = http
            .post(format!("{}/tenants", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({"id": tenant}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "creating the tenant answered {}", r.status());
        let quota = json!({"quota": {"eventsPerSecond": events_per_second, "bytesPerSecond": 10_000_000_000u64}});
        let r = http
            .put(format!("{}/stream-config/{tenant}", self.base))
            .bearer_auth(&self.admin)
            .json(&quota)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "setting the quota answered {}", r.status());
        Ok(())
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU time (user + system) a process has used, in seconds.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

pub(crate) fn peak_rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `evstream bench-producer` (hidden): scenario (a)'s raw producer, run by `evstream bench` as a child process of
/// its own, as the server is. In the bench's own process (a) slowed down after the HTTP scenarios had run there,
/// round after round, while a fresh process stayed at its first round's speed; a producer that shares no process
/// with an HTTP client is the ceiling that (b) is held to.
///
/// It reads commands on standard input, one a line: `prepare START END` builds those events' records (the server's
/// records: the enriched envelope and its CloudEvents headers) and answers `ready`; `go` sends them with `inflight`
/// records in flight and answers a [`RunReport`] as one JSON line. It stops at the end of its input.
#[derive(Args, Debug, Clone)]
pub struct ProducerArgs {
    #[arg(long)]
    pub kafka_brokers: String,
    #[arg(long)]
    pub topic: String,
    #[arg(long)]
    pub tenant: String,
    /// Records in flight at once.
    #[arg(long)]
    pub inflight: usize,
}

type Records = Vec<(Vec<u8>, rdkafka::message::OwnedHeaders)>;

/// What `bench-producer` answers to `go`: the records it sent, the time from the first send to the last
/// acknowledgement, and each record's latency.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunReport {
    events: usize,
    elapsed_us: u64,
    latencies_us: Vec<u64>,
}

/// The records of events `events` (numbered as the bench numbers them), as the server would write them.
fn records(tenant: &str, events: std::ops::Range<usize>) -> anyhow::Result<Records> {
    let catalog = schemas::Catalog::new();
    let now = time::OffsetDateTime::now_utc();
    events
        .map(|i| {
            let draft = schemas::event::parse_event(&event(tenant, i), &catalog)
                .map_err(|e| anyhow::anyhow!("bench event invalid: {e:?}"))?;
            let e = producer::enrich::enrich(draft, now, None);
            Ok((serde_json::to_vec(&e)?, producer::route::headers(&e)))
        })
        .collect()
}

/// Sends `records` with `inflight` of them in flight; the time from the first send to the last acknowledgement,
/// and each record's latency.
async fn produce(
    p: &FutureProducer,
    records: &Records,
    inflight: usize,
    topic: &str,
    tenant: &str,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut latencies = Vec::with_capacity(records.len());
    for (pl, headers) in records {
        pending.push(async move {
            let t = Instant::now();
            let record = FutureRecord::to(topic).key(tenant).payload(pl).headers(headers.clone());
            let r = p.send(record, Timeout::After(Duration::from_secs(5))).await;
            (r.is_ok(), t.elapsed())
        });
        if pending.len() >= inflight {
            if let Some((ok, l)) = pending.next().await {
                anyhow::ensure!(ok, "raw produce failed");
                latencies.push(l);
            }
        }
    }
    while let Some((ok, l)) = pending.next().await {
        anyhow::ensure!(ok, "raw produce failed");
        latencies.push(l);
    }
    Ok((started.elapsed(), latencies))
}

/// The child's side of `evstream bench-producer` (see [`ProducerArgs`]).
pub async fn producer_child(a: ProducerArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    // Configured as the server's sink (idempotent, acks=all, the same linger: both take `KafkaSinkConfig`'s
    // defaults).
    let p: FutureProducer =
        KafkaSinkConfig { brokers: a.kafka_brokers.clone(), ..KafkaSinkConfig::default() }.client_config().create()?;
    let mut prepared: Records = Vec::new();
    // Standard output carries the answers alone (this process logs to standard error). The parent waits for each
    // answer before it writes again, so blocking on standard input stalls nothing.
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["prepare", from, to] => {
                // The last run's records are freed here, before `ready`, outside the measurement.
                prepared = records(&a.tenant, from.parse()?..to.parse()?)?;
                "ready".to_string()
            }
            ["go"] => {
                let (elapsed, latencies) = produce(&p, &prepared, a.inflight, &a.topic, &a.tenant).await?;
                serde_json::to_string(&RunReport {
                    events: prepared.len(),
                    elapsed_us: elapsed.as_micros() as u64,
                    latencies_us: latencies.iter().map(|l| l.as_micros() as u64).collect(),
                })?
            }
            _ => bail!("bench-producer: unknown command {line:?}"),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

/// Scenario (a): the parent's handle on its `evstream bench-producer` child.
struct RawProducer {
    /// Held so that the child is killed when this is dropped.
    _child: tokio::process::Child,
    pid: u32,
    stdin: tokio::process::ChildStdin,
    answers: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl RawProducer {
    fn start(a: &BenchArgs, topic: &str, tenant: &str) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["bench-producer", "--kafka-brokers", &a.kafka_brokers, "--topic", topic, "--tenant", tenant])
            .args(["--inflight", &(a.bulk_size * a.bulk_concurrency).to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the raw producer")?;
        let pid = child.id().context("raw producer pid")?;
        let stdin = child.stdin.take().context("raw producer stdin")?;
        let stdout = child.stdout.take().context("raw producer stdout")?;
        let answers = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        Ok(Self { _child: child, pid, stdin, answers })
    }

    async fn ask(&mut self, command: &str) -> anyhow::Result<String> {
        use tokio::io::AsyncWriteExt;
        let stopped = "the raw producer stopped";
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.context(stopped)?;
        self.stdin.flush().await.context(stopped)?;
        self.answers.next_line().await?.context(stopped)
    }

    /// (a): events `events` straight to the broker. The records are built before the clock and the CPU meter
    /// start, as the HTTP scenarios' bodies are.
    async fn run(&mut self, events: std::ops::Range<usize>, meter: &CpuMeter) -> anyhow::Result<Figures> {
        let ready = self.ask(&format!("prepare {} {}", events.start, events.end)).await?;
        anyhow::ensure!(ready == "ready", "the raw producer answered {ready:?}");
        let cpu = meter.snapshot();
        let answer = self.ask("go").await?;
        // Taken before the answer is parsed: parsing it is not (a)'s work.
        let cpu = meter.used(&cpu);
        let r: RunReport = serde_json::from_str(&answer).context("the raw producer's answer")?;
        anyhow::ensure!(r.events == events.len(), "the raw producer sent {} of {} events", r.events, events.len());
        Ok(Figures {
            name: NAME_A,
            events: r.events,
            elapsed: Duration::from_micros(r.elapsed_us),
            latencies: r.latencies_us.into_iter().map(Duration::from_micros).collect(),
            cpu,
            window_lag: None,
        })
    }
}

/// What the HTTP scenarios send with: the client, the server, the key and tenant, and the CPU meter.
struct Http<'a> {
    meter: &'a CpuMeter,
    /// `None` when the bench tenant has no window (`--without-window`).
    window: Option<&'a Window>,
    http: &'a reqwest::Client,
    base: &'a str,
    key: &'a str,
    tenant: &'a str,
}

async fn bulk(a: &BenchArgs, h: &Http<'_>) -> anyhow::Result<Figures> {
    let bodies: Vec<Vec<u8>> = (0..a.events)
        .collect::<Vec<_>>()
        .chunks(a.bulk_size)
        .map(|c| {
            serde_json::to_vec(&json!({"events": c.iter().map(|i| event(h.tenant, *i)).collect::<Vec<_>>()}))
                .unwrap_or_default()
        })
        .collect();
    http_scenario(a.events, h, NAME_B, "/events/bulk", bodies, a.bulk_concurrency).await
}

async fn single(a: &BenchArgs, h: &Http<'_>) -> anyhow::Result<Figures> {
    let bodies: Vec<Vec<u8>> =
        (0..a.events).map(|i| serde_json::to_vec(&event(h.tenant, i)).unwrap_or_default()).collect();
    http_scenario(a.events, h, NAME_C, "/events", bodies, a.concurrency).await
}

/// Posts `bodies` (`events` events in all) to `path` with `concurrency` requests in flight, each answered 202; the
/// scenario ends when the Redis window holds every event.
async fn http_scenario(
    events: usize,
    h: &Http<'_>,
    name: &'static str,
    path: &str,
    bodies: Vec<Vec<u8>>,
    concurrency: usize,
) -> anyhow::Result<Figures> {
    let Http { meter, window, http, base, key, .. } = *h;
    let before = match window {
        Some(w) => w.written().await?,
        None => (0, 0),
    };
    let url = format!("{base}{path}");
    let (cpu, started) = (meter.snapshot(), Instant::now());
    let mut latencies = Vec::with_capacity(bodies.len());
    let mut pending = futures::stream::iter(bodies.into_iter().map(|b| {
        let url = &url;
        async move {
            let t = Instant::now();
            let r = http.post(url).bearer_auth(key).header("content-type", "application/json").body(b).send().await;
            (status_after_body(r).await, t.elapsed())
        }
    }))
    .buffer_unordered(concurrency);
    while let Some((status, l)) = pending.next().await {
        anyhow::ensure!(status == 202, "{path} answered {status}");
        latencies.push(l);
    }
    let elapsed = started.elapsed();
    let window_lag = match window {
        Some(w) => Some(w.caught_up(before, events).await?),
        None => None,
    };
    Ok(Figures { name, events, elapsed, latencies, cpu: meter.used(&cpu), window_lag })
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    for (flag, n) in
        [("--bulk-size", a.bulk_size), ("--bulk-concurrency", a.bulk_concurrency), ("--concurrency", a.concurrency)]
    {
        anyhow::ensure!(n >= 1, "{flag} must be at least 1");
    }
    let t = tag();
    let tenant = format!("bench-{t}");
    let raw_topic = format!("evstream.bench.raw-{t}");
    Topics::new(&a.kafka_brokers)?
        .ensure(&[TopicSpec { name: raw_topic.clone(), partitions: 6, replication: 1, compacted: false }])
        .await?;

    let server = ChildServer::start(&a.kafka_brokers, &a.redis_url, a.port, &t, a.bulk_size.max(1000)).await?;
    let (pid, base, admin) = (server.pid, server.base.clone(), server.admin.clone());
    let http = reqwest::Client::builder().pool_max_idle_per_host(a.concurrency.max(a.bulk_concurrency)).build()?;
    // The default per-tenant quota would cap the measurement; lift it for the bench tenant (admin only).
    server.tenant(&http, &tenant, 10_000_000).await?;
    if a.without_window {
        // The whole config again (a PUT replaces it): the lifted quota, and Kafka alone as destination.
        let cfg = json!({"quota": {"eventsPerSecond": 10_000_000, "bytesPerSecond": 10_000_000_000u64},
                         "destinations": [{"type": "kafka"}, {"type": "redis", "enabled": false}]});
        let r = http.put(format!("{base}/stream-config/{tenant}")).bearer_auth(&admin).json(&cfg).send().await?;
        anyhow::ensure!(r.status() == 200, "turning the window off answered {}", r.status());
        println!("diagnostic run: the bench tenant has no Redis window (--without-window)");
    }
    let rss_idle = peak_rss_mb(pid);
    let mut raw = RawProducer::start(&a, &raw_topic, &tenant)?;
    let mut procs = vec![("server", pid), ("client", std::process::id()), ("producer", raw.pid)];
    procs.extend(a.broker_pid.map(|p| ("broker", p)));
    procs.extend(a.redis_pid.map(|p| ("redis", p)));
    let meter = CpuMeter { procs };

    if a.first_round == 1 {
        println!(
            "evstream bench: {} events per scenario, {} single-event clients, bulk {} x {} clients",
            a.events, a.concurrency, a.bulk_size, a.bulk_concurrency
        );
    }
    // Warm every path before round 1, so that neither connection set-up nor a process's first growth (the
    // server's heap went from about 50 to 90 MB in its first bulk requests) is measured, and round 1 meets processes
    // as warm as later rounds do. One raw producer serves every round.
    let want = |c: char| a.scenarios.contains(c);
    let warm = a.events.min(WARM_UP_EVENTS);
    if want('a') {
        raw.run(0..warm, &meter).await?;
    }
    let window = if a.without_window { None } else { Some(Window::new(&http, &base)) };
    let h = Http { meter: &meter, window: window.as_ref(), http: &http, base: &base, key: &admin, tenant: &tenant };
    if want('b') {
        bulk(&BenchArgs { events: warm, ..a.clone() }, &h).await?;
    }
    single(&BenchArgs { events: warm.min(2_000), ..a.clone() }, &h).await?;
    let mut rounds = Rounds::default();
    let first = a.first_round;
    for round in first..first + a.rounds.max(1) {
        println!("round {round}");
        // (a) around (b): once before it and once after it (see the module doc).
        let before_b = if want('a') { Some(raw.run(0..a.events, &meter).await?) } else { None };
        let b = if want('b') { Some(bulk(&a, &h).await?) } else { None };
        if let Some(mut r) = before_b {
            if b.is_some() {
                r = r.merge(raw.run(0..a.events, &meter).await?);
            }
            r.print();
            meter.print(&r);
            rounds.a.push((round, r));
        }
        if let Some(r) = b {
            r.print();
            meter.print(&r);
            rounds.b.push((round, r));
        }
        if want('c') {
            let r = single(&a, &h).await?;
            r.print();
            meter.print(&r);
            rounds.c.push((round, r));
        }
        if let (Some((_, ra)), Some((_, rb))) = (rounds.a.last(), rounds.b.last()) {
            println!("  ratio (b)/(a) this round: {:.2}", rb.rate() / ra.rate());
        }
    }
    (rounds.rss, rounds.rss_idle) = (peak_rss_mb(pid), rss_idle);
    match &a.record {
        Some(path) => rounds.record(path)?,
        None => rounds.summarize(),
    }
    drop(server);
    Ok(())
}

/// `evstream bench-summary FILE`: the summary of the rounds in a `--record` file, as one run of several rounds
/// prints it. The peak RSS is the highest of the runs'; "after start-up" is the first run's.
pub fn summary(a: SummaryArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    Rounds::read(&text).with_context(|| format!("reading {}", a.file.display()))?.summarize();
    Ok(())
}

/// The rounds of one run, or of a `--record` file: each scenario's figures with its round's number, and the
/// server's memory.
#[derive(Default)]
struct Rounds {
    a: Vec<(usize, Figures)>,
    b: Vec<(usize, Figures)>,
    c: Vec<(usize, Figures)>,
    rss: Option<f64>,
    rss_idle: Option<f64>,
}

impl Rounds {
    /// (b)/(a) of each round that ran both.
    fn ratios(&self) -> Vec<f64> {
        let b = |round: usize| self.b.iter().find(|(r, _)| *r == round).map(|(_, f)| f);
        self.a.iter().filter_map(|(round, fa)| b(*round).map(|fb| fb.rate() / fa.rate())).collect()
    }

    /// The closing lines: each scenario's median round, the server's peak RSS, and both ratios.
    fn summarize(self) {
        let mut ratios = self.ratios();
        println!("median of {} rounds (by events/s):", self.a.len().max(self.b.len()).max(self.c.len()));
        let median_of = |v: Vec<(usize, Figures)>| median(v.into_iter().map(|(_, f)| f).collect());
        let (ra, rb, rc) = (median_of(self.a), median_of(self.b), median_of(self.c));
        for f in [&ra, &rb, &rc].into_iter().flatten() {
            f.print();
        }
        println!(
            "server peak RSS: {:.1} MB (after start-up: {:.1} MB)",
            self.rss.unwrap_or(f64::NAN),
            self.rss_idle.unwrap_or(f64::NAN)
        );
        if let (Some(ra), Some(rb)) = (&ra, &rb) {
            // Both statistics: the ratio of the medians, and the median of each round's ratio, whose (a) and (b)
            // ran seconds apart and so met the same host (this machine is shared, and its speed drifts).
            ratios.sort_by(f64::total_cmp);
            let paired = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
            println!(
                "ratio (b)/(a): {:.2} (of the medians); {paired:.2} (median of the rounds' ratios)",
                rb.rate() / ra.rate()
            );
        }
        println!("targets: (b)/(a) >= 0.8; (c) >= 5000 events/s with p99 < 10 ms; RSS < 150 MB");
    }

    /// Appends the rounds to a `--record` file (JSON lines), then the server's memory.
    fn record(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use std::io::Write;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).context("the record file")?;
        let mut out = std::io::BufWriter::new(file);
        for (scenario, rounds) in [('a', &self.a), ('b', &self.b), ('c', &self.c)] {
            for (round, f) in rounds {
                serde_json::to_writer(&mut out, &f.recorded(*round, scenario))?;
                writeln!(out)?;
            }
        }
        serde_json::to_writer(&mut out, &Recorded::Rss { peak_mb: self.rss, idle_mb: self.rss_idle })?;
        writeln!(out)?;
        Ok(out.flush()?)
    }

    /// The rounds of a `--record` file; a round recorded twice, or a file without any, is refused.
    fn read(text: &str) -> anyhow::Result<Rounds> {
        let mut r = Rounds::default();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str(line).with_context(|| format!("line {}", n + 1))? {
                Recorded::Scenario { round, scenario, events, elapsed_ns, window_lag_ns, latencies_ns } => {
                    let (name, list) = match scenario {
                        'a' => (NAME_A, &mut r.a),
                        'b' => (NAME_B, &mut r.b),
                        'c' => (NAME_C, &mut r.c),
                        other => bail!("line {}: unknown scenario {other:?}", n + 1),
                    };
                    // A round is paired with the other scenarios of the same number: a number twice would mix runs.
                    anyhow::ensure!(
                        list.iter().all(|(r, _)| *r != round),
                        "line {}: round {round} of ({scenario}) is recorded twice",
                        n + 1
                    );
                    let figures = Figures {
                        name,
                        events,
                        elapsed: Duration::from_nanos(elapsed_ns),
                        latencies: latencies_ns.into_iter().map(Duration::from_nanos).collect(),
                        cpu: Vec::new(),
                        window_lag: window_lag_ns.map(Duration::from_nanos),
                    };
                    list.push((round, figures));
                }
                Recorded::Rss { peak_mb, idle_mb } => {
                    r.rss = match (r.rss, peak_mb) {
                        (Some(x), Some(y)) => Some(x.max(y)),
                        (x, y) => x.or(y),
                    };
                    r.rss_idle = r.rss_idle.or(idle_mb);
                }
            }
        }
        anyhow::ensure!(!(r.a.is_empty() && r.b.is_empty() && r.c.is_empty()), "no round recorded");
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(name: &'static str, events: usize, elapsed_ms: u64, lag_ms: Option<u64>) -> Figures {
        Figures {
            name,
            events,
            elapsed: Duration::from_millis(elapsed_ms),
            latencies: vec![Duration::from_micros(1500), Duration::from_micros(2500)],
            cpu: vec![Some(1.0)],
            window_lag: lag_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn recorded_rounds_read_back_with_their_rates_and_ratios() {
        let mut text = String::new();
        let mut line = |r: &Recorded| {
            text.push_str(&serde_json::to_string(r).unwrap());
            text.push('\n');
        };
        // Round 1: (a) 200 events in 1 s, (b) 100 events in 0.5 s + 0.5 s of window lag: 0.5 of (a).
        line(&figures(NAME_A, 200, 1000, None).recorded(1, 'a'));
        line(&figures(NAME_B, 100, 500, Some(500)).recorded(1, 'b'));
        line(&Recorded::Rss { peak_mb: Some(80.0), idle_mb: Some(30.0) });
        // Round 2 from another run: (a) alone, then (b) of round 3 only, and a higher peak.
        line(&figures(NAME_A, 100, 1000, None).recorded(2, 'a'));
        line(&figures(NAME_B, 100, 250, None).recorded(3, 'b'));
        line(&figures(NAME_C, 10, 1000, Some(1)).recorded(3, 'c'));
        line(&Recorded::Rss { peak_mb: Some(95.5), idle_mb: Some(33.0) });

        let r = Rounds::read(&text).unwrap();
        assert_eq!(r.a.iter().map(|(n, f)| (*n, f.rate())).collect::<Vec<_>>(), vec![(1, 200.0), (2, 100.0)]);
        assert_eq!(r.b.iter().map(|(n, f)| (*n, f.rate())).collect::<Vec<_>>(), vec![(1, 100.0), (3, 400.0)]);
        assert_eq!(r.c[0].1.window_lag, Some(Duration::from_millis(1)));
        assert_eq!(r.b[0].1.latencies, vec![Duration::from_micros(1500), Duration::from_micros(2500)]);
        // Only round 1 ran both (a) and (b).
        assert_eq!(r.ratios(), vec![0.5]);
        assert_eq!((r.rss, r.rss_idle), (Some(95.5), Some(30.0)));
    }

    #[test]
    fn a_record_file_without_rounds_or_with_a_bad_line_is_refused() {
        assert!(Rounds::read("").is_err());
        assert!(Rounds::read("{\"kind\":\"rss\",\"peak_mb\":1.0,\"idle_mb\":null}\n").is_err());
        let bad = serde_json::to_string(&figures(NAME_A, 1, 1, None).recorded(1, 'x')).unwrap();
        let err = Rounds::read(&bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("unknown scenario"), "{err}");
        assert!(Rounds::read("not json").is_err());
        let round_2 = serde_json::to_string(&figures(NAME_B, 1, 1, None).recorded(2, 'b')).unwrap();
        let twice = format!("{round_2}\n{round_2}\n");
        let err = Rounds::read(&twice).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("recorded twice"), "{err}");
    }
}
