//! The auditors' report: one self-contained HTML page (no scripts, no
//! external assets; a Content-Security-Policy that allows none, so it reads
//! the same offline and a name planted in the bucket cannot make it fetch
//! or run anything). It holds the protection table (every host and job),
//! a chart per job of the bytes stored and the snapshots of the last days
//! (inline SVG drawn here), the bucket's hardening findings with their
//! Security Hub controls, and the verdict on every host's shipped audit
//! trails. Every name from the bucket is escaped.

use std::fmt::Write as _;

use jiff::{SignedDuration, Timestamp};

use super::trails::TrailCheck;
use super::{Fleet, HostView, JobView, human_duration};
use crate::cloud::hardening::{self, Status};
use crate::units::human_bytes;

/// The bucket's hardening, as far as the report can tell.
pub enum HardeningView<'a> {
    /// The findings of [`hardening::evaluate`].
    Checked(&'a hardening::Report),
    /// Why there are none (a local repository).
    NotApplicable(String),
}

/// Everything the page shows.
pub struct ReportInput<'a> {
    /// The scan.
    pub fleet: &'a Fleet,
    /// The bucket's hardening.
    pub hardening: HardeningView<'a>,
    /// Every host's trails.
    pub trails: &'a [TrailCheck],
    /// Days the charts cover.
    pub days: u32,
    /// "Now" (the scan's start).
    pub now: Timestamp,
}

/// Escapes text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#1a1a1a;max-width:1200px}\
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.ok,.verified,.pass{color:#176b2c;font-weight:600}.stale,.failed,.fail{color:#b3261e;font-weight:600}\
.warn,.unknown{color:#8a5a00;font-weight:600}.na,.none{color:#666}\
figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.9em;font-weight:600}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}";

/// The page.
pub fn report_html(input: &ReportInput<'_>) -> String {
    let f = input.fleet;
    let mut h = String::new();
    let trails_ok = input.trails.iter().filter(|t| t.verified()).count();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>vaultline fleet report: {store}</title><style>{STYLE}</style></head><body>\n\
         <h1>vaultline fleet report</h1>\n<dl id=\"summary\">\
         <dt>Repository</dt><dd>{store}, prefix <code>{prefix}</code></dd>\
         <dt>Scanned</dt><dd>{at}</dd>\
         <dt>Stale after</dt><dd>{max_age} without a snapshot</dd>\
         <dt>Hosts</dt><dd data-count=\"{hosts}\">{hosts} ({stale_hosts} stale)</dd>\
         <dt>Jobs</dt><dd>{jobs} ({stale_jobs} stale, {future} with a future-dated newest manifest)</dd>\
         <dt>Stored</dt><dd>{stored} in {snapshots} snapshots</dd>\
         <dt>Audit trails</dt><dd>{trails_ok} of {trails} verify</dd></dl>\n",
        store = esc(&f.store),
        prefix = esc(&f.prefix),
        at = esc(&f.scanned_at),
        max_age = esc(&f.max_age),
        hosts = f.summary.hosts,
        stale_hosts = f.summary.stale_hosts,
        jobs = f.summary.jobs,
        stale_jobs = f.summary.stale_jobs,
        future = f.summary.future_dated_jobs,
        stored = human_bytes(f.summary.stored_bytes),
        snapshots = f.summary.snapshots,
        trails = input.trails.len(),
    );
    protection(&mut h, f);
    history(&mut h, input);
    hardening_section(&mut h, &input.hardening);
    trails_section(&mut h, f, input.trails);
    h.push_str(
        "<p class=\"na\">Computed from bucket listings and the plain audit segments: no archive or manifest \
         was read and no key was used. Times are those the repository vouches for (a snapshot id's claim, \
         never later than when the store recorded its manifest).</p>\n</body></html>\n",
    );
    h
}

fn protection(h: &mut String, f: &Fleet) {
    h.push_str(
        "<h2 id=\"protection\">Protection</h2>\n<table id=\"protection-table\"><thead><tr><th>Host</th>\
         <th>Job</th><th>Status</th><th>Newest snapshot</th><th>Age</th><th>Snapshots</th><th>Stored</th>\
         <th>Future-dated</th></tr></thead><tbody>\n",
    );
    for host in &f.hosts {
        if host.jobs.is_empty() {
            let _ = writeln!(
                h,
                "<tr data-host=\"{name}\" data-job=\"\" data-status=\"stale\"><td>{name}</td><td class=\"na\">\
                 none</td><td class=\"stale\">STALE: no snapshot</td><td>never</td><td></td>\
                 <td class=\"num\">0</td><td class=\"num\">{stored}</td><td></td></tr>",
                name = esc(&host.host),
                stored = human_bytes(host.stored_bytes)
            );
        }
        for job in &host.jobs {
            job_row(h, host, job);
        }
    }
    h.push_str("</tbody></table>\n");
}

