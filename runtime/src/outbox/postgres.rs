//! The PostgreSQL sink: durable messages become rows of a table keyed by message id, written
//! with `INSERT ... ON CONFLICT DO NOTHING`, so a redelivered message is a no-op and the
//! external effect is exactly once.

use super::sink::{Sink, SinkError, SinkMessage};

/// Writes each batch of messages as rows of `table` in one transaction:
/// `(stream BIGINT, seq BIGINT, sender TEXT, message TEXT, data BYTEA, PRIMARY KEY (stream,
/// seq))`, the id's two halves stored as their two's-complement `BIGINT`s. The table is
/// created if missing. Reconnects on the next batch after the connection broke.
pub struct PostgresSink {
    url: String,
    table: String,
    client: Option<postgres::Client>,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn err(permanent: bool) -> impl Fn(postgres::Error) -> SinkError {
    move |e| SinkError {
        detail: e.to_string(),
        permanent,
    }
}

impl PostgresSink {
    /// Connects to `url` (a libpq-style string, e.g. `host=/tmp/pg port=5432 user=postgres`)
    /// and creates `table` if it does not exist. `table` must be a plain identifier
    /// (letters, digits, `_`).
    pub fn connect(url: &str, table: &str) -> Result<Self, SinkError> {
        let plain = !table.is_empty()
            && table.len() <= 63
            && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !table.starts_with(|c: char| c.is_ascii_digit());
        if !plain {
            return Err(SinkError {
                detail: format!("table name {table:?} is not a plain identifier"),
                permanent: true,
            });
        }
        let mut sink = PostgresSink {
            url: url.to_owned(),
            table: table.to_owned(),
            client: None,
        };
        sink.client()?;
        Ok(sink)
    }

    fn client(&mut self) -> Result<&mut postgres::Client, SinkError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let mut c =
                postgres::Client::connect(&self.url, postgres::NoTls).map_err(err(false))?;
            c.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (stream BIGINT NOT NULL, seq BIGINT NOT NULL, \
                 sender TEXT NOT NULL, message TEXT NOT NULL, data BYTEA NOT NULL, \
                 PRIMARY KEY (stream, seq))",
                self.table
            ))
            .map_err(err(false))?;
            self.client = Some(c);
        }
        Ok(self
            .client
            .as_mut()
            .expect("invariant: connected just above"))
    }
}

impl Sink for PostgresSink {
    fn write(&mut self, batch: &[SinkMessage]) -> Result<(), SinkError> {
        let table = self.table.clone();
        let streams: Vec<i64> = batch.iter().map(|m| m.id.stream as i64).collect();
        let seqs: Vec<i64> = batch.iter().map(|m| m.id.seq as i64).collect();
        let senders: Vec<&str> = batch.iter().map(|m| m.sender.as_str()).collect();
        let names: Vec<&str> = batch.iter().map(|m| m.message.as_str()).collect();
        let data: Vec<&[u8]> = batch.iter().map(|m| m.data.as_slice()).collect();
        let result = (|| {
            let c = self.client()?;
            let mut tx = c.transaction().map_err(err(false))?;
            tx.execute(
                &format!(
                    "INSERT INTO {table} (stream, seq, sender, message, data) \
                     SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BYTEA[]) \
                     ON CONFLICT (stream, seq) DO NOTHING"
                ),
                &[&streams, &seqs, &senders, &names, &data],
            )
            .map_err(err(false))?;
            tx.commit().map_err(err(false))
        })();
        if result.is_err() {
            // Reconnect for the retry (the connection may be broken).
            self.client = None;
        }
        result
    }
}
