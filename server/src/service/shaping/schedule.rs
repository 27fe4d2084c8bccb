//! When each rate of a shaping group is in force: its weekly windows, in
//! its time zone, on the server's clock (which a test may move).

use std::sync::atomic::{AtomicI64, Ordering};

use tern_core::wire::{show_rate, ShapingSettings};

/// The wall clock shaping windows are read on. Tests start ternd with
/// `--shaping-clock UNIX_TIME` to stand at a window's boundary without
/// waiting for it; the clock then runs at the real pace from there.
#[derive(Debug, Default)]
pub struct Clock {
    offset: AtomicI64,
}

impl Clock {
    /// A clock that reads `start` now.
    pub fn starting_at(start: i64) -> Self {
        Self {
            offset: AtomicI64::new(start - real_now()),
        }
    }

    /// Seconds since the Unix epoch on this clock.
    pub fn now(&self) -> i64 {
        real_now() + self.offset.load(Ordering::Relaxed)
    }
}

fn real_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A group's time zone: an IANA name, `UTC`, a POSIX TZ string, or empty
/// for the server's own (UTC when the server has none).
pub fn zone(name: &str) -> Result<tz::TimeZone, String> {
    match name {
        "" => Ok(tz::TimeZone::local().unwrap_or_else(|_| tz::TimeZone::utc())),
        "UTC" | "utc" | "Z" => Ok(tz::TimeZone::utc()),
        other => tz::TimeZone::from_posix_tz(other).map_err(|e| {
            format!(
                "unknown time zone {other:?} ({e}): give an IANA name such as Europe/Berlin \
                 (from the server's tzdata), UTC, or a POSIX TZ string"
            )
        }),
    }
}

/// The rate in force at `unix` and the window that sets it (`None`: the base rate).
pub fn rate_at(
    settings: &ShapingSettings,
    zone: &tz::TimeZone,
    unix: i64,
) -> (u64, Option<String>) {
    let offset = zone
        .find_local_time_type(unix)
        .map_or(0, |t| i64::from(t.ut_offset()));
    let local = unix + offset;
    let days = local.div_euclid(86_400);
    // 1970-01-01 was a Thursday (3 with Monday 0).
    let weekday = ((days + 3).rem_euclid(7)) as u8;
    let minute = (local.rem_euclid(86_400) / 60) as u16;
    settings
        .windows
        .iter()
        .find(|w| w.covers(weekday, minute))
        .map_or((settings.rate, None), |w| (w.rate, Some(w.to_string())))
}

/// A rate as `tern shaping ls` shows it.
pub fn show(rate: u64) -> String {
    if rate == 0 {
        "0 (paused)".into()
    } else {
        show_rate(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONDAY_7: i64 = 1_795_417_200;

    #[test]
    fn the_window_in_force_follows_the_weekday_the_hour_and_the_zone() {
        let settings = ShapingSettings {
            rate: 20_000_000,
            windows: vec!["mon-fri 07:00-19:00=5MB/s".parse().unwrap()],
            timezone: "UTC".into(),
        };
        let utc = zone("UTC").unwrap();
        // Monday 2026-11-23 07:00:00 UTC, and a second before.
        let (before, w0) = rate_at(&settings, &utc, MONDAY_7 - 1);
        let (after, w1) = rate_at(&settings, &utc, MONDAY_7);
        assert_eq!((before, w0), (20_000_000, None));
        assert_eq!(after, 5_000_000);
        assert!(w1.unwrap().starts_with("mon,tue"));
        // Saturday at noon: the base rate.
        assert_eq!(
            rate_at(&settings, &utc, MONDAY_7 + 5 * 86_400 + 5 * 3600).0,
            20_000_000
        );
        // The same instant two hours east is 09:00 on Monday, inside the window.
        let east = zone("<+02>-2").unwrap();
        assert_eq!(rate_at(&settings, &east, MONDAY_7 - 3600).0, 5_000_000);
        assert!(zone("Not/AZone").is_err());
    }
}
