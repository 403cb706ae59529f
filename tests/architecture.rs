//! Who may import whom, checked from the manifests (a guard, so the crate cut cannot erode):
//!
//! ```text
//! schemas    the contract only                        → no Kafka/HTTP/async runtime crate
//! runtime    Kafka clients, follower, telemetry, auth → schemas
//! reference  prices, tenants, budgets, budget view    → schemas, runtime
//! ledger     the ledger files                         → schemas (no Kafka)
//! ingest, enrich, aggregate, watch, api (stages)     → the four above, never each other
//! ```
//! Dev-dependencies count too: a test that needs two stages belongs in the root `tests/`.

use std::collections::BTreeSet;

const BASE: [&str; 4] = [
    "meterline-schemas",
    "meterline-runtime",
    "meterline-reference",
    "meterline-ledger",
];
const STAGES: [&str; 5] = [
    "meterline-ingest",
    "meterline-enrich",
    "meterline-aggregate",
    "meterline-watch",
    "meterline-api",
];

/// Every `.rs` file under `dir` (recursively) with its text.
fn rust_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    out
}

/// The `src/` of every crate of the workspace and of the root package.
fn source_dirs() -> Vec<std::path::PathBuf> {
    let root = env!("CARGO_MANIFEST_DIR");
    BASE.iter()
        .chain(STAGES.iter())
        .map(|c| format!("{root}/{}/src", c.trim_start_matches("meterline-")))
        .chain([format!("{root}/src")])
        .map(std::path::PathBuf::from)
        .collect()
}

/// Every dependency name of `dir/Cargo.toml` (normal and dev).
fn deps(dir: &str) -> BTreeSet<String> {
    let path = format!("{}/{dir}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let manifest: toml::Table = text.parse().unwrap_or_else(|e| panic!("{path}: {e}"));
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .filter_map(|k| manifest.get(*k).and_then(|v| v.as_table()))
        .flat_map(|t| t.keys().cloned())
        .collect()
}

fn meterline(d: &BTreeSet<String>) -> BTreeSet<&str> {
    d.iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("meterline-"))
        .collect()
}

#[test]
fn base_crates_depend_only_downwards() {
    let allowed: [(&str, &[&str]); 4] = [
        ("schemas", &[]),
        ("runtime", &["meterline-schemas"]),
        ("reference", &["meterline-schemas", "meterline-runtime"]),
        ("ledger", &["meterline-schemas"]),
    ];
    for (dir, ok) in allowed {
        let d = deps(dir);
        let extra: Vec<&str> = meterline(&d)
            .into_iter()
            .filter(|n| !ok.contains(n))
            .collect();
        assert!(extra.is_empty(), "{dir} must not depend on {extra:?}");
    }
    let io = ["rdkafka", "axum", "tokio", "tokio-util", "reqwest", "tower"];
    for (dir, banned) in [("schemas", &io[..]), ("ledger", &io[..2])] {
        let d = deps(dir);
        let bad: Vec<&&str> = banned.iter().filter(|b| d.contains(**b)).collect();
        assert!(bad.is_empty(), "{dir} must not depend on {bad:?}");
    }
}

#[test]
fn stage_crates_never_import_each_other() {
    for stage in STAGES {
        let dir = stage.trim_start_matches("meterline-");
        let d = deps(dir);
        let bad: Vec<&str> = meterline(&d)
            .into_iter()
            .filter(|n| !BASE.contains(n))
            .collect();
        assert!(bad.is_empty(), "{stage} must not depend on {bad:?}");
    }
}

/// The manifests are what the compiler enforces; the sources are checked too, so a path
/// dependency sneaked in through a re-export or a `#[path]` shows up.
#[test]
fn no_source_names_another_stage() {
    for stage in STAGES {
        let dir = stage.trim_start_matches("meterline-");
        let root = format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"));
        for (path, text) in rust_files(std::path::Path::new(&root)) {
            for other in STAGES.iter().filter(|o| **o != stage) {
                let krate = other.replace('-', "_");
                assert!(
                    !text.contains(&format!("{krate}::")),
                    "{} names {krate}",
                    path.display()
                );
            }
        }
    }
}

