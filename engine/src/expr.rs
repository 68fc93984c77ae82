//! Expressions: `{{ expr }}` templates in step inputs and bare conditions in gateway routes,
//! evaluated with CEL (the `cel` crate). We only find the `{{`/`}}` delimiters; the expression
//! language itself is CEL's.
//!
//! Expressions see two variables: `input` (the execution input) and `steps` (per step id:
//! `status`, `output`, `error`). CEL has no clock or random functions in the set we enable, so
//! evaluation is deterministic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use cel::{Context, Env, Program};
use serde_json::Value;

/// Variables an expression may reference at its root.
pub const ROOT_VARIABLES: &[&str] = &["input", "steps"];
/// In a `foreach` item's input: also the item and its 0-based position.
pub const ITEM_VARIABLES: &[&str] = &["input", "steps", "item", "index"];
/// In a `foreach` break condition: also the item's output.
pub const BREAK_VARIABLES: &[&str] = &["input", "steps", "item", "index", "output"];
/// Upper bound on one template string, so a definition cannot smuggle in huge expressions.
pub const MAX_TEMPLATE_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    #[error("expression `{source_text}` does not parse: {message}")]
    Parse {
        source_text: String,
        message: String,
    },
    #[error("expression `{source_text}` failed: {message}")]
    Eval {
        source_text: String,
        message: String,
    },
    #[error("template {template:?} has an unclosed `{{{{`")]
    Unclosed { template: String },
    #[error("template is {len} bytes, over the limit of {MAX_TEMPLATE_LEN}")]
    TooLong { len: usize },
    #[error("condition `{source_text}` gave {got}, not a boolean")]
    NotBoolean { source_text: String, got: String },
}

/// The variables an evaluation sees.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub input: Value,
    pub steps: Value,
    /// Further variables, such as a loop's `item` and `index`.
    pub locals: Vec<(&'static str, Value)>,
}

fn compile(source: &str) -> Result<Rc<Program>, Error> {
    compile_with(source, ROOT_VARIABLES)
}

/// Parsed programs kept per thread, by source; past this many the cache starts over.
pub const MAX_CACHED_PROGRAMS: usize = 256;

thread_local! {
    /// CEL's standard functions, built once per thread rather than for every evaluation.
    static STDLIB: Arc<Env> = Arc::new(Env::stdlib());
    /// Parsing is most of an evaluation's cost, and a definition's few expressions are
    /// evaluated again at every step.
    static PROGRAMS: RefCell<HashMap<String, Rc<Program>>> = RefCell::new(HashMap::new());
}

/// `source` parsed (from the cache when it has been before).
fn parse(source: &str) -> Result<Rc<Program>, Error> {
    if let Some(program) = PROGRAMS.with(|p| p.borrow().get(source).cloned()) {
        return Ok(program);
    }
    let program = Rc::new(Program::compile(source).map_err(|e| Error::Parse {
        source_text: source.to_string(),
        message: e.to_string().trim().replace('\n', " "),
    })?);
    PROGRAMS.with(|p| {
        let mut programs = p.borrow_mut();
        if programs.len() >= MAX_CACHED_PROGRAMS {
            programs.clear();
        }
        programs.insert(source.to_string(), program.clone());
    });
    Ok(program)
}

fn compile_with(source: &str, roots: &[&str]) -> Result<Rc<Program>, Error> {
    let program = parse(source)?;
    let references = program.references();
    for name in references.variables() {
        if !roots.contains(&name) {
            return Err(Error::Parse {
                source_text: source.to_string(),
                message: format!(
                    "unknown variable `{name}` (expressions see {})",
                    roots.join(", ")
                ),
            });
        }
    }
    Ok(program)
}

/// Serializes JSON for CEL with integers as signed `int` where they fit. serde_json keeps
/// non-negative integers as unsigned, and CEL does not mix `uint` with `int` in arithmetic, so
/// without this `{{steps.a.output.days + 1}}` would fail on a plain JSON number.
struct CelJson<'a>(&'a Value);

impl serde::Serialize for CelJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => s.serialize_i64(i),
                (None, Some(u), _) => s.serialize_u64(u),
                (None, None, Some(f)) => s.serialize_f64(f),
                (None, None, None) => n.serialize(s),
            },
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&CelJson(item))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, &CelJson(v))?;
                }
                m.end()
            }
            other => other.serialize(s),
        }
    }
}

fn evaluate(source: &str, scope: &Scope) -> Result<Value, Error> {
    let program = compile_with(source, BREAK_VARIABLES)?;
    let eval_err = |message: String| Error::Eval {
        source_text: source.to_string(),
        message,
    };
    let mut context = Context::with_env(STDLIB.with(Arc::clone));
    context
        .add_variable("input", CelJson(&scope.input))
        .map_err(|e| eval_err(e.to_string()))?;
    context
        .add_variable("steps", CelJson(&scope.steps))
        .map_err(|e| eval_err(e.to_string()))?;
    for (name, value) in &scope.locals {
        context
            .add_variable(*name, CelJson(value))
            .map_err(|e| eval_err(e.to_string()))?;
    }
    let value = program
        .execute(&context)
        .map_err(|e| eval_err(e.to_string()))?;
    value.json().map_err(|e| eval_err(e.to_string()))
}

