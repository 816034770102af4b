//! `evstream alert-latency`: end-to-end latency from `POST /events` to the webhook receiver. A child
//! `evstream serve` runs the API and the alert stream; a receiver in this process records when each alert
//! arrives. Events are paced, each opens its own alert, and the latency of each is measured.

use crate::bench::{tag, ChildServer};
use axum::routing::post;
use clap::Args;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct AlertLatencyArgs {
    #[arg(long, env = "EVSTREAM_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    #[arg(long, env = "EVSTREAM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Events (each raises one alert).
    #[arg(long, default_value_t = 300)]
    pub events: usize,
    /// Events per second.
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

pub async fn run(a: AlertLatencyArgs) -> anyhow::Result<()> {
    let arrivals: Arrivals = Arc::default();
    let rec = arrivals.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let rec = rec.clone();
            async move {
                let at = Instant::now();
                if let Some(id) = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["alert"]["lastEventId"].as_str().map(str::to_string))
                {
                    rec.lock().unwrap_or_else(|p| p.into_inner()).entry(id).or_insert(at);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let t = tag();
    let server = ChildServer::start_role("serve", &a.kafka_brokers, &a.redis_url, 0, &t, 1000).await?;
    let http = reqwest::Client::new();
    let tenant = format!("lat-{t}");
    server.tenant(&http, &tenant, 1_000_000).await?;
    let put = |path: String, body: Value| {
        http.put(format!("{}{path}", server.base)).bearer_auth(&server.admin).json(&body).send()
    };
    put(format!("/tenants/{tenant}/receivers/hook"), json!({"type": "webhook", "url": hook}))
        .await?
        .error_for_status()?;
    put(
        format!("/tenants/{tenant}/policies/every"),
        json!({"name": "every", "severity": "info", "eventTypes": ["USER_ACTION"], "groupBy": ["data.n"],
               "condition": {"rules": [{"field": "data.n", "operator": "exists"}]}, "receivers": ["hook"]}),
    )
    .await?
    .error_for_status()?;
    let send = |n: usize| {
        let (http, base, admin, tenant) = (http.clone(), server.base.clone(), server.admin.clone(), tenant.clone());
        async move {
            let r: Value = http
                .post(format!("{base}/events"))
                .bearer_auth(admin)
                .json(&json!({"tenantId": tenant, "eventType": "USER_ACTION", "source": "FRONTEND_APP", "data": {"n": n}}))
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(r["id"].as_str().unwrap_or_default().to_string())
        }
    };
    // Wait until the alert stream has joined its group and delivers.
    let warm = send(usize::MAX).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !arrivals.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&warm) {
        anyhow::ensure!(Instant::now() < deadline, "the alert stream did not deliver within 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("alert latency: {} events at {}/s, one alert each, webhook receiver on loopback", a.events, a.rate);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate as f64));
    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(a.events);
    let mut tasks = Vec::new();
    for n in 0..a.events {
        tick.tick().await;
        let at = Instant::now();
        let f = send(n);
        tasks.push(tokio::spawn(async move { f.await.map(|id| (id, at)) }));
    }
    for t in tasks {
        sent.push(t.await??);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = arrivals.lock().unwrap_or_else(|p| p.into_inner()).len();
        if got > a.events || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let arr = arrivals.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut lat: Vec<f64> =
        sent.iter().filter_map(|(id, at)| arr.get(id).map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        lat.get(((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len().max(1)) - 1).copied().unwrap_or(f64::NAN)
    };
    println!(
        "delivered {} of {}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        a.events,
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
