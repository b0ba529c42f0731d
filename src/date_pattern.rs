//! Java `SimpleDateFormat` patterns, formatted with the `time` crate.
//!
//! Users of the official connector write `{{due_date|yyyyMMddHHmmss}}` in their
//! templates, so we accept the Java pattern language: the letters the contract lists,
//! `'quoted text'`, `''` for a quote, anything else literal. A pattern is translated
//! once into [`DatePattern`] fields; each field is then printed from the `time`
//! calendar values of the due date in UTC with Java's `Locale.US` rules. The tests
//! compare against a table made by the real `java.text.SimpleDateFormat`.

use std::fmt;
use std::fmt::Write as _;

use time::{OffsetDateTime, Weekday};

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatePattern {
    items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Literal(String),
    Field(Field, usize),
}

/// The pattern letters the contract supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Year,        // y
    Month,       // M
    DayOfMonth,  // d
    Hour0To23,   // H
    Hour1To12,   // h
    Hour1To24,   // k
    Hour0To11,   // K
    Minute,      // m
    Second,      // s
    Millisecond, // S
    DayName,     // E
    AmPm,        // a
    DayOfYear,   // D
    WeekOfYear,  // w
    DayNumber,   // u
    ZoneName,    // z
    ZoneRfc822,  // Z
    ZoneIso8601, // X
}

impl Field {
    fn of(letter: char) -> Option<Field> {
        Some(match letter {
            'y' => Field::Year,
            'M' => Field::Month,
            'd' => Field::DayOfMonth,
            'H' => Field::Hour0To23,
            'h' => Field::Hour1To12,
            'k' => Field::Hour1To24,
            'K' => Field::Hour0To11,
            'm' => Field::Minute,
            's' => Field::Second,
            'S' => Field::Millisecond,
            'E' => Field::DayName,
            'a' => Field::AmPm,
            'D' => Field::DayOfYear,
            'w' => Field::WeekOfYear,
            'u' => Field::DayNumber,
            'z' => Field::ZoneName,
            'Z' => Field::ZoneRfc822,
            'X' => Field::ZoneIso8601,
            _ => return None,
        })
    }
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    UnknownLetter { letter: char, pattern: String },
    UnterminatedQuote { pattern: String },
    BadIsoZoneWidth { pattern: String },
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::UnknownLetter { letter, pattern } => write!(
                f,
                "date pattern {pattern:?} uses the letter '{letter}', which is not supported \
                 (letters: y M d H h k K m s S E a D w u z Z X; quote text with '...')"
            ),
            PatternError::UnterminatedQuote { pattern } => {
                write!(
                    f,
                    "date pattern {pattern:?} has a quote ' that is never closed"
                )
            }
            PatternError::BadIsoZoneWidth { pattern } => {
                write!(
                    f,
                    "date pattern {pattern:?} uses X more than 3 times in a row"
                )
            }
        }
    }
}

impl std::error::Error for PatternError {}

