//! The DSR intake API for the application:
//! `POST /v1/dsr`, `GET /v1/dsr/{id}`, `GET /v1/dsr?status=`.
//! Authenticated by `Authorization: Bearer KEY`, checked against the SHA-256
//! hashes of `[[http.api_keys]]`, each a named caller (the audit actor
//! `http:NAME`) with scopes `submit` and/or `read`, optionally for one org; `Idempotency-Key` makes a retried submit one request,
//! and is refused (422) when reused for a different request. At most
//! `http.max_concurrency` requests run at once; a burst beyond that waits up to
//! `http.queue_timeout`, then gets 503 with `Retry-After` (never a 500).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::config::{ApiKey, ApiScope};
use crate::dsr::{self, Intake, Submission};
use crate::error::Error;
use crate::store::DsrState;

pub(super) fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// The caller's API key, if it is configured and has `scope`: else 401
/// (no or unknown key) or 403 (a key without that scope).
pub(super) fn authenticate(
    s: &AppState,
    headers: &HeaderMap,
    scope: ApiScope,
) -> Result<ApiKey, Box<Response>> {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(key) = key else {
        return Err(Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer KEY`",
        )));
    };
    let hash = hex::encode(Sha256::digest(key.trim().as_bytes()));
    let Some(k) = s.ctx.config.http.api_keys.iter().find(|k| k.sha256 == hash) else {
        return Err(Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "unknown API key",
        )));
    };
    if !k.allows(scope) {
        return Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            format!(
                "API key `{}` has no `{}` scope (see [[http.api_keys]] scopes)",
                k.name,
                scope.as_str()
            ),
        )));
    }
    Ok(k.clone())
}

/// What an org-scoped key may read: only the requests it submitted.
fn visible_to(key: &ApiKey, r: &crate::store::DsrRequest) -> bool {
    key.org.is_none() || r.source == source_of(key)
}

/// The request source recorded for a key's submits.
fn source_of(key: &ApiKey) -> String {
    format!("api:{}", key.name)
}

/// 503 with `Retry-After`: the client should come back, nothing is wrong with its request.
fn busy(message: &str) -> Response {
    let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// One of the `http.max_concurrency` slots, waiting up to `http.queue_timeout`.
pub(super) async fn admit(s: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, Response> {
    let wait = s.ctx.config.http.queue_timeout;
    match tokio::time::timeout(wait, s.dsr_slots.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(busy(
            "too many DSR API requests at once; retry after Retry-After seconds",
        )),
    }
}

/// A database that is saturated or briefly unreachable: worth a retry, not a 500.
fn unavailable(e: &Error) -> bool {
    match e {
        Error::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => true,
        // too_many_connections, cannot_connect_now, connection exceptions
        Error::Database(sqlx::Error::Database(d)) => d
            .code()
            .is_some_and(|c| c == "53300" || c == "57P03" || c.starts_with("08")),
        _ => false,
    }
}

pub(super) fn from_error(e: Error) -> Response {
    if unavailable(&e) {
        tracing::warn!(error = %e, "DSR API: database busy or unreachable; answered 503");
        return busy("the database is busy; retry after Retry-After seconds");
    }
    match e {
        Error::Usage(m) | Error::Config { message: m, .. } => {
            problem(StatusCode::UNPROCESSABLE_ENTITY, m)
        }
        Error::NotFound(m) => problem(StatusCode::NOT_FOUND, m),
        Error::Refused(m) => problem(StatusCode::CONFLICT, m),
        Error::Forbidden(m) => problem(StatusCode::FORBIDDEN, m),
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
    /// Only this org's workspace (a key that acts for an org always has its org).
    org: Option<String>,
    /// `false`: the subject's identity is still to be checked (`dsr verify`).
    identity_verified: Option<bool>,
    /// A rectification's corrections: `{"TABLE.COLUMN": "VALUE", …}`.
    set: Option<std::collections::BTreeMap<String, String>>,
}

/// A rectification's `set`, read as the CLI's `--set` items are.
fn corrections(body: &SubmitBody) -> Result<Vec<crate::store::Correction>, String> {
    let set: Vec<String> = body
        .set
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    dsr::parse_set(&set).map_err(|e| format!("set: {e}"))
}

/// 422: the idempotency key was first used for request `first`.
fn key_reused(first: i64) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "error": format!(
                "Idempotency-Key conflict: the same key was already used for a different request (request {first}); a new request needs a new key"
            ),
            "conflict": "idempotency_key",
            "request_id": first,
        })),
    )
        .into_response()
}

/// The `Idempotency-Key` header: absent, or one value of 1 to 255 visible
/// ASCII characters. Anything else is refused, not ignored: a client that
/// sent a key relies on it.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("Idempotency-Key: send one header, not several".into());
    }
    let b = v.as_bytes();
    if b.is_empty() || b.len() > 255 || !b.iter().all(|c| (0x21..=0x7e).contains(c)) {
        return Err(format!(
            "Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces or non-ASCII), e.g. a UUID; got {} bytes",
            b.len()
        ));
    }
    Ok(Some(String::from_utf8_lossy(b).into_owned()))
}

pub async fn submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<SubmitBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let key = match authenticate(&s, &headers, ApiScope::Submit) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let idem = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(m) => return problem(StatusCode::BAD_REQUEST, m),
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body: larger than {} bytes", super::DSR_BODY_LIMIT),
            )
        }
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let _slot = match admit(&s).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (source, actor) = (source_of(&key), format!("http:{}", key.name));
    // Idempotency keys are per caller: another key's retry never replays (and
    // so never reveals) this caller's request.
    let idem = idem.map(|k| format!("{}:{k}", key.name));
    let corrections = match corrections(&body) {
        Ok(c) => c,
        Err(m) => return problem(StatusCode::BAD_REQUEST, m),
    };
    let sub = Submission {
        kind: &body.kind,
        subject: &body.subject,
        jurisdiction: body.jurisdiction.as_deref(),
        source: &source,
        idempotency_key: idem.as_deref(),
        actor: &actor,
        org: body.org.as_deref(),
        for_org: key.org.as_deref(),
        unverified: body.identity_verified == Some(false),
        corrections: &corrections,
    };
    let now = chrono::Utc::now();
    match dsr::submit(&s.ctx, sub).await {
        Ok(Intake::Accepted(r)) => {
            (StatusCode::CREATED, Json(dsr::view(&s.ctx, &r, now))).into_response()
        }
        Ok(Intake::Replayed(r)) => {
            (StatusCode::OK, Json(dsr::view(&s.ctx, &r, now))).into_response()
        }
        Ok(Intake::KeyReused(first)) => key_reused(first.id),
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
    let key = match authenticate(&s, &headers, ApiScope::Read) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let _slot = match admit(&s).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match s.ctx.store.dsr_get(id).await {
        Ok(Some(r)) if visible_to(&key, &r) => {
            Json(dsr::view(&s.ctx, &r, chrono::Utc::now())).into_response()
        }
        // Another caller's request is as absent as a missing one.
        Ok(_) => problem(StatusCode::NOT_FOUND, format!("no request {id}")),
        Err(e) => from_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    method: String,
    by: String,
}

/// `POST /v1/dsr/{id}/verify` with `{"method", "by"}`: how the identity of a
/// request that arrived unverified was checked (a `submit` key, its own requests).
pub async fn verify(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Result<Json<VerifyBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let key = match authenticate(&s, &headers, ApiScope::Submit) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let _slot = match admit(&s).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // Only the caller's own requests, whatever the key's org.
    match s.ctx.store.dsr_get(id).await {
        Ok(Some(r)) if r.source == source_of(&key) => {}
        Ok(_) => return problem(StatusCode::NOT_FOUND, format!("no request {id}")),
        Err(e) => return from_error(e),
    }
    let actor = format!("http:{}", key.name);
    match dsr::verify(&s.ctx, id, (&body.method, &body.by), &actor).await {
        Ok(r) if key.scopes.contains(&ApiScope::Read) => {
            Json(dsr::view(&s.ctx, &r, chrono::Utc::now())).into_response()
        }
        // A submit-only key learns the outcome, not the record.
        Ok(r) => Json(json!({"id": r.id, "state": r.state, "due_at": r.due_at})).into_response(),
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
    let key = match authenticate(&s, &headers, ApiScope::Read) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let _slot = match admit(&s).await {
        Ok(p) => p,
        Err(r) => return r,
    };
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
            let requests: Vec<_> = rs
                .iter()
                .filter(|r| visible_to(&key, r))
                .map(|r| dsr::view(&s.ctx, r, now))
                .collect();
            Json(json!({ "requests": requests })).into_response()
        }
        Err(e) => from_error(e),
    }
}
