//! Per-school figures of one alert for the console: recipients, reached,
//! delivered, confirmed and outstanding per school. A guardian counts at
//! every school one of their children in the alert attends; staff and
//! others without a child in the alert are counted on a row of their own.
//! One aggregate query, whatever the alert's size.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::StoreError;
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
pub fn per_school(conn: &Connection, alert: AlertId) -> Result<Vec<SchoolFigures>, StoreError> {
    let mut st = conn.prepare_cached(
        "WITH d AS (
             SELECT recipient_id,
                    max(state IN ('sent', 'delivered')) AS reached,
                    max(state = 'delivered') AS delivered
               FROM deliveries WHERE alert_id = ?1 GROUP BY recipient_id),
         rs AS (
             SELECT r.id, r.students, coalesce(d.reached, 0) AS reached,
                    coalesce(d.delivered, 0) AS delivered, r.acked_at IS NOT NULL AS confirmed
               FROM recipients r LEFT JOIN d ON d.recipient_id = r.id
              WHERE r.alert_id = ?1),
         per AS (
             SELECT DISTINCT rs.id, j.value ->> 'school_id' AS sid, j.value ->> 'school_name' AS sname,
                    rs.reached, rs.delivered, rs.confirmed
               FROM rs, json_each(rs.students) j
             UNION ALL
             SELECT rs.id, '', '', rs.reached, rs.delivered, rs.confirmed
               FROM rs WHERE json_array_length(rs.students) = 0)
         SELECT sid, max(sname), count(*), sum(reached), sum(delivered), sum(confirmed)
           FROM per GROUP BY sid ORDER BY sid = '', max(sname), sid",
    )?;
    let rows = st.query_map(params![alert.0], |r| {
        Ok(SchoolFigures {
            school_id: r.get(0)?,
            school: r.get(1)?,
            recipients: r.get(2)?,
            reached: r.get(3)?,
            delivered: r.get(4)?,
            confirmed: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
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
        let rows = per_school(&c, AlertId(1)).unwrap();
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
