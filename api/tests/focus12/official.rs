//! The FinOps Foundation's own FOCUS validator (PyPI `focus-validator` 2.2.1, model 1.2.0.1)
//! run over an export, as a FinOps analyst would. `scripts/setup-python` installs it into
//! `$METERLINE_FOCUS_PY_HOME` (default `~/.cache/meterline/py-focus`); a missing install
//! fails the test rather than skipping it.
//!
//! Its verdicts are read from its console report (`❌ <rule>: FAIL (violations=N, msg=…)`),
//! the one output that names every failing rule with its count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The applicability criteria meterline declares for its chargeback (see the module doc of
/// `focus12`): usage is measured in tokens, sub accounts are the grouping (cost center, team
/// or project: more than one kind), events carry tags, billing accounts have names.
pub const APPLICABILITY: &str = "USAGE_MEASUREMENT_SUPPORTED,SUB_ACCOUNT_SUPPORTED,\
MULTIPLE_SUB_ACCOUNT_TYPES_SUPPORTED,TAGGING_SUPPORTED,ACCOUNT_NAMING_SUPPORTED";

/// What the validator 2.2.1 reports of meterline's CSV export that is about the CSV, not the
/// data: each rule, and why. [`validate_typed`] shows each is one (the same export read with
/// FOCUS's types passes them all).
pub const CSV_ARTEFACTS: [(&str, &str); 6] = [
    (
        "ConsumedQuantity-C-001-M",
        "whole token counts in a CSV are inferred as integers, not Decimal",
    ),
    ("ConsumedQuantity-C-000-C", "the AND over C-001-M"),
    (
        "ConsumedQuantity-C-006-C",
        "its inherited condition reads CommitmentDiscountStatus, absent (no commitment discounts)",
    ),
    ("ConsumedQuantity-C-005-C", "the AND over C-006-C"),
    (
        "ConsumedQuantity-C-004-C",
        "reported failed as C-005-C's sibling",
    ),
    (
        "ConsumedQuantity-C-003-C",
        "the AND over C-004-C and C-005-C",
    ),
];

/// What the validator said of one export.
#[derive(Debug)]
pub struct Verdict {
    /// Rules evaluated and passed (a run that evaluated nothing proves nothing).
    pub passed: BTreeSet<String>,
    /// Failing rule id → the violation count it reported.
    pub failed: BTreeMap<String, usize>,
    /// The whole console report, for the assertion message.
    pub report: String,
}

impl Verdict {
    /// The failures that break a requirement: the validator also lists the failing leg of an
    /// OR (e.g. InvoiceId-C-004-C "MUST be null when not invoiced", when every row is on a
    /// statement) although the OR (InvoiceId-C-003-C, the nullability rule) passed; a leg
    /// whose OR passed is not a failure.
    pub fn failures(&self) -> BTreeMap<String, usize> {
        let legs = or_legs();
        self.failed
            .iter()
            .filter(|(rule, _)| {
                !legs
                    .get(rule.as_str())
                    .is_some_and(|or| self.passed.contains(or))
            })
            .map(|(r, n)| (r.clone(), *n))
            .collect()
    }
}

/// The FOCUS 1.2 model the validator runs (bundled with the package): each leg of an `OR`
/// rule → that rule.
fn or_legs() -> BTreeMap<String, String> {
    let model = site_packages(&home()).join("focus_validator/rules/model-1.2.0.1.json");
    let model: serde_json::Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    let mut legs = BTreeMap::new();
    for (id, rule) in model["ModelRules"].as_object().unwrap() {
        let req = &rule["ValidationCriteria"]["Requirement"];
        if req["CheckFunction"] == "OR" {
            for item in req["Items"].as_array().unwrap() {
                if let Some(leg) = item["ModelRuleId"].as_str() {
                    legs.insert(leg.to_string(), id.clone());
                }
            }
        }
    }
    legs
}

