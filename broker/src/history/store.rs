//! The SQLite file behind `--history`: a table of series (thing and field), raw points, and
//! the 1-minute and 1-hour tiers of min/avg/max, each keyed by (series, time) in a `WITHOUT
//! ROWID` table so that a point costs about 20 bytes and a chart reads one range of one index.
//!
//! Maintenance ([`Store::maintain`]) is a function of `now`: it folds finished minutes of raw
//! points into the minute tier and finished hours into the hour tier, deletes what is past each
//! tier's keep (never what is not folded yet), and, while the file holds more than its bound,
//! drops the oldest points of every tier first.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::span::{self, Plan, Row, Tier};

/// Series the store keeps at most; values of more are not recorded (and counted).
pub const MAX_SERIES: usize = 250_000;
/// A minute (or hour) is folded this long after it ends, so that its last points are in.
const SETTLE_MS: i64 = 5_000;
/// Rounds of dropping the oldest points while the file is over its bound.
const BOUND_ROUNDS: usize = 64;

/// One value to record: a thing's field at the start of its resolution window.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The thing.
    pub ns: String,
    /// The field's dotted path; empty for a number thing.
    pub field: String,
    /// Start of the resolution window, milliseconds since 1970.
    pub t_ms: i64,
    /// The value (booleans as 0 and 1).
    pub v: f64,
}

/// What one [`Store::maintain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Minute rows made from raw points.
    pub minutes: usize,
    /// Hour rows made from minute rows.
    pub hours: usize,
    /// Rows deleted because they were past their tier's keep.
    pub expired: usize,
    /// Rows deleted because the file was over `--history-max-bytes`.
    pub dropped_for_bytes: usize,
    /// Bytes the file's data takes after it (pages in use).
    pub used_bytes: u64,
}

/// The history file, open for writing (one writer: the recorder's thread).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    tiers: [Tier; 3],
    max_bytes: u64,
    ids: HashMap<(String, String), i64>,
    /// Up to when the minute and hour tiers are folded (as in the file's `meta`).
    folded: Folded,
    /// Series given points in time already folded (values that came late: a device's clock,
    /// the mirror's first fill), with the earliest such time: their minutes and hours are
    /// folded again after the write.
    late: HashMap<i64, i64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Folded {
    minute: i64,
    hour: i64,
}

/// Raw points of one series (?1) from ?2 to ?3 into minute rows.
const FOLD_MINUTES: &str = "INSERT OR REPLACE INTO minute (series, t, min, avg, max, n)
     SELECT series, t - t % 60000, min(v), avg(v), max(v), count(*) FROM raw
     WHERE series = ?1 AND t >= ?2 AND t < ?3 GROUP BY t / 60000";
