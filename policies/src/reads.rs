//! Which parts of its input a policy can read, found from the policy's
//! syntax tree, and a digest of exactly those parts.
//!
//! In Rego the input is reachable only through the root `input` (or an
//! `import input…` alias of part of it): a policy's decision is therefore a
//! function of the data document and of the input's values at the places
//! where those references point, *provided* the policy calls nothing that
//! is not a function of its arguments (`rand.intn`) and rebinds nothing
//! with `with`. [`InputReads::of`] walks every module of an engine and
//! collects, for each reference to `input`, the longest constant path it
//! names (`input.host.labels`, `input["tee"]`,
//! `object.get(input, ["host", "enrolled"], null)`); any other use of
//! `input` (passed whole to a function, indexed by a variable, assigned to
//! a variable) reads the input up to the last constant step, down to the
//! whole document. [`InputReads::digest`] hashes the input's values at
//! those paths, so two inputs with the same digest get the same decision
//! from the same prepared policy: what [`crate::Prepared`] memoises.
//!
//! Written here because no crate answers it: regorus exposes its syntax
//! tree (`regorus::unstable`, pinned by the exact version in Cargo.toml; a
//! changed tree fails to compile here, as every match is exhaustive) but no
//! dependency analysis. regorus' parser bounds expression nesting (32) and
//! policy size, which bounds the walker's recursion.

use regorus::unstable::{Expr, Literal, Module, Query, Ref, Rule, RuleHead};
use serde_json::Value;

/// A path into the input: the object keys followed from its root.
pub type Path = Vec<String>;

/// What a policy can read of its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputReads {
    /// Only the values at these paths (none a prefix of another; an empty
    /// path is the whole input).
    Paths(Vec<Path>),
    /// The decision may differ between two evaluations of the same input
    /// (why, for logs and tests): it is never memoised.
    NotMemoisable(String),
}

/// Built-in functions of regorus (with this crate's features) whose
/// result depends only on their arguments. Every built-in regorus
/// registers must be in this list or in [`NONDETERMINISTIC_BUILTINS`]
/// (a test checks it, so an upgrade that adds one is reviewed here).
pub const DETERMINISTIC_BUILTINS: &[&str] = &[
    "__builtin_sets.intersection",
    "__builtin_sets.union",
    "abs",
    "array.concat",
    "array.reverse",
    "array.slice",
    "bits.and",
    "bits.lsh",
    "bits.negate",
    "bits.or",
    "bits.rsh",
    "bits.xor",
    "ceil",
    "concat",
    "contains",
    "count",
    "endswith",
    "floor",
    "format_int",
    "indexof",
    "indexof_n",
    "intersection",
    "is_array",
    "is_boolean",
    "is_null",
    "is_number",
    "is_object",
    "is_set",
    "is_string",
    "json.filter",
    "json.is_valid",
    "json.marshal",
    "json.marshal_with_options",
    "json.remove",
    "json.unmarshal",
    "lower",
    "max",
    "min",
    "numbers.range",
    "numbers.range_step",
    "object.filter",
    "object.get",
    "object.keys",
    "object.remove",
    "object.subset",
    "object.union",
    "object.union_n",
    "product",
    "replace",
    "round",
    "sort",
    "split",
    "sprintf",
    "startswith",
    "strings.any_prefix_match",
    "strings.any_suffix_match",
    "strings.count",
    "strings.replace_n",
    "strings.reverse",
    "substring",
    "sum",
    "to_number",
    // Writes a note to the trace; its value is `true`.
    "trace",
    "trim",
    "trim_left",
    "trim_prefix",
    "trim_right",
    "trim_space",
    "trim_suffix",
    "type_name",
    "union",
    "units.parse",
    "units.parse_bytes",
    "upper",
];

/// Built-in functions whose result can differ between evaluations with
/// the same arguments: a policy that calls one is never memoised.
pub const NONDETERMINISTIC_BUILTINS: &[&str] =
    &["rand.intn", "time.now_ns", "uuid.rfc4122", "opa.runtime", "http.send"];

impl std::fmt::Display for InputReads {
    /// `input.a.b, input.c` (or `all of input`), or why every input is
    /// evaluated.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputReads::Paths(paths) if paths.iter().any(Vec::is_empty) => {
                f.write_str("all of input")
            }
            InputReads::Paths(paths) => {
                let shown: Vec<String> =
                    paths.iter().map(|p| format!("input.{}", p.join("."))).collect();
                f.write_str(&shown.join(", "))
            }
            InputReads::NotMemoisable(why) => write!(f, "not memoisable ({why})"),
        }
    }
}