fn job_row(h: &mut String, host: &HostView, job: &JobView) {
    let status = match &job.reason {
        Some(why) => format!("STALE: {}", esc(why)),
        None => "ok".to_string(),
    };
    let future = match (job.future_dated, job.newest_future_dated) {
        (0, _) => String::new(),
        (n, true) => format!(
            "<span class=\"warn\">{n}, newest manifest ({})</span>",
            esc(job.newest_manifest.as_deref().unwrap_or("?"))
        ),
        (n, false) => format!("<span class=\"warn\">{n}</span>"),
    };
    let _ = writeln!(
        h,
        "<tr data-host=\"{host}\" data-job=\"{name}\" data-status=\"{st}\"><td>{host}</td><td>{name}</td>\
         <td class=\"{st}\">{status}</td><td>{last}</td><td>{age}</td><td class=\"num\">{n}</td>\
         <td class=\"num\">{stored}</td><td>{future}</td></tr>",
        host = esc(&host.host),
        name = esc(&job.job),
        st = job.status,
        last = job
            .last_snapshot_time
            .as_deref()
            .map_or_else(|| "never".to_string(), esc),
        age = job
            .age_seconds
            .map(|s| human_duration(SignedDuration::from_secs(s)))
            .unwrap_or_default(),
        n = job.snapshots,
        stored = human_bytes(job.stored_bytes),
    );
}

fn history(h: &mut String, input: &ReportInput<'_>) {
    let _ = writeln!(
        h,
        "<h2 id=\"history\">Stored bytes and snapshots, last {} days</h2>\n<p>Bars: bytes stored at the end of \
         each day (UTC) by the objects there now. Dots: snapshots (red: future-dated). Dashed line: the \
         maximum age.</p>",
        input.days
    );
    for host in &input.fleet.hosts {
        for job in &host.jobs {
            let _ = writeln!(
                h,
                "<figure data-host=\"{host}\" data-job=\"{name}\"><figcaption>{host} / {name}</figcaption>{svg}\
                 </figure>",
                host = esc(&host.host),
                name = esc(&job.job),
                svg = chart(job, input)
            );
        }
    }
}

const W: f64 = 560.0;
const H: f64 = 150.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 10.0;
/// The plot's bottom edge; the snapshot strip and dates are below it.
const BOTTOM: f64 = 110.0;

