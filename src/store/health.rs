//! Recent delivery problems for the console's provider health: the last
//! errors providers answered, newest first. Looks only at the newest
//! `WINDOW` deliveries (by id, the primary key), so the cost stays the same
//! however large the outbox grows.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::StoreError;

/// Deliveries looked at, newest first.
pub const WINDOW: i64 = 50_000;

/// One delivery whose last attempt failed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecentError {
    pub delivery_id: i64,
    pub alert_id: i64,
    pub provider: Option<String>,
    pub channel: String,
    pub state: String,
    pub code: Option<String>,
    pub error: String,
    pub at: i64,
}

pub fn recent_errors(conn: &Connection, limit: i64) -> Result<Vec<RecentError>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT id, alert_id, provider, channel, state, error_code, error, updated_at FROM deliveries
          WHERE id > (SELECT coalesce(max(id), 0) FROM deliveries) - ?1 AND error IS NOT NULL
          ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = st.query_map(params![WINDOW, limit], |r| {
        Ok(RecentError {
            delivery_id: r.get(0)?,
            alert_id: r.get(1)?,
            provider: r.get(2)?,
            channel: r.get(3)?,
            state: r.get(4)?,
            code: r.get(5)?,
            error: r.get(6)?,
            at: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_errors_come_first_and_successes_are_left_out() {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut c).unwrap();
        // Deliveries alone: their alerts and recipients do not matter here.
        c.execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO deliveries (id, alert_id, recipient_id, channel, address, state, priority, next_attempt_at,
                                     provider, error_code, error, created_at, updated_at) VALUES
               (1, 1, 1, 'sms', 'a', 'undeliverable', 0, 0, 'tw', '21211', 'invalid number', 0, 10),
               (2, 1, 2, 'sms', 'b', 'sent', 0, 0, 'tw', NULL, NULL, 0, 11),
               (3, 1, 3, 'email', 'c', 'queued', 0, 0, 'smtp', NULL, 'timed out; will retry', 0, 12);",
        )
        .unwrap();
        let e = recent_errors(&c, 10).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].delivery_id, e[0].error.as_str()),
            (3, "timed out; will retry")
        );
        assert_eq!(e[1].code.as_deref(), Some("21211"));
        assert_eq!(recent_errors(&c, 1).unwrap().len(), 1);
    }
}
