//! The tenant directory: effective-dated rules that map an event's attribution keys to the org
//! hierarchy (org → business unit → cost center → team → project, environment).
//!
//! A rule matches when every key it names equals the event's (a rule naming no key is a
//! catch-all). Among the rules in force at `occurred_at` that match, the highest `priority`
//! wins, then the most specific (most keys named), then the smallest rule id, so the result never
//! depends on arrival order. No match → the explicit `unattributed` tenant, so spend is never
//! dropped from reports.
//!
//! Import formats (`meterline tenants import`): CSV with the header
//! `rule_id,priority,api_key_id,user_id,team_id,org_id,end_user,tag,org,business_unit,cost_center,team,project,environment,effective_from`
//! (`tag` as `key=value`; empty cells are "not matched"/"none"), or YAML:
//!
//! ```yaml
//! - rule_id: search-team-key
//!   priority: 10
//!   match: { api_key_id: "key-123" }
//!   tenant: { org: acme, business_unit: products, cost_center: CC-42, team: search }
//!   effective_from: 2026-01-01T00:00:00Z
//! ```

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use meterline_schemas::{TenantChange, TenantMatch, TenantPath, UsageEvent};
use serde::Deserialize;

use crate::history::History;

/// The org name of events no rule claims.
pub const UNATTRIBUTED: &str = "unattributed";

pub fn unattributed() -> TenantPath {
    TenantPath {
        org: UNATTRIBUTED.into(),
        business_unit: None,
        cost_center: None,
        team: None,
        project: None,
        environment: None,
    }
}

#[derive(Default)]
pub struct TenantDirectory {
    versions: History<TenantChange>,
    /// "field=value" of a rule's first named key → rule ids, so a lookup only tests rules that
    /// can match (catch-all rules are under "").
    index: HashMap<String, Vec<String>>,
}

/// The keys of a rule, in index order.
fn rule_keys(m: &TenantMatch) -> Vec<String> {
    let mut k = Vec::new();
    let mut push = |f: &str, v: &Option<String>| {
        if let Some(v) = v {
            k.push(format!("{f}={v}"));
        }
    };
    push("api_key_id", &m.api_key_id);
    push("user_id", &m.user_id);
    push("team_id", &m.team_id);
    push("org_id", &m.org_id);
    push("end_user", &m.end_user);
    if let (Some(tk), Some(tv)) = (&m.tag_key, &m.tag_value) {
        k.push(format!("tag:{tk}={tv}"));
    }
    k
}

fn event_keys(e: &UsageEvent) -> Vec<String> {
    let mut k = Vec::with_capacity(6 + e.tags.len());
    let mut push = |f: &str, v: &Option<String>| {
        if let Some(v) = v {
            k.push(format!("{f}={v}"));
        }
    };
    push("api_key_id", &e.api_key_id);
    push("user_id", &e.user_id);
    push("team_id", &e.team_id);
    push("org_id", &e.org_id);
    push("end_user", &e.end_user);
    for (tk, tv) in &e.tags {
        k.push(format!("tag:{tk}={tv}"));
    }
    k
}

fn matches(m: &TenantMatch, e: &UsageEvent) -> bool {
    let eq = |rule: &Option<String>, ev: &Option<String>| rule.is_none() || rule == ev;
    eq(&m.api_key_id, &e.api_key_id)
        && eq(&m.user_id, &e.user_id)
        && eq(&m.team_id, &e.team_id)
        && eq(&m.org_id, &e.org_id)
        && eq(&m.end_user, &e.end_user)
        && match (&m.tag_key, &m.tag_value) {
            (Some(k), Some(v)) => e.tags.get(k) == Some(v),
            (Some(k), None) => e.tags.contains_key(k),
            _ => true,
        }
}

