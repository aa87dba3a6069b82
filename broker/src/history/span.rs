//! What a history query asks for, as pure functions of its text and `now`: times (`since`,
//! `until`), steps, which tier answers, and the points per step.

use std::fmt;

/// One second, in the store's unit (milliseconds).
const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Most points one query may return: a smaller step over a longer span is refused.
pub const MAX_POINTS: i64 = 20_000;

/// Steps a query without `step` rounds up to, so that charts line up on whole minutes and hours.
const NICE_STEPS: [i64; 17] = [
    SECOND,
    2 * SECOND,
    5 * SECOND,
    10 * SECOND,
    30 * SECOND,
    MINUTE,
    2 * MINUTE,
    5 * MINUTE,
    10 * MINUTE,
    15 * MINUTE,
    30 * MINUTE,
    HOUR,
    3 * HOUR,
    6 * HOUR,
    12 * HOUR,
    DAY,
    7 * DAY,
];
/// Points a query without `step` aims for (at most).
const DEFAULT_POINTS: i64 = 300;

/// One retention tier of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    /// Its name in answers (`raw`, `minute`, `hour`) and its table.
    pub name: &'static str,
    /// Time one point of it covers, in milliseconds (`raw`: the recording resolution).
    pub resolution_ms: i64,
    /// How long its points are kept, in milliseconds.
    pub keep_ms: i64,
}

/// The tiers, finest first: raw points for 2 days, 1-minute min/avg/max for 90 days, 1-hour
/// min/avg/max for 5 years.
#[must_use]
pub fn tiers(resolution_ms: i64) -> [Tier; 3] {
    [
        Tier {
            name: "raw",
            resolution_ms: resolution_ms.max(1),
            keep_ms: 2 * DAY,
        },
        Tier {
            name: "minute",
            resolution_ms: MINUTE,
            keep_ms: 90 * DAY,
        },
        Tier {
            name: "hour",
            resolution_ms: HOUR,
            keep_ms: 5 * 365 * DAY,
        },
    ]
}

/// Why a query's parameters cannot be used; the text names the parameter and what it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadQuery(pub String);

impl fmt::Display for BadQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadQuery {}

/// A duration such as `90s`, `5m`, `2h`, `7d`, `1w` or a plain number of seconds, in
/// milliseconds.
///
/// # Errors
/// When the text is none of those, or not above zero.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "ms" => 1,
        "s" => SECOND,
        "m" | "min" => MINUTE,
        "h" => HOUR,
        "d" => DAY,
        "w" => 7 * DAY,
        "y" => 365 * DAY,
        _ => return Err(format!("{text:?}: the unit is one of ms, s, m, h, d, w, y")),
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * (scale as f64) < 1e15 => {
            Ok(((n * scale as f64).round() as i64).max(1))
        }
        _ => Err(format!(
            "{text:?} is not a duration (a positive number and a unit, e.g. 30s, 5m, 2h, 7d)"
        )),
    }
}

