//! Label and node selectors parsed once per object version, matched many times per cycle.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as ApiLabelSelector;

/// An operator of a selector requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// Node selectors only: the label is an integer greater than the single value.
    Gt,
    /// Node selectors only: the label is an integer less than the single value.
    Lt,
}

/// One `key op values` requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

impl Requirement {
    fn matches_value(&self, value: Option<&str>) -> bool {
        match self.op {
            Op::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Op::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
            Op::Gt | Op::Lt => {
                // Validated at parse time to have exactly one integer value.
                let (Some(v), Some(bound)) = (value, self.values.first()) else {
                    return false;
                };
                let (Ok(v), Ok(bound)) = (v.parse::<i64>(), bound.parse::<i64>()) else {
                    return false;
                };
                if self.op == Op::Gt {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.key).map(String::as_str))
    }
}

fn parse_op(op: &str, node: bool) -> Result<Op, String> {
    Ok(match op {
        "In" => Op::In,
        "NotIn" => Op::NotIn,
        "Exists" => Op::Exists,
        "DoesNotExist" => Op::DoesNotExist,
        "Gt" if node => Op::Gt,
        "Lt" if node => Op::Lt,
        other => return Err(format!("{other:?} is not a valid label selector operator")),
    })
}

fn requirement(
    key: &str,
    op: &str,
    values: Option<&Vec<String>>,
    node: bool,
) -> Result<Requirement, String> {
    let op = parse_op(op, node)?;
    let values = values.cloned().unwrap_or_default();
    match op {
        Op::In | Op::NotIn if values.is_empty() => {
            return Err(format!(
                "values: Required value: for 'in', 'notin' operators, values set can't be empty (key {key})"
            ));
        }
        Op::Exists | Op::DoesNotExist if !values.is_empty() => {
            return Err(format!(
                "values: Invalid value: for 'exists', 'doesnotexist' operators, values set must be empty (key {key})"
            ));
        }
        Op::Gt | Op::Lt if values.len() != 1 || values[0].parse::<i64>().is_err() => {
            return Err(format!(
                "values: Invalid value: for 'Gt', 'Lt' operators, exactly one integer value is required (key {key})"
            ));
        }
        _ => {}
    }
    Ok(Requirement {
        key: key.to_string(),
        op,
        values,
    })
}

/// A metav1.LabelSelector. A missing selector selects nothing, an empty one everything,
/// as `metav1.LabelSelectorAsSelector` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    nothing: bool,
    reqs: Vec<Requirement>,
}

impl LabelSelector {
    pub fn nothing() -> Self {
        LabelSelector {
            nothing: true,
            reqs: Vec::new(),
        }
    }

    pub fn parse(sel: Option<&ApiLabelSelector>) -> Result<Self, String> {
        let Some(sel) = sel else {
            return Ok(Self::nothing());
        };
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement {
                key: k.clone(),
                op: Op::In,
                values: vec![v.clone()],
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            reqs.push(requirement(&e.key, &e.operator, e.values.as_ref(), false)?);
        }
        Ok(LabelSelector {
            nothing: false,
            reqs,
        })
    }

    /// Adds `key in (value)`, as matchLabelKeys merging does.
    pub fn add_equals(&mut self, key: &str, value: &str) {
        self.reqs.push(Requirement {
            key: key.to_string(),
            op: Op::In,
            values: vec![value.to_string()],
        });
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.reqs.iter().all(|r| r.matches(labels))
    }
}

/// One nodeSelectorTerm: its expressions and `metadata.name` field requirements are ANDed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTerm {
    exprs: Vec<Requirement>,
    fields: Vec<Requirement>,
    /// A term that failed to parse never matches (upstream's lazy-error node selector).
    invalid: bool,
}

impl NodeTerm {
    pub fn parse(term: &NodeSelectorTerm) -> Self {
        let parse_all = |reqs: Option<&Vec<NodeSelectorRequirement>>,
                         fields: bool|
         -> Result<Vec<Requirement>, String> {
            let mut out = Vec::new();
            for r in reqs.into_iter().flatten() {
                if fields && r.key != "metadata.name" {
                    return Err(format!("{:?} is not a supported field selector key", r.key));
                }
                out.push(requirement(&r.key, &r.operator, r.values.as_ref(), true)?);
            }
            Ok(out)
        };
        match (
            parse_all(term.match_expressions.as_ref(), false),
            parse_all(term.match_fields.as_ref(), true),
        ) {
            (Ok(exprs), Ok(fields)) => NodeTerm {
                exprs,
                fields,
                invalid: false,
            },
            _ => NodeTerm {
                exprs: Vec::new(),
                fields: Vec::new(),
                invalid: true,
            },
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>, node_name: &str) -> bool {
        // An empty term matches no node.
        if self.invalid || (self.exprs.is_empty() && self.fields.is_empty()) {
            return false;
        }
        self.exprs.iter().all(|r| r.matches(labels))
            && self.fields.iter().all(|r| r.matches_value(Some(node_name)))
    }
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

    #[test]
    fn nil_selects_nothing_empty_everything() -> Result<(), String> {
        assert!(!LabelSelector::parse(None)?.matches(&labels(&[])));
        assert!(
            LabelSelector::parse(Some(&ApiLabelSelector::default()))?
                .matches(&labels(&[("a", "b")]))
        );
        Ok(())
    }

    #[test]
    fn expressions() -> Result<(), String> {
        let sel = ApiLabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        let sel = LabelSelector::parse(Some(&sel))?;
        assert!(sel.matches(&labels(&[("app", "web")])));
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!sel.matches(&labels(&[("app", "api")])));
        Ok(())
    }

    #[test]
    fn node_terms_gt_and_fields() {
        let term = NodeTerm::parse(&NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: "cores".into(),
                operator: "Gt".into(),
                values: Some(vec!["4".into()]),
            }]),
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec!["n1".into()]),
            }]),
        });
        assert!(term.matches(&labels(&[("cores", "8")]), "n1"));
        assert!(!term.matches(&labels(&[("cores", "8")]), "n2"));
        assert!(!term.matches(&labels(&[("cores", "2")]), "n1"));
        assert!(!NodeTerm::parse(&NodeSelectorTerm::default()).matches(&labels(&[]), "n1"));
    }
}