impl InputReads {
    /// What the policy made of `modules` can read of its input.
    pub fn of(modules: &[Ref<Module>]) -> InputReads {
        // regorus resolves a call to a rule or an import alias before a
        // built-in: where a module could make `object.get` mean its own
        // function, its path reading is not assumed.
        let builtin_object_get = !modules.iter().any(|m| {
            m.imports.iter().any(|i| {
                let alias = match &i.r#as {
                    Some(span) => Some(span.text().to_owned()),
                    None => last_name(&i.refr),
                };
                alias.as_deref() == Some("object")
            }) || m.policy.iter().any(|r| {
                let head = match r.as_ref() {
                    Rule::Spec { head, .. } => match head {
                        RuleHead::Compr { refr, .. }
                        | RuleHead::Set { refr, .. }
                        | RuleHead::Func { refr, .. } => refr,
                    },
                    Rule::Default { refr, .. } => refr,
                };
                root_name(head).as_deref() == Some("object")
            })
        });
        let mut w = Walker { paths: Vec::new(), refused: None, builtin_object_get };
        for m in modules {
            for import in &m.imports {
                // `import input.x.y as z`: everything `z` reaches is below
                // input.x.y.
                if let Some((path, _)) = input_path(&import.refr, &mut w) {
                    w.paths.push(path);
                }
            }
            for rule in &m.policy {
                w.rule(rule);
            }
        }
        match w.refused {
            Some(why) => InputReads::NotMemoisable(why),
            None => InputReads::Paths(minimal(w.paths)),
        }
    }

    /// SHA-256 over the input's values at the read paths (an unambiguous
    /// encoding: type tags and lengths), or `None` when the policy is not
    /// memoisable.
    pub fn digest(&self, input: &Value) -> Option<[u8; 32]> {
        let InputReads::Paths(paths) = self else { return None };
        // regorus reads an object keyed `$serde_json::private::…` as a
        // number and refuses the input when it has other keys: such an
        // input is evaluated (and refused), wherever the key is.
        if has_private_key(input) {
            return None;
        }
        // Encoded into one buffer and hashed once: many small digest
        // updates cost more than the hashing.
        let mut buf = Vec::with_capacity(4096);
        for path in paths {
            buf.extend_from_slice(&(path.len() as u64).to_le_bytes());
            let mut here = input;
            let mut depth = 0;
            for k in path {
                match here {
                    Value::Object(m) => match m.get(k) {
                        Some(v) => {
                            here = v;
                            depth += 1;
                        }
                        // Absent: every lookup below it is undefined too.
                        None => break,
                    },
                    // Not an object: `.k` is undefined on it, whatever it
                    // holds; its whole value is hashed below, which is
                    // more than needed and always enough.
                    _ => break,
                }
            }
            // How far the path was followed, then what is there (absent
            // when it stopped at an object without the next key).
            buf.extend_from_slice(&(depth as u64).to_le_bytes());
            let absent = depth < path.len() && matches!(here, Value::Object(_));
            if absent {
                buf.push(b'A');
            } else {
                encode(&mut buf, here);
            }
        }
        let d = ring::digest::digest(&ring::digest::SHA256, &buf);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Some(out)
    }
}

fn has_private_key(v: &Value) -> bool {
    match v {
        Value::Array(items) => items.iter().any(has_private_key),
        Value::Object(m) => {
            m.iter().any(|(k, v)| k.starts_with("$serde_json::private") || has_private_key(v))
        }
        _ => false,
    }
}

/// Appends `v` to `buf` in an encoding that reads back one way only: a
/// type tag, then lengths before contents, object keys sorted.
fn encode(buf: &mut Vec<u8>, v: &Value) {
    fn bytes(buf: &mut Vec<u8>, tag: u8, b: &[u8]) {
        buf.push(tag);
        buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
        buf.extend_from_slice(b);
    }
    match v {
        Value::Null => buf.push(b'n'),
        Value::Bool(b) => buf.push(if *b { b't' } else { b'f' }),
        // serde_json prints a number the same way each time it holds the
        // same value; `1` and `1.0` hash apart, which only costs a miss.
        Value::Number(n) => {
            use std::io::Write;
            buf.push(b'#');
            let at = buf.len();
            buf.extend_from_slice(&[0; 8]);
            // Writing to a Vec cannot fail.
            let _ = write!(buf, "{n}");
            let len = (buf.len() - at - 8) as u64;
            buf[at..at + 8].copy_from_slice(&len.to_le_bytes());
        }
        Value::String(s) => bytes(buf, b's', s.as_bytes()),
        Value::Array(items) => {
            buf.push(b'[');
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                encode(buf, i);
            }
        }
        Value::Object(m) => {
            buf.push(b'{');
            buf.extend_from_slice(&(m.len() as u64).to_le_bytes());
            let mut entry = |k: &String, v: &Value| {
                bytes(buf, b'k', k.as_bytes());
                encode(buf, v);
            };
            // serde_json keeps keys sorted unless built with
            // `preserve_order`; sort only when they are not.
            if m.keys().zip(m.keys().skip(1)).all(|(a, b)| a <= b) {
                m.iter().for_each(|(k, v)| entry(k, v));
            } else {
                let mut entries: Vec<(&String, &Value)> = m.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                entries.into_iter().for_each(|(k, v)| entry(k, v));
            }
        }
    }
}

