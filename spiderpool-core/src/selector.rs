//! Kubernetes label selectors (`metav1.LabelSelector`) and their evaluation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Labels of a Kubernetes object: key to value.
pub type Labels = BTreeMap<String, String>;

/// A Kubernetes label selector: every `matchLabels` pair and every `matchExpressions`
/// requirement must hold. An empty selector matches every object, as in Kubernetes.
///
/// ```
/// use spiderpool_core::{LabelSelector, Labels};
/// let selector: LabelSelector = serde_json::from_str(r#"{
///     "matchLabels": {"node-subnet": "subnet-6"},
///     "matchExpressions": [{"key": "node-role.kubernetes.io/edge", "operator": "DoesNotExist"}]
/// }"#).unwrap();
/// let labels = Labels::from([("node-subnet".to_string(), "subnet-6".to_string())]);
/// assert!(selector.matches(&labels));
/// assert!(!selector.matches(&Labels::new()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement of a selector: a key, an operator and, for `In` / `NotIn`, values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key the requirement is about.
    pub key: String,
    /// How the label is tested.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn`; must be empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operator of a [`LabelSelectorRequirement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum SelectorOperator {
    /// The label is present and its value is one of `values`.
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    /// The label is present, whatever its value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// Why a selector is not valid. `field` is relative to the selector, e.g.
/// `matchExpressions[0].values`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A label key does not follow Kubernetes' syntax.
    #[error("{field}: {key:?} is not a valid label key: {reason}")]
    BadKey {
        /// Where the key stands.
        field: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A label value does not follow Kubernetes' syntax.
    #[error("{field}: {value:?} is not a valid label value: {reason}")]
    BadValue {
        /// Where the value stands.
        field: String,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `In` or `NotIn` without values.
    #[error("{field}: operator {operator:?} needs at least one value")]
    MissingValues {
        /// Where the values belong.
        field: String,
        /// The operator.
        operator: SelectorOperator,
    },
    /// `Exists` or `DoesNotExist` with values.
    #[error("{field}: operator {operator:?} takes no values, remove them")]
    UnexpectedValues {
        /// Where the values stand.
        field: String,
        /// The operator.
        operator: SelectorOperator,
    },
}

impl LabelSelector {
    /// Whether the selector has neither `matchLabels` nor `matchExpressions`.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether an object with `labels` is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self
                .match_expressions
                .iter()
                .all(|requirement| requirement.matches(labels))
    }

    /// Checks keys, values and operators as Kubernetes does; returns every problem found.
    pub fn validate(&self) -> Vec<SelectorError> {
        let mut errors = Vec::new();
        for (key, value) in &self.match_labels {
            let field = format!("matchLabels[{key}]");
            if let Err(reason) = check_label_key(key) {
                errors.push(SelectorError::BadKey {
                    field: field.clone(),
                    key: key.clone(),
                    reason,
                });
            }
            if let Err(reason) = check_label_value(value) {
                errors.push(SelectorError::BadValue {
                    field,
                    value: value.clone(),
                    reason,
                });
            }
        }
        for (index, requirement) in self.match_expressions.iter().enumerate() {
            let field = format!("matchExpressions[{index}]");
            if let Err(reason) = check_label_key(&requirement.key) {
                errors.push(SelectorError::BadKey {
                    field: format!("{field}.key"),
                    key: requirement.key.clone(),
                    reason,
                });
            }
            let operator = requirement.operator;
            match (operator, requirement.values.is_empty()) {
                (SelectorOperator::In | SelectorOperator::NotIn, true) => {
                    errors.push(SelectorError::MissingValues {
                        field: format!("{field}.values"),
                        operator,
                    })
                }
                (SelectorOperator::Exists | SelectorOperator::DoesNotExist, false) => {
                    errors.push(SelectorError::UnexpectedValues {
                        field: format!("{field}.values"),
                        operator,
                    })
                }
                _ => {}
            }
            for (value_index, value) in requirement.values.iter().enumerate() {
                if let Err(reason) = check_label_value(value) {
                    errors.push(SelectorError::BadValue {
                        field: format!("{field}.values[{value_index}]"),
                        value: value.clone(),
                        reason,
                    });
                }
            }
        }
        errors
    }

    /// How many constraints the selector states; used to order pools by specificity.
    pub(crate) fn constraint_count(&self) -> usize {
        self.match_labels.len() + self.match_expressions.len()
    }
}

