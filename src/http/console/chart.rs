//! The alert's progress chart, drawn on the server as SVG: cumulative
//! first deliveries handed over, deliveries reported delivered and
//! recipients confirmed, against time from release, with the notify and
//! acknowledgement deadlines marked. Accessible: `role="img"` named by its
//! `<title>` and described by its `<desc>`, and the same figures as a table
//! below it. Lines differ by dash pattern as well as colour.

use std::fmt::Write;

use crate::http::escape;
use crate::store::alerts::AlertRow;
use crate::store::timeline::{Series, Timeline};

/// Bucket widths people read easily, in milliseconds.
const NICE_BUCKETS: &[i64] = &[
    1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000,
    1_800_000, 3_600_000,
];

/// At most this many buckets (points per line, rows in the table).
const MAX_BUCKETS: i64 = 60;

/// The time span the chart covers, from release: until the last event or
/// the notify deadline, whichever is later; while the alert is open, until
/// now (but not past its close).
pub fn span(alert: &AlertRow, last_event: Option<i64>, now: i64) -> Option<(i64, i64)> {
    let start = alert.released_at?;
    let mut end = last_event
        .unwrap_or(start)
        .max(alert.notify_deadline.unwrap_or(start));
    if alert.closed_at.is_none() {
        end = end.max(now.min(alert.close_at.unwrap_or(now)));
    }
    Some((start, end.max(start + 1_000)))
}

/// The bucket width that fits `span_ms` into at most `MAX_BUCKETS`.
pub fn bucket_for(span_ms: i64) -> i64 {
    let want = (span_ms + MAX_BUCKETS - 1) / MAX_BUCKETS;
    NICE_BUCKETS
        .iter()
        .copied()
        .find(|b| *b >= want)
        .unwrap_or_else(|| (want + 3_599_999) / 3_600_000 * 3_600_000)
}

/// Cumulative totals at the end of each bucket `0..=last`.
fn cumulative(s: &Series, last: i64) -> Vec<i64> {
    let mut out = Vec::with_capacity(last as usize + 1);
    let mut it = s.iter().peekable();
    let mut total = 0;
    for b in 0..=last {
        while let Some((sb, n)) = it.peek() {
            if *sb <= b {
                total += n;
                it.next();
            } else {
                break;
            }
        }
        out.push(total);
    }
    out
}

/// A round axis maximum at or above `n`.
fn nice_max(n: i64) -> i64 {
    if n <= 5 {
        return 5;
    }
    let mag = 10i64.pow((n as f64).log10().floor() as u32);
    for m in [1, 2, 5, 10] {
        if m * mag >= n {
            return m * mag;
        }
    }
    10 * mag
}

