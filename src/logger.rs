//! The log backend: one line per record on stderr, `2026-12-07T22:39:14.123Z INFO  [target]
//! message`, UTC, the format simple_logger printed (tests and operators' greps rely on it).
//!
//! Written here instead of using simple_logger because its timestamps come from the `time`
//! crate's format-description machinery: about 30 KB of the binary for one fixed format
//! (issue 14's size budgets). A log line is written with one `write_all` on a locked stderr,
//! so lines from the resolver thread never interleave with the loop's; a failed write (stderr
//! closed) is ignored rather than taking the server down.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record, SetLoggerError};

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger at `level`. Called once at start; fails only if a logger was already
/// installed.
pub fn init(level: LevelFilter) -> Result<(), SetLoggerError> {
    log::set_logger(&LOGGER)?;
    log::set_max_level(level);
    Ok(())
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let target = if record.target().is_empty() {
            record.module_path().unwrap_or_default()
        } else {
            record.target()
        };
        let mut line = Vec::with_capacity(128);
        // Writing into a Vec cannot fail.
        let _ = writeln!(
            line,
            "{} {:<5} [{}] {}",
            Timestamp(since_epoch.as_secs(), since_epoch.subsec_millis()),
            record.level().as_str(),
            target,
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(&line);
    }

    fn flush(&self) {}
}

/// Seconds since the Unix epoch and milliseconds, shown as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
struct Timestamp(u64, u32);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Timestamp(secs, millis) = *self;
        let (year, month, day) = civil_from_days(secs / 86_400);
        let of_day = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60
        )
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative counts: the clock is never before 1970 here, and a clock
/// that is shows as 1970-01-01).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(secs: u64, millis: u32) -> String {
        Timestamp(secs, millis).to_string()
    }

    #[test]
    fn timestamps_match_the_calendar() {
        assert_eq!(shown(0, 0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century divisible by 400), 12:34:56.789.
        assert_eq!(shown(951_827_696, 789), "2000-02-29T12:34:56.789Z");
        // 2024-12-31T23:59:59, the last second of a leap year, then the next day.
        assert_eq!(shown(1_735_689_599, 5), "2024-12-31T23:59:59.005Z");
        assert_eq!(shown(1_735_689_600, 0), "2025-01-01T00:00:00.000Z");
        // 2100-03-01: 2100 is not a leap year.
        assert_eq!(shown(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_previous_one() {
        let days_in = |y: u64, m: u64| match m {
            2 if y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400)) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut expected = (1970, 1, 1);
        for days in 0..146_097 {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            let (y, m, d) = expected;
            expected = if d < days_in(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }
}
