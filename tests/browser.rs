//! The acknowledgement page in a real browser (Debian's Chromium): what a
//! Spanish-speaking parent sees when they open the link, answers, and sees
//! confirmed, and what the store then holds.

mod common;
mod support;

use std::time::Duration;

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
    // schools: Maria Garcia (Ana at S1, Carlos at S2). Her link is in the
    // messages sent (the store keeps only a hash of it).
    let (recipient_id, students): (i64, String) = read_only(&app)
        .query_row(
            "SELECT id, students FROM recipients
              WHERE alert_id = ?1 AND language LIKE 'es%' AND json_array_length(students) = 2",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("a Spanish-speaking guardian with two children was alerted");
    let kids: Vec<serde_json::Value> = serde_json::from_str(&students).unwrap();
    let kid = |name: &str| -> String {
        kids.iter()
            .find(|k| k["name"] == name)
            .and_then(|k| k["id"].as_str())
            .unwrap_or_else(|| panic!("{name} in {students}"))
            .to_string()
    };
    let (ana, carlos) = (kid("Ana Garcia"), kid("Carlos Garcia"));
    let delivery: i64 = read_only(&app)
        .query_row(
            "SELECT id FROM deliveries WHERE recipient_id = ?1 ORDER BY id LIMIT 1",
            [recipient_id],
            |r| r.get(0),
        )
        .unwrap();
    let link = app
        .outbox()
        .into_iter()
        .find(|m| m["delivery_id"] == delivery)
        .and_then(|m| m["ack_url"].as_str().map(str::to_string))
        .expect("her message carries her link");
    let token = link.rsplit('/').next().unwrap().to_string();

    // A phone-sized window: parents open the link from an SMS.
    browser.resize(390, 844).await;
    let url = format!("{}/a/{token}", app.base);
    browser.goto(&url).await;
    assert_eq!(browser.attr("html", "lang").await.as_deref(), Some("es"));
    let page = browser.page_text().await;
    for words in [
        // The alert's own words, in Spanish, with the operator's message.
        "SALIDA ANTICIPADA hoy en",
        "Corte de luz.",
        "Este mensaje es para Maria Garcia.",
        "Sus hijos en las escuelas afectadas",
        "Ana Garcia",
        "Carlos Garcia",
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
        browser.count("fieldset").await,
        2,
        "one set of choices per child"
    );
    assert_eq!(
        browser.count("input[type=radio]:checked").await,
        0,
        "nothing is chosen before the parent answers"
    );
    // A different plan per child, tapped on the words as a person does.
    let pick =
        |student: &str, value: &str| format!("input[name='choice-{student}'][value='{value}']");
    let label_of = |input_id: String| format!("label[for='{input_id}']");
    let ana_bus = browser.attr(&pick(&ana, "bus"), "id").await.unwrap();
    let carlos_self = browser
        .attr(&pick(&carlos, "pickup-self"), "id")
        .await
        .unwrap();
    browser.click(&label_of(ana_bus)).await;
    browser.click(&label_of(carlos_self)).await;
    assert_eq!(browser.count("input[type=radio]:checked").await, 2);
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
    let recorded = browser.text_of("ul.recorded").await;
    assert!(
        recorded.contains("Ana Garcia: Envíe a mi hijo a casa en el autobús")
            && recorded.contains("Carlos Garcia: Recogeré a mi hijo"),
        "the page says what was recorded for each child: {recorded}"
    );
    assert_eq!(
        browser.count(&pick(&ana, "bus")).await,
        1,
        "the form shows the recorded answers"
    );
    assert_eq!(
        browser
            .count(&format!("{}:checked", pick(&ana, "bus")))
            .await,
        1
    );
    assert_eq!(
        browser
            .count(&format!("{}:checked", pick(&carlos, "pickup-self")))
            .await,
        1
    );

    // Committed before the page said so: one answer per child.
    let db = read_only(&app);
    let (acked_at, via): (Option<i64>, Option<String>) = db
        .query_row(
            "SELECT acked_at, ack_via FROM recipients WHERE id = ?1",
            [recipient_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(acked_at.is_some());
    assert_eq!(via.as_deref(), Some("web"));
    let plans: Vec<(String, String)> = db
        .prepare(
            "SELECT student_id, choice FROM pickups WHERE recipient_id = ?1 ORDER BY student_id",
        )
        .unwrap()
        .query_map([recipient_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut want = vec![
        (ana.clone(), "bus".to_string()),
        (carlos.clone(), "pickup-self".to_string()),
    ];
    want.sort();
    assert_eq!(plans, want);
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
}
