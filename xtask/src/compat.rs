//! `compat`: every difference between a blessed contract document and the one the code
//! generates now, classified as breaking or compatible (ORCH-9014).
//!
//! The rules follow the direction of the data, as oasdiff does: what a client *sends*
//! (request bodies, parameters, the config file) may widen but not narrow; what a
//! client *reads* (responses, SSE events, the error envelope) may gain optional members
//! and enum values (clients tolerate unknown ones, ORCH-9015) but must not lose members,
//! values, statuses or headers, nor widen a type or a bound.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::LazyLock;

use serde_json::{Map, Value};

/// An empty object, for absent `properties` / `responses` / `headers` / `content`.
static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

/// Which way data flows through a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The client writes it: requests, parameters, a config file.
    Input,
    /// The client reads it: responses, events.
    Output,
}

/// One classified difference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// JSON-pointer-like location in the document, e.g.
    /// `/paths/~1v1~1tasks/post/responses/202/content/application~1json/schema/properties/task_id`.
    pub path: String,
    /// The rule's stable name, e.g. `response-property-removed`.
    pub rule: &'static str,
    pub breaking: bool,
    pub detail: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.breaking {
            "BREAKING"
        } else {
            "compatible"
        };
        write!(
            f,
            "{verdict} [{}] {}: {}",
            self.rule, self.path, self.detail
        )
    }
}

/// Every rule `compat` applies, with whether it breaks (for `--help`-like listings and
/// the fixture test).
pub const RULES: &[(&str, bool)] = &[
    ("operation-removed", true),
    ("operation-added", false),
    ("response-status-removed", true),
    ("response-status-added", false),
    ("response-header-removed", true),
    ("response-header-added", false),
    ("response-media-type-removed", true),
    ("x-req-id-removed", true),
    ("x-req-id-added", false),
    ("request-body-became-required", true),
    ("request-parameter-removed", true),
    ("request-parameter-added-required", true),
    ("request-parameter-added", false),
    ("request-parameter-became-required", true),
    ("request-property-removed", true),
    ("request-property-added-required", true),
    ("request-property-added", false),
    ("request-property-became-required", true),
    ("request-additional-properties-narrowed", true),
    ("response-property-removed", true),
    ("response-property-became-optional", true),
    ("response-property-added", false),
    ("enum-value-removed", true),
    ("request-enum-value-added", false),
    ("response-enum-value-added", false),
    ("request-type-narrowed", true),
    ("response-type-widened", true),
    ("request-type-widened", false),
    ("response-type-narrowed", false),
    ("request-constraint-narrowed", true),
    ("request-constraint-widened", false),
    ("response-constraint-widened", true),
    ("response-constraint-narrowed", false),
    ("request-variant-removed", true),
    ("response-variant-removed", true),
    ("variant-added", false),
    ("version-lowered", true),
];

fn breaks(rule: &'static str) -> bool {
    RULES
        .iter()
        .find(|(r, _)| *r == rule)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("compat rule {rule} is not in RULES"))
}

/// JSON-pointer escaping of one segment.
fn seg(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

struct Diff<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    changes: Vec<Change>,
    /// (old ref, new ref, direction) pairs already compared: recursive schemas end.
    seen: BTreeSet<(String, String, bool)>,
}

impl<'a> Diff<'a> {
    fn push(&mut self, path: &str, rule: &'static str, detail: impl Into<String>) {
        self.changes.push(Change {
            path: path.to_string(),
            rule,
            breaking: breaks(rule),
            detail: detail.into(),
        });
    }

