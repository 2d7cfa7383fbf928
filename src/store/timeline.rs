//! How one alert progressed over time, for the console's chart: first
//! deliveries handed over, deliveries reported delivered and recipients
//! confirmed, counted per time bucket from the alert's release. The times
//! come from the alert's `Tally` (one pass over its deliveries, shared with
//! the other figures of the page) and the confirmations' index.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};
use serde::Serialize;

use super::StoreError;
use super::tally::Tally;
use crate::domain::AlertId;

/// Counts per bucket: `(bucket index from the start, count)`, ascending,
/// buckets without events left out.
pub type Series = Vec<(i64, i64)>;

/// The three series of one alert over the same buckets.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Timeline {
    /// Milliseconds since the epoch of bucket 0's start (the release).
    pub start: i64,
    /// Bucket width in milliseconds.
    pub bucket_ms: i64,
    pub handover: Series,
    pub delivered: Series,
    pub confirmed: Series,
}

impl Timeline {
    /// The last bucket holding an event, if any.
    pub fn last_bucket(&self) -> Option<i64> {
        [&self.handover, &self.delivered, &self.confirmed]
            .iter()
            .filter_map(|s| s.last().map(|(b, _)| *b))
            .max()
    }
}

/// Confirmation times of the alert's recipients (the `(alert_id,
/// acked_at)` index alone).
fn confirmations(conn: &Connection, alert: AlertId) -> Result<Vec<i64>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT acked_at FROM recipients WHERE alert_id = ?1 AND acked_at IS NOT NULL",
    )?;
    let v = st
        .query_map(params![alert.0], |r| r.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v)
}

/// The latest event time of the alert (hand-over, delivery or
/// confirmation), so the caller can choose a bucket width before counting.
pub fn last_event(
    conn: &Connection,
    alert: AlertId,
    tally: &Tally,
) -> Result<Option<i64>, StoreError> {
    let acked: Option<i64> = conn
        .prepare_cached("SELECT max(acked_at) FROM recipients WHERE alert_id = ?1")?
        .query_row([alert.0], |r| r.get(0))?;
    Ok([
        tally.handed_over.iter().max().copied(),
        tally.delivered_at.iter().max().copied(),
        acked,
    ]
    .into_iter()
    .flatten()
    .max())
}

/// Counts per `bucket_ms` from `start`: hand-overs and deliveries from the
/// alert's tally, confirmations from its recipients. Events before `start`
/// (none should exist: nothing is sent before release) fall in bucket 0.
pub fn timeline(
    conn: &Connection,
    alert: AlertId,
    tally: &Tally,
    start: i64,
    bucket_ms: i64,
) -> Result<Timeline, StoreError> {
    let bucket_ms = bucket_ms.max(1);
    let series = |times: &[i64]| -> Series {
        let mut per: BTreeMap<i64, i64> = BTreeMap::new();
        for t in times {
            *per.entry((t - start).max(0) / bucket_ms).or_default() += 1;
        }
        per.into_iter().collect()
    };
    Ok(Timeline {
        start,
        bucket_ms,
        handover: series(&tally.handed_over),
        delivered: series(&tally.delivered_at),
        confirmed: series(&confirmations(conn, alert)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut c).unwrap();
        c.execute_batch(
            "INSERT INTO alerts (id, playbook, title, place, priority, audience, state, source, created_by, created_at)
             VALUES (1, 'lockdown', 'Lockdown', 'S1', 0, '{}', 'sending', 'api', 't', 0);",
        )
        .unwrap();
        c
    }

    fn recipient(c: &Connection, id: i64, acked: Option<i64>) {
        c.execute(
            "INSERT INTO recipients (id, alert_id, person_id, role, name, language, students, addresses, token, acked_at)
             VALUES (?1, 1, ?1, 'guardian', 'x', 'en', '[]', '[]', ?1, ?2)",
            params![id, acked],
        )
        .unwrap();
    }

    fn delivery(c: &Connection, rid: i64, sent: Option<i64>, delivered: Option<i64>, esc: bool) {
        c.execute(
            "INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, next_attempt_at,
                                     escalation, created_at, sent_at, delivered_at, updated_at)
             VALUES (1, ?1, 'sms', 'a', 'sent', 0, 0, ?4, 0, ?2, ?3, 0)",
            params![rid, sent, delivered, esc],
        )
        .unwrap();
    }

    #[test]
    fn events_are_counted_per_bucket_from_the_release() {
        let c = db();
        let start = 1_000_000;
        for (i, sent) in [0, 500, 999, 1_000, 3_500].iter().enumerate() {
            let rid = i as i64 + 1;
            recipient(&c, rid, (rid <= 2).then_some(start + 2_100));
            delivery(
                &c,
                rid,
                Some(start + sent),
                (rid == 1).then_some(start + 1_200),
                false,
            );
        }
        // An escalation call is not a first delivery.
        delivery(&c, 1, Some(start + 100), None, true);
        // Not handed over yet.
        delivery(&c, 5, None, None, false);
        let tally = Tally::read(&c, AlertId(1)).unwrap();
        let t = timeline(&c, AlertId(1), &tally, start, 1_000).unwrap();
        assert_eq!(t.handover, vec![(0, 3), (1, 1), (3, 1)]);
        assert_eq!(t.delivered, vec![(1, 1)]);
        assert_eq!(t.confirmed, vec![(2, 2)]);
        assert_eq!(t.last_bucket(), Some(3));
        assert_eq!(
            last_event(&c, AlertId(1), &tally).unwrap(),
            Some(start + 3_500)
        );
    }

    #[test]
    fn an_alert_with_nothing_sent_has_no_events() {
        let c = db();
        recipient(&c, 1, None);
        let tally = Tally::read(&c, AlertId(1)).unwrap();
        assert_eq!(last_event(&c, AlertId(1), &tally).unwrap(), None);
        let t = timeline(&c, AlertId(1), &tally, 0, 1_000).unwrap();
        assert!(t.handover.is_empty() && t.delivered.is_empty() && t.confirmed.is_empty());
        assert_eq!(t.last_bucket(), None);
    }
}
