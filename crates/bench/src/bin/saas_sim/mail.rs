//! What the service mails, read from an SMTP server of the simulator's own, as tenants
//! would read their inboxes: each tenant's address confirmation (most tenants then
//! confirm through the API, the rest never do) and the win-back messages a suspension
//! starts.
//!
//! Delivery is at least once: a message sent again after a crash keeps its Message-ID,
//! so messages are told apart by Message-ID and a twin is counted, never a violation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::json;
use smtp_sink::{ReceivedMail, SmtpSink};

use crate::api::{Api, As};
use crate::books::{Books, Tally, Tenant};

/// When win-back messages go out, counted from the suspension, and from which message
/// on they carry an offer (the service's `winback.*` settings).
pub const WINBACK_STEPS: &str = "1s,2s";
pub const WINBACK_MESSAGES: usize = 2;
pub const WINBACK_OFFER_FROM: usize = 1;

/// How long a tenant waits for a mail the service owes it.
pub const MAIL_WAIT: Duration = Duration::from_secs(90);

pub struct Mailbox {
    sink: SmtpSink,
}

/// One message as its recipient sees it.
struct Letter {
    recipient: String,
    message_id: String,
    subject: String,
    body: String,
}

impl Letter {
    fn read(mail: &ReceivedMail) -> Option<Letter> {
        let [recipient] = mail.recipients.as_slice() else {
            return None;
        };
        Some(Letter {
            recipient: recipient.to_lowercase(),
            message_id: mail.header("Message-ID")?,
            subject: mail.header("Subject").unwrap_or_default(),
            // Soft line breaks of quoted-printable, should the body be sent so.
            body: mail.body().replace("=\n", ""),
        })
    }

    fn is_confirmation(&self) -> bool {
        self.subject == "Confirm your email address"
    }

    /// For a win-back message, which of the campaign's messages it is (from 0).
    fn winback_step(&self) -> Option<usize> {
        let rest = self
            .subject
            .strip_prefix("We would like you back (message ")?;
        let (step, _) = rest.split_once(" of ")?;
        step.parse::<usize>().ok()?.checked_sub(1)
    }
}

/// What the inboxes held at the end.
#[derive(Debug, Default)]
pub struct MailTally {
    /// Tenants whose confirmation arrived and whose token confirmed their address once.
    pub confirmations: Tally,
    /// Tenants left unconfirmed: they must get nothing but the confirmation.
    pub unconfirmed: usize,
    /// Distinct messages: confirmations, win-back messages, anything else.
    pub confirmation_mails: usize,
    pub winback_mails: usize,
    pub other_mails: usize,
    /// Messages delivered a second time under the same Message-ID (after a crash).
    pub twins: usize,
}

impl Mailbox {
    pub async fn start() -> Mailbox {
        Mailbox {
            sink: SmtpSink::start().await,
        }
    }

    pub fn url(&self) -> String {
        self.sink.url()
    }

    fn letters_to(&self, address: &str) -> Vec<Letter> {
        let address = address.to_lowercase();
        self.sink
            .received()
            .iter()
            .filter_map(Letter::read)
            .filter(|letter| letter.recipient == address)
            .collect()
    }

    /// Distinct win-back messages to `tenant`, per step.
    pub fn winbacks_to(&self, tenant: &Tenant) -> Vec<usize> {
        let mut seen = vec![BTreeSet::new(); WINBACK_MESSAGES];
        for letter in self.letters_to(&tenant.email()) {
            if let Some(step) = letter.winback_step().filter(|s| *s < WINBACK_MESSAGES) {
                seen[step].insert(letter.message_id);
            }
        }
        seen.iter().map(BTreeSet::len).collect()
    }