    /// Follow a local `$ref` (`#/components/schemas/X` or `#/$defs/X`).
    fn resolve(root: &'a Value, v: &'a Value) -> &'a Value {
        let mut cur = v;
        for _ in 0..16 {
            match cur.get("$ref").and_then(Value::as_str) {
                Some(r) if r.starts_with('#') => match root.pointer(&r[1..]) {
                    Some(target) => cur = target,
                    None => return cur,
                },
                _ => return cur,
            }
        }
        cur
    }

    fn schema(&mut self, path: &str, old: &'a Value, new: &'a Value, dir: Direction) {
        let old_ref = old.get("$ref").and_then(Value::as_str).map(str::to_string);
        let new_ref = new.get("$ref").and_then(Value::as_str).map(str::to_string);
        if let (Some(o), Some(n)) = (&old_ref, &new_ref)
            && !self
                .seen
                .insert((o.clone(), n.clone(), dir == Direction::Input))
        {
            return;
        }
        let old = Self::resolve(self.old_root, old);
        let new = Self::resolve(self.new_root, new);
        self.types(path, old, new, dir);
        self.enums(path, old, new, dir);
        self.bounds(path, old, new, dir);
        self.properties(path, old, new, dir);
        if let (Some(o), Some(n)) = (old.get("items"), new.get("items")) {
            self.schema(&format!("{path}/items"), o, n, dir);
        }
        for key in ["oneOf", "anyOf"] {
            self.variants(path, key, old, new, dir);
        }
    }

    fn type_set(v: &Value) -> Option<BTreeSet<String>> {
        let mut set: BTreeSet<String> = match v.get("type")? {
            Value::String(s) => [s.clone()].into(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            _ => return None,
        };
        // An integer is a number; a number schema accepts integers.
        if set.contains("number") {
            set.insert("integer".into());
        }
        Some(set)
    }

    fn types(&mut self, path: &str, old: &Value, new: &Value, dir: Direction) {
        let (Some(o), Some(n)) = (Self::type_set(old), Self::type_set(new)) else {
            return;
        };
        if o == n {
            return;
        }
        let lost: Vec<_> = o.difference(&n).cloned().collect();
        let gained: Vec<_> = n.difference(&o).cloned().collect();
        let detail = format!("type {o:?} became {n:?}");
        let rule = match dir {
            Direction::Input if !lost.is_empty() => "request-type-narrowed",
            Direction::Input => "request-type-widened",
            Direction::Output if !gained.is_empty() => "response-type-widened",
            Direction::Output => "response-type-narrowed",
        };
        self.push(path, rule, detail);
    }

    fn enums(&mut self, path: &str, old: &Value, new: &Value, dir: Direction) {
        let values = |v: &Value| -> Option<Vec<Value>> { v.get("enum")?.as_array().cloned() };
        let (Some(o), Some(n)) = (values(old), values(new)) else {
            return;
        };
        for value in &o {
            if !n.contains(value) {
                self.push(
                    path,
                    "enum-value-removed",
                    format!("enum value {value} removed"),
                );
            }
        }
        for value in &n {
            if !o.contains(value) {
                let rule = match dir {
                    Direction::Input => "request-enum-value-added",
                    Direction::Output => "response-enum-value-added",
                };
                self.push(path, rule, format!("enum value {value} added"));
            }
        }
    }

    /// Numeric and length bounds, and patterns. `narrower` is true when the new value
    /// accepts less than the old one.
    fn bounds(&mut self, path: &str, old: &Value, new: &Value, dir: Direction) {
        const LOWER: [&str; 4] = ["minimum", "exclusiveMinimum", "minLength", "minItems"];
        const UPPER: [&str; 4] = ["maximum", "exclusiveMaximum", "maxLength", "maxItems"];
        let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
        let mut found: Vec<(String, bool)> = Vec::new();
        for k in LOWER {
            match (num(old, k), num(new, k)) {
                (Some(a), Some(b)) if a != b => found.push((format!("{k} {a} → {b}"), b > a)),
                (None, Some(b)) => found.push((format!("{k} added ({b})"), true)),
                (Some(a), None) => found.push((format!("{k} {a} removed"), false)),
                _ => {}
            }
        }
        for k in UPPER {
            match (num(old, k), num(new, k)) {
                (Some(a), Some(b)) if a != b => found.push((format!("{k} {a} → {b}"), b < a)),
                (None, Some(b)) => found.push((format!("{k} added ({b})"), true)),
                (Some(a), None) => found.push((format!("{k} {a} removed"), false)),
                _ => {}
            }
        }
        match (
            old.get("pattern").and_then(Value::as_str),
            new.get("pattern").and_then(Value::as_str),
        ) {
            (Some(a), Some(b)) if a != b => {
                // A changed pattern may accept less and more at once: both rules fire.
                found.push((format!("pattern {a:?} → {b:?}"), true));
                found.push((format!("pattern {a:?} → {b:?}"), false));
            }
            (None, Some(b)) => found.push((format!("pattern {b:?} added"), true)),
            (Some(a), None) => found.push((format!("pattern {a:?} removed"), false)),
            _ => {}
        }
        for (detail, narrower) in found {
            let rule = match (dir, narrower) {
                (Direction::Input, true) => "request-constraint-narrowed",
                (Direction::Input, false) => "request-constraint-widened",
                (Direction::Output, true) => "response-constraint-narrowed",
                (Direction::Output, false) => "response-constraint-widened",
            };
            self.push(path, rule, detail);
        }
    }

    fn required(v: &Value) -> BTreeSet<String> {
        v.get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    }

    fn properties(&mut self, path: &str, old: &'a Value, new: &'a Value, dir: Direction) {
        let op = old
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        let np = new
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        if op.is_empty() && np.is_empty() {
            return;
        }
        let (or, nr) = (Self::required(old), Self::required(new));
        for (name, o) in op {
            let at = format!("{path}/properties/{}", seg(name));
            match np.get(name) {
                None => {
                    let rule = match dir {
                        Direction::Input => "request-property-removed",
                        Direction::Output => "response-property-removed",
                    };
                    self.push(&at, rule, format!("property {name:?} removed"));
                }
                Some(n) => {
                    match (dir, or.contains(name), nr.contains(name)) {
                        (Direction::Input, false, true) => self.push(
                            &at,
                            "request-property-became-required",
                            format!("property {name:?} became required"),
                        ),
                        (Direction::Output, true, false) => self.push(
                            &at,
                            "response-property-became-optional",
                            format!("property {name:?} is no longer always present"),
                        ),
                        _ => {}
                    }
                    self.schema(&at, o, n, dir);
                }
            }
        }
        for name in np.keys().filter(|k| !op.contains_key(*k)) {
            let at = format!("{path}/properties/{}", seg(name));
            let rule = match (dir, nr.contains(name)) {
                (Direction::Input, true) => "request-property-added-required",
                (Direction::Input, false) => "request-property-added",
                (Direction::Output, _) => "response-property-added",
            };
            self.push(&at, rule, format!("property {name:?} added"));
        }
        if dir == Direction::Input
            && old.get("additionalProperties") != Some(&Value::Bool(false))
            && new.get("additionalProperties") == Some(&Value::Bool(false))
        {
            self.push(
                path,
                "request-additional-properties-narrowed",
                "unknown properties are now refused",
            );
        }
    }

    /// A stable key for each branch of a `oneOf`/`anyOf`: its `$ref`, its `const`, or
    /// the single enum value or const of a discriminating property (`event: started`),
    /// or its index.
    fn variant_key(v: &Value, index: usize) -> String {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            return r.rsplit('/').next().unwrap_or(r).to_string();
        }
        // A documented enum value is a branch of its own (schemars: `{const, description}`).
        if let Some(only) = v.get("const") {
            return format!("const={only}");
        }
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (name, p) in props {
                if let Some([only]) = p.get("enum").and_then(Value::as_array).map(Vec::as_slice) {
                    return format!("{name}={only}");
                }
                if let Some(only) = p.get("const") {
                    return format!("{name}={only}");
                }
            }
        }
        if let Some(t) = v.get("type").and_then(Value::as_str) {
            return format!("type={t}");
        }
        format!("#{index}")
    }

    fn variants(&mut self, path: &str, key: &str, old: &'a Value, new: &'a Value, dir: Direction) {
        let list = |v: &'a Value| -> BTreeMap<String, &'a Value> {
            v.get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .fold(BTreeMap::new(), |mut keyed, (i, b)| {
                    // Two branches with one key (`type=object` twice) must not
                    // hide each other: the later one is keyed by its index.
                    let key = Self::variant_key(b, i);
                    let key = if keyed.contains_key(&key) {
                        format!("#{i}")
                    } else {
                        key
                    };
                    keyed.insert(key, b);
                    keyed
                })
        };
        let (o, n) = (list(old), list(new));
        for (k, ov) in &o {
            let at = format!("{path}/{key}[{k}]");
            match n.get(k) {
                Some(nv) => self.schema(&at, ov, nv, dir),
                None => {
                    let rule = match dir {
                        Direction::Input => "request-variant-removed",
                        Direction::Output => "response-variant-removed",
                    };
                    self.push(&at, rule, format!("variant {k} removed"));
                }
            }
        }
        for k in n.keys().filter(|k| !o.contains_key(*k)) {
            self.push(
                &format!("{path}/{key}[{k}]"),
                "variant-added",
                format!("variant {k} added"),
            );
        }
    }
}

