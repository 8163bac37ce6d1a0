//! Every rule of `cargo xtask compat` on a pair of fixture documents: one change that
//! breaks (the rule fires, breaking) and one of the same kind that does not (no
//! breaking change reported).

use serde_json::{Value, json};
use xtask::compat::{self, Change, Direction, RULES};

/// A small OpenAPI document with one operation of each shape the rules look at.
fn base() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "fixture", "version": "1.0.0"},
        "paths": {
            "/v1/things": {
                "post": {
                    "x-req-id": ["ORCH-1001"],
                    "parameters": [
                        {"name": "scope", "in": "query", "required": false,
                         "schema": {"type": ["string", "null"], "maxLength": 128, "pattern": "^[a-z]+$"}}
                    ],
                    "requestBody": {"required": false, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ThingRequest"}}}},
                    "responses": {
                        "202": {"description": "ok", "x-req-id": ["ORCH-1001"],
                            "headers": {"X-Queue-Position": {"schema": {"type": "integer"}}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                        "429": {"description": "full", "x-req-id": ["ORCH-2010"],
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}}
                    }
                }
            }
        },
        "components": {"schemas": {
            "ThingRequest": {
                "type": "object",
                "properties": {
                    "prompt": {"type": "string", "minLength": 1},
                    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
                    "priority": {"type": "string", "enum": ["interactive", "batch"]},
                    "seed": {"type": ["integer", "null"]}
                },
                "required": ["prompt"]
            },
            "Thing": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "maxLength": 128},
                    "state": {"type": "string", "enum": ["queued", "done"]},
                    "position": {"type": "integer", "minimum": 0, "maximum": 100},
                    "note": {"type": ["string", "null"]},
                    "event": {"oneOf": [
                        {"type": "object", "properties": {"event": {"enum": ["started"]}}},
                        {"type": "object", "properties": {"event": {"enum": ["end"]}}}
                    ]}
                },
                "required": ["id", "state"]
            }
        }}
    })
}

fn at<'a>(doc: &'a mut Value, pointer: &str) -> &'a mut Value {
    doc.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("fixture has no {pointer}"))
}

fn remove(doc: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    let key = key.as_str();
    let parent = at(doc, parent);
    match parent {
        Value::Object(m) => {
            m.remove(key).unwrap_or_else(|| panic!("no {pointer}"));
        }
        Value::Array(a) => {
            a.remove(key.parse().unwrap());
        }
        _ => panic!("{pointer} is not in a container"),
    }
}

const REQ: &str = "/components/schemas/ThingRequest";
const RES: &str = "/components/schemas/Thing";
const OP: &str = "/paths/~1v1~1things/post";

type Edit = fn(&mut Value);