/// A point in time as a query gives it, in milliseconds since 1970: `now`, epoch seconds
/// (`1733450000`, `1733450000.5`), RFC 3339 (`2026-12-05T10:00:00Z`, `...+01:00`) or a span
/// back from `now` (`2h`, `7d`, also written `-2h`).
///
/// # Errors
/// When the text is none of those.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if t == "now" {
        return Ok(now_ms);
    }
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && (0.0..1e11).contains(&secs) {
            return Ok((secs * 1e3).round() as i64);
        }
        return Err(format!("{text:?}: epoch seconds are between 0 and 1e11"));
    }
    if t.len() >= 19 && t.as_bytes().get(4) == Some(&b'-') {
        return parse_rfc3339(t).ok_or_else(|| {
            format!("{text:?} is not an RFC 3339 time (e.g. 2026-12-05T10:00:00Z)")
        });
    }
    let back = parse_duration(t.strip_prefix('-').unwrap_or(t)).map_err(|_| {
        format!(
            "{text:?} is not a time: give epoch seconds, RFC 3339 (2026-12-05T10:00:00Z) or a \
             span back from now (2h, 7d)"
        )
    })?;
    Ok(now_ms - back)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` in milliseconds since 1970.
fn parse_rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let f: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        ms = f.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh = num_of(&rest[1..3])?;
            let om = num_of(&rest[4..6])?;
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some((((days * 24 + h) * 60 + mi - offset_min) * 60 + s) * SECOND + ms)
}

fn num_of(s: &str) -> Option<i64> {
    s.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| s.parse().ok())?
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `ms` since 1970 as RFC 3339 in UTC, to the second (`2026-12-05T10:00:00Z`).
#[must_use]
pub fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(SECOND);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// A query made definite: its span, its step and the tier that answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Start, inclusive, in milliseconds since 1970 (a multiple of `step_ms`).
    pub since_ms: i64,
    /// End, exclusive.
    pub until_ms: i64,
    /// Time each returned point covers.
    pub step_ms: i64,
    /// Index into [`tiers`] of the tier read.
    pub tier: usize,
}

/// Makes a plan of the query's `since`, `until` and `step` (each optional): without `since`
/// the last 24 hours, without `until` now, without `step` about 300 points rounded up to a
/// whole step (1 s, 5 s, 1 m, 5 m, 1 h...). The tier read is the coarsest whose resolution is at
/// most the step among those that still keep `since`; the step is never finer than the tier.
///
/// # Errors
/// A parameter that does not parse, `since` not before `until`, or more than [`MAX_POINTS`].
pub fn plan(
    since: Option<&str>,
    until: Option<&str>,
    step: Option<&str>,
    now_ms: i64,
    resolution_ms: i64,
) -> Result<Plan, BadQuery> {
    let since_ms = match since {
        Some(s) => parse_time(s, now_ms).map_err(|e| BadQuery(format!("since: {e}")))?,
        None => now_ms - DAY,
    };
    let until_ms = match until {
        Some(s) => parse_time(s, now_ms).map_err(|e| BadQuery(format!("until: {e}")))?,
        None => now_ms,
    };
    if since_ms >= until_ms {
        return Err(BadQuery(format!(
            "since ({}) must be before until ({})",
            format_rfc3339(since_ms),
            format_rfc3339(until_ms)
        )));
    }
    let span = until_ms - since_ms;
    let asked = match step {
        Some(s) => Some(parse_duration(s).map_err(|e| BadQuery(format!("step: {e}")))?),
        None => None,
    };
    let wanted = asked.unwrap_or_else(|| nice_step((span + DEFAULT_POINTS - 1) / DEFAULT_POINTS));
    let all = tiers(resolution_ms);
    let tier = choose_tier(&all, now_ms, since_ms, wanted);
    let step_ms = wanted.max(all[tier].resolution_ms);
    if span / step_ms > MAX_POINTS {
        return Err(BadQuery(format!(
            "step: {} points of {step_ms} ms over this span is more than {MAX_POINTS}; give a \
             larger step or a shorter span",
            span / step_ms
        )));
    }
    Ok(Plan {
        since_ms: since_ms.div_euclid(step_ms) * step_ms,
        until_ms,
        step_ms,
        tier,
    })
}

/// The smallest of [`NICE_STEPS`] at least `ms` (the largest one beyond them all).
fn nice_step(ms: i64) -> i64 {
    NICE_STEPS
        .iter()
        .copied()
        .find(|&s| s >= ms)
        .unwrap_or(NICE_STEPS[NICE_STEPS.len() - 1])
}

/// Among the tiers that keep `since` (the coarsest when none does), the coarsest whose
/// resolution is at most `step`, or else the finest of them.
#[must_use]
pub fn choose_tier(tiers: &[Tier], now_ms: i64, since_ms: i64, step_ms: i64) -> usize {
    let first = tiers
        .iter()
        .position(|t| since_ms >= now_ms - t.keep_ms)
        .unwrap_or(tiers.len() - 1);
    (first..tiers.len())
        .rev()
        .find(|&i| tiers[i].resolution_ms <= step_ms)
        .unwrap_or(first)
}

/// What the store holds for one time: a raw point is `min == avg == max`, `n == 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Start of its time, milliseconds since 1970.
    pub t_ms: i64,
    /// Smallest value.
    pub min: f64,
    /// Mean of the values.
    pub avg: f64,
    /// Largest value.
    pub max: f64,
    /// Raw points behind it.
    pub n: u64,
}

