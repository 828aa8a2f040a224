//! Cron expressions evaluated in a time zone.
//!
//! [`CronExpr`] parses the classic five fields (`minute hour day-of-month month day-of-week`;
//! `*`, `a`, `a-b`, `*/n`, `a-b/n` and comma lists; day of week 0–7 with 0 and 7 = Sunday;
//! when both day fields are restricted a day matches if either does, as in Vixie cron).
//! [`TimeZone`] reads the system's time-zone database (TZif files under `/usr/share/zoneinfo`
//! or `$TZDIR`). [`CronExpr::next_after`] gives the next occurrence strictly after an
//! instant, in wall-clock ms:
//!
//! - a local time that does not exist (the hour skipped when DST starts) fires at the first
//!   instant after the gap (e.g. `30 2 * * *` in Paris on the last Sunday of March fires at
//!   03:00 local time);
//! - a local time that occurs twice (the hour repeated when DST ends) fires once, at its first
//!   occurrence.
//!
//! Beyond the last transition stored in the zone file (2037 for the usual "fat" files) the
//! last offset is used.

use std::path::PathBuf;

/// Why a cron expression or a time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not five fields.
    #[error("cron expression {expr:?}: expected 5 fields (minute hour day-of-month month day-of-week), found {found}")]
    FieldCount {
        /// The expression.
        expr: String,
        /// Fields found.
        found: usize,
    },
    /// A field did not parse.
    #[error("cron expression {expr:?}: {field} field {token:?}: {detail}")]
    Field {
        /// The expression.
        expr: String,
        /// Which field.
        field: &'static str,
        /// The offending part.
        token: String,
        /// What is wrong.
        detail: String,
    },
    /// The expression never matches (e.g. `0 0 31 2 *`).
    #[error("cron expression {expr:?} never matches")]
    Never {
        /// The expression.
        expr: String,
    },
    /// The time zone is unknown or its file is unreadable.
    #[error("time zone {name:?}: {detail}")]
    TimeZone {
        /// The name.
        name: String,
        /// What is wrong.
        detail: String,
    },
}

const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronExpr {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    dom_star: bool,
    dow_star: bool,
}

impl CronExpr {
    /// Parses `minute hour day-of-month month day-of-week`.
    pub fn parse(expr: &str) -> Result<Self, CronError> {
        let parts: Vec<&str> = expr.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(CronError::FieldCount {
                expr: expr.to_owned(),
                found: parts.len(),
            });
        }
        let mut sets = [0u64; 5];
        for (i, part) in parts.iter().enumerate() {
            let (name, lo, hi) = FIELDS[i];
            sets[i] = parse_field(part, lo, hi).map_err(|(token, detail)| CronError::Field {
                expr: expr.to_owned(),
                field: name,
                token,
                detail,
            })?;
        }
        // Sunday is 0 and 7.
        if sets[4] & (1 << 7) != 0 {
            sets[4] |= 1;
        }
        let c = CronExpr {
            text: expr.to_owned(),
            minutes: sets[0],
            hours: sets[1],
            days: sets[2],
            months: sets[3],
            weekdays: sets[4] & 0x7f,
            dom_star: parts[2] == "*",
            dow_star: parts[4] == "*",
        };
        // Some day of some month must exist (Feb 29 counts).
        let max_day = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let possible = (1..=12).any(|m| {
            c.months & (1 << m) != 0 && (1..=max_day[m - 1]).any(|d| c.days & (1 << d) != 0)
        });
        if !possible && !c.dom_star && c.dow_star {
            return Err(CronError::Never {
                expr: expr.to_owned(),
            });
        }
        Ok(c)
    }

    /// The expression's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, y: i64, m: u32, d: u32) -> bool {
        if self.months & (1 << m) == 0 {
            return false;
        }
        let dom = self.days & (1 << d) != 0;
        let dow = self.weekdays & (1 << weekday(y, m, d)) != 0;
        match (self.dom_star, self.dow_star) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first occurrence strictly after `after_ms` (Unix ms) in `tz`, or `None` if there is
    /// none within 8 years.
    pub fn next_after(&self, tz: &TimeZone, after_ms: i64) -> Option<i64> {
        let after_s = after_ms.div_euclid(1000);
        // Start from the local date of `after` minus a day (offsets are under a day).
        let local = after_s + i64::from(tz.offset_at(after_s));
        let start_day = local.div_euclid(86_400) - 1;
        for day in start_day..start_day + 366 * 8 {
            let (y, m, d) = civil_from_days(day);
            if !self.day_matches(y, m, d) {
                continue;
            }
            for h in 0..24 {
                if self.hours & (1 << h) == 0 {
                    continue;
                }
                for min in 0..60 {
                    if self.minutes & (1 << min) == 0 {
                        continue;
                    }
                    let local_s = day * 86_400 + h * 3_600 + min * 60;
                    let t = tz.local_to_utc(local_s);
                    if t > after_s {
                        return Some(t * 1000);
                    }
                }
            }
        }
        None
    }
}

