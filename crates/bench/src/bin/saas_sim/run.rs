//! One simulation: a fresh deployment (the service as a child process, its own Stripe
//! fake), the population, the traffic, the checks and the report.

use std::time::{Duration, Instant};

use anyhow::Context;

use bench::{APP, OwnClickHouse, OwnLocalstripe, Service, fresh_database_on, out};
use fault_proxy::FaultProxy;
use reqwest::Method;

use crate::api::{Api, As};
use crate::books::Books;
use crate::faults::{self, Deployment, Windows};
use crate::mail::{self, MailTally, Mailbox};
use crate::report::report;
use crate::stripe_view::StripeSource;
use crate::usage_store::UsageStore;
use crate::{checks, settling};
use crate::{erasure_checks, life, population, rerate, traffic};

const OPERATOR_TOKEN: &str = "saas-sim-operator-token";
const STRIPE_KEY: &str = "sk_test_saas_sim";

pub struct Settings {
    pub tenants: usize,
    pub cycles: u32,
    pub cycle_secs: u64,
    pub concurrency: usize,
    pub decline_share: f64,
    /// Share of tenants that never confirm their address (and so are never mailed).
    pub unconfirmed_share: f64,
    pub seed: u64,
    pub database: String,
    /// Rounds of every fault kind during the traffic.
    pub fault_rounds: u32,
}