fn req_ids(v: &Value) -> BTreeSet<String> {
    crate::openapi::req_ids(v.get("x-req-id"))
        .into_iter()
        .collect()
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Compare two OpenAPI documents.
pub fn openapi(old: &Value, new: &Value) -> Vec<Change> {
    let mut d = Diff {
        old_root: old,
        new_root: new,
        changes: Vec::new(),
        seen: BTreeSet::new(),
    };
    let paths = |v: &'_ Value| v.get("paths").and_then(Value::as_object).cloned();
    let (op, np) = (
        paths(old).unwrap_or_default(),
        paths(new).unwrap_or_default(),
    );
    for (p, old_item) in &op {
        for m in METHODS {
            let Some(o) = old_item.get(m) else { continue };
            let at = format!("/paths/{}/{m}", seg(p));
            match np.get(p).and_then(|item| item.get(m)) {
                None => d.push(
                    &at,
                    "operation-removed",
                    format!("{} {p} removed", m.to_uppercase()),
                ),
                Some(n) => operation(&mut d, &at, o, n),
            }
        }
    }
    for (p, new_item) in &np {
        for m in METHODS {
            if new_item.get(m).is_some() && op.get(p).and_then(|i| i.get(m)).is_none() {
                d.push(
                    &format!("/paths/{}/{m}", seg(p)),
                    "operation-added",
                    format!("{} {p} added", m.to_uppercase()),
                );
            }
        }
    }
    version(
        &mut d,
        "/info/version",
        old.pointer("/info/version"),
        new.pointer("/info/version"),
    );
    d.changes.sort();
    d.changes
}

fn x_req_ids(d: &mut Diff<'_>, at: &str, old: &Value, new: &Value) {
    let (o, n) = (req_ids(old), req_ids(new));
    for id in o.difference(&n) {
        d.push(at, "x-req-id-removed", format!("x-req-id {id} removed"));
    }
    for id in n.difference(&o) {
        d.push(at, "x-req-id-added", format!("x-req-id {id} added"));
    }
}

fn operation<'a>(d: &mut Diff<'a>, at: &str, old: &'a Value, new: &'a Value) {
    x_req_ids(d, at, old, new);
    // Parameters, keyed by (in, name).
    let params = |v: &'a Value| -> BTreeMap<(String, String), &'a Value> {
        v.get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                ((s("in"), s("name")), p)
            })
            .collect()
    };
    let (op, np) = (params(old), params(new));
    let required = |p: &Value| p.get("required") == Some(&Value::Bool(true));
    for ((loc, name), o) in &op {
        let pat = format!("{at}/parameters/{loc}/{}", seg(name));
        match np.get(&(loc.clone(), name.clone())) {
            None => d.push(
                &pat,
                "request-parameter-removed",
                format!("{loc} parameter {name:?} removed"),
            ),
            Some(n) => {
                if !required(o) && required(n) {
                    d.push(
                        &pat,
                        "request-parameter-became-required",
                        format!("{loc} parameter {name:?} became required"),
                    );
                }
                if let (Some(os), Some(ns)) = (o.get("schema"), n.get("schema")) {
                    d.schema(&format!("{pat}/schema"), os, ns, Direction::Input);
                }
            }
        }
    }
    for ((loc, name), n) in &np {
        if !op.contains_key(&(loc.clone(), name.clone())) {
            let rule = if required(n) {
                "request-parameter-added-required"
            } else {
                "request-parameter-added"
            };
            d.push(
                &format!("{at}/parameters/{loc}/{}", seg(name)),
                rule,
                format!("{loc} parameter {name:?} added"),
            );
        }
    }
    // Request body.
    if let (Some(ob), Some(nb)) = (old.get("requestBody"), new.get("requestBody")) {
        if ob.get("required") != Some(&Value::Bool(true))
            && nb.get("required") == Some(&Value::Bool(true))
        {
            d.push(
                &format!("{at}/requestBody"),
                "request-body-became-required",
                "the request body became required",
            );
        }
        content(d, &format!("{at}/requestBody"), ob, nb, Direction::Input);
    }
    // Responses.
    let responses = |v: &'a Value| {
        v.get("responses")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY)
    };
    let (or, nr) = (responses(old), responses(new));
    for (status, o) in or {
        let rat = format!("{at}/responses/{status}");
        let Some(n) = nr.get(status) else {
            d.push(
                &rat,
                "response-status-removed",
                format!("status {status} removed"),
            );
            continue;
        };
        x_req_ids(d, &rat, o, n);
        let headers = |v: &'a Value| {
            v.get("headers")
                .and_then(Value::as_object)
                .unwrap_or(&EMPTY)
        };
        for name in headers(o).keys() {
            let lower = name.to_ascii_lowercase();
            if !headers(n).keys().any(|k| k.to_ascii_lowercase() == lower) {
                d.push(
                    &format!("{rat}/headers/{}", seg(name)),
                    "response-header-removed",
                    format!("header {name} removed"),
                );
            }
        }
        for name in headers(n).keys() {
            let lower = name.to_ascii_lowercase();
            if !headers(o).keys().any(|k| k.to_ascii_lowercase() == lower) {
                d.push(
                    &format!("{rat}/headers/{}", seg(name)),
                    "response-header-added",
                    format!("header {name} added"),
                );
            }
        }
        content(d, &rat, o, n, Direction::Output);
    }
    for status in nr.keys().filter(|s| !or.contains_key(*s)) {
        d.push(
            &format!("{at}/responses/{status}"),
            "response-status-added",
            format!("status {status} added"),
        );
    }
}

