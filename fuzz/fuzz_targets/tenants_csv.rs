//! `meterline_reference::tenants::parse_csv` (tenant rules). Properties: no panic; every rule
//! has an id and an org, ids are unique, its effective range survives the Avro wire (equal
//! after it), and an event carrying exactly a rule's keys at its effective_from is attributed
//! by a directory of the rules (to some rule, never `unattributed`); a refusal says why.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterline_reference::tenants::{parse_csv, TenantDirectory};
use meterline_fuzz::{check_tenant_change, now, text};
use meterline_schemas::UsageEvent;

fuzz_target!(|data: &[u8]| {
    let Some(file) = text(data) else { return };
    match parse_csv(file, Some(now()), "fuzz") {
        Ok(rules) => {
            let mut dir = TenantDirectory::new();
            for (i, r) in rules.iter().enumerate() {
                check_tenant_change("tenants csv", r);
                assert!(
                    !rules[..i].iter().any(|x| x.rule_id == r.rule_id),
                    "two rules with id {:?}",
                    r.rule_id
                );
                dir.apply(r.clone());
            }
            // an event with every key some rule names
            for r in &rules {
                let mut e = UsageEvent::example();
                e.api_key_id = r.matches.api_key_id.clone();
                e.user_id = r.matches.user_id.clone();
                e.team_id = r.matches.team_id.clone();
                e.org_id = r.matches.org_id.clone();
                e.end_user = r.matches.end_user.clone();
                if let Some(k) = &r.matches.tag_key {
                    e.tags.insert(k.clone(), r.matches.tag_value.clone().unwrap_or_default());
                }
                e.occurred_at = r.effective_from;
                let (path, rule) = dir.resolve(&e);
                assert!(!path.org.is_empty(), "resolved to a tenant without an org: {path:?}");
                assert!(
                    rule.is_some(),
                    "an event with exactly the keys of rule {:?}, in its range, is unattributed: {e:?}",
                    r.rule_id
                );
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
