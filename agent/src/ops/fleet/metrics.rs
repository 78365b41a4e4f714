//! The fleet's figures for Prometheus: the text exposition of a scan
//! ([`metrics_text`]), written as a textfile for node_exporter or served to
//! scrapers by [`serve`], a deliberately tiny HTTP server on a std
//! `TcpListener` (one connection at a time, short timeouts, `GET /metrics`
//! only) that answers from the last scan while a thread rescans on an
//! interval. Scrapes never trigger listings: a bucket costs the same
//! whatever the scrape interval.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};

use super::Fleet;

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One metric family: its samples as (labels, value).
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

/// The Prometheus text exposition of `fleet`.
pub fn metrics_text(fleet: &Fleet) -> String {
    let job_labels = |host: &str, job: &str| {
        format!(
            "{{host=\"{}\",job=\"{}\"}}",
            escape_label(host),
            escape_label(job)
        )
    };
    let per_job = |name, help, get: &dyn Fn(&super::JobView) -> Option<f64>| Family {
        name,
        help,
        samples: fleet
            .hosts
            .iter()
            .flat_map(|h| {
                h.jobs
                    .iter()
                    .filter_map(|j| get(j).map(|v| (job_labels(&h.host, &j.job), v)))
            })
            .collect(),
    };
    let per_host = |name, help, get: &dyn Fn(&super::HostView) -> f64| Family {
        name,
        help,
        samples: fleet
            .hosts
            .iter()
            .map(|h| (format!("{{host=\"{}\"}}", escape_label(&h.host)), get(h)))
            .collect(),
    };
    let single = |name, help, value: f64| Family {
        name,
        help,
        samples: vec![(String::new(), value)],
    };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mut families = vec![
        per_job(
            "vaultline_fleet_last_snapshot_timestamp_seconds",
            "Time of the job's newest snapshot that is not future-dated, as the repository recorded it.",
            &|j| j.last_snapshot_unix.map(|t| t as f64),
        ),
        per_job(
            "vaultline_fleet_snapshots",
            "Committed snapshots of the job (future-dated ones included).",
            &|j| Some(j.snapshots as f64),
        ),
        per_job(
            "vaultline_fleet_stored_bytes",
            "Bytes of the job's current objects (archives and manifests).",
            &|j| Some(j.stored_bytes as f64),
        ),
        per_job(
            "vaultline_fleet_stale",
            "1 when the job has no snapshot newer than the maximum age.",
            &|j| Some(flag(j.is_stale())),
        ),
        per_job(
            "vaultline_fleet_future_dated_snapshots",
            "Snapshots whose id claims a time well after the repository recorded them.",
            &|j| Some(j.future_dated as f64),
        ),
        per_job(
            "vaultline_fleet_newest_manifest_future_dated",
            "1 when the manifest recorded last is future-dated.",
            &|j| Some(flag(j.newest_future_dated)),
        ),
        per_host(
            "vaultline_fleet_host_stale",
            "1 when the host has a stale job or no snapshot at all.",
            &|h| flag(h.stale),
        ),
        per_host("vaultline_fleet_host_jobs", "Jobs found for the host.", &|h| {
            h.jobs.len() as f64
        }),
        per_host(
            "vaultline_fleet_host_stored_bytes",
            "Bytes under the host: its jobs, audit trails and anything else.",
            &|h| h.stored_bytes as f64,
        ),
        single(
            "vaultline_fleet_hosts",
            "Hosts found in the repository.",
            fleet.summary.hosts as f64,
        ),
        single(
            "vaultline_fleet_stale_hosts",
            "Hosts with a stale job or no snapshot.",
            fleet.summary.stale_hosts as f64,
        ),
        single(
            "vaultline_fleet_max_age_seconds",
            "The age after which a job is stale.",
            fleet.max_age_seconds as f64,
        ),
        single(
            "vaultline_fleet_scan_timestamp_seconds",
            "When the scan these figures come from started.",
            fleet
                .scanned_at
                .parse::<jiff::Timestamp>()
                .map_or(0.0, |t| t.as_second() as f64),
        ),
        single(
            "vaultline_fleet_scan_duration_seconds",
            "How long the scan took.",
            fleet.scan.seconds,
        ),
    ];
    if let Some(n) = fleet.scan.s3_requests {
        families.push(single(
            "vaultline_fleet_scan_requests",
            "S3 requests the scan sent.",
            n as f64,
        ));
    }
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} gauge", f.name);
        for (labels, v) in &f.samples {
            let _ = writeln!(out, "{}{labels} {v}", f.name);
        }
    }
    out
}

/// What the server answers from: the last scan's text, and how the scans
/// went.
#[derive(Debug, Default)]
pub struct Served {
    /// The exposition of the last scan that succeeded.
    pub text: String,
    /// Whether the last scan succeeded.
    pub last_scan_ok: bool,
    /// Scans that failed so far.
    pub failures: u64,
}

