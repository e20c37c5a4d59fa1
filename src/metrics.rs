//! Prometheus metrics. Counters and durations come from this process; queue
//! depth and runs by state are read from the store at scrape time, so every
//! replica reports the same cluster-wide picture.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::store::{RunCount, RunState};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    attempts: IntCounterVec,
    duration: HistogramVec,
    runs: IntGaugeVec,
    queue_depth: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Static names and labels: these constructors only fail on invalid names.
        let attempts = IntCounterVec::new(
            Opts::new(
                "lethe_job_attempts_total",
                "Job attempts finished by this process, by job and outcome",
            ),
            &["job", "outcome"],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "lethe_job_duration_seconds",
                "Wall time of job attempts by job",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
            &["job"],
        )
        .expect("static metric definition");
        let runs = IntGaugeVec::new(
            Opts::new("lethe_runs", "Runs in the queue's history by job and state"),
            &["job", "state"],
        )
        .expect("static metric definition");
        let queue_depth = IntGaugeVec::new(
            Opts::new("lethe_queue_depth", "Runs waiting or running, by state"),
            &["state"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(attempts.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(runs.clone()),
            Box::new(queue_depth.clone()),
        ] {
            registry.register(c).expect("metrics registered once");
        }
        Metrics {
            registry,
            attempts,
            duration,
            runs,
            queue_depth,
        }
    }

    pub fn observe_attempt(&self, job: &str, outcome: &str, seconds: f64) {
        self.attempts.with_label_values(&[job, outcome]).inc();
        self.duration.with_label_values(&[job]).observe(seconds);
    }

    /// Renders the text format, after refreshing the store-derived gauges.
    pub fn render(&self, counts: &[RunCount]) -> String {
        self.runs.reset();
        self.queue_depth.reset();
        for s in [RunState::Available, RunState::Retryable, RunState::Running] {
            self.queue_depth.with_label_values(&[s.as_str()]).set(0);
        }
        for c in counts {
            self.runs
                .with_label_values(&[&c.job, c.state.as_str()])
                .set(c.count);
            if !c.state.is_final() {
                self.queue_depth
                    .with_label_values(&[c.state.as_str()])
                    .add(c.count);
            }
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
