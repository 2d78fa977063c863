//! Unit tests of the JSON Patch engine: every RFC 6902 operation, arrays,
//! pointer escapes, Ironic's root rules and all-or-nothing application.

use super::*;
use serde_json::json;

fn ok(doc: Value, ops: Value) -> Value {
    let mut d = doc;
    apply(&mut d, &ops).unwrap_or_else(|e| panic!("{ops}: {e}"));
    d
}

fn err(doc: Value, ops: Value) -> PatchError {
    let mut d = doc.clone();
    let e = apply(&mut d, &ops).unwrap_err();
    assert_eq!(d, doc, "a failed patch changed the document");
    e
}

fn reason(e: &PatchError) -> &str {
    match e {
        PatchError::Failed { reason, .. } => reason,
        other => panic!("not a failed operation: {other:?}"),
    }
}

#[test]
fn add_replace_remove() {
    let d = ok(
        json!({"name": "a", "driver_info": {"x": 1}}),
        json!([
            {"op": "add", "path": "/driver_info/ipmi_port", "value": "623"},
            {"op": "replace", "path": "/name", "value": "b"},
            {"op": "remove", "path": "/driver_info/x"},
        ]),
    );
    assert_eq!(d, json!({"name": "b", "driver_info": {"ipmi_port": "623"}}));
}

#[test]
fn root_members_are_reset_not_dropped_and_never_added() {
    let d = ok(
        json!({"name": "a", "extra": {"k": 1}}),
        json!([{"op": "remove", "path": "/extra"}]),
    );
    assert_eq!(d, json!({"name": "a", "extra": null}));
    // add on an existing (even null) root member replaces it
    let d = ok(
        d,
        json!([{"op": "add", "path": "/extra", "value": {"z": 2}}]),
    );
    assert_eq!(d["extra"], json!({"z": 2}));
    let e = err(
        json!({"name": "a"}),
        json!([
            {"op": "replace", "path": "/name", "value": "b"},
            {"op": "add", "path": "/bogus", "value": 1},
        ]),
    );
    assert_eq!(
        e,
        PatchError::NewRootAttribute("/bogus".into()),
        "checked before anything applies"
    );
    assert_eq!(
        e.to_string(),
        "Adding a new attribute (/bogus) to the root of the resource is not allowed"
    );
    for op in ["move", "copy"] {
        let e = err(
            json!({"name": "a"}),
            json!([{"op": op, "from": "/name", "path": "/bogus"}]),
        );
        assert!(matches!(e, PatchError::NewRootAttribute(_)), "{op}: {e}");
    }
}

#[test]
fn arrays_indices_and_dash() {
    let doc = json!({"extra": {"l": [1, 2, 3]}});
    let d = ok(
        doc.clone(),
        json!([
            {"op": "add", "path": "/extra/l/0", "value": 0},
            {"op": "add", "path": "/extra/l/-", "value": 4},
            {"op": "add", "path": "/extra/l/5", "value": 5},
            {"op": "replace", "path": "/extra/l/1", "value": 10},
            {"op": "remove", "path": "/extra/l/2"},
        ]),
    );
    assert_eq!(d["extra"]["l"], json!([0, 10, 3, 4, 5]));
    let e = err(
        doc.clone(),
        json!([{"op": "add", "path": "/extra/l/9", "value": 0}]),
    );
    assert_eq!(reason(&e), "can't insert outside of list");
    let e = err(
        doc.clone(),
        json!([{"op": "replace", "path": "/extra/l/3", "value": 0}]),
    );
    assert_eq!(reason(&e), "can't replace outside of list");
    let e = err(doc.clone(), json!([{"op": "remove", "path": "/extra/l/3"}]));
    assert_eq!(reason(&e), "can't remove a non-existent object '3'");
    for bad in ["01", "-1", "x", "-"] {
        let e = err(
            doc.clone(),
            json!([{"op": "replace", "path": format!("/extra/l/{bad}"), "value": 0}]),
        );
        assert_eq!(
            reason(&e),
            format!("'{bad}' is not a valid sequence index"),
            "{bad}"
        );
    }
    // through an array into an object
    let d = ok(
        json!({"extra": {"l": [{"a": 1}]}}),
        json!([{"op": "add", "path": "/extra/l/0/b", "value": 2}]),
    );
    assert_eq!(d["extra"]["l"][0], json!({"a": 1, "b": 2}));
}

#[test]
fn pointer_escapes() {
    let d = ok(
        json!({"extra": {}}),
        json!([
            {"op": "add", "path": "/extra/a~1b", "value": 1},
            {"op": "add", "path": "/extra/c~0d", "value": 2},
            {"op": "add", "path": "/extra/~01", "value": 3},
        ]),
    );
    assert_eq!(d["extra"], json!({"a/b": 1, "c~d": 2, "~1": 3}));
    assert_eq!(
        roots(&json!([{"op": "add", "path": "/a~1b/c", "value": 1}])),
        vec!["a/b".to_owned()]
    );
}

