//! `evstream audit-verify`: reads the whole audit topic and verifies every hash chain. Exit status 0 when intact,
//! 1 with the first break printed otherwise.

use clap::Args;
use producer::audit::{verify, AuditRecord};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct AuditVerifyArgs {
    #[arg(long, env = "EVSTREAM_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    #[arg(long, env = "EVSTREAM_AUDIT_TOPIC", default_value = "evstream.audit")]
    pub audit_topic: String,
    /// Stop reading when no record arrived for this long.
    #[arg(long, default_value_t = 3000)]
    pub idle_ms: u64,
}

/// Reads every record of the topic from the beginning (until it has been quiet for `idle`).
pub fn read_all(brokers: &str, topic: &str, idle: Duration) -> anyhow::Result<(Vec<AuditRecord>, usize)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("evstream-audit-verify-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    c.assign(&tpl)?;
    let (mut records, mut unreadable) = (Vec::new(), 0usize);
    let mut last = Instant::now();
    while last.elapsed() < idle {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                match m.payload().map(serde_json::from_slice::<AuditRecord>) {
                    Some(Ok(r)) => records.push(r),
                    _ => unreadable += 1,
                }
            }
            Some(Err(e)) => anyhow::bail!("reading the audit topic failed: {e}"),
            None => {}
        }
    }
    Ok((records, unreadable))
}

pub fn run(a: AuditVerifyArgs) -> anyhow::Result<()> {
    let (records, unreadable) = read_all(&a.kafka_brokers, &a.audit_topic, Duration::from_millis(a.idle_ms))?;
    match verify(&records) {
        Ok(v) if unreadable == 0 => {
            println!("audit trail intact: {} records in {} chains", v.records, v.chains);
            Ok(())
        }
        Ok(v) => {
            println!(
                "audit trail: {} records in {} chains verify, but {unreadable} records are not audit records",
                v.records, v.chains
            );
            std::process::exit(1)
        }
        Err(b) => {
            println!("audit trail BROKEN: chain {} at record {}: {}", b.chain_id, b.seq, b.reason);
            std::process::exit(1)
        }
    }
}
