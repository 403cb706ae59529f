//! Effective-dated versions of reference entities (prices, tenant rules): one mechanism for
//! "which version was in force at time t". A version applies from its `effective_from`
//! (inclusive) to its `effective_to` (exclusive) or the next version's start; a `deleted`
//! version retires the entity from its start. Among versions starting at the same instant the
//! highest version number wins (a correction).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use meterline_schemas::{PriceChange, TenantChange};

/// What `History` needs of a reference change event.
pub trait Effective {
    fn id(&self) -> &str;
    fn version(&self) -> i64;
    fn effective_from(&self) -> DateTime<Utc>;
    fn effective_to(&self) -> Option<DateTime<Utc>>;
    fn deleted(&self) -> bool;
}

macro_rules! effective {
    ($t:ty, $id:ident) => {
        impl Effective for $t {
            fn id(&self) -> &str {
                &self.$id
            }
            fn version(&self) -> i64 {
                self.version
            }
            fn effective_from(&self) -> DateTime<Utc> {
                self.effective_from
            }
            fn effective_to(&self) -> Option<DateTime<Utc>> {
                self.effective_to
            }
            fn deleted(&self) -> bool {
                self.deleted
            }
        }
    };
}
effective!(PriceChange, price_id);
effective!(TenantChange, rule_id);

/// Every version of every entity, by id.
pub struct History<T> {
    /// id → versions ordered by (effective_from, version).
    versions: HashMap<String, Vec<T>>,
}

impl<T> Default for History<T> {
    fn default() -> Self {
        History {
            versions: HashMap::new(),
        }
    }
}

impl<T: Effective> History<T> {
    /// Adds a version (idempotent for a repeated (id, version)).
    pub fn insert(&mut self, change: T) {
        let vs = self.versions.entry(change.id().to_string()).or_default();
        vs.retain(|v| v.version() != change.version());
        vs.push(change);
        vs.sort_by_key(|v| (v.effective_from(), v.version()));
    }

    /// The version of `id` in force at `at`.
    pub fn in_force(&self, id: &str, at: DateTime<Utc>) -> Option<&T> {
        let v = self
            .versions
            .get(id)?
            .iter()
            .rev()
            .find(|v| v.effective_from() <= at)?;
        (!v.deleted() && v.effective_to().is_none_or(|end| at < end)).then_some(v)
    }

    /// Every version of `id`, ordered by (effective_from, version).
    pub fn versions(&self, id: &str) -> &[T] {
        self.versions.get(id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every version of every entity: by id, then (effective_from, version).
    pub fn every_version(&self) -> Vec<&T> {
        let mut ids: Vec<&String> = self.versions.keys().collect();
        ids.sort();
        ids.into_iter().flat_map(|id| &self.versions[id]).collect()
    }

    /// The highest version of every entity.
    pub fn latest(&self) -> impl Iterator<Item = &T> {
        self.versions
            .values()
            .filter_map(|vs| vs.iter().max_by_key(|v| v.version()))
    }

    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}
