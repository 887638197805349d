//! GDPR export: everything held about one tenant, as one JSON document, streamed.
//!
//! Each owner exports its own Postgres rows, whole, minus the columns that hold secrets
//! or their hashes; usage events come from ClickHouse and from the Postgres ledger,
//! merged by event id as both are read.

use metering::ClickHouseSink;
use metering::usage_rows::StoredEvent;
use saas_core::TenantId;
use serde_json::{Value, json};
use tenancy::{Db, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Usage(#[from] metering::SinkError),
    #[error("the client stopped reading")]
    ClientGone,
}

impl From<sqlx::Error> for ExportError {
    fn from(error: sqlx::Error) -> Self {
        ExportError::Store(error.into())
    }
}

/// A chunk of the export document, or why it stopped.
pub type Chunk = Result<Vec<u8>, ExportError>;

/// Ledger events read per (short) transaction.
const LEDGER_PAGE: i64 = 1_000;
/// Bytes gathered before a chunk is handed on.
const CHUNK_BYTES: usize = 64 * 1024;

/// The export document of `tenant`, streamed: its chunks arrive on the returned channel
/// as the client takes them, so memory stays flat however many events the tenant has.
///
/// Everything that can fail before the first byte (Postgres, ClickHouse) is tried before
/// this returns, so an outage is an error the caller can answer with a status. A failure
/// later ends the stream with an error, which cuts the response short; the client sees
/// an incomplete document, never a complete-looking wrong one.
///
/// Usage events come from ClickHouse (everything relayed) and from the Postgres ledger
/// (what is not relayed yet, and recent events kept for deduplication), both read in
/// event id order (bytewise: the ledger's `event_id` has the C collation) and merged so
/// each event appears once.
pub async fn export(
    db: &Db,
    clickhouse: &ClickHouseSink,
    tenant: TenantId,
) -> Result<tokio::sync::mpsc::Receiver<Chunk>, ExportError> {
    let head = sections(db, tenant).await?;
    let mut relayed = clickhouse.tenant_events(tenant)?;
    let first_relayed = relayed.next().await?;
    let mut ledger = LedgerPages::new(db.clone(), tenant);
    let first_ledger = ledger.next().await?;

    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut out = Output {
            sender,
            buffer: head,
        };
        let merged = async {
            let (mut c, mut p) = (first_relayed, first_ledger);
            let mut first = true;
            loop {
                let event = match (c.take(), p.take()) {
                    (None, None) => break,
                    (Some(relayed_event), None) => {
                        c = relayed.next().await?;
                        relayed_json(&relayed_event)
                    }
                    (None, Some(ledger_event)) => {
                        p = ledger.next().await?;
                        ledger_event.json
                    }
                    (Some(relayed_event), Some(ledger_event)) => {
                        match relayed_event.event_id.as_str().cmp(&ledger_event.id) {
                            std::cmp::Ordering::Less => {
                                p = Some(ledger_event);
                                c = relayed.next().await?;
                                relayed_json(&relayed_event)
                            }
                            std::cmp::Ordering::Greater => {
                                c = Some(relayed_event);
                                p = ledger.next().await?;
                                ledger_event.json
                            }
                            // Relayed and still in the ledger: once, as the ledger has it.
                            std::cmp::Ordering::Equal => {
                                c = relayed.next().await?;
                                p = ledger.next().await?;
                                ledger_event.json
                            }
                        }
                    }
                };
                if !first {
                    out.buffer.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut out.buffer, &event)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                out.flush_if_full().await?;
            }
            out.buffer.extend_from_slice(b"]}");
            Ok::<(), ExportError>(())
        }
        .await;
        match merged {
            Ok(()) => {
                let _ = out.flush().await;
            }
            Err(error) => {
                tracing::error!(%tenant, %error, "export cut short");
                let _ = out.sender.send(Err(error)).await;
            }
        }
    });
    Ok(receiver)
}

/// Where the document goes: a buffer handed on in chunks.
struct Output {
    sender: tokio::sync::mpsc::Sender<Chunk>,
    buffer: Vec<u8>,
}