fn content<'a>(d: &mut Diff<'a>, at: &str, old: &'a Value, new: &'a Value, dir: Direction) {
    let media = |v: &'a Value| {
        v.get("content")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY)
    };
    for (mt, o) in media(old) {
        let mat = format!("{at}/content/{}", seg(mt));
        match media(new).get(mt) {
            None if dir == Direction::Output => d.push(
                &mat,
                "response-media-type-removed",
                format!("media type {mt} removed"),
            ),
            None => {}
            Some(n) => {
                if let (Some(os), Some(ns)) = (o.get("schema"), n.get("schema")) {
                    d.schema(&format!("{mat}/schema"), os, ns, dir);
                }
            }
        }
    }
}

/// Compare two JSON Schemas (a document of its own, `$defs` local).
pub fn json_schema(old: &Value, new: &Value, dir: Direction) -> Vec<Change> {
    let mut d = Diff {
        old_root: old,
        new_root: new,
        changes: Vec::new(),
        seen: BTreeSet::new(),
    };
    d.schema("", old, new, dir);
    version(
        &mut d,
        "/x-version",
        old.get("x-version"),
        new.get("x-version"),
    );
    d.changes.sort();
    d.changes
}

fn version(d: &mut Diff<'_>, at: &str, old: Option<&Value>, new: Option<&Value>) {
    let parse = |v: Option<&Value>| v.and_then(Value::as_str).and_then(Semver::parse);
    if let (Some(o), Some(n)) = (parse(old), parse(new))
        && n < o
    {
        d.push(at, "version-lowered", format!("version {o} → {n}"));
    }
}

/// `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Semver {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Semver {
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('.').map(|p| p.parse::<u64>().ok());
        let v = Semver {
            major: it.next()??,
            minor: it.next()??,
            patch: it.next()??,
        };
        it.next().is_none().then_some(v)
    }
}

impl fmt::Display for Semver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The smallest version bump a set of changes needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bump {
    /// Only descriptions or examples changed.
    Patch,
    /// Compatible additions.
    Minor,
    /// At least one breaking change.
    Major,
}

pub fn required_bump(changes: &[Change]) -> Bump {
    if changes.iter().any(|c| c.breaking) {
        Bump::Major
    } else if changes.is_empty() {
        Bump::Patch
    } else {
        Bump::Minor
    }
}

/// Whether going from `old` to `new` is at least the bump `needed`.
pub fn bumped_enough(old: Semver, new: Semver, needed: Bump) -> bool {
    match needed {
        Bump::Major => new.major > old.major,
        Bump::Minor => new.major > old.major || (new.major == old.major && new.minor > old.minor),
        Bump::Patch => new > old,
    }
}
