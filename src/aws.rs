//! The AWS SDK plumbing S3 and KMS share: the shared config loaded with one
//! HTTPS client (rustls on *ring*, the one TLS crypto provider in this binary,
//! as sqlx and lettre use), and SDK errors as a person can act on them — the
//! service's code and message with the HTTP status and what to check, or why
//! a request never got an answer, not the SDK's debug chain.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// The shared SDK config: credentials and region from the environment (or
/// `region`), HTTP through rustls with the *ring* provider.
pub async fn sdk_config(region: Option<&str>) -> aws_config::SdkConfig {
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http_client());
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    loader.load().await
}

/// The SDK's HTTPS client on rustls with the *ring* provider.
pub fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

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
