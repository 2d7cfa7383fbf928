//! The acknowledgement page in a real browser (Debian's Chromium): what a
//! Spanish-speaking parent sees when they open the link, answers, and sees
//! confirmed, and what the store then holds.

mod common;
mod support;

use std::time::{Duration, Instant};

use common::spawn_app;
use rusqlite::{Connection, OpenFlags};
use serde_json::json;
use support::browser::{Browser, Until, processes_using};

/// Opens the daemon's store read-only, so the test cannot change what it checks.
fn read_only(app: &common::TestApp) -> Connection {
    Connection::open_with_flags(
        app.path().join("state/klaxon.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("the store opens read-only")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spanish_speaking_guardian_answers_the_early_dismissal_page_in_chromium() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let started = Instant::now();
    let app = spawn_app().await;
    let created: serde_json::Value = app
        .trigger(json!({
            "playbook": "early-dismissal",
            "audience": {"schools": ["S1", "S2"]},
            "message": "Corte de luz."
        }))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().expect("alert id");
    app.wait_settled(id).await;

    // The fixture's Spanish-speaking guardian with two children at the two
    // schools: Maria Garcia (Ana at S1, Carlos at S2).
    let (recipient_id, token, students): (i64, String, String) = read_only(&app)
        .query_row(
            "SELECT id, token, students FROM recipients
              WHERE alert_id = ?1 AND language LIKE 'es%' AND json_array_length(students) = 2",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("a Spanish-speaking guardian with two children was alerted");
    assert!(
        students.contains("Ana Garcia") && students.contains("Carlos Garcia"),
        "{students}"
    );

    // A phone-sized window: parents open the link from an SMS.
    browser.resize(390, 844).await;
    let url = format!("{}/a/{token}", app.base);
    browser.goto(&url).await;
    assert_eq!(browser.attr("html", "lang").await.as_deref(), Some("es"));
    let page = browser.page_text().await;
    for words in [
        "Este mensaje es para Maria Garcia.",
        "Sus hijos en las escuelas afectadas",
        "Ana Garcia",
        "Carlos Garcia",
        "Corte de luz.",
        "Elija una opción",
        "Recogeré a mi hijo",
        "Envíe a mi hijo a casa en el autobús",
    ] {
        assert!(page.contains(words), "the page shows {words:?}:\n{page}");
    }
    assert!(
        !page.contains("Please choose one") && !page.contains("Send my child home"),
        "no English on a Spanish page:\n{page}"
    );
    assert_eq!(
        browser.count("input[type=radio]:checked").await,
        0,
        "nothing is chosen before the parent answers"
    );

    // Pick "bus" by its label, as a person taps the words, then send.
    browser.click("label[for=c2]").await;
    assert_eq!(browser.attr("#c2", "value").await.as_deref(), Some("bus"));
    assert_eq!(browser.count("input[value=bus]:checked").await, 1);
    browser.submit("form").await;
    browser
        .wait_for(
            Until::Text("Gracias. Su respuesta quedó registrada."),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        browser.url().await.ends_with("?saved=1"),
        "POST/redirect/GET: {}",
        browser.url().await
    );
    let status = browser.text_of("p.ok:not([role])").await;
    assert!(
        status.starts_with("Confirmado a las")
            && status.contains("Su respuesta: Envíe a mi hijo a casa en el autobús."),
        "the page says what was recorded: {status}"
    );
    assert_eq!(
        browser.count("input[value=bus]:checked").await,
        1,
        "the form shows the recorded answer"
    );

    // Committed before the page said so.
    let db = read_only(&app);
    let (acked_at, choice, via): (Option<i64>, Option<String>, Option<String>) = db
        .query_row(
            "SELECT acked_at, ack_choice, ack_via FROM recipients WHERE id = ?1",
            [recipient_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(acked_at.is_some());
    assert_eq!(choice.as_deref(), Some("bus"));
    assert_eq!(via.as_deref(), Some("web"));
    let events: Vec<(Option<String>, String)> = db
        .prepare("SELECT choice, via FROM ack_events WHERE recipient_id = ?1 ORDER BY id")
        .unwrap()
        .query_map([recipient_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(events, vec![(Some("bus".to_string()), "web".to_string())]);
    let others: i64 = db
        .query_row(
            "SELECT count(*) FROM recipients WHERE alert_id = ?1 AND id != ?2 AND acked_at IS NOT NULL",
            [id, recipient_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(others, 0, "only the guardian who answered is confirmed");
    drop(db);

    let shots = tempfile::tempdir().unwrap();
    let png = browser
        .screenshot(&shots.path().join("ack-es-saved.png"))
        .await;
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "a PNG file ({} bytes)",
        bytes.len()
    );
    // IHDR: width and height, big-endian, right after the signature and chunk header.
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert!(
        width > 0 && height > 0 && bytes.len() > 1000,
        "{width}×{height}, {} bytes",
        bytes.len()
    );

    let folder = browser.dir();
    assert!(
        !processes_using(&folder).is_empty(),
        "the browser's processes are found while it runs"
    );
    browser.close().await;
    assert_eq!(
        processes_using(&folder),
        Vec::<i32>::new(),
        "no Chromium process outlives the browser"
    );
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the browser test stays fast: {:?}",
        started.elapsed()
    );
}
