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

#[tokio::test]
async fn the_welcome_mail_of_a_signup_is_sent_once() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = TestApp::spawn_with(move |config| {
        config.smtp.url = Some(SecretString::from(url));
        config.smtp.poll_ms = 50;
    })
    .await;
    let email = format!("founder+{}@example.com", uuid::Uuid::new_v4().simple());
    let response = app
        .post("/v1/signups")
        .json(&json!({"email": email, "company": "Mail Test Ltd", "plan": "free"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.received().is_empty() {
        assert!(Instant::now() < deadline, "no mail arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a second delivery every chance to happen, then check there was none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = sink.received();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].recipients, vec![email.clone()]);
    assert!(
        mails[0].data.contains("Subject: Welcome"),
        "{}",
        mails[0].data
    );
    assert!(mails[0].data.contains("@outbox.saas>"), "{}", mails[0].data);
    let unsent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE sent_at IS NULL")
            .fetch_one(&app.owner_pool)
            .await
            .unwrap();
    assert_eq!(unsent, 0);
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
    assert_eq!(delivered, Delivered { sent: 1, failed: 0 });
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
    assert_eq!(delivered, Delivered { sent: 0, failed: 1 });
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
