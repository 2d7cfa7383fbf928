//! The alert's work lists: who has not confirmed (and why) and the pickup
//! plan per student. Searchable (`?q=`), keyset-paginated (`?after=`),
//! exportable whole as CSV (`?format=csv`); every page says how many match
//! in all, so nothing is cut silently.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{escape, num, page};
use crate::app::AppState;
use crate::domain::AlertId;
use crate::http::ApiError;
use crate::http::session::Operator;
use crate::store::{alerts, lists};

/// Rows per page.
const PAGE: i64 = 200;
/// Rows per store read while exporting.
const EXPORT_CHUNK: i64 = 5_000;

#[derive(serde::Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    after: Option<String>,
    format: Option<String>,
}

/// A query string value, percent-encoded.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn csv_response(name: String, data: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        data,
    )
        .into_response()
}

fn search_form(action: &str, q: &str, what: &str) -> String {
    format!(
        "<form method=\"get\" action=\"{action}\" role=\"search\">\
<label for=\"q\">Search {what}</label>\
<input id=\"q\" name=\"q\" type=\"search\" value=\"{q}\"> <button type=\"submit\">Search</button>\
</form>",
        q = escape(q)
    )
}

fn summary(shown: usize, total: i64, q: &str) -> String {
    let matching = if q.trim().is_empty() {
        String::new()
    } else {
        format!(" matching “{}”", escape(q.trim()))
    };
    format!(
        "<p role=\"status\">{} of {}{matching} on this page.</p>",
        num(shown as i64),
        num(total)
    )
}

pub async fn outstanding(
    op: Operator,
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Query(q): Query<ListQuery>,
) -> Response {
    let a = match super::in_scope(&state, &op, id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let aid = AlertId(id);
    if q.format.as_deref() == Some("csv") {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record([
            "recipient_id",
            "name",
            "role",
            "language",
            "status",
            "children",
        ]);
        let mut after = 0;
        loop {
            let qq = q.q.clone();
            let (rows, _) = match state
                .store
                .read(move |c| lists::outstanding(c, aid, &qq, after, EXPORT_CHUNK))
                .await
            {
                Ok(r) => r,
                Err(e) => return ApiError::from(e).into_response(),
            };
            for r in &rows {
                let _ = w.write_record([
                    r.id.to_string().as_str(),
                    &r.name,
                    &r.role,
                    &r.language,
                    &r.reason,
                    &r.children.join("; "),
                ]);
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == EXPORT_CHUNK => after = last.id,
                _ => break,
            }
        }
        let data = w.into_inner().unwrap_or_default();
        return csv_response(format!("alert-{id}-not-confirmed.csv"), data);
    }
    let after: i64 = q.after.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
    let qq = q.q.clone();
    let (rows, total) = match state
        .store
        .read(move |c| lists::outstanding(c, aid, &qq, after, PAGE))
        .await
    {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut b = format!(
        "<p><a href=\"/alerts/{id}\">Back to alert #{id}</a></p><h1>Not confirmed: #{id} {}</h1>",
        escape(&a.title)
    );
    b.push_str(&search_form(
        &format!("/alerts/{id}/outstanding"),
        &q.q,
        "by name, child or school",
    ));
    b.push_str(&summary(rows.len(), total, &q.q));
    let _ = write!(
        b,
        "<p><a href=\"/alerts/{id}/outstanding?format=csv&amp;q={}\">Download all {} as CSV</a></p>",
        enc(&q.q),
        num(total)
    );
    if !rows.is_empty() {
        b.push_str("<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Role</th><th scope=\"col\">Status</th><th scope=\"col\">Children</th></tr></thead><tbody>");
        for r in &rows {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&r.name),
                escape(&r.role),
                escape(&r.reason),
                escape(&r.children.join(", "))
            );
        }
        b.push_str("</tbody></table></div>");
    }
    if rows.len() as i64 == PAGE
        && let Some(last) = rows.last()
    {
        let _ = write!(
            b,
            "<p><a href=\"/alerts/{id}/outstanding?q={}&amp;after={}\">Next {PAGE}</a></p>",
            enc(&q.q),
            last.id
        );
    }
    page(&state, Some(&op), &format!("Not confirmed: alert {id}"), &b)
}

