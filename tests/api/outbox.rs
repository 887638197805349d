//! The notification outbox, delivered by SMTP to a local sink.

use std::time::{Duration, Instant};

use integration_tests::{SmtpSink, TestApp};
use outbox::{Delivered, Mailer, deliver_pending};
use secrecy::SecretString;
use serde_json::json;

const FROM: &str = "Platform <no-reply@localhost>";

async fn queue_message(app: &TestApp, recipient: &str) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    let mut tx = app.db.system_tx("test message").await.unwrap();
    sqlx::query(
        "INSERT INTO notifications (id, kind, recipient, subject, body) \
         VALUES ($1, 'test', $2, 'Hello', 'A message body')",
    )
    .bind(id)
    .bind(recipient)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn delivery_state(app: &TestApp, id: uuid::Uuid) -> (bool, bool, i32) {
    let mut tx = app.db.system_tx("test read").await.unwrap();
    sqlx::query_as(
        "SELECT sent_at IS NOT NULL, failed_at IS NOT NULL, attempts FROM notifications WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .unwrap()
}

/// The confirmation token in a mail as the sink received it.
fn token_in(mail: &str) -> String {
    let text = mail.replace("=\r\n", "");
    let at = text.find("ev_").expect("a confirmation token in the mail");
    text[at..at + 67].to_owned()
}

async fn wait_for_mails(sink: &SmtpSink, count: usize) -> Vec<integration_tests::ReceivedMail> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.received().len() < count {
        assert!(Instant::now() < deadline, "no mail arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a further delivery every chance to happen, then return what there is.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.received()
}

/// Queues a notice to `tenant`, as win-back and the other tenant mails are.
async fn queue_notice(app: &TestApp, tenant: saas_core::TenantId, recipient: &str) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    let mut tx = app.db.system_tx("test message").await.unwrap();
    sqlx::query(
        "INSERT INTO notifications (id, tenant_id, kind, recipient, subject, body) \
         VALUES ($1, $2, 'winback', $3, 'We miss you', 'Come back')",
    )
    .bind(id)
    .bind(tenant.as_uuid())
    .bind(recipient)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

#[tokio::test]
async fn a_signup_mails_only_a_fixed_confirmation_and_more_only_once_confirmed() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = TestApp::spawn_with(move |config| {
        config.smtp.url = Some(SecretString::from(url));
        config.smtp.poll_ms = 50;
    })
    .await;
    let email = format!("founder+{}@example.com", uuid::Uuid::new_v4().simple());
    let company = "Buy Cheap Pills At spam.example";
    let response = app
        .post("/v1/signups")
        .json(&json!({"email": email, "company": company, "plan": "free"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let signup: serde_json::Value = response.json().await.unwrap();
    let tenant: saas_core::TenantId = signup["id"]
        .as_str()
        .unwrap()
        .replace("sgn_", "ten_")
        .parse()
        .unwrap();

    let mails = wait_for_mails(&sink, 1).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].recipients, vec![email.clone()]);
    assert!(
        mails[0]
            .data
            .contains("Subject: Confirm your email address")
    );
    assert!(mails[0].data.contains("@outbox.saas>"), "{}", mails[0].data);
    assert!(
        !mails[0].data.contains("Pills") && !mails[0].data.contains("spam.example"),
        "nothing the signer-up wrote is mailed: {}",
        mails[0].data
    );

    // Before confirmation, a notice to the address is not sent.
    let early = queue_notice(&app, tenant, &email).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivery_state(&app, early).await == (false, false, 0) {
        assert!(Instant::now() < deadline, "the notice was never looked at");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivery_state(&app, early).await, (false, true, 0));
    assert_eq!(sink.received().len(), 1);

    // Confirmed with the mailed token (once), later notices go out.
    let token = token_in(&mails[0].data);
    let confirm = || {
        app.post("/v1/email-verifications")
            .json(&json!({"token": token}))
            .send()
    };
    let response = confirm().await.unwrap();
    assert_eq!(response.status(), 200);
    let confirmed: serde_json::Value = response.json().await.unwrap();
    assert_eq!(confirmed["tenant_id"], tenant.to_string());
    assert_eq!(confirm().await.unwrap().status(), 404, "a token works once");
    let later = queue_notice(&app, tenant, &email).await;
    let mails = wait_for_mails(&sink, 2).await;
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert!(mails[1].data.contains("Subject: We miss you"));
    assert!(
        delivery_state(&app, later).await.0,
        "the later notice is sent"
    );
}

#[tokio::test]
async fn an_address_gets_at_most_three_confirmations_a_day() {
    let app = TestApp::spawn().await;
    let email = format!("victim+{}@example.com", uuid::Uuid::new_v4().simple());
    for i in 0..5 {
        let response = app
            .post("/v1/signups")
            .json(&json!({"email": email, "company": format!("Company {i}"), "plan": "free"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut tx = app.db.system_tx("test read").await.unwrap();
        let (provisioned, confirmations): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM tenants WHERE email = $1), \
                    (SELECT count(*) FROM notifications WHERE recipient = $1)",
        )
        .bind(&email)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        if provisioned == 5 {
            assert_eq!(confirmations, 3);
            break;
        }
        assert!(Instant::now() < deadline, "signups stuck");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the tenant with `email` is confirmed, and whether its token is still waiting.
async fn confirmation_state(app: &TestApp, email: &str) -> Option<(bool, bool)> {
    let mut tx = app.db.system_tx("test read").await.unwrap();
    sqlx::query_as(
        "SELECT email_verified_at IS NOT NULL, email_verification_hash IS NOT NULL \
         FROM tenants WHERE email = $1",
    )
    .bind(email)
    .fetch_optional(&mut *tx)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_bad_confirmation_token_is_a_404_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let email = format!("waiting+{}@example.com", uuid::Uuid::new_v4().simple());
    let response = app
        .post("/v1/signups")
        .json(&json!({"email": email, "company": "Waiting", "plan": "free"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while confirmation_state(&app, &email).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the signup was never provisioned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(confirmation_state(&app, &email).await, Some((false, true)));

    // Empty, malformed, and well formed but issued to nobody.
    let unissued = tenancy::tokens::random("ev_");
    for token in ["", "ev_nope", &format!("ev_{}", "0".repeat(64)), &unissued] {
        let response = app
            .post("/v1/email-verifications")
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{token}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{token}: {body}");
    }
    assert_eq!(
        confirmation_state(&app, &email).await,
        Some((false, true)),
        "the waiting tenant is neither confirmed nor robbed of its token"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_retried_and_a_refusal_is_final() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let id = queue_message(&app, "someone@example.com").await;

    // Nothing listens there: the message stays queued, with the attempt counted.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = Mailer::new(&format!("smtp://127.0.0.1:{port}"), FROM).unwrap();
    assert_eq!(
        deliver_pending(&app.db, &down, 10).await.unwrap(),
        Delivered::default()
    );
    assert_eq!(delivery_state(&app, id).await, (false, false, 1));

    // It waits before the next attempt; let that time pass.
    let mut tx = app.db.system_tx("test clock").await.unwrap();
    let pause: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM notifications WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(pause > 20.0, "no pause before the retry: {pause}");
    assert_eq!(
        deliver_pending(&app.db, &down, 10).await.unwrap(),
        Delivered::default()
    );
    sqlx::query("UPDATE notifications SET next_attempt_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // The server is back: sent, once, however often delivery runs.
    let sink = SmtpSink::start().await;
    let up = Mailer::new(&sink.url(), FROM).unwrap();
    let delivered = deliver_pending(&app.db, &up, 10).await.unwrap();
    assert_eq!(
        delivered,
        Delivered {
            sent: 1,
            failed: 0,
            unconfirmed: 0
        }
    );
    assert_eq!(
        deliver_pending(&app.db, &up, 10).await.unwrap(),
        Delivered::default()
    );
    assert_eq!(sink.received().len(), 1);
    assert_eq!(delivery_state(&app, id).await, (true, false, 2));

    // A permanent refusal (550) is not retried.
    let refused = queue_message(&app, "nobody@example.com").await;
    let refusing = SmtpSink::refusing().await;
    let mailer = Mailer::new(&refusing.url(), FROM).unwrap();
    let delivered = deliver_pending(&app.db, &mailer, 10).await.unwrap();
    assert_eq!(
        delivered,
        Delivered {
            sent: 0,
            failed: 1,
            unconfirmed: 0
        }
    );
    assert_eq!(
        deliver_pending(&app.db, &mailer, 10).await.unwrap(),
        Delivered::default()
    );
    assert_eq!(delivery_state(&app, refused).await, (false, true, 1));
}

#[test]
fn bad_smtp_settings_are_refused() {
    assert!(Mailer::check_settings("not a url", FROM).is_err());
    assert!(Mailer::check_settings("smtp://127.0.0.1:25", "not an address").is_err());
    assert!(Mailer::check_settings("smtp://user:secret@127.0.0.1:587?tls=required", FROM).is_ok());
}