/// Minute rows of one series (?1) from ?2 to ?3 into hour rows, the mean weighted by points.
const FOLD_HOURS: &str = "INSERT OR REPLACE INTO hour (series, t, min, avg, max, n)
     SELECT series, t - t % 3600000, min(min), sum(avg * n) / sum(n), max(max), sum(n)
     FROM minute WHERE series = ?1 AND t >= ?2 AND t < ?3 GROUP BY t / 3600000";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    ns TEXT NOT NULL,
    field TEXT NOT NULL,
    UNIQUE (ns, field)
);
CREATE TABLE IF NOT EXISTS raw (
    series INTEGER NOT NULL, t INTEGER NOT NULL, v REAL NOT NULL,
    PRIMARY KEY (series, t)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS minute (
    series INTEGER NOT NULL, t INTEGER NOT NULL,
    min REAL NOT NULL, avg REAL NOT NULL, max REAL NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (series, t)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hour (
    series INTEGER NOT NULL, t INTEGER NOT NULL,
    min REAL NOT NULL, avg REAL NOT NULL, max REAL NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (series, t)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

impl Store {
    /// Opens (or makes) the file at `path`, recording at `resolution_ms`, bounded to
    /// `max_bytes`.
    ///
    /// # Errors
    /// When the file cannot be opened or made, or is not a history file.
    pub fn open(path: &Path, resolution_ms: i64, max_bytes: u64) -> rusqlite::Result<Store> {
        let conn = Connection::open(path)?;
        // Must come before the first table: lets the file shrink after deletions.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A crash loses at most the last transactions, never the file's consistency.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        let ids = series_ids(&conn)?;
        let folded = Folded {
            minute: watermark(&conn, "minute")?,
            hour: watermark(&conn, "hour")?,
        };
        Ok(Store {
            conn,
            tiers: span::tiers(resolution_ms),
            max_bytes,
            ids,
            folded,
            late: HashMap::new(),
        })
    }

    /// The tiers of this store, finest first.
    #[must_use]
    pub fn tiers(&self) -> &[Tier; 3] {
        &self.tiers
    }

    /// Series known.
    #[must_use]
    pub fn series(&self) -> usize {
        self.ids.len()
    }

    /// Writes `points` in one transaction; a point in a window that has one already replaces
    /// it. Returns the points written (those of new series beyond [`MAX_SERIES`] are not).
    ///
    /// # Errors
    /// What SQLite says (disk full, I/O error).
    pub fn write(&mut self, points: &[Point]) -> rusqlite::Result<usize> {
        let tx = self.conn.transaction()?;
        let mut written = 0;
        {
            let mut new_series =
                tx.prepare_cached("INSERT INTO series (ns, field) VALUES (?1, ?2)")?;
            let mut insert =
                tx.prepare_cached("INSERT OR REPLACE INTO raw (series, t, v) VALUES (?1, ?2, ?3)")?;
            for p in points {
                let id = match self.ids.get(&(p.ns.clone(), p.field.clone())) {
                    Some(&id) => id,
                    None if self.ids.len() >= MAX_SERIES => continue,
                    None => {
                        new_series.execute(params![p.ns, p.field])?;
                        let id = tx.last_insert_rowid();
                        self.ids.insert((p.ns.clone(), p.field.clone()), id);
                        id
                    }
                };
                insert.execute(params![id, p.t_ms, p.v])?;
                written += 1;
                if p.t_ms < self.folded.minute {
                    let earliest = self.late.entry(id).or_insert(p.t_ms);
                    *earliest = (*earliest).min(p.t_ms);
                }
            }
        }
        match tx.commit() {
            Ok(()) => {
                self.refold_late()?;
                Ok(written)
            }
            Err(e) => {
                // Series made in the failed transaction are not in the file.
                self.reload_ids()?;
                Err(e)
            }
        }
    }

    /// Folds again the minutes and hours that points came late into.
    fn refold_late(&mut self) -> rusqlite::Result<()> {
        if self.late.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut minutes = tx.prepare_cached(FOLD_MINUTES)?;
            let mut hours = tx.prepare_cached(FOLD_HOURS)?;
            for (&id, &t) in &self.late {
                minutes.execute(params![id, t - t.rem_euclid(60_000), self.folded.minute])?;
                hours.execute(params![id, t - t.rem_euclid(3_600_000), self.folded.hour])?;
            }
        }
        tx.commit()?;
        self.late.clear();
        Ok(())
    }

    fn reload_ids(&mut self) -> rusqlite::Result<()> {
        self.ids = series_ids(&self.conn)?;
        Ok(())
    }

    /// Bytes of the file in use (pages holding data; freed pages not counted).
    ///
    /// # Errors
    /// What SQLite says.
    pub fn used_bytes(&self) -> rusqlite::Result<u64> {
        used_bytes(&self.conn)
    }

    /// Folds, expires and bounds as of `now_ms` (see the module's doc). The recorder calls it
    /// every minute; tests call it with a `now` of their choosing.
    ///
    /// # Errors
    /// What SQLite says.
    pub fn maintain(&mut self, now_ms: i64) -> rusqlite::Result<Maintenance> {
        self.refold_late()?;
        let mut done = Maintenance::default();
        let ids: Vec<i64> = self.ids.values().copied().collect();
        let tx = self.conn.transaction()?;
        // Raw points into minutes.
        let from = watermark(&tx, "minute")?;
        let cut = (now_ms - SETTLE_MS).div_euclid(60_000) * 60_000;
        if cut > from {
            let mut fold = tx.prepare_cached(FOLD_MINUTES)?;
            for &id in &ids {
                done.minutes += fold.execute(params![id, from, cut])?;
            }
            set_watermark(&tx, "minute", cut)?;
        }
        // Minutes into hours: only hours whose minutes are all folded.
        let minutes_done = watermark(&tx, "minute")?;
        let from = watermark(&tx, "hour")?;
        let cut = ((now_ms - SETTLE_MS).min(minutes_done)).div_euclid(3_600_000) * 3_600_000;
        if cut > from {
            let mut fold = tx.prepare_cached(FOLD_HOURS)?;
            for &id in &ids {
                done.hours += fold.execute(params![id, from, cut])?;
            }
            set_watermark(&tx, "hour", cut)?;
        }
        // Past each tier's keep, but never what the next tier has not folded yet.
        let hours_done = watermark(&tx, "hour")?;
        let [raw, minute, hour] = self.tiers;
        let cuts = [
            ("raw", (now_ms - raw.keep_ms).min(minutes_done)),
            ("minute", (now_ms - minute.keep_ms).min(hours_done)),
            ("hour", now_ms - hour.keep_ms),
        ];
        done.expired = delete_before(&tx, &ids, &cuts)?;
        tx.commit()?;
        self.folded = Folded {
            minute: minutes_done,
            hour: hours_done,
        };

        let mut used = used_bytes(&self.conn)?;
        let mut rounds = 0;
        while used > self.max_bytes && rounds < BOUND_ROUNDS {
            rounds += 1;
            let Some(oldest) = self.oldest(&ids)? else {
                break;
            };
            // About the share of the span that the excess is of the file (the loop corrects
            // for tiers being denser at the recent end).
            let excess = (used - self.max_bytes) as f64 / used as f64;
            let share = excess.clamp(1.0 / 64.0, 0.5);
            let cut = oldest + (((now_ms - oldest) as f64 * share) as i64).max(60_000);
            let tx = self.conn.transaction()?;
            let dropped =
                delete_before(&tx, &ids, &[("raw", cut), ("minute", cut), ("hour", cut)])?;
            tx.commit()?;
            done.dropped_for_bytes += dropped;
            used = used_bytes(&self.conn)?;
        }
        if done.expired + done.dropped_for_bytes > 0 {
            // Gives the freed pages back to the file system.
            // (It frees a page per step: stepped to the end.)
            let mut vacuum = self.conn.prepare("PRAGMA incremental_vacuum")?;
            let mut steps = vacuum.query([])?;
            while steps.next()?.is_some() {}
        }
        // Keeps the write-ahead log from growing between SQLite's own checkpoints.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        done.used_bytes = used;
        Ok(done)
    }

    /// The time of the oldest row of any tier.
    fn oldest(&self, ids: &[i64]) -> rusqlite::Result<Option<i64>> {
        let mut oldest: Option<i64> = None;
        for table in ["raw", "minute", "hour"] {
            let mut q = self.conn.prepare_cached(&format!(
                "SELECT t FROM {table} WHERE series = ?1 ORDER BY t LIMIT 1"
            ))?;
            for &id in ids {
                if let Some(t) = q.query_row([id], |r| r.get::<_, i64>(0)).optional()? {
                    oldest = Some(oldest.map_or(t, |o| o.min(t)));
                }
            }
        }
        Ok(oldest)
    }

    /// The points of `ns`'s `field` as `plan` asks (see [`query`]).
    ///
    /// # Errors
    /// What SQLite says.
    pub fn query(&self, ns: &str, field: &str, plan: &Plan) -> rusqlite::Result<Vec<Row>> {
        query(&self.conn, ns, field, plan)
    }
}

/// A connection for reading while the recorder writes (SQLite's write-ahead log lets both run).
///
/// # Errors
/// When the file cannot be opened.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(u64::try_from((pages - free).max(0) * size).unwrap_or(0))
}

/// Up to when `tier` (`minute` or `hour`) is folded; 0 before the first time.
fn watermark(conn: &Connection, tier: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [tier], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}

fn set_watermark(conn: &Connection, tier: &str, t: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![tier, t],
    )?;
    Ok(())
}

