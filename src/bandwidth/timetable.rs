//! The timetable of `SP_TASK_SYNC_BANDWIDTH`: the caps through the day, in UTC or a fixed
//! offset (`SP_TASK_SYNC_BANDWIDTH_TZ`), read from rclone's syntax with every mistake in it
//! named, and what is in force at a given time.

use std::fmt;

/// The slowest cap accepted, in bytes a second: slower, a transfer would sit idle for
/// longer than servers keep a connection open.
pub const MIN_CAP: u64 = 1024;

/// How fast file bytes may come from the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Off,
    BytesPerSecond(u64),
}

impl Cap {
    /// Bytes a second; 0 for no cap.
    pub fn bytes_per_second(self) -> u64 {
        match self {
            Cap::Off => 0,
            Cap::BytesPerSecond(n) => n,
        }
    }
}

impl fmt::Display for Cap {
    /// `off`, or the rate in the unit that shows it whole: `2 MiB/s`, `1.5 MiB/s`,
    /// `500 KB/s`, `1234 B/s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Cap::BytesPerSecond(n) = *self else {
            return f.write_str("off");
        };
        const UNITS: [(&str, u64); 6] = [
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
            ("GB", 1_000_000_000),
            ("MB", 1_000_000),
            ("KB", 1_000),
        ];
        // The first unit that shows the rate with at most two decimals.
        match UNITS
            .iter()
            .find(|(_, size)| n >= *size && (n as u128 * 100).is_multiple_of(*size as u128))
        {
            Some((unit, size)) => write!(f, "{} {unit}/s", n as f64 / *size as f64),
            None => write!(f, "{n} B/s"),
        }
    }
}

/// A fixed offset from UTC, in minutes east (`SP_TASK_SYNC_BANDWIDTH_TZ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offset(i32);

impl Offset {
    /// `UTC`, `Z`, or `+HH:MM` / `-HH:MM` up to 14 hours.
    pub fn parse(raw: &str) -> Result<Offset, BandwidthError> {
        let bad = || BandwidthError::Offset {
            part: raw.to_string(),
        };
        if raw.eq_ignore_ascii_case("utc") || raw == "Z" {
            return Ok(Offset(0));
        }
        let (sign, rest) = match raw.as_bytes().first() {
            Some(b'+') => (1, &raw[1..]),
            Some(b'-') => (-1, &raw[1..]),
            _ => return Err(bad()),
        };
        match hh_mm(rest) {
            Some((h, m)) if m < 60 && h * 60 + m <= 14 * 60 => {
                Ok(Offset(sign * (h * 60 + m) as i32))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Offset {
    /// `UTC`, `UTC+01:00`, `UTC-05:30`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("UTC");
        }
        let sign = if self.0 < 0 { '-' } else { '+' };
        let minutes = self.0.unsigned_abs();
        write!(f, "UTC{sign}{:02}:{:02}", minutes / 60, minutes % 60)
    }
}

/// One line of a timetable: from `minute` of the day on, `cap` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    /// Minutes since midnight in the timetable's offset.
    minute: u32,
    cap: Cap,
}

/// The caps through the day: each change holds until the next one, the last until the
/// first of the next day. A plain rate (or `off`) is one change at midnight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timetable {
    changes: Vec<Change>,
    offset: Offset,
}

impl Timetable {
    /// No cap at any time.
    pub fn off() -> Timetable {
        Timetable {
            changes: vec![Change {
                minute: 0,
                cap: Cap::Off,
            }],
            offset: Offset::default(),
        }
    }

