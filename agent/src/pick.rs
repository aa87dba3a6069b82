//! `pick`: a jq filter (through `jaq`) that selects from an HTTP poll's JSON reply, as users
//! already do with `curl ... | jq .current`.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;

/// A checked jq filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    source: String,
}

type Filter = jaq_core::Filter<data::JustLut<Val>>;
type D = data::JustLut<Val>;

fn compile(source: &str) -> Result<Filter, String> {
    // jaq-std's definitions need its optional natives (regex, time, math...); the core and
    // JSON ones are what a selection needs.
    let defs = jaq_core::defs();
    let funs = jaq_core::funs::<D>().chain(jaq_json::funs::<D>());
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(
            &arena,
            File {
                code: source,
                path: (),
            },
        )
        .map_err(|errs| {
            let what: Vec<String> = errs.iter().map(|(_, e)| format!("{e:?}")).collect();
            format!("{source:?} is not a jq filter: {}", what.join("; "))
        })?;
    Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errs| {
            let what: Vec<String> = errs.iter().map(|(_, e)| format!("{e:?}")).collect();
            format!("{source:?} is not a jq filter: {}", what.join("; "))
        })
}

impl Pick {
    /// Checks a filter.
    ///
    /// # Errors
    /// What jaq found wrong.
    pub fn compile(source: &str) -> Result<Pick, String> {
        compile(source)?;
        Ok(Pick {
            source: source.to_owned(),
        })
    }

    /// Runs the filter on a JSON text: its first output, or an error (no output, a runtime
    /// error, a reply that is not JSON).
    ///
    /// # Errors
    /// As text, naming the filter.
    pub fn run(&self, json: &[u8]) -> Result<serde_json::Value, String> {
        let filter = compile(&self.source)?;
        let input = jaq_json::read::parse_single(json)
            .map_err(|e| format!("the reply is not JSON: {e:?}"))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
        let mut out = filter.id.run((ctx, input)).map(unwrap_valr);
        match out.next() {
            Some(Ok(v)) => serde_json::from_str(&v.to_string())
                .map_err(|e| format!("pick {:?} gave {v}, which is not JSON: {e}", self.source)),
            Some(Err(e)) => Err(format!("pick {:?}: {e}", self.source)),
            None => Err(format!("pick {:?} selected nothing", self.source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects() {
        let p = Pick::compile(".current").expect("compiles");
        assert_eq!(p.run(br#"{"current": {"t": 3.5}}"#), Ok(json!({"t": 3.5})));
        let p = Pick::compile(".items[1].v * 2").expect("compiles");
        assert_eq!(p.run(br#"{"items": [{"v": 1}, {"v": 4}]}"#), Ok(json!(8)));
    }

    #[test]
    fn errors() {
        assert!(Pick::compile(".a[").is_err());
        assert!(Pick::compile("nosuchfilter").is_err());
        let p = Pick::compile(".a").expect("compiles");
        assert!(p.run(b"not json").is_err());
        assert!(p.run(b"[1]").is_err());
        assert!(Pick::compile("empty").expect("compiles").run(b"1").is_err());
    }
}
