//! `kafka-tail BROKERS TOPIC COUNT [SECONDS]`: reads TOPIC from the beginning with an independent consumer until COUNT
//! records are there (or SECONDS pass, 30 by default) and prints one line per record: partition, offset, key, the
//! `ce_type` header and the value's `id`, `entityId`, `eventType` or `reason`. Test and demo support only.

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, topic, count, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: kafka-tail BROKERS TOPIC COUNT [SECONDS]");
    };
    let count: usize = count.parse()?;
    let secs: u64 = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let records = testkit::read_topic(brokers, topic, Duration::from_secs(secs), |r| r.len() >= count).await?;
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
        println!(
            "{topic} p{} @{} key={} ce_type={} id={} entityId={} eventType={} action={} reason={}",
            r.partition,
            r.offset,
            r.key.as_deref().unwrap_or("-"),
            r.headers.get("ce_type").map_or("-", String::as_str),
            field("id"),
            field("entityId"),
            field("eventType"),
            field("action"),
            field("reason"),
        );
    }
    println!("{} record(s) on {topic}", records.len());
    Ok(())
}