    /// Reads `off`, a rate (`2MiB/s`, `512k`), or a timetable of `HH:MM,RATE` entries
    /// separated by spaces, times in order. Every bad part is reported, each naming it.
    pub fn parse(raw: &str) -> Result<Timetable, Vec<BandwidthError>> {
        let parts: Vec<&str> = raw.split_whitespace().collect();
        if let [single] = parts[..] {
            if !single.contains(',') {
                return match parse_cap(single) {
                    Ok(cap) => Ok(Timetable {
                        changes: vec![Change { minute: 0, cap }],
                        offset: Offset::default(),
                    }),
                    // `08:00` alone: a time without its rate.
                    Err(_) if parse_time(single).is_ok() => Err(vec![BandwidthError::Entry {
                        part: single.to_string(),
                    }]),
                    Err(e) => Err(vec![e]),
                };
            }
        }
        let mut changes: Vec<Change> = Vec::new();
        let mut errors = Vec::new();
        let mut previous: Option<(&str, u32)> = None;
        for part in &parts {
            let Some((time, rate)) = part.split_once(',') else {
                errors.push(BandwidthError::Entry {
                    part: part.to_string(),
                });
                continue;
            };
            let minute = parse_time(time).map_err(|e| errors.push(e)).ok();
            let cap = parse_cap(rate).map_err(|e| errors.push(e)).ok();
            if let Some(minute) = minute {
                if let Some((before, _)) = previous.filter(|(_, at)| minute <= *at) {
                    errors.push(BandwidthError::Order {
                        part: time.to_string(),
                        after: before.to_string(),
                    });
                }
                previous = Some((time, minute));
                if let Some(cap) = cap {
                    changes.push(Change { minute, cap });
                }
            }
        }
        if errors.is_empty() && changes.is_empty() {
            errors.push(BandwidthError::Entry {
                part: raw.to_string(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Timetable {
            changes,
            offset: Offset::default(),
        })
    }

    /// The same timetable with its times in `offset`.
    pub fn in_offset(self, offset: Offset) -> Timetable {
        Timetable { offset, ..self }
    }

    /// Whether there is no cap at any time of day.
    pub fn is_off(&self) -> bool {
        self.changes.iter().all(|c| c.cap == Cap::Off)
    }

    /// The cap in force at `unix_seconds`.
    pub fn cap_at(&self, unix_seconds: i64) -> Cap {
        self.changes[self.current(unix_seconds)].cap
    }

    /// The cap in force at `unix_seconds` and the next change of it, for `check`.
    pub fn outlook(&self, unix_seconds: i64) -> Outlook {
        let now = self.current(unix_seconds);
        let cap = self.changes[now].cap;
        let n = self.changes.len();
        let next = (1..n)
            .map(|i| self.changes[(now + i) % n])
            .find(|c| c.cap != cap);
        Outlook {
            cap,
            next,
            offset: self.offset,
        }
    }

    /// The index of the change in force at `unix_seconds`: the last one at or before
    /// the time of day, or the day's last one (from the day before) when none is.
    fn current(&self, unix_seconds: i64) -> usize {
        let local = unix_seconds + i64::from(self.offset.0) * 60;
        let minute = (local.rem_euclid(86_400) / 60) as u32;
        self.changes
            .iter()
            .rposition(|c| c.minute <= minute)
            .unwrap_or(self.changes.len() - 1)
    }
}

impl fmt::Display for Timetable {
    /// `off (no cap)`, `2 MiB/s at all times`, or `08:00 2 MiB/s, 18:00 off (times of
    /// day in UTC)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.changes[0].cap;
        if self.changes.iter().all(|c| c.cap == first) {
            return match first {
                Cap::Off => f.write_str("off (no cap)"),
                cap => write!(f, "{cap} at all times"),
            };
        }
        for (i, c) in self.changes.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {}", clock_time(c.minute), c.cap)?;
        }
        write!(f, " (times of day in {})", self.offset)
    }
}

/// The cap in force and what comes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlook {
    cap: Cap,
    next: Option<Change>,
    offset: Offset,
}

impl fmt::Display for Outlook {
    /// `2 MiB/s until 18:00 UTC, then off`, `off (no cap)`, `2 MiB/s at all times`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.cap, self.next) {
            (Cap::Off, None) => f.write_str("off (no cap)"),
            (cap, None) => write!(f, "{cap} at all times"),
            (cap, Some(next)) => write!(
                f,
                "{cap} until {} {}, then {}",
                clock_time(next.minute),
                self.offset,
                next.cap
            ),
        }
    }
}