impl std::fmt::Display for CronExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_field(part: &str, lo: u32, hi: u32) -> Result<u64, (String, String)> {
    let mut set = 0u64;
    for item in part.split(',') {
        let err = |d: String| (item.to_owned(), d);
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s
                    .parse()
                    .map_err(|_| err(format!("step {s:?} is not a number")))?;
                if s == 0 {
                    return Err(err("step 0".into()));
                }
                (r, s)
            }
            None => (item, 1),
        };
        let num = |s: &str| -> Result<u32, (String, String)> {
            let v: u32 = s
                .parse()
                .map_err(|_| err(format!("{s:?} is not a number")))?;
            if v < lo || v > hi {
                return Err(err(format!("{v} is outside {lo}-{hi}")));
            }
            Ok(v)
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(err(format!("range {a}-{b} is backwards")));
            }
            (a, b)
        } else {
            let a = num(range)?;
            (a, if step > 1 { hi } else { a })
        };
        let mut v = a;
        while v <= b {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// 0 = Sunday.
fn weekday(y: i64, m: u32, d: u32) -> u32 {
    (days_from_civil(y, m, d) + 4).rem_euclid(7) as u32
}

/// A time zone: its UTC offsets over time, from the system's zone database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeZone {
    name: String,
    /// Transition instants (Unix s), ascending.
    transitions: Vec<i64>,
    /// The offset (s east of UTC) from each transition on.
    offsets: Vec<i32>,
    /// The offset before the first transition.
    initial: i32,
}

impl TimeZone {
    /// UTC.
    pub fn utc() -> Self {
        TimeZone {
            name: "UTC".into(),
            transitions: Vec::new(),
            offsets: Vec::new(),
            initial: 0,
        }
    }

    /// Loads `name` (e.g. `Europe/Paris`) from `$TZDIR` or `/usr/share/zoneinfo`.
    pub fn load(name: &str) -> Result<Self, CronError> {
        if name == "UTC" || name == "Etc/UTC" {
            return Ok(Self::utc());
        }
        let bad = |detail: String| CronError::TimeZone {
            name: name.to_owned(),
            detail,
        };
        if name.is_empty() || name.contains("..") || name.starts_with('/') {
            return Err(bad("not a zone name".into()));
        }
        let dir = std::env::var_os("TZDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/share/zoneinfo"));
        let path = dir.join(name);
        let bytes = std::fs::read(&path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        Self::from_tzif(name, &bytes).map_err(bad)
    }

