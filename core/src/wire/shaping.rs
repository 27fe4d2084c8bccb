//! The types of the shaping messages (protocol version 4): bandwidth groups
//! with weekly windows. `docs/protocol.md` describes them.

use serde::{Deserialize, Serialize};

/// Most shaping groups one server has.
pub const MAX_SHAPING_GROUPS: usize = 8;
/// Most windows one group has.
pub const MAX_SHAPING_WINDOWS: usize = 64;

/// A shaping group's settings: a base rate and weekly windows with rates
/// of their own, in a time zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapingSettings {
    /// Bytes per second outside every window; 0 pauses the group's jobs.
    pub rate: u64,
    /// The first window that contains the local time sets the rate.
    pub windows: Vec<ShapingWindow>,
    /// The time zone the windows are in: an IANA name (`Europe/Berlin`),
    /// `UTC`, or empty for the server's own.
    pub timezone: String,
}

/// A weekly window: on the days in `days`, from `start` to `end` (minutes
/// after local midnight, `start < end <= 1440`), the group's rate is `rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapingWindow {
    /// Bit 0 Monday ... bit 6 Sunday.
    pub days: u8,
    /// Minutes after local midnight when it begins.
    pub start: u16,
    /// Minutes after local midnight when it ends (1440: midnight).
    pub end: u16,
    /// Bytes per second; 0 pauses.
    pub rate: u64,
}

/// A shaping group as listed: its settings and what it does now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapingInfo {
    /// Its name.
    pub name: String,
    /// Its rates and windows.
    pub settings: ShapingSettings,
    /// The rate in force now, bytes per second.
    pub rate_now: u64,
    /// The window in force (as `DAYS HH:MM-HH:MM=RATE`), or empty for the base rate.
    pub window_now: String,
    /// Bytes the group's jobs moved per second over the last 10 s.
    pub throughput: u64,
    /// Jobs drawing from the group now (copies, backup and restore sessions).
    pub jobs: u32,
    /// Partners assigned to it (their copies draw from it).
    pub partners: Vec<String>,
    /// Users assigned to it (their backups and restores draw from it).
    pub users: Vec<String>,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl ShapingWindow {
    /// Whether the window covers minute `minute` (0..1440) of weekday
    /// `day` (0 Monday .. 6 Sunday), local time. A window whose end is
    /// before its start runs over midnight into the next day.
    pub fn covers(&self, day: u8, minute: u16) -> bool {
        let on = |d: u8| self.days & (1 << (d % 7)) != 0;
        if self.start < self.end {
            on(day) && (self.start..self.end).contains(&minute)
        } else {
            (on(day) && minute >= self.start) || (on((day + 6) % 7) && minute < self.end)
        }
    }
}

impl std::fmt::Display for ShapingWindow {
    /// As given: `mon-fri 07:00-19:00=5MB/s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days: Vec<&str> = (0..7)
            .filter(|d| self.days & (1 << d) != 0)
            .map(|d| DAY_NAMES[d])
            .collect();
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(
            f,
            "{} {}-{}={}",
            days.join(","),
            hm(self.start),
            hm(self.end),
            show_rate(self.rate)
        )
    }
}

impl std::str::FromStr for ShapingWindow {
    type Err = String;

    /// `DAYS HH:MM-HH:MM=RATE`: DAYS is `mon`..`sun`, ranges (`mon-fri`),
    /// lists (`sat,sun`) or `daily`; the end may be `24:00`, or before the
    /// start for a window over midnight.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("window {s:?}: {why} (like 'mon-fri 07:00-19:00=5MB/s')");
        let (spec, rate) = s.split_once('=').ok_or_else(|| bad("no '=RATE'"))?;
        let (days, times) = spec.trim().split_once(' ').ok_or_else(|| bad("no days"))?;
        let (start, end) = times
            .trim()
            .split_once('-')
            .ok_or_else(|| bad("no HH:MM-HH:MM"))?;
        let w = ShapingWindow {
            days: parse_days(days.trim()).map_err(|e| bad(&e))?,
            start: parse_minute(start.trim()).map_err(|e| bad(&e))?,
            end: parse_minute(end.trim()).map_err(|e| bad(&e))?,
            rate: parse_rate(rate.trim()).map_err(|e| bad(&e))?,
        };
        if w.start == w.end || w.start >= 1440 {
            return Err(bad("an empty time range"));
        }
        Ok(w)
    }
}

