//! Argument templates of served commands: `"{on}"`, `"--level={level}"`. Filled from a
//! command's data, each template gives exactly one argument (never a shell, never split), and
//! the data must match the template: an object whose keys are the template's fields, each a
//! scalar.

use std::collections::BTreeSet;

use serde_json::Value;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Field(String),
}

/// A text with `{field}` holes; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Piece>);

/// How a boolean is written when a template is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bools {
    /// `true` / `false` (command arguments).
    Words,
    /// `1` / `0` (file writes: sysfs GPIO values).
    Digits,
}

impl Template {
    /// Parses a template.
    ///
    /// # Errors
    /// An unclosed `{`, a stray `}` or a field name that is not `[a-z_][a-z0-9_]*`.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(format!(
                                "{s:?}: `{{` is not closed; write {{field}}, or {{{{ for a brace"
                            ))
                            }
                        }
                    }
                    let ok = name
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                        && name
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                    if !ok {
                        return Err(format!("{s:?}: {{{name}}} is not a field name: use lower-case letters, digits and _"));
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field(name));
                }
                '}' => {
                    return Err(format!(
                        "{s:?}: a `}}` without `{{`; write }}}} for a brace"
                    ))
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template(pieces))
    }

    /// The fields the template uses.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Field(f) => Some(f.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// Fills the template from `data`'s fields.
    ///
    /// # Errors
    /// A missing field, or a value that is not a scalar or could pass for an option or contain
    /// a NUL.
    pub fn fill(&self, data: &Value, bools: Bools) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => {
                    let v = data
                        .get(f)
                        .ok_or_else(|| format!("the command's data lacks \"{f}\""))?;
                    out.push_str(&scalar(f, v, bools)?);
                }
            }
        }
        Ok(out)
    }
}

fn scalar(field: &str, v: &Value, bools: Bools) -> Result<String, String> {
    match v {
        Value::Bool(b) => Ok(match (bools, b) {
            (Bools::Words, true) => "true".into(),
            (Bools::Words, false) => "false".into(),
            (Bools::Digits, true) => "1".into(),
            (Bools::Digits, false) => "0".into(),
        }),
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) => {
            if s.contains('\0') {
                Err(format!("\"{field}\" contains a NUL byte"))
            } else if s.starts_with('-') {
                // A value must not turn into an option of the program (`--output=/etc/x`).
                Err(format!(
                    "\"{field}\" must not begin with '-' (it could pass for an option)"
                ))
            } else if s.len() > 4096 {
                Err(format!("\"{field}\" is longer than 4096 bytes"))
            } else {
                Ok(s.clone())
            }
        }
        Value::Null | Value::Array(_) | Value::Object(_) => Err(format!(
            "\"{field}\" must be a string, number or boolean, not {v}"
        )),
    }
}

/// Checks that `data` fits the templates: an object (or nothing, when no template has fields)
/// without keys the templates do not use.
///
/// # Errors
/// What does not fit.
pub fn check_data(templates: &[&Template], data: &Value) -> Result<(), String> {
    let fields: BTreeSet<&str> = templates.iter().flat_map(|t| t.fields()).collect();
    match data {
        Value::Object(map) => {
            let unknown: Vec<&str> = map
                .keys()
                .map(String::as_str)
                .filter(|k| !fields.contains(k))
                .collect();
            if unknown.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "unexpected field(s) {unknown:?}: this thing takes {fields:?}"
                ))
            }
        }
        Value::Null if fields.is_empty() => Ok(()),
        other => Err(format!(
            "the command's data must be an object with {fields:?}, not {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_and_fill() {
        let t = Template::parse("--level={level}").expect("template");
        assert_eq!(t.fields().collect::<Vec<_>>(), vec!["level"]);
        assert_eq!(
            t.fill(&json!({"level": 3}), Bools::Words),
            Ok("--level=3".into())
        );
        let t = Template::parse("{{literal}} {on}").expect("template");
        assert_eq!(
            t.fill(&json!({"on": true}), Bools::Words),
            Ok("{literal} true".into())
        );
        assert_eq!(
            t.fill(&json!({"on": false}), Bools::Digits),
            Ok("{literal} 0".into())
        );
        assert_eq!(
            Template::parse("plain")
                .expect("t")
                .fill(&json!({}), Bools::Words),
            Ok("plain".into())
        );
    }

    #[test]
    fn bad_templates() {
        for bad in ["{on", "on}", "{}", "{On}", "{a b}", "{1x}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn injection_stays_one_literal_argument_or_is_refused() {
        let t = Template::parse("{on}").expect("t");
        // Shell syntax is just text: the program gets it as one argument, no shell ever sees it.
        assert_eq!(
            t.fill(&json!({"on": "; rm -rf /"}), Bools::Words),
            Ok("; rm -rf /".into())
        );
        assert_eq!(
            t.fill(&json!({"on": "$(reboot)"}), Bools::Words),
            Ok("$(reboot)".into())
        );
        assert!(t
            .fill(&json!({"on": "--output=/etc/passwd"}), Bools::Words)
            .is_err());
        assert!(t.fill(&json!({"on": "a\u{0}b"}), Bools::Words).is_err());
        assert!(t.fill(&json!({"on": ["a", "b"]}), Bools::Words).is_err());
        assert!(t.fill(&json!({"on": {"x": 1}}), Bools::Words).is_err());
        assert!(t.fill(&json!({"on": null}), Bools::Words).is_err());
        assert!(t.fill(&json!({}), Bools::Words).is_err());
        // Negative numbers are numbers, not options.
        assert_eq!(t.fill(&json!({"on": -5}), Bools::Words), Ok("-5".into()));
    }

    #[test]
    fn data_must_fit_the_template() {
        let t = Template::parse("{on}").expect("t");
        assert_eq!(check_data(&[&t], &json!({"on": true})), Ok(()));
        assert!(check_data(&[&t], &json!({"on": true, "extra": 1})).is_err());
        assert!(check_data(&[&t], &json!("on")).is_err());
        assert!(check_data(&[&t], &Value::Null).is_err());
        let plain = Template::parse("x").expect("t");
        assert_eq!(check_data(&[&plain], &Value::Null), Ok(()));
    }
}