/// rule → (an edit that breaks, an edit of the same kind that is compatible).
/// Compatible rules have `None` as their breaking edit.
fn cases() -> Vec<(&'static str, Option<Edit>, Edit)> {
    vec![
        (
            "operation-removed",
            Some(|d| remove(d, "/paths/~1v1~1things")),
            |d| {
                at(d, "/paths")["/v1/other"] = json!({"get": {"responses": {}}});
            },
        ),
        ("operation-added", None, |d| {
            at(d, "/paths")["/v1/other"] = json!({"get": {"responses": {}}});
        }),
        (
            "response-status-removed",
            Some(|d| remove(d, &format!("{OP}/responses/429"))),
            |d| {
                at(d, &format!("{OP}/responses"))["503"] = json!({"description": "x"});
            },
        ),
        ("response-status-added", None, |d| {
            at(d, &format!("{OP}/responses"))["503"] = json!({"description": "x"});
        }),
        (
            "response-header-removed",
            Some(|d| remove(d, &format!("{OP}/responses/202/headers/X-Queue-Position"))),
            |d| {
                at(d, &format!("{OP}/responses/202/headers"))["X-Queue-ETA-Ms"] =
                    json!({"schema": {"type": "integer"}});
            },
        ),
        ("response-header-added", None, |d| {
            at(d, &format!("{OP}/responses/202/headers"))["X-Queue-ETA-Ms"] =
                json!({"schema": {"type": "integer"}});
        }),
        (
            "response-media-type-removed",
            Some(|d| remove(d, &format!("{OP}/responses/202/content/application~1json"))),
            |d| {
                at(d, &format!("{OP}/responses/202/content"))["text/plain"] =
                    json!({"schema": {"type": "string"}});
            },
        ),
        (
            "x-req-id-removed",
            Some(|d| *at(d, &format!("{OP}/x-req-id")) = json!([])),
            |d| {
                *at(d, &format!("{OP}/x-req-id")) = json!(["ORCH-1001", "ORCH-1002"]);
            },
        ),
        ("x-req-id-added", None, |d| {
            *at(d, &format!("{OP}/x-req-id")) = json!(["ORCH-1001", "ORCH-1002"]);
        }),
        (
            "request-body-became-required",
            Some(|d| *at(d, &format!("{OP}/requestBody/required")) = json!(true)),
            |d| {
                *at(d, &format!("{OP}/requestBody/required")) = json!(false);
            },
        ),
        (
            "request-parameter-removed",
            Some(|d| remove(d, &format!("{OP}/parameters/0"))),
            |d| {
                at(d, &format!("{OP}/parameters"))
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "limit", "in": "query", "schema": {"type": "integer"}}));
            },
        ),
        (
            "request-parameter-added-required",
            Some(|d| {
                at(d, &format!("{OP}/parameters")).as_array_mut().unwrap().push(json!({"name": "limit", "in": "query", "required": true, "schema": {"type": "integer"}}));
            }),
            |d| {
                at(d, &format!("{OP}/parameters"))
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "limit", "in": "query", "schema": {"type": "integer"}}));
            },
        ),
        ("request-parameter-added", None, |d| {
            at(d, &format!("{OP}/parameters"))
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "limit", "in": "query", "schema": {"type": "integer"}}));
        }),
        (
            "request-parameter-became-required",
            Some(|d| *at(d, &format!("{OP}/parameters/0/required")) = json!(true)),
            |d| {
                *at(d, &format!("{OP}/parameters/0/required")) = json!(false);
            },
        ),
        (
            "request-property-removed",
            Some(|d| remove(d, &format!("{REQ}/properties/seed"))),
            |d| {
                at(d, &format!("{REQ}/properties"))["top_k"] = json!({"type": "integer"});
            },
        ),
        (
            "request-property-added-required",
            Some(|d| {
                at(d, &format!("{REQ}/properties"))["top_k"] = json!({"type": "integer"});
                at(d, &format!("{REQ}/required"))
                    .as_array_mut()
                    .unwrap()
                    .push(json!("top_k"));
            }),
            |d| {
                at(d, &format!("{REQ}/properties"))["top_k"] = json!({"type": "integer"});
            },
        ),
        ("request-property-added", None, |d| {
            at(d, &format!("{REQ}/properties"))["top_k"] = json!({"type": "integer"});
        }),
        (
            "request-property-became-required",
            Some(|d| {
                at(d, &format!("{REQ}/required"))
                    .as_array_mut()
                    .unwrap()
                    .push(json!("max_tokens"));
            }),
            |d| {
                *at(d, &format!("{REQ}/required")) = json!([]);
            },
        ),
        (
            "request-additional-properties-narrowed",
            Some(|d| at(d, REQ)["additionalProperties"] = json!(false)),
            |d| {
                at(d, REQ)["additionalProperties"] = json!(true);
            },
        ),
        (
            "response-property-removed",
            Some(|d| remove(d, &format!("{RES}/properties/note"))),
            |d| {
                at(d, &format!("{RES}/properties"))["extra"] = json!({"type": "string"});
            },
        ),
        (
            "response-property-became-optional",
            Some(|d| *at(d, &format!("{RES}/required")) = json!(["id"])),
            |d| {
                at(d, &format!("{RES}/required"))
                    .as_array_mut()
                    .unwrap()
                    .push(json!("position"));
            },
        ),
        ("response-property-added", None, |d| {
            at(d, &format!("{RES}/properties"))["extra"] = json!({"type": "string"});
        }),
        (
            "enum-value-removed",
            Some(|d| *at(d, &format!("{RES}/properties/state/enum")) = json!(["queued"])),
            |d| {
                *at(d, &format!("{RES}/properties/state/enum")) =
                    json!(["queued", "done", "failed"]);
            },
        ),
        ("request-enum-value-added", None, |d| {
            *at(d, &format!("{REQ}/properties/priority/enum")) =
                json!(["interactive", "batch", "bulk"]);
        }),
        ("response-enum-value-added", None, |d| {
            *at(d, &format!("{RES}/properties/state/enum")) = json!(["queued", "done", "failed"]);
        }),
        (
            "request-type-narrowed",
            Some(|d| *at(d, &format!("{REQ}/properties/seed/type")) = json!("integer")),
            |d| {
                *at(d, &format!("{REQ}/properties/max_tokens/type")) = json!(["integer", "null"]);
            },
        ),
        ("request-type-widened", None, |d| {
            *at(d, &format!("{REQ}/properties/max_tokens/type")) = json!(["integer", "null"]);
        }),
        (
            "response-type-widened",
            Some(|d| *at(d, &format!("{RES}/properties/id/type")) = json!(["string", "null"])),
            |d| {
                *at(d, &format!("{RES}/properties/note/type")) = json!("string");
            },
        ),
        ("response-type-narrowed", None, |d| {
            *at(d, &format!("{RES}/properties/note/type")) = json!("string");
        }),
        (
            "request-constraint-narrowed",
            Some(|d| *at(d, &format!("{REQ}/properties/max_tokens/maximum")) = json!(1024)),
            |d| {
                *at(d, &format!("{REQ}/properties/max_tokens/maximum")) = json!(8192);
            },
        ),
        ("request-constraint-widened", None, |d| {
            *at(d, &format!("{REQ}/properties/max_tokens/maximum")) = json!(8192);
        }),
        (
            "response-constraint-widened",
            Some(|d| *at(d, &format!("{RES}/properties/position/maximum")) = json!(1000)),
            |d| {
                *at(d, &format!("{RES}/properties/position/maximum")) = json!(10);
            },
        ),
        ("response-constraint-narrowed", None, |d| {
            *at(d, &format!("{RES}/properties/position/maximum")) = json!(10);
        }),
        (
            "request-variant-removed",
            Some(|d| {
                at(d, &format!("{REQ}/properties"))["kind"] =
                    json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
                // The base gets the same property below; this edit then drops a variant.
                remove(d, &format!("{REQ}/properties/kind/oneOf/1"));
            }),
            |d| {
                at(d, &format!("{REQ}/properties"))["kind"] = json!({"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}]});
            },
        ),
        (
            "response-variant-removed",
            Some(|d| remove(d, &format!("{RES}/properties/event/oneOf/1"))),
            |d| {
                at(d, &format!("{RES}/properties/event/oneOf"))
                    .as_array_mut()
                    .unwrap()
                    .push(
                        json!({"type": "object", "properties": {"event": {"enum": ["metrics"]}}}),
                    );
            },
        ),
        ("variant-added", None, |d| {
            at(d, &format!("{RES}/properties/event/oneOf"))
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "object", "properties": {"event": {"enum": ["metrics"]}}}));
        }),
        (
            "version-lowered",
            Some(|d| *at(d, "/info/version") = json!("0.9.0")),
            |d| {
                *at(d, "/info/version") = json!("1.1.0");
            },
        ),
    ]
}

