//! `evstream noisy-neighbour`: does one tenant's flood hurt another tenant? A quiet tenant sends at a steady rate
//! while, in a second phase, a noisy tenant sends at 10x its quota. Prints the quiet tenant's p99 latency in both
//! phases and their ratio (target: the flood raises it by less than 20%), and how the flood was answered.

use crate::bench::{tag, ChildServer};
use clap::Args;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct NoisyArgs {
    #[arg(long, env = "EVSTREAM_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    #[arg(long, env = "EVSTREAM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// The quiet tenant's steady rate (events/s).
    #[arg(long, default_value_t = 100)]
    pub quiet_rate: u64,
    /// The noisy tenant's quota (events/s); it floods at 10x this.
    #[arg(long, default_value_t = 200)]
    pub noisy_quota: u64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
}

#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    statuses: HashMap<u16, usize>,
}

/// Sends `rate` single-event requests per second for `secs`, each on its own task so that a slow answer does not
/// slow the rate; records latency and status.
async fn paced(http: reqwest::Client, base: String, key: String, tenant: String, rate: u64, secs: u64) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs(secs);
    let limit = Arc::new(tokio::sync::Semaphore::new(512));
    let mut tasks = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let Ok(permit) = limit.clone().acquire_owned().await else { break };
        let (http, url, key, seen) = (http.clone(), format!("{base}/events"), key.clone(), seen.clone());
        let body = json!({"tenantId": tenant, "eventType": "RESOURCE_METRIC", "source": "AWS", "data": {"metric": "cpu", "value": 42.0}});
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let status =
                http.post(url).bearer_auth(key).json(&body).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            s.latencies.push(t.elapsed());
            *s.statuses.entry(status).or_default() += 1;
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(seen).map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner())).unwrap_or_default()
}

fn p99(l: &[Duration]) -> f64 {
    let mut l = l.to_vec();
    l.sort();
    if l.is_empty() {
        return f64::NAN;
    }
    let i = ((0.99 * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1;
    l[i].as_secs_f64() * 1000.0
}

async fn key_for(http: &reqwest::Client, s: &ChildServer, tenant: &str) -> anyhow::Result<String> {
    let r: serde_json::Value =
        http.post(format!("{}/tenants/{tenant}/keys", s.base)).bearer_auth(&s.admin).send().await?.json().await?;
    r["key"].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("no key in {r}"))
}

pub async fn run(a: NoisyArgs) -> anyhow::Result<()> {
    let t = tag();
    let server = ChildServer::start(&a.kafka_brokers, &a.redis_url, 0, &t, 1000).await?;
    let http = reqwest::Client::new();
    let (quiet, noisy) = (format!("quiet-{t}"), format!("noisy-{t}"));
    server.tenant(&http, &quiet, a.quiet_rate * 10).await?;
    server.tenant(&http, &noisy, a.noisy_quota).await?;
    let (qk, nk) = (key_for(&http, &server, &quiet).await?, key_for(&http, &server, &noisy).await?);
    // Warm-up.
    paced(http.clone(), server.base.clone(), qk.clone(), quiet.clone(), a.quiet_rate, 2).await;

    println!("noisy neighbour: quiet tenant at {} events/s; noisy tenant quota {} events/s, flooding at {} events/s; {} s per phase", a.quiet_rate, a.noisy_quota, a.noisy_quota * 10, a.seconds);
    let alone = paced(http.clone(), server.base.clone(), qk.clone(), quiet.clone(), a.quiet_rate, a.seconds).await;
    let flood = tokio::spawn(paced(http.clone(), server.base.clone(), nk, noisy, a.noisy_quota * 10, a.seconds));
    let beside = paced(http.clone(), server.base.clone(), qk, quiet, a.quiet_rate, a.seconds).await;
    let flood = flood.await?;
    let (p_alone, p_beside) = (p99(&alone.latencies), p99(&beside.latencies));
    println!(
        "quiet tenant alone:        {} requests, statuses {:?}, p99 {:.2} ms",
        alone.latencies.len(),
        alone.statuses,
        p_alone
    );
    println!(
        "quiet tenant beside flood: {} requests, statuses {:?}, p99 {:.2} ms",
        beside.latencies.len(),
        beside.statuses,
        p_beside
    );
    println!(
        "noisy tenant flood:        {} requests, statuses {:?}, p99 {:.2} ms",
        flood.latencies.len(),
        flood.statuses,
        p99(&flood.latencies)
    );
    println!("p99 ratio (beside / alone): {:.2}  (target < 1.20)", p_beside / p_alone);
    Ok(())
}
