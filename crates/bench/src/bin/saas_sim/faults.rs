//! Faults on a schedule, printed before the run: the service killed outright, ClickHouse
//! killed and started again, Stripe answering 5xx, stalling, or acting and losing its
//! answer, Postgres connections cut. Each fault opens a window; a 5xx is judged by
//! whether it fell in one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bench::{OwnClickHouse, Service, out};
use fault_proxy::{FaultProxy, Mode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of the service process, started again at once.
    ServiceKilled,
    /// ClickHouse killed, started again after the duration.
    ClickHouseDown(Duration),
    /// Stripe answers every call with a 503.
    StripeErrors(Duration),
    /// Stripe says nothing until the caller gives up.
    StripeStalls(Duration),
    /// Stripe acts on every call and the answer is lost.
    StripeLosesAnswers(Duration),
    /// Every open Postgres connection cut; new ones refused for a moment.
    PostgresCut,
}

impl Fault {
    fn describe(self) -> String {
        let secs = |d: Duration| d.as_secs_f64();
        match self {
            Fault::ServiceKilled => "service process SIGKILLed and restarted".into(),
            Fault::ClickHouseDown(d) => {
                format!("ClickHouse killed, restarted after {:.0} s", secs(d))
            }
            Fault::StripeErrors(d) => format!("Stripe answers 503 for {:.0} s", secs(d)),
            Fault::StripeStalls(d) => {
                format!("Stripe stalls past the client timeout for {:.0} s", secs(d))
            }
            Fault::StripeLosesAnswers(d) => {
                format!("Stripe acts but its answers are lost for {:.0} s", secs(d))
            }
            Fault::PostgresCut => "every Postgres connection cut".into(),
        }
    }
}

/// A fault and when, from the start of the traffic, it strikes.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
}

/// Spreads `rounds` of every fault kind over `traffic`, leaving its last tenth quiet.
pub fn schedule(traffic: Duration, rounds: u32) -> Vec<Planned> {
    let secs = |s: u64| Duration::from_secs(s);
    let kinds = [
        Fault::StripeErrors(secs(3)),
        Fault::ServiceKilled,
        Fault::PostgresCut,
        Fault::ClickHouseDown(secs(4)),
        Fault::StripeLosesAnswers(secs(3)),
        Fault::StripeStalls(secs(8)),
    ];
    let count = kinds.len() as u32 * rounds;
    if count == 0 {
        return Vec::new();
    }
    let step = traffic.mul_f64(0.9) / (count + 1);
    (0..count)
        .map(|i| Planned {
            at: step * (i + 1),
            fault: kinds[(i as usize) % kinds.len()],
        })
        .collect()
}

pub fn print(schedule: &[Planned]) {
    out(format!("faults scheduled: {}", schedule.len()));
    for planned in schedule {
        out(format!(
            "  at {:>6.1} s  {}",
            planned.at.as_secs_f64(),
            planned.fault.describe()
        ));
    }
}

/// What the faults act on: the service, and the proxies and servers it depends on.
pub struct Deployment {
    pub service: tokio::sync::Mutex<Service>,
    pub clickhouse: tokio::sync::Mutex<OwnClickHouse>,
    pub postgres: FaultProxy,
    pub stripe: FaultProxy,
}

/// When a fault was in force, and until its effects could last: requests answered then
/// may fail as documented.
#[derive(Debug, Clone)]
pub struct Window {
    pub fault: Fault,
    pub from: Instant,
    pub to: Instant,
}

/// Time after a fault ends during which its effects may still show (a retry in flight,
/// a pool reconnecting).
const AFTERMATH: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct Windows(Mutex<Vec<Window>>);

impl Windows {
    pub fn all(&self) -> Vec<Window> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The fault in force at `at`, if any.
    pub fn at(&self, at: Instant) -> Option<Fault> {
        self.all()
            .into_iter()
            .find(|w| w.from <= at && at <= w.to)
            .map(|w| w.fault)
    }

    fn push(&self, fault: Fault, from: Instant) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Window {
                fault,
                from,
                to: Instant::now() + AFTERMATH,
            });
    }
}

/// Strikes each planned fault at its time from `started`, and lifts it.
pub async fn inject(
    deployment: &Deployment,
    schedule: &[Planned],
    started: Instant,
    windows: &Windows,
) -> anyhow::Result<()> {
    for planned in schedule {
        tokio::time::sleep_until((started + planned.at).into()).await;
        let from = Instant::now();
        out(format!(
            "fault at {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            planned.fault.describe()
        ));
        match planned.fault {
            Fault::ServiceKilled => deployment.service.lock().await.kill_and_restart().await?,
            Fault::ClickHouseDown(down) => {
                let mut clickhouse = deployment.clickhouse.lock().await;
                clickhouse.stop().await?;
                tokio::time::sleep(down).await;
                clickhouse.resume().await?;
            }
            Fault::StripeErrors(d) => stripe_mode(&deployment.stripe, Mode::ServerError, d).await,
            Fault::StripeStalls(d) => stripe_mode(&deployment.stripe, Mode::Stall, d).await,
            Fault::StripeLosesAnswers(d) => {
                stripe_mode(&deployment.stripe, Mode::LoseAnswer, d).await;
            }
            Fault::PostgresCut => {
                deployment.postgres.cut();
                tokio::time::sleep(Duration::from_millis(300)).await;
                deployment.postgres.restore();
            }
        }
        windows.push(planned.fault, from);
    }
    Ok(())
}

async fn stripe_mode(stripe: &FaultProxy, mode: Mode, lasting: Duration) {
    stripe.set(mode);
    tokio::time::sleep(lasting).await;
    stripe.restore();
}
