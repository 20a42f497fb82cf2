//! Label selectors, as the Kubernetes API defines them: `matchLabels` and
//! `matchExpressions` ANDed; an empty selector selects everything.

use anyhow::{bail, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::objects::Labels;

/// Refuses what the API server would: unknown operators, In/NotIn
/// without values, Exists/DoesNotExist with values.
pub fn validate(sel: &LabelSelector) -> Result<()> {
    for e in sel.match_expressions.iter().flatten() {
        let n = e.values.as_ref().map_or(0, Vec::len);
        match e.operator.as_str() {
            "In" | "NotIn" if n == 0 => bail!("matchExpressions {} {} needs values", e.key, e.operator),
            "Exists" | "DoesNotExist" if n != 0 => bail!("matchExpressions {} {} takes no values", e.key, e.operator),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => bail!("unknown matchExpressions operator {other:?}"),
        }
    }
    Ok(())
}

/// Whether `sel` (validated) selects `labels`.
pub fn selects(sel: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && sel.match_expressions.iter().flatten().all(|e| {
            let have = labels.get(&e.key);
            let listed = have.is_some_and(|h| e.values.iter().flatten().any(|v| v == h));
            match e.operator.as_str() {
                "In" => listed,
                "NotIn" => !listed,
                "Exists" => have.is_some(),
                _ => have.is_none(),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let l: Labels = [("app".to_string(), "web".to_string()), ("tier".to_string(), "fe".to_string())].into();
        assert!(selects(&sel(json!({})), &l));
        assert!(selects(&sel(json!({"matchLabels": {"app": "web"}})), &l));
        assert!(!selects(&sel(json!({"matchLabels": {"app": "db"}})), &l));
        let expr = |op: &str, values: serde_json::Value| {
            sel(json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]}))
        };
        assert!(selects(&expr("In", json!(["fe", "x"])), &l));
        assert!(!selects(&expr("NotIn", json!(["fe"])), &l));
        assert!(selects(&expr("Exists", json!(null)), &l));
        assert!(!selects(&expr("DoesNotExist", json!(null)), &l));
        assert!(validate(&expr("Bogus", json!(null))).is_err());
        assert!(validate(&expr("In", json!([]))).is_err());
        assert!(validate(&expr("Exists", json!(["x"]))).is_err());
    }
}
