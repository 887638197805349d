//! A TCP proxy in front of a real service that a test can cut and restore, to see how
//! the app behaves while that service is unreachable, without stopping the shared
//! server every other test is using.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    pub port: u16,
    up: Arc<watch::Sender<bool>>,
}

impl FaultProxy {
    /// Starts forwarding 127.0.0.1:<port> to `target` ("host:port").
    pub async fn start(target: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(watch::channel(true).0);
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut up_rx = state.subscribe();
                if !*up_rx.borrow() {
                    drop(client); // refused: the connection closes at once
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        // Cutting the proxy also kills connections already open.
                        _ = up_rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        FaultProxy { port, up }
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A proxy in front of Stripe (the fake) for a caller that dies mid-conversation: the
/// first `budget` requests go through whole; the next one reaches Stripe, which acts on
/// it, but its answer is lost; every later one is refused. (The Stripe client opens one
/// connection per request, so connections count requests.)
pub struct DyingCaller {
    pub port: u16,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl DyingCaller {
    pub async fn start(target: String, budget: usize) -> DyingCaller {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let number = counter.fetch_add(1, Ordering::SeqCst);
                if number > budget {
                    drop(client); // dead: nothing more reaches Stripe
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    if number < budget {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                    // The request reaches Stripe; its answer is read and thrown away.
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
                        while let Ok(Ok(read)) = tokio::time::timeout(
                            std::time::Duration::from_millis(100),
                            from_server.read(&mut buffer),
                        )
                        .await
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
                });
            }
        });
        DyingCaller { port, requests }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests the caller tried to send, the refused ones included.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}
