//! Everything the console and the status API count about one alert's
//! deliveries, from one pass over the `deliveries_figures` index: counts per
//! channel and state, the escalation stage's, who was reached and who had a
//! delivery reported, and the hand-over and delivery times. The index holds
//! every column read here, so a district-wide alert (175,000 deliveries) is
//! one range scan of it, not a scan of the table per figure.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::StoreError;
use crate::domain::AlertId;

/// Per recipient: at least one delivery handed over (sent or delivered).
pub const REACHED: u8 = 1;
/// Per recipient: at least one delivery reported delivered.
pub const DELIVERED: u8 = 2;

/// One alert's deliveries, counted.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// First deliveries (not escalation) per channel and state.
    pub channels: BTreeMap<String, BTreeMap<String, i64>>,
    /// Escalation deliveries per state.
    pub escalation: BTreeMap<String, i64>,
    /// `REACHED` / `DELIVERED` flags per recipient, over every delivery:
    /// index `id - base`. An alert's recipient ids are one dense range
    /// (allocated in order by the writer), so a vector, not a map.
    base: i64,
    flags: Vec<u8>,
    /// `sent_at` of each first delivery handed over.
    pub handed_over: Vec<i64>,
    /// `delivered_at` of each first delivery reported delivered.
    pub delivered_at: Vec<i64>,
}