impl TenantDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule version (idempotent for a repeated (rule_id, version)).
    pub fn apply(&mut self, change: TenantChange) {
        let key = rule_keys(&change.matches)
            .into_iter()
            .next()
            .unwrap_or_default();
        let ids = self.index.entry(key).or_default();
        if !ids.contains(&change.rule_id) {
            ids.push(change.rule_id.clone());
        }
        self.versions.insert(change);
    }

    /// The tenant of `event` at its `occurred_at`, and the rule that decided it (None for
    /// unattributed).
    pub fn resolve(&self, event: &UsageEvent) -> (TenantPath, Option<&str>) {
        let mut best: Option<&TenantChange> = None;
        let candidates = event_keys(event)
            .into_iter()
            .chain(std::iter::once(String::new()))
            .filter_map(|k| self.index.get(&k))
            .flatten();
        for id in candidates {
            let Some(rule) = self.versions.in_force(id, event.occurred_at) else {
                continue;
            };
            // A rule indexed under one key may have moved (a new version with other keys).
            if !matches(&rule.matches, event) {
                continue;
            }
            let rank = |r: &TenantChange| {
                (
                    r.priority,
                    rule_keys(&r.matches).len(),
                    std::cmp::Reverse(r.rule_id.clone()),
                )
            };
            if best.is_none_or(|b| rank(rule) > rank(b)) {
                best = Some(rule);
            }
        }
        match best {
            Some(r) => (r.tenant.clone(), Some(r.rule_id.as_str())),
            // No rule: what the (authenticated) gateway says about the owner stands; only what
            // nobody says is `unattributed`.
            None => (
                TenantPath {
                    org: event.org_id.clone().unwrap_or_else(|| UNATTRIBUTED.into()),
                    team: event.team_id.clone(),
                    project: event.project_id.clone(),
                    ..unattributed()
                },
                None,
            ),
        }
    }

    /// Every version of every rule: by rule id, then (effective_from, version).
    pub fn every_version(&self) -> Vec<&TenantChange> {
        self.versions.every_version()
    }

    /// Latest version of every rule (for `tenants list` and numbering new versions).
    pub fn latest(&self) -> impl Iterator<Item = &TenantChange> {
        self.versions.latest()
    }

    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantImportError {
    #[error("tenant file: {0}")]
    Syntax(String),
    #[error("rule {index} ({rule_id}).{field}: {reason}")]
    Invalid {
        index: usize,
        rule_id: String,
        field: &'static str,
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlRule {
    rule_id: String,
    #[serde(default)]
    priority: i32,
    #[serde(rename = "match", default)]
    matches: YamlMatch,
    tenant: YamlTenant,
    #[serde(default, deserialize_with = "meterline_schemas::time::deserialize_opt")]
    effective_from: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "meterline_schemas::time::deserialize_opt")]
    effective_to: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlMatch {
    api_key_id: Option<String>,
    user_id: Option<String>,
    team_id: Option<String>,
    org_id: Option<String>,
    end_user: Option<String>,
    /// `key=value`
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlTenant {
    org: String,
    business_unit: Option<String>,
    cost_center: Option<String>,
    team: Option<String>,
    project: Option<String>,
    environment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CsvRow {
    rule_id: String,
    #[serde(default)]
    priority: Option<i32>,
    api_key_id: Option<String>,
    user_id: Option<String>,
    team_id: Option<String>,
    org_id: Option<String>,
    end_user: Option<String>,
    tag: Option<String>,
    org: String,
    business_unit: Option<String>,
    cost_center: Option<String>,
    team: Option<String>,
    project: Option<String>,
    environment: Option<String>,
    #[serde(default, deserialize_with = "meterline_schemas::time::deserialize_opt")]
    effective_from: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "meterline_schemas::time::deserialize_opt")]
    effective_to: Option<DateTime<Utc>>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

struct Draft {
    rule_id: String,
    priority: i32,
    m: YamlMatch,
    tenant: YamlTenant,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

fn finish(
    drafts: Vec<Draft>,
    default_from: Option<DateTime<Utc>>,
    author: &str,
) -> Result<Vec<TenantChange>, TenantImportError> {
    let mut out: Vec<TenantChange> = Vec::with_capacity(drafts.len());
    for (index, d) in drafts.into_iter().enumerate() {
        let invalid = |field: &'static str, reason: &str| TenantImportError::Invalid {
            index,
            rule_id: d.rule_id.clone(),
            field,
            reason: reason.into(),
        };
        if d.rule_id.trim().is_empty() {
            return Err(invalid("rule_id", "required"));
        }
        if out.iter().any(|r| r.rule_id == d.rule_id) {
            return Err(invalid("rule_id", "appears twice in the file"));
        }
        let org = d.tenant.org.trim().to_string();
        if org.is_empty() {
            return Err(invalid("org", "required"));
        }
        let (tag_key, tag_value) = match nonempty(d.m.tag.clone()) {
            None => (None, None),
            Some(t) => match t.split_once('=') {
                Some((k, v)) if !k.is_empty() => (Some(k.to_string()), nonempty(Some(v.into()))),
                _ => return Err(invalid("tag", "expected key=value")),
            },
        };
        let from = d
            .from
            .or(default_from)
            .ok_or_else(|| invalid("effective_from", "missing (or pass --effective-from)"))?;
        if d.to.is_some_and(|to| to <= from) {
            return Err(invalid("effective_to", "must be after effective_from"));
        }
        out.push(TenantChange {
            rule_id: d.rule_id.trim().to_string(),
            version: 0,
            matches: TenantMatch {
                api_key_id: nonempty(d.m.api_key_id),
                user_id: nonempty(d.m.user_id),
                team_id: nonempty(d.m.team_id),
                org_id: nonempty(d.m.org_id),
                end_user: nonempty(d.m.end_user),
                tag_key,
                tag_value,
            },
            priority: d.priority,
            tenant: TenantPath {
                org,
                business_unit: nonempty(d.tenant.business_unit),
                cost_center: nonempty(d.tenant.cost_center),
                team: nonempty(d.tenant.team),
                project: nonempty(d.tenant.project),
                environment: nonempty(d.tenant.environment),
            },
            effective_from: from,
            effective_to: d.to,
            deleted: false,
            author: author.into(),
            reason: String::new(),
            changed_at: Utc::now(),
        });
    }
    Ok(out)
}

/// Parses a YAML list of rules into TenantChange drafts (version 0: the publisher numbers them).
pub fn parse_yaml(
    text: &str,
    default_from: Option<DateTime<Utc>>,
    author: &str,
) -> Result<Vec<TenantChange>, TenantImportError> {
    let rules: Vec<YamlRule> =
        serde_yaml_ng::from_str(text).map_err(|e| TenantImportError::Syntax(e.to_string()))?;
    let drafts = rules
        .into_iter()
        .map(|r| Draft {
            rule_id: r.rule_id,
            priority: r.priority,
            m: r.matches,
            tenant: r.tenant,
            from: r.effective_from,
            to: r.effective_to,
        })
        .collect();
    finish(drafts, default_from, author)
}

/// Parses CSV rules (header as in the module docs) into TenantChange drafts.
pub fn parse_csv(
    text: &str,
    default_from: Option<DateTime<Utc>>,
    author: &str,
) -> Result<Vec<TenantChange>, TenantImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut drafts = Vec::new();
    for (i, row) in reader.deserialize::<CsvRow>().enumerate() {
        // Line numbers: the header is line 1.
        let row = row.map_err(|e| TenantImportError::Syntax(format!("line {}: {e}", i + 2)))?;
        drafts.push(Draft {
            rule_id: row.rule_id,
            priority: row.priority.unwrap_or(0),
            m: YamlMatch {
                api_key_id: row.api_key_id,
                user_id: row.user_id,
                team_id: row.team_id,
                org_id: row.org_id,
                end_user: row.end_user,
                tag: row.tag,
            },
            tenant: YamlTenant {
                org: row.org,
                business_unit: row.business_unit,
                cost_center: row.cost_center,
                team: row.team,
                project: row.project,
                environment: row.environment,
            },
            from: row.effective_from,
            to: row.effective_to,
        });
    }
    finish(drafts, default_from, author)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, m, d, 0, 0, 0).unwrap()
    }

    fn event(api_key: Option<&str>, team: Option<&str>, at: DateTime<Utc>) -> UsageEvent {
        let mut e = UsageEvent::example();
        e.api_key_id = api_key.map(Into::into);
        e.team_id = team.map(Into::into);
        e.org_id = None;
        e.user_id = None;
        e.end_user = None;
        e.tags.clear();
        e.occurred_at = at;
        e
    }

    const YAML: &str = r#"
