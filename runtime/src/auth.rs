//! Bearer tokens and roles. Tokens are stored as SHA-256 hex digests only; the plain token
//! exists on the caller's side alone.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Finance,
    TeamLead,
    Viewer,
    Edge,
}

impl Role {
    /// The name configs and messages use (`team_lead`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Finance => "finance",
            Role::TeamLead => "team_lead",
            Role::Viewer => "viewer",
            Role::Edge => "edge",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Principal name, recorded as the author of changes it makes.
    pub principal: String,
    /// Lower-case hex SHA-256 of the bearer token (`meterline token hash <token>` prints it).
    pub sha256: String,
    /// Role granted.
    pub role: Role,
    /// Teams a `team_lead` may see.
    #[serde(default)]
    pub teams: Vec<String>,
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A resolved caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub teams: Vec<String>,
}

/// Why a request was not authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No or malformed `Authorization: Bearer …` header, or an unknown token (401).
    Unauthenticated,
    /// Known token, role not allowed here (403): which role it has, which ones would do.
    Forbidden { role: Role, allowed: Vec<Role> },
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthFailure::Unauthenticated => f.write_str("missing or unknown bearer token"),
            AuthFailure::Forbidden { role, allowed } => {
                let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
                write!(
                    f,
                    "a token with role {role} may not do this; it needs one of: {} \
                     (tokens and roles: [[<stage>.tokens]] in the config)",
                    names.join(", ")
                )
            }
        }
    }
}

/// Token table keyed by digest.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    by_hash: std::collections::HashMap<String, Principal>,
}

impl TokenTable {
    pub fn new(tokens: &[TokenConfig]) -> Self {
        let by_hash = tokens
            .iter()
            .map(|t| {
                (
                    t.sha256.to_ascii_lowercase(),
                    Principal {
                        name: t.principal.clone(),
                        role: t.role,
                        teams: t.teams.clone(),
                    },
                )
            })
            .collect();
        TokenTable { by_hash }
    }

    /// Resolves an `Authorization` header value and checks the role.
    pub fn authorize(
        &self,
        header: Option<&str>,
        allowed: &[Role],
    ) -> Result<Principal, AuthFailure> {
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthFailure::Unauthenticated)?;
        let p = self
            .by_hash
            .get(&hash_token(token))
            .ok_or(AuthFailure::Unauthenticated)?;
        if allowed.contains(&p.role) {
            Ok(p.clone())
        } else {
            Err(AuthFailure::Forbidden {
                role: p.role,
                allowed: allowed.to_vec(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorizes_by_digest_and_role() {
        let t = TokenTable::new(&[TokenConfig {
            principal: "edge-1".into(),
            sha256: hash_token("s3cret"),
            role: Role::Edge,
            teams: vec![],
        }]);
        assert_eq!(
            t.authorize(Some("Bearer s3cret"), &[Role::Edge])
                .unwrap()
                .name,
            "edge-1"
        );
        let refused = t.authorize(Some("Bearer s3cret"), &[Role::Finance, Role::Admin]);
        assert_eq!(
            refused,
            Err(AuthFailure::Forbidden {
                role: Role::Edge,
                allowed: vec![Role::Finance, Role::Admin]
            })
        );
        assert_eq!(
            refused.unwrap_err().to_string(),
            "a token with role edge may not do this; it needs one of: finance, admin \
             (tokens and roles: [[<stage>.tokens]] in the config)"
        );
        assert_eq!(
            t.authorize(Some("Bearer nope"), &[Role::Edge]),
            Err(AuthFailure::Unauthenticated)
        );
        assert_eq!(
            t.authorize(Some("Basic s3cret"), &[Role::Edge]),
            Err(AuthFailure::Unauthenticated)
        );
        assert_eq!(
            t.authorize(None, &[Role::Edge]),
            Err(AuthFailure::Unauthenticated)
        );
    }
}
