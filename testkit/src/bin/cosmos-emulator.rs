//! Microsoft's in-memory Cosmos DB emulator (from `azure_data_cosmos_driver`) served over HTTP/1.1 on 127.0.0.1, so
//! evstream's change-feed reader can run against it through its real HTTP client. Test support only.
//!
//! `cosmos-emulator [--port N]` binds 127.0.0.1 (a free port by default), builds the emulator's region URL from the
//! bound address and prints `COSMOS_EMULATOR_URL=http://127.0.0.1:PORT/` once it accepts requests. Every request is
//! handed to the emulator as it came; the emulator checks no signatures. Control endpoints for tests:
//! - `POST /_emulator/containers` `{"database","container","partitionKey":"/tenantId","partitions":N}` creates a
//!   container with N physical partitions (the database too, when new);
//! - `POST /_emulator/split` `{"database","container","partition":ID}` splits a physical partition and answers
//!   when the two children serve requests (`{"children":[..]}`).

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use azure_core::http::{Method, Url};
use azure_data_cosmos_driver::in_memory_emulator::{
    ContainerConfig, EmulatorStore, InMemoryEmulatorHttpClient, VirtualAccountConfig, VirtualRegion,
};
use azure_data_cosmos_driver::models::PartitionKeyDefinition;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Clone)]
struct Emulator {
    client: Arc<InMemoryEmulatorHttpClient>,
    store: Arc<EmulatorStore>,
    base: Url,
    databases: Arc<Mutex<HashSet<String>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewContainer {
    database: String,
    container: String,
    #[serde(default = "default_pk")]
    partition_key: String,
    #[serde(default = "one")]
    partitions: u32,
}

fn default_pk() -> String {
    "/tenantId".to_owned()
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct Split {
    database: String,
    container: String,
    partition: u32,
}

fn problem(status: StatusCode, detail: impl std::fmt::Display) -> Response<Body> {
    let mut r =
        Response::new(Body::from(json!({ "status": status.as_u16(), "detail": detail.to_string() }).to_string()));
    *r.status_mut() = status;
    r
}

async fn create_container(State(e): State<Emulator>, Json(c): Json<NewContainer>) -> Response<Body> {
    let config = match ContainerConfig::new().with_partition_count(c.partitions).build() {
        Ok(c) => c,
        Err(err) => return problem(StatusCode::BAD_REQUEST, err),
    };
    let new_db = e.databases.lock().map(|mut d| d.insert(c.database.clone())).unwrap_or(false);
    if new_db {
        e.store.create_database(&c.database);
    }
    let pk = PartitionKeyDefinition::new(vec![c.partition_key.into()]);
    e.store.create_container_with_config(&c.database, &c.container, pk, config);
    problem(StatusCode::CREATED, "created")
}

async fn split(State(e): State<Emulator>, Json(s): Json<Split>) -> Response<Body> {
    e.store.split_partition(&s.database, &s.container, s.partition, Duration::from_millis(100));
    e.store.wait_for_split(&s.database, &s.container, s.partition).await;
    let children = e.store.child_partition_ids(&s.database, &s.container, &[s.partition]);
    if children.is_empty() {
        return problem(StatusCode::CONFLICT, "the partition was not split");
    }
    let mut r = Response::new(Body::from(json!({ "children": children }).to_string()));
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// Any other request: hand it to the emulator unchanged.
async fn forward(State(e): State<Emulator>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Ok(method) = Method::from_str(parts.method.as_str()) else {
        return problem(StatusCode::METHOD_NOT_ALLOWED, "method not supported");
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(url) = e.base.join(path) else {
        return problem(StatusCode::BAD_REQUEST, "bad request target");
    };
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return problem(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    let mut request = azure_core::http::Request::new(url, method);
    for (name, value) in &parts.headers {
        if let Ok(v) = value.to_str() {
            request.insert_header(name.as_str().to_owned(), v.to_owned());
        }
    }
    request.set_body(body.to_vec());
    let response = match e.client.execute_request(&request).await {
        Ok(r) => r,
        Err(err) => {
            let code = StatusCode::from_u16(u16::from(err.status().status_code())).unwrap_or(StatusCode::BAD_GATEWAY);
            return problem(code, err);
        }
    };
    let (status, headers, body) = response.deconstruct();
    let bytes = match body.collect().await {
        Ok(b) => b,
        Err(err) => return problem(StatusCode::BAD_GATEWAY, err),
    };
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = StatusCode::from_u16(u16::from(status)).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in headers.iter() {
        if let (Ok(n), Ok(v)) = (HeaderName::from_str(name.as_str()), HeaderValue::from_str(value.as_str())) {
            out.headers_mut().append(n, v);
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).ok_or_else(|| anyhow::anyhow!("--port N"))?,
            other => anyhow::bail!("unknown argument {other}; usage: cosmos-emulator [--port N]"),
        }
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let base = Url::parse(&format!("http://{addr}/"))?;
    let config = VirtualAccountConfig::new(vec![VirtualRegion::new("East US", base.clone())])
        .map_err(|e| anyhow::anyhow!("emulator config: {e}"))?;
    let client = Arc::new(InMemoryEmulatorHttpClient::new(config));
    let store = client.store();
    let state = Emulator { client, store, base: base.clone(), databases: Arc::default() };
    let app = Router::new()
        .route("/_emulator/containers", post(create_container))
        .route("/_emulator/split", post(split))
        .fallback(forward)
        .with_state(state);
    println!("COSMOS_EMULATOR_URL={base}");
    axum::serve(listener, app).await?;
    Ok(())
}