/// Deletes, series by series (each one range of its index), the rows of each table before its
/// time.
fn delete_before(conn: &Connection, ids: &[i64], cuts: &[(&str, i64)]) -> rusqlite::Result<usize> {
    let mut n = 0;
    for (table, cut) in cuts {
        let mut q =
            conn.prepare_cached(&format!("DELETE FROM {table} WHERE series = ?1 AND t < ?2"))?;
        for &id in ids {
            n += q.execute(params![id, cut])?;
        }
    }
    Ok(n)
}

/// Every series in the file: `(ns, field)` → its id.
fn series_ids(conn: &Connection) -> rusqlite::Result<HashMap<(String, String), i64>> {
    let mut q = conn.prepare("SELECT id, ns, field FROM series")?;
    let rows = q.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    rows.map(|row| row.map(|(id, ns, field)| ((ns, field), id)))
        .collect()
}

/// The fields recorded for `ns`, sorted (`""` for the thing's own number).
///
/// # Errors
/// What SQLite says.
pub fn fields(conn: &Connection, ns: &str) -> rusqlite::Result<Vec<String>> {
    let mut q = conn.prepare_cached("SELECT field FROM series WHERE ns = ?1 ORDER BY field")?;
    let rows = q.query_map([ns], |r| r.get(0))?;
    rows.collect()
}