fn base_for(rule: &str) -> Value {
    let mut d = base();
    if rule == "request-variant-removed" {
        at(&mut d, &format!("{REQ}/properties"))["kind"] =
            json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
    }
    d
}

fn fired<'a>(changes: &'a [Change], rule: &str) -> Vec<&'a Change> {
    changes.iter().filter(|c| c.rule == rule).collect()
}

// covers: ORCH-9014
#[test]
fn every_rule_has_a_breaking_and_a_compatible_fixture() {
    let cases = cases();
    for (rule, breaks) in RULES {
        let case = cases
            .iter()
            .find(|(r, _, _)| r == rule)
            .unwrap_or_else(|| panic!("rule {rule} has no fixture pair"));
        let old = base_for(rule);
        if let Some(edit) = case.1 {
            assert!(
                breaks,
                "{rule}: a compatible rule needs no breaking fixture"
            );
            let mut new = old.clone();
            edit(&mut new);
            let changes = compat::openapi(&old, &new);
            let hits = fired(&changes, rule);
            assert!(
                !hits.is_empty(),
                "{rule}: did not fire on its breaking fixture: {changes:#?}"
            );
            assert!(hits.iter().all(|c| c.breaking), "{rule}: {hits:?}");
        } else {
            assert!(!breaks, "{rule}: a breaking rule needs a breaking fixture");
        }
        let mut new = old.clone();
        (case.2)(&mut new);
        let changes = compat::openapi(&old, &new);
        assert!(
            changes.iter().all(|c| !c.breaking),
            "{rule}: the compatible fixture was judged breaking: {changes:#?}"
        );
        if !breaks {
            assert!(
                !fired(&changes, rule).is_empty(),
                "{rule}: did not fire: {changes:#?}"
            );
        }
    }
}