/// Runs the simulation and prints its report; whether it found no violation.
pub async fn simulate(settings: &Settings) -> anyhow::Result<bool> {
    out(format!(
        "saas-sim: {} tenants, {} cycles of {} s, {} clients at once",
        settings.tenants, settings.cycles, settings.cycle_secs, settings.concurrency
    ));
    // The service reaches Postgres and Stripe through fault proxies, and ClickHouse is
    // a server of the simulator's own: the faults strike there.
    let clickhouse = OwnClickHouse::start().await?;
    fresh_database_on(&settings.database, &clickhouse.url).await?;
    let stripe = OwnLocalstripe::start().await?;
    let stripe_proxy = FaultProxy::start(stripe.url.trim_start_matches("http://").to_owned()).await;
    let pg_port = std::env::var("SAAS_STACK_PG_PORT").unwrap_or_else(|_| "5432".into());
    let postgres_proxy = FaultProxy::start(format!("127.0.0.1:{pg_port}")).await;
    let database_url = format!(
        "postgres://{APP}@127.0.0.1:{}/{}",
        postgres_proxy.port, settings.database
    );
    let cycle = format!("{}s", settings.cycle_secs);
    let mailbox = Mailbox::start().await;
    let mail_url = mailbox.url();
    let offer_from = mail::WINBACK_OFFER_FROM.to_string();
    let service = Service::start(
        &settings.database,
        &[
            ("SAAS_DATABASE__URL", &database_url),
            ("SAAS_CLICKHOUSE__URL", &clickhouse.url),
            ("SAAS_STRIPE__SECRET_KEY", STRIPE_KEY),
            ("SAAS_STRIPE__API_BASE", &stripe_proxy.url()),
            // Shorter than a Stripe stall (so that stalled calls time out), longer than
            // the fake takes under load.
            ("SAAS_STRIPE__TIMEOUT_MS", "6000"),
            ("SAAS_OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("SAAS_BILLING__CYCLE", &cycle),
            ("SAAS_BILLING__CLOSE_GRACE_MS", "1000"),
            ("SAAS_BILLING__RUN_INTERVAL_MS", "500"),
            // Dunning in seconds, so that a declining card ends in a suspension in time.
            ("SAAS_BILLING__DUNNING_RETRIES", "2s,4s,6s"),
            ("SAAS_SIGNUPS__RATE_PER_MINUTE", "1000000"),
            ("SAAS_HTTP__SENSITIVE_WRITES_PER_MINUTE", "1000000"),
            ("SAAS_WORKERS__JOB_CONCURRENCY", "16"),
            ("SAAS_WORKERS__RELAY_IDLE_MS", "20"),
            ("SAAS_SMTP__URL", &mail_url),
            ("SAAS_SMTP__POLL_MS", "200"),
            ("SAAS_WINBACK__STEPS", mail::WINBACK_STEPS),
            ("SAAS_WINBACK__OFFER_FROM_STEP", &offer_from),
        ],
    )
    .await?;
    let api = Api::new(service.url(""), OPERATOR_TOKEN.to_owned());
    let books = Books::default();
    let plans = api
        .call("GET /v1/plans", Method::GET, "/v1/plans", As::Anyone, None)
        .await?;
    let plans = rerate::parse_plans(&plans.body)?;

    let started = Instant::now();
    let declining = declining_card(&stripe.url).await?;
    let population = population::sign_up(
        &api,
        &books,
        settings.tenants,
        &declining,
        settings.decline_share,
        settings.concurrency,
        settings.seed,
    )
    .await?;
    let signups_took = started.elapsed();
    out(format!(
        "population: {} tenants active, {} signups ended as their cards say, in {:.1} s",
        population.tenants.len(),
        population.outcomes.checked - population.outcomes.violated,
        signups_took.as_secs_f64()
    ));
    let confirmations = mailbox
        .confirm(
            &api,
            &books,
            &population.tenants,
            settings.unconfirmed_share,
            settings.concurrency,
            settings.seed,
        )
        .await;
    out(format!(
        "mail: {} confirmation mails read, {} addresses confirmed through the API",
        confirmations.checked,
        population
            .tenants
            .iter()
            .filter(|t| t.live.state().confirmed)
            .count()
    ));

    let deployment = Deployment {
        service: tokio::sync::Mutex::new(service),
        clickhouse: tokio::sync::Mutex::new(clickhouse),
        postgres: postgres_proxy,
        stripe: stripe_proxy,
    };
    let source = StripeSource {
        base: stripe.url.clone(),
        key: STRIPE_KEY.to_owned(),
    };
    let traffic_started = Instant::now();
    let traffic_length = Duration::from_secs(settings.cycle_secs * u64::from(settings.cycles));
    let until = traffic_started + traffic_length;
    let schedule = faults::schedule(traffic_length, settings.fault_rounds);
    faults::print(&schedule);
    let windows = Windows::default();
    let world = life::World {
        api: &api,
        books: &books,
        stripe: &source,
        mailbox: &mailbox,
    };
    let ((traffic, traffic_took), life, injected) = tokio::join!(
        async {
            let tally = traffic::run(
                &api,
                &books,
                &population.tenants,
                until,
                settings.concurrency,
                settings.seed,
            )
            .await;
            (tally, traffic_started.elapsed())
        },
        life::run(
            &world,
            &population.tenants,
            until,
            Duration::from_millis(500),
            settings.seed,
        ),
        faults::inject(&deployment, &schedule, traffic_started, &windows),
    );
    injected?;
    let traffic_ended = chrono::Utc::now();
    out(format!(
        "life: {} keys rotated, {} suspensions, {} cards declining, {} erasures, {} upgrades \
         at once, {} downgrades at the period's end, {} changes turned down as busy",
        life.rotations.checked,
        life.suspensions.checked,
        life.dunning.checked,
        life.erasures.checked,
        life.upgrades,
        life.downgrades,
        life.busy
    ));
    out(format!(
        "traffic: {} batches, {} events acknowledged, {} refused at hard limits, {} \
         attempts sent again as too many of the tenant's were in flight, {} stored by an \
         attempt whose answer was lost, in {:.1} s",
        traffic.batches,
        traffic.events_acknowledged,
        traffic.refused_at_limit,
        traffic.throttled,
        traffic.answers_lost,
        traffic_took.as_secs_f64()
    ));

    // Every period that ended is invoiced after the close grace and collected; give it
    // a few cycles' time (and a payment lease left by a killed process time to expire),
    // then read Stripe's side and check everything.
    tokio::time::sleep(Duration::from_secs(settings.cycle_secs) + Duration::from_secs(2)).await;
    let settle = Duration::from_secs(settings.cycle_secs * 4)
        + tenancy::payment_lock::LEASE_TTL
        + Duration::from_secs(60);
    settling::wait_until_settled(&api, &books, &population.tenants, traffic_ended, settle).await?;
    let clickhouse_url = deployment.clickhouse.lock().await.url.clone();
    let stored = UsageStore::load(&clickhouse_url, &settings.database).await?;
    let (verdict, stripe_view) = checks::verify(
        &api,
        &books,
        &population.tenants,
        &plans,
        &source,
        &stored,
        (traffic_ended, Duration::from_secs(60)),
    )
    .await?;
    let erasures = erasure_checks::check(
        &api,
        &books,
        &population.tenants,
        &erasure_checks::Stores {
            clickhouse_url: &clickhouse_url,
            database: &settings.database,
            postgres_url: &bench::pg_url(bench::OWNER, &settings.database),
            stripe: &source,
        },
        Duration::from_secs(180),
    )
    .await?;
    let mut mails = MailTally {
        confirmations,
        ..MailTally::default()
    };
    mailbox.check(&books, &population.tenants, &mut mails);
    let total_took = started.elapsed();

    report(
        &api,
        &books,
        &population,
        &traffic,
        &life,
        &mails,
        erasures,
        &verdict,
        &stripe_view,
        &windows,
        (traffic_took, total_took),
        settings,
    );
    let peak = deployment.service.lock().await.peak_memory_mib();
    out(format!(
        "service peak memory (since its last start): {:.0} MiB",
        peak.unwrap_or(0.0)
    ));
    Ok(books.violations().is_empty())
}

async fn declining_card(stripe: &str) -> anyhow::Result<String> {
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{stripe}/v1/payment_methods"))
        .basic_auth(STRIPE_KEY, Some(""))
        .form(&[
            ("type", "card"),
            ("card[number]", "4000000000000341"),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2030"),
            ("card[cvc]", "123"),
        ])
        .send()
        .await?
        .json()
        .await?;
    Ok(created["id"]
        .as_str()
        .context("a payment method id")?
        .to_owned())
}
