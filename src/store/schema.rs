//! Versioned migrations of `klaxon.db`, applied in order at start-up. A
//! migration is never edited once released; changes come as a new one.

use rusqlite::Connection;

use super::StoreError;

/// Times are milliseconds since the Unix epoch (UTC) everywhere.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE alerts (
        id               INTEGER PRIMARY KEY,
        playbook         TEXT NOT NULL,
        title            TEXT NOT NULL,
        place            TEXT NOT NULL,          -- the schools it concerns, as people read them
        priority         INTEGER NOT NULL,
        audience         TEXT NOT NULL,          -- the AudienceSpec, JSON
        message          TEXT,                   -- operator's text, if any
        drill            INTEGER NOT NULL DEFAULT 0,
        state            TEXT NOT NULL,          -- held | sending | cancelled
        source           TEXT NOT NULL,          -- api | demo | cap:<id> | all-clear:<id>
        created_by       TEXT NOT NULL,
        created_at       INTEGER NOT NULL,
        released_at      INTEGER,                -- when sending started (after approval if held)
        notify_deadline  INTEGER,                -- everyone handed over by then
        ack_deadline     INTEGER,                -- unconfirmed escalated after
        settled_at       INTEGER,                -- when the last delivery left the queue
        escalated_at     INTEGER,
        cancelled_at     INTEGER,
        parent_id        INTEGER REFERENCES alerts(id),
        recipients       INTEGER NOT NULL DEFAULT 0,
        unreachable      INTEGER NOT NULL DEFAULT 0,
        estimate_ms      INTEGER,                -- capacity estimate for the hand-over
        warning          TEXT                    -- capacity or other warning shown to the operator
    );
    CREATE TABLE recipients (
        id          INTEGER PRIMARY KEY,
        alert_id    INTEGER NOT NULL REFERENCES alerts(id),
        person_id   TEXT NOT NULL,
        role        TEXT NOT NULL,
        name        TEXT NOT NULL,
        language    TEXT NOT NULL,
        students    TEXT NOT NULL,               -- JSON array of StudentRef
        addresses   TEXT NOT NULL,               -- JSON array of [channel, address]
        token       TEXT NOT NULL UNIQUE,        -- acknowledgement capability, 160 random bits
        acked_at    INTEGER,
        ack_choice  TEXT,
        ack_via     TEXT,                        -- web | sms | voice
        ack_changed_at INTEGER,
        UNIQUE (alert_id, person_id)
    );
    CREATE TABLE deliveries (
        id              INTEGER PRIMARY KEY,
        alert_id        INTEGER NOT NULL REFERENCES alerts(id),
        recipient_id    INTEGER NOT NULL REFERENCES recipients(id),
        channel         TEXT NOT NULL,
        address         TEXT NOT NULL,
        state           TEXT NOT NULL,           -- queued | sending | sent | delivered | failed | undeliverable | cancelled
        priority        INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        provider        TEXT,                    -- last provider tried
        provider_msg_id TEXT,
        error_code      TEXT,
        error           TEXT,
        escalation      INTEGER NOT NULL DEFAULT 0,
        created_at      INTEGER NOT NULL,
        sent_at         INTEGER,
        delivered_at    INTEGER,
        updated_at      INTEGER NOT NULL
    );
    CREATE INDEX deliveries_queue ON deliveries (channel, priority, next_attempt_at) WHERE state = 'queued';
    CREATE INDEX deliveries_alert ON deliveries (alert_id, state);
    CREATE INDEX deliveries_recipient ON deliveries (recipient_id);
    CREATE INDEX deliveries_address ON deliveries (address, state);
    CREATE INDEX deliveries_provider_msg ON deliveries (provider_msg_id) WHERE provider_msg_id IS NOT NULL;
    CREATE INDEX recipients_alert ON recipients (alert_id, acked_at);
    CREATE TABLE ack_events (
        id           INTEGER PRIMARY KEY,
        recipient_id INTEGER NOT NULL REFERENCES recipients(id),
        alert_id     INTEGER NOT NULL,
        at           INTEGER NOT NULL,
        choice       TEXT,
        via          TEXT NOT NULL
    );
    CREATE TABLE audit (
        id       INTEGER PRIMARY KEY,
        at       INTEGER NOT NULL,
        actor    TEXT NOT NULL,
        action   TEXT NOT NULL,
        alert_id INTEGER,
        detail   TEXT NOT NULL
    );
    CREATE TABLE api_tokens (
        id           INTEGER PRIMARY KEY,
        name         TEXT NOT NULL,
        role         TEXT NOT NULL,              -- admin | operator | viewer
        hash         TEXT NOT NULL UNIQUE,       -- SHA-256 of the token, hex
        created_at   INTEGER NOT NULL,
        revoked_at   INTEGER
    );
    "#,
    // 2: staged materialization. An alert is committed first with a frozen
    // snapshot of the SIS copy; its recipients follow in chunks, the first
    // one sent at once; `materialized` turns 1 when all are written. A crash
    // in between is completed at start-up from the snapshot.
    r#"
    ALTER TABLE alerts ADD COLUMN materialized INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE alerts ADD COLUMN snapshot TEXT;
    "#,
    // 3: fewer index updates per state change on the hot path. Callbacks
    // find their delivery by the id in their URL; an address lookup does not
    // need the state.
    r#"
    DROP INDEX deliveries_provider_msg;
    DROP INDEX deliveries_address;
    CREATE INDEX deliveries_address ON deliveries (address);
    "#,
    // 4: the alert lifecycle as typed states (held → sending → settled →
    // closed), follow-ups (updates, all-clears) that reuse the original's
    // recipients, a notify-deadline verdict decided once, the escalation
    // stage with its own window, per-student pickup answers, the reply inbox
    // and opt-outs. Acknowledgement tokens are derived (`AckToken`), only
    // their SHA-256 is kept in `recipients.token` from now on.
    r#"
    ALTER TABLE alerts ADD COLUMN kind TEXT NOT NULL DEFAULT 'alert';   -- alert | update | all-clear
    ALTER TABLE alerts ADD COLUMN confirm INTEGER NOT NULL DEFAULT 1;   -- asks its recipients to confirm
    ALTER TABLE alerts ADD COLUMN closed_at INTEGER;
    ALTER TABLE alerts ADD COLUMN closed_reason TEXT;                   -- expired | all-clear | cancelled | delivered
    ALTER TABLE alerts ADD COLUMN close_at INTEGER;                     -- when its window (with escalation) ends
    ALTER TABLE alerts ADD COLUMN escalate_until INTEGER;               -- end of the escalation stage's window
    ALTER TABLE alerts ADD COLUMN handed_over_at INTEGER;               -- last first delivery handed over
    ALTER TABLE alerts ADD COLUMN deadline_met INTEGER;                 -- the notify verdict, decided once
    ALTER TABLE alerts ADD COLUMN cancel_unsent INTEGER;                -- the first cancel's answer, repeated
    ALTER TABLE alerts ADD COLUMN all_clear_id INTEGER;                 -- the first all-clear's id, repeated
    UPDATE alerts SET closed_reason = 'cancelled', closed_at = cancelled_at, state = 'closed' WHERE state = 'cancelled';
    UPDATE alerts SET state = 'settled' WHERE state = 'sending' AND settled_at IS NOT NULL;
    UPDATE alerts SET kind = 'all-clear', confirm = 0 WHERE parent_id IS NOT NULL;
    CREATE INDEX alerts_open ON alerts (state) WHERE state <> 'closed';
    CREATE INDEX alerts_undecided ON alerts (id) WHERE deadline_met IS NULL;
    ALTER TABLE deliveries ADD COLUMN reported_state TEXT;              -- a provider report that arrived before the outcome was committed
    CREATE INDEX IF NOT EXISTS deliveries_provider_msg ON deliveries (provider_msg_id) WHERE provider_msg_id IS NOT NULL;
    CREATE TABLE pickups (
        alert_id     INTEGER NOT NULL REFERENCES alerts(id),
        student_id   TEXT NOT NULL,
        recipient_id INTEGER NOT NULL REFERENCES recipients(id),
        choice       TEXT NOT NULL,
        at           INTEGER NOT NULL,
        via          TEXT NOT NULL,
        PRIMARY KEY (alert_id, student_id, recipient_id)
    );
    CREATE TABLE replies (
        id           INTEGER PRIMARY KEY,
        alert_id     INTEGER REFERENCES alerts(id),
        recipient_id INTEGER REFERENCES recipients(id),
        channel      TEXT NOT NULL,
        address      TEXT NOT NULL,
        body         TEXT NOT NULL,
        kind         TEXT NOT NULL,                                     -- message | late-confirmation | opt-out | opt-in
        received_at  INTEGER NOT NULL
    );
    CREATE INDEX replies_alert ON replies (alert_id, id);
    CREATE TABLE opt_outs (
        address      TEXT PRIMARY KEY,
        at           INTEGER NOT NULL
    );
    "#,
    // 5 (CAP trigger sources): each CAP message handled once, keyed
    // by identifier + sender + sent, across feeds and restarts.
    r#"
    CREATE TABLE cap_messages (
        id           INTEGER PRIMARY KEY,
        identifier   TEXT NOT NULL,
        sender       TEXT NOT NULL,
        sent         INTEGER NOT NULL,
        msg_type     TEXT NOT NULL,          -- Alert | Update | Cancel | ...
        source       TEXT NOT NULL,          -- feed:<name> | webhook:<name> | watch-folder
        received_at  INTEGER NOT NULL,
        outcome      TEXT NOT NULL,          -- pending | sent | held | drill | recorded | skipped | failed
        detail       TEXT,                   -- why, in words
        rule         TEXT,                   -- the rule that matched
        alert_id     INTEGER REFERENCES alerts(id),
        refers_to    INTEGER REFERENCES cap_messages(id),
        cancelled_at INTEGER,
        expires      INTEGER,                -- the message's expiry: a held alert is withdrawn then
        UNIQUE (identifier, sender, sent)
    );
    CREATE INDEX alerts_source ON alerts (source);
    -- Signatures of signed webhook triggers, kept past their validity
    -- window so a replayed request is refused, also across a restart.
    CREATE TABLE webhook_signatures (
        source     TEXT NOT NULL,
        signature  TEXT NOT NULL,
        seen_at    INTEGER NOT NULL,
        PRIMARY KEY (source, signature)
    );
    "#,
    // 6 (SIS sync): one row per SIS import or pull, for `klaxon sis
    // status`, `/readyz` and the problem emails; and the problems already
    // emailed, so each is sent once, not once per try.
    r#"
    CREATE TABLE sis_syncs (
        id          INTEGER PRIMARY KEY,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        trigger     TEXT NOT NULL,              -- schedule | watch-folder | cli
        kind        TEXT NOT NULL,              -- bulk | delta | rest | rest-incremental
        source      TEXT NOT NULL,              -- file path or base URL
        outcome     TEXT NOT NULL,              -- ok | refused | failed
        added       INTEGER NOT NULL DEFAULT 0,
        changed     INTEGER NOT NULL DEFAULT 0,
        removed     INTEGER NOT NULL DEFAULT 0,
        warnings    INTEGER NOT NULL DEFAULT 0,
        message     TEXT                        -- why it was refused or failed
    );
    CREATE TABLE sis_notices (
        problem TEXT PRIMARY KEY,
        sent_at INTEGER NOT NULL
    );
    "#,
    // 7 (operator text per language): the message as a JSON object
    // {language: text} when the operator wrote one per language; NULL when
    // `message` alone is the text for everyone.
    r#"
    ALTER TABLE alerts ADD COLUMN messages TEXT;
    "#,
    // 8 (Idempotency-Key): the first answer to a POST, per caller and key.
    r#"
    CREATE TABLE idempotency (
        key          TEXT PRIMARY KEY,          -- sha256(credentials, route, key)
        fingerprint  TEXT NOT NULL,             -- sha256(route, body)
        created_at   INTEGER NOT NULL,
        status       INTEGER,                   -- NULL while the request runs
        content_type TEXT,
        body         BLOB
    );
    CREATE INDEX idempotency_created ON idempotency(created_at);
    "#,
    // 9 (two-person rule): who must approve, who did, and emergency
    // overrides with their review by a second person.
    r#"
    ALTER TABLE alerts ADD COLUMN approval TEXT;          -- NULL | 'two-person'
    ALTER TABLE alerts ADD COLUMN approved_by TEXT;
    ALTER TABLE alerts ADD COLUMN override_reason TEXT;   -- sent without a second approval, why
    ALTER TABLE alerts ADD COLUMN reviewed_by TEXT;
    ALTER TABLE alerts ADD COLUMN reviewed_at INTEGER;
    "#,
    // 10 (approval paging): who was paged for an alert waiting for approval,
    // so a restart never pages the same person twice for it.
    r#"
    CREATE TABLE approval_pages (
        alert_id INTEGER NOT NULL,
        approver INTEGER NOT NULL,              -- index in [[approval.approvers]]
        paged_at INTEGER NOT NULL,
        PRIMARY KEY (alert_id, approver)
    );
    "#,
    // 11 (auth: sessions, OIDC sign-in, scopes): console sessions are rows
    // here (the cookie holds a random id, the row its SHA-256); a sign-in
    // through the identity provider waits in `oidc_logins` between the
    // redirect and the callback; a token may be limited to schools.
    r#"
    CREATE TABLE sessions (
        id_hash    TEXT PRIMARY KEY,            -- SHA-256 of the cookie's session id, hex
        actor      TEXT NOT NULL,               -- oidc:alice@example.org | token:front office
        display    TEXT NOT NULL,
        role       TEXT NOT NULL,               -- admin | operator | viewer
        schools    TEXT,                        -- JSON array of school sourcedIds; NULL = district
        csrf       TEXT NOT NULL,               -- the per-session form token
        token_id   INTEGER REFERENCES api_tokens(id),  -- break-glass: revoking the token ends the session
        origin     TEXT NOT NULL,               -- client address at sign-in
        created_at INTEGER NOT NULL,
        last_seen  INTEGER NOT NULL,
        expires_at INTEGER NOT NULL             -- absolute end, whatever the activity
    );
    CREATE INDEX sessions_expiry ON sessions (expires_at);
    CREATE TABLE oidc_logins (
        state_hash   TEXT PRIMARY KEY,          -- SHA-256 of the `state` sent to the provider
        browser_hash TEXT NOT NULL,             -- SHA-256 of the binding cookie
        nonce        TEXT NOT NULL,
        pkce         TEXT NOT NULL,             -- the PKCE verifier
        next         TEXT NOT NULL,             -- where to go once signed in
        created_at   INTEGER NOT NULL
    );
    ALTER TABLE api_tokens ADD COLUMN schools TEXT;  -- JSON array; NULL = district
    "#,
    // 12 (audit chain, legal hold, retention): the audit log becomes a
    // SHA-256 hash chain (`store::audit`): the table is rebuilt with
    // AUTOINCREMENT (ids never reused, so a removed newest entry is seen
    // too), `target` and `origin`, and the entries written before are chained
    // by `audit::chain_existing` in the same transaction (`migrate`). Legal
    // holds; when retention purged an alert; a token's last use.
    r#"
    CREATE TABLE audit_chained (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,   -- seq: position in the chain
        at        INTEGER NOT NULL,
        actor     TEXT NOT NULL,                       -- who: token:NAME, oidc:EMAIL, cli, klaxon, feed rule…
        action    TEXT NOT NULL,
        target    TEXT NOT NULL DEFAULT '',            -- alert:ID | token:ID | … | ''
        alert_id  INTEGER,                             -- the alert of `target`, for lookups
        detail    TEXT NOT NULL,                       -- JSON
        origin    TEXT NOT NULL DEFAULT 'daemon',      -- where from: client address | cli | feed:NAME | daemon
        prev_hash TEXT NOT NULL DEFAULT '',
        hash      TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO audit_chained (id, at, actor, action, target, alert_id, detail, origin)
        SELECT id, at, actor, action, coalesce('alert:' || alert_id, ''), alert_id, detail, 'unrecorded'
        FROM audit ORDER BY id;
    DROP TABLE audit;
    ALTER TABLE audit_chained RENAME TO audit;
    CREATE INDEX audit_alert ON audit (alert_id) WHERE alert_id IS NOT NULL;
    CREATE INDEX audit_at ON audit (at);
    -- Legal holds: an alert on hold keeps its personal data past retention.
    CREATE TABLE legal_holds (
        alert_id  INTEGER PRIMARY KEY REFERENCES alerts(id),
        reason    TEXT NOT NULL,
        held_by   TEXT NOT NULL,
        held_at   INTEGER NOT NULL
    );
    -- Retention: when an alert's personal data was purged (its recipient
    -- rows stay, stripped, so its counts and figures do); a token's last use.
    ALTER TABLE alerts ADD COLUMN purged_at INTEGER;
    ALTER TABLE api_tokens ADD COLUMN last_used_at INTEGER;