#[test]
fn test_op() {
    let doc = json!({"name": "a", "extra": {"l": [1]}});
    ok(
        doc.clone(),
        json!([
            {"op": "test", "path": "/name", "value": "a"},
            {"op": "test", "path": "/extra/l", "value": [1]},
        ]),
    );
    // A failing test stops the whole patch: the earlier replace is undone.
    let e = err(
        doc.clone(),
        json!([
            {"op": "replace", "path": "/name", "value": "b"},
            {"op": "test", "path": "/extra/l/0", "value": 2},
        ]),
    );
    assert_eq!(reason(&e), "1 is not equal to tested value 2");
    let e = err(
        doc,
        json!([{"op": "test", "path": "/extra/nope", "value": 2}]),
    );
    assert_eq!(reason(&e), "member 'nope' not found");
}

#[test]
fn move_and_copy() {
    let d = ok(
        json!({"name": "a", "extra": {"x": {"y": 1}, "l": [1, 2]}}),
        json!([
            {"op": "copy", "from": "/extra/x", "path": "/extra/z"},
            {"op": "move", "from": "/extra/l/0", "path": "/extra/l/-"},
            {"op": "move", "from": "/extra/x/y", "path": "/extra/w"},
            {"op": "move", "from": "/name", "path": "/name"},
        ]),
    );
    assert_eq!(
        d,
        json!({"name": "a", "extra": {"x": {}, "z": {"y": 1}, "l": [2, 1], "w": 1}})
    );
    // moving a root member resets its source to null
    let d = ok(
        json!({"name": "a", "description": null}),
        json!([{"op": "move", "from": "/name", "path": "/description"}]),
    );
    assert_eq!(d, json!({"name": null, "description": "a"}));
    let e = err(
        json!({"extra": {"x": {}}}),
        json!([{"op": "move", "from": "/extra/x", "path": "/extra/x/y"}]),
    );
    assert_eq!(reason(&e), "Cannot move values into their own children");
    let e = err(
        json!({"extra": {}}),
        json!([{"op": "copy", "from": "/extra/nope", "path": "/extra/y"}]),
    );
    assert_eq!(reason(&e), "member 'nope' not found");
}

#[test]
fn errors_are_clear() {
    let d = json!({"name": "a", "driver_info": {}, "extra": null});
    // python-jsonpatch's reasons, inside Ironic's PatchError wording.
    let e = err(
        d.clone(),
        json!([{"op": "replace", "path": "/driver_info/nope", "value": 1}]),
    );
    assert_eq!(
        e.to_string(),
        r#"Couldn't apply patch '{"op":"replace","path":"/driver_info/nope","value":1}'. Reason: can't replace a non-existent object 'nope'"#
    );
    let e = err(
        d.clone(),
        json!([{"op": "replace", "path": "/bogus", "value": 1}]),
    );
    assert_eq!(reason(&e), "can't replace a non-existent object 'bogus'");
    let e = err(
        d.clone(),
        json!([{"op": "remove", "path": "/driver_info/nope"}]),
    );
    assert_eq!(reason(&e), "can't remove a non-existent object 'nope'");
    let e = err(
        d.clone(),
        json!([{"op": "add", "path": "/extra/a/b", "value": 1}]),
    );
    assert_eq!(reason(&e), "member 'extra' not found");
    let long = "x".repeat(10_000);
    let e = err(
        d.clone(),
        json!([{"op": "replace", "path": "/driver_info/nope", "value": long}]),
    );
    assert!(e.to_string().len() < 400, "echoes the whole operation: {e}");
    for bad in [
        json!({"op": "add"}),
        json!([{"op": "frob", "path": "/name"}]),
        json!([{"op": "add", "path": "/name"}]),
        json!([{"op": "test", "path": "/name"}]),
        json!([{"op": "move", "path": "/name"}]),
        json!([{"op": "copy", "path": "/name", "from": 3}]),
        json!([{"op": "remove", "path": "name"}]),
        json!([{"op": "remove", "path": "/"}]),
        json!([{"op": "remove"}]),
        json!(["remove"]),
    ] {
        assert!(
            matches!(err(d.clone(), bad.clone()), PatchError::Invalid(_)),
            "{bad}"
        );
    }
}

#[test]
fn allowed_roots() {
    let ops = json!([
        {"op": "replace", "path": "/name", "value": "x"},
        {"op": "move", "from": "/uuid", "path": "/extra/u"},
    ]);
    assert_eq!(first_disallowed(&ops, &["name", "extra"]), Some("/uuid"));
    assert_eq!(first_disallowed(&ops, &["name", "extra", "uuid"]), None);
    assert_eq!(roots(&ops), vec!["name", "extra", "uuid"]);
}
