//! The shape of the generated field tables in `table.rs`.

use super::table::{KINDS, MESSAGES};

/// One protobuf message type: how its fields map to JSON.
pub(super) struct Message {
    /// The proto name, for error messages and tests.
    pub name: &'static str,
    pub shape: Shape,
    /// Sorted by field number.
    pub fields: &'static [Field],
}

/// How a message becomes JSON: most are objects, a few have Go `MarshalJSON` methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Object,
    /// `meta.v1.Time`: RFC 3339 with whole seconds, or null when zero.
    Time,
    /// `meta.v1.MicroTime`: RFC 3339 with microseconds, or null when zero.
    MicroTime,
    /// `resource.Quantity`: its string.
    Quantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `RawExtension`, `FieldsV1`, apiextensions `JSON`: field 1 holds JSON text.
    RawJson,
    /// `ExtraValue`: a Go `[]string` wrapped as `{items}`.
    Items,
    SchemaOrArray,
    SchemaOrBool,
    SchemaOrStringArray,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Field {
    pub num: u32,
    /// The JSON property; for non-object shapes the proto field name.
    pub json: &'static str,
    pub ty: Ty,
    pub card: Card,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ty {
    Str,
    Bytes,
    Bool,
    I32,
    I64,
    F64,
    /// Index into `MESSAGES`.
    Msg(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Card {
    /// A Go non-pointer `omitempty` field: a zero value is left out, as Go's JSON encoder does.
    Opt,
    /// A pointer or required field: a zero value is meaningful and kept.
    Keep,
    Repeated,
    /// `map<string, ty>`.
    Map,
    /// A Go struct embedded with `json:",inline"`: its fields join the parent object.
    Inline,
}

pub(super) const fn f(num: u32, json: &'static str, ty: Ty, card: Card) -> Field {
    Field {
        num,
        json,
        ty,
        card,
    }
}

pub(super) fn message(index: u16) -> &'static Message {
    // Indices come from the generated table itself, so they are always in range.
    &MESSAGES[usize::from(index)]
}

impl Message {
    pub fn field(&self, num: u32) -> Option<&'static Field> {
        let fields: &'static [Field] = self.fields;
        fields
            .binary_search_by_key(&num, |f| f.num)
            .ok()
            .map(|i| &fields[i])
    }
}

/// The message type of a top-level kind.
pub(super) fn kind(api_version: &str, kind: &str) -> Option<u16> {
    KINDS
        .binary_search_by(|(v, k, _)| (*v, *k).cmp(&(api_version, kind)))
        .ok()
        .map(|i| KINDS[i].2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_consistent() {
        assert!(
            KINDS
                .windows(2)
                .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1))
        );
        for m in MESSAGES {
            assert!(
                m.fields.windows(2).all(|w| w[0].num < w[1].num),
                "{}",
                m.name
            );
            for f in m.fields {
                if let Ty::Msg(i) = f.ty {
                    assert!(usize::from(i) < MESSAGES.len(), "{}.{}", m.name, f.json);
                }
                if f.card == Card::Inline {
                    assert_eq!(message_of(f).shape, Shape::Object, "{}", m.name);
                }
            }
        }
    }

    fn message_of(f: &Field) -> &'static Message {
        match f.ty {
            Ty::Msg(i) => message(i),
            _ => panic!("inline field {} is not a message", f.json),
        }
    }

    #[test]
    fn json_names_keep_go_casing() {
        let pod = kind("v1", "Pod").map(|i| message(i).name);
        assert_eq!(pod, Some("k8s.io.api.core.v1.Pod"));
        let names = |name: &str| -> Vec<&str> {
            let m = MESSAGES
                .iter()
                .find(|m| m.name == name)
                .expect("message in table");
            m.fields.iter().map(|f| f.json).collect()
        };
        let status = names("k8s.io.api.core.v1.PodStatus");
        assert!(
            status.contains(&"podIPs") && status.contains(&"hostIP"),
            "{status:?}"
        );
        assert!(names("k8s.io.api.core.v1.ServiceSpec").contains(&"clusterIPs"));
        assert!(names("k8s.io.api.core.v1.NodeSpec").contains(&"podCIDR"));
        assert!(names("k8s.io.api.core.v1.GCEPersistentDiskVolumeSource").contains(&"fsType"));
        let props =
            names("k8s.io.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps");
        assert!(props.contains(&"$ref") && props.contains(&"x-kubernetes-int-or-string"));
    }

    #[test]
    fn finds_kinds() {
        assert!(kind("apps/v1", "Deployment").is_some());
        assert!(kind("authentication.k8s.io/v1", "TokenRequest").is_some());
        assert!(kind("apps/v1", "Pod").is_none());
        assert!(kind("v1", "Deployment").is_none());
    }
}
