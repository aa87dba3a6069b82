//! A small terminal chart of a history answer (`thingsbus history`): one block character per
//! column, `▁` for the lowest value shown and `█` for the highest, a space where nothing was
//! recorded.

const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The points `(t, value)` of a span from `since` to `until` (same unit as `t`) drawn in
/// `width` columns: each column shows the mean of the points that fall in it.
#[must_use]
pub fn columns(points: &[(f64, f64)], since: f64, until: f64, width: usize) -> Vec<Option<f64>> {
    let width = width.max(1);
    let mut sums = vec![(0.0, 0usize); width];
    let span = until - since;
    if span <= 0.0 {
        return vec![None; width];
    }
    for &(t, v) in points {
        if !(since..until).contains(&t) || !v.is_finite() {
            continue;
        }
        let col = (((t - since) / span) * width as f64) as usize;
        let c = &mut sums[col.min(width - 1)];
        c.0 += v;
        c.1 += 1;
    }
    sums.into_iter()
        .map(|(s, n)| (n > 0).then(|| s / n as f64))
        .collect()
}

/// The block characters of `values`; a flat line is drawn at mid-height.
#[must_use]
pub fn draw(values: &[Option<f64>]) -> String {
    let known = values.iter().flatten().copied();
    let (lo, hi) = known.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    values
        .iter()
        .map(|v| match v {
            None => ' ',
            Some(_) if hi <= lo => BLOCKS[3],
            Some(v) => {
                let level = ((v - lo) / (hi - lo) * 7.0).round() as usize;
                BLOCKS[level.min(7)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_is_the_lowest_block_and_highest_the_full_one() {
        let v: Vec<Option<f64>> = (0..8).map(|i| Some(f64::from(i))).collect();
        assert_eq!(draw(&v), "▁▂▃▄▅▆▇█");
        assert_eq!(draw(&[Some(2.0), None, Some(4.0)]), "▁ █");
        assert_eq!(draw(&[Some(5.0), Some(5.0)]), "▄▄");
        assert_eq!(draw(&[None, None]), "  ");
    }

    #[test]
    fn points_fall_into_columns_by_time_and_share_a_mean() {
        let points = [
            (0.0, 1.0),
            (1.0, 3.0),
            (5.0, 10.0),
            (9.9, 0.0),
            (10.0, 99.0),
        ];
        let cols = columns(&points, 0.0, 10.0, 5);
        assert_eq!(cols, vec![Some(2.0), None, Some(10.0), None, Some(0.0)]);
        assert_eq!(columns(&points, 5.0, 5.0, 3), vec![None; 3]);
    }
}
