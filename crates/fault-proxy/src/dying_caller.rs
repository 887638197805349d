//! A caller that dies mid-conversation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

use crate::proxy::forward_and_swallow;

/// A proxy in front of Stripe (the fake) for a caller that dies mid-conversation: the
/// first `budget` requests go through whole; the next one reaches Stripe, which acts on
/// it, but its answer is lost; every later one is refused. (The Stripe client opens one
/// connection per request, so connections count requests.)
pub struct DyingCaller {
    pub port: u16,
    requests: Arc<AtomicUsize>,
}

impl DyingCaller {
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start(target: String, budget: usize) -> DyingCaller {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        let requests = Arc::new(AtomicUsize::new(0));
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
                    forward_and_swallow(client, server).await;
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
        self.requests.load(Ordering::SeqCst)
    }
}