/// The chart of one job: a bar per day, a dot per snapshot.
pub fn chart(job: &JobView, input: &ReportInput<'_>) -> String {
    let days = i64::from(input.days.max(1));
    // Whole UTC days, the last one being today's.
    let today = input.now.as_second().div_euclid(86_400);
    let start_day = today - days + 1;
    let start = start_day * 86_400;
    let end = (today + 1) * 86_400;
    let mut per_day = vec![0u64; days as usize];
    let mut before = 0u64;
    for (t, size) in &job.stored {
        let day = t.as_second().div_euclid(86_400);
        if day < start_day {
            before += size;
        } else if day <= today {
            per_day[(day - start_day) as usize] += size;
        }
    }
    let mut cumulative = Vec::with_capacity(per_day.len());
    let mut total = before;
    for add in per_day {
        total += add;
        cumulative.push(total);
    }
    let max = cumulative.iter().copied().max().unwrap_or(0).max(1);
    let plot_w = W - LEFT - RIGHT;
    let bar_w = plot_w / days as f64;
    let x_of = |secs: i64| LEFT + (secs - start) as f64 / (end - start) as f64 * plot_w;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         role=\"img\" aria-label=\"{label}\"><rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{ph}\" \
         fill=\"#fafafa\" stroke=\"#ccc\"/>",
        label = esc(&format!(
            "{} stored, {} snapshots",
            human_bytes(job.stored_bytes),
            job.snapshots
        )),
        ph = BOTTOM - TOP,
    );
    for (i, bytes) in cumulative.iter().enumerate() {
        if *bytes == 0 {
            continue;
        }
        let height = (*bytes as f64 / max as f64) * (BOTTOM - TOP);
        let day = Timestamp::from_second((start_day + i as i64) * 86_400)
            .map(|t| t.strftime("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let _ = write!(
            s,
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{height:.1}\" fill=\"#4a7fb5\">\
             <title>{day}: {b}</title></rect>",
            x = LEFT + i as f64 * bar_w + 0.5,
            y = BOTTOM - height,
            w = (bar_w - 1.0).max(0.5),
            b = human_bytes(*bytes),
        );
    }
    // The maximum age, back from now.
    let stale_at = input.now.as_second() - input.fleet.max_age_seconds;
    if stale_at > start {
        let x = x_of(stale_at);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{BOTTOM}\" stroke=\"#b3261e\" stroke-dasharray=\"4 3\">\
             <title>older than {}</title></line>",
            esc(&input.fleet.max_age)
        );
    }
    for snap in &job.history {
        let t = snap.time.as_second();
        if t < start || t >= end {
            continue;
        }
        let _ = write!(
            s,
            "<circle class=\"snapshot\" cx=\"{x:.1}\" cy=\"{y}\" r=\"3.5\" fill=\"{fill}\"><title>{id} at {when}{fd}\
             </title></circle>",
            x = x_of(t),
            y = BOTTOM + 9.0,
            fill = if snap.future_dated { "#b3261e" } else { "#176b2c" },
            id = esc(&snap.id),
            when = super::second(snap.time),
            fd = if snap.future_dated { " (future-dated)" } else { "" },
        );
    }
    let date = |secs: i64| {
        Timestamp::from_second(secs)
            .map(|t| t.strftime("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    let _ = write!(
        s,
        "<text x=\"{lx}\" y=\"{ty}\" font-size=\"10\" text-anchor=\"end\">{max}</text>\
         <text x=\"{lx}\" y=\"{BOTTOM}\" font-size=\"10\" text-anchor=\"end\">0</text>\
         <text x=\"{LEFT}\" y=\"{dy}\" font-size=\"10\">{from}</text>\
         <text x=\"{rx}\" y=\"{dy}\" font-size=\"10\" text-anchor=\"end\">{to}</text></svg>",
        lx = LEFT - 4.0,
        ty = TOP + 9.0,
        max = human_bytes(max),
        dy = H - 4.0,
        from = date(start),
        rx = W - RIGHT,
        to = date(end - 1),
    );
    s
}

fn hardening_section(h: &mut String, view: &HardeningView<'_>) {
    h.push_str("<h2 id=\"hardening\">Bucket hardening</h2>\n");
    let report = match view {
        HardeningView::Checked(r) => r,
        HardeningView::NotApplicable(why) => {
            let _ = writeln!(h, "<p class=\"na\" id=\"hardening-na\">{}</p>", esc(why));
            return;
        }
    };
    let _ = writeln!(
        h,
        "<p>Bucket <code>{}</code>: {}.</p>\n<table id=\"hardening-table\"><thead><tr><th>Check</th><th>Status</th>\
         <th>Policy</th><th>Severity</th><th>Security Hub control</th><th>AWS Config rule</th><th>Finding</th></tr></thead><tbody>",
        esc(&report.bucket),
        if report.passed {
            "every required check passes"
        } else {
            "a required check fails: backups into it are refused"
        }
    );
    for c in &report.checks {
        let (class, word) = match c.status {
            Status::Pass => ("pass", "pass"),
            Status::Fail => ("fail", "FAIL"),
            Status::Unknown => ("unknown", "unknown"),
            Status::NotApplicable => ("na", "n/a"),
        };
        let _ = writeln!(
            h,
            "<tr data-check=\"{id}\" data-status=\"{class}\" data-control=\"{control}\"><td>{id}<br><small>{title}\
             </small></td><td class=\"{class}\">{word}</td><td>{policy}</td><td>{severity}</td><td>{control}</td><td>{rule}</td>\
             <td>{finding}{fix}</td></tr>",
            id = esc(c.id),
            title = esc(c.title),
            severity = esc(c.severity),
            policy = esc(c.policy),
            control = esc(c.control),
            rule = esc(c.config_rule),
            finding = esc(&c.finding),
            fix = if c.fix.is_empty() {
                String::new()
            } else {
                format!("<br><small>Fix: {}</small>", esc(&c.fix))
            },
        );
    }
    h.push_str("</tbody></table>\n");
}

fn trails_section(h: &mut String, f: &Fleet, trails: &[TrailCheck]) {
    h.push_str(
        "<h2 id=\"audit-trails\">Audit trails</h2>\n<p>Every trail shipped under each host, checked on its own: \
         segments agree with each other, and the lines run from 1 without a gap, each chained to the one \
         before.</p>\n<table id=\"audit-table\"><thead><tr><th>Host</th><th>Trail</th><th>Status</th>\
         <th>Segments</th><th>Lines</th><th>Detail</th></tr></thead><tbody>\n",
    );
    for host in &f.hosts {
        let mine: Vec<&TrailCheck> = trails.iter().filter(|t| t.host == host.host).collect();
        if mine.is_empty() {
            let _ = writeln!(
                h,
                "<tr data-host=\"{name}\" data-trail=\"\" data-status=\"none\"><td>{name}</td><td></td>\
                 <td class=\"none\">none shipped</td><td class=\"num\">0</td><td class=\"num\">0</td><td></td></tr>",
                name = esc(&host.host)
            );
        }
        for t in mine {
            let _ = writeln!(
                h,
                "<tr data-host=\"{name}\" data-trail=\"{trail}\" data-status=\"{st}\"><td>{name}</td>\
                 <td><code>{trail}</code></td><td class=\"{st}\">{st}</td><td class=\"num\">{segments}</td>\
                 <td class=\"num\">{lines}</td><td>{detail}</td></tr>",
                name = esc(&t.host),
                trail = esc(&t.trail),
                st = t.status,
                segments = t.segments.map(|n| n.to_string()).unwrap_or_default(),
                lines = t.lines.map(|n| n.to_string()).unwrap_or_default(),
                detail = match (&t.error, &t.head) {
                    (Some(e), _) => esc(e),
                    (None, Some(head)) => format!("head <code>{}</code>", esc(head)),
                    (None, None) => String::new(),
                },
            );
        }
    }
    h.push_str("</tbody></table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fleet::scan;
    use crate::ops::fleet::tests::{at, fleet_store, options, snapshot};

    #[test]
    fn names_from_the_bucket_are_text_never_markup() {
        let (store, repo) = fleet_store();
        let evil = "<img src=x onerror=alert(1)>";
        snapshot(
            &store,
            evil,
            "etc",
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00Z",
            1,
        );
        let fleet = scan(&repo, &options("2026-11-22T12:00:00Z", "36h")).unwrap();
        let page = report_html(&ReportInput {
            fleet: &fleet,
            hardening: HardeningView::NotApplicable("a local repository has no bucket".into()),
            trails: &[],
            days: 7,
            now: at("2026-11-22T12:00:00Z"),
        });
        assert!(!page.contains(evil));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(
            !page.contains("<img") && !page.contains("<script"),
            "no markup from the bucket"
        );
        assert!(page.contains("content=\"default-src 'none'; style-src 'unsafe-inline'\""));
        assert_eq!(
            page.matches("<tr data-host=").count(),
            5 + 4,
            "4 jobs and web3; a trail row per host"
        );
    }

    #[test]
    fn a_chart_has_a_bar_per_day_with_bytes_and_a_dot_per_snapshot() {
        let (_store, repo) = fleet_store();
        let fleet = scan(&repo, &options("2026-11-22T12:00:00Z", "36h")).unwrap();
        let input = ReportInput {
            fleet: &fleet,
            hardening: HardeningView::NotApplicable(String::new()),
            trails: &[],
            days: 7,
            now: at("2026-11-22T12:00:00Z"),
        };
        // web1/etc: 110, 210 and 310 bytes on the 20th, 21st and 22nd.
        let svg = chart(&fleet.hosts[0].jobs[1], &input);
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        assert_eq!(svg.matches("class=\"snapshot\"").count(), 3);
        assert!(svg.contains("<title>2026-11-20: 110 B</title>"), "{svg}");
        assert!(svg.contains("<title>2026-11-22: 630 B</title>"), "{svg}");
        assert!(
            svg.contains(">2026-11-16</text>") && svg.contains(">2026-11-22</text>"),
            "{svg}"
        );
        // web2/etc: the future-dated snapshot is red, at its recorded time.
        let svg = chart(&fleet.hosts[1].jobs[0], &input);
        assert!(svg.contains(
            "fill=\"#b3261e\"><title>20271122T100000Z-00012345 at 2026-11-22T11:00:00Z (future-dated)</title>"
        ));
    }
}