impl DatePattern {
    pub fn parse(pattern: &str) -> Result<DatePattern, PatternError> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut items = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' {
                if chars.get(i + 1) == Some(&'\'') {
                    literal.push('\'');
                    i += 2;
                    continue;
                }
                // Quoted text up to the closing quote; '' inside is one quote.
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(PatternError::UnterminatedQuote {
                                pattern: pattern.into(),
                            })
                        }
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            literal.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&other) => {
                            literal.push(other);
                            i += 1;
                        }
                    }
                }
            } else if c.is_ascii_alphabetic() {
                let field = Field::of(c).ok_or_else(|| PatternError::UnknownLetter {
                    letter: c,
                    pattern: pattern.into(),
                })?;
                let count = chars[i..].iter().take_while(|&&x| x == c).count();
                if field == Field::ZoneIso8601 && count > 3 {
                    return Err(PatternError::BadIsoZoneWidth {
                        pattern: pattern.into(),
                    });
                }
                if !literal.is_empty() {
                    items.push(Item::Literal(std::mem::take(&mut literal)));
                }
                items.push(Item::Field(field, count));
                i += count;
            } else {
                literal.push(c);
                i += 1;
            }
        }
        if !literal.is_empty() {
            items.push(Item::Literal(literal));
        }
        Ok(DatePattern { items })
    }

    /// Formats an instant (taken in UTC).
    pub fn format(&self, t: OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        let mut out = String::new();
        for item in &self.items {
            match item {
                Item::Literal(s) => out.push_str(s),
                Item::Field(field, count) => format_field(&mut out, *field, *count, t),
            }
        }
        out
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn number(out: &mut String, value: i64, width: usize) {
    let _ = write!(out, "{value:0width$}");
}

fn format_field(out: &mut String, field: Field, count: usize, t: OffsetDateTime) {
    let hour = t.hour() as i64;
    match field {
        Field::Year if count == 2 => number(out, (t.year() as i64).rem_euclid(100), 2),
        Field::Year => number(out, t.year() as i64, count),
        Field::Month => {
            let name = MONTHS[t.month() as usize - 1];
            match count {
                1 | 2 => number(out, t.month() as i64, count),
                3 => out.push_str(&name[..3]),
                _ => out.push_str(name),
            }
        }
        Field::DayOfMonth => number(out, t.day() as i64, count),
        Field::Hour0To23 => number(out, hour, count),
        Field::Hour1To12 => number(out, if hour % 12 == 0 { 12 } else { hour % 12 }, count),
        Field::Hour1To24 => number(out, if hour == 0 { 24 } else { hour }, count),
        Field::Hour0To11 => number(out, hour % 12, count),
        Field::Minute => number(out, t.minute() as i64, count),
        Field::Second => number(out, t.second() as i64, count),
        Field::Millisecond => number(out, t.millisecond() as i64, count),
        Field::DayName => {
            let name = weekday_name(t.weekday());
            out.push_str(if count >= 4 { name } else { &name[..3] });
        }
        Field::AmPm => out.push_str(if hour < 12 { "AM" } else { "PM" }),
        Field::DayOfYear => number(out, t.ordinal() as i64, count),
        Field::WeekOfYear => number(out, week_of_year_us(t), count),
        Field::DayNumber => number(out, t.weekday().number_from_monday() as i64, count),
        Field::ZoneName => out.push_str(if count >= 4 {
            "Coordinated Universal Time"
        } else {
            "UTC"
        }),
        Field::ZoneRfc822 => out.push_str("+0000"),
        Field::ZoneIso8601 => out.push('Z'),
    }
}

fn weekday_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Monday => "Monday",
        Weekday::Tuesday => "Tuesday",
        Weekday::Wednesday => "Wednesday",
        Weekday::Thursday => "Thursday",
        Weekday::Friday => "Friday",
        Weekday::Saturday => "Saturday",
        Weekday::Sunday => "Sunday",
    }
}

/// Java's `WEEK_OF_YEAR` for `Locale.US`: weeks start on Sunday and week 1 is the
/// one that holds January 1, so the last days of December can be in week 1.
fn week_of_year_us(t: OffsetDateTime) -> i64 {
    let ordinal = t.ordinal() as i64; // 1-based
    let weekday = t.weekday().number_days_from_sunday() as i64; // Sunday = 0
    let days_in_year = time::util::days_in_year(t.year()) as i64;
    if ordinal + (6 - weekday) > days_in_year {
        return 1; // this week's Saturday falls in the next year, which holds its January 1
    }
    let jan1_weekday = (weekday - (ordinal - 1)).rem_euclid(7);
    (ordinal - 1 + jan1_weekday) / 7 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap()
    }

    /// Every row of the table made by java.text.SimpleDateFormat.
    #[test]
    fn matches_java_simpledateformat() {
        let table = include_str!("../tests/data/simpledateformat.tsv");
        let mut rows = 0;
        let mut failures = Vec::new();
        for line in table.lines().filter(|l| !l.starts_with('#')) {
            let mut cols = line.splitn(3, '\t');
            let (ms, pattern, want) = (
                cols.next().unwrap(),
                cols.next().unwrap(),
                cols.next().unwrap(),
            );
            let got = DatePattern::parse(pattern)
                .unwrap()
                .format(at(ms.parse().unwrap()));
            if got != want {
                failures.push(format!("{ms} {pattern:?}: java {want:?}, ours {got:?}"));
            }
            rows += 1;
        }
        assert!(rows > 1000, "table too short: {rows}");
        assert!(
            failures.is_empty(),
            "{} mismatches:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn refuses_what_java_refuses_or_the_contract_leaves_out() {
        assert!(matches!(
            DatePattern::parse("yyyy-QQ"),
            Err(PatternError::UnknownLetter { letter: 'Q', .. })
        ));
        assert!(matches!(
            DatePattern::parse("G yyyy"),
            Err(PatternError::UnknownLetter { letter: 'G', .. })
        ));
        assert!(matches!(
            DatePattern::parse("yyyy'T"),
            Err(PatternError::UnterminatedQuote { .. })
        ));
        assert!(matches!(
            DatePattern::parse("XXXX"),
            Err(PatternError::BadIsoZoneWidth { .. })
        ));
        let msg = DatePattern::parse("yyyy-QQ").unwrap_err().to_string();
        assert!(msg.contains("'Q'") && msg.contains("yyyy-QQ"), "{msg}");
    }

    #[test]
    fn quoted_letters_and_non_ascii_are_literal() {
        let p = DatePattern::parse("'Q'yyyy-ž").unwrap();
        assert_eq!(p.format(at(1101902400000)), "Q2004-ž");
    }
}
