//! The vocabulary promises are written in: durations, schedules, retention
//! periods, retry backoff. Pure values with their parsers; no I/O, no other module of this
//! crate below it.

mod backoff;
mod duration;
mod duration_param;
mod retention;
mod schedule;

pub use backoff::retry_delay;
pub(crate) use duration::parse_bounded;
pub use duration::{format_duration, parse_duration, MAX_DURATION};
pub use duration_param::DurationParam;
pub use retention::{Period, RetentionRule};
pub use schedule::Schedule;