impl Tally {
    /// Reads the alert's deliveries once.
    pub fn read(conn: &Connection, alert: AlertId) -> Result<Tally, StoreError> {
        let mut t = Tally::default();
        let (lo, hi): (Option<i64>, Option<i64>) = conn
            .prepare_cached("SELECT min(id), max(id) FROM recipients WHERE alert_id = ?1")?
            .query_row([alert.0], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if let (Some(lo), Some(hi)) = (lo, hi) {
            t.base = lo;
            t.flags = vec![0; (hi - lo + 1) as usize];
        }
        let mut st = conn.prepare_cached(
            "SELECT state, escalation, channel, recipient_id, sent_at, delivered_at
               FROM deliveries INDEXED BY deliveries_figures WHERE alert_id = ?1",
        )?;
        let mut rows = st.query([alert.0])?;
        // The same few (channel, state) keys repeat 175,000 times: count
        // them in a short list found by borrowed names, owned once each.
        let mut first: Vec<(String, String, i64)> = Vec::new();
        while let Some(r) = rows.next()? {
            let state = r
                .get_ref(0)?
                .as_str()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let escalation: bool = r.get(1)?;
            let recipient: i64 = r.get(3)?;
            let sent_at: Option<i64> = r.get(4)?;
            let delivered_at: Option<i64> = r.get(5)?;
            let mut flags = 0;
            match state {
                "sent" => flags = REACHED,
                "delivered" => flags = REACHED | DELIVERED,
                _ => {}
            }
            if flags != 0
                && let Some(f) = usize::try_from(recipient - t.base)
                    .ok()
                    .and_then(|i| t.flags.get_mut(i))
            {
                *f |= flags;
            }
            if escalation {
                match t.escalation.get_mut(state) {
                    Some(n) => *n += 1,
                    None => {
                        t.escalation.insert(state.to_string(), 1);
                    }
                }
                continue;
            }
            let channel = r
                .get_ref(2)?
                .as_str()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            match first
                .iter_mut()
                .find(|(c, s, _)| c == channel && s == state)
            {
                Some((_, _, n)) => *n += 1,
                None => first.push((channel.to_string(), state.to_string(), 1)),
            }
            if let Some(at) = sent_at {
                t.handed_over.push(at);
            }
            if let Some(at) = delivered_at {
                t.delivered_at.push(at);
            }
        }
        for (c, s, n) in first {
            *t.channels.entry(c).or_default().entry(s).or_default() += n;
        }
        Ok(t)
    }

    /// First deliveries per state, all channels.
    pub fn totals(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for per in self.channels.values() {
            for (s, n) in per {
                *out.entry(s.clone()).or_default() += n;
            }
        }
        out
    }

    /// Recipients with `flag` set.
    pub fn count(&self, flag: u8) -> i64 {
        self.flags.iter().filter(|f| *f & flag != 0).count() as i64
    }

    /// Position of a recipient id in the alert's dense id range, for
    /// callers keeping their own per-recipient vectors (`len()` long).
    pub fn slot(&self, recipient: i64) -> Option<usize> {
        usize::try_from(recipient - self.base)
            .ok()
            .filter(|i| *i < self.flags.len())
    }

    /// Length of the alert's recipient id range.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Flags at a slot (see `slot`).
    pub fn flags_at(&self, slot: usize) -> u8 {
        self.flags.get(slot).copied().unwrap_or(0)
    }

    /// Flags of one recipient (0 when none of their deliveries went out).
    pub fn of(&self, recipient: i64) -> u8 {
        usize::try_from(recipient - self.base)
            .ok()
            .and_then(|i| self.flags.get(i))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_counts_first_deliveries_escalations_and_people() {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut c).unwrap();
        c.execute_batch(
            r#"INSERT INTO alerts (id, playbook, title, place, priority, audience, state, source, created_by, created_at)
               VALUES (1, 'lockdown', 'Lockdown', 'S1', 0, '{}', 'sending', 'api', 't', 0),
                      (2, 'lockdown', 'Lockdown', 'S1', 0, '{}', 'sending', 'api', 't', 0);
               INSERT INTO recipients (id, alert_id, person_id, role, name, language, students, addresses, token) VALUES
                 (1, 1, 'g1', 'guardian', 'a', 'en', '[]', '[]', 't1'),
                 (2, 1, 'g2', 'guardian', 'b', 'en', '[]', '[]', 't2'),
                 (3, 1, 'g3', 'guardian', 'c', 'en', '[]', '[]', 't3'),
                 (9, 2, 'g9', 'guardian', 'd', 'en', '[]', '[]', 't9');
               INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, next_attempt_at, created_at, updated_at, escalation, sent_at, delivered_at) VALUES
                 (1, 1, 'sms', 'a', 'delivered', 0, 0, 0, 0, 0, 10, 20),
                 (1, 1, 'email', 'b', 'sent', 0, 0, 0, 0, 0, 11, NULL),
                 (1, 2, 'sms', 'c', 'failed', 0, 0, 0, 0, 0, NULL, NULL),
                 (1, 2, 'voice', 'c', 'sent', 0, 0, 0, 0, 1, 30, NULL),
                 (1, 3, 'sms', 'd', 'queued', 0, 0, 0, 0, 0, NULL, NULL),
                 (2, 9, 'sms', 'e', 'sent', 0, 0, 0, 0, 0, 5, NULL);"#,
        )
        .unwrap();
        let t = Tally::read(&c, AlertId(1)).unwrap();
        assert_eq!(t.channels["sms"]["delivered"], 1);
        assert_eq!(t.channels["sms"]["failed"], 1);
        assert_eq!(t.channels["sms"]["queued"], 1);
        assert_eq!(t.channels["email"]["sent"], 1);
        assert!(!t.channels.contains_key("voice"), "escalations apart");
        assert_eq!(t.escalation["sent"], 1);
        assert_eq!(t.totals()["sent"], 1);
        // Recipient 2 was reached only by the escalation call.
        assert_eq!((t.count(REACHED), t.count(DELIVERED)), (2, 1));
        assert_eq!(
            (t.of(1), t.of(2), t.of(3)),
            (REACHED | DELIVERED, REACHED, 0)
        );
        let mut h = t.handed_over.clone();
        h.sort();
        assert_eq!(h, vec![10, 11], "first deliveries only");
        assert_eq!(t.delivered_at, vec![20]);
    }
}
