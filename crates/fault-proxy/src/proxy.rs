//! One proxy whose behaviour can be switched while it runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with each new connection. Connections are judged when they
/// open, except that leaving [`Mode::Pass`] cuts the ones passing at that moment (a
/// server that goes away takes its connections with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Close at once: nothing listens.
    Refuse,
    /// Answer an HTTP request with `503 Service Unavailable` and a Stripe-style error
    /// body, without forwarding it (for HTTP targets that answer one request per
    /// connection, as the Stripe client uses them).
    ServerError,
    /// Accept and say nothing until the mode changes: the caller's timeout decides.
    Stall,
    /// Forward the request, read the answer and throw it away, then close: the target
    /// acted, the caller never learns it did.
    LoseAnswer,
}

pub struct FaultProxy {
    pub port: u16,
    mode: Arc<watch::Sender<Mode>>,
}

impl FaultProxy {
    /// Starts forwarding 127.0.0.1:<port> to `target` ("host:port").
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start(target: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        let mode = Arc::new(watch::channel(Mode::Pass).0);
        let modes = mode.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let now = *modes.borrow();
                let watch = modes.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    match now {
                        Mode::Refuse => drop(client),
                        Mode::Pass => pass(client, &target, watch).await,
                        Mode::ServerError => server_error(client).await,
                        Mode::Stall => stall(client, watch).await,
                        Mode::LoseAnswer => lose_answer(client, &target).await,
                    }
                });
            }
        });
        FaultProxy { port, mode }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Refuses new connections and cuts open ones.
    pub fn cut(&self) {
        self.set(Mode::Refuse);
    }

    pub fn restore(&self) {
        self.set(Mode::Pass);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

async fn pass(mut client: TcpStream, target: &str, mut mode: watch::Receiver<Mode>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = mode.wait_for(|mode| *mode != Mode::Pass) => {}
    }
}

/// Stripe's answer to a request it could not handle: a 5xx with an `api_error`
/// (https://docs.stripe.com/api/errors: "500, 502, 503, 504 - Server Errors").
const SERVER_ERROR_BODY: &str =
    r#"{"error":{"type":"api_error","message":"The server is unavailable; try again."}}"#;

async fn server_error(mut client: TcpStream) {
    read_request_head(&mut client).await;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{SERVER_ERROR_BODY}",
        SERVER_ERROR_BODY.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// Reads until the end of the request's headers (or a pause), so that the answer is not
/// sent before the request.
async fn read_request_head(client: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_millis(500), client.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => seen.extend_from_slice(&buffer[..read]),
            _ => return,
        }
    }
}

async fn stall(client: TcpStream, mut mode: watch::Receiver<Mode>) {
    let _ = mode.wait_for(|mode| *mode != Mode::Stall).await;
    drop(client);
}

async fn lose_answer(client: TcpStream, target: &str) {
    if let Ok(server) = TcpStream::connect(target).await {
        forward_and_swallow(client, server).await;
    }
}

/// Sends what the client writes to the server, and reads the server's answer without
/// passing it on; returns when either side is done.
pub(crate) async fn forward_and_swallow(mut client: TcpStream, mut server: TcpStream) {
    let (mut from_client, _to_client) = client.split();
    let (mut from_server, mut to_server) = server.split();
    let forward = async {
        let mut buffer = [0u8; 8192];
        while let Ok(read) = from_client.read(&mut buffer).await {
            if read == 0 || to_server.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
    };
    let swallow = async {
        let mut buffer = [0u8; 8192];
        let _ = from_server.read(&mut buffer).await;
        // The rest of the answer, until the server pauses.
        while let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_millis(100), from_server.read(&mut buffer)).await
        {
            if read == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = forward => {}
        _ = swallow => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that counts requests and answers each with "ok".
    async fn target() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                read_request_head(&mut socket).await;
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                let _ = socket.shutdown().await;
            }
        });
        (address, seen)
    }

    async fn ask(port: u16) -> String {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        socket
            .write_all(b"POST /v1/invoices HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), socket.read_to_string(&mut answer)).await;
        answer
    }

    #[tokio::test]
    async fn each_mode_does_what_it_says_to_the_target_and_the_caller() {
        let (address, seen) = target().await;
        let proxy = FaultProxy::start(address).await;
        let count = || seen.load(std::sync::atomic::Ordering::SeqCst);

        assert!(ask(proxy.port).await.ends_with("ok"));
        assert_eq!(count(), 1);

        proxy.set(Mode::ServerError);
        let answer = ask(proxy.port).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.ends_with(SERVER_ERROR_BODY), "{answer}");
        assert_eq!(count(), 1, "a 5xx never reaches the target");

        proxy.set(Mode::LoseAnswer);
        assert_eq!(ask(proxy.port).await, "", "the answer is lost");
        assert_eq!(count(), 2, "but the target acted");

        proxy.set(Mode::Refuse);
        assert_eq!(ask(proxy.port).await, "");
        assert_eq!(count(), 2);

        proxy.set(Mode::Stall);
        let stalled = tokio::spawn(ask(proxy.port));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!stalled.is_finished(), "a stalled call waits");
        proxy.restore();
        assert_eq!(stalled.await.unwrap(), "", "and is dropped unanswered");
        assert_eq!(count(), 2);
    }
}
