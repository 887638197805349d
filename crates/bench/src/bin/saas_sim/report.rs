//! The simulation's report: what ran, what the books found, and the verdict.

use std::time::Duration;

use std::collections::BTreeMap;

use bench::{ms, out, percentile};

use crate::api::Api;
use crate::books::{Books, Tally};
use crate::checks;
use crate::faults::Windows;
use crate::mail::MailTally;
use crate::run::Settings;
use crate::stripe_view::StripeView;
use crate::{life, population, traffic};

#[allow(clippy::too_many_arguments)]
pub fn report(
    api: &Api,
    books: &Books,
    population: &population::Population,
    traffic: &traffic::TrafficTally,
    life: &life::LifeTally,
    mails: &MailTally,
    erasures: Tally,
    verdict: &checks::Verdict,
    stripe: &StripeView,
    windows: &Windows,
    (traffic_took, total_took): (Duration, Duration),
    settings: &Settings,
) {
    let stats = api.stats();
    let requests: usize = stats.values().map(|s| s.latencies.len()).sum();
    let unanswered: u64 = stats.values().map(|s| s.unanswered).sum();
    // A 5xx is allowed only while a fault is in force, and then only the documented
    // 503 (a dependency down).
    let (mut during_faults, mut undocumented) = (BTreeMap::<String, u64>::new(), 0u64);
    for (endpoint, stat) in &stats {
        for (at, status) in &stat.server_errors {
            match windows.at(*at) {
                Some(fault) if *status == 503 => {
                    *during_faults.entry(format!("{fault:?}")).or_default() += 1;
                }
                fault => {
                    undocumented += 1;
                    books.violation(format!(
                        "{endpoint} answered {status} {}",
                        fault.map_or("outside any fault".to_owned(), |f| format!("during {f:?}"))
                    ));
                }
            }
        }
    }
    out("");
    out("== saas-sim report ==");
    out(format!(
        "run: {:.1} s in all; traffic {:.1} s over {} cycles of {} s",
        total_took.as_secs_f64(),
        traffic_took.as_secs_f64(),
        settings.cycles,
        settings.cycle_secs
    ));
    out(format!(
        "requests: {requests} ({:.0} per hour sustained over the traffic phase)",
        requests as f64 / traffic_took.as_secs_f64().max(0.001) * 3600.0
    ));
    out("latency per endpoint (p50 / p99 ms, answered, 5xx, unanswered):");
    for (endpoint, stat) in stats {
        let mut samples = stat.latencies.clone();
        out(format!(
            "  {endpoint:<34} {:>8.1} / {:>8.1}  {:>8}  {:>5}  {:>5}",
            ms(percentile(&mut samples, 50.0)),
            ms(percentile(&mut samples, 99.0)),
            stat.latencies.len(),
            stat.server_errors.len(),
            stat.unanswered
        ));
    }
    out(format!(
        "faults injected: {}; requests unanswered (connection refused or cut): {unanswered}",
        windows.all().len()
    ));
    for (fault, count) in &during_faults {
        out(format!("  503 while {fault}: {count}"));
    }
    out("invariants (checked, violated):");
    let line = |name: &str, tally: Tally| {
        out(format!(
            "  {name:<58} {:>8} {:>6}",
            tally.checked, tally.violated
        ));
    };
    line("signups ended as their cards say", population.outcomes);
    line("retried batches counted once", traffic.retries);
    line("in-batch twins counted once", traffic.twins);
    line("isolation probes refused", traffic.isolation);
    line(
        "rotated keys: new one works, revoked one refused",
        life.rotations,
    );
    line(
        "suspended tenants served again once reactivated",
        life.suspensions,
    );
    line(
        "declining cards: suspended by dunning, back with a new card",
        life.dunning,
    );
    line(
        "confirmation mailed, its token works once",
        mails.confirmations,
    );
    line(
        "suspended and confirmed: every win-back message arrived",
        life.winbacks,
    );
    line(
        "exports hold the tenant's data, erasures taken",
        life.erasures,
    );
    line(
        "erased: nothing left in the API, Postgres, ClickHouse, Stripe",
        erasures,
    );
    line(
        "acknowledged usage = invoiced usage (tenant, period)",
        verdict.usage_invoiced_once,
    );
    line(
        "ClickHouse = acknowledged usage, each event once",
        verdict.clickhouse_equal,
    );
    line("invoice total = independent re-rating", verdict.rerated);
    line(
        "Stripe invoice = ours line for line, paid once",
        verdict.stripe_equal,
    );
    line(
        "hard limits held (tenant, period, metric)",
        verdict.limits_held,
    );
    line("current usage = books (tenant)", verdict.current_usage);
    line(
        "every ended period invoiced once (tenant)",
        verdict.every_period_once,
    );
    line("audit chain verifies", verdict.audit_chain_valid);
    line(
        "batches whose answers were lost counted once (tenant)",
        verdict.lost_answers_counted_once,
    );
    line(
        "no 5xx but a documented 503 during a fault",
        Tally {
            checked: requests as u64,
            violated: undocumented,
        },
    );
    out(format!(
        "mail: {} confirmations, {} win-back messages, {} other; {} delivered twice \
         (same Message-ID); {} tenants never confirmed, and were sent nothing else",
        mails.confirmation_mails,
        mails.winback_mails,
        mails.other_mails,
        mails.twins,
        mails.unconfirmed
    ));
    out(format!(
        "invoices: {} of ours, {} at Stripe",
        verdict.invoices, stripe.invoices
    ));
    out(format!("violations: {}", books.violations().len()));
}