// covers: ORCH-9014
#[test]
fn identical_documents_have_no_changes() {
    assert!(compat::openapi(&base(), &base()).is_empty());
}

// A config file is input: a field removed or made required breaks users' files.
// covers: ORCH-9014
#[test]
fn json_schema_direction_decides() {
    let old = json!({
        "type": "object", "additionalProperties": false,
        "properties": {"bind": {"type": "string"}, "pools": {"type": "array", "items": {"$ref": "#/$defs/Pool"}}},
        "$defs": {"Pool": {"type": "object", "properties": {"id": {"type": "string"}, "slots": {"type": "integer"}}}}
    });
    let mut removed = old.clone();
    removed["$defs"]["Pool"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("slots");
    let changes = compat::json_schema(&old, &removed, Direction::Input);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].rule, "request-property-removed");
    assert_eq!(changes[0].path, "/properties/pools/items/properties/slots");
    let mut required = old.clone();
    required["$defs"]["Pool"]["required"] = json!(["slots"]);
    let changes = compat::json_schema(&old, &required, Direction::Input);
    assert_eq!(changes[0].rule, "request-property-became-required");
    // The same removal in an output schema is a response property removed.
    let changes = compat::json_schema(&old, &removed, Direction::Output);
    assert_eq!(changes[0].rule, "response-property-removed");
}

// Tagged variants (serde's `kind` as a `const`) are matched by tag, and variants
// whose keys collide are still all compared: a field removed from the first of
// four `type: object` branches is found.
// covers: ORCH-9014
#[test]
fn every_branch_of_a_one_of_is_compared() {
    let branch = |kind: &str| {
        json!({"type": "object", "properties": {
            "kind": {"type": "string", "const": kind}, "slots": {"type": "integer"}}})
    };
    let old = json!({"oneOf": [branch("builtin"), branch("llamacpp"), branch("tgi")]});
    let mut new = old.clone();
    new["oneOf"][0]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("slots");
    let changes = compat::json_schema(&old, &new, Direction::Input);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].path, "/oneOf[kind=\"builtin\"]/properties/slots");
    let untagged = |v: &Value| {
        let mut v = v.clone();
        for b in v["oneOf"].as_array_mut().unwrap() {
            b["properties"].as_object_mut().unwrap().remove("kind");
        }
        v
    };
    let changes = compat::json_schema(&untagged(&old), &untagged(&new), Direction::Input);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].rule, "request-property-removed");
    // Documented enum values (one `const` branch each): the removed value is named.
    let values = |v: &[&str]| json!({"oneOf": v.iter().map(|c| json!({"type": "string", "const": c})).collect::<Vec<_>>()});
    let changes = compat::json_schema(
        &values(&["stop", "length", "canceled"]),
        &values(&["length", "canceled"]),
        Direction::Output,
    );
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].path, "/oneOf[const=\"stop\"]");
    assert!(changes[0].breaking, "{changes:?}");
}

// covers: ORCH-9014
#[test]
fn bumps_follow_semver() {
    use compat::{Bump, Semver, bumped_enough};
    let v = |s| Semver::parse(s).unwrap();
    assert!(bumped_enough(v("1.2.3"), v("2.0.0"), Bump::Major));
    assert!(!bumped_enough(v("1.2.3"), v("1.3.0"), Bump::Major));
    assert!(bumped_enough(v("1.2.3"), v("1.3.0"), Bump::Minor));
    assert!(!bumped_enough(v("1.2.3"), v("1.2.4"), Bump::Minor));
    assert!(bumped_enough(v("1.2.3"), v("1.2.4"), Bump::Patch));
    assert!(!bumped_enough(v("1.2.3"), v("1.2.3"), Bump::Patch));
    assert_eq!(Semver::parse("1.2"), None);
}
