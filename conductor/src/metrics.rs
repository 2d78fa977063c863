//! The conductor's Prometheus metrics (`porthole_conductor_…`), served on
//! `api.metrics_listen` by `lib::run`; README.md lists them.
//!
//! One process-wide set, [`get`], as in console-svc: the API middleware,
//! the power task and console reconcile each count with one line, without a
//! handle added to `Conductor`. In-process tests share the values, so they
//! compare before and after.
//!
//! Callers: `api::router` (the request middleware), `service::power`
//! (actions and results), `watch` and `service::console` (reconcile).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use porthole_common::metrics::http::HttpMetrics;
use porthole_common::metrics::{
    latency_histogram, seconds, Counter, Family, HistogramFamily, Registry, Unit,
};

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

pub struct ConductorMetrics {
    registry: Arc<Registry>,
    http: HttpMetrics,
    power_actions: Family<Labels2, Counter>,
    power_duration: HistogramFamily<Labels1>,
    reconciles: Family<Labels1, Counter>,
}

static METRICS: LazyLock<ConductorMetrics> = LazyLock::new(ConductorMetrics::new);

/// The process's metrics.
pub fn get() -> &'static ConductorMetrics {
    &METRICS
}

/// How a node's wanted console was found when the conductor looked.
#[derive(Clone, Copy, Debug)]
pub enum Reconcile {
    /// console-svc already serves it.
    InSync,
    /// It was missing or disabled, and console-svc took the enable.
    Restored,
    /// console-svc served a console the node does not want; it was disabled.
    Retired,
    /// Enabling it again (or disabling an unwanted one) failed; an enable's
    /// error is in the node's last_error.
    Failed,
}

impl ConductorMetrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let http = HttpMetrics::register(&mut r, "porthole_conductor");
        let power_actions = Family::<Labels2, Counter>::default();
        let power_duration = HistogramFamily::<Labels1>::new_with_constructor(latency_histogram);
        let reconciles = Family::<Labels1, Counter>::default();
        r.register(
            "porthole_conductor_power_actions",
            "Power actions finished, by action (on, off, reboot) and result (success: the BMC reports the wanted state; failure)",
            power_actions.clone(),
        );
        r.register_with_unit(
            "porthole_conductor_power_action_duration",
            "Time from a power action's start to the BMC reporting the wanted state (or the failure)",
            Unit::Seconds,
            power_duration.clone(),
        );
        r.register(
            "porthole_conductor_console_reconciles",
            "Consoles looked at on start and when console-svc reports a change: in_sync, restored (a wanted one was missing), retired (an unwanted one was disabled) or failed",
            reconciles.clone(),
        );
        for action in ["on", "off", "reboot"] {
            let _ = power_duration.get_or_create(&[("action", action)]);
            for result in ["success", "failure"] {
                let _ = power_actions.get_or_create(&[("action", action), ("result", result)]);
            }
        }
        for outcome in ["in_sync", "restored", "retired", "failed"] {
            let _ = reconciles.get_or_create(&[("outcome", outcome)]);
        }
        Self {
            registry: Arc::new(r),
            http,
            power_actions,
            power_duration,
            reconciles,
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// For `axum::middleware::from_fn_with_state(.., HttpMetrics::track)`.
    pub fn http(&self) -> HttpMetrics {
        self.http.clone()
    }

    /// `action`: `on`, `off` or `reboot`.
    pub fn power_action(&self, action: &'static str, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "failure" };
        self.power_actions
            .get_or_create(&[("action", action), ("result", result)])
            .inc();
        self.power_duration
            .get_or_create(&[("action", action)])
            .observe(seconds(took));
    }

    pub fn reconciled(&self, outcome: Reconcile) {
        let outcome = match outcome {
            Reconcile::InSync => "in_sync",
            Reconcile::Restored => "restored",
            Reconcile::Retired => "retired",
            Reconcile::Failed => "failed",
        };
        self.reconciles.get_or_create(&[("outcome", outcome)]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(series: &str) -> f64 {
        let text = porthole_common::metrics::encode(&get().registry());
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn power_and_reconcile_counts_move() {
        let failed = r#"porthole_conductor_power_actions_total{action="reboot",result="failure"}"#;
        let took = r#"porthole_conductor_power_action_duration_seconds_count{action="reboot"}"#;
        let restored = r#"porthole_conductor_console_reconciles_total{outcome="restored"}"#;
        let (f0, t0, r0) = (sample(failed), sample(took), sample(restored));
        get().power_action("reboot", false, Duration::from_millis(30));
        get().reconciled(Reconcile::Restored);
        assert!(sample(failed) >= f0 + 1.0);
        assert!(sample(took) >= t0 + 1.0);
        assert!(sample(restored) >= r0 + 1.0);
    }
}
