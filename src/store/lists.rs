//! The console's searchable lists of one alert: who has not confirmed (and
//! why), and the pickup plan per student. Keyset-paginated (`after` the
//! last key of the previous page) with the count of every match, so a page
//! always says how many there are in all and nothing is cut silently. The
//! same rules as `alerts::outstanding` and `alerts::pickup_plan`, with a
//! search on names and schools.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::StoreError;
use super::alerts::{PickupAnswer, StudentPlan};
use crate::domain::AlertId;

/// `LIKE` pattern for a search: case-insensitive substring, with `%` and
/// `_` in the search taken literally.
pub fn pattern(q: &str) -> String {
    let mut p = String::from("%");
    for c in q.trim().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Fills `alert_students` from every recipient's `students` JSON, for
/// alerts written before the table existed (migration 14).
pub fn index_students(conn: &Connection) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "INSERT OR IGNORE INTO alert_students
             SELECT r.alert_id, j.value ->> 'id', r.id, coalesce(j.value ->> 'name', ''),
                    coalesce(j.value ->> 'school_id', ''), coalesce(j.value ->> 'school_name', ''),
                    coalesce(j.value ->> 'grade', '')
               FROM recipients r, json_each(r.students) j
              WHERE j.value ->> 'id' IS NOT NULL",
        [],
    )?)
}

/// One person not yet confirmed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutstandingRow {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub language: String,
    /// `unreachable`, `failed`, `pending` or `reached`, as in `alerts::outstanding`.
    pub reason: String,
    /// Children in the alert, "Name (School)".
    pub children: Vec<String>,
}

/// One page of the people not confirmed whose name, or a child's name or
/// school, contains `q`; and how many match in all.
pub fn outstanding(
    conn: &Connection,
    alert: AlertId,
    q: &str,
    after: i64,
    limit: i64,
) -> Result<(Vec<OutstandingRow>, i64), StoreError> {
    let pat = pattern(q);
    // The children's matches are found once for the alert (SQLite keeps
    // the subquery's result as a temporary index), not per person.
    let filter = "(?2 = '%%' OR r.name LIKE ?2 ESCAPE '\\' OR r.id IN (
                     SELECT s.recipient_id FROM alert_students s
                      WHERE s.alert_id = ?1
                        AND (s.name LIKE ?2 ESCAPE '\\' OR s.school_name LIKE ?2 ESCAPE '\\')))";
    let total: i64 = conn
        .prepare_cached(&format!(
            "SELECT count(*) FROM recipients r WHERE r.alert_id = ?1 AND r.acked_at IS NULL AND {filter}"
        ))?
        .query_row(params![alert.0, pat], |r| r.get(0))?;
    let mut st = conn.prepare_cached(&format!(
        "SELECT r.id, r.name, r.role, r.language, r.students,
            (SELECT count(*) FROM deliveries d WHERE d.recipient_id = r.id),
            (SELECT count(*) FROM deliveries d WHERE d.recipient_id = r.id AND d.state IN ('sent','delivered')),
            (SELECT count(*) FROM deliveries d WHERE d.recipient_id = r.id AND d.state IN ('queued','sending','held'))
         FROM recipients r
         WHERE r.alert_id = ?1 AND r.acked_at IS NULL AND r.id > ?3 AND {filter}
         ORDER BY r.id LIMIT ?4"
    ))?;
    let rows = st.query_map(params![alert.0, pat, after, limit], |r| {
        let students: String = r.get(4)?;
        let kids: Vec<crate::audience::StudentRef> =
            serde_json::from_str(&students).unwrap_or_default();
        let (total, ok, pending): (i64, i64, i64) = (r.get(5)?, r.get(6)?, r.get(7)?);
        let reason = if total == 0 {
            "unreachable"
        } else if ok > 0 {
            "reached"
        } else if pending > 0 {
            "pending"
        } else {
            "failed"
        };
        Ok(OutstandingRow {
            id: r.get(0)?,
            name: r.get(1)?,
            role: r.get(2)?,
            language: r.get(3)?,
            reason: reason.into(),
            children: kids
                .iter()
                .map(|k| format!("{} ({})", k.name, k.school_name))
                .collect(),
        })
    })?;
    Ok((rows.collect::<Result<_, _>>()?, total))
}

