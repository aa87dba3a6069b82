//! Which parts of a thing's value are recorded: the value itself when it is a number, and each
//! number of an object by its dotted path; `true`/`false` as 1/0. Strings, nulls and arrays are
//! not series.

use serde_json::Value;

/// Series one thing may have; fields beyond them are not recorded.
pub(crate) const MAX_FIELDS: usize = 256;
/// Longest field path recorded.
pub(crate) const MAX_PATH: usize = 256;

/// Appends each recorded value of `data` as `(field path, value)`; the path of a number thing
/// is `""`.
pub(crate) fn numeric(data: &Value, out: &mut Vec<(String, f64)>) {
    walk(data, &mut String::new(), out);
}

fn walk(v: &Value, path: &mut String, out: &mut Vec<(String, f64)>) {
    if out.len() >= MAX_FIELDS {
        return;
    }
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64().filter(|x| x.is_finite()) {
                out.push((path.clone(), x));
            }
        }
        Value::Bool(b) => out.push((path.clone(), f64::from(u8::from(*b)))),
        Value::Object(fields) => {
            for (k, child) in fields {
                let len = path.len();
                if len > 0 {
                    path.push('.');
                }
                path.push_str(k);
                if path.len() <= MAX_PATH {
                    walk(child, path, out);
                }
                path.truncate(len);
            }
        }
        Value::Null | Value::String(_) | Value::Array(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn of(v: Value) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        numeric(&v, &mut out);
        out
    }

    #[test]
    fn a_number_thing_is_one_series_with_an_empty_path() {
        assert_eq!(of(json!(21.5)), vec![(String::new(), 21.5)]);
        assert_eq!(of(json!(-3)), vec![(String::new(), -3.0)]);
    }

    #[test]
    fn object_fields_by_dotted_path_and_booleans_as_0_or_1() {
        let got = of(json!({
            "temp": 4.5,
            "door": {"open": true, "angle": 30, "label": "left"},
            "light": false,
            "name": "fridge",
            "list": [1, 2],
            "none": null,
        }));
        let mut want = vec![
            ("temp".to_owned(), 4.5),
            ("door.open".to_owned(), 1.0),
            ("door.angle".to_owned(), 30.0),
            ("light".to_owned(), 0.0),
        ];
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let mut got = got;
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want);
    }

    #[test]
    fn strings_nulls_and_arrays_are_no_series() {
        assert!(of(json!("hot")).is_empty());
        assert!(of(json!(null)).is_empty());
        assert!(of(json!([1, 2, 3])).is_empty());
    }

    #[test]
    fn a_thing_records_at_most_max_fields() {
        let wide: serde_json::Map<String, Value> =
            (0..1000).map(|i| (format!("f{i}"), json!(i))).collect();
        assert_eq!(of(Value::Object(wide)).len(), MAX_FIELDS);
    }
}
