//! Operations: what a run leaves behind for the people and systems that
//! watch it.
//!
//! - [`report`]: the one place a finished run is recorded. A command hands
//!   its run report to a [`report::Recorder`], which turns it into the job
//!   status files, the metrics file and the audit-trail lines (and ships
//!   the trail). Another observer (a webhook, say) is added there.
//! - [`status`]: per-job run records (`STATE/status/JOB.json`) and the
//!   Prometheus text file built from them.
//! - [`audit_log`]: the hash-chained audit trail and its shipping to the
//!   repository.
//! - [`fleet`]: the view of every host sharing the repository, from
//!   listings alone: who is protected and since when not, as a table,
//!   Prometheus metrics and an auditors' HTML report.
//!
//! Uses: `repo` (to ship audit segments, and the fleet's listings),
//! `pipeline` (its report types), `cloud` (hardening findings, for the
//! fleet report), `error`. Knows nothing of the command line or exit codes.

pub mod audit_log;
pub mod fleet;
pub mod report;
pub mod status;
