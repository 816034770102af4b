//! The routes. Handlers live in one file per resource.

pub mod alerts;
pub mod events;
pub mod objects;
pub mod ops;
pub mod policies;
pub mod stream_config;
pub mod tenants;

use crate::error::ApiError;
use crate::state::AppState;
use axum::routing::{get, post};
use axum::Router;
use objects::{InhibitRules, Policies, Receivers, Silences};

pub fn router(_state: AppState) -> Router<AppState> {
    Router::new()
        .route("/events", post(events::publish))
        .route("/events/bulk", post(events::bulk))
        .route("/events/{tenant}", get(events::recent))
        .route("/events/{tenant}/stream", get(events::live))
        .route("/stream-config/{tenant}", get(stream_config::get_config).put(stream_config::put_config))
        .route("/tenants", post(tenants::create).get(tenants::list))
        .route("/tenants/{tenant}", get(tenants::get_one))
        .route("/tenants/{tenant}/keys", post(tenants::create_key))
        .route("/tenants/{tenant}/policies", get(objects::list::<Policies>))
        .route(
            "/tenants/{tenant}/policies/{id}",
            get(objects::get_one::<Policies>).put(objects::put::<Policies>).delete(objects::delete::<Policies>),
        )
        .route("/policy-packs", get(policies::list_packs))
        .route("/tenants/{tenant}/policy-packs/{pack}", post(policies::enable_pack))
        .route("/tenants/{tenant}/alerts", get(alerts::list))
        .route("/tenants/{tenant}/alerts/{id}", get(alerts::get_one))
        .route("/tenants/{tenant}/alerts/{id}/acknowledge", post(alerts::acknowledge))
        .route("/tenants/{tenant}/alerts/{id}/resolve", post(alerts::resolve))
        .route("/tenants/{tenant}/silences", get(objects::list::<Silences>))
        .route(
            "/tenants/{tenant}/silences/{id}",
            get(objects::get_one::<Silences>).put(objects::put::<Silences>).delete(objects::delete::<Silences>),
        )
        .route("/tenants/{tenant}/inhibit-rules", get(objects::list::<InhibitRules>))
        .route(
            "/tenants/{tenant}/inhibit-rules/{id}",
            get(objects::get_one::<InhibitRules>)
                .put(objects::put::<InhibitRules>)
                .delete(objects::delete::<InhibitRules>),
        )
        .route("/tenants/{tenant}/receivers", get(objects::list::<Receivers>))
        .route(
            "/tenants/{tenant}/receivers/{id}",
            get(objects::get_one::<Receivers>).put(objects::put::<Receivers>).delete(objects::delete::<Receivers>),
        )
        .route("/tenants/{tenant}/policies/{id}/test", post(policies::test))
        .route("/metrics/{tenant}", get(ops::tenant_metrics))
        .route("/metrics", get(ops::prometheus))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/openapi.json", get(ops::openapi))
        .route("/event-types", get(ops::event_types))
        .route("/event-types/{event_type}/schema", get(ops::event_type_schema))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route (GET /openapi.json lists them)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        "this route does not take that method",
    )
}
