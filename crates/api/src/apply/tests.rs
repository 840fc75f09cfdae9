//! Server-side apply and update tracking against a hand-built Deployment schema.

use super::*;
use crate::schema::{ListType, Node, Schemas, Type};
use serde_json::json;
use std::collections::BTreeMap;

const T0: &str = "2024-01-01T00:00:00.123456Z";
const T1: &str = "2024-01-01T00:00:05Z";

fn schemas() -> Schemas {
    let mut s = Schemas::default();
    let leaf = s.add(Node {
        ty: Type::String,
        ..Node::default()
    });
    let string_map = s.add(Node {
        ty: Type::Object,
        additional_properties: Some(leaf),
        ..Node::default()
    });
    let selector = s.add(Node {
        ty: Type::Object,
        properties: BTreeMap::from([("matchLabels".into(), string_map)]),
        map_atomic: true,
        ..Node::default()
    });
    let port = s.add(Node {
        ty: Type::Object,
        properties: BTreeMap::from([("containerPort".into(), leaf), ("protocol".into(), leaf)]),
        ..Node::default()
    });
    let ports = s.add(Node {
        ty: Type::Array,
        items: Some(port),
        list_type: Some(ListType::Map(vec![
            "containerPort".into(),
            "protocol".into(),
        ])),
        ..Node::default()
    });
    let args = s.add(Node {
        ty: Type::Array,
        items: Some(leaf),
        ..Node::default()
    });
    let container = s.add(Node {
        ty: Type::Object,
        properties: BTreeMap::from([
            ("name".into(), leaf),
            ("image".into(), leaf),
            ("args".into(), args),
            ("ports".into(), ports),
        ]),
        ..Node::default()
    });
    // No list type: the merge patch strategy makes it a list-map, as kube-openapi converts it.
    let containers = s.add(Node {
        ty: Type::Array,
        items: Some(container),
        patch_strategy: Some("merge".into()),
        patch_merge_key: Some("name".into()),
        ..Node::default()
    });
    let pod_spec = s.add(Node {
        ty: Type::Object,
        properties: BTreeMap::from([("containers".into(), containers)]),
        required: vec!["containers".into()],
        ..Node::default()
    });
    let finalizers = s.add(Node {
        ty: Type::Array,
        items: Some(leaf),
        list_type: Some(ListType::Set),
        ..Node::default()
    });
    let meta = s.add(Node {
        ty: Type::Object,
        properties: BTreeMap::from([
            ("name".into(), leaf),
            ("namespace".into(), leaf),
            ("uid".into(), leaf),
            ("resourceVersion".into(), leaf),
            ("labels".into(), string_map),
            ("annotations".into(), string_map),
            ("finalizers".into(), finalizers),
        ]),
        ..Node::default()
    });
    let template = s.add(Node {
        ty: Type::Object,
        properties: BTreeMap::from([("metadata".into(), meta), ("spec".into(), pod_spec)]),
        ..Node::default()
    });
    let spec = s.add(Node {
        ty: Type::Object,
        properties: BTreeMap::from([
            ("replicas".into(), leaf),
            ("selector".into(), selector),
            ("template".into(), template),
        ]),
        ..Node::default()
    });
    let status = s.add(Node {
        ty: Type::Object,
        properties: BTreeMap::from([("replicas".into(), leaf)]),
        ..Node::default()
    });
    let root = s.add(Node {
        ty: Type::Object,
        properties: BTreeMap::from([
            ("apiVersion".into(), leaf),
            ("kind".into(), leaf),
            ("metadata".into(), meta),
            ("spec".into(), spec),
            ("status".into(), status),
        ]),
        ..Node::default()
    });
    s.roots.insert("apps/v1/Deployment".into(), root);
    s
}

fn deployment(spec: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": spec})
}

fn nginx() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "nginx", "labels": {"app": "nginx"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {
                "metadata": {"labels": {"app": "nginx"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.14.2", "ports": [{"containerPort": 80}]}]}
            }
        }
    })
}

fn entries(obj: &Value) -> Vec<(String, String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|e| {
                    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                    (s("manager"), s("operation"), e["fieldsV1"].to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn fields(obj: &Value, manager: &str) -> Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["manager"] == manager))
        .map_or(Value::Null, |e| e["fieldsV1"].clone())
}

