//! The change-feed reader against the loopback Cosmos DB emulator (over HTTP, through the real SDK client), the
//! real broker and the real Redis: documents written to a container become events on the events topic.

use azure_data_cosmos::clients::ContainerClient;
use change_feed::config::{Auth, ChangeFeedFile, FeedMode, StartFrom};
use change_feed::ContainerMapping;
use producer::config_log::ConfigRecord;
use producer::sinks::kafka::KafkaSinkConfig;
use producer::Pipeline;
use schemas::TenantId;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use stream_api::bootstrap::{self, Settings};
use stream_api::ApiConfig;
use testkit::Record;
use tokio::sync::watch;

const KEY_ENV: &str = "EVSTREAM_TEST_COSMOS_KEY";

struct Harness {
    pipeline: Pipeline,
    brokers: String,
    events_topic: String,
    deadletter_topic: String,
    redis_url: String,
    database: String,
    tenants: Vec<TenantId>,
    prefix: String,
}

struct Reader {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Reader {
    /// A clean stop: leases released, checkpoints kept.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }

    /// A crash: nothing released; the leases expire.
    fn kill(self) {
        self.task.abort();
    }
}

impl Harness {
    async fn start(tenants: usize) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("EVSTREAM_TEST_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()),
            ))
            .try_init();
        // The emulator checks no signature; the client still needs a key to sign with.
        std::env::set_var(
            KEY_ENV,
            "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==",
        );
        let settings = Settings {
            kafka: KafkaSinkConfig {
                brokers: testkit::kafka_brokers(),
                delivery_timeout_ms: 5_000,
                linger_ms: 1,
                ..KafkaSinkConfig::default()
            },
            redis_url: testkit::redis_url(),
            redis_queue: 10_000,
            admin_key: Some("change-feed-test-admin".into()),
            events_topic: testkit::unique("evstream.events"),
            config_topic: testkit::unique("evstream.config"),
            deadletter_topic: testkit::unique("evstream.deadletter"),
            alerts_topic: testkit::unique("evstream.alerts"),
            alerts_deadletter_topic: testkit::unique("evstream.alerts.deadletter"),
            audit_topic: testkit::unique("evstream.audit"),
            idempotency_window: Duration::from_secs(600),
            default_quota: schemas::config::Quota {
                events_per_second: 1_000_000,
                bytes_per_second: 1 << 40,
                burst_seconds: 2,
            },
            api: ApiConfig { partitions: 3, ..ApiConfig::default() },
        };
        let started = bootstrap::start(&settings, None).await.expect("evstream starts");
        let pipeline = started.state.pipeline.clone();
        let mut ids = Vec::new();
        for _ in 0..tenants {
            let tenant = TenantId::new(testkit::unique("cf")).expect("tenant id");
            let rec = ConfigRecord::Tenant {
                tenant: tenant.clone(),
                name: "change feed".into(),
                created_at: producer::now_rfc3339(),
            };
            pipeline.configs().propose(&rec).await.expect("tenant registered");
            ids.push(tenant);
        }
        Self {
            pipeline,
            brokers: settings.kafka.brokers.clone(),
            events_topic: settings.events_topic,
            deadletter_topic: settings.deadletter_topic,
            redis_url: settings.redis_url,
            database: testkit::unique("db"),
            tenants: ids,
            prefix: testkit::unique("evstream:changefeed"),
        }
    }

    fn tenant(&self, i: usize) -> &str {
        self.tenants[i].as_str()
    }

    async fn container(&self, name: &str, partitions: u32) -> ContainerClient {
        testkit::cosmos_container(&self.database, name, "/tenantId", partitions).await.expect("container created");
        let client = change_feed::client::connect(&self.file(name, StartFrom::Beginning)).await.expect("cosmos client");
        client.database_client(&self.database).container_client(name, None).await.expect("container client")
    }

    fn mapping(&self, container: &str) -> ContainerMapping {
        serde_json::from_value(json!({
            "database": self.database,
            "container": container,
            "entityType": "risk",
            "created": "RISK_CREATED",
            "updated": "RISK_UPDATED",
            "deleted": "RISK_DELETED",
            "statusChanged": "RISK_STATUS_CHANGED",
            "statusField": "status",
            "versionField": "version",
        }))
        .expect("mapping")
    }

    fn file(&self, container: &str, start: StartFrom) -> ChangeFeedFile {
        ChangeFeedFile {
            endpoint: testkit::cosmos_url(),
            auth: Auth::Key { key_env: KEY_ENV.into() },
            start_from: start,
            mode: FeedMode::LatestVersion,
            poll_interval_ms: 100,
            page_size: 100,
            lease_ttl_ms: 2_000,
            backoff_ms: 100,
            max_backoff_ms: 1_000,
            lease_prefix: self.prefix.clone(),
            containers: vec![self.mapping(container)],
        }
    }

    async fn reader(&self, file: ChangeFeedFile) -> Reader {
        let (tx, mut rx) = watch::channel(false);
        let pipeline = self.pipeline.clone();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            change_feed::run(file, pipeline, stop).await.expect("reader runs");
        });
        Reader { task, stop: tx }
    }

    /// Reads the events topic until `n` records are there (or the time is up) and returns them.
    async fn events(&self, n: usize, timeout: Duration) -> Vec<Record> {
        testkit::read_topic(&self.brokers, &self.events_topic, timeout, |r| r.len() >= n).await.expect("read events")
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.redis_url.as_str()).expect("redis url");
        client.get_multiplexed_async_connection().await.expect("redis")
    }

    /// The Redis keys of one kind (`ckpt`, `lease`) of `container`'s ranges.
    async fn range_keys(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        container: &str,
        kind: &str,
    ) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(format!("{}:{}/{container}:{kind}:*", self.prefix, self.database))
            .query_async(conn)
            .await
            .expect("keys")
    }

    /// Waits until every range of `container` has a checkpoint (the reader has pinned its start).
    async fn wait_checkpoints(&self, container: &str, ranges: usize) {
        let mut conn = self.redis().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let keys = self.range_keys(&mut conn, container, "ckpt").await;
            if keys.len() >= ranges {
                return;
            }
            assert!(Instant::now() < deadline, "only {} of {ranges} ranges checkpointed", keys.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn lease_holders(&self, container: &str) -> HashMap<String, String> {
        let mut conn = self.redis().await;
        let mut out = HashMap::new();
        for k in self.range_keys(&mut conn, container, "lease").await {
            let v: Option<String> = redis::cmd("GET").arg(&k).query_async(&mut conn).await.expect("get");
            if let Some(v) = v {
                out.insert(k, v);
            }
        }
        out
    }
}

fn risk(tenant: &str, id: &str, version: i64, status: &str) -> Value {
    json!({ "id": id, "tenantId": tenant, "title": format!("risk {id}"), "score": 7, "status": status, "version": version })
}

async fn put(c: &ContainerClient, doc: &Value) {
    let tenant = doc["tenantId"].as_str().expect("tenant").to_string();
    let id = doc["id"].as_str().expect("id").to_string();
    c.upsert_item(tenant, &id, doc, None).await.expect("upsert");
}

fn ids(records: &[Record]) -> HashSet<String> {
    records.iter().map(|r| r.json()["id"].as_str().unwrap_or_default().to_string()).collect()
}

fn by_entity(records: &[Record]) -> HashMap<String, Vec<Value>> {
    let mut m: HashMap<String, Vec<Value>> = HashMap::new();
    for r in records {
        let v = r.json();
        m.entry(v["entityId"].as_str().unwrap_or_default().to_string()).or_default().push(v);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_the_beginning_and_resumes_after_a_restart_without_replay_or_gap() {
    let h = Harness::start(1).await;
    let t = h.tenant(0).to_string();
    let c = h.container("risks", 1).await;
    for i in 0..5 {
        put(&c, &risk(&t, &format!("r{i}"), 1, "open")).await;
    }
    let reader = h.reader(h.file("risks", StartFrom::Beginning)).await;
    let first = h.events(5, Duration::from_secs(60)).await;
    assert_eq!(first.len(), 5, "five documents, five events");
    for r in &first {
        let v = r.json();
        assert_eq!(r.key.as_deref(), Some(t.as_str()), "keyed by tenant");
        assert_eq!(r.headers.get("ce_type").map(String::as_str), Some("RISK_CREATED"));
        assert_eq!(v["tenantId"], t);
        assert_eq!(v["source"], "COSMOS_DB");
        assert_eq!(v["entityType"], "risk");
        assert_eq!(v["action"], "created");
        assert_eq!(v["data"]["score"], 7);
        assert!(v["data"].get("_etag").is_none(), "system fields stay out of data");
        assert_eq!(v["metadata"]["container"], "risks");
        assert!(v["id"].as_str().is_some_and(|id| id.starts_with("cosmos-")), "deterministic id: {v}");
    }
    h.wait_checkpoints("risks", 1).await;
    reader.stop().await;

    // While the reader is down: one update, one status change, two new documents.
    put(&c, &risk(&t, "r0", 2, "open")).await;
    put(&c, &risk(&t, "r1", 2, "closed")).await;
    put(&c, &risk(&t, "r5", 1, "open")).await;
    put(&c, &risk(&t, "r6", 1, "open")).await;
    let reader = h.reader(h.file("risks", StartFrom::Beginning)).await;
    let all = h.events(9, Duration::from_secs(60)).await;
    assert_eq!(all.len(), 9, "the four changes made while stopped, once each, after the first five");
    // No replay: nothing more arrives.
    let settled = h.events(10, Duration::from_secs(3)).await;
    assert_eq!(settled.len(), 9, "a restart replays nothing");
    let second: Vec<Value> = all[5..].iter().map(Record::json).collect();
    let kinds: HashMap<&str, &str> =
        second.iter().map(|v| (v["entityId"].as_str().unwrap_or(""), v["eventType"].as_str().unwrap_or(""))).collect();
    assert_eq!(kinds.get("r0"), Some(&"RISK_UPDATED"));
    assert_eq!(kinds.get("r5"), Some(&"RISK_CREATED"));
    assert_eq!(kinds.get("r6"), Some(&"RISK_CREATED"));
    // Latest-version mode carries no previous image: a status change is an update unless the doc says more.
    assert!(matches!(kinds.get("r1"), Some(&"RISK_UPDATED") | Some(&"RISK_STATUS_CHANGED")));
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_stay_the_same_when_the_feed_is_read_again_and_replays_are_dropped() {
    let h = Harness::start(1).await;
    let t = h.tenant(0).to_string();
    let c = h.container("risks", 2).await;
    for i in 0..6 {
        put(&c, &risk(&t, &format!("r{i}"), 1, "open")).await;
    }
    let reader = h.reader(h.file("risks", StartFrom::Beginning)).await;
    let first = h.events(6, Duration::from_secs(60)).await;
    assert_eq!(first.len(), 6);
    h.wait_checkpoints("risks", 2).await;
    reader.stop().await;

    // Lose every checkpoint: the next reader reads the whole feed again (as after a lost checkpoint store).
    let mut conn = h.redis().await;
    let keys = h.range_keys(&mut conn, "risks", "ckpt").await;
    assert_eq!(keys.len(), 2);
    let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.expect("del");
    put(&c, &risk(&t, "r9", 1, "open")).await;
    let reader = h.reader(h.file("risks", StartFrom::Beginning)).await;
    let all = h.events(7, Duration::from_secs(60)).await;
    let settled = h.events(8, Duration::from_secs(3)).await;
    assert_eq!(all.len(), 7, "only the new document is new");
    assert_eq!(settled.len(), 7, "the six replayed changes got their first ids and were dropped");
    assert_eq!(ids(&all).len(), 7);
    h.wait_checkpoints("risks", 2).await;
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_from_now_skips_what_was_there() {
    let h = Harness::start(1).await;
    let t = h.tenant(0).to_string();
    let c = h.container("risks", 1).await;
    for i in 0..3 {
        put(&c, &risk(&t, &format!("old{i}"), 1, "open")).await;
    }
    let reader = h.reader(h.file("risks", StartFrom::Now)).await;
    h.wait_checkpoints("risks", 1).await;
    put(&c, &risk(&t, "new0", 1, "open")).await;
    put(&c, &risk(&t, "new1", 1, "open")).await;
    let got = h.events(2, Duration::from_secs(60)).await;
    let settled = h.events(3, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(settled.len(), 2, "documents written before the start are not read");
    let entities: HashSet<String> = by_entity(&got).into_keys().collect();
    assert_eq!(entities, HashSet::from(["new0".to_string(), "new1".to_string()]));
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_feed_then_many_pages_over_several_ranges() {
    let h = Harness::start(3).await;
    let c = h.container("risks", 4).await;
    let mut file = h.file("risks", StartFrom::Beginning);
    file.page_size = 3;
    let reader = h.reader(file).await;
    // Empty feed: every range polls and checkpoints, nothing is published.
    h.wait_checkpoints("risks", 4).await;
    assert_eq!(h.events(1, Duration::from_secs(2)).await.len(), 0, "an empty feed publishes nothing");
    for i in 0..30 {
        let t = h.tenant(i % 3).to_string();
        put(&c, &risk(&t, &format!("r{i}"), 1, "open")).await;
    }
    let got = h.events(30, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 30, "30 documents over 4 ranges in pages of 3");
    assert_eq!(ids(&got).len(), 30, "each once");
    let tenants: HashSet<String> = got.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(tenants.len(), 3);
    // A tenant's events stay ordered on one partition of the topic.
    for t in &tenants {
        let parts: HashSet<i32> = got.iter().filter(|r| r.key.as_ref() == Some(t)).map(|r| r.partition).collect();
        assert_eq!(parts.len(), 1, "tenant {t} on one partition");
    }
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_split_while_reading_loses_and_repeats_nothing() {
    let h = Harness::start(2).await;
    let c = h.container("risks", 1).await;
    for i in 0..10 {
        put(&c, &risk(h.tenant(i % 2), &format!("a{i}"), 1, "open")).await;
    }
    let reader = h.reader(h.file("risks", StartFrom::Beginning)).await;
    assert_eq!(h.events(10, Duration::from_secs(60)).await.len(), 10);
    let children = testkit::cosmos_split(&h.database, "risks", 0).await.expect("split");
    assert_eq!(children.len(), 2, "one partition became two");
    for i in 0..10 {
        put(&c, &risk(h.tenant(i % 2), &format!("b{i}"), 1, "open")).await;
    }
    let got = h.events(20, Duration::from_secs(60)).await;
    let settled = h.events(21, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 20, "every change before and after the split");
    assert_eq!(settled.len(), 20, "none twice");
    assert_eq!(ids(&got).len(), 20);
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_readers_share_the_ranges_and_one_takes_over_when_the_other_dies() {
    let h = Harness::start(2).await;
    let c = h.container("risks", 4).await;
    let a = h.reader(h.file("risks", StartFrom::Beginning)).await;
    let b = h.reader(h.file("risks", StartFrom::Beginning)).await;
    // They settle on two ranges each.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let holders = h.lease_holders("risks").await;
        let mut per: HashMap<&String, usize> = HashMap::new();
        for o in holders.values() {
            *per.entry(o).or_default() += 1;
        }
        if holders.len() == 4 && per.len() == 2 && per.values().all(|n| *n == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "ranges not shared: {holders:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..20 {
        put(&c, &risk(h.tenant(i % 2), &format!("a{i}"), 1, "open")).await;
    }
    assert_eq!(h.events(20, Duration::from_secs(60)).await.len(), 20);
    let before = h.lease_holders("risks").await;
    a.kill();
    for i in 0..20 {
        put(&c, &risk(h.tenant(i % 2), &format!("b{i}"), 1, "open")).await;
    }
    // The survivor takes the dead reader's ranges once their leases expire (2 s here).
    let got = h.events(40, Duration::from_secs(60)).await;
    let settled = h.events(41, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 40, "nothing lost when a reader dies");
    assert_eq!(settled.len(), 40, "nothing published twice");
    let after = h.lease_holders("risks").await;
    let owners: HashSet<&String> = after.values().collect();
    assert_eq!(after.len(), 4);
    assert_eq!(owners.len(), 1, "one reader holds every range now: {after:?}");
    assert!(before.values().any(|o| owners.contains(o)), "the survivor is one of the two");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_documents_go_to_the_dead_letter_topic_and_the_feed_moves_on() {
    let h = Harness::start(1).await;
    let t = h.tenant(0).to_string();
    let c = h.container("risks", 1).await;
    // A document the mapping cannot place (its tenant field holds no valid tenant id) and one of a tenant
    // evstream does not know.
    c.upsert_item("not a tenant!", "bad0", json!({"id": "bad0", "tenantId": "not a tenant!", "x": 1}), None)
        .await
        .expect("upsert");
    put(&c, &risk("cf-unregistered", "bad1", 1, "open")).await;
    put(&c, &risk(&t, "good", 1, "open")).await;
    let reader = h.reader(h.file("risks", StartFrom::Beginning)).await;
    let events = h.events(1, Duration::from_secs(60)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].json()["entityId"], "good");
    let dead = testkit::read_topic(&h.brokers, &h.deadletter_topic, Duration::from_secs(30), |r| r.len() >= 2)
        .await
        .expect("dead letters");
    let reasons: HashSet<String> = dead.iter().map(|r| r.json()["reason"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(reasons, HashSet::from(["invalid_tenant".to_string(), "unknown_tenant".to_string()]), "{dead:?}");
    let bad0 = dead.iter().map(Record::json).find(|v| v["reason"] == "invalid_tenant").expect("bad0");
    let original: Value = serde_json::from_str(bad0["original"].as_str().unwrap_or("{}")).expect("original json");
    assert_eq!(original["container"], "risks");
    assert_eq!(original["document"]["id"], "bad0");
    reader.stop().await;
}

/// Runs only when a real account is given: EVSTREAM_TEST_COSMOS_ENDPOINT, EVSTREAM_TEST_COSMOS_REAL_KEY,
/// EVSTREAM_TEST_COSMOS_DATABASE and EVSTREAM_TEST_COSMOS_CONTAINER (an existing container partitioned on
/// /tenantId). Writes one document and expects its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_cosmos_account_when_one_is_configured() {
    let vars = ["ENDPOINT", "REAL_KEY", "DATABASE", "CONTAINER"]
        .map(|v| std::env::var(format!("EVSTREAM_TEST_COSMOS_{v}")).ok());
    let [Some(endpoint), Some(key), Some(database), Some(container)] = vars else {
        eprintln!("skipped: no real Cosmos DB account configured (EVSTREAM_TEST_COSMOS_ENDPOINT etc.)");
        return;
    };
    let mut h = Harness::start(1).await;
    h.database = database;
    std::env::set_var("EVSTREAM_TEST_COSMOS_REAL_KEY", &key);
    let mut file = h.file(&container, StartFrom::Now);
    file.endpoint = endpoint;
    file.auth = Auth::Key { key_env: "EVSTREAM_TEST_COSMOS_REAL_KEY".into() };
    let client = change_feed::client::connect(&file).await.expect("client");
    let c = client.database_client(&h.database).container_client(container.as_str(), None).await.expect("container");
    let reader = h.reader(file).await;
    h.wait_checkpoints(&container, 1).await;
    let t = h.tenant(0).to_string();
    put(&c, &risk(&t, &testkit::unique("real"), 1, "open")).await;
    let got = h.events(1, Duration::from_secs(120)).await;
    assert_eq!(got.len(), 1);
    reader.stop().await;
}
