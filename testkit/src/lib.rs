//! Test-only helpers for evstream's integration tests. The services are real: `scripts/test` starts a tansu
//! broker and a Redis server on free loopback ports and exports their addresses; tests that must stop and restart
//! a broker start their own with [`Broker::start`].
//!
//! - [`kafka_brokers`], [`redis_url`]: where the shared services are.
//! - [`unique`]: random names, so that tests never share topics, tenants or consumer groups.
//! - [`read_topic`]: an independent Kafka consumer that reads a topic from the beginning.
//! - [`Broker`]: a private tansu broker process that a test can stop and start again on the same port.

use anyhow::{bail, Context};
use rand::RngCore;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// An HTTP client for tests (the process's TLS provider installed first, as evstream's binary does).
pub fn http() -> reqwest::Client {
    http_builder().build().expect("http client")
}

pub fn http_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

pub fn kafka_brokers() -> String {
    std::env::var("EVSTREAM_TEST_KAFKA")
        .expect("EVSTREAM_TEST_KAFKA is not set: run the tests with scripts/test, which starts the broker")
}

pub fn redis_url() -> String {
    std::env::var("EVSTREAM_TEST_REDIS")
        .expect("EVSTREAM_TEST_REDIS is not set: run the tests with scripts/test, which starts Redis")
}

/// The loopback Cosmos DB emulator `scripts/test` started (testkit's `cosmos-emulator`).
pub fn cosmos_url() -> String {
    std::env::var("EVSTREAM_TEST_COSMOS")
        .expect("EVSTREAM_TEST_COSMOS is not set: run the tests with scripts/test, which starts the Cosmos DB emulator")
}

/// Creates a container with `partitions` physical partitions (and its database) on the emulator.
pub async fn cosmos_container(
    database: &str,
    container: &str,
    partition_key: &str,
    partitions: u32,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "database": database, "container": container, "partitionKey": partition_key, "partitions": partitions,
    });
    let r = http().post(format!("{}_emulator/containers", cosmos_url())).json(&body).send().await?;
    if !r.status().is_success() {
        bail!("emulator refused the container: {}", r.status());
    }
    Ok(())
}

/// Splits a physical partition of an emulator container; returns the children's ids once they serve requests.
pub async fn cosmos_split(database: &str, container: &str, partition: u32) -> anyhow::Result<Vec<u32>> {
    let body = serde_json::json!({ "database": database, "container": container, "partition": partition });
    let r = http().post(format!("{}_emulator/split", cosmos_url())).json(&body).send().await?;
    if !r.status().is_success() {
        bail!("emulator did not split: {}", r.status());
    }
    let v: serde_json::Value = r.json().await?;
    Ok(v["children"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_u64().map(|c| c as u32)).collect())
        .unwrap_or_default())
}

/// `prefix-` plus 8 random hex characters.
pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 4];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}-{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

/// One record as an independent consumer saw it.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("record payload is JSON")
    }
}