fn clock_time(minute: u32) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// `HH:MM`, 00:00 to 23:59; rclone's day-of-week forms (`Mon-08:00`) are refused.
fn parse_time(part: &str) -> Result<u32, BandwidthError> {
    if let Some((day, _)) = part.split_once('-') {
        if !day.is_empty() && day.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(BandwidthError::DayOfWeek {
                part: part.to_string(),
            });
        }
    }
    match hh_mm(part) {
        Some((h, m)) if h < 24 && m < 60 => Ok(h * 60 + m),
        _ => Err(BandwidthError::Time {
            part: part.to_string(),
        }),
    }
}

/// The hours and minutes of `HH:MM`, two digits each (unchecked against the clock).
fn hh_mm(text: &str) -> Option<(u32, u32)> {
    let two_digits = |s: &str| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let (hours, minutes) = text.split_once(':')?;
    Some((two_digits(hours)?, two_digits(minutes)?))
}

/// `off`, or a number (decimals allowed) with a unit: `KiB/s`, `MiB/s`, `GiB/s`
/// (1024-based), `KB/s`, `MB/s`, `GB/s` (1000-based), `B/s`, or rclone's bare `k`, `M`,
/// `G` (1024-based).
fn parse_cap(part: &str) -> Result<Cap, BandwidthError> {
    let owned = || part.to_string();
    if part.eq_ignore_ascii_case("off") {
        return Ok(Cap::Off);
    }
    if part.contains(':') {
        return Err(BandwidthError::UploadDownload { part: owned() });
    }
    let split = part
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(part.len());
    let (number, unit) = part.split_at(split);
    let Ok(number) = number.parse::<f64>() else {
        return Err(BandwidthError::Rate { part: owned() });
    };
    if number == 0.0 {
        return Err(BandwidthError::Zero { part: owned() });
    }
    let (prefix, rest) = match unit.chars().next() {
        Some(p @ ('k' | 'K' | 'm' | 'M' | 'g' | 'G')) => (Some(p), &unit[1..]),
        _ => (None, unit),
    };
    let power = match prefix.map(|p| p.to_ascii_lowercase()) {
        None => 0,
        Some('k') => 1,
        Some('m') => 2,
        _ => 3,
    };
    let factor = match (prefix, rest) {
        (None, "") => return Err(BandwidthError::NoUnit { part: owned() }),
        (None, "B/s") => 1,
        (Some(_), "" | "iB/s") => 1024u64.pow(power),
        (Some(_), "B/s") => 1000u64.pow(power),
        (_, r) if r.starts_with('b') || r.contains("bit") || r.contains("bps") => {
            return Err(BandwidthError::Bits { part: owned() })
        }
        _ => return Err(BandwidthError::Rate { part: owned() }),
    };
    let bytes = (number * factor as f64).round();
    if bytes < MIN_CAP as f64 {
        return Err(BandwidthError::TooSlow { part: owned() });
    }
    if bytes > (1u64 << 50) as f64 {
        return Err(BandwidthError::Rate { part: owned() });
    }
    Ok(Cap::BytesPerSecond(bytes as u64))
}

/// What is wrong with a part of `SP_TASK_SYNC_BANDWIDTH` or `SP_TASK_SYNC_BANDWIDTH_TZ`;
/// each names the part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BandwidthError {
    /// Not `off` and not a number with a known unit.
    Rate { part: String },
    /// A number without a unit: rclone reads KiB/s where a size here is bytes.
    NoUnit { part: String },
    /// A rate in bits (`10Mb/s`, `10Mbit/s`, `10Mbps`).
    Bits { part: String },
    /// A cap of nothing.
    Zero { part: String },
    /// Under [`MIN_CAP`].
    TooSlow { part: String },
    /// rclone's `UPLOAD:DOWNLOAD` pair.
    UploadDownload { part: String },
    /// A timetable entry that is not `HH:MM,RATE`.
    Entry { part: String },
    /// Not a time of day `HH:MM`.
    Time { part: String },
    /// rclone's day-of-week forms (`Mon-08:00`).
    DayOfWeek { part: String },
    /// A time not after the one before it.
    Order { part: String, after: String },
    /// Not a fixed offset from UTC.
    Offset { part: String },
}

