//! Runs the roles: builds the state through `stream_api::bootstrap`, serves until SIGINT/SIGTERM, then drains
//! in-flight requests and flushes the producer.

use crate::cli::Common;
use producer::sinks::kafka::KafkaSinkConfig;
use std::time::Duration;
use stream_api::bootstrap::{self, Settings};
use stream_api::ApiConfig;

pub fn settings(o: &Common) -> Settings {
    Settings {
        kafka: KafkaSinkConfig {
            brokers: o.kafka_brokers.clone(),
            delivery_timeout_ms: o.kafka_delivery_timeout_ms,
            linger_ms: o.kafka_linger_ms,
            batch_size: o.kafka_batch_size,
            queue_max_messages: o.kafka_queue_max,
            idempotence: o.kafka_idempotence,
        },
        redis_url: o.redis_url.clone(),
        redis_queue: o.redis_queue,
        admin_key: o.admin_key.clone().filter(|k| !k.is_empty()),
        events_topic: o.events_topic.clone(),
        config_topic: o.config_topic.clone(),
        deadletter_topic: o.deadletter_topic.clone(),
        alerts_topic: o.alerts_topic.clone(),
        alerts_deadletter_topic: o.alerts_deadletter_topic.clone(),
        audit_topic: o.audit_topic.clone(),
        idempotency_window: Duration::from_secs(o.idempotency_window_secs),
        default_quota: schemas::config::Quota {
            events_per_second: o.quota_events_per_sec,
            bytes_per_second: o.quota_bytes_per_sec,
            burst_seconds: o.quota_burst_secs,
        },
        api: ApiConfig {
            max_body_bytes: o.max_body_bytes,
            max_bulk_bytes: o.max_bulk_bytes,
            max_bulk_items: o.max_bulk_items,
            max_in_flight: o.max_in_flight,
            partitions: o.partitions,
            replication: o.replication_factor,
            ..ApiConfig::default()
        },
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; draining");
}

pub fn alert_config(o: &Common) -> alert_stream::AlertStreamConfig {
    alert_stream::AlertStreamConfig {
        brokers: o.kafka_brokers.clone(),
        topics: vec![o.events_topic.clone()],
        alerts_topic: o.alerts_topic.clone(),
        deadletter_topic: o.alerts_deadletter_topic.clone(),
        group_id: o.alerts_group.clone(),
        start_from: o.alerts_start_from.clone(),
        session_timeout_ms: o.alerts_session_timeout_ms,
        delivery: alert_stream::notify::DeliveryPolicy {
            attempts: o.alerts_delivery_attempts.max(1),
            base_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        },
        max_deliveries: 1000,
        sweep_every: Duration::from_secs(30),
        reclaim_after: Duration::from_secs(300),
    }
}

/// Which roles this process runs.
pub struct Roles {
    pub api: bool,
    pub alerts: bool,
    /// Runs when a change-feed config is given; `evstream change-feed` alone requires one.
    pub change_feed: bool,
}

pub async fn run(o: Common, roles: Roles) -> anyhow::Result<()> {
    let config_file = o.change_feed_config.as_deref().filter(|p| !p.is_empty());
    let change_feed = match (config_file, roles.change_feed) {
        (Some(path), true) => Some(change_feed::ChangeFeedFile::load(path)?),
        (None, true) if !roles.api && !roles.alerts => {
            anyhow::bail!("evstream change-feed needs --change-feed-config (EVSTREAM_CHANGE_FEED_CONFIG)")
        }
        _ => None,
    };
    let prometheus = stream_api::telemetry::install_prometheus()?;
    let started = bootstrap::start(&settings(&o), Some(prometheus)).await?;
    if let Some(key) = &started.generated_admin_key {
        // Printed once, on purpose, to stdout only: it is the bootstrap credential.
        println!("evstream admin key (shown once, store it): {key}");
    }
    let state = started.state.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    if roles.alerts {
        let p = &state.pipeline;
        let (configs, store, kafka) = (p.configs().clone(), state.alerts.clone(), p.kafka().clone());
        let cfg = alert_config(&o);
        let stop = stopped();
        tasks.spawn(
            async move { alert_stream::run(cfg, configs, store, kafka, stop).await.map_err(anyhow::Error::from) },
        );
    }
    if let Some(file) = change_feed {
        let pipeline = state.pipeline.clone();
        let stop = stopped();
        tasks.spawn(async move { change_feed::run(file, pipeline, stop).await.map_err(anyhow::Error::from) });
    } else if roles.change_feed && roles.api {
        tracing::info!("change feed not configured (EVSTREAM_CHANGE_FEED_CONFIG unset)");
    }
    if roles.api {
        let listener = tokio::net::TcpListener::bind(&o.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "evstream api listening");
        let stop = stopped();
        let st = started.state;
        tasks.spawn(async move { stream_api::run(st, listener, stop).await.map_err(anyhow::Error::from) });
    }
    tokio::select! {
        _ = shutdown_signal() => {}
        Some(r) = tasks.join_next() => {
            // A role ended by itself: that is a failure; stop the others.
            tracing::error!(result = ?r.as_ref().map(|x| x.as_ref().map_err(ToString::to_string)), "a role stopped");
        }
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    state.pipeline.kafka().flush(Duration::from_secs(10)).await;
    tracing::info!("stopped");
    Ok(())
}
