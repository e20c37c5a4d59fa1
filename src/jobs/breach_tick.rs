//! `breach.tick`: reminders and escalations before breach-notification deadlines.

use serde_json::Value;

use crate::error::Result;
use crate::runner::{Job, JobContext};

pub struct BreachTick;

impl Job for BreachTick {
    const KIND: &'static str = "breach.tick";
    type Params = crate::breach::TickParams;
    type Output = Value;

    async fn run(jc: &JobContext, params: Self::Params) -> Result<Value> {
        crate::breach::tick_job(jc, params).await
    }
}