impl fmt::Display for BandwidthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BandwidthError::Rate { part } => write!(
                f,
                "{part:?} is not a rate: write off, or a number with a unit: 512KiB/s, 2MiB/s, 1GiB/s (1024-based), 500KB/s, 2MB/s (1000-based), or rclone's 512k, 10M (1024-based)"
            ),
            BandwidthError::NoUnit { part } => write!(
                f,
                "{part:?} has no unit: write {part}KiB/s, {part}MiB/s or another unit (rclone reads a bare number as KiB/s)"
            ),
            BandwidthError::Bits { part } => write!(
                f,
                "{part:?} is in bits; the cap is in bytes (B): 10 Mbit/s is 1.25MB/s"
            ),
            BandwidthError::Zero { part } => write!(
                f,
                "{part:?} would stop every download; write off for no cap"
            ),
            BandwidthError::TooSlow { part } => write!(
                f,
                "{part:?} is under 1KiB/s, the slowest cap accepted: a transfer that slow would sit idle longer than servers keep a connection open"
            ),
            BandwidthError::UploadDownload { part } => write!(
                f,
                "{part:?} is rclone's UPLOAD:DOWNLOAD pair; here the cap is one rate, of the downloads (uploads follow their pace)"
            ),
            BandwidthError::Entry { part } => write!(
                f,
                "{part:?} is not TIME,RATE: a timetable is entries such as 08:00,2MiB/s 18:00,off separated by spaces"
            ),
            BandwidthError::Time { part } => write!(
                f,
                "{part:?} is not a time of day HH:MM (00:00 to 23:59)"
            ),
            BandwidthError::DayOfWeek { part } => write!(
                f,
                "{part:?} names a day of the week; day-of-week timetables are not supported: each time applies every day"
            ),
            BandwidthError::Order { part, after } => write!(
                f,
                "{part:?} does not come after {after:?}: list the times of the day in order, each once"
            ),
            BandwidthError::Offset { part } => write!(
                f,
                "{part:?} is not a fixed offset from UTC such as +01:00, -05:30 or UTC (zone names need a zone database, which a scratch image lacks; daylight saving time is not followed)"
            ),
        }
    }
}

impl std::error::Error for BandwidthError {}

