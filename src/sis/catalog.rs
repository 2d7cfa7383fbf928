//! What the SIS copy offers to choose from when an operator builds an
//! audience in the console: its schools and its grades.

use rusqlite::Connection;

/// Every school: `(id, name)`, by name.
pub fn schools(conn: &Connection) -> Result<Vec<(String, String)>, rusqlite::Error> {
    let mut st = conn.prepare_cached("SELECT id, name FROM schools ORDER BY name, id")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Every grade a student is in, in the order people read them (PK, K,
/// then 1, 2, … 12), as stored (normalised at import).
pub fn grades(conn: &Connection) -> Result<Vec<String>, rusqlite::Error> {
    let mut st = conn.prepare_cached(
        "SELECT DISTINCT grade FROM people WHERE is_student = 1 AND grade IS NOT NULL AND grade <> ''",
    )?;
    let mut g: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    g.sort_by_key(|x| match x.parse::<i64>() {
        Ok(n) => (1, n, String::new()),
        Err(_) => (0, 0, x.clone()),
    });
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_district_offers_its_schools_and_grades() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-district");
        crate::sis::import(
            std::path::Path::new(fixture),
            dir.path(),
            &crate::sis::SisConfig::default(),
            &crate::sis::ImportOptions { force: true },
        )
        .unwrap();
        let conn = crate::sis::open_current(dir.path()).unwrap();
        let s = schools(&conn).unwrap();
        assert_eq!(
            s,
            vec![
                ("S1".to_string(), "Lincoln Elementary".to_string()),
                ("S2".to_string(), "Roosevelt Middle".to_string())
            ]
        );
        let g = grades(&conn).unwrap();
        assert!(!g.is_empty());
        let mut sorted = g.clone();
        sorted.sort_by_key(|x| x.parse::<i64>().unwrap_or(-1));
        assert_eq!(g, sorted, "numeric order: {g:?}");
    }
}
