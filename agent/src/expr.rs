//! Rule expressions: CEL (the Common Expression Language, through `cel-interpreter`), where a
//! dotted name is a thing on the bus: `kitchen.fridge.temp > 8`, `kitchen.weather.wind.speed`.
//!
//! Two adjustments make CEL read as users of a bus expect:
//! - A dotted name is resolved against the bus, not as nested variables: its longest prefix that
//!   is a thing gives the value, and the rest of the name selects inside that value (so
//!   `kitchen.weather.wind` is the field `wind` of the thing `kitchen.weather` when no thing
//!   `kitchen.weather.wind` exists). A name that is no thing is an error, reported by the rule.
//! - All numbers are doubles, as in JSON: `kitchen.fridge.temp * 2` works whether the thing
//!   holds `12` or `12.5` (plain CEL has no `double * int`).

use std::collections::HashMap;
use std::sync::Arc;

use cel_interpreter::objects::Key;
use cel_interpreter::{Context, Value};
use cel_parser::ast::{operators, Expr as Node, IdedExpr};
use cel_parser::reference::Val;

/// A compiled expression and the things it reads.
#[derive(Debug, Clone)]
pub struct Expr {
    source: String,
    ast: Arc<IdedExpr>,
    /// (variable standing in the expression, the dotted name as written)
    names: Vec<(String, String)>,
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

const ARITHMETIC: [&str; 11] = [
    operators::ADD,
    operators::SUBSTRACT,
    operators::MULTIPLY,
    operators::DIVIDE,
    operators::EQUALS,
    operators::NOT_EQUALS,
    operators::GREATER,
    operators::GREATER_EQUALS,
    operators::LESS,
    operators::LESS_EQUALS,
    operators::NEGATE,
];

impl Expr {
    /// Parses `source`.
    ///
    /// # Errors
    /// The parser's message.
    pub fn compile(source: &str) -> Result<Expr, String> {
        // The parser (antlr4rust) panics on some incomplete inputs ("a >") instead of returning
        // an error: a user's typo must not end the agent.
        let parsed = std::panic::catch_unwind(|| cel_parser::Parser::default().parse(source))
            .map_err(|_| format!("{source:?} is not a valid expression (it ends too early?)"))?;
        let mut ast = parsed.map_err(|e| format!("{source:?} is not a valid expression: {e}"))?;
        let mut names = Vec::new();
        rewrite(&mut ast, &mut Vec::new(), &mut names);
        Ok(Expr {
            source: source.to_owned(),
            ast: Arc::new(ast),
            names,
        })
    }

    /// The text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The dotted names the expression reads.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|(_, n)| n.as_str())
    }

    /// Evaluates the expression, `lookup(name)` giving each dotted name's value.
    ///
    /// # Errors
    /// A name `lookup` does not know, or a CEL error (wrong types, for example), as text.
    pub fn eval(
        &self,
        lookup: impl Fn(&str) -> Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let mut ctx = Context::default();
        for (var, name) in &self.names {
            let v = lookup(name).ok_or_else(|| format!("{name} is not on the bus"))?;
            ctx.add_variable_from_value(var.clone(), to_cel(&v));
        }
        let v = ctx
            .resolve(&self.ast)
            .map_err(|e| format!("{}: {e}", self.source))?;
        from_cel(&v).ok_or_else(|| format!("{}: the result cannot be JSON", self.source))
    }

    /// Evaluates a condition.
    ///
    /// # Errors
    /// As [`Expr::eval`], and a result that is not a boolean.
    pub fn eval_bool(
        &self,
        lookup: impl Fn(&str) -> Option<serde_json::Value>,
    ) -> Result<bool, String> {
        match self.eval(lookup)? {
            serde_json::Value::Bool(b) => Ok(b),
            other => Err(format!("{} gave {other}, not true or false", self.source)),
        }
    }
}

/// The dotted name of a chain of selections from an identifier: `kitchen.fridge.temp`.
fn dotted(node: &IdedExpr) -> Option<String> {
    match &node.expr {
        Node::Ident(name) => Some(name.clone()),
        Node::Select(s) if !s.test => dotted(&s.operand).map(|d| format!("{d}.{}", s.field)),
        _ => None,
    }
}

fn rewrite(node: &mut IdedExpr, bound: &mut Vec<String>, names: &mut Vec<(String, String)>) {
    if let Some(name) = dotted(node) {
        let root = name.split('.').next().unwrap_or_default();
        if !bound.iter().any(|b| b == root) {
            let var = match names.iter().find(|(_, n)| *n == name) {
                Some((v, _)) => v.clone(),
                None => {
                    let v = format!("thing_{}", names.len());
                    names.push((v.clone(), name));
                    v
                }
            };
            node.expr = Node::Ident(var);
            return;
        }
    }
    match &mut node.expr {
        Node::Call(call) => {
            let numeric = ARITHMETIC.contains(&call.func_name.as_str());
            if let Some(t) = call.target.as_mut() {
                rewrite(t, bound, names);
            }
            for a in &mut call.args {
                if numeric {
                    if let Node::Literal(v) = &a.expr {
                        match v {
                            Val::Int(i) => a.expr = Node::Literal(Val::Double(*i as f64)),
                            Val::UInt(u) => a.expr = Node::Literal(Val::Double(*u as f64)),
                            _ => {}
                        }
                    }
                }
                rewrite(a, bound, names);
            }
        }
        Node::Select(s) => rewrite(&mut s.operand, bound, names),
        Node::List(l) => {
            for e in &mut l.elements {
                rewrite(e, bound, names);
            }
        }
        Node::Map(m) => {
            for e in &mut m.entries {
                if let cel_parser::ast::EntryExpr::MapEntry(me) = &mut e.expr {
                    rewrite(&mut me.key, bound, names);
                    rewrite(&mut me.value, bound, names);
                }
            }
        }
        Node::Comprehension(c) => {
            rewrite(&mut c.iter_range, bound, names);
            rewrite(&mut c.accu_init, bound, names);
            let n = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2.clone());
            }
            bound.push(c.accu_var.clone());
            rewrite(&mut c.loop_cond, bound, names);
            rewrite(&mut c.loop_step, bound, names);
            rewrite(&mut c.result, bound, names);
            bound.truncate(n);
        }
        _ => {}
    }
}

