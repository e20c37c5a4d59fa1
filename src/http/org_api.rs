//! The org API: `POST /v1/orgs/{id}/deletions`, `POST /v1/orgs/{id}/exports`
//! (scope `submit`) and `GET /v1/orgs/{id}` (scope `read`), with the DSR API's
//! keys. A key that acts for one org may act on that org only (403). A
//! deletion answers 201 with the scheduled request, 409 under a legal hold or
//! while one is scheduled; an export answers 202 at once and runs in the
//! background (its state is in `GET /v1/orgs/{id}`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::dsr_api::{admit, authenticate, from_error, problem};
use super::AppState;
use crate::config::{ApiKey, ApiScope};
use crate::org::{self, DeletionAsk};

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    reason: String,
    #[serde(default)]
    classes: Vec<String>,
    /// The cooling-off period, e.g. `7d` (default) or `0s`.
    after: Option<String>,
    contact: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    #[serde(default)]
    classes: Vec<String>,
}

/// The key, if it has `scope` and may act for `org`.
fn caller(
    s: &AppState,
    headers: &HeaderMap,
    scope: ApiScope,
    org: &str,
) -> Result<ApiKey, Box<Response>> {
    let key = authenticate(s, headers, scope)?;
    match &key.org {
        Some(own) if own != org => Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            format!("API key `{}` acts for org {own}, not org {org}", key.name),
        ))),
        _ => Ok(key),
    }
}

fn body<T>(b: Body<T>) -> Result<T, Box<Response>> {
    b.map(|Json(v)| v)
        .map_err(|e| Box::new(problem(StatusCode::BAD_REQUEST, format!("body: {e}"))))
}

pub async fn delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(org): Path<String>,
    b: Body<DeleteBody>,
) -> Response {
    let key = match caller(&s, &headers, ApiScope::Submit, &org) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let b = match body(b) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let _slot = match admit(&s).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let after = match crate::policy::parse_duration(b.after.as_deref().unwrap_or("7d")) {
        Ok(d) => d,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, format!("after: {e}")),
    };
    let actor = format!("http:{}", key.name);
    let ask = DeletionAsk {
        org: &org,
        classes: &b.classes,
        reason: &b.reason,
        after,
        contact: b.contact.as_deref(),
        actor: &actor,
    };
    match org::request_deletion(&s.ctx, ask).await {
        Ok(r) => (StatusCode::CREATED, Json(r)).into_response(),
        Err(e) => from_error(e),
    }
}

pub async fn export(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(org): Path<String>,
    raw: axum::body::Bytes,
) -> Response {
    let key = match caller(&s, &headers, ApiScope::Submit, &org) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    // The body is optional: none exports every class.
    let b: ExportBody = if raw.iter().all(u8::is_ascii_whitespace) {
        ExportBody::default()
    } else {
        match serde_json::from_slice(&raw) {
            Ok(b) => b,
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    let _slot = match admit(&s).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let actor = format!("http:{}", key.name);
    match org::record_export(&s.ctx, &org, &b.classes, &actor).await {
        Ok(r) => {
            let (ctx, run) = (s.ctx.clone(), r.clone());
            tokio::spawn(async move {
                if let Err(e) = org::run_export(&ctx, &run, &actor).await {
                    tracing::error!(request = run.id, org = %run.org, error = %e, "org export failed");
                }
            });
            (StatusCode::ACCEPTED, Json(r)).into_response()
        }
        Err(e) => from_error(e),
    }
}

pub async fn status(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Response {
    if let Err(r) = caller(&s, &headers, ApiScope::Read, &org) {
        return *r;
    }
    match org::status(&s.ctx, &org).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => from_error(e),
    }
}