/// One error enum per crate whose variants say what failed and keep their source: no
/// catch-all that turns any error into text (spelled in pieces so this test does not find
/// itself).
#[test]
fn no_error_is_flattened_into_a_catch_all() {
    let banned = [
        concat!("Io(", "String)"),
        concat!("fn io(e: ", "impl"),
        concat!("Error::", "io("),
    ];
    let mut found = vec![];
    for dir in source_dirs() {
        for (path, text) in rust_files(&dir) {
            for b in banned.iter().filter(|b| text.contains(**b)) {
                found.push(format!("{}: {b}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Every instant a person or a client writes is read through `schemas::time` (serde `with` /
/// `deserialize_with`, clap `value_parser`), which keeps it at the wire's precision: a leap
/// second or a nanosecond read any other way is accepted, then comes back different from the
/// wire (fuzzing found both). Checked on every `DateTime<Utc>` field of a `Deserialize` or clap
/// type in the workspace's sources.
#[test]
fn instants_from_outside_are_read_at_wire_precision() {
    let field = [": DateTime<Utc>,", ": Option<DateTime<Utc>>,"];
    let mut unchecked = Vec::new();
    for dir in source_dirs() {
        for (path, text) in rust_files(&dir) {
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                let t = l.trim_start().trim_start_matches("pub ");
                if !field.iter().any(|f| t.contains(f)) || t.starts_with("//") || t.contains('(') {
                    continue;
                }
                // the type this field belongs to, and the attributes just above the field
                let Some(decl) = (0..i).rev().find(|&j| {
                    let d = lines[j].trim_start().trim_start_matches("pub ");
                    d.starts_with("struct ") || d.starts_with("enum ")
                }) else {
                    continue;
                };
                let derives: String = (0..decl)
                    .rev()
                    .take_while(|&j| {
                        let a = lines[j].trim_start();
                        a.starts_with("#[") || a.starts_with("///") || a.starts_with(")]")
                    })
                    .map(|j| lines[j])
                    .collect();
                let read_from_outside = derives.contains("Deserialize")
                    || derives.contains("clap::")
                    || derives.contains("Args")
                    || derives.contains("Subcommand");
                let attrs: String = (0..i)
                    .rev()
                    .take_while(|&j| {
                        let a = lines[j].trim_start();
                        a.starts_with("#[") || a.starts_with("///")
                    })
                    .map(|j| lines[j])
                    .collect();
                let through_time = attrs.contains("with = \"")
                    || attrs.contains("deserialize_with")
                    || attrs.contains("value_parser = meterline_schemas::time::");
                if read_from_outside && !through_time {
                    unchecked.push(format!("{}:{}: {}", path.display(), i + 1, l.trim()));
                }
            }
        }
    }
    assert!(
        unchecked.is_empty(),
        "instants read around schemas::time:\n{}",
        unchecked.join("\n")
    );
}

/// The module a file is (`["reports", "chargeback"]` for `src/reports/chargeback.rs`; the
/// crate root is `[]`).
fn module_of(src: &std::path::Path, file: &std::path::Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// The modules `text` (of module `from`) names through `crate::…` and `super::…` paths, test
/// code left out; each path is resolved to the longest module of `known` it starts with.
fn modules_named(
    from: &[String],
    text: &str,
    known: &BTreeSet<Vec<String>>,
) -> BTreeSet<Vec<String>> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = BTreeSet::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", from[..from.len().saturating_sub(1)].to_vec()),
    ] {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `my_crate::`, not `crate::`
            }
            let mut path = base.clone();
            for seg in code[at + prefix.len()..].split("::") {
                let name: String = seg
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if name.is_empty() {
                    break;
                }
                let whole = name.len() == seg.len(); // `x::` goes on; `x;`, `x}`, `X` end it
                path.push(name);
                if !whole {
                    break;
                }
            }
            while !path.is_empty() && !known.contains(&path) {
                path.pop();
            }
            if !path.is_empty() {
                out.insert(path);
            }
        }
    }
    out
}

/// Within each crate no module reaches itself through the modules it names (`crate::` and
/// `super::` paths; a module and its own parents or children excepted: a parent declares and
/// re-exports its children). A cycle is how `close ↔ chargeback ↔ focus` (api) and
/// `codec → events → time → codec` (schemas) grew; cut them by moving what both sides need
/// into a module of its own.
#[test]
fn no_crate_has_a_module_cycle() {
    let mut cycles = vec![];
    for src in source_dirs() {
        let files = rust_files(&src);
        let known: BTreeSet<Vec<String>> = files.iter().map(|(p, _)| module_of(&src, p)).collect();
        let mut edges: std::collections::BTreeMap<Vec<String>, BTreeSet<Vec<String>>> =
            Default::default();
        for (path, text) in &files {
            let from = module_of(&src, path);
            let related = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
            let to: BTreeSet<_> = modules_named(&from, text, &known)
                .into_iter()
                .filter(|m| !related(&from, m))
                .collect();
            edges.entry(from).or_default().extend(to);
        }
        // a module on a cycle reaches itself
        for start in edges.keys() {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<(Vec<String>, Vec<Vec<String>>)> = vec![(start.clone(), vec![])];
            while let Some((m, trail)) = stack.pop() {
                for next in edges.get(&m).into_iter().flatten() {
                    let mut trail = trail.clone();
                    trail.push(next.clone());
                    if next == start {
                        let names: Vec<String> = std::iter::once(start)
                            .chain(trail.iter())
                            .map(|p| p.join("::"))
                            .collect();
                        cycles.push(format!("{}: {}", src.display(), names.join(" → ")));
                    } else if seen.insert(next.clone()) {
                        stack.push((next.clone(), trail));
                    }
                }
            }
        }
    }
    cycles.sort();
    cycles.dedup();
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

/// Every HTTP server accepts through `telemetry::IdleTimeoutListener`: it closes silent
/// clients and sets `TCP_NODELAY` (without it a kept-alive client waited up to 40 ms for the
/// end of every streamed answer). Checked on each `axum::serve(x, …)` of the sources outside
/// their test modules: `x` is bound from `IdleTimeoutListener::new(`.
#[test]
fn every_server_accepts_through_the_one_listener() {
    let mut raw = vec![];
    let mut servers = 0;
    for dir in source_dirs() {
        for (path, text) in rust_files(&dir) {
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            // other spellings of the call are refused outright: they would escape the check
            for other in [
                "use axum::serve;",
                "axum::serve::serve(",
                "use axum::serve::serve",
            ] {
                if code.contains(other) {
                    raw.push(format!("{}: {other}", path.display()));
                }
            }
            for (at, _) in code.match_indices("axum::serve(") {
                servers += 1;
                let arg: String = code[at + "axum::serve(".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                // the binding in force at the call: the last `let arg =` before it
                let before = &code[..at];
                let bound = before.rfind(&format!("let {arg} =")).map(|i| {
                    before[i..]
                        .trim_start_matches(&format!("let {arg} ="))
                        .trim_start()
                });
                let through = bound.is_some_and(|b| {
                    b.starts_with("meterline_runtime::telemetry::IdleTimeoutListener::new(")
                        || b.starts_with("IdleTimeoutListener::new(")
                });
                if arg.is_empty() || !through {
                    raw.push(format!("{}: axum::serve({arg}…)", path.display()));
                }
            }
        }
    }
    assert!(
        servers >= 3,
        "API, ingest and /metrics serve HTTP: found {servers}"
    );
    assert!(
        raw.is_empty(),
        "served without IdleTimeoutListener:\n{}",
        raw.join("\n")
    );
}