/// Drops every path that has another as a prefix (the shorter one's value
/// contains it), and duplicates.
fn minimal(mut paths: Vec<Path>) -> Vec<Path> {
    paths.sort();
    paths.dedup();
    let mut out: Vec<Path> = Vec::new();
    for p in paths {
        // Sorted: a prefix of `p` sorts before it, and the last kept path
        // is the only candidate among kept ones.
        if out.last().is_some_and(|q| p.starts_with(q)) {
            continue;
        }
        out.push(p);
    }
    out
}

struct Walker {
    paths: Vec<Path>,
    refused: Option<String>,
    /// Whether `object.get` is surely regorus' built-in (no rule or
    /// import named `object`).
    builtin_object_get: bool,
}

/// The first name of a reference (`object` of `object.get`).
fn root_name(e: &Expr) -> Option<String> {
    let mut here = e;
    loop {
        match here {
            Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => here = refr,
            Expr::Var { value: regorus::Value::String(s), .. } => {
                return Some(s.as_ref().to_owned())
            }
            _ => return None,
        }
    }
}

/// The last name of a reference (`lib` of `data.tellus.lib`).
fn last_name(e: &Expr) -> Option<String> {
    match e {
        Expr::RefDot { field: (_, regorus::Value::String(s)), .. } => Some(s.as_ref().to_owned()),
        Expr::RefBrack { index, .. } => const_key(index),
        Expr::Var { value: regorus::Value::String(s), .. } => Some(s.as_ref().to_owned()),
        _ => None,
    }
}

fn is_input_var(e: &Expr) -> bool {
    matches!(e, Expr::Var { value: regorus::Value::String(s), .. } if s.as_ref() == "input")
}

fn const_key(e: &Expr) -> Option<String> {
    match e {
        Expr::String { value: regorus::Value::String(s), .. }
        | Expr::RawString { value: regorus::Value::String(s), .. } => Some(s.as_ref().to_owned()),
        _ => None,
    }
}

/// If `e` is a reference rooted at `input`, the constant path it names up
/// to its first non-constant step, and whether every step is constant; the
/// walker visits the non-constant indexes (they may read the input
/// themselves).
fn input_path(e: &Expr, w: &mut Walker) -> Option<(Path, bool)> {
    // Steps from the tip down to the root.
    let mut steps: Vec<Option<String>> = Vec::new();
    let mut dynamic: Vec<&Expr> = Vec::new();
    let mut here = e;
    loop {
        match here {
            Expr::RefDot { refr, field: (_, regorus::Value::String(s)), .. } => {
                steps.push(Some(s.as_ref().to_owned()));
                here = refr;
            }
            Expr::RefDot { refr, .. } => {
                steps.push(None);
                here = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                match const_key(index) {
                    Some(k) => steps.push(Some(k)),
                    None => {
                        steps.push(None);
                        dynamic.push(index);
                    }
                }
                here = refr;
            }
            other if is_input_var(other) => break,
            _ => return None,
        }
    }
    let whole = steps.iter().all(Option::is_some);
    for d in dynamic {
        w.expr(d);
    }
    Some((steps.into_iter().rev().map_while(|s| s).collect(), whole))
}

/// `object.get`'s key argument as constant steps: a string, or an array
/// literal of strings (a path).
fn const_steps(e: &Expr) -> Option<Path> {
    if let Some(k) = const_key(e) {
        return Some(vec![k]);
    }
    match e {
        Expr::Array { items, .. } => items.iter().map(|i| const_key(i)).collect(),
        _ => None,
    }
}