    /// Parses a TZif file (version 1, 2 or 3).
    pub fn from_tzif(name: &str, b: &[u8]) -> Result<Self, String> {
        fn be32(b: &[u8], at: usize) -> Result<u32, String> {
            b.get(at..at + 4)
                .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
                .ok_or_else(|| "truncated TZif file".to_string())
        }
        if b.get(..4) != Some(b"TZif") {
            return Err("not a TZif file".into());
        }
        let counts = |at: usize| -> Result<[usize; 6], String> {
            let mut c = [0usize; 6];
            for (i, v) in c.iter_mut().enumerate() {
                *v = be32(b, at + 20 + i * 4)? as usize;
            }
            Ok(c)
        };
        let [isut, isstd, leap, timecnt, typecnt, charcnt] = counts(0)?;
        let v1_len = timecnt * 5 + typecnt * 6 + charcnt + leap * 8 + isstd + isut;
        let (at, tsize, timecnt, typecnt) = if b[4] >= b'2' {
            let h2 = 44 + v1_len;
            let [_, _, _, timecnt, typecnt, _] = counts(h2)?;
            (h2 + 44, 8, timecnt, typecnt)
        } else {
            (44, 4, timecnt, typecnt)
        };
        let mut transitions = Vec::with_capacity(timecnt);
        for i in 0..timecnt {
            let p = at + i * tsize;
            let s = b.get(p..p + tsize).ok_or("truncated transitions")?;
            transitions.push(if tsize == 8 {
                i64::from_be_bytes(s.try_into().map_err(|_| "bad time")?)
            } else {
                i64::from(i32::from_be_bytes(s.try_into().map_err(|_| "bad time")?))
            });
        }
        let idx_at = at + timecnt * tsize;
        let idx = b.get(idx_at..idx_at + timecnt).ok_or("truncated indices")?;
        let types_at = idx_at + timecnt;
        let mut type_off = Vec::with_capacity(typecnt);
        for i in 0..typecnt {
            type_off.push(be32(b, types_at + i * 6)? as i32);
        }
        if type_off.is_empty() {
            return Err("no local time types".into());
        }
        let offsets = idx
            .iter()
            .map(|&i| type_off.get(i as usize).copied().ok_or("bad type index"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TimeZone {
            name: name.to_owned(),
            transitions,
            offsets,
            initial: type_off[0],
        })
    }

    /// The zone's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The UTC offset (s) in effect at `t` (Unix s).
    pub fn offset_at(&self, t: i64) -> i32 {
        match self.transitions.partition_point(|&x| x <= t) {
            0 => self.initial,
            i => self.offsets[i - 1],
        }
    }

    /// The instant (Unix s) of local time `local` (s since the local epoch): the earliest one
    /// if it occurs twice; the end of the gap if it does not exist.
    pub fn local_to_utc(&self, local: i64) -> i64 {
        // The offsets in effect within two days of `local` (offsets are within ±26 h).
        let lo = self
            .transitions
            .partition_point(|&x| x <= local - 2 * 86_400);
        let hi = self
            .transitions
            .partition_point(|&x| x <= local + 2 * 86_400);
        let mut offsets = vec![self.offset_at(local - 2 * 86_400)];
        offsets.extend_from_slice(&self.offsets[lo..hi]);
        let valid = offsets
            .iter()
            .map(|&off| local - i64::from(off))
            .filter(|&t| local - i64::from(self.offset_at(t)) == t)
            .min();
        if let Some(t) = valid {
            return t;
        }
        // In a gap: the transition at whose local time (old offset) the gap starts.
        for j in lo..hi {
            let before = if j == 0 {
                self.initial
            } else {
                self.offsets[j - 1]
            };
            let after = self.offsets[j];
            let tr = self.transitions[j];
            if tr + i64::from(before) <= local && local < tr + i64::from(after) {
                return tr;
            }
        }
        local - i64::from(self.offset_at(local))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for z in [-1_000_000i64, -1, 0, 1, 19_000, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(weekday(1970, 1, 1), 4);
        assert_eq!(weekday(2026, 3, 29), 0);
    }

    /// Paris 2026: DST starts Sunday 29 March 01:00 UTC (02:00 -> 03:00 local) and ends Sunday
    /// 25 October 01:00 UTC (03:00 -> 02:00 local).
    fn paris() -> Option<TimeZone> {
        TimeZone::load("Europe/Paris").ok()
    }

    fn utc_ms(y: i64, m: u32, d: u32, h: i64, min: i64) -> i64 {
        (days_from_civil(y, m, d) * 86_400 + h * 3_600 + min * 60) * 1000
    }

    #[test]
    fn daily_at_0230_in_paris_across_both_dst_changes() {
        let Some(tz) = paris() else {
            eprintln!("no zoneinfo for Europe/Paris on this machine; skipped");
            return;
        };
        let c = CronExpr::parse("30 2 * * *").unwrap();
        // Winter: 02:30 CET = 01:30 UTC.
        let t = c.next_after(&tz, utc_ms(2026, 3, 27, 12, 0)).unwrap();
        assert_eq!(t, utc_ms(2026, 3, 28, 1, 30));
        // 29 March: 02:30 does not exist; fires when the gap ends, 03:00 CEST = 01:00 UTC.
        let t = c.next_after(&tz, t).unwrap();
        assert_eq!(t, utc_ms(2026, 3, 29, 1, 0));
        // Summer: 02:30 CEST = 00:30 UTC.
        let t = c.next_after(&tz, t).unwrap();
        assert_eq!(t, utc_ms(2026, 3, 30, 0, 30));
        // 25 October: 02:30 happens twice (CEST then CET); fires once, at the first.
        let t = c.next_after(&tz, utc_ms(2026, 10, 24, 12, 0)).unwrap();
        assert_eq!(t, utc_ms(2026, 10, 25, 0, 30));
        let t = c.next_after(&tz, t).unwrap();
        assert_eq!(
            t,
            utc_ms(2026, 10, 26, 1, 30),
            "not again at 01:30 UTC on the 25th"
        );
    }

    #[test]
    fn hourly_in_paris_skips_and_repeats_nothing_at_the_changes() {
        let Some(tz) = paris() else {
            return;
        };
        let c = CronExpr::parse("0 * * * *").unwrap();
        // Around the spring change: 00:00, 01:00 UTC are 01:00 CET, 03:00 CEST (02:00 skipped).
        let mut t = utc_ms(2026, 3, 28, 23, 30);
        let mut got = Vec::new();
        for _ in 0..3 {
            t = c.next_after(&tz, t).unwrap();
            got.push(t);
        }
        assert_eq!(
            got,
            vec![
                utc_ms(2026, 3, 29, 0, 0),
                utc_ms(2026, 3, 29, 1, 0),
                utc_ms(2026, 3, 29, 2, 0)
            ]
        );
        // Autumn: local 02:00 twice: fires at its first occurrence only (00:00 UTC), then 03:00
        // local = 02:00 UTC; 01:00 UTC (the repeated 02:00) is skipped.
        let mut t = utc_ms(2026, 10, 24, 23, 30);
        let mut got = Vec::new();
        for _ in 0..2 {
            t = c.next_after(&tz, t).unwrap();
            got.push(t);
        }
        assert_eq!(
            got,
            vec![utc_ms(2026, 10, 25, 0, 0), utc_ms(2026, 10, 25, 2, 0)]
        );
    }

    #[test]
    fn weekdays_and_utc() {
        let c = CronExpr::parse("0 9 * * 1-5").unwrap();
        // Friday 2026-03-27 10:00 UTC -> Monday 09:00 UTC.
        let t = c
            .next_after(&TimeZone::utc(), utc_ms(2026, 3, 27, 10, 0))
            .unwrap();
        assert_eq!(t, utc_ms(2026, 3, 30, 9, 0));
        assert!(TimeZone::load("Mars/Olympus").is_err());
        assert!(TimeZone::load("../etc/passwd").is_err());
    }

    #[test]
    fn fields_parse_and_refuse() {
        let c = CronExpr::parse("*/15 9-17 * * 1-5").unwrap();
        assert_eq!(c.minutes, (1 << 0) | (1 << 15) | (1 << 30) | (1 << 45));
        assert!(CronExpr::parse("61 * * * *").is_err());
        assert!(CronExpr::parse("* * * *").is_err());
        assert!(CronExpr::parse("*/0 * * * *").is_err());
        assert!(CronExpr::parse("5-1 * * * *").is_err());
        assert!(matches!(
            CronExpr::parse("0 0 31 2 *"),
            Err(CronError::Never { .. })
        ));
    }
}
