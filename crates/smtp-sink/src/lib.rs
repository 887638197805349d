//! A small SMTP server on loopback that keeps what it receives, to see what the service
//! mails. It can refuse recipients for good (550), which a real relay does for unknown
//! mailboxes.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub recipients: Vec<String>,
    /// Headers and body as sent, dot-unstuffed.
    pub data: String,
}

impl ReceivedMail {
    /// The first header called `name` (any case), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let (headers, _) = self.data.split_once("\n\n")?;
        let mut found: Option<String> = None;
        for line in headers.lines() {
            match (&mut found, line.starts_with([' ', '\t'])) {
                (Some(value), true) => value.push_str(line),
                (Some(_), false) => break,
                (None, _) => {
                    if let Some((key, value)) = line.split_once(':')
                        && key.eq_ignore_ascii_case(name)
                    {
                        found = Some(value.trim().to_owned());
                    }
                }
            }
        }
        found
    }

    /// What follows the headers.
    pub fn body(&self) -> &str {
        self.data.split_once("\n\n").map_or("", |(_, body)| body)
    }
}

pub struct SmtpSink {
    pub port: u16,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
}

impl SmtpSink {
    /// Accepts every message.
    pub async fn start() -> SmtpSink {
        Self::start_with(false).await
    }

    /// Refuses every recipient with a permanent 550.
    pub async fn refusing() -> SmtpSink {
        Self::start_with(true).await
    }

    async fn start_with(refuse: bool) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket, store.clone(), refuse));
            }
        });
        SmtpSink { port, received }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn received(&self) -> Vec<ReceivedMail> {
        self.received.lock().unwrap().clone()
    }
}

async fn session(
    socket: tokio::net::TcpStream,
    store: Arc<Mutex<Vec<ReceivedMail>>>,
    refuse: bool,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let mut recipients = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let verb = line.get(..4).unwrap_or(&line).to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 sink\r\n",
            "MAIL" => {
                recipients.clear();
                b"250 OK\r\n"
            }
            "RCPT" if refuse => b"550 5.1.1 mailbox unavailable\r\n",
            "RCPT" => {
                let address = line
                    .split_once(':')
                    .map(|(_, a)| a.trim().trim_matches(['<', '>']).to_owned());
                recipients.extend(address);
                b"250 OK\r\n"
            }
            "DATA" => {
                write.write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                while let Some(line) = lines.next_line().await? {
                    if line == "." {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    data.push('\n');
                }
                store.lock().unwrap().push(ReceivedMail {
                    recipients: std::mem::take(&mut recipients),
                    data,
                });
                b"250 OK queued\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"250 OK\r\n",
        };
        write.write_all(reply).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ReceivedMail;

    #[test]
    fn headers_are_read_unfolded_and_apart_from_the_body() {
        let mail = ReceivedMail {
            recipients: vec!["a@example.com".into()],
            data: "Subject: We would like\n you back\nmessage-id: <1@outbox.saas>\n\n\
                   Subject: not a header\n"
                .into(),
        };
        assert_eq!(
            mail.header("subject").as_deref(),
            Some("We would like you back")
        );
        assert_eq!(
            mail.header("Message-ID").as_deref(),
            Some("<1@outbox.saas>")
        );
        assert_eq!(mail.header("From"), None);
        assert_eq!(mail.body(), "Subject: not a header\n");
    }
}
