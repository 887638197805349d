//! The sender's address policy at delivery time, driven through a resolver the test
//! controls: every address here is in 127.0.0.0/8, and a refused one is refused before
//! any connection is made (the listeners count what reaches them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use webhooks::sender::SendError;
use webhooks::{AddressPolicy, Sender, StaticLookup, Timeouts};

/// A listener on loopback that answers every request with `response` and counts the
/// connections it accepts.
async fn listener(response: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = [0u8; 8192];
                let _ = stream.read(&mut buffer).await;
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (address, accepted)
}

fn sender(policy: AddressPolicy, names: &[String]) -> Sender {
    // No fallback: a name the test did not give does not resolve (no DNS query leaves).
    let lookup = StaticLookup::parse(names, None).unwrap();
    Sender::new(
        policy,
        Arc::new(lookup),
        Timeouts {
            connect: Duration::from_secs(2),
            total: Duration::from_secs(5),
        },
    )
    .unwrap()
}

fn headers() -> webhooks::signing::SignedHeaders {
    webhooks::signing::sign("evt_1", 1, "{}", &[&webhooks::signing::new_secret()])
}

const OK: &str = "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

#[tokio::test]
async fn a_name_that_turns_inward_is_refused_before_any_connection() {
    let (address, accepted) = listener(OK).await;
    let policy = AddressPolicy {
        allow_http: true,
        allow_private: false,
    };
    // The name resolved to a public address when the endpoint was made; now (DNS
    // rebinding) it resolves to loopback, where the listener is.
    let sender = sender(policy, &["rebind.test=127.0.0.1".into()]);
    let url = format!("http://rebind.test:{}/hook", address.port());
    let outcome = sender.send(&url, &headers(), "{}").await;
    match outcome {
        Err(SendError::Refused(refused)) => assert_eq!(refused.code, "webhook_url_forbidden"),
        other => panic!("not refused: {other:?}"),
    }
    // An address in the URL itself, every spelling of loopback.
    for url in [
        format!("http://127.0.0.1:{}/hook", address.port()),
        format!("http://[::ffff:127.0.0.1]:{}/hook", address.port()),
        format!("http://2130706433:{}/hook", address.port()),
    ] {
        let outcome = sender.send(&url, &headers(), "{}").await;
        assert!(
            matches!(outcome, Err(SendError::Refused(_))),
            "{url}: {outcome:?}"
        );
    }
    // A name with one inward address among public ones is refused whole.
    let sender2 = sender_with_mixed();
    let url = format!("http://mixed.test:{}/hook", address.port());
    assert!(matches!(
        sender2.send(&url, &headers(), "{}").await,
        Err(SendError::Refused(_))
    ));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the listener"
    );
}

fn sender_with_mixed() -> Sender {
    sender(
        AddressPolicy {
            allow_http: true,
            allow_private: false,
        },
        &[
            "mixed.test=93.184.216.34".into(),
            "mixed.test=127.0.0.1".into(),
        ],
    )
}

#[tokio::test]
async fn a_check_at_creation_resolves_the_name_too() {
    let sender = sender(
        AddressPolicy::default(),
        &["inward.test=169.254.169.254".into()],
    );
    let refused = sender
        .check_destination("https://inward.test/hook")
        .await
        .unwrap_err();
    assert_eq!(refused.code, "webhook_url_forbidden");
    // A name that does not resolve yet is let through: each delivery checks again.
    assert!(
        sender
            .check_destination("https://later.test/hook")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_counts_as_a_failure() {
    let (target, followed) = listener(OK).await;
    let redirect: &'static str = Box::leak(
        format!(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{}/elsewhere\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n",
            target.port()
        )
        .into_boxed_str(),
    );
    let (first, reached) = listener(redirect).await;
    let local = AddressPolicy {
        allow_http: true,
        allow_private: true,
    };
    let answer = sender(local, &[])
        .send(
            &format!("http://127.0.0.1:{}/hook", first.port()),
            &headers(),
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 302);
    assert!(!answer.acknowledged());
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
}

#[tokio::test]
async fn only_a_prefix_of_a_large_answer_is_kept() {
    let body = "x".repeat(100_000);
    let response: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    );
    let (address, _) = listener(response).await;
    let local = AddressPolicy {
        allow_http: true,
        allow_private: true,
    };
    let answer = sender(local, &[])
        .send(
            &format!("http://127.0.0.1:{}/", address.port()),
            &headers(),
            "{}",
        )
        .await
        .unwrap();
    assert!(answer.acknowledged());
    assert_eq!(
        answer.body_prefix.len(),
        webhooks::sender::RESPONSE_PREFIX_CHARS
    );
}
