//! The DSR intake API for the application:
//! `POST /v1/dsr`, `GET /v1/dsr/{id}`, `GET /v1/dsr?status=`.
//! Authenticated by `Authorization: Bearer KEY`, checked against SHA-256
//! hashes in config; `Idempotency-Key` makes a retried submit one request.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::dsr::{self, Intake, Submission};
use crate::error::Error;
use crate::store::DsrState;

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// `Some(401 response)` unless the request carries a configured API key.
fn unauthorized(s: &AppState, headers: &HeaderMap) -> Option<Response> {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(key) = key else {
        return Some(problem(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer KEY`",
        ));
    };
    let hash = hex::encode(Sha256::digest(key.trim().as_bytes()));
    if s.ctx.config.http.api_key_hashes.contains(&hash) {
        None
    } else {
        Some(problem(StatusCode::UNAUTHORIZED, "unknown API key"))
    }
}

fn from_error(e: Error) -> Response {
    match e {
        Error::Usage(m) | Error::Config { message: m, .. } => {
            problem(StatusCode::UNPROCESSABLE_ENTITY, m)
        }
        Error::NotFound(m) => problem(StatusCode::NOT_FOUND, m),
        other => {
            tracing::error!(error = %other, "DSR API");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; see the server log",
            )
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    kind: String,
    subject: String,
    jurisdiction: Option<String>,
}

pub async fn submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<SubmitBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let idem = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let sub = Submission {
        kind: &body.kind,
        subject: &body.subject,
        jurisdiction: body.jurisdiction.as_deref(),
        source: "api",
        idempotency_key: idem.as_deref(),
    };
    let now = chrono::Utc::now();
    match dsr::submit(&s.ctx, sub).await {
        Ok(Intake::Accepted(r)) => {
            (StatusCode::CREATED, Json(dsr::view(&s.ctx, &r, now))).into_response()
        }
        Ok(Intake::Replayed(r)) => {
            (StatusCode::OK, Json(dsr::view(&s.ctx, &r, now))).into_response()
        }
        Ok(Intake::Rejected {
            request,
            blocking_orgs,
        }) => {
            let status = match request.reason.as_deref() {
                Some("sole_owner") | Some("duplicate") | Some("legal_hold") => StatusCode::CONFLICT,
                Some("not_found") => StatusCode::NOT_FOUND,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let mut v = dsr::view(&s.ctx, &request, now);
            v["blocking_orgs"] = json!(blocking_orgs);
            (status, Json(v)).into_response()
        }
        Err(e) => from_error(e),
    }
}

pub async fn get(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    match s.ctx.store.dsr_get(id).await {
        Ok(Some(r)) => Json(dsr::view(&s.ctx, &r, chrono::Utc::now())).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no request {id}")),
        Err(e) => from_error(e),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let state = match q.status.as_deref().map(DsrState::parse).transpose() {
        Ok(st) => st,
        Err(e) => return from_error(e),
    };
    match s
        .ctx
        .store
        .dsr_list(state, q.limit.unwrap_or(100).clamp(1, 1000))
        .await
    {
        Ok(rs) => {
            let now = chrono::Utc::now();
            Json(json!({"requests": rs.iter().map(|r| dsr::view(&s.ctx, r, now)).collect::<Vec<_>>()})).into_response()
        }
        Err(e) => from_error(e),
    }
}