/// Rows (sorted by time) folded into one [`Row`] per step of `plan` that has any: min of mins,
/// max of maxes, mean weighted by the points behind each row.
#[must_use]
pub fn per_step(rows: &[Row], plan: &Plan) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    let mut sum = 0.0;
    for r in rows {
        if r.t_ms < plan.since_ms || r.t_ms >= plan.until_ms {
            continue;
        }
        let t = plan.since_ms + (r.t_ms - plan.since_ms) / plan.step_ms * plan.step_ms;
        match out.last_mut() {
            Some(last) if last.t_ms == t => {
                last.min = last.min.min(r.min);
                last.max = last.max.max(r.max);
                last.n += r.n;
                sum += r.avg * r.n as f64;
                last.avg = sum / last.n as f64;
            }
            _ => {
                sum = r.avg * r.n as f64;
                out.push(Row { t_ms: t, ..*r });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05T12:00:00Z.
    const NOW: i64 = 1_796_472_000_000;

    #[test]
    fn durations_take_units_and_plain_seconds() {
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert_eq!(parse_duration("7d"), Ok(7 * DAY));
        assert_eq!(parse_duration("1.5h"), Ok(5_400_000));
        assert_eq!(parse_duration("30"), Ok(30_000));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unit"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn times_are_epoch_seconds_rfc3339_or_spans_back_from_now() {
        assert_eq!(parse_time("1796472000", NOW), Ok(NOW));
        assert_eq!(parse_time("1796472000.25", NOW), Ok(NOW + 250));
        assert_eq!(parse_time("2026-12-05T12:00:00Z", NOW), Ok(NOW));
        assert_eq!(parse_time("2026-12-05T13:00:00+01:00", NOW), Ok(NOW));
        assert_eq!(
            parse_time("2026-12-05T11:30:00.5-00:30", NOW),
            Ok(NOW + 500)
        );
        assert_eq!(parse_time("2h", NOW), Ok(NOW - 2 * HOUR));
        assert_eq!(parse_time("-7d", NOW), Ok(NOW - 7 * DAY));
        assert_eq!(parse_time("now", NOW), Ok(NOW));
        assert!(parse_time("2026-13-05T12:00:00Z", NOW).is_err());
        assert!(parse_time("2026-12-05T12:00:00", NOW).is_err());
        assert!(parse_time("yesterday", NOW).is_err());
        assert!(parse_time("1e30", NOW).is_err());
    }

    #[test]
    fn rfc3339_formats_back_what_it_parses() {
        for t in [
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59Z",
            "2026-12-05T12:00:00Z",
        ] {
            let ms = parse_time(t, NOW).expect("parses");
            assert_eq!(format_rfc3339(ms), t);
        }
    }

    #[test]
    fn a_plan_without_parameters_is_the_last_day_in_about_300_points() {
        let p = plan(None, None, None, NOW, SECOND).expect("a plan");
        assert_eq!(p.until_ms, NOW);
        assert_eq!(p.since_ms, NOW - DAY);
        assert_eq!(p.step_ms, 5 * MINUTE);
        assert_eq!(tiers(SECOND)[p.tier].name, "minute");
    }

    #[test]
    fn the_tier_is_the_coarsest_that_fits_the_step_and_still_keeps_since() {
        let t = tiers(SECOND);
        // An hour at 10 s: raw.
        assert_eq!(choose_tier(&t, NOW, NOW - HOUR, 10 * SECOND), 0);
        // A day at 5 minutes: minutes.
        assert_eq!(choose_tier(&t, NOW, NOW - DAY, 5 * MINUTE), 1);
        // 90 days at 6 hours: hours.
        assert_eq!(choose_tier(&t, NOW, NOW - 90 * DAY, 6 * HOUR), 2);
        // 10 seconds asked 5 days back: raw is gone, minutes are the finest left.
        assert_eq!(choose_tier(&t, NOW, NOW - 5 * DAY, 10 * SECOND), 1);
        // Beyond every tier's keep: hours.
        assert_eq!(choose_tier(&t, NOW, NOW - 10 * 365 * DAY, MINUTE), 2);
        let p = plan(Some("5d"), None, Some("10s"), NOW, SECOND).expect("a plan");
        assert_eq!(
            (p.tier, p.step_ms),
            (1, MINUTE),
            "the step is never finer than the tier"
        );
    }

    #[test]
    fn bad_parameters_say_which_and_why() {
        let e = plan(Some("soon"), None, None, NOW, SECOND).unwrap_err();
        assert!(e.0.starts_with("since:"), "{e}");
        let e = plan(None, Some("2026-99-01T00:00:00Z"), None, NOW, SECOND).unwrap_err();
        assert!(e.0.starts_with("until:"), "{e}");
        let e = plan(None, None, Some("fast"), NOW, SECOND).unwrap_err();
        assert!(e.0.starts_with("step:"), "{e}");
        let e = plan(Some("1h"), Some("2h"), None, NOW, SECOND).unwrap_err();
        assert!(e.0.contains("must be before"), "{e}");
        let e = plan(Some("1d"), None, Some("1s"), NOW, SECOND).unwrap_err();
        assert!(e.0.contains("more than"), "{e}");
    }

    #[test]
    fn rows_fold_into_steps_with_min_max_and_a_weighted_mean() {
        let p = Plan {
            since_ms: 0,
            until_ms: 120_000,
            step_ms: MINUTE,
            tier: 0,
        };
        let raw = |t_ms, v| Row {
            t_ms,
            min: v,
            avg: v,
            max: v,
            n: 1,
        };
        let rows = [
            raw(0, 1.0),
            raw(10_000, 5.0),
            Row {
                t_ms: 30_000,
                min: 0.5,
                avg: 3.0,
                max: 4.0,
                n: 2,
            },
            raw(60_000, 7.0),
            raw(130_000, 9.0),
        ];
        let out = per_step(&rows, &p);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].t_ms, out[0].min, out[0].max, out[0].n),
            (0, 0.5, 5.0, 4)
        );
        assert!((out[0].avg - 3.0).abs() < 1e-9, "(1 + 5 + 3*2) / 4");
        assert_eq!(out[1], raw(60_000, 7.0));
    }
}
