//! Whether a budget's (or an anomaly's) scope covers a call. Shared by the budget ledger in
//! aggregate (priced rows) and the enforcement check at the edge (what a gateway knows).

use std::collections::BTreeMap;

use crate::{PricedUsage, Scope, ScopeKind};

/// The attribution of one call. At the edge any field may be unknown; an unknown field
/// matches no scope of its kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attribution {
    pub org: Option<String>,
    pub cost_center: Option<String>,
    pub team: Option<String>,
    pub project: Option<String>,
    pub api_key_id: Option<String>,
    pub user_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub provider: Option<String>,
    pub model: Option<String>,
}

impl Attribution {
    /// A priced row: the tenant enrich resolved, plus the event's own keys.
    pub fn of_priced(row: &PricedUsage) -> Attribution {
        let (t, e) = (&row.tenant, &row.event);
        Attribution {
            org: Some(t.org.clone()),
            cost_center: t.cost_center.clone(),
            team: t.team.clone(),
            project: t.project.clone(),
            api_key_id: e.api_key_id.clone(),
            user_id: e.user_id.clone(),
            tags: e.tags.clone(),
            provider: Some(e.provider.clone()),
            model: Some(row.billed_model().to_string()),
        }
    }
}

impl Scope {
    /// `tag` scopes are `key=value`; `model` scopes are `provider/model` or just `model`.
    pub fn matches(&self, a: &Attribution) -> bool {
        let v = self.value.as_str();
        let is = |f: &Option<String>| f.as_deref() == Some(v);
        match self.kind {
            ScopeKind::Org => is(&a.org),
            ScopeKind::CostCenter => is(&a.cost_center),
            ScopeKind::Team => is(&a.team),
            ScopeKind::Project => is(&a.project),
            ScopeKind::ApiKey => is(&a.api_key_id),
            ScopeKind::User => is(&a.user_id),
            ScopeKind::Tag => v
                .split_once('=')
                .is_some_and(|(k, val)| a.tags.get(k).is_some_and(|x| x == val)),
            ScopeKind::Model => match v.split_once('/') {
                Some((p, m)) => a.provider.as_deref() == Some(p) && a.model.as_deref() == Some(m),
                None => a.model.as_deref() == Some(v),
            },
        }
    }

    /// `kind:value`, the scope's part of a signal's key and of alert texts.
    pub fn label(&self) -> String {
        let kind = serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        format!("{kind}:{}", self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(kind: ScopeKind, value: &str) -> Scope {
        Scope {
            kind,
            value: value.into(),
        }
    }

    #[test]
    fn unknown_fields_match_nothing_and_tags_and_models_have_their_syntax() {
        let mut a = Attribution {
            team: Some("search".into()),
            provider: Some("openai".into()),
            model: Some("gpt-4o".into()),
            ..Default::default()
        };
        a.tags.insert("env".into(), "prod".into());
        assert!(sc(ScopeKind::Team, "search").matches(&a));
        assert!(!sc(ScopeKind::Org, "acme").matches(&a), "org unknown");
        assert!(
            !sc(ScopeKind::ApiKey, "").matches(&a),
            "empty never matches None"
        );
        assert!(sc(ScopeKind::Tag, "env=prod").matches(&a));
        assert!(!sc(ScopeKind::Tag, "env").matches(&a));
        assert!(!sc(ScopeKind::Tag, "env=dev").matches(&a));
        assert!(sc(ScopeKind::Model, "gpt-4o").matches(&a));
        assert!(sc(ScopeKind::Model, "openai/gpt-4o").matches(&a));
        assert!(!sc(ScopeKind::Model, "azure/gpt-4o").matches(&a));
        assert_eq!(
            sc(ScopeKind::CostCenter, "cc-1").label(),
            "cost_center:cc-1"
        );
    }
}
