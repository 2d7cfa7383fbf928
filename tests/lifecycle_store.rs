//! The lifecycle rules at the store's level, on a real SQLite file: the
//! races the durability review found, made deterministic by calling the
//! store in the order the race would.

use klaxon::audience::{Recipient, StudentRef};
use klaxon::domain::{AckKey, AlertId, Channel, CloseReason, DeliveryState, Role};
use klaxon::store::alerts::{self, AlertKind, Answer, Fanout, NewAlert};
use klaxon::store::deliveries::{self, Outcome, StatusApplied};
use klaxon::store::{Store, StoreError};
use rusqlite::Connection;

const T0: i64 = 1_800_000_000_000;

fn person(i: usize) -> Recipient {
    Recipient {
        person_id: format!("g{i}"),
        role: Role::Guardian,
        name: format!("Guardian {i}"),
        language: "en".into(),
        students: vec![StudentRef {
            id: format!("s{i}"),
            name: format!("Student {i}"),
            school_id: "S1".into(),
            school_name: "Lincoln".into(),
            grade: "03".into(),
        }],
        addresses: vec![
            (Channel::Sms, format!("+1555000{i:04}")),
            (Channel::Voice, format!("+1555000{i:04}")),
        ],
    }
}

fn new_alert(held: bool) -> NewAlert {
    NewAlert {
        kind: AlertKind::Alert,
        playbook: "lockdown".into(),
        title: "Lockdown".into(),
        place: "Lincoln".into(),
        priority: 0,
        audience_json: "{}".into(),
        message: None,
        messages: None,
        two_person: false,
        override_reason: None,
        drill: false,
        held,
        confirm: true,
        source: "test".into(),
        created_by: "test".into(),
        notify_within_ms: 120_000,
        ack_within_ms: 900_000,
        escalate_within_ms: 600_000,
        parent_id: None,
        warning: None,
        snapshot: None,
        estimate_ms: None,
    }
}

fn fanout() -> Fanout {
    Fanout {
        channels: vec![Channel::Sms],
        available: vec![Channel::Sms, Channel::Voice],
        priority: 0,
        routine: false,
    }
}

fn states(db: &Connection, alert: AlertId) -> Vec<String> {
    db.prepare("SELECT state FROM deliveries WHERE alert_id = ?1 ORDER BY id")
        .unwrap()
        .query_map([alert.0], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    key: AckKey,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        Fixture {
            dir,
            store,
            key: AckKey::from_bytes([3; 32]),
        }
    }

    fn db(&self) -> Connection {
        Connection::open(self.dir.path().join("klaxon.db")).unwrap()
    }

    async fn create(&self, held: bool, people: std::ops::Range<usize>) -> AlertId {
        let key = self.key.clone();
        self.store
            .write(move |c| {
                let id = alerts::insert(c, T0, &new_alert(held))?;
                let who: Vec<Recipient> = people.map(person).collect();
                alerts::add_recipients(c, id, T0, &fanout(), &key, &who)?;
                Ok(id)
            })
            .await
            .unwrap()
    }

    async fn add(&self, id: AlertId, people: std::ops::Range<usize>) -> (i64, i64) {
        let key = self.key.clone();
        self.store
            .write(move |c| {
                let who: Vec<Recipient> = people.map(person).collect();
                alerts::add_recipients(c, id, T0 + 10, &fanout(), &key, &who)
            })
            .await
            .unwrap()
    }

    async fn claim(&self, now: i64) -> Vec<deliveries::Claimed> {
        self.store
            .write(move |c| deliveries::claim(c, Channel::Sms, now, 100))
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_cancel_stops_later_chunks_retries_and_recovery() {
    let f = Fixture::new();
    let id = f.create(false, 0..3).await;
    // Two sends are in flight when the operator cancels.
    let claimed = f.claim(T0 + 1).await;
    assert_eq!(claimed.len(), 3);
    let unsent = f
        .store
        .write(move |c| alerts::cancel(c, id, T0 + 2, "op"))
        .await
        .unwrap();
    assert_eq!(unsent, 0, "all three were in flight");
    // A second cancel answers as the first, it is not a conflict.
    let again = f
        .store
        .write(move |c| alerts::cancel(c, id, T0 + 3, "op"))
        .await
        .unwrap();
    assert_eq!(again, unsent);
    // The chunk still being written when the cancel came adds nobody to send to.
    assert_eq!(f.add(id, 3..6).await.1, 0);
    // The in-flight sends fail transiently: their retry is not queued.
    let (a, b, c3) = (claimed[0].id, claimed[1].id, claimed[2].id);
    f.store
        .write(move |c| {
            deliveries::record(
                c,
                T0 + 4,
                &[
                    (
                        a,
                        Outcome::Retry {
                            provider: "p".into(),
                            error: "503".into(),
                            next_at: T0 + 5,
                        },
                    ),
                    (
                        b,
                        Outcome::Sent {
                            provider: "p".into(),
                            message_id: Some("SM1".into()),
                        },
                    ),
                ],
            )
        })
        .await
        .unwrap();
    assert!(f.claim(T0 + 10_000).await.is_empty(), "nothing claimable");
    // kill -9 with the third still in flight: recovery does not re-queue it.
    f.store
        .write(move |c| deliveries::recover(c, T0 + 20))
        .await
        .unwrap();
    assert!(f.claim(T0 + 10_000).await.is_empty());
    let db = f.db();
    let st = states(&db, id);
    assert_eq!(st, vec!["cancelled", "sent", "cancelled"], "{c3}");
}

#[tokio::test]
async fn an_approve_during_materialization_releases_the_chunks_written_after_it() {
    let f = Fixture::new();
    let id = f.create(true, 0..2).await;
    assert!(f.claim(T0 + 1).await.is_empty(), "held sends nothing");
    let r = f
        .store
        .write(move |c| alerts::release(c, id, T0 + 5, "op", (120_000, 900_000, 0), None))
        .await
        .unwrap();
    assert_eq!(r, alerts::Released::Now);
    // The rest of the audience arrives after the approve.
    f.add(id, 2..5).await;
    // A second approve is answered, not refused.
    let again = f
        .store
        .write(move |c| alerts::release(c, id, T0 + 6, "op", (120_000, 900_000, 0), None))
        .await
        .unwrap();
    assert_eq!(again, alerts::Released::Already);
    let db = f.db();
    assert!(
        states(&db, id).iter().all(|s| s == "queued"),
        "{:?}",
        states(&db, id)
    );
    assert_eq!(f.claim(T0 + 100).await.len(), 5);
}

#[tokio::test]
async fn a_provider_report_that_beats_the_outcome_is_applied_with_it() {
    let f = Fixture::new();
    let id = f.create(false, 0..1).await;
    f.store
        .write(move |c| alerts::finish(c, id, T0, None, None).map(|_| ()))
        .await
        .unwrap();
    let d = f.claim(T0 + 1).await[0].id;
    // Twilio's "delivered" arrives before the engine committed "sent".
    let early = f
        .store
        .write(move |c| {
            deliveries::provider_status(c, T0 + 2, Some(d), "SM9", DeliveryState::Delivered, None)
        })
        .await
        .unwrap();
    assert_eq!(early, StatusApplied::Deferred);
    let settled = f
        .store
        .write(move |c| {
            deliveries::record(
                c,
                T0 + 3,
                &[(
                    d,
                    Outcome::Sent {
                        provider: "twilio".into(),
                        message_id: Some("SM9".into()),
                    },
                )],
            )
        })
        .await
        .unwrap();
    assert_eq!(settled, vec![id.0], "the alert settles");
    let db = f.db();
    let (state, msg_id): (String, String) = db
        .query_row(
            "SELECT state, provider_msg_id FROM deliveries WHERE id = ?1",
            [d],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), msg_id.as_str()), ("delivered", "SM9"));
    let a = f.store.read(move |c| alerts::get(c, id)).await.unwrap();
    assert_eq!(a.deadline_met, Some(true));
    assert_eq!(a.state.as_str(), "settled");
}