/// `a.b.c` of a function reference.
fn dotted(e: &Expr) -> Option<String> {
    let mut names = Vec::new();
    let mut here = e;
    loop {
        match here {
            Expr::Var { value: regorus::Value::String(s), .. } => {
                names.push(s.as_ref());
                break;
            }
            Expr::RefDot { refr, field: (_, regorus::Value::String(s)), .. } => {
                names.push(s.as_ref());
                here = refr;
            }
            _ => return None,
        }
    }
    names.reverse();
    Some(names.join("."))
}

impl Walker {
    fn refuse(&mut self, why: String) {
        if self.refused.is_none() {
            self.refused = Some(why);
        }
    }

    fn rule(&mut self, r: &Rule) {
        match r {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        self.expr(refr);
                        if let Some(a) = assign {
                            self.expr(&a.value);
                        }
                    }
                    RuleHead::Set { refr, key, .. } => {
                        self.expr(refr);
                        if let Some(k) = key {
                            self.expr(k);
                        }
                    }
                    RuleHead::Func { refr, args, assign, .. } => {
                        self.expr(refr);
                        for a in args {
                            self.expr(a);
                        }
                        if let Some(a) = assign {
                            self.expr(&a.value);
                        }
                    }
                }
                for b in bodies {
                    if let Some(a) = &b.assign {
                        self.expr(&a.value);
                    }
                    self.query(&b.query);
                }
            }
            Rule::Default { refr, args, value, .. } => {
                self.expr(refr);
                for a in args {
                    self.expr(a);
                }
                self.expr(value);
            }
        }
    }

    fn query(&mut self, q: &Query) {
        for s in &q.stmts {
            if !s.with_mods.is_empty() {
                self.refuse(format!(
                    "line {}: `with` replaces part of the input or data for one statement",
                    s.span.line
                ));
            }
            match &s.literal {
                Literal::SomeVars { vars, .. } => {
                    if vars.iter().any(|v| v.text() == "input") {
                        self.paths.push(Vec::new());
                    }
                }
                Literal::SomeIn { key, value, collection, .. } => {
                    if let Some(k) = key {
                        self.expr(k);
                    }
                    self.expr(value);
                    self.expr(collection);
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr),
                Literal::Every { key, value, domain, query, .. } => {
                    if value.text() == "input" || key.as_ref().is_some_and(|k| k.text() == "input")
                    {
                        self.paths.push(Vec::new());
                    }
                    self.expr(domain);
                    self.query(query);
                }
            }
        }
    }

    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => {}
            Expr::Var { .. } => {
                if is_input_var(e) {
                    self.paths.push(Vec::new());
                }
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                for i in items {
                    self.expr(i);
                }
            }
            Expr::Object { fields, .. } => {
                for (_, k, v) in fields {
                    self.expr(k);
                    self.expr(v);
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.expr(term);
                self.query(query);
            }
            Expr::ObjectCompr { key, value, query, .. } => {
                self.expr(key);
                self.expr(value);
                self.query(query);
            }
            Expr::Call { fcn, params, span, .. } => self.call(fcn, params, span.line),
            Expr::UnaryExpr { expr, .. } => self.expr(expr),
            Expr::RefDot { refr, .. } => match input_path(e, self) {
                Some((p, _)) => self.paths.push(p),
                None => self.expr(refr),
            },
            Expr::RefBrack { refr, index, .. } => match input_path(e, self) {
                Some((p, _)) => self.paths.push(p),
                None => {
                    self.expr(refr);
                    self.expr(index);
                }
            },
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::Membership { key, value, collection, .. } => {
                if let Some(k) = key {
                    self.expr(k);
                }
                self.expr(value);
                self.expr(collection);
            }
        }
    }

    fn call(&mut self, fcn: &Expr, params: &[Ref<Expr>], line: u32) {
        let Some(name) = dotted(fcn) else {
            self.refuse(format!("line {line}: a call whose function is not a plain name"));
            return;
        };
        let builtin = regorus::unstable::BUILTINS.contains_key(name.as_str());
        if NONDETERMINISTIC_BUILTINS.contains(&name.as_str())
            || (builtin && !DETERMINISTIC_BUILTINS.contains(&name.as_str()))
        {
            self.refuse(format!("line {line}: {name} can answer differently each time"));
        }
        if name == "object.get" && self.builtin_object_get && params.len() == 3 {
            if let Some((mut path, whole_ref)) = input_path(&params[0], self) {
                // The whole path when the reference and the key are both
                // constant, else what the reference names.
                if let (true, Some(steps)) = (whole_ref, const_steps(&params[1])) {
                    path.extend(steps);
                } else {
                    self.expr(&params[1]);
                }
                self.paths.push(path);
                self.expr(&params[2]);
                return;
            }
        }
        for p in params {
            self.expr(p);
        }
    }
}
