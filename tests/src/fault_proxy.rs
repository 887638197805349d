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
