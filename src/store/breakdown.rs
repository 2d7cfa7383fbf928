//! Per-school figures of one alert for the console: recipients, reached,
//! delivered, confirmed and outstanding per school. A guardian counts at
//! every school one of their children in the alert attends; staff and
//! others without a child in the alert are counted on a row of their own.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, params};
use serde::Serialize;

use super::StoreError;
use super::tally::{DELIVERED, REACHED, Tally};
use crate::domain::AlertId;

/// One school's row. `school_id` is empty for the row of recipients with no
/// child in the alert (staff, groups).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SchoolFigures {
    pub school_id: String,
    pub school: String,
    pub recipients: i64,
    pub reached: i64,
    pub delivered: i64,
    pub confirmed: i64,
}

impl SchoolFigures {
    pub fn outstanding(&self) -> i64 {
        self.recipients - self.confirmed
    }
}

/// Every school of the alert, by name; the row without a school last.
/// Who was reached comes from the alert's tally (one pass over its
/// deliveries), the schools from `alert_students`, confirmations from the
/// `(alert_id, acked_at)` index.
pub fn per_school(
    conn: &Connection,
    alert: AlertId,
    tally: &Tally,
) -> Result<Vec<SchoolFigures>, StoreError> {
    // Per slot of the alert's id range: 0 not its recipient, 1 its
    // recipient, 2 confirmed (index-only read). Vectors, not maps: this
    // runs over every recipient of a district-wide alert.
    const NONE: u32 = u32::MAX;
    let mut person = vec![0u8; tally.len()];
    {
        let mut st = conn.prepare_cached(
            "SELECT id, acked_at IS NOT NULL FROM recipients WHERE alert_id = ?1",
        )?;
        let mut rows = st.query(params![alert.0])?;
        while let Some(r) = rows.next()? {
            if let Some(i) = tally.slot(r.get(0)?) {
                person[i] = 1 + u8::from(r.get::<_, bool>(1)?);
            }
        }
    }
    let mut schools: Vec<SchoolFigures> = Vec::new();
    let mut index: HashMap<String, u32> = HashMap::new();
    // A guardian counts once per school: the first school seen per person,
    // and a set for the few with children at several.
    let mut first = vec![NONE; tally.len()];
    let mut more: HashSet<(usize, u32)> = HashSet::new();
    let add = |row: &mut SchoolFigures, flags: u8, confirmed: bool| {
        row.recipients += 1;
        row.reached += i64::from(flags & REACHED != 0);
        row.delivered += i64::from(flags & DELIVERED != 0);
        row.confirmed += i64::from(confirmed);
    };
    {
        let mut st = conn.prepare_cached(
            "SELECT recipient_id, school_id, school_name FROM alert_students WHERE alert_id = ?1",
        )?;
        let mut rows = st.query(params![alert.0])?;
        while let Some(r) = rows.next()? {
            let rid: i64 = r.get(0)?;
            let Some(p) = tally.slot(rid).filter(|p| person[*p] != 0) else {
                continue;
            };
            let sid = r
                .get_ref(1)?
                .as_str()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let k = match index.get(sid) {
                Some(k) => *k,
                None => {
                    let k = schools.len() as u32;
                    index.insert(sid.to_string(), k);
                    schools.push(SchoolFigures {
                        school_id: sid.to_string(),
                        school: r.get(2)?,
                        ..SchoolFigures::default()
                    });
                    k
                }
            };
            let new = if first[p] == NONE {
                first[p] = k;
                true
            } else {
                first[p] != k && more.insert((p, k))
            };
            if new {
                add(&mut schools[k as usize], tally.of(rid), person[p] == 2);
            }
        }
    }
    let mut none = SchoolFigures::default();
    for (p, kind) in person.iter().enumerate() {
        if *kind != 0 && first[p] == NONE {
            add(&mut none, tally.flags_at(p), *kind == 2);
        }
    }
    schools.sort_by(|a, b| (&a.school, &a.school_id).cmp(&(&b.school, &b.school_id)));
    if none.recipients > 0 {
        schools.push(none);
    }
    Ok(schools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guardian_counts_at_each_school_of_their_children_once() {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut c).unwrap();
        c.execute_batch(
            r#"INSERT INTO alerts (id, playbook, title, place, priority, audience, state, source, created_by, created_at)
               VALUES (1, 'lockdown', 'Lockdown', 'S1', 0, '{}', 'sending', 'api', 't', 0);
               INSERT INTO recipients (id, alert_id, person_id, role, name, language, students, addresses, token, acked_at) VALUES
                 (1, 1, 'g1', 'guardian', 'a', 'en',
                  '[{"id":"k1","name":"K1","school_id":"S1","school_name":"Alpha","grade":"1"},
                    {"id":"k2","name":"K2","school_id":"S1","school_name":"Alpha","grade":"3"},
                    {"id":"k3","name":"K3","school_id":"S2","school_name":"Beta","grade":"5"}]', '[]', 't1', 5),
                 (2, 1, 'g2', 'guardian', 'b', 'en',
                  '[{"id":"k4","name":"K4","school_id":"S2","school_name":"Beta","grade":"5"}]', '[]', 't2', NULL),
                 (3, 1, 'st', 'staff', 'c', 'en', '[]', '[]', 't3', NULL);
               INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, next_attempt_at, created_at, updated_at) VALUES
                 (1, 1, 'sms', 'x', 'delivered', 0, 0, 0, 0),
                 (1, 1, 'email', 'y', 'failed', 0, 0, 0, 0),
                 (1, 2, 'sms', 'z', 'sent', 0, 0, 0, 0),
                 (1, 3, 'sms', 'w', 'queued', 0, 0, 0, 0);"#,
        )
        .unwrap();
        crate::store::lists::index_students(&c).unwrap();
        let rows = per_school(&c, AlertId(1), &Tally::read(&c, AlertId(1)).unwrap()).unwrap();
        let row = |id: &str| rows.iter().find(|r| r.school_id == id).unwrap().clone();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows.last().unwrap().school_id,
            "",
            "the row without a school is last"
        );
        let alpha = row("S1");
        assert_eq!(
            (
                alpha.recipients,
                alpha.reached,
                alpha.delivered,
                alpha.confirmed
            ),
            (1, 1, 1, 1),
            "two children at Alpha: the guardian once"
        );
        let beta = row("S2");
        assert_eq!(
            (
                beta.recipients,
                beta.reached,
                beta.delivered,
                beta.confirmed
            ),
            (2, 2, 1, 1)
        );
        assert_eq!(beta.outstanding(), 1);
        let none = row("");
        assert_eq!((none.recipients, none.reached, none.confirmed), (1, 0, 0));
    }
}