impl Served {
    fn body(&self) -> String {
        format!(
            "{}# HELP vaultline_fleet_scan_success 1 when the last scan succeeded (else the figures are the \
             last good scan's).\n# TYPE vaultline_fleet_scan_success gauge\nvaultline_fleet_scan_success {}\n\
             # HELP vaultline_fleet_scan_failures_total Scans that failed.\n\
             # TYPE vaultline_fleet_scan_failures_total counter\nvaultline_fleet_scan_failures_total {}\n",
            self.text,
            u8::from(self.last_scan_ok),
            self.failures
        )
    }
}

/// Requests larger than this are refused: a scrape is one line and a few
/// headers.
const MAX_REQUEST: usize = 8 << 10;
/// How long one client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `served` on `listener` until the process ends: `GET /metrics`
/// gets the exposition, `GET /` a line saying where it is, anything else
/// 404 or 405. One connection at a time, each closed after its answer.
pub fn serve(listener: &TcpListener, served: &Arc<Mutex<Served>>) -> Result<()> {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, served) {
                    tracing::debug!("fleet metrics client: {e:#}");
                }
            }
            Err(e) => tracing::warn!("fleet metrics server: accepting a connection failed: {e}"),
        }
    }
    Ok(())
}

fn answer(mut stream: TcpStream, served: &Arc<Mutex<Served>>) -> Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).context("reading the request")?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        if request.len() > MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "", false);
        }
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let head = method == "HEAD";
    if method != "GET" && !head {
        return respond(&mut stream, "405 Method Not Allowed", "only GET\n", head);
    }
    match path {
        "/metrics" => {
            let body = served.lock().unwrap_or_else(PoisonError::into_inner).body();
            respond(&mut stream, "200 OK", &body, head)
        }
        "/" => respond(
            &mut stream,
            "200 OK",
            "vaultline fleet metrics: GET /metrics\n",
            head,
        ),
        _ => respond(&mut stream, "404 Not Found", "not found: GET /metrics\n", head),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str, head: bool) -> Result<()> {
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    if !head {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fleet::scan;
    use crate::ops::fleet::tests::{fleet_store, options};

    #[test]
    fn the_exposition_has_every_series_with_escaped_labels() {
        let (store, repo) = fleet_store();
        super::super::tests::snapshot(
            &store,
            "we\"ird\\host",
            "etc",
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00Z",
            1,
        );
        let fleet = scan(&repo, &options("2026-11-22T12:00:00Z", "36h")).unwrap();
        let text = metrics_text(&fleet);
        for line in [
            "vaultline_fleet_last_snapshot_timestamp_seconds{host=\"web1\",job=\"etc\"} 1795338000\n",
            "vaultline_fleet_snapshots{host=\"web2\",job=\"etc\"} 2\n",
            "vaultline_fleet_stored_bytes{host=\"web1\",job=\"db\"} 1010\n",
            "vaultline_fleet_stale{host=\"web1\",job=\"db\"} 1\n",
            "vaultline_fleet_stale{host=\"web1\",job=\"etc\"} 0\n",
            "vaultline_fleet_future_dated_snapshots{host=\"web2\",job=\"etc\"} 1\n",
            "vaultline_fleet_newest_manifest_future_dated{host=\"web2\",job=\"etc\"} 1\n",
            "vaultline_fleet_host_stale{host=\"web3\"} 1\n",
            "vaultline_fleet_host_jobs{host=\"web3\"} 0\n",
            "vaultline_fleet_host_stored_bytes{host=\"web3\"} 10\n",
            "vaultline_fleet_stale{host=\"we\\\"ird\\\\host\",job=\"etc\"} 0\n",
            "vaultline_fleet_hosts 4\n",
            "vaultline_fleet_stale_hosts 2\n",
            "vaultline_fleet_max_age_seconds 129600\n",
            "vaultline_fleet_scan_timestamp_seconds 1795348800\n",
            "# TYPE vaultline_fleet_stale gauge\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("vaultline_fleet_scan_requests"),
            "no request count for a store that does not count"
        );
    }

    #[test]
    fn the_server_answers_metrics_and_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(Mutex::new(Served {
            text: "vaultline_fleet_hosts 3\n".into(),
            last_scan_ok: true,
            failures: 2,
        }));
        let s = Arc::clone(&served);
        std::thread::spawn(move || serve(&listener, &s));
        let ask = |request: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            c.read_to_string(&mut answer).unwrap();
            answer
        };
        let ok = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with(
            "\r\n\r\nvaultline_fleet_hosts 3\n# HELP vaultline_fleet_scan_success 1 when the last scan succeeded \
             (else the figures are the last good scan's).\n# TYPE vaultline_fleet_scan_success gauge\n\
             vaultline_fleet_scan_success 1\n# HELP vaultline_fleet_scan_failures_total Scans that failed.\n\
             # TYPE vaultline_fleet_scan_failures_total counter\nvaultline_fleet_scan_failures_total 2\n"
        ));
        assert!(ask("GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(ask("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        let head = ask("HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
    }
}