/// Also the clock of the token bucket's tests (`crate::bandwidth`).
#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::bandwidth) const KIB: u64 = 1024;
    pub(in crate::bandwidth) const MIB: u64 = 1024 * 1024;
    /// 2024-01-01T00:00:00Z, a Monday.
    const MIDNIGHT: i64 = 1_704_067_200;

    /// Unix seconds at `hh:mm` UTC of that day.
    pub(in crate::bandwidth) fn at(hh: i64, mm: i64) -> i64 {
        MIDNIGHT + hh * 3600 + mm * 60
    }

    fn cap(raw: &str) -> Cap {
        parse_cap(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    fn table(raw: &str) -> Timetable {
        Timetable::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e:?}"))
    }

    #[test]
    fn rates_in_every_form() {
        for (raw, bytes) in [
            ("512KiB/s", 512 * KIB),
            ("2MiB/s", 2 * MIB),
            ("1GiB/s", 1 << 30),
            ("1.5MiB/s", 3 * MIB / 2),
            ("500KB/s", 500_000),
            ("500kB/s", 500_000),
            ("2MB/s", 2_000_000),
            ("1GB/s", 1_000_000_000),
            ("512k", 512 * KIB),
            ("512K", 512 * KIB),
            ("10M", 10 * MIB),
            ("10m", 10 * MIB),
            ("1G", 1 << 30),
            ("2048B/s", 2048),
            ("1024B/s", MIN_CAP),
        ] {
            assert_eq!(cap(raw), Cap::BytesPerSecond(bytes), "{raw}");
        }
        assert_eq!(cap("off"), Cap::Off);
        assert_eq!(cap("OFF"), Cap::Off);
    }

    #[test]
    fn bad_rates_say_what_is_wrong_with_the_part() {
        for (raw, want) in [
            ("fast", "is not a rate"),
            ("MiB/s", "is not a rate"),
            ("2MiBs", "is not a rate"),
            ("2MB", "is not a rate"),
            ("1.2.3M", "is not a rate"),
            ("5T", "is not a rate"),
            ("500", "has no unit"),
            ("10Mb/s", "in bits"),
            ("10Mbit/s", "in bits"),
            ("10Mbps", "in bits"),
            ("0", "would stop every download"),
            ("0M", "would stop every download"),
            ("512B/s", "under 1KiB/s"),
            ("10M:5M", "UPLOAD:DOWNLOAD"),
            ("off:5M", "UPLOAD:DOWNLOAD"),
        ] {
            let e = parse_cap(raw).expect_err(raw).to_string();
            assert!(e.starts_with(&format!("{raw:?} ")), "{raw}: {e}");
            assert!(e.contains(want), "{raw}: {e}");
        }
    }

    #[test]
    fn rates_show_in_the_unit_that_shows_them_whole() {
        for (raw, shown) in [
            ("2MiB/s", "2 MiB/s"),
            ("1.5MiB/s", "1.5 MiB/s"),
            ("512k", "512 KiB/s"),
            ("2MB/s", "2 MB/s"),
            ("500KB/s", "500 KB/s"),
            ("1G", "1 GiB/s"),
            ("1234B/s", "1234 B/s"),
            ("off", "off"),
        ] {
            assert_eq!(cap(raw).to_string(), shown, "{raw}");
        }
    }

    #[test]
    fn timetables_and_their_errors() {
        assert_eq!(table("off"), Timetable::off());
        assert!(table("off").is_off() && table("00:00,off 12:00,off").is_off());
        assert!(!table("2MiB/s").is_off());
        let t = table("08:00,512k  12:00,10M\t18:00,off");
        assert_eq!(
            t.to_string(),
            "08:00 512 KiB/s, 12:00 10 MiB/s, 18:00 off (times of day in UTC)"
        );
        assert_eq!(table("2MiB/s").to_string(), "2 MiB/s at all times");
        assert_eq!(table("00:00,off").to_string(), "off (no cap)");

        let errors = |raw: &str| -> Vec<String> {
            Timetable::parse(raw)
                .expect_err(raw)
                .iter()
                .map(|e| e.to_string())
                .collect()
        };
        assert_eq!(
            errors("Mon-08:00,2M 18:00,fast 25:00,off"),
            [
                "\"Mon-08:00\" names a day of the week; day-of-week timetables are not supported: each time applies every day",
                "\"fast\" is not a rate: write off, or a number with a unit: 512KiB/s, 2MiB/s, 1GiB/s (1024-based), 500KB/s, 2MB/s (1000-based), or rclone's 512k, 10M (1024-based)",
                "\"25:00\" is not a time of day HH:MM (00:00 to 23:59)",
            ]
        );
        assert!(errors("sun-00:00,off")[0].contains("day of the week"));
        assert_eq!(
            errors("18:00,off 08:00,2M 08:00,1M"),
            [
                "\"08:00\" does not come after \"18:00\": list the times of the day in order, each once",
                "\"08:00\" does not come after \"08:00\": list the times of the day in order, each once",
            ]
        );
        for entry in ["2M 18:00,off", "08:00", "08:00,2M 18:00"] {
            assert!(
                errors(entry).iter().any(|e| e.contains("is not TIME,RATE")),
                "{entry}: {:?}",
                errors(entry)
            );
        }
        for bad_time in ["8:00", "08-00", "0800", "08:60", "24:00"] {
            assert!(
                errors(&format!("{bad_time},2M"))[0].contains("not a time of day"),
                "{bad_time}"
            );
        }
    }

    #[test]
    fn offsets() {
        for (raw, minutes) in [
            ("UTC", 0),
            ("utc", 0),
            ("Z", 0),
            ("+00:00", 0),
            ("+01:00", 60),
            ("-05:30", -330),
            ("+14:00", 840),
        ] {
            assert_eq!(Offset::parse(raw), Ok(Offset(minutes)), "{raw}");
        }
        for raw in [
            "Europe/Prague",
            "CET",
            "+1",
            "+01",
            "01:00",
            "+14:01",
            "+01:60",
            "+0100",
        ] {
            let e = Offset::parse(raw).expect_err(raw).to_string();
            assert!(
                e.starts_with(&format!("{raw:?} is not a fixed offset")),
                "{e}"
            );
        }
        assert_eq!(Offset(60).to_string(), "UTC+01:00");
        assert_eq!(Offset(-330).to_string(), "UTC-05:30");
        assert_eq!(Offset(0).to_string(), "UTC");
    }

    #[test]
    fn the_cap_follows_the_time_of_day() {
        let t = table("08:00,2MiB/s 18:00,off");
        let two = Cap::BytesPerSecond(2 * MIB);
        // Before the day's first change, the day before's last one holds.
        assert_eq!(t.cap_at(at(0, 0)), Cap::Off);
        assert_eq!(t.cap_at(at(7, 59)), Cap::Off);
        assert_eq!(t.cap_at(at(8, 0)), two);
        assert_eq!(t.cap_at(at(17, 59)), two);
        assert_eq!(t.cap_at(at(18, 0)), Cap::Off);
        assert_eq!(t.cap_at(at(23, 59)), Cap::Off);
        assert_eq!(t.cap_at(at(24 + 8, 0)), two, "every day");
        assert_eq!(t.cap_at(at(-24 + 9, 0)), two, "before 1970 too");

        // In UTC+01:00, 08:00 is 07:00 UTC; in UTC-05:30 it is 13:30 UTC.
        let east = t.clone().in_offset(Offset(60));
        assert_eq!(east.cap_at(at(6, 59)), Cap::Off);
        assert_eq!(east.cap_at(at(7, 0)), two);
        assert_eq!(east.cap_at(at(17, 0)), Cap::Off);
        let west = t.in_offset(Offset(-330));
        assert_eq!(west.cap_at(at(13, 29)), Cap::Off);
        assert_eq!(west.cap_at(at(13, 30)), two);
        assert_eq!(west.cap_at(at(23, 29)), two);
        assert_eq!(west.cap_at(at(23, 30)), Cap::Off);
    }

    #[test]
    fn the_outlook_names_the_next_change() {
        let t = table("08:00,2MiB/s 12:00,2MiB/s 18:00,off");
        assert_eq!(
            t.outlook(at(9, 0)).to_string(),
            "2 MiB/s until 18:00 UTC, then off",
            "12:00 changes nothing"
        );
        assert_eq!(
            t.outlook(at(19, 0)).to_string(),
            "off until 08:00 UTC, then 2 MiB/s"
        );
        assert_eq!(
            t.clone()
                .in_offset(Offset(60))
                .outlook(at(7, 30))
                .to_string(),
            "2 MiB/s until 18:00 UTC+01:00, then off"
        );
        assert_eq!(
            table("10M").outlook(at(3, 0)).to_string(),
            "10 MiB/s at all times"
        );
        assert_eq!(
            Timetable::off().outlook(at(3, 0)).to_string(),
            "off (no cap)"
        );
    }
}