impl Output {
    async fn flush_if_full(&mut self) -> Result<(), ExportError> {
        if self.buffer.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands the buffer on; fails when the client has gone, which ends the export.
    async fn flush(&mut self) -> Result<(), ExportError> {
        let chunk = std::mem::take(&mut self.buffer);
        self.sender
            .send(Ok(chunk))
            .await
            .map_err(|_| ExportError::ClientGone)
    }
}

/// The document up to the opening of `usage_events`: every Postgres section (each a
/// handful of rows), read in one transaction.
async fn sections(db: &Db, tenant: TenantId) -> Result<Vec<u8>, ExportError> {
    let mut tx = db.tenant_tx(tenant).await?;
    let sections = [
        (
            "tenant",
            tenancy::tenants::export_json(&mut tx, tenant).await?,
        ),
        (
            "signup",
            onboarding::store::export_json(&mut tx, tenant).await?,
        ),
        (
            "api_keys",
            tenancy::api_keys::export_json(&mut tx, tenant).await?,
        ),
        (
            "transitions",
            lifecycle::transitions::export_json(&mut tx, tenant).await?,
        ),
        (
            "usage_counters",
            metering::export::counters_json(&mut tx, tenant).await?,
        ),
        (
            "quota_alerts",
            metering::export::quota_alerts_json(&mut tx, tenant).await?,
        ),
        ("notifications", outbox::export_json(&mut tx, tenant).await?),
        (
            "audit_log",
            tenancy::audit::export_json(&mut tx, tenant).await?,
        ),
        (
            "invoices",
            billing::invoices::personal_data::export_json(&mut tx, tenant).await?,
        ),
        (
            "deletion",
            lifecycle::deletions::export_json(&mut tx, tenant).await?,
        ),
    ];
    tx.commit().await?;
    let mut document = serde_json::Map::new();
    document.insert("exported_at".into(), json!(chrono::Utc::now()));
    for (name, value) in sections {
        document.insert(name.into(), value.unwrap_or(Value::Null));
    }
    let mut head = serde_json::to_vec(&Value::Object(document))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    head.pop(); // the closing brace: the events follow
    head.extend_from_slice(b",\"usage_events\":[");
    Ok(head)
}

fn relayed_json(event: &StoredEvent) -> Value {
    let time = chrono::DateTime::from_timestamp(i64::from(event.event_time), 0);
    json!({"id": event.event_id, "metric": event.metric, "value": event.value, "timestamp": time})
}

/// One ledger event, ready to write.
struct LedgerEvent {
    id: String,
    json: Value,
}

/// The tenant's ledger in event id order, a page per short transaction, so that an
/// export of any size never holds a transaction open (which would hold back the relay).
struct LedgerPages {
    db: Db,
    tenant: TenantId,
    after: Option<String>,
    page: std::vec::IntoIter<LedgerEvent>,
    done: bool,
}

impl LedgerPages {
    fn new(db: Db, tenant: TenantId) -> Self {
        Self {
            db,
            tenant,
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        }
    }

    async fn next(&mut self) -> Result<Option<LedgerEvent>, ExportError> {
        if let Some(event) = self.page.next() {
            return Ok(Some(event));
        }
        if self.done {
            return Ok(None);
        }
        let mut tx = self.db.tenant_tx(self.tenant).await?;
        let rows =
            metering::export::ledger_page(&mut tx, self.tenant, self.after.as_deref(), LEDGER_PAGE)
                .await?;
        tx.commit().await?;
        self.done = rows.len() < usize::try_from(LEDGER_PAGE).unwrap_or(usize::MAX);
        self.after = rows.last().map(|row| row.id.clone());
        let page: Vec<LedgerEvent> = rows
            .into_iter()
            .map(|event| {
                let json = json!({"id": event.id, "metric": event.metric, "value": event.value,
                                  "timestamp": event.time});
                LedgerEvent { id: event.id, json }
            })
            .collect();
        self.page = page.into_iter();
        Ok(self.page.next())
    }
}