fn home() -> PathBuf {
    PathBuf::from(
        std::env::var("METERLINE_FOCUS_PY_HOME").unwrap_or_else(|_| {
            format!(
                "{}/.cache/meterline/py-focus",
                std::env::var("HOME").unwrap()
            )
        }),
    )
}

/// The venv's `site-packages`, where the package and its bundled FOCUS model are.
fn site_packages(home: &Path) -> PathBuf {
    let lib = home.join("lib");
    std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()))
        .map(|e| e.unwrap().path().join("site-packages"))
        .find(|p| p.join("focus_validator").is_dir())
        .unwrap_or_else(|| panic!("no focus_validator under {}", lib.display()))
}

/// Runs the validator over a FOCUS CSV export against FOCUS 1.2 with meterline's
/// applicability criteria, offline (`--block-download`: the model bundled with the package).
pub fn validate(csv_bytes: &[u8]) -> Verdict {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("focus.csv");
    std::fs::write(&data, csv_bytes).unwrap();
    run(&data)
}

/// The same, over the export read with FOCUS's column types (`typed.py`: the quantities as
/// Decimal, the absent CommitmentDiscountStatus as null), as Parquet.
pub fn validate_typed(csv_bytes: &[u8]) -> Verdict {
    let dir = tempfile::tempdir().unwrap();
    let (csv, parquet) = (
        dir.path().join("focus.csv"),
        dir.path().join("focus.parquet"),
    );
    std::fs::write(&csv, csv_bytes).unwrap();
    let out = Command::new(home().join("bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/focus12/typed.py"
        ))
        .args([&csv, &parquet])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "typed.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run(&parquet)
}

fn run(data: &Path) -> Verdict {
    let home = home();
    let exe = home.join("bin/focus-validator");
    assert!(
        exe.exists(),
        "{} missing: scripts/setup-python installs the FOCUS validator",
        exe.display()
    );
    // It reads its currency list by a path relative to the working directory
    // (`focus_validator/rules/currency_codes.csv`) and writes a log there: it runs in the
    // data's temporary directory, with the package linked in.
    let cwd = data.parent().unwrap();
    std::os::unix::fs::symlink(
        site_packages(&home).join("focus_validator"),
        cwd.join("focus_validator"),
    )
    .unwrap();
    let out = Command::new(&exe)
        .current_dir(cwd)
        .args(["--data-file", data.to_str().unwrap()])
        .args(["--validate-version", "1.2", "--block-download"])
        .args(["--applicability-criteria", APPLICABILITY])
        .args(["--output-type", "console", "--show-violations"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "focus-validator failed to run ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&report)
}

/// Reads the console report: the totals line and one line per failing rule.
fn parse(report: &str) -> Verdict {
    let totals = report
        .lines()
        .find(|l| l.starts_with("Total:"))
        .unwrap_or_else(|| panic!("no totals in the validator's report:\n{report}"));
    // "Total: 578 | Pass: 152 | Fail: 24 | Skipped: 402"
    let field = |name: &str| -> usize {
        totals
            .split('|')
            .find_map(|p| p.trim().strip_prefix(name))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {totals:?}"))
    };
    let passed: BTreeSet<String> = report
        .lines()
        .filter_map(|l| l.strip_prefix("✅ ")?.split_once(": PASS"))
        .map(|(rule, _)| rule.to_string())
        .collect();
    assert_eq!(passed.len(), field("Pass:"), "{report}");
    let mut failed = BTreeMap::new();
    for line in report.lines() {
        let Some(rest) = line.strip_prefix("❌ ") else {
            continue;
        };
        let (rule, rest) = rest.split_once(": FAIL").expect(line);
        let violations = rest
            .split_once("violations=")
            .and_then(|(_, n)| n.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .expect(line);
        failed.insert(rule.to_string(), violations);
    }
    assert_eq!(failed.len(), field("Fail:"), "{report}");
    Verdict {
        passed,
        failed,
        report: report.to_string(),
    }
}