fn offset_label(ms: i64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        if s % 60 == 0 {
            format!("{} min", s / 60)
        } else {
            format!("{} min {} s", s / 60, s % 60)
        }
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

const W: f64 = 720.0;
const H: f64 = 280.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 44.0;

struct Line {
    label: &'static str,
    colour: &'static str,
    dash: &'static str,
    values: Vec<i64>,
}

/// The chart and its table, as HTML to place in the page (and to push
/// over the event stream). `end` is where the time axis stops.
pub fn render(alert: &AlertRow, t: &Timeline, end: i64) -> String {
    if alert.released_at.is_none() {
        return "<p>Nothing has been sent yet: the alert is held for approval.</p>".into();
    }
    let last = ((end - t.start).max(0) / t.bucket_ms).max(t.last_bucket().unwrap_or(0));
    let lines = [
        Line {
            label: "Handed over",
            colour: "#0b4f9c",
            dash: "",
            values: cumulative(&t.handover, last),
        },
        Line {
            label: "Delivered",
            colour: "#1e6b1e",
            dash: "8 4",
            values: cumulative(&t.delivered, last),
        },
        Line {
            label: "Confirmed",
            colour: "#8a0000",
            dash: "2 3",
            values: cumulative(&t.confirmed, last),
        },
    ];
    let top = nice_max(
        lines
            .iter()
            .filter_map(|l| l.values.last().copied())
            .max()
            .unwrap_or(0),
    );
    let span_ms = ((last + 1) * t.bucket_ms) as f64;
    let x = |ms: i64| LEFT + (ms as f64 / span_ms).clamp(0.0, 1.0) * (W - LEFT - RIGHT);
    let y = |n: i64| TOP + (1.0 - n as f64 / top as f64) * (H - TOP - BOTTOM);
    let totals: Vec<String> = lines
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l.values.last().copied().unwrap_or(0),
                l.label.to_lowercase()
            )
        })
        .collect();
    let id = alert.id;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-labelledby=\"chart-title-{id} chart-desc-{id}\" xmlns=\"http://www.w3.org/2000/svg\">\
<title id=\"chart-title-{id}\">Progress of alert {id} over time</title>\
<desc id=\"chart-desc-{id}\">Cumulative counts from release over {span}: {totals}. The same figures are in the table below.</desc>",
        span = offset_label(span_ms as i64),
        totals = escape(&totals.join(", ")),
    );
    // Axes and grid.
    for i in 0..=4 {
        let v = top * i / 4;
        let yy = y(v);
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ccc\" stroke-width=\"1\"/>\
<text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"12\" text-anchor=\"end\" fill=\"#333\">{v}</text>",
            x2 = W - RIGHT,
            tx = LEFT - 6.0,
            ty = yy + 4.0,
        );
    }
    for i in 0..=4 {
        let ms = (span_ms as i64) * i / 4;
        let _ = write!(
            s,
            "<text x=\"{xx:.1}\" y=\"{ty}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#333\">{label}</text>",
            xx = x(ms),
            ty = H - BOTTOM + 16.0,
            label = offset_label(ms),
        );
    }
    let _ = write!(
        s,
        "<text x=\"{cx}\" y=\"{ty}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#333\">time from release</text>",
        cx = LEFT + (W - LEFT - RIGHT) / 2.0,
        ty = H - 6.0,
    );
    // Deadlines.
    for (at, label) in [
        (alert.notify_deadline, "notify deadline"),
        (alert.ack_deadline, "confirm deadline"),
    ] {
        let Some(at) = at else { continue };
        let off = at - t.start;
        if off < 0 || off as f64 > span_ms {
            continue;
        }
        let xx = x(off);
        let _ = write!(
            s,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{TOP}\" y2=\"{yb}\" stroke=\"#5c3b00\" stroke-width=\"2\" stroke-dasharray=\"6 3\"/>\
<text x=\"{tx:.1}\" y=\"{ty}\" font-size=\"12\" text-anchor=\"end\" fill=\"#5c3b00\">{label}</text>",
            yb = H - BOTTOM,
            tx = xx - 4.0,
            ty = TOP + 12.0,
        );
    }
    // The lines: a step per bucket, starting at zero at release.
    for l in &lines {
        let mut pts = format!("{:.1},{:.1}", x(0), y(0));
        for (b, v) in l.values.iter().enumerate() {
            let _ = write!(pts, " {:.1},{:.1}", x((b as i64 + 1) * t.bucket_ms), y(*v));
        }
        let _ = write!(
            s,
            "<polyline points=\"{pts}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"3\" stroke-dasharray=\"{d}\"/>",
            c = l.colour,
            d = l.dash,
        );
    }
    // Legend.
    for (i, l) in lines.iter().enumerate() {
        let lx = LEFT + 12.0 + i as f64 * 150.0;
        let _ = write!(
            s,
            "<line x1=\"{lx}\" x2=\"{lx2}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"3\" stroke-dasharray=\"{d}\"/>\
<text x=\"{tx}\" y=\"{ty}\" font-size=\"12\" fill=\"#111\">{label}</text>",
            lx2 = lx + 28.0,
            ly = TOP + 30.0,
            c = l.colour,
            d = l.dash,
            tx = lx + 34.0,
            ty = TOP + 34.0,
            label = l.label,
        );
    }
    s.push_str("</svg>");

    // The table alternative: one row per bucket where something changed.
    let _ = write!(
        s,
        "<details><summary>The chart as a table</summary><div class=\"scroll\" tabindex=\"0\"><table>\
<caption>Cumulative counts per {} from release</caption>\
<thead><tr><th scope=\"col\">By</th><th scope=\"col\" class=\"n\">Handed over</th><th scope=\"col\" class=\"n\">Delivered</th><th scope=\"col\" class=\"n\">Confirmed</th></tr></thead><tbody>",
        offset_label(t.bucket_ms)
    );
    let mut prev: Option<(i64, i64, i64)> = None;
    for b in 0..=last as usize {
        let row = (lines[0].values[b], lines[1].values[b], lines[2].values[b]);
        if prev == Some(row) {
            continue;
        }
        prev = Some(row);
        let _ = write!(
            s,
            "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            offset_label((b as i64 + 1) * t.bucket_ms),
            row.0,
            row.1,
            row.2
        );
    }
    s.push_str("</tbody></table></div></details>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_round_and_at_most_sixty() {
        assert_eq!(bucket_for(10_000), 1_000);
        assert_eq!(bucket_for(120_000), 2_000);
        assert_eq!(bucket_for(30 * 60_000), 30_000);
        assert_eq!(bucket_for(10 * 3_600_000), 600_000);
        assert_eq!(bucket_for(60 * 3_600_000), 3_600_000);
        assert_eq!(bucket_for(100 * 3_600_000), 7_200_000);
    }

    #[test]
    fn totals_accumulate_across_empty_buckets() {
        assert_eq!(cumulative(&vec![(0, 2), (3, 1)], 4), vec![2, 2, 2, 3, 3]);
        assert_eq!(cumulative(&vec![], 2), vec![0, 0, 0]);
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_max(0), 5);
        assert_eq!(nice_max(7), 10);
        assert_eq!(nice_max(130), 200);
        assert_eq!(nice_max(100_000), 100_000);
        assert_eq!(nice_max(175_549), 200_000);
    }
}