#[test]
fn create_via_apply_encodes_fields_v1_exactly() {
    let s = schemas();
    let schema = s.root("apps", "v1", "Deployment");
    let out = apply(None, &nginx(), "kubectl", false, schema, T0).unwrap();
    let entry = &out["metadata"]["managedFields"][0];
    assert_eq!(entry["manager"], "kubectl");
    assert_eq!(entry["operation"], "Apply");
    assert_eq!(entry["apiVersion"], "apps/v1");
    assert_eq!(entry["time"], "2024-01-01T00:00:00Z");
    assert_eq!(entry["fieldsType"], "FieldsV1");
    assert_eq!(
        entry["fieldsV1"].to_string(),
        r#"{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:replicas":{},"f:selector":{},"f:template":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{},"f:ports":{"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{}}}}}}}}}"#
    );
    let mut without = out.clone();
    remove_managed_fields(&mut without);
    assert_eq!(without, nginx());
}

#[test]
fn create_via_update_tracks_every_field() {
    let s = schemas();
    let schema = s.root("apps", "v1", "Deployment");
    let mut obj = nginx();
    obj["metadata"]["uid"] = json!("u");
    track_update(None, &mut obj, "kubectl-create", "apps/v1", schema, T0);
    assert_eq!(
        fields(&obj, "kubectl-create").to_string(),
        r#"{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:replicas":{},"f:selector":{},"f:template":{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{},"f:ports":{".":{},"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{}}}}}}}}}"#
    );
    assert_eq!(obj["metadata"]["managedFields"][0]["operation"], "Update");
}

/// A sequence of writes; each step is (manager, operation, object, force) and the expected
/// outcome: `Ok(check)` runs against the result, `Err(message)` is the apply error.
type Check = fn(&Value);

enum Step {
    Apply(&'static str, Value, bool, Result<Check, &'static str>),
    Update(&'static str, Value, Check),
}

fn run(steps: Vec<Step>) {
    let s = schemas();
    let schema = s.root("apps", "v1", "Deployment");
    let mut live: Option<Value> = None;
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Apply(manager, applied, force, want) => {
                let got = apply(live.as_ref(), &applied, manager, force, schema, T1);
                match (got, want) {
                    (Ok(obj), Ok(check)) => {
                        check(&obj);
                        live = Some(obj);
                    }
                    (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg, "step {i}"),
                    (got, _) => panic!("step {i}: unexpected {got:?}"),
                }
            }
            Step::Update(manager, mut new, check) => {
                if let Some(old) = &live {
                    new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
                }
                track_update(live.as_ref(), &mut new, manager, "apps/v1", schema, T1);
                check(&new);
                live = Some(new);
            }
        }
    }
}

