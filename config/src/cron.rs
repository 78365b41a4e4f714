//! Cron schedules: validated with `croner` (the parser tokio-cron-scheduler
//! uses, so what validates here is what the agent can schedule), after a
//! field-by-field range check that says which field is wrong.
//!
//! Accepted: 5 fields (`minute hour day-of-month month day-of-week`), 6
//! fields (a leading `second`), and the nicknames `@hourly`, `@daily`,
//! `@weekly`, `@monthly`, `@yearly`/`@annually`.

use croner::parser::{CronParser, Seconds};

/// A validated cron schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    expression: String,
}

impl Schedule {
    /// Parses `expression`, or says exactly what is wrong with it.
    pub fn parse(expression: &str) -> Result<Schedule, String> {
        let expr = expression.trim();
        let invalid = |why: String| format!("invalid cron expression {expression:?}: {why}");
        if expr.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        if !expr.starts_with('@') {
            let fields: Vec<&str> = expr.split_whitespace().collect();
            let names: &[Field] = match fields.len() {
                5 => &FIELDS[1..],
                6 => &FIELDS,
                n => {
                    return Err(invalid(format!(
                        "expected 5 fields (minute hour day-of-month month day-of-week) \
                         or 6 (with a leading second), found {n}"
                    )));
                }
            };
            for (text, field) in fields.iter().zip(names) {
                field.check(text).map_err(invalid)?;
            }
        }
        CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Schedule {
            expression: expr.to_string(),
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first time strictly after `after` (seconds since the epoch, UTC)
    /// when the schedule fires, evaluated in UTC.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        self.next_after_in(after, "UTC")
    }

    /// The first time strictly after `after` when the schedule fires,
    /// with the expression read in time zone `tz` (an IANA name).
    pub fn next_after_in(&self, after: i64, tz: &str) -> Option<i64> {
        let tz: chrono_tz::Tz = tz.parse().ok()?;
        let start = chrono::DateTime::<chrono::Utc>::from_timestamp(after, 0)?.with_timezone(&tz);
        self.cron()?
            .find_next_occurrence(&start, false)
            .ok()
            .map(|t| t.timestamp())
    }

    /// The last time strictly before `before` when the schedule fired, read
    /// in time zone `tz` (for catching up a missed run).
    pub fn previous_before(&self, before: i64, tz: &str) -> Option<i64> {
        let tz: chrono_tz::Tz = tz.parse().ok()?;
        let start = chrono::DateTime::<chrono::Utc>::from_timestamp(before, 0)?.with_timezone(&tz);
        self.cron()?
            .find_previous_occurrence(&start, false)
            .ok()
            .map(|t| t.timestamp())
    }

    fn cron(&self) -> Option<croner::Cron> {
        CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(&self.expression)
            .ok()
    }

    /// The expression with seconds, as tokio-cron-scheduler requires
    /// (`0` is prepended to a 5-field expression).
    pub fn with_seconds(&self) -> String {
        if !self.expression.starts_with('@') && self.expression.split_whitespace().count() == 5 {
            format!("0 {}", self.expression)
        } else {
            self.expression.clone()
        }
    }
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names allowed in place of numbers (months, weekdays).
    names: &'static [&'static str],
}

const MONTHS: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const FIELDS: [Field; 6] = [
    Field {
        name: "second",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: MONTHS,
    },
    Field {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: DAYS,
    },
];

impl Field {
    /// Checks the numbers in one field: lists (`,`), ranges (`-`), steps
    /// (`/`), `*`, `?`, and the `L`/`W`/`#` forms croner understands.
    fn check(&self, text: &str) -> Result<(), String> {
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (part, None),
            };
            if let Some(step) = step {
                match step.parse::<u32>() {
                    Ok(s) if s > 0 => {}
                    _ => return Err(format!("{} step {step:?} must be a positive number", self.name)),
                }
            }
            if range == "*" || range == "?" || range.contains(['L', 'W', '#', 'l', 'w']) {
                continue;
            }
            for bound in range.split('-') {
                self.check_value(bound)?;
            }
        }
        Ok(())
    }

    fn check_value(&self, value: &str) -> Result<(), String> {
        if self.names.iter().any(|n| n.eq_ignore_ascii_case(value)) {
            return Ok(());
        }
        match value.parse::<u32>() {
            Ok(n) if (self.min..=self.max).contains(&n) => Ok(()),
            Ok(_) => Err(format!("{} must be {}-{}", self.name, self.min, self.max)),
            Err(_) if self.names.is_empty() => Err(format!(
                "{} {value:?} is not a number ({}-{})",
                self.name, self.min, self.max
            )),
            Err(_) => Err(format!(
                "{} {value:?} is not a number ({}-{}) or a name ({})",
                self.name,
                self.min,
                self.max,
                self.names.join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_schedules() {
        for e in [
            "0 3 * * *",
            "*/15 * * * *",
            "0 2 * * MON-FRI",
            "30 0 1 JAN,JUL *",
            "*/2 * * * * *",
            "@daily",
        ] {
            Schedule::parse(e).unwrap_or_else(|err| panic!("{e}: {err}"));
        }
        assert_eq!(
            Schedule::parse("0 3 * * *").unwrap().with_seconds(),
            "0 0 3 * * *"
        );
        assert_eq!(
            Schedule::parse("*/2 * * * * *").unwrap().with_seconds(),
            "*/2 * * * * *"
        );
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        let cases = [
            (
                "61 * * * *",
                "invalid cron expression \"61 * * * *\": minute must be 0-59",
            ),
            (
                "0 24 * * *",
                "invalid cron expression \"0 24 * * *\": hour must be 0-23",
            ),
            (
                "0 0 0 * *",
                "invalid cron expression \"0 0 0 * *\": day-of-month must be 1-31",
            ),
            (
                "0 0 * 13 *",
                "invalid cron expression \"0 0 * 13 *\": month must be 1-12",
            ),
            (
                "* * * *",
                "invalid cron expression \"* * * *\": expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with a leading second), found 4",
            ),
            (
                "*/0 * * * *",
                "invalid cron expression \"*/0 * * * *\": minute step \"0\" must be a positive number",
            ),
            (
                "0 0 * * FUN",
                "invalid cron expression \"0 0 * * FUN\": day-of-week \"FUN\" is not a number (0-7) or a name (SUN, MON, TUE, WED, THU, FRI, SAT)",
            ),
        ];
        for (expr, want) in cases {
            assert_eq!(Schedule::parse(expr).unwrap_err(), want);
        }
    }
}