    /// Each tenant reads its confirmation mail; all but `unconfirmed_share` of them post
    /// its token, and find that it works once. Marks who confirmed.
    pub async fn confirm(
        &self,
        api: &Api,
        books: &Books,
        tenants: &[Tenant],
        unconfirmed_share: f64,
        concurrency: usize,
        seed: u64,
    ) -> Tally {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x3a11);
        let confirming: Vec<(&Tenant, bool)> = tenants
            .iter()
            .map(|t| (t, rng.random::<f64>() >= unconfirmed_share))
            .collect();
        let outcomes: Vec<bool> = futures_util::stream::iter(confirming)
            .map(|(tenant, confirms)| async move {
                let outcome = self.confirm_one(api, tenant, confirms).await;
                if let Err(what) = &outcome {
                    books.violation(format!("{}: {what}", tenant.tenant_id));
                }
                outcome.is_ok()
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut tally = Tally::default();
        for ok in outcomes {
            tally.check(ok);
        }
        tally
    }

    async fn confirm_one(&self, api: &Api, tenant: &Tenant, confirms: bool) -> Result<(), String> {
        let deadline = Instant::now() + MAIL_WAIT;
        let token = loop {
            let token = self
                .letters_to(&tenant.email())
                .iter()
                .filter(|l| l.is_confirmation())
                .find_map(|l| token_in(&l.body));
            if let Some(token) = token {
                break token;
            }
            if Instant::now() > deadline {
                return Err(format!("no confirmation mail in {} s", MAIL_WAIT.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if !confirms {
            return Ok(());
        }
        let body = json!({ "token": token });
        let post = || {
            api.call_idempotent(
                "POST /v1/email-verifications",
                Method::POST,
                "/v1/email-verifications",
                As::Anyone,
                &body,
            )
        };
        let first = post().await.map_err(|e| e.to_string())?;
        if first.status != 200 || first.body["tenant_id"] != json!(tenant.tenant_id) {
            return Err(format!(
                "confirmation answered {} {}",
                first.status, first.body
            ));
        }
        tenant.live.state().confirmed = true;
        // A second request with a new Idempotency-Key is a second use of the token.
        let again = post().await.map_err(|e| e.to_string())?;
        if again.status != 404 {
            return Err(format!("a used token answered {}", again.status));
        }
        Ok(())
    }

    /// Every message went to one tenant's address; unconfirmed addresses got nothing
    /// but their confirmation; no tenant got a campaign's message more often than it
    /// had campaigns. Violations go to the books.
    pub fn check(&self, books: &Books, tenants: &[Tenant], tally: &mut MailTally) {
        let addresses: BTreeMap<String, &Tenant> = tenants
            .iter()
            .map(|t| (t.email().to_lowercase(), t))
            .collect();
        let mut seen = BTreeSet::new();
        for mail in self.sink.received() {
            let Some(letter) = Letter::read(&mail) else {
                books.violation(format!(
                    "a mail to {:?} without one recipient or a Message-ID",
                    mail.recipients
                ));
                continue;
            };
            if !seen.insert(letter.message_id.clone()) {
                tally.twins += 1;
                continue;
            }
            match (letter.is_confirmation(), letter.winback_step()) {
                (true, _) => tally.confirmation_mails += 1,
                (false, Some(_)) => tally.winback_mails += 1,
                (false, None) => tally.other_mails += 1,
            }
            let Some(tenant) = addresses.get(&letter.recipient) else {
                books.violation(format!(
                    "a mail to {}, no tenant's address",
                    letter.recipient
                ));
                continue;
            };
            let state = tenant.live.state().clone();
            if !state.confirmed && !letter.is_confirmation() {
                books.violation(format!(
                    "{}: {:?} mailed to an address never confirmed",
                    tenant.tenant_id, letter.subject
                ));
            }
            if letter.winback_step().is_some() && state.campaigns == 0 {
                books.violation(format!(
                    "{}: a win-back message, never suspended nor moved to the free plan",
                    tenant.tenant_id
                ));
            }
            if letter.winback_step() >= Some(WINBACK_OFFER_FROM) && !letter.body.contains("% off") {
                books.violation(format!(
                    "{}: a win-back message without its offer",
                    tenant.tenant_id
                ));
            }
        }
        for tenant in tenants {
            let campaigns = tenant.live.state().campaigns;
            for (step, count) in self.winbacks_to(tenant).into_iter().enumerate() {
                if count > campaigns {
                    books.violation(format!(
                        "{}: win-back message {} sent {count} times for {campaigns} campaigns",
                        tenant.tenant_id,
                        step + 1
                    ));
                }
            }
            if !tenant.live.state().confirmed {
                tally.unconfirmed += 1;
            }
        }
    }
}

/// The `ev_...` token in a confirmation mail's body.
fn token_in(body: &str) -> Option<String> {
    let at = body.find("ev_")?;
    let token: String = body[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    Some(token)
}