/// One piece of a template string.
enum Piece<'a> {
    Text(&'a str),
    Expr(&'a str),
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, Error> {
    if template.len() > MAX_TEMPLATE_LEN {
        return Err(Error::TooLong {
            len: template.len(),
        });
    }
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| Error::Unclosed {
            template: template.to_string(),
        })?;
        out.push(Piece::Expr(after[..close].trim()));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Checks that every expression in every string of `value` compiles and references only
/// [`ROOT_VARIABLES`].
pub fn check_template(value: &Value) -> Result<(), Error> {
    check_template_with(value, ROOT_VARIABLES)
}

/// As [`check_template`], with the root variables `roots`.
pub fn check_template_with(value: &Value, roots: &[&str]) -> Result<(), Error> {
    match value {
        Value::String(s) => {
            for piece in pieces(s)? {
                if let Piece::Expr(source) = piece {
                    compile_with(source, roots)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|v| check_template_with(v, roots)),
        Value::Object(map) => map.values().try_for_each(|v| check_template_with(v, roots)),
        _ => Ok(()),
    }
}

/// Checks that a condition compiles.
pub fn check_condition(source: &str) -> Result<(), Error> {
    compile(source).map(|_| ())
}

/// As [`check_condition`], with the root variables `roots`.
pub fn check_condition_with(source: &str, roots: &[&str]) -> Result<(), Error> {
    compile_with(source, roots).map(|_| ())
}

/// Renders templates in every string of `value`. A string that is exactly one `{{ expr }}`
/// becomes the expression's value with its type (number, object, ...); a string mixing text and
/// expressions becomes a string.
pub fn render(value: &Value, scope: &Scope) -> Result<Value, Error> {
    match value {
        Value::String(s) => render_string(s, scope),
        Value::Array(items) => items
            .iter()
            .map(|v| render(v, scope))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), render(v, scope)?)))
            .collect::<Result<serde_json::Map<_, _>, _>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

fn render_string(template: &str, scope: &Scope) -> Result<Value, Error> {
    let pieces = pieces(template)?;
    if let [Piece::Expr(source)] = pieces.as_slice() {
        return evaluate(source, scope);
    }
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Expr(source) => match evaluate(source, scope)? {
                Value::String(s) => out.push_str(&s),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

/// Evaluates a gateway condition; anything but a boolean is an error, not "falsy".
pub fn condition(source: &str, scope: &Scope) -> Result<bool, Error> {
    match evaluate(source, scope)? {
        Value::Bool(b) => Ok(b),
        other => Err(Error::NotBoolean {
            source_text: source.to_string(),
            got: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        Scope {
            input: json!({"text": "hi", "n": 3, "vip": true}),
            steps: json!({"a": {"status": "completed", "output": {"score": 0.9, "id": 7, "tags": ["x"]}}}),
            locals: Vec::new(),
        }
    }

    #[test]
    fn whole_expression_keeps_its_type() {
        let s = scope();
        assert_eq!(render(&json!("{{input.n}}"), &s).unwrap(), json!(3));
        assert_eq!(
            render(&json!("{{ steps.a.output }}"), &s).unwrap(),
            json!({"score": 0.9, "id": 7, "tags": ["x"]})
        );
    }

    #[test]
    fn mixed_text_becomes_a_string() {
        let s = scope();
        assert_eq!(
            render(&json!("say {{input.text}} #{{steps.a.output.id}}"), &s).unwrap(),
            json!("say hi #7")
        );
    }

    #[test]
    fn renders_nested_structures() {
        let s = scope();
        let v = json!({"a": ["{{input.text}}", 1], "b": {"c": "{{input.vip}}"}});
        assert_eq!(
            render(&v, &s).unwrap(),
            json!({"a": ["hi", 1], "b": {"c": true}})
        );
    }

    #[test]
    fn conditions_with_boolean_logic() {
        let s = scope();
        assert!(condition("steps.a.output.score > 0.8 && input.vip", &s).unwrap());
        assert!(!condition("steps.a.output.score > 0.95 || !input.vip", &s).unwrap());
        assert!(condition("input.n >= 3 && 'x' in steps.a.output.tags", &s).unwrap());
    }

    #[test]
    fn json_integers_do_integer_arithmetic() {
        let s = scope();
        assert_eq!(render(&json!("{{input.n + 1}}"), &s).unwrap(), json!(4));
        assert_eq!(
            render(&json!("{{steps.a.output.id * input.n - 1}}"), &s).unwrap(),
            json!(20)
        );
        assert!(condition("input.n + 1 == 4 && steps.a.output.id - input.n == 4", &s).unwrap());
    }

    #[test]
    fn non_boolean_condition_is_an_error() {
        assert!(matches!(
            condition("input.n", &scope()),
            Err(Error::NotBoolean { .. })
        ));
    }

    #[test]
    fn parse_errors_and_unknown_roots_are_reported() {
        assert!(matches!(
            check_condition("input.n > "),
            Err(Error::Parse { .. })
        ));
        let err = check_condition("secret.key == 1").unwrap_err();
        assert!(
            err.to_string().contains("unknown variable `secret`"),
            "{err}"
        );
        assert!(matches!(
            check_template(&json!("{{input.x")),
            Err(Error::Unclosed { .. })
        ));
    }

    #[test]
    fn missing_field_is_an_eval_error() {
        assert!(matches!(
            render(&json!("{{steps.a.output.nope}}"), &scope()),
            Err(Error::Eval { .. })
        ));
    }
}