#[tokio::test]
async fn escalation_skips_undeliverable_numbers_and_people_who_confirm_meanwhile() {
    let f = Fixture::new();
    let id = f.create(false, 0..3).await;
    f.store
        .write(move |c| alerts::finish(c, id, T0, None, None).map(|_| ()))
        .await
        .unwrap();
    let claimed = f.claim(T0 + 1).await;
    // Person 0's number does not exist (21211); 1 and 2 were reached.
    let outcomes: Vec<(i64, Outcome)> = claimed
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let o = if i == 0 {
                Outcome::Undeliverable {
                    provider: "twilio".into(),
                    code: "21211".into(),
                    error: "invalid number".into(),
                }
            } else {
                Outcome::Sent {
                    provider: "twilio".into(),
                    message_id: Some(format!("SM{i}")),
                }
            };
            (c.id, o)
        })
        .collect();
    f.store
        .write(move |c| deliveries::record(c, T0 + 2, &outcomes))
        .await
        .unwrap();
    // Past the ack deadline: the unconfirmed are called.
    let n = f
        .store
        .write(move |c| alerts::escalate(c, id, &[Channel::Voice], T0 + 900_001))
        .await
        .unwrap();
    assert_eq!(n, 2, "the undeliverable number is not called");
    // Person 1 confirms just after the escalation was queued.
    let r1: i64 = f
        .db()
        .query_row(
            "SELECT id FROM recipients WHERE person_id = 'g1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    f.store
        .write(move |c| {
            alerts::acknowledge(
                c,
                klaxon::domain::RecipientId(r1),
                &Answer::Confirm,
                "web",
                T0 + 900_002,
            )
        })
        .await
        .unwrap();
    let calls = f
        .store
        .write(move |c| deliveries::claim(c, Channel::Voice, T0 + 900_003, 10))
        .await
        .unwrap();
    assert_eq!(calls.len(), 1, "only person 2 is still called");
    assert!(calls[0].escalation);
    assert_eq!(
        calls[0].retry_until,
        Some(T0 + 900_000 + 600_000),
        "escalation retries are bounded by its own window"
    );
    // The notify verdict is about first deliveries and was decided before.
    let a = f.store.read(move |c| alerts::get(c, id)).await.unwrap();
    assert_eq!(a.deadline_met, Some(true));
    assert_eq!(a.handed_over_at, Some(T0 + 2));
}

#[tokio::test]
async fn an_answer_to_a_closed_or_cancelled_alert_records_nothing() {
    let f = Fixture::new();
    let id = f.create(false, 0..2).await;
    let rid: i64 = f
        .db()
        .query_row("SELECT min(id) FROM recipients", [], |r| r.get(0))
        .unwrap();
    let rid = klaxon::domain::RecipientId(rid);
    f.store
        .write(move |c| alerts::close(c, id, T0 + 5, CloseReason::Expired, "klaxon"))
        .await
        .unwrap();
    let o = f
        .store
        .write(move |c| alerts::acknowledge(c, rid, &Answer::Confirm, "sms", T0 + 6))
        .await
        .unwrap();
    assert_eq!(o, alerts::AckOutcome::Closed);
    let events: i64 = f
        .db()
        .query_row("SELECT count(*) FROM ack_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events, 0);
    // A closed alert cannot be released or cancelled.
    let r = f
        .store
        .write(move |c| alerts::cancel(c, id, T0 + 7, "op"))
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
}