/// Reads `topic` from the beginning of every partition until `done(records)` holds or `timeout` passes, and
/// returns what it read. A fresh consumer with no group offsets: it sees exactly what the broker stored.
pub async fn read_topic(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> anyhow::Result<Vec<Record>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("testkit-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).context("metadata")?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        bail!("topic {topic} has no partitions");
    }
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left.min(Duration::from_millis(500)), consumer.recv()).await {
            Err(_) => continue,
            Ok(Err(e)) => bail!("consume failed: {e}"),
            Ok(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for x in h.iter() {
                        headers.insert(
                            x.key.to_string(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    headers,
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
            }
        }
    }
    Ok(out)
}

/// A private, durable tansu broker on a free port, which the test may stop and start again.
pub struct Broker {
    pub port: u16,
    child: Option<tokio::process::Child>,
    dir: std::path::PathBuf,
}

/// The durable tansu build (sqlite storage): what survives a restart is what a real broker would keep.
fn tansu_durable_bin() -> String {
    std::env::var("EVSTREAM_TANSU_DURABLE_BIN")
        .expect("EVSTREAM_TANSU_DURABLE_BIN is not set: run the tests with scripts/test")
}

impl Broker {
    /// A durable broker (sqlite storage in a private folder) on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(unique("evstream-broker"));
        std::fs::create_dir_all(&dir)?;
        let mut b = Self { port, child: None, dir };
        b.resume().await?;
        Ok(b)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker process (SIGKILL, as a crash would).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Stops the broker with SIGTERM and waits for it to exit (a planned restart).
    pub async fn shutdown(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
            if tokio::time::timeout(Duration::from_secs(10), c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }

    /// Starts the broker again on the same port, on the same data.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tansu.log"))?;
        // Tagged with the test run, so that scripts/test can stop strays left by a crashed test.
        let run = std::env::var("EVSTREAM_TEST_RUN").unwrap_or_else(|_| "evstream-test".into());
        let child = tokio::process::Command::new(tansu_durable_bin())
            .args(["broker", "--storage-engine", "sqlite://tansu.db", "--listener-url", &url])
            .args(["--advertised-listener-url", &url, "--cluster-id", &run])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("broker did not listen on {} within 30 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Redis server on a free port (no persistence), which the test may stop and start again.
pub struct RedisServer {
    pub port: u16,
    child: Option<tokio::process::Child>,
}

impl RedisServer {
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut r = Self { port, child: None };
        r.resume().await?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("redis-server (installed by scripts/test)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("redis did not listen on {} within 10 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// A real SMTP server on a free port (Debian's aiosmtpd with its Debugging handler, which prints every message
/// it accepts). `received()` is everything it printed so far.
pub struct SmtpServer {
    pub port: u16,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    _child: tokio::process::Child,
}

impl SmtpServer {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// An SMTP server that offers STARTTLS with `certs` and refuses mail before it (aiosmtpd's `--tlscert`).
    pub async fn start_starttls(certs: &TlsFiles) -> anyhow::Result<Self> {
        Self::start_with(&["--tlscert", &certs.cert, "--tlskey", &certs.key]).await
    }

    /// An SMTPS server: TLS from the first byte (aiosmtpd's `--smtpscert`).
    pub async fn start_smtps(certs: &TlsFiles) -> anyhow::Result<Self> {
        Self::start_with(&["--smtpscert", &certs.cert, "--smtpskey", &certs.key]).await
    }

    async fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let python = std::env::var("EVSTREAM_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = tokio::process::Command::new(python)
            .args([
                "-u",
                "-m",
                "aiosmtpd",
                "-n",
                "-c",
                "aiosmtpd.handlers.Debugging",
                "-l",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("aiosmtpd (installed by scripts/test)")?;
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stdout) = child.stdout.take() {
            let out = out.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if let Ok(mut o) = out.lock() {
                        o.push_str(&l);
                        o.push('\n');
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("aiosmtpd did not listen on {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { port, out, _child: child })
    }

    pub fn received(&self) -> String {
        self.out.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// A private CA and a server certificate it signed for 127.0.0.1 / localhost, made with `openssl` in a fresh
/// folder (removed on drop).
pub struct TlsFiles {
    dir: std::path::PathBuf,
    /// PEM of the CA, to trust.
    pub ca_pem: String,
    pub cert: String,
    pub key: String,
}

impl TlsFiles {
    pub fn generate() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("evstream-tls"));
        std::fs::create_dir_all(&dir)?;
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        let steps: [Vec<String>; 3] = [
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=evstream test CA", "-keyout"]
                .iter()
                .map(|s| s.to_string())
                .chain([p("ca.key"), "-out".into(), p("ca.pem")])
                .collect(),
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout"]
                .iter()
                .map(|s| s.to_string())
                .chain([p("server.key"), "-out".into(), p("server.csr")])
                .collect(),
            ["x509", "-req", "-days", "2", "-CAcreateserial", "-in"]
                .iter()
                .map(|s| s.to_string())
                .chain([p("server.csr"), "-CA".into(), p("ca.pem"), "-CAkey".into(), p("ca.key")])
                .chain(["-extfile".into(), p("ext"), "-out".into(), p("server.pem")])
                .collect(),
        ];
        for args in steps {
            let out = std::process::Command::new("openssl").args(&args).output().context("openssl")?;
            if !out.status.success() {
                bail!("openssl {}: {}", args[0], String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(Self {
            ca_pem: std::fs::read_to_string(dir.join("ca.pem"))?,
            cert: p("server.pem"),
            key: p("server.key"),
            dir,
        })
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
