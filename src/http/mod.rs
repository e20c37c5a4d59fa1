//! HTTP: `/healthz` (process alive), `/readyz` (store reachable, not draining),
//! `/metrics` (Prometheus text), and the DSR intake API under `/v1/dsr`.

mod dsr_api;
mod org_api;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::runner::Shutdown;

#[derive(Clone)]
pub(crate) struct AppState {
    ctx: Arc<Context>,
    shutdown: Shutdown,
    /// DSR API requests in flight (`http.max_concurrency`): the pools behind
    /// them are bounded, so a burst waits here briefly and is then told to retry.
    dsr_slots: Arc<tokio::sync::Semaphore>,
}

/// Largest DSR API request body: a submit is three short strings.
const DSR_BODY_LIMIT: usize = 16 * 1024;

pub fn router(ctx: Arc<Context>, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/v1/dsr",
            axum::routing::post(dsr_api::submit).get(dsr_api::list),
        )
        .route("/v1/dsr/{id}", get(dsr_api::get))
        .route("/v1/dsr/{id}/verify", axum::routing::post(dsr_api::verify))
        .route(
            "/v1/orgs/{id}/deletions",
            axum::routing::post(org_api::delete),
        )
        .route(
            "/v1/orgs/{id}/exports",
            axum::routing::post(org_api::export),
        )
        .route("/v1/orgs/{id}", get(org_api::status))
        .layer(axum::extract::DefaultBodyLimit::max(DSR_BODY_LIMIT))
        .with_state(AppState {
            dsr_slots: Arc::new(tokio::sync::Semaphore::new(ctx.config.http.max_concurrency)),
            ctx,
            shutdown,
        })
}

/// Binds first (so a taken port fails `serve` at once), then serves until shutdown.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::io(
            format!("cannot listen on {addr} (http.listen / LETHE_HTTP_LISTEN)"),
            e,
        )
    })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Context>,
    shutdown: Shutdown,
) -> Result<()> {
    let mut stop = shutdown.subscribe();
    axum::serve(listener, router(ctx, shutdown))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(|e| Error::io("http server", e))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.shutdown.is_triggered() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match s.ctx.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response()
        }
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    match s.ctx.store.run_counts().await {
        Ok(counts) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            s.ctx.metrics.render(&counts),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response()
        }
    }
}
