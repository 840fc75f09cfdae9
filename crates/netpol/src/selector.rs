//! Label selectors as NetworkPolicy uses them (`podSelector`, `namespaceSelector`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `sel`: every `matchLabels` pair and every `matchExpressions` entry.
/// The empty selector matches everything. An unknown operator matches nothing (the API server
/// rejects such selectors; one that slips through selects no pod rather than every pod).
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(wanted) = &sel.match_labels
        && wanted.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    sel.match_expressions.iter().flatten().all(|e| {
        let have = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    })
}

/// `sel` in the API's selector syntax with its terms sorted (`app=web,!canary,tier in (a,b)`):
/// equal strings select the same objects. The empty selector is the empty string.
pub fn canonical(sel: &LabelSelector) -> String {
    let mut terms: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let mut values = e.values.clone().unwrap_or_default();
        values.sort();
        values.dedup();
        let values = values.join(",");
        terms.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            // Matches nothing; kept apart from every valid selector.
            op => format!("{} {op:?} ({values})", e.key),
        });
    }
    terms.sort();
    terms.dedup();
    terms.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn selectors_match_like_upstream() {
        let app_web = labels(&[("app", "web"), ("tier", "front")]);
        let none = labels(&[]);
        let by_label = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            ..Default::default()
        };
        let cases: Vec<(&str, LabelSelector, &BTreeMap<String, String>, bool)> = vec![
            ("empty selects all", LabelSelector::default(), &none, true),
            ("matchLabels hit", by_label.clone(), &app_web, true),
            ("matchLabels miss", by_label, &none, false),
            ("In hit", expr("app", "In", &["db", "web"]), &app_web, true),
            (
                "In needs the key",
                expr("app", "In", &["web"]),
                &none,
                false,
            ),
            ("NotIn hit", expr("app", "NotIn", &["web"]), &app_web, false),
            (
                "NotIn without key",
                expr("app", "NotIn", &["web"]),
                &none,
                true,
            ),
            ("Exists", expr("tier", "Exists", &[]), &app_web, true),
            ("Exists miss", expr("tier", "Exists", &[]), &none, false),
            (
                "DoesNotExist",
                expr("tier", "DoesNotExist", &[]),
                &none,
                true,
            ),
            (
                "DoesNotExist miss",
                expr("tier", "DoesNotExist", &[]),
                &app_web,
                false,
            ),
            (
                "unknown operator",
                expr("app", "Like", &["web"]),
                &app_web,
                false,
            ),
        ];
        for (what, sel, labels, want) in cases {
            assert_eq!(matches(&sel, labels), want, "{what}");
        }
    }

    #[test]
    fn canonical_forms_are_sorted_and_distinct() {
        let mut sel = expr("tier", "In", &["b", "a", "b"]);
        sel.match_labels = Some(labels(&[("app", "web"), ("env", "prod")]));
        sel.match_expressions.as_mut().unwrap().push(
            expr("canary", "DoesNotExist", &[])
                .match_expressions
                .unwrap()[0]
                .clone(),
        );
        assert_eq!(canonical(&sel), "!canary,app=web,env=prod,tier in (a,b)");
        assert_eq!(canonical(&LabelSelector::default()), "");
        assert_eq!(canonical(&expr("x", "Exists", &[])), "x");
        assert_eq!(canonical(&expr("x", "NotIn", &["1"])), "x notin (1)");
        assert_ne!(
            canonical(&expr("x", "Like", &["1"])),
            canonical(&expr("x", "In", &["1"]))
        );
    }
}