pub async fn pickup(
    op: Operator,
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Query(q): Query<ListQuery>,
) -> Response {
    let a = match super::in_scope(&state, &op, id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let aid = AlertId(id);
    let labels: HashMap<String, String> = state
        .config
        .playbooks
        .get(&a.playbook)
        .map(|p| {
            p.choices
                .iter()
                .map(|c| {
                    (
                        c.key.clone(),
                        c.label.get("en").cloned().unwrap_or_else(|| c.key.clone()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let plan_text = |p: &alerts::StudentPlan| -> String {
        if p.answers.is_empty() {
            return "no answer yet".into();
        }
        p.answers
            .iter()
            .map(|x| {
                format!(
                    "{} ({})",
                    labels
                        .get(&x.choice)
                        .map(String::as_str)
                        .unwrap_or(&x.choice),
                    x.guardian
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if q.format.as_deref() == Some("csv") {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record([
            "student_id",
            "student",
            "school",
            "grade",
            "plan",
            "conflict",
        ]);
        let mut after = String::new();
        loop {
            let (qq, aa) = (q.q.clone(), after.clone());
            let (rows, _) = match state
                .store
                .read(move |c| lists::pickup(c, aid, &qq, &aa, EXPORT_CHUNK))
                .await
            {
                Ok(r) => r,
                Err(e) => return ApiError::from(e).into_response(),
            };
            for p in &rows {
                let _ = w.write_record([
                    p.student_id.as_str(),
                    &p.student,
                    &p.school,
                    &p.grade,
                    &plan_text(p),
                    if p.conflict { "yes" } else { "no" },
                ]);
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == EXPORT_CHUNK => after = last.student_id.clone(),
                _ => break,
            }
        }
        let data = w.into_inner().unwrap_or_default();
        return csv_response(format!("alert-{id}-pickup-plan.csv"), data);
    }
    let (qq, aa) = (q.q.clone(), q.after.clone().unwrap_or_default());
    let (rows, total) = match state
        .store
        .read(move |c| lists::pickup(c, aid, &qq, &aa, PAGE))
        .await
    {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut b = format!(
        "<p><a href=\"/alerts/{id}\">Back to alert #{id}</a></p><h1>Pickup plan: #{id} {}</h1>",
        escape(&a.title)
    );
    b.push_str(&search_form(
        &format!("/alerts/{id}/pickup"),
        &q.q,
        "by student, school or grade",
    ));
    b.push_str(&summary(rows.len(), total, &q.q));
    let _ = write!(
        b,
        "<p><a href=\"/alerts/{id}/pickup?format=csv&amp;q={}\">Download all {} as CSV</a></p>",
        enc(&q.q),
        num(total)
    );
    if !rows.is_empty() {
        b.push_str("<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">School</th><th scope=\"col\">Grade</th><th scope=\"col\">Student</th><th scope=\"col\">Plan</th></tr></thead><tbody>");
        for p in &rows {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
                escape(&p.school),
                escape(&p.grade),
                escape(&p.student),
                if p.conflict {
                    "<strong>CONFLICT:</strong> "
                } else {
                    ""
                },
                escape(&plan_text(p))
            );
        }
        b.push_str("</tbody></table></div>");
    }
    if rows.len() as i64 == PAGE
        && let Some(last) = rows.last()
    {
        let _ = write!(
            b,
            "<p><a href=\"/alerts/{id}/pickup?q={}&amp;after={}\">Next {PAGE}</a></p>",
            enc(&q.q),
            enc(&last.student_id)
        );
    }
    page(&state, Some(&op), &format!("Pickup plan: alert {id}"), &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_survive_the_link() {
        assert_eq!(enc("Ana García & co"), "Ana%20Garc%C3%ADa%20%26%20co");
    }
}
