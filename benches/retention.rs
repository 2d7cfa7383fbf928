//! Retention benchmark (run with `cargo bench --bench retention`): purging
//! the personal data of one closed district-wide alert (100,000 recipients,
//! two deliveries each, a pickup answer and a reply for one in ten) through
//! the daemon's store writer, chunk by chunk as the daily task does, then
//! `PRAGMA incremental_vacuum`. Reports the total time, the longest single
//! write (how long an emergency's writes could wait behind a chunk) and the
//! file size before and after. `KLAXON_BENCH_RECIPIENTS=N` scales it.

use std::time::{Duration, Instant};

use klaxon::store::Store;
use klaxon::store::retention::{self, Purged};
use rusqlite::params;

fn main() {
    let n: i64 = std::env::var("KLAXON_BENCH_RECIPIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), true).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = Instant::now();
        store
            .write(move |c| {
                c.execute(
                    "INSERT INTO alerts (id, playbook, title, place, priority, audience, state, source, created_by, created_at, closed_at)
                     VALUES (1, 'lockdown', 'Lockdown', 'District', 1, '{}', 'closed', 'api', 'bench', 0, 1)",
                    [],
                )?;
                let mut r = c.prepare(
                    "INSERT INTO recipients (id, alert_id, person_id, role, name, language, students, addresses, token, acked_at, ack_choice)
                     VALUES (?1, 1, 'g' || ?1, 'guardian', 'Guardian Name ' || ?1, 'en', '[{\"id\":\"s' || ?1 || '\",\"name\":\"Student\"}]',
                             '[[\"sms\",\"+1555' || ?1 || '\"],[\"email\",\"g' || ?1 || '@example.org\"]]', 'tok' || ?1, ?2, ?3)",
                )?;
                let mut d = c.prepare(
                    "INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, next_attempt_at, provider_msg_id, created_at, sent_at, updated_at)
                     VALUES (1, ?1, ?2, ?3, 'delivered', 1, 0, 'SM' || ?1 || ?2, 0, 10, 10)",
                )?;
                let mut p = c.prepare(
                    "INSERT INTO pickups (alert_id, student_id, recipient_id, choice, at, via) VALUES (1, 's' || ?1, ?1, 'pickup', 5, 'web')",
                )?;
                let mut y = c.prepare(
                    "INSERT INTO replies (alert_id, recipient_id, channel, address, body, kind, received_at) VALUES (1, ?1, 'sms', '+1555' || ?1, 'Is my son OK?', 'message', 5)",
                )?;
                for i in 1..=n {
                    let acked = i % 2 == 0;
                    r.execute(params![i, acked.then_some(5), acked.then_some("ok")])?;
                    d.execute(params![i, "sms", format!("+1555{i}")])?;
                    d.execute(params![i, "email", format!("g{i}@example.org")])?;
                    if i % 10 == 0 {
                        p.execute([i])?;
                        y.execute([i])?;
                    }
                }
                Ok(())
            })
            .await
            .unwrap();
        println!("Built a closed alert with {n} recipients in {:.1} s.", t.elapsed().as_secs_f64());
        let size_before = file_size(dir.path());

        let t = Instant::now();
        let mut longest = Duration::ZERO;
        let mut total = Purged::default();
        let mut chunks = 0;
        loop {
            let w = Instant::now();
            let p = store
                .write(|c| retention::purge_chunk(c, 1, klaxon::retention::CHUNK))
                .await
                .unwrap();
            longest = longest.max(w.elapsed());
            chunks += 1;
            total.add(p);
            if p.recipients < klaxon::retention::CHUNK {
                break;
            }
        }
        let w = Instant::now();
        let t2 = total;
        let last = store
            .write(move |c| retention::finish(c, 1, 100, t2))
            .await
            .unwrap();
        total.add(last);
        longest = longest.max(w.elapsed());
        let purge = t.elapsed();
        let w = Instant::now();
        store
            .write(|c| retention::incremental_vacuum(c, 0))
            .await
            .unwrap();
        let vacuum = w.elapsed();
        // A checkpoint moves the WAL into the file so its size is honest.
        store
            .write(|c| {
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
                Ok(())
            })
            .await
            .ok();
        println!(
            "Purged {} recipients, {} deliveries, {} replies, {} pickups in {:.2} s ({chunks} writes; longest write {:.0} ms); incremental vacuum {:.0} ms.",
            total.recipients,
            total.deliveries,
            total.replies,
            total.pickups,
            purge.as_secs_f64(),
            longest.as_secs_f64() * 1000.0,
            vacuum.as_secs_f64() * 1000.0
        );
        println!(
            "klaxon.db: {:.1} MB before, {:.1} MB after.",
            size_before as f64 / 1e6,
            file_size(dir.path()) as f64 / 1e6
        );
    });
    store.close();
}

fn file_size(dir: &std::path::Path) -> u64 {
    ["klaxon.db", "klaxon.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}
