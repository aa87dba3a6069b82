//! The bounded hand-off between the recorder (which reads the HTTP side's mirror) and the
//! writer thread: the newest value of each series, keyed by series, at most one resolution
//! window each. The recorder never waits for the writer: a value of a later window that finds
//! the earlier one not yet written takes its place (counted), so a writer that falls behind
//! makes the history coarser, never the mirror slower.

use std::collections::HashMap;
use std::sync::Mutex;

use super::store::Point;

/// What became of one offered value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Taken: a new window for its series.
    Taken,
    /// Took the place of a value of the same window (the resolution at work).
    Replaced,
    /// Took the place of a value of an earlier window that was not written yet: that point is
    /// lost (the writer is behind).
    Overtook,
    /// Older than the window waiting for its series: ignored.
    Older,
    /// The hand-off holds as many series as it may: not taken.
    Full,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    window_ms: i64,
    v: f64,
}

/// Series key: the namespace, a NUL (never in a namespace), the field path.
#[derive(Debug)]
pub(crate) struct Handoff {
    resolution_ms: i64,
    capacity: usize,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Handoff {
    pub(crate) fn new(resolution_ms: i64, capacity: usize) -> Handoff {
        Handoff {
            resolution_ms: resolution_ms.max(1),
            capacity,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Offers the values of one thing at `ts` (seconds since 1970); `key` is scratch space.
    /// Returns how many points were lost to it (see [`Offer`]).
    pub(crate) fn offer(
        &self,
        ns: &str,
        ts: f64,
        values: &[(String, f64)],
        key: &mut String,
    ) -> u64 {
        let window_ms = ((ts * 1e3) as i64).div_euclid(self.resolution_ms) * self.resolution_ms;
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut lost = 0;
        for (field, v) in values {
            key.clear();
            key.push_str(ns);
            key.push('\0');
            key.push_str(field);
            if matches!(
                offer_one(&mut pending, self.capacity, key, window_ms, *v),
                Offer::Overtook | Offer::Full
            ) {
                lost += 1;
            }
        }
        lost
    }

    /// Everything waiting, as points; the hand-off is empty after.
    pub(crate) fn take(&self) -> Vec<Point> {
        let taken = std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        taken
            .into_iter()
            .map(|(key, p)| {
                let (ns, field) = key.split_once('\0').unwrap_or((&key, ""));
                Point {
                    ns: ns.to_owned(),
                    field: field.to_owned(),
                    t_ms: p.window_ms,
                    v: p.v,
                }
            })
            .collect()
    }
}

/// The rule of the hand-off for one value, a function of what waits.
fn offer_one(
    pending: &mut HashMap<String, Pending>,
    capacity: usize,
    key: &str,
    window_ms: i64,
    v: f64,
) -> Offer {
    if let Some(p) = pending.get_mut(key) {
        let offer = match window_ms.cmp(&p.window_ms) {
            std::cmp::Ordering::Less => return Offer::Older,
            std::cmp::Ordering::Equal => Offer::Replaced,
            std::cmp::Ordering::Greater => Offer::Overtook,
        };
        *p = Pending { window_ms, v };
        return offer;
    }
    if pending.len() >= capacity {
        return Offer::Full;
    }
    pending.insert(key.to_owned(), Pending { window_ms, v });
    Offer::Taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_series_and_window_the_newest_and_later_windows_overtake() {
        let mut p = HashMap::new();
        assert_eq!(offer_one(&mut p, 10, "a\0", 1_000, 1.0), Offer::Taken);
        assert_eq!(offer_one(&mut p, 10, "a\0", 1_000, 2.0), Offer::Replaced);
        assert_eq!(offer_one(&mut p, 10, "a\0", 0, 9.0), Offer::Older);
        assert_eq!(offer_one(&mut p, 10, "a\0", 2_000, 3.0), Offer::Overtook);
        assert_eq!(p.len(), 1);
        assert_eq!(p["a\0"].window_ms, 2_000);
        assert!((p["a\0"].v - 3.0).abs() < f64::EPSILON);
    }

    #[test]
    fn a_full_hand_off_takes_no_new_series_but_still_updates_those_it_holds() {
        let mut p = HashMap::new();
        assert_eq!(offer_one(&mut p, 1, "a\0", 0, 1.0), Offer::Taken);
        assert_eq!(offer_one(&mut p, 1, "b\0", 0, 1.0), Offer::Full);
        assert_eq!(offer_one(&mut p, 1, "a\0", 0, 2.0), Offer::Replaced);
    }

    #[test]
    fn values_land_in_their_resolution_window_and_come_out_as_points() {
        let h = Handoff::new(1_000, 100);
        let mut key = String::new();
        let values = vec![("temp".to_owned(), 4.0), ("door.open".to_owned(), 1.0)];
        assert_eq!(h.offer("kitchen.fridge", 10.2, &values, &mut key), 0);
        assert_eq!(h.offer("kitchen.fridge", 10.9, &values[..1], &mut key), 0);
        assert_eq!(h.offer("kitchen.fridge", 11.0, &values[..1], &mut key), 1);
        let mut points = h.take();
        points.sort_by(|a, b| a.field.cmp(&b.field));
        assert_eq!(points.len(), 2);
        assert_eq!(
            (points[0].field.as_str(), points[0].t_ms),
            ("door.open", 10_000)
        );
        assert_eq!((points[1].field.as_str(), points[1].t_ms), ("temp", 11_000));
        assert!(h.take().is_empty());
    }
}