- rule_id: acme-default
  match: { org_id: acme }
  tenant: { org: acme }
- rule_id: search-team
  match: { team_id: search }
  tenant: { org: acme, business_unit: products, cost_center: CC-42, team: search }
- rule_id: search-prod-key
  priority: 10
  match: { api_key_id: key-1 }
  tenant: { org: acme, business_unit: products, cost_center: CC-42, team: search, environment: prod }
- rule_id: experiments
  match: { tag: "project=labs" }
  tenant: { org: acme, team: research, project: labs }
"#;

    fn directory() -> TenantDirectory {
        let mut d = TenantDirectory::new();
        for r in parse_yaml(YAML, Some(t(1, 1)), "me").unwrap() {
            d.apply(r);
        }
        d
    }

    #[test]
    fn priority_then_specificity_decide() {
        let d = directory();
        let (p, rule) = d.resolve(&event(Some("key-1"), Some("search"), t(2, 1)));
        assert_eq!(rule, Some("search-prod-key"));
        assert_eq!(p.environment.as_deref(), Some("prod"));
        let (p, rule) = d.resolve(&event(Some("key-2"), Some("search"), t(2, 1)));
        assert_eq!(rule, Some("search-team"));
        assert_eq!(p.cost_center.as_deref(), Some("CC-42"));
        let mut e = event(None, None, t(2, 1));
        e.tags.insert("project".into(), "labs".into());
        assert_eq!(d.resolve(&e).1, Some("experiments"));
    }

    #[test]
    fn unknown_keys_are_unattributed_and_rules_are_effective_dated() {
        let d = directory();
        let (p, rule) = d.resolve(&event(Some("nobody"), None, t(2, 1)));
        assert_eq!((p.org.as_str(), rule), (UNATTRIBUTED, None));
        // no rule, but the event names its owner: that stands
        let mut e = event(Some("nobody"), Some("ml-infra"), t(2, 1));
        e.org_id = Some("globex".into());
        e.project_id = Some("p9".into());
        let (p, rule) = d.resolve(&e);
        assert_eq!(rule, None);
        assert_eq!(
            (
                p.org.as_str(),
                p.team.as_deref(),
                p.project.as_deref(),
                p.cost_center
            ),
            ("globex", Some("ml-infra"), Some("p9"), None)
        );
        // before the rules took effect
        let (p, _) = d.resolve(&event(
            Some("key-1"),
            None,
            t(1, 1) - chrono::Duration::seconds(1),
        ));
        assert_eq!(p.org, UNATTRIBUTED);
        // a later version moves the key to another team from March
        let mut d = d;
        let mut v2 = d
            .latest()
            .find(|r| r.rule_id == "search-prod-key")
            .unwrap()
            .clone();
        v2.version = 2;
        v2.effective_from = t(3, 1);
        v2.tenant.team = Some("ads".into());
        d.apply(v2);
        let team = |at| d.resolve(&event(Some("key-1"), None, at)).0.team;
        assert_eq!(team(t(2, 28)).as_deref(), Some("search"));
        assert_eq!(team(t(3, 1)).as_deref(), Some("ads"));
    }

    #[test]
    fn csv_import_and_its_errors() {
        let csv = "rule_id,priority,api_key_id,user_id,team_id,org_id,end_user,tag,org,business_unit,cost_center,team,project,environment,effective_from\n\
                   k1,5,key-1,,,,,,acme,products,CC-42,search,,prod,2026-01-01T00:00:00Z\n\
                   t1,,,,,,,env=dev,acme,,,platform,,dev,\n";
        let rules = parse_csv(csv, Some(t(2, 1)), "me").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].matches.api_key_id.as_deref(), Some("key-1"));
        assert_eq!(rules[0].matches.user_id, None);
        assert_eq!(rules[0].effective_from, t(1, 1));
        assert_eq!(rules[1].effective_from, t(2, 1));
        assert_eq!(rules[1].matches.tag_key.as_deref(), Some("env"));
        // a leap second is kept as the wire keeps it (it came back as 23:01:00: fuzzing)
        let leap = parse_csv(
            &csv.replace("2026-01-01T00:00:00Z", "2026-01-31T23:00:60Z"),
            Some(t(2, 1)),
            "me",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            leap[0].effective_from.to_rfc3339(),
            "2026-01-31T23:01:00+00:00"
        );
        let bad = csv.replace("env=dev", "envdev");
        assert_eq!(
            parse_csv(&bad, Some(t(2, 1)), "me")
                .unwrap_err()
                .to_string(),
            "rule 1 (t1).tag: expected key=value"
        );
        let no_org = csv.replace("acme,,,platform", ",,,platform");
        assert!(parse_csv(&no_org, Some(t(2, 1)), "me")
            .unwrap_err()
            .to_string()
            .contains("(t1).org: required"));
    }
}
