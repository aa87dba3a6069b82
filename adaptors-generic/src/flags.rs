//! Flag values the tools share.

/// A positive duration in seconds: `5`, `0.3`, or with a unit, `500ms`, `2s`, `1m`. Refusing
/// zero, negative and absurd values here keeps `Duration::from_secs_f64` from panicking later.
///
/// # Errors
/// A text that is not such a duration, saying what is expected.
pub fn positive_secs(s: &str) -> Result<f64, String> {
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * scale < 1e6 => Ok(v * scale),
        _ => Err(format!(
            "{s:?} is not a positive duration (seconds, or 500ms, 2s, 1m)"
        )),
    }
}

/// A base namespace for a gateway's nodes, checked when the flags are read: `home.ws`. Not the
/// root: the gateway serves every command below its base.
///
/// # Errors
/// An empty namespace, or one the protocol refuses, saying which part and why.
pub fn namespace(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the nodes need a base namespace of their own, e.g. home.nodes".into());
    }
    thingsbus_protocol::namespace::validate(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::{namespace, positive_secs};

    #[test]
    fn namespaces_are_checked() {
        assert_eq!(namespace("home.ws"), Ok("home.ws".to_owned()));
        let e = namespace("Home.ws").expect_err("upper case");
        assert!(e.contains("\"Home\""), "{e}");
        assert!(namespace("").is_err());
    }

    #[test]
    fn durations_with_and_without_units() {
        assert_eq!(positive_secs("5"), Ok(5.0));
        assert_eq!(positive_secs("0.3"), Ok(0.3));
        assert_eq!(positive_secs("500ms"), Ok(0.5));
        assert_eq!(positive_secs("2s"), Ok(2.0));
        assert_eq!(positive_secs("1m"), Ok(60.0));
        for bad in ["0", "-1", "nan", "inf", "1e9", "soon", ""] {
            assert!(positive_secs(bad).is_err(), "{bad}");
        }
    }
}
