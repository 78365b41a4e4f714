//! What monitoring sees: `status --json` after runs, and the Prometheus
//! text file, parsed with a real parser.

use std::fs;

use crate::util::Fixture;

#[test]
fn status_and_metrics_follow_the_runs() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a"), b"hello").unwrap();
    fs::write(src.path().join("b"), vec![1u8; 5000]).unwrap();
    let f = Fixture::new(&format!(
        "[[jobs]]\nname = \"data\"\npaths = [{:?}]\nschedule = \"0 3 * * *\"\n\n\
         [[jobs]]\nname = \"never\"\npaths = [{:?}]\n",
        src.path().display().to_string(),
        src.path().display().to_string()
    ));
    f.init();
    let before = f.run(&["status", "--json"]).ok().json();
    assert_eq!(before[0]["runs_total"], 0);
    assert_eq!(before[0]["last_run"], serde_json::Value::Null);

    f.run(&["backup", "now", "data"]).ok();
    f.run(&["backup", "now", "data"]).ok();
    let status = f.run(&["status", "--json"]).ok().json();
    let data = &status[0];
    assert_eq!(data["job"], "data");
    assert_eq!(data["runs_total"], 2);
    assert_eq!(data["failures_total"], 0);
    assert_eq!(data["last_run"]["result"], "ok");
    assert_eq!(data["last_run"]["files"], 2);
    assert_eq!(data["last_run"]["bytes_read"], 5005);
    assert_eq!(data["last_run"]["trigger"], "manual");
    assert_eq!(data["last_success"], data["last_run"]);
    let snaps = f.run(&["snapshots", "data", "--json"]).ok().json();
    assert_eq!(
        data["last_run"]["snapshot"],
        snaps.as_array().unwrap().last().unwrap()["id"]
    );
    assert_eq!(data["schedule"], "0 3 * * *");
    assert!(
        data["next_run"].as_str().unwrap().ends_with("T03:00:00Z"),
        "{data}"
    );
    assert_eq!(status[1]["runs_total"], 0);
    assert!(f.run(&["status"]).ok().stdout.contains("job data\n  last run:"));

    // The metrics file, as node_exporter's textfile collector reads it.
    let text = fs::read_to_string(f.state().join("vaultline.prom")).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let value = |name: &str| {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("job") == Some("data"))
            .unwrap_or_else(|| panic!("no {name} for job data in:\n{text}"));
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: unexpected {other:?}"),
        }
    };
    assert_eq!(value("vaultline_runs_total"), 2.0);
    assert_eq!(value("vaultline_failures_total"), 0.0);
    assert_eq!(value("vaultline_last_run_success"), 1.0);
    assert_eq!(value("vaultline_last_run_files"), 2.0);
    assert_eq!(value("vaultline_last_run_read_bytes"), 5005.0);
    assert!(value("vaultline_last_run_stored_bytes") > 0.0);
    assert_eq!(
        value("vaultline_last_success_timestamp_seconds"),
        value("vaultline_last_run_timestamp_seconds")
    );
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.labels.get("job") == Some("never")
                && s.metric == "vaultline_last_run_timestamp_seconds"),
        "a job that never ran has no last-run time"
    );
    assert!(
        scrape.docs.contains_key("vaultline_runs_total"),
        "HELP lines are there"
    );
}