/// One page of the pickup plan, students whose name, school or grade
/// contains `q`, by student id after `after`; and how many match in all.
pub fn pickup(
    conn: &Connection,
    alert: AlertId,
    q: &str,
    after: &str,
    limit: i64,
) -> Result<(Vec<StudentPlan>, i64), StoreError> {
    let pat = pattern(q);
    let total: i64 = conn
        .prepare_cached(&format!(
            "SELECT count(DISTINCT s.student_id) FROM alert_students s WHERE s.alert_id = ?1 AND {STUDENT_MATCH}"
        ))?
        .query_row(params![alert.0, pat], |r| r.get(0))?;
    Ok((students(conn, alert, &pat, after, limit)?, total))
}

/// A student of the alert whose name, school or grade matches `?2`.
const STUDENT_MATCH: &str = "(?2 = '%%' OR s.name LIKE ?2 ESCAPE '\\'
    OR s.school_name LIKE ?2 ESCAPE '\\' OR s.grade LIKE ?2 ESCAPE '\\')";

/// Up to `limit` students matching the pattern `pat`, by id after `after`,
/// with their guardians' answers: a range of the `alert_students` key.
pub fn students(
    conn: &Connection,
    alert: AlertId,
    pat: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<StudentPlan>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT s.student_id, max(s.name), max(s.school_name), max(s.grade)
           FROM alert_students s
          WHERE s.alert_id = ?1 AND s.student_id > ?3 AND {STUDENT_MATCH}
          GROUP BY s.student_id ORDER BY s.student_id LIMIT ?4"
    ))?;
    let rows: Vec<(String, String, String, String)> = st
        .query_map(params![alert.0, pat, after, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    with_answers(conn, alert, rows)
}

/// Students whose guardians answered differently, by student id: found
/// from the answers (indexed), not by reading every recipient.
pub fn conflicts(
    conn: &Connection,
    alert: AlertId,
    limit: i64,
) -> Result<Vec<StudentPlan>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT s.student_id, max(s.name), max(s.school_name), max(s.grade)
           FROM alert_students s
          WHERE s.alert_id = ?1
            AND s.student_id IN (SELECT student_id FROM pickups WHERE alert_id = ?1
                                  GROUP BY student_id HAVING count(DISTINCT choice) > 1)
          GROUP BY s.student_id ORDER BY s.student_id LIMIT ?2",
    )?;
    let rows: Vec<(String, String, String, String)> = st
        .query_map(params![alert.0, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    with_answers(conn, alert, rows)
}

/// Every guardian's answer for each `(id, name, school, grade)`.
fn with_answers(
    conn: &Connection,
    alert: AlertId,
    rows: Vec<(String, String, String, String)>,
) -> Result<Vec<StudentPlan>, StoreError> {
    let mut answers = conn.prepare_cached(
        "SELECT r.person_id, r.name, p.choice, p.at, p.via FROM pickups p JOIN recipients r ON r.id = p.recipient_id
         WHERE p.alert_id = ?1 AND p.student_id = ?2 ORDER BY p.at",
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (sid, name, school, grade) in rows {
        let a: Vec<PickupAnswer> = answers
            .query_map(params![alert.0, sid], |r| {
                Ok(PickupAnswer {
                    guardian_id: r.get(0)?,
                    guardian: r.get(1)?,
                    choice: r.get(2)?,
                    at: r.get(3)?,
                    via: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let conflict = a.iter().any(|x| x.choice != a[0].choice);
        out.push(StudentPlan {
            student_id: sid,
            student: name,
            school,
            grade,
            answers: a,
            conflict,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut c).unwrap();
        c.execute_batch(
            r#"INSERT INTO alerts (id, playbook, title, place, priority, audience, state, source, created_by, created_at)
               VALUES (1, 'early-dismissal', 'Early dismissal', 'S1', 0, '{}', 'sending', 'api', 't', 0);
               INSERT INTO recipients (id, alert_id, person_id, role, name, language, students, addresses, token, acked_at) VALUES
                 (1, 1, 'g1', 'guardian', 'Maria Garcia', 'es',
                  '[{"id":"k1","name":"Ana Garcia","school_id":"S1","school_name":"Lincoln","grade":"1"}]', '[]', 't1', NULL),
                 (2, 1, 'g2', 'guardian', 'Wei Lee', 'en',
                  '[{"id":"k2","name":"Ben Lee","school_id":"S1","school_name":"Lincoln","grade":"3"}]', '[]', 't2', 9),
                 (3, 1, 'g3', 'guardian', 'Dana 100% Nguyen', 'en',
                  '[{"id":"k3","name":"Kim Nguyen","school_id":"S2","school_name":"Roosevelt","grade":"7"}]', '[]', 't3', NULL),
                 (4, 1, 'st', 'staff', 'Pat Staff', 'en', '[]', '[]', 't4', NULL);
               INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, next_attempt_at, created_at, updated_at) VALUES
                 (1, 1, 'sms', 'x', 'sent', 0, 0, 0, 0),
                 (1, 3, 'sms', 'y', 'failed', 0, 0, 0, 0);
               INSERT INTO pickups (alert_id, recipient_id, student_id, choice, at, via) VALUES (1, 2, 'k2', 'bus', 9, 'web');"#,
        )
        .unwrap();
        index_students(&c).unwrap();
        c
    }

    #[test]
    fn outstanding_is_searched_by_person_child_and_school_and_counted() {
        let c = db();
        let (all, total) = outstanding(&c, AlertId(1), "", 0, 10).unwrap();
        assert_eq!(total, 3, "Wei confirmed");
        let reasons: Vec<(&str, &str)> = all
            .iter()
            .map(|r| (r.name.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("Maria Garcia", "reached"),
                ("Dana 100% Nguyen", "failed"),
                ("Pat Staff", "unreachable")
            ]
        );
        assert_eq!(
            outstanding(&c, AlertId(1), "ana garcia", 0, 10).unwrap().1,
            1,
            "a child's name"
        );
        assert_eq!(
            outstanding(&c, AlertId(1), "ROOSEVELT", 0, 10).unwrap().1,
            1,
            "a school"
        );
        assert_eq!(
            outstanding(&c, AlertId(1), "100%", 0, 10).unwrap().1,
            1,
            "% is literal"
        );
        assert_eq!(
            outstanding(&c, AlertId(1), "1_0", 0, 10).unwrap().1,
            0,
            "_ is literal"
        );
        // Keyset pages: two, then the rest, with the same total.
        let (p1, t1) = outstanding(&c, AlertId(1), "", 0, 2).unwrap();
        let (p2, t2) = outstanding(&c, AlertId(1), "", p1[1].id, 2).unwrap();
        assert_eq!((p1.len(), p2.len(), t1, t2), (2, 1, 3, 3));
        assert_eq!(p2[0].name, "Pat Staff");
    }

    #[test]
    fn the_pickup_plan_is_searched_and_counted() {
        let c = db();
        let (all, total) = pickup(&c, AlertId(1), "", "", 10).unwrap();
        assert_eq!(total, 3);
        let ben = all.iter().find(|p| p.student == "Ben Lee").unwrap();
        assert_eq!(ben.answers.len(), 1);
        assert_eq!(ben.answers[0].choice, "bus");
        let (found, total) = pickup(&c, AlertId(1), "lincoln", "", 1).unwrap();
        assert_eq!((found.len(), total), (1, 2), "one page of two matches");
        assert!(conflicts(&c, AlertId(1), 10).unwrap().is_empty());
        c.execute(
            "INSERT INTO pickups (alert_id, recipient_id, student_id, choice, at, via) VALUES (1, 1, 'k2', 'walk', 10, 'sms')",
            [],
        )
        .unwrap();
        let both = conflicts(&c, AlertId(1), 10).unwrap();
        assert_eq!(both.len(), 1);
        assert_eq!(
            (
                both[0].student.as_str(),
                both[0].answers.len(),
                both[0].conflict
            ),
            ("Ben Lee", 2, true)
        );
        let (rest, _) = pickup(&c, AlertId(1), "lincoln", &found[0].student_id, 1).unwrap();
        assert_eq!(rest.len(), 1);
        assert_ne!(rest[0].student_id, found[0].student_id);
    }
}