#[test]
fn apply_flows() {
    let cases: Vec<Vec<Step>> = vec![
        // Re-applying without a label removes it; a label another manager set stays.
        vec![
            Step::Apply(
                "a",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"x": "1", "y": "2"}}}),
                false,
                Ok(|o| assert_eq!(o["metadata"]["labels"], json!({"x": "1", "y": "2"}))),
            ),
            Step::Apply(
                "b",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"z": "3"}}}),
                false,
                Ok(|_| {}),
            ),
            Step::Apply(
                "a",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"x": "1"}}}),
                false,
                Ok(|o| {
                    assert_eq!(o["metadata"]["labels"], json!({"x": "1", "z": "3"}));
                    assert_eq!(
                        fields(o, "a"),
                        json!({"f:metadata": {"f:labels": {"f:x": {}}}})
                    );
                }),
            ),
        ],
        // Two appliers disagreeing on replicas conflict; the same value is shared ownership.
        vec![
            Step::Apply("a", deployment(json!({"replicas": 1})), false, Ok(|_| {})),
            Step::Apply(
                "b",
                deployment(json!({"replicas": 1})),
                false,
                Ok(|o| {
                    assert_eq!(fields(o, "a"), fields(o, "b"));
                }),
            ),
            Step::Apply(
                "b",
                deployment(json!({"replicas": 3})),
                false,
                Err(r#"Apply failed with 1 conflict: conflict with "a": .spec.replicas"#),
            ),
            // Forcing takes the field away from "a", whose entry then disappears.
            Step::Apply(
                "b",
                deployment(json!({"replicas": 3})),
                true,
                Ok(|o| {
                    assert_eq!(o["spec"]["replicas"], 3);
                    assert_eq!(fields(o, "a"), Value::Null);
                    assert_eq!(fields(o, "b"), json!({"f:spec": {"f:replicas": {}}}));
                }),
            ),
        ],
        // An update takes ownership from the applier, who then conflicts with it.
        vec![
            Step::Apply(
                "kubectl",
                deployment(json!({"replicas": 1})),
                false,
                Ok(|_| {}),
            ),
            Step::Update("kubectl-edit", deployment(json!({"replicas": 5})), |o| {
                assert_eq!(fields(o, "kubectl"), Value::Null);
                assert_eq!(
                    fields(o, "kubectl-edit"),
                    json!({"f:spec": {"f:replicas": {}}})
                );
                assert_eq!(
                    o["metadata"]["managedFields"][0]["time"],
                    "2024-01-01T00:00:05Z"
                );
            }),
            Step::Apply(
                "kubectl",
                deployment(json!({"replicas": 1})),
                false,
                Err(
                    r#"Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: .spec.replicas"#,
                ),
            ),
        ],
        // Containers merge by name; dropping one from an apply removes only that one.
        vec![
            Step::Apply(
                "a",
                deployment(
                    json!({"template": {"spec": {"containers": [{"name": "one", "image": "i1"}]}}}),
                ),
                false,
                Ok(|_| {}),
            ),
            Step::Apply(
                "b",
                deployment(
                    json!({"template": {"spec": {"containers": [{"name": "two", "image": "i2"}]}}}),
                ),
                false,
                Ok(|o| {
                    assert_eq!(
                        o["spec"]["template"]["spec"]["containers"],
                        json!([{"name": "one", "image": "i1"}, {"name": "two", "image": "i2"}])
                    );
                }),
            ),
            Step::Apply(
                "a",
                deployment(json!({"template": {"spec": {"containers": []}}})),
                false,
                Ok(|o| {
                    assert_eq!(
                        o["spec"]["template"]["spec"]["containers"],
                        json!([{"name": "two", "image": "i2"}])
                    );
                    assert_eq!(fields(o, "a"), Value::Null);
                }),
            ),
            Step::Apply(
                "c",
                deployment(
                    json!({"template": {"spec": {"containers": [{"name": "two", "image": "other"}]}}}),
                ),
                false,
                Err(
                    r#"Apply failed with 1 conflict: conflict with "b": .spec.template.spec.containers[name="two"].image"#,
                ),
            ),
        ],
        // Set lists (finalizers) union across appliers and shrink per applier.
        vec![
            Step::Apply(
                "a",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "finalizers": ["x", "y"]}}),
                false,
                Ok(|_| {}),
            ),
            Step::Apply(
                "b",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "finalizers": ["z", "x"]}}),
                false,
                Ok(|o| {
                    assert_eq!(o["metadata"]["finalizers"], json!(["z", "x", "y"]));
                    assert_eq!(
                        fields(o, "b"),
                        json!({"f:metadata": {"f:finalizers": {"v:\"x\"": {}, "v:\"z\"": {}}}})
                    );
                }),
            ),
            Step::Apply(
                "a",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "finalizers": []}}),
                false,
                Ok(|o| assert_eq!(o["metadata"]["finalizers"], json!(["z", "x"]))),
            ),
        ],
        // Several conflicts are grouped by manager.
        vec![
            Step::Update(
                "ctl",
                deployment(json!({"replicas": 1, "selector": {"matchLabels": {"a": "b"}}})),
                |_| {},
            ),
            Step::Apply(
                "me",
                deployment(json!({"replicas": 2, "selector": {"matchLabels": {"a": "c"}}})),
                false,
                Err(
                    "Apply failed with 2 conflicts: conflicts with \"ctl\" using apps/v1:\n- .spec.replicas\n- .spec.selector",
                ),
            ),
        ],
    ];
    for steps in cases {
        run(steps);
    }
}

