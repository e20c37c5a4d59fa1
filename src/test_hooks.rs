//! Points where a test build can crash or pause a job between two steps, so
//! integration tests can prove what a crash or a concurrent change there
//! does. Release builds compile them to nothing.

/// `LETHE_TEST_CRASH_AT=NAME` aborts the process at the point `NAME`
/// (e.g. `files_pending`: after a batch's rows were deleted, before their files).
#[cfg(feature = "testing")]
pub fn crash_point(at: &str) {
    if std::env::var("LETHE_TEST_CRASH_AT").as_deref() == Ok(at) {
        std::process::abort();
    }
}

#[cfg(not(feature = "testing"))]
pub fn crash_point(_at: &str) {}

/// `LETHE_TEST_PAUSE_AT=NAME:MS` waits MS milliseconds at the point `NAME`
/// (e.g. `before_drop:3000`), for a test to act in between.
#[cfg(feature = "testing")]
pub async fn pause_point(at: &str) {
    let Ok(v) = std::env::var("LETHE_TEST_PAUSE_AT") else {
        return;
    };
    if let Some(ms) = v
        .strip_prefix(&format!("{at}:"))
        .and_then(|m| m.parse().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

#[cfg(not(feature = "testing"))]
pub async fn pause_point(_at: &str) {}
