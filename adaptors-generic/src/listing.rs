//! What `thingsbus ls` prints, in both forms.

use std::io::{self, Write};

use thingsbus_client::Thing;

/// `thingsbus ls --json`: one object mapping each thing's namespace to
/// `{"data": ..., "ts": ..., "stale": ...}`, in the order given, the data written as received.
///
/// # Errors
/// Those of `out`.
pub fn write_json(out: &mut impl Write, things: &[Thing]) -> io::Result<()> {
    out.write_all(b"{")?;
    for (i, t) in things.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        // Namespaces need no escaping (a-z, 0-9, '_', '-', '.'); the data is the JSON text the
        // broker sent, written as it came. Written piece by piece, nothing formatted into a
        // String: a million things are listed in well under a second.
        out.write_all(b"\"")?;
        out.write_all(t.ns.as_str().as_bytes())?;
        out.write_all(b"\":{\"data\":")?;
        out.write_all(t.data.as_bytes())?;
        out.write_all(b",\"ts\":")?;
        match serde_json::Number::from_f64(t.ts) {
            Some(n) => serde_json::to_writer(&mut *out, &n).map_err(io::Error::from)?,
            None => out.write_all(b"null")?,
        }
        out.write_all(if t.stale {
            b",\"stale\":true}"
        } else {
            b",\"stale\":false}"
        })?;
    }
    out.write_all(b"}\n")
}

/// `thingsbus ls`: an aligned table `NAMESPACE  AGE  VALUE`, values cut to `width` characters,
/// stale things marked `[stale]`; ages are counted from `now` (seconds since 1970).
///
/// # Errors
/// Those of `out`.
pub fn write_table(
    out: &mut impl Write,
    things: &[Thing],
    width: usize,
    now: f64,
) -> io::Result<()> {
    if things.is_empty() {
        return writeln!(out, "(no things)");
    }
    let ns_w = things
        .iter()
        .map(|t| t.ns.as_str().len())
        .max()
        .unwrap_or(0)
        .max("NAMESPACE".len());
    let ages: Vec<String> = things
        .iter()
        .map(|t| crate::render::age(now - t.ts))
        .collect();
    let age_w = ages
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max("AGE".len());
    writeln!(out, "{:ns_w$}  {:>age_w$}  VALUE", "NAMESPACE", "AGE")?;
    for (t, age) in things.iter().zip(&ages) {
        let value = crate::render::short_value(&t.data, width);
        let mark = if t.stale { "[stale] " } else { "" };
        writeln!(out, "{:ns_w$}  {age:>age_w$}  {mark}{value}", t.ns.as_str())?;
    }
    Ok(())
}