#[test]
fn managed_fields_in_updates() {
    let s = schemas();
    let schema = s.root("apps", "v1", "Deployment");
    let live = apply(
        None,
        &deployment(json!({"replicas": 1})),
        "a",
        false,
        schema,
        T0,
    )
    .unwrap();

    // A write that leaves managedFields alone keeps them; an unchanged object adds no entry.
    let mut same = live.clone();
    track_update(Some(&live), &mut same, "u", "apps/v1", schema, T1);
    assert_eq!(same, live);

    // `[]` resets them: only this write's own changes are tracked afterwards.
    let mut reset = live.clone();
    reset["metadata"]["managedFields"] = json!([]);
    reset["spec"]["replicas"] = json!(2);
    track_update(Some(&live), &mut reset, "u", "apps/v1", schema, T1);
    assert_eq!(
        entries(&reset),
        vec![(
            "u".into(),
            "Update".into(),
            r#"{"f:spec":{"f:replicas":{}}}"#.into()
        )]
    );

    // Client-supplied managedFields are taken as sent.
    let mut custom = live.clone();
    custom["metadata"]["managedFields"] = json!([{"manager": "m", "operation": "Update", "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]);
    track_update(Some(&live), &mut custom, "u", "apps/v1", schema, T1);
    assert_eq!(
        entries(&custom),
        vec![(
            "m".into(),
            "Update".into(),
            r#"{"f:spec":{"f:replicas":{}}}"#.into()
        )]
    );

    // Entries sort Apply first, then by time.
    let mut both = live.clone();
    both["metadata"]["labels"] = json!({"l": "v"});
    track_update(Some(&live), &mut both, "u", "apps/v1", schema, T1);
    let order: Vec<String> = entries(&both)
        .into_iter()
        .map(|(m, op, _)| format!("{m}/{op}"))
        .collect();
    assert_eq!(order, ["a/Apply", "u/Update"]);
}

#[test]
fn rejects_bad_input() {
    let s = schemas();
    let schema = s.root("apps", "v1", "Deployment");
    let mut with_mf = nginx();
    with_mf["metadata"]["managedFields"] = json!([]);
    assert_eq!(
        apply(None, &with_mf, "a", false, schema, T0),
        Err(ApplyError::BadRequest(
            "metadata.managedFields must be nil".into()
        ))
    );
    let keyless = deployment(json!({"template": {"spec": {"containers": [{"image": "x"}]}}}));
    assert_eq!(
        apply(None, &keyless, "a", false, schema, T0),
        Err(ApplyError::Internal(
            "failed to create typed patch object (apps/v1, Kind=Deployment): .spec.template.spec.containers: element 0: associative list with keys has an element that omits key field \"name\" (and doesn't have default value)".into()
        ))
    );
}

#[test]
fn reset_fields_and_schemaless_objects() {
    let s = schemas();
    let schema = s.root("apps", "v1", "Deployment");
    let scope = Scope {
        subresource: "",
        reset_fields: &[&["status"]],
    };
    let mut applied = deployment(json!({"replicas": 1}));
    applied["status"] = json!({"replicas": 1});
    let out = apply_in(scope, None, &applied, "a", false, schema, T0).unwrap();
    assert_eq!(fields(&out, "a"), json!({"f:spec": {"f:replicas": {}}}));

    // Without a schema maps are granular (every key owned, as none is a declared field) and
    // lists atomic.
    let cr = json!({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {"list": [1, 2], "m": {"k": "v"}}});
    let out = apply(None, &cr, "a", false, None, T0).unwrap();
    assert_eq!(
        fields(&out, "a"),
        json!({"f:spec": {".": {}, "f:list": {}, "f:m": {".": {}, "f:k": {}}}})
    );
    let mut created = cr.clone();
    track_update(None, &mut created, "c", "example.com/v1", None, T0);
    assert_eq!(
        fields(&created, "c"),
        json!({"f:spec": {".": {}, "f:list": {}, "f:m": {".": {}, "f:k": {}}}})
    );
}
