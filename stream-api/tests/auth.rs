//! Authentication and tenant isolation: a tenant key reads and writes only its own tenant.

mod common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{event, TestApp, ADMIN};
use serde_json::json;
use std::time::Duration;

/// No key or an unknown key: 401 with a problem document and WWW-Authenticate.
#[tokio::test]
async fn unauthenticated_requests_get_401() {
    let app = TestApp::start().await;
    let (tenant, _) = app.tenant().await;
    for key in [None, Some("nope")] {
        let r = app.call("POST", "/events", key, Some("application/json"), event(&tenant).to_string()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert!(r.content_type().starts_with("application/problem+json"));
        let r = app.call("GET", &format!("/events/{tenant}"), key, None, Body::empty()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
}

/// Tenant A's key cannot write B's events, read B's events, tail B, or read/change B's config; it cannot manage
/// tenants or keys. Nothing of B's reaches Kafka.
#[tokio::test]
async fn a_tenant_key_cannot_touch_another_tenant() {
    let app = TestApp::start().await;
    let (a, ka) = app.tenant().await;
    let (b, kb) = app.tenant().await;

    let r = app.post("/events", &ka, &event(&b)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["code"], "forbidden_tenant");
    let r = app.post("/events/bulk", &ka, &json!({"events": [event(&b), event(&a)]})).await;
    assert_eq!(r.status, StatusCode::MULTI_STATUS);
    assert_eq!(r.body["results"][0]["code"], "forbidden_tenant");
    for path in [
        format!("/events/{b}"),
        format!("/events/{b}/stream"),
        format!("/stream-config/{b}"),
        format!("/metrics/{b}"),
        format!("/tenants/{b}"),
    ] {
        let r = app.get(&path, &ka).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    let r = app.put(&format!("/stream-config/{b}"), &ka, &json!({"enabled": false}), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(app.post("/tenants", &ka, &json!({"id": "x"})).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.call("POST", &format!("/tenants/{a}/keys"), Some(&ka), None, Body::empty()).await.status,
        StatusCode::FORBIDDEN
    );

    // B's own key still works, and B has exactly its own event in Kafka.
    assert_eq!(app.post("/events", &kb, &event(&b)).await.status, StatusCode::ACCEPTED);
    let recs = app.records_for(&app.events_topic, &b, 2, Duration::from_secs(3)).await;
    assert_eq!(recs.len(), 1, "only B's own write reached Kafka");
    // The admin key may act for any tenant.
    assert_eq!(app.post("/events", ADMIN, &event(&a)).await.status, StatusCode::ACCEPTED);
    // Events for a tenant that was never registered are refused.
    let r = app.post("/events", ADMIN, &event("never-registered")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["field"], "tenantId");
}

/// Tenant management: duplicate tenant 409, invalid id 422 naming `id`, keys only for known tenants.
#[tokio::test]
async fn tenant_management() {
    let app = TestApp::start().await;
    let (a, _) = app.tenant().await;
    let r = app.post("/tenants", ADMIN, &json!({"id": a})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["code"], "tenant_exists");
    let r = app.post("/tenants", ADMIN, &json!({"id": "has space"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["field"], "id");
    let r = app.call("POST", "/tenants/ghost/keys", Some(ADMIN), None, Body::empty()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.get("/tenants", ADMIN).await;
    assert!(r.body["tenants"].as_array().expect("tenants").iter().any(|t| t["id"] == a.as_str()));
}
