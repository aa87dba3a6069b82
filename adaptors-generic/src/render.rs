//! Human output: ages, short values, UTC times.

/// A short, human age: `0.4s`, `12s`, `3m05s`, `2h03m`, `4d02h`. A timestamp in the future
/// (a clock ahead of ours) reads `in 1.2s`.
pub fn age(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    if secs < 0.0 {
        return format!("in {}", age(-secs));
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    // Whole seconds from here on; the float is finite, non-negative and below 2^64 in practice.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The value as compact JSON, cut to at most `max` characters (ending in `…` when cut).
pub fn short_value(data: &str, max: usize) -> String {
    let compact = match serde_json::from_str::<serde_json::Value>(data) {
        Ok(v) => v.to_string(),
        Err(_) => data.to_owned(),
    };
    cut(&compact, max)
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `2026-11-29 09:12:03.123Z` for a timestamp in seconds since 1970.
pub fn utc(ts: f64) -> String {
    if !ts.is_finite() || ts < 0.0 {
        return format!("{ts}");
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let millis = (ts * 1000.0).round() as u64;
    let (secs, ms) = (millis / 1000, millis % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `09:12:03.123` (UTC), the time of day of `ts`.
pub fn utc_time_of_day(ts: f64) -> String {
    let full = utc(ts);
    full.get(11..23).map_or(full.clone(), str::to_owned)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(0.42), "0.4s");
        assert_eq!(age(12.7), "12s");
        assert_eq!(age(185.0), "3m05s");
        assert_eq!(age(7380.0), "2h03m");
        assert_eq!(age(352_800.0), "4d02h");
        assert_eq!(age(-1.25), "in 1.2s");
        assert_eq!(age(f64::NAN), "?");
    }

    #[test]
    fn values_are_compacted_and_cut() {
        assert_eq!(short_value(r#"{ "a" : [1, 2] }"#, 40), r#"{"a":[1,2]}"#);
        assert_eq!(short_value(r#""abcdefgh""#, 5), "\"abc…");
        assert_eq!(cut("héllo", 5), "héllo");
        assert_eq!(cut("héllo!", 5), "héll…");
    }

    #[test]
    fn utc_dates_are_right_across_leap_years() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00.000Z");
        assert_eq!(utc(1_423_351_104.945), "2015-02-07 23:18:24.945Z");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00.000Z");
        assert_eq!(utc_time_of_day(1_423_351_104.945), "23:18:24.945");
    }
}