/// JSON to CEL: every number a double.
fn to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(to_cel).collect())),
        serde_json::Value::Object(o) => {
            let map: HashMap<Key, Value> = o
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Value::from(map)
        }
    }
}

/// CEL to JSON; a whole double becomes an integer, as a user would write it.
fn from_cel(v: &Value) -> Option<serde_json::Value> {
    Some(match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::UInt(u) => serde_json::Value::from(*u),
        Value::Float(f) => number(*f)?,
        Value::String(s) => serde_json::Value::String(s.as_ref().clone()),
        Value::List(l) => serde_json::Value::Array(l.iter().map(from_cel).collect::<Option<_>>()?),
        Value::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m.map.iter() {
                let k = match k {
                    Key::String(s) => s.as_ref().clone(),
                    Key::Int(i) => i.to_string(),
                    Key::Uint(u) => u.to_string(),
                    Key::Bool(b) => b.to_string(),
                };
                out.insert(k, from_cel(v)?);
            }
            serde_json::Value::Object(out)
        }
        _ => return None,
    })
}

/// A finite double as JSON: whole values as integers.
pub(crate) fn number(f: f64) -> Option<serde_json::Value> {
    if !f.is_finite() {
        return None;
    }
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        #[allow(clippy::cast_possible_truncation)]
        return Some(serde_json::Value::from(f as i64));
    }
    serde_json::Number::from_f64(f).map(serde_json::Value::Number)
}

/// Finds a dotted name on the bus: the longest prefix that `get` knows as a thing, then the rest
/// of the name as fields inside its value.
pub fn resolve(
    name: &str,
    get: impl Fn(&str) -> Option<serde_json::Value>,
) -> Option<serde_json::Value> {
    let parts: Vec<&str> = name.split('.').collect();
    for n in (1..=parts.len()).rev() {
        let prefix = parts[..n].join(".");
        if let Some(mut v) = get(&prefix) {
            for field in &parts[n..] {
                v = v.get(field)?.clone();
            }
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bus(ns: &str) -> Option<serde_json::Value> {
        match ns {
            "kitchen.fridge.temp" => Some(json!(12.0)),
            "kitchen.count" => Some(json!(3)),
            "kitchen.weather" => Some(json!({"wind": {"speed": 4.5}, "sky": "grey"})),
            "kitchen.door" => Some(json!(true)),
            _ => None,
        }
    }

    fn eval(src: &str) -> Result<serde_json::Value, String> {
        Expr::compile(src)
            .expect("compiles")
            .eval(|n| resolve(n, bus))
    }

    #[test]
    fn the_issue_expressions() {
        assert_eq!(eval("kitchen.fridge.temp > 8"), Ok(json!(true)));
        assert_eq!(eval("kitchen.fridge.temp * 2"), Ok(json!(24)));
    }

    #[test]
    fn numbers_mix() {
        assert_eq!(eval("kitchen.count * 1.5"), Ok(json!(4.5)));
        assert_eq!(eval("kitchen.count + 1 == 4"), Ok(json!(true)));
        assert_eq!(eval("-kitchen.count < 0"), Ok(json!(true)));
    }

    #[test]
    fn names_select_inside_a_thing() {
        assert_eq!(eval("kitchen.weather.wind.speed > 4"), Ok(json!(true)));
        assert_eq!(
            eval("kitchen.weather.sky == 'grey' && kitchen.door"),
            Ok(json!(true))
        );
        assert_eq!(
            eval("{'double': kitchen.fridge.temp * 2, 'door': kitchen.door}"),
            Ok(json!({"double": 24, "door": true}))
        );
    }

    #[test]
    fn a_missing_thing_and_a_wrong_type_are_errors() {
        let e = eval("kitchen.oven.temp > 200").expect_err("missing");
        assert!(e.contains("kitchen.oven.temp is not on the bus"), "{e}");
        assert!(eval("kitchen.weather.sky > 3").is_err());
        let c = Expr::compile("kitchen.weather.sky").expect("compiles");
        assert!(c.eval_bool(|n| resolve(n, bus)).is_err());
    }

    #[test]
    fn comprehension_variables_are_not_things() {
        assert_eq!(
            eval("[1, 2, 3].all(x, x < kitchen.count + 1)"),
            Ok(json!(true))
        );
    }

    #[test]
    fn names_are_listed() {
        let e = Expr::compile("a.b > 1 && a.b < c.d").expect("compiles");
        assert_eq!(e.names().collect::<Vec<_>>(), vec!["a.b", "c.d"]);
    }

    #[test]
    fn parse_errors_quote_the_text() {
        let e = Expr::compile("a >").expect_err("bad");
        assert!(e.contains("\"a >\""), "{e}");
    }
}
