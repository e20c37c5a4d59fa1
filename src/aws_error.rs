//! AWS SDK errors (S3, KMS) as a person can act on them: the service's code
//! and message with the HTTP status and what to check, or why a request never
//! got an answer — not the SDK's debug chain with the raw response.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

pub fn describe<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("unknown error");
            let status = se.raw().status().as_u16();
            match se.err().message().filter(|m| !m.is_empty()) {
                Some(m) => format!("{code} (HTTP {status}): {m}{}", hint(code)),
                None => format!("{code} (HTTP {status}){}", hint(code)),
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => format!(
            "no answer from the service ({}) — check the configured endpoint and region, and the network",
            DisplayErrorContext(e)
        ),
        _ => DisplayErrorContext(e).to_string(),
    }
}

/// What to check for the error codes operators meet most.
fn hint(code: &str) -> &'static str {
    match code {
        "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken"
        | "UnrecognizedClientException" | "InvalidSignatureException" => {
            " — the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the role)"
        }
        "AccessDenied" | "AccessDeniedException" => {
            " — the credentials lack permission: the bucket or key policy, or the IAM role, must allow it"
        }
        "NoSuchBucket" => " — create the bucket or fix the bucket in object_store.url",
        "NotFoundException" => " — the KMS key does not exist in this account and region",
        "DisabledException" | "KMSInvalidStateException" => {
            " — the KMS key is disabled or pending deletion"
        }
        "SlowDown" | "ServiceUnavailable" | "InternalError" | "ThrottlingException" => {
            " — the service kept failing after retries; the run will be retried"
        }
        _ => "",
    }
}
