//! Time on the command line and in the output: milliseconds since the Unix epoch <-> RFC 3339
//! (UTC), without a date library.

pub(super) fn parse_time(s: &str) -> Result<u64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| format!("{s} is too large for milliseconds"));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!(
            "{s:?} is neither milliseconds since the Unix epoch nor an RFC 3339 time \
             (2026-11-26T12:00:00Z, 2026-11-26T13:00:00.5+01:00, or a date 2026-11-26)"
        )
    })
}

const DAY_MS: i64 = 86_400_000;

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn month_days(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to `y-m-d` (y ≥ 1970, a valid date).
fn days_since_epoch(y: i64, m: u32, d: u32) -> i64 {
    let years: i64 = (1970..y).map(|y| if is_leap(y) { 366 } else { 365 }).sum();
    let months: i64 = (1..m).map(|m| month_days(y, m) as i64).sum();
    years + months + d as i64 - 1
}

/// `YYYY-MM-DD`, optionally followed by `THH:MM:SS[.fraction](Z|±HH:MM)` (`t`, `z` and a
/// space separator are accepted); a date alone means midnight UTC.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |at: usize, n: usize| -> Option<u32> {
        let d = b.get(at..at + n)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0u32, |acc, c| acc * 10 + (c - b'0') as u32))
    };
    let (y, m, d) = (num(0, 4)? as i64, num(5, 2)?, num(8, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if y < 1970 || !(1..=12).contains(&m) || d == 0 || d > month_days(y, m) {
        return None;
    }
    let date_ms = days_since_epoch(y, m, d) * DAY_MS;
    if b.len() == 10 {
        return u64::try_from(date_ms).ok();
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let (hh, mm, ss) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut at = 19;
    let mut frac_ms = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                frac_ms = frac_ms * 10 + (b[at] - b'0') as i64;
            }
            at += 1;
        }
        if at == start {
            return None;
        }
        for _ in (at - start)..3 {
            frac_ms *= 10;
        }
    }
    let offset_ms = match b.get(at) {
        Some(b'Z' | b'z') if b.len() == at + 1 => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == at + 6 && b[at + 3] == b':' => {
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = (oh as i64 * 60 + om as i64) * 60_000;
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let ms = date_ms + ((hh as i64 * 60 + mm as i64) * 60 + ss as i64) * 1000 + frac_ms;
    u64::try_from(ms - offset_ms).ok()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(super) fn format_time(ms: u64) -> String {
    let mut days = (ms / DAY_MS as u64) as i64;
    let rest = ms % DAY_MS as u64;
    let mut y = 1970;
    loop {
        let n = if is_leap(y) { 366 } else { 365 };
        if days < n {
            break;
        }
        days -= n;
        y += 1;
    }
    let mut m = 1;
    while days >= month_days(y, m) as i64 {
        days -= month_days(y, m) as i64;
        m += 1;
    }
    let (h, rest) = (rest / 3_600_000, rest % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    format!(
        "{y:04}-{m:02}-{:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z",
        days + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(parse_time("1700000000123"), Ok(1_700_000_000_123));
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.1234+01:00"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_time("2024-02-29"), Ok(1_709_164_800_000));
        for ms in [0, 951_782_400_000, 1_709_164_800_000, 4_102_444_799_999] {
            assert_eq!(parse_time(&format_time(ms)), Ok(ms), "{ms}");
        }
        for bad in [
            "2023-02-29",
            "2023-11-14T25:00:00Z",
            "2023-11-14T22:13:20",
            "yesterday",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