impl LabelSelectorRequirement {
    /// Whether `labels` satisfy the requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// A qualified name: at most 63 characters, alphanumeric at both ends, `-`, `_`, `.` inside.
fn check_name_part(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the name part must not be empty");
    }
    if name.len() > 63 {
        return Err("the name part must be at most 63 characters");
    }
    check_label_chars(name)
}

fn check_label_chars(text: &str) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_alphanumeric();
    if !bytes.first().is_some_and(alphanumeric) || !bytes.last().is_some_and(alphanumeric) {
        return Err("it must start and end with a letter or digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// `[prefix/]name`, the prefix a DNS subdomain of at most 253 characters.
fn check_label_key(key: &str) -> Result<(), &'static str> {
    match key.split_once('/') {
        None => check_name_part(key),
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 {
                return Err("the prefix must be a DNS subdomain of 1 to 253 characters");
            }
            let label_ok = |label: &str| {
                let bytes = label.as_bytes();
                !label.is_empty()
                    && label.len() <= 63
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                    && bytes[0] != b'-'
                    && bytes[bytes.len() - 1] != b'-'
            };
            if !prefix.split('.').all(label_ok) {
                return Err("the prefix must be a lower-case DNS subdomain");
            }
            check_name_part(name)
        }
    }
}

/// Empty, or at most 63 characters with the same rules as a name.
fn check_label_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 {
        return Err("a label value must be at most 63 characters");
    }
    check_label_chars(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: key.into(),
                operator,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn an_empty_selector_matches_everything() {
        assert!(LabelSelector::default().matches(&Labels::new()));
        assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators_follow_kubernetes_semantics() {
        use SelectorOperator::*;
        let zone6 = labels(&[("zone", "6")]);
        let zone7 = labels(&[("zone", "7")]);
        let none = Labels::new();
        let cases = [
            (requirement("zone", In, &["6"]), [true, false, false]),
            (requirement("zone", NotIn, &["6"]), [false, true, true]),
            (requirement("zone", Exists, &[]), [true, true, false]),
            (requirement("zone", DoesNotExist, &[]), [false, false, true]),
        ];
        for (selector, expected) in cases {
            let got = [
                selector.matches(&zone6),
                selector.matches(&zone7),
                selector.matches(&none),
            ];
            assert_eq!(got, expected, "{selector:?}");
        }
    }

    #[test]
    fn match_labels_and_expressions_must_all_hold() {
        let mut selector = requirement("rack", SelectorOperator::Exists, &[]);
        selector.match_labels.insert("zone".into(), "6".into());
        assert!(selector.matches(&labels(&[("zone", "6"), ("rack", "r1")])));
        assert!(!selector.matches(&labels(&[("zone", "6")])));
        assert!(!selector.matches(&labels(&[("zone", "7"), ("rack", "r1")])));
    }

    #[test]
    fn validation_reports_every_problem() {
        let selector: LabelSelector = serde_json::from_str(
            r#"{"matchLabels": {"-bad": "ok", "good": "bad value"},
                "matchExpressions": [
                    {"key": "zone", "operator": "In"},
                    {"key": "Example.com/zone", "operator": "Exists", "values": ["x"]}
                ]}"#,
        )
        .unwrap();
        let errors: Vec<String> = selector.validate().iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "matchLabels[-bad]: \"-bad\" is not a valid label key: it must start and end with a letter or digit",
                "matchLabels[good]: \"bad value\" is not a valid label value: only letters, digits, '-', '_' and '.' are allowed",
                "matchExpressions[0].values: operator In needs at least one value",
                "matchExpressions[1].key: \"Example.com/zone\" is not a valid label key: the prefix must be a lower-case DNS subdomain",
                "matchExpressions[1].values: operator Exists takes no values, remove them",
            ]
        );
        assert!(
            requirement("topology.kubernetes.io/zone", SelectorOperator::In, &["a"])
                .validate()
                .is_empty()
        );
    }

    #[test]
    fn unknown_operators_and_fields_are_refused() {
        let err = serde_json::from_str::<LabelSelector>(
            r#"{"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown variant `Gt`"), "{err}");
        let err = serde_json::from_str::<LabelSelector>(r#"{"matchLabel": {}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `matchLabel`"), "{err}");
    }
}