fn parse_days(s: &str) -> Result<u8, String> {
    if matches!(s, "daily" | "*") {
        return Ok(0x7f);
    }
    let day = |d: &str| {
        DAY_NAMES
            .iter()
            .position(|n| d.eq_ignore_ascii_case(n))
            .ok_or_else(|| format!("{d:?} is not a day (mon..sun)"))
    };
    let mut days = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    days |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days |= 1 << day(part)?,
        }
    }
    Ok(days)
}

fn parse_minute(s: &str) -> Result<u16, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HH:MM"))?;
    let (h, m): (u16, u16) = match (h.parse(), m.parse()) {
        (Ok(h), Ok(m)) if m < 60 && (h < 24 || (h == 24 && m == 0)) => (h, m),
        _ => return Err(format!("{s:?} is not a time of day")),
    };
    Ok(h * 60 + m)
}

pub use crate::units::parse_rate;

/// A rate for people: `20MB/s`, `500KB/s`, `1234B/s`, `0 (paused)`.
pub fn show_rate(rate: u64) -> String {
    match rate {
        0 => "0".into(),
        r if r % 1_000_000_000 == 0 => format!("{}GB/s", r / 1_000_000_000),
        r if r >= 1_000_000 && r % 1000 == 0 => format!("{}MB/s", r as f64 / 1e6),
        r if r % 1000 == 0 => format!("{}KB/s", r / 1000),
        r => format!("{r}B/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_show_and_cover_their_days_and_hours() {
        let w: ShapingWindow = "mon-fri 07:00-19:00=5MB/s".parse().unwrap();
        assert_eq!(
            (w.days, w.start, w.end, w.rate),
            (0x1f, 420, 1140, 5_000_000)
        );
        assert_eq!(w.to_string(), "mon,tue,wed,thu,fri 07:00-19:00=5MB/s");
        assert!(w.covers(0, 420) && w.covers(4, 1139));
        assert!(!w.covers(0, 419) && !w.covers(4, 1140) && !w.covers(5, 600));
        let night: ShapingWindow = "fri-sun 22:00-06:00=0".parse().unwrap();
        assert!(night.covers(4, 23 * 60) && night.covers(0, 5 * 60) && !night.covers(0, 23 * 60));
        assert!(!night.covers(4, 5 * 60), "Thursday night is not in it");
        let w: ShapingWindow = "sat,sun 00:00-24:00=1.5MB/s".parse().unwrap();
        assert_eq!((w.days, w.end, w.rate), (0x60, 1440, 1_500_000));
        for bad in [
            "mon 07:00-19:00",
            "moon 07:00-19:00=1MB/s",
            "mon 25:00-26:00=1MB/s",
            "mon 07:00-07:00=1MB/s",
            "mon 07:00-19:00=5XB/s",
            "07:00-19:00=1MB/s",
        ] {
            assert!(bad.parse::<ShapingWindow>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_rate("20MB/s"), Ok(20_000_000));
        assert_eq!(parse_rate("500KB/s"), Ok(500_000));
        assert_eq!(parse_rate("64MiB/s"), Ok(64 << 20));
        assert_eq!(parse_rate("0"), Ok(0));
        assert!(parse_rate("-1MB/s").is_err() && parse_rate("fast").is_err());
        assert_eq!(show_rate(20_000_000), "20MB/s");
        assert_eq!(show_rate(500_000), "500KB/s");
        assert_eq!(show_rate(1_500_000), "1.5MB/s");
    }
}