/// The points of `ns`'s `field` over `plan`'s span, one per step that has any, read from
/// `plan`'s tier — and, for the time that tier has not folded yet, from the finer ones.
/// Empty for a series never recorded.
///
/// # Errors
/// What SQLite says.
pub fn query(conn: &Connection, ns: &str, field: &str, plan: &Plan) -> rusqlite::Result<Vec<Row>> {
    let id: Option<i64> = conn
        .prepare_cached("SELECT id FROM series WHERE ns = ?1 AND field = ?2")?
        .query_row(params![ns, field], |r| r.get(0))
        .optional()?;
    let Some(id) = id else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    read_tier(conn, plan.tier, id, plan.since_ms, plan.until_ms, &mut rows)?;
    Ok(span::per_step(&rows, plan))
}

fn read_tier(
    conn: &Connection,
    tier: usize,
    id: i64,
    from: i64,
    to: i64,
    out: &mut Vec<Row>,
) -> rusqlite::Result<()> {
    if from >= to {
        return Ok(());
    }
    if tier == 0 {
        let mut q = conn.prepare_cached(
            "SELECT t, v FROM raw WHERE series = ?1 AND t >= ?2 AND t < ?3 ORDER BY t",
        )?;
        let rows = q.query_map(params![id, from, to], |r| {
            let v: f64 = r.get(1)?;
            Ok(Row {
                t_ms: r.get(0)?,
                min: v,
                avg: v,
                max: v,
                n: 1,
            })
        })?;
        for row in rows {
            out.push(row?);
        }
        return Ok(());
    }
    let table = if tier == 1 { "minute" } else { "hour" };
    let folded = watermark(conn, table)?;
    let mut q = conn.prepare_cached(&format!(
        "SELECT t, min, avg, max, n FROM {table} WHERE series = ?1 AND t >= ?2 AND t < ?3 ORDER BY t"
    ))?;
    let rows = q.query_map(params![id, from, to.min(folded)], |r| {
        Ok(Row {
            t_ms: r.get(0)?,
            min: r.get(1)?,
            avg: r.get(2)?,
            max: r.get(3)?,
            n: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
        })
    })?;
    for row in rows {
        out.push(row?);
    }
    read_tier(conn, tier - 1, id, from.max(folded), to, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    /// A whole day, so minutes and hours start on it.
    const T0: i64 = 1_796_428_800_000;

    fn temp_store(name: &str, max_bytes: u64) -> (Store, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("thingsbus-history-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("history.db");
        (Store::open(&path, 1_000, max_bytes).expect("opens"), path)
    }

    fn point(field: &str, t_ms: i64, v: f64) -> Point {
        Point {
            ns: "kitchen.fridge".into(),
            field: field.into(),
            t_ms,
            v,
        }
    }

    fn plan(since_ms: i64, until_ms: i64, step_ms: i64, tier: usize) -> Plan {
        Plan {
            since_ms,
            until_ms,
            step_ms,
            tier,
        }
    }

    #[test]
    fn one_point_per_window_the_last_written_wins() {
        let (mut s, _) = temp_store("window", u64::MAX);
        s.write(&[point("temp", T0, 1.0), point("temp", T0, 2.0)])
            .expect("writes");
        s.write(&[point("temp", T0, 3.0), point("temp", T0 + 1_000, 4.0)])
            .expect("writes");
        let rows = s.query("kitchen.fridge", "temp", &plan(T0, T0 + MIN, 1_000, 0));
        let v: Vec<(i64, f64)> = rows
            .expect("reads")
            .iter()
            .map(|r| (r.t_ms, r.avg))
            .collect();
        assert_eq!(v, vec![(T0, 3.0), (T0 + 1_000, 4.0)]);
    }

    #[test]
    fn minutes_and_hours_are_folded_and_read_with_the_unfolded_tail() {
        let (mut s, _) = temp_store("fold", u64::MAX);
        // Two hours of one point a minute at 0 s and one at 30 s: v and v + 1.
        let mut pts = Vec::new();
        for m in 0..120 {
            pts.push(point("temp", T0 + m * MIN, m as f64));
            pts.push(point("temp", T0 + m * MIN + 30_000, m as f64 + 1.0));
        }
        s.write(&pts).expect("writes");
        // At T0 + 90 min: 90 minutes folded, one hour.
        let m = s.maintain(T0 + 90 * MIN + 10_000).expect("maintains");
        assert_eq!((m.minutes, m.hours, m.expired), (90, 1, 0));
        let minute = s
            .query("kitchen.fridge", "temp", &plan(T0, T0 + 2 * HOUR, MIN, 1))
            .expect("reads");
        assert_eq!(
            minute.len(),
            120,
            "folded minutes, then raw points by minute"
        );
        assert_eq!(
            (minute[5].min, minute[5].avg, minute[5].max),
            (5.0, 5.5, 6.0)
        );
        assert_eq!(minute[100].n, 2);
        let hour = s
            .query("kitchen.fridge", "temp", &plan(T0, T0 + 2 * HOUR, HOUR, 2))
            .expect("reads");
        assert_eq!(hour.len(), 2);
        // The first hour: values 0..=60, mean of m + 0.5 over m in 0..60.
        assert_eq!((hour[0].min, hour[0].max, hour[0].n), (0.0, 60.0, 120));
        assert!((hour[0].avg - 30.0).abs() < 1e-9, "{}", hour[0].avg);
        // The second, partly from minutes and partly from raw points.
        assert_eq!((hour[1].min, hour[1].max, hour[1].n), (60.0, 120.0, 120));
    }

    #[test]
    fn points_that_come_after_their_minute_was_folded_are_folded_in() {
        let (mut s, _) = temp_store("late", u64::MAX);
        s.write(&[point("temp", T0, 1.0)]).expect("writes");
        s.maintain(T0 + 2 * HOUR).expect("maintains");
        // Late: into the minute and the hour already folded.
        s.write(&[point("temp", T0 + 1_000, 3.0)]).expect("writes");
        let minute = s
            .query("kitchen.fridge", "temp", &plan(T0, T0 + MIN, MIN, 1))
            .expect("reads");
        assert_eq!((minute[0].min, minute[0].max, minute[0].n), (1.0, 3.0, 2));
        let hour = s
            .query("kitchen.fridge", "temp", &plan(T0, T0 + HOUR, HOUR, 2))
            .expect("reads");
        assert_eq!((hour[0].avg, hour[0].n), (2.0, 2));
    }

    #[test]
    fn each_tier_expires_after_its_keep_but_not_before_it_is_folded() {
        let (mut s, _) = temp_store("expire", u64::MAX);
        s.write(&[point("temp", T0, 1.0), point("temp", T0 + 1_000, 3.0)])
            .expect("writes");
        // Three days later: folded first, then the raw points are past their 2 days.
        let m = s.maintain(T0 + 3 * DAY).expect("maintains");
        assert_eq!((m.minutes, m.hours, m.expired), (1, 1, 2));
        let raw = s
            .query("kitchen.fridge", "temp", &plan(T0, T0 + MIN, 1_000, 0))
            .expect("reads");
        assert!(raw.is_empty());
        let minute = s
            .query("kitchen.fridge", "temp", &plan(T0, T0 + MIN, MIN, 1))
            .expect("reads");
        assert_eq!(
            (minute[0].min, minute[0].avg, minute[0].max),
            (1.0, 2.0, 3.0)
        );
        // 91 days: the minute is gone, the hour stays.
        let m = s.maintain(T0 + 91 * DAY).expect("maintains");
        assert_eq!(m.expired, 1);
        let hour = s
            .query("kitchen.fridge", "temp", &plan(T0, T0 + HOUR, HOUR, 2))
            .expect("reads");
        assert_eq!(hour.len(), 1);
        // Six years: nothing.
        s.maintain(T0 + 6 * 365 * DAY).expect("maintains");
        let hour = s
            .query("kitchen.fridge", "temp", &plan(T0, T0 + HOUR, HOUR, 2))
            .expect("reads");
        assert!(hour.is_empty());
    }

    #[test]
    fn over_its_bound_the_store_drops_the_oldest_first() {
        let (mut s, path) = temp_store("bound", 256 * 1024);
        let end = T0 + DAY;
        // A day of a point a second for 4 series: far over 256 KiB.
        for chunk in 0..24 {
            let mut pts = Vec::new();
            for sec in 0..3600 {
                let t = T0 + chunk * HOUR + sec * 1_000;
                for f in ["a", "b", "c", "d"] {
                    pts.push(point(f, t, sec as f64));
                }
            }
            s.write(&pts).expect("writes");
        }
        assert!(s.used_bytes().expect("size") > 1 << 20);
        let m = s.maintain(end).expect("maintains");
        assert!(m.dropped_for_bytes > 0);
        assert!(m.used_bytes <= 256 * 1024, "{m:?}");
        assert!(
            std::fs::metadata(&path).expect("file").len() <= 512 * 1024,
            "the file shrinks too"
        );
        // The newest raw points are still there, the oldest are not.
        let last_hour = s
            .query("kitchen.fridge", "a", &plan(end - 60_000, end, 1_000, 0))
            .expect("reads");
        assert_eq!(last_hour.len(), 60);
        let first = s
            .query("kitchen.fridge", "a", &plan(T0, T0 + HOUR, 1_000, 0))
            .expect("reads");
        assert!(first.is_empty());
    }
}