"#,
    // 13 (email delivery events, issue 11): spam complaints reported by the
    // provider, kept per address for the contactability report (the delivery
    // itself stays `delivered`: it did arrive).
    r#"
    CREATE TABLE email_complaints (
        address     TEXT PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
        code        TEXT NOT NULL,
        reason      TEXT,
        at          INTEGER NOT NULL
    );
    "#,
    // 14 (console and answer speed, issue 9): the children of each recipient as rows,
    // so the pickup plan, the per-school breakdown and their searches read
    // an index instead of every recipient's `students` JSON; and one index
    // that holds every column the alert's figures need, so they are read
    // without touching the delivery rows (it replaces `deliveries_alert`,
    // whose columns it starts with).
    r#"
    CREATE TABLE alert_students (
        alert_id     INTEGER NOT NULL,
        student_id   TEXT NOT NULL,
        recipient_id INTEGER NOT NULL,
        name         TEXT NOT NULL,
        school_id    TEXT NOT NULL,
        school_name  TEXT NOT NULL,
        grade        TEXT NOT NULL,
        PRIMARY KEY (alert_id, student_id, recipient_id)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_figures ON deliveries
        (alert_id, state, escalation, channel, recipient_id, sent_at, delivered_at);
    DROP INDEX deliveries_alert;
    -- A guardian's own answers, read at every page load and answer: without
    -- it each read scanned every answer of the alert (107 answers/s with
    -- 30,000 recorded, against 1,600/s with 2,000).
    CREATE INDEX pickups_recipient ON pickups (recipient_id);
    -- Answers per choice and students in conflict, from the index alone.
    CREATE INDEX pickups_choice ON pickups (alert_id, student_id, choice);
    "#,
    // 15 (email at district scale, issue 11): addresses arrive in no order,
    // so an index on every delivery's address put one random page in the
    // WAL for each delivery written. Only phone numbers are looked up by
    // address (replies, shared phones, opt-outs); an address is otherwise
    // asked about only once it proved undeliverable, and few do.
    r#"
    DROP INDEX deliveries_address;
    CREATE INDEX deliveries_phone ON deliveries (address) WHERE channel IN ('sms', 'voice');
    CREATE INDEX deliveries_undeliverable ON deliveries (address) WHERE state = 'undeliverable';
    "#,
];

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current as usize > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the database is at schema version {current}, newer than this klaxon knows ({}); upgrade klaxon",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let txn = conn.transaction()?;
        txn.execute_batch(sql)?;
        if sql.contains("CREATE TABLE audit_chained") {
            super::audit::chain_existing(&txn)?;
        }
        if sql.contains("CREATE TABLE alert_students") {
            super::lists::index_students(&txn)?;
        }
        txn.pragma_update(None, "user_version", (i + 1) as i64)?;
        txn.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, sql: &str) -> String {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("; ")
    }

    #[test]
    fn a_callback_without_delivery_id_finds_its_row_by_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let p = plan(
            &conn,
            "SELECT id, state FROM deliveries WHERE provider_msg_id = 'SM1'",
        );
        assert!(p.contains("deliveries_provider_msg"), "{p}");
    }

    /// Every lookup by address has an index, though only phone numbers and
    /// undeliverable addresses are indexed: each query names the index's
    /// condition, or SQLite would scan every delivery.
    #[test]
    fn lookups_by_address_use_the_narrow_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        for (sql, index) in [
            (
                "SELECT r.alert_id FROM deliveries d JOIN recipients r ON r.id = d.recipient_id \
                 WHERE d.address = 'x' AND d.channel IN ('sms', 'voice') ORDER BY r.alert_id DESC LIMIT 1",
                "deliveries_phone",
            ),
            (
                "SELECT d.recipient_id FROM deliveries d WHERE d.address = 'x' AND d.channel IN ('sms', 'voice') ORDER BY d.id DESC LIMIT 1",
                "deliveries_phone",
            ),
            (
                "SELECT 1 FROM deliveries WHERE address = 'x' AND state = 'undeliverable' LIMIT 1",
                "deliveries_undeliverable",
            ),
        ] {
            let p = plan(&conn, sql);
            assert!(p.contains(index), "{sql}: {p}");
        }
    }

    #[test]
    fn the_chain_migration_chains_the_entries_written_before_it() {
        let mut conn = Connection::open_in_memory().unwrap();
        let at = MIGRATIONS
            .iter()
            .position(|m| m.contains("CREATE TABLE audit_chained"))
            .unwrap();
        for sql in &MIGRATIONS[..at] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", at as i64).unwrap();
        for (i, a) in [(1, None), (2, Some(7))] {
            conn.execute(
                "INSERT INTO audit (at, actor, action, alert_id, detail) VALUES (?1, 'old', 'x', ?2, '{}')",
                rusqlite::params![i, a],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let v = super::super::audit::verify(&conn).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.entries, 2);
        let (target, origin): (String, String) = conn
            .query_row("SELECT target, origin FROM audit WHERE id = 2", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(
            (target.as_str(), origin.as_str()),
            ("alert:7", "unrecorded")
        );
        super::super::audit::record(&conn, 3, "new", "y", None, "{}", "cli").unwrap();
        assert!(super::super::audit::verify(&conn).unwrap().ok);
    }
}
