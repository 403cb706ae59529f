//! Reports and period close, in-process on port 0 over ledger files written by the real
//! writer: the chargeback reconciles exactly with raw SQL over the same files, its cents sum
//! to the total, FOCUS rows carry valid values; months close in order; a closed month is
//! byte-stable across pulls and a restart and refuses tampering; usage arriving late for a
//! closed month is billed as an adjustment in the next month.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

use meterline_api::{ApiConfig, App};
use meterline_ledger::Row;
use meterline_ledger::{Ledger, LedgerConfig};
use meterline_runtime::auth::{hash_token, Role, TokenConfig};
use meterline_schemas::{CostLines, Money, PricedUsage, TenantPath, UsageEvent};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const FINANCE: &str = "finance-token";
const LEAD: &str = "lead-token";

struct R {
    offset: i64,
    team: Option<&'static str>,
    model: &'static str,
    currency: &'static str,
    cost: &'static str,
    at: &'static str,
}

fn row(partition: i32, r: &R) -> Row {
    let mut event = UsageEvent::example();
    event.event_id = format!("e-{partition}-{}", r.offset);
    event.model = r.model.into();
    event.occurred_at = r.at.parse().unwrap();
    event.usage.input_tokens = 1000 + r.offset;
    event.usage.output_tokens = 10 * r.offset;
    let c: Money = r.cost.parse().unwrap();
    Row {
        priced: PricedUsage {
            tenant: TenantPath {
                org: "acme".into(),
                cost_center: r.team.map(|t| format!("cc-{t}")),
                team: r.team.map(str::to_string),
                project: Some("proj-x".into()),
                ..Default::default()
            },
            currency: r.currency.into(),
            cost: CostLines {
                input: c,
                total: c,
                ..Default::default()
            },
            ..PricedUsage::example(event, "", c)
        },
        partition,
        offset: r.offset,
    }
}

/// One flush of `rows` (offsets must be first..=last) into the ledger, one file per date.
fn flush(dir: &Path, partition: i32, rows: &[R]) {
    let l = Ledger::open(&LedgerConfig::default(), dir).unwrap();
    let first = rows.first().unwrap().offset;
    let last = rows.last().unwrap().offset;
    let rows: Vec<Row> = rows.iter().map(|r| row(partition, r)).collect();
    l.append(partition, first, last, &rows).unwrap();
}

fn r(
    offset: i64,
    team: Option<&'static str>,
    model: &'static str,
    currency: &'static str,
    cost: &'static str,
    at: &'static str,
) -> R {
    R {
        offset,
        team,
        model,
        currency,
        cost,
        at,
    }
}

fn fixture(dir: &Path) {
    // September: one row; October: thirds of a cent and friends; November: open
    flush(
        dir,
        0,
        &[
            r(
                0,
                Some("search"),
                "gpt-4o",
                "USD",
                "0.10",
                "2026-09-15T10:00:00Z",
            ),
            r(
                1,
                Some("search"),
                "gpt-4o",
                "USD",
                "0.003333333333333333",
                "2026-10-01T00:00:00Z",
            ),
            r(
                2,
                Some("ads"),
                "gpt-4o",
                "USD",
                "0.003333333333333333",
                "2026-10-02T10:00:00Z",
            ),
            r(
                3,
                Some("ads"),
                "claude-sonnet",
                "USD",
                "0.003333333333333334",
                "2026-10-31T23:59:59Z",
            ),
            r(4, None, "gpt-4o", "USD", "1.005", "2026-10-20T10:00:00Z"),
            r(
                5,
                Some("search"),
                "gpt-4o",
                "EUR",
                "2.499999",
                "2026-10-21T10:00:00Z",
            ),
            r(
                6,
                Some("search"),
                "gpt-4o",
                "USD",
                "7.25",
                "2026-11-02T10:00:00Z",
            ),
        ],
    );
    flush(
        dir,
        1,
        &[
            r(
                0,
                Some("search"),
                "gpt-4o-mini",
                "USD",
                "12.3456789",
                "2026-10-05T10:00:00Z",
            ),
            r(
                1,
                Some("ads"),
                "gpt-4o-mini",
                "USD",
                "0.000000000000000001",
                "2026-10-06T10:00:00Z",
            ),
        ],
    );
}

async fn start(dir: &Path) -> String {
    let token = |p: &str, t: &str, role, teams: Vec<String>| TokenConfig {
        principal: p.into(),
        sha256: hash_token(t),
        role,
        teams,
    };
    let cfg = ApiConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        tokens: vec![
            token("carol-finance", FINANCE, Role::Finance, vec![]),
            token("lead", LEAD, Role::TeamLead, vec!["search".into()]),
        ],
        ..Default::default()
    };
    let app = App::build(None, cfg, LedgerConfig::default())
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped());
    base
}

async fn get(base: &str, token: &str, path: &str) -> (u16, Vec<u8>) {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

async fn close(base: &str, token: &str, period: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/periods/{period}/close"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn sql(base: &str, q: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/sql"))
        .bearer_auth(FINANCE)
        .json(&json!({ "sql": q }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn d(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("decimal text: {v}"))).unwrap()
}

fn chargeback_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

/// Per currency, the raw-SQL sum over the same files for `[from, to)` dates.
async fn raw_totals(base: &str, from: &str, to: &str) -> BTreeMap<String, Decimal> {
    let v = sql(
        base,
        &format!("SELECT CAST(currency AS VARCHAR) AS currency, sum(cost_total) AS c FROM usage WHERE date >= '{from}' AND date < '{to}' GROUP BY currency"),
    )
    .await;
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["currency"].as_str().unwrap().to_string(), d(&r["c"])))
        .collect()
}

fn check_sums(c: &Value) {
    for t in c["totals"].as_array().unwrap() {
        let cur = t["currency"].as_str().unwrap();
        let lines: Vec<&Value> = c["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["currency"] == cur)
            .collect();
        let billed: Decimal = lines.iter().map(|l| d(&l["billed_cost"])).sum();
        let list: Decimal = lines.iter().map(|l| d(&l["list_cost"])).sum();
        assert_eq!(
            billed,
            d(&t["billed_cost"]),
            "{cur}: cents sum to the total"
        );
        assert_eq!(
            list,
            d(&t["list_cost"]),
            "{cur}: exact lines sum to the exact total"
        );
        // per billing account × category: the exact cost rounded half away from zero
        let mut blocks: BTreeMap<(&str, &str), (Decimal, Decimal)> = BTreeMap::new();
        for l in &lines {
            let e = blocks
                .entry((l["org"].as_str().unwrap(), l["category"].as_str().unwrap()))
                .or_default();
            e.0 += d(&l["billed_cost"]);
            e.1 += d(&l["list_cost"]);
        }
        for ((org, cat), (billed, exact)) in blocks {
            assert_eq!(
                billed,
                exact.round_dp_with_strategy(
                    2,
                    rust_decimal::RoundingStrategy::MidpointAwayFromZero
                ),
                "{cur} {org} {cat}"
            );
        }
        for l in lines {
            assert!((d(&l["billed_cost"]) - d(&l["list_cost"])).abs() < Decimal::new(1, 2));
        }
    }
}

/// FOCUS 1.2: mandatory columns present; non-nullable ones filled; allowed values; ISO
/// datetimes; BilledCost sums to the report's billed total per currency.
fn check_focus(csv_bytes: &[u8], c: &Value) {
    let mut rd = csv::Reader::from_reader(csv_bytes);
    let header: Vec<String> = rd.headers().unwrap().iter().map(str::to_string).collect();
    let mandatory = [
        ("BilledCost", false),
        ("BillingAccountId", false),
        ("BillingAccountName", true),
        ("BillingCurrency", false),
        ("BillingPeriodEnd", false),
        ("BillingPeriodStart", false),
        ("ChargeCategory", false),
        ("ChargeClass", true),
        ("ChargeDescription", true),
        ("ChargePeriodEnd", false),
        ("ChargePeriodStart", false),
        ("ContractedCost", false),
        ("EffectiveCost", false),
        ("InvoiceIssuerName", false),
        ("ListCost", false),
        ("PricingQuantity", true),
        ("PricingUnit", true),
        ("ProviderName", false),
        ("PublisherName", false),
        ("ServiceCategory", false),
        ("ServiceName", false),
    ];
    for (m, _) in mandatory {
        assert!(header.iter().any(|h| h == m), "FOCUS column {m} missing");
    }
    for h in &header {
        assert!(
            h.starts_with("x_") || h.chars().next().unwrap().is_ascii_uppercase(),
            "{h}: custom columns carry the x_ prefix"
        );
    }
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let iso = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ").is_ok();
    let mut billed: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut rows = 0;
    for rec in rd.records() {
        let rec = rec.unwrap();
        rows += 1;
        for (m, nullable) in mandatory {
            if !nullable {
                assert!(!rec[col(m)].is_empty(), "{m} must not be null: {rec:?}");
            }
        }
        let cat = &rec[col("ChargeCategory")];
        assert_eq!(cat, "Usage", "late usage too is Usage (a Correction)");
        let class = &rec[col("ChargeClass")];
        assert_eq!(
            class == "Correction",
            rec[col("ChargePeriodStart")] < rec[col("BillingPeriodStart")],
            "a correction exactly when the usage is of an earlier month: {rec:?}"
        );
        assert!(class.is_empty() || class == "Correction");
        assert_eq!(&rec[col("ServiceCategory")], "AI and Machine Learning");
        assert_eq!(&rec[col("ServiceSubcategory")], "Generative AI");
        assert_eq!(&rec[col("ChargeFrequency")], "Usage-Based");
        assert_eq!(&rec[col("PricingCategory")], "Standard");
        if cat == "Usage" {
            assert!(!rec[col("PricingQuantity")].is_empty() && !rec[col("PricingUnit")].is_empty());
        }
        for t in [
            "BillingPeriodStart",
            "BillingPeriodEnd",
            "ChargePeriodStart",
            "ChargePeriodEnd",
        ] {
            assert!(iso(&rec[col(t)]), "{t}: {}", &rec[col(t)]);
        }
        for m in [
            "BilledCost",
            "ContractedCost",
            "EffectiveCost",
            "ListCost",
            "PricingQuantity",
            "ConsumedQuantity",
        ] {
            let v = &rec[col(m)];
            assert!(
                !v.contains('e') && !v.contains('E'),
                "{m}: no exponent ({v})"
            );
            Decimal::from_str(v).unwrap_or_else(|_| panic!("{m} is a decimal: {v}"));
        }
        // exact costs (no discounts), billed in cents within a cent of them
        assert_eq!(rec[col("EffectiveCost")], rec[col("ListCost")]);
        assert_eq!(rec[col("ContractedCost")], rec[col("ListCost")]);
        let cents = Decimal::from_str(&rec[col("BilledCost")]).unwrap();
        let effective = Decimal::from_str(&rec[col("EffectiveCost")]).unwrap();
        assert!((cents - effective).abs() < Decimal::new(1, 2), "{rec:?}");
        assert_eq!(rec[col("ProviderName")], rec[col("InvoiceIssuerName")]);
        serde_json::from_str::<Value>(&rec[col("Tags")]).expect("Tags is JSON");
        *billed
            .entry(rec[col("BillingCurrency")].to_string())
            .or_default() += Decimal::from_str(&rec[col("BilledCost")]).unwrap();
    }
    assert_eq!(rows, c["lines"].as_array().unwrap().len());
    for t in c["totals"].as_array().unwrap() {
        assert_eq!(
            billed[t["currency"].as_str().unwrap()],
            d(&t["billed_cost"])
        );
    }
}

#[tokio::test]
async fn chargeback_reconciles_closes_are_stable_and_late_usage_is_an_adjustment() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let base = start(dir.path()).await;

    // 1. October, open: exact reconciliation with raw SQL; cents sum to the totals
    let (status, body) = get(
        &base,
        FINANCE,
        "/v1/reports/chargeback?period=2026-10&by=team",
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let oct = chargeback_json(&body);
    assert_eq!(oct["status"], "open");
    let raw = raw_totals(&base, "2026-10-01", "2026-11-01").await;
    let totals: BTreeMap<String, Decimal> = oct["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["currency"].as_str().unwrap().to_string(),
                d(&t["list_cost"]),
            )
        })
        .collect();
    assert_eq!(
        totals, raw,
        "report totals = raw SQL totals, to the last digit"
    );
    assert_eq!(
        raw["USD"],
        Decimal::from_str("13.360678900000000001").unwrap()
    );
    check_sums(&oct);
    // thirds of a cent do not vanish: three lines of 0.00333… bill one cent between them
    let usd_total = oct["totals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["currency"] == "USD")
        .unwrap();
    assert_eq!(
        d(&usd_total["billed_cost"]),
        Decimal::from_str("13.36").unwrap()
    );
    // every grouping reconciles
    for by in ["cost_center", "project"] {
        let (_, b) = get(
            &base,
            FINANCE,
            &format!("/v1/reports/chargeback?period=2026-10&by={by}"),
        )
        .await;
        let c = chargeback_json(&b);
        check_sums(&c);
        let money = |c: &Value| -> Vec<(Value, Value, Value)> {
            c["totals"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["currency"].clone(),
                        t["list_cost"].clone(),
                        t["billed_cost"].clone(),
                    )
                })
                .collect()
        };
        assert_eq!(money(&c), money(&oct), "{by}: same totals");
    }
    let (_, focus) = get(
        &base,
        FINANCE,
        "/v1/reports/chargeback?period=2026-10&by=team&format=focus",
    )
    .await;
    check_focus(&focus, &oct);
    assert_eq!(focus12::check(&focus), vec![]);
    assert_eq!(focus12::check_meterline(&focus, "meterline"), vec![]);
    let (_, flat) = get(
        &base,
        FINANCE,
        "/v1/reports/chargeback?period=2026-10&by=team&format=csv",
    )
    .await;
    assert_eq!(
        flat.iter().filter(|b| **b == b'\n').count(),
        oct["lines"].as_array().unwrap().len() + 1
    );

    // 2. bad input is precise; a team lead may not pull the chargeback
    for (q, needle) in [
        ("period=2026-13", "period"),
        ("period=2026-10&by=region", "by"),
        ("period=2026-10&format=xml", "format"),
        ("by=team", "period"),
    ] {
        let (status, b) = get(&base, FINANCE, &format!("/v1/reports/chargeback?{q}")).await;
        assert_eq!(status, 400, "{q}");
        assert!(
            String::from_utf8_lossy(&b).contains(needle),
            "{q}: {}",
            String::from_utf8_lossy(&b)
        );
    }
    assert_eq!(
        get(&base, LEAD, "/v1/reports/chargeback?period=2026-10")
            .await
            .0,
        403
    );

    // 3. months close in order, only once ended, only once
    let (status, v) = close(&base, FINANCE, "2026-10").await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("2026-09"), "{v}");
    // a refusal a person can act on: the route, the token's role, the roles that would do
    let (status, v) = close(&base, LEAD, "2026-09").await;
    assert_eq!(status, 403);
    assert_eq!(
        v["error"].as_str().unwrap(),
        "POST /v1/periods/{period}/close: a token with role team_lead may not do this; it needs \
         one of: admin, finance (tokens and roles: [[<stage>.tokens]] in the config)",
    );
    let (status, sep) = close(&base, FINANCE, "2026-09").await;
    assert_eq!(status, 201, "{sep}");
    let (status, rec) = close(&base, FINANCE, "2026-10").await;
    assert_eq!(status, 201, "{rec}");
    assert_eq!(rec["closed_by"], "carol-finance");
    assert_eq!(rec["previous"], "2026-09");
    assert_eq!(rec["files"].as_array().unwrap().len(), 9);
    assert_eq!(close(&base, FINANCE, "2026-10").await.0, 409, "closed once");
    // the month we are in has not ended (whatever today is: a fixed month here went stale)
    let this_month = chrono::Utc::now().format("%Y-%m").to_string();
    let (status, v) = close(&base, FINANCE, &this_month).await;
    assert_eq!(status, 409, "{this_month} has not ended: {v}");
    assert!(
        v["error"].as_str().unwrap().contains("has not ended"),
        "{v}"
    );
    // the close names the table version it read: that version's txn ends are its watermark
    let version = rec["delta_version"].as_u64().expect("a Delta version");
    let table = Ledger::open(&LedgerConfig::default(), dir.path()).unwrap();
    let at_close = table.snapshot_at(version).unwrap();
    assert_eq!(
        serde_json::to_value(&at_close.ends).unwrap(),
        rec["watermark"],
        "the table at the close's version ends at its watermark"
    );
    // the manifest's digests are those of the files
    let snap = dir.path().join("closes/2026-10");
    for f in rec["files"].as_array().unwrap() {
        let bytes = std::fs::read(snap.join(f["name"].as_str().unwrap())).unwrap();
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            f["sha256"].as_str().unwrap()
        );
    }

    // 4. the closed month: same content as when open, marked closed; byte-stable
    let (_, closed1) = get(
        &base,
        FINANCE,
        "/v1/reports/chargeback?period=2026-10&by=team",
    )
    .await;
    let c1 = chargeback_json(&closed1);
    assert_eq!(c1["status"], "closed");
    assert_eq!(c1["lines"], oct["lines"]);
    assert_eq!(c1["totals"], oct["totals"]);
    let mut pulls = BTreeMap::new();
    for by in ["cost_center", "team", "project"] {
        for f in ["json", "csv", "focus"] {
            let q = format!("/v1/reports/chargeback?period=2026-10&by={by}&format={f}");
            pulls.insert(q.clone(), get(&base, FINANCE, &q).await.1);
        }
    }

    // 5. usage of October (and September) arrives late, plus November's own
    flush(
        dir.path(),
        0,
        &[
            r(
                7,
                Some("search"),
                "gpt-4o",
                "USD",
                "0.50",
                "2026-10-30T12:00:00Z",
            ),
            r(
                8,
                Some("ads"),
                "gpt-4o",
                "USD",
                "0.255",
                "2026-09-30T12:00:00Z",
            ),
            r(
                9,
                Some("ads"),
                "gpt-4o",
                "USD",
                "1.00",
                "2026-11-03T12:00:00Z",
            ),
        ],
    );
    for (q, bytes) in &pulls {
        assert_eq!(
            &get(&base, FINANCE, q).await.1,
            bytes,
            "{q}: closed month changed"
        );
    }
    let (_, nov) = get(
        &base,
        FINANCE,
        "/v1/reports/chargeback?period=2026-11&by=team",
    )
    .await;
    let nov = chargeback_json(&nov);
    check_sums(&nov);
    let adj: Vec<&Value> = nov["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["category"] == "Adjustment")
        .collect();
    assert_eq!(adj.len(), 2, "{nov}");
    let by_period: BTreeMap<&str, Decimal> = adj
        .iter()
        .map(|l| (l["charge_period"].as_str().unwrap(), d(&l["list_cost"])))
        .collect();
    assert_eq!(by_period["2026-10"], Decimal::from_str("0.5").unwrap());
    assert_eq!(by_period["2026-09"], Decimal::from_str("0.255").unwrap());
    let usd = nov["totals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["currency"] == "USD")
        .unwrap();
    assert_eq!(
        d(&usd["list_cost"]),
        Decimal::from_str("9.005").unwrap(),
        "7.25 + 1.00 + 0.50 + 0.255"
    );
    assert_eq!(d(&usd["billed_cost"]), Decimal::from_str("9.01").unwrap());
    let (_, nov_focus) = get(
        &base,
        FINANCE,
        "/v1/reports/chargeback?period=2026-11&by=team&format=focus",
    )
    .await;
    check_focus(&nov_focus, &nov);
    assert_eq!(focus12::check(&nov_focus), vec![]);
    assert_eq!(focus12::check_meterline(&nov_focus, "meterline"), vec![]);
    // December is not the first open month: no adjustments there
    let (_, dec) = get(
        &base,
        FINANCE,
        "/v1/reports/chargeback?period=2026-12&by=team",
    )
    .await;
    assert!(chargeback_json(&dec)["lines"]
        .as_array()
        .unwrap()
        .is_empty());
    // before the first close: refused, its late usage is an adjustment
    assert_eq!(
        get(&base, FINANCE, "/v1/reports/chargeback?period=2026-08")
            .await
            .0,
        409
    );

    // 6. a restart answers the same bytes
    let base2 = start(dir.path()).await;
    for (q, bytes) in &pulls {
        assert_eq!(&get(&base2, FINANCE, q).await.1, bytes, "{q} after restart");
    }
    let (status, periods) = get(&base2, FINANCE, "/v1/periods").await;
    assert_eq!(status, 200);
    let periods: Value = serde_json::from_slice(&periods).unwrap();
    assert_eq!(periods.as_array().unwrap().len(), 2);

    // 7. a tampered snapshot is an error, never an answer
    let f = snap.join("chargeback-team.json");
    let mut perm = std::fs::metadata(&f).unwrap().permissions();
    assert!(perm.readonly(), "snapshot files are read-only");
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&f, perm).unwrap();
    let mut text = std::fs::read_to_string(&f).unwrap();
    text = text.replacen("\"13.36\"", "\"1.36\"", 1);
    std::fs::write(&f, text).unwrap();
    let (status, b) = get(
        &base2,
        FINANCE,
        "/v1/reports/chargeback?period=2026-10&by=team",
    )
    .await;
    assert_eq!(status, 500);
    assert!(String::from_utf8_lossy(&b).contains("altered"));
}

#[tokio::test]
async fn showback_is_scoped_and_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let base = start(dir.path()).await;
    let q = "/v1/reports/showback?from=2026-10-01&to=2026-11-01&by=team,model&granularity=month";
    let (status, b) = get(&base, FINANCE, q).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    let all: Value = serde_json::from_slice(&b).unwrap();
    let usd: Decimal = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["currency"] == "USD")
        .map(|r| d(&r["cost"]))
        .sum();
    assert_eq!(
        usd,
        raw_totals(&base, "2026-10-01", "2026-11-01").await["USD"]
    );
    // a lead sees its team only
    let (status, b) = get(&base, LEAD, q).await;
    assert_eq!(status, 200);
    let mine: Value = serde_json::from_slice(&b).unwrap();
    assert!(!mine["rows"].as_array().unwrap().is_empty());
    for r in mine["rows"].as_array().unwrap() {
        assert_eq!(r["team"], "search", "{r}");
    }
    // hourly buckets, by api key, CSV and Arrow
    let (status, b) = get(&base, FINANCE, "/v1/reports/showback?from=2026-10-01T00:00:00Z&to=2026-10-02T00:00:00Z&by=api_key&granularity=hour&format=csv").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(b).unwrap();
    assert!(text.starts_with("bucket,api_key,currency,events"), "{text}");
    let r = reqwest::Client::new()
        .get(format!(
            "{base}/v1/reports/showback?from=2026-10-01&to=2026-11-01&by=team&granularity=month"
        ))
        .bearer_auth(FINANCE)
        .header("accept", "application/vnd.apache.arrow.stream")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let bytes = r.bytes().await.unwrap();
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .unwrap();
    let schema = reader.schema();
    assert!(matches!(
        schema.field_with_name("cost").unwrap().data_type(),
        datafusion::arrow::datatypes::DataType::Decimal128(38, 18)
    ));
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 3 + 1, "search, ads, unattributed (USD) + search (EUR)");
    // precise refusals
    for (q, needle) in [
        ("from=2026-10-01&to=2026-11-01&by=secret_column", "by"),
        (
            "from=2026-10-01&to=2026-11-01&granularity=minute",
            "granularity",
        ),
        ("from=2026-11-01&to=2026-10-01", "to"),
        ("from=yesterday&to=2026-10-01", "from"),
    ] {
        let (status, b) = get(&base, FINANCE, &format!("/v1/reports/showback?{q}")).await;
        assert_eq!(status, 400, "{q}");
        assert!(String::from_utf8_lossy(&b).contains(needle), "{q}");
    }
}

/// Months are `YYYY-MM` with four digits, and a month before the ledger's first usage cannot
/// be closed: `0001-01` used to be accepted and then blocked every later close ("close
/// 0001-02 first").
#[tokio::test]
async fn only_real_months_from_the_first_usage_on_can_close() {
    let dir = tempfile::tempdir().unwrap();
    let base = start(dir.path()).await;
    // an empty ledger: nothing to close
    let (status, v) = close(&base, FINANCE, "2026-09").await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no usage"), "{v}");
    fixture(dir.path());
    for bad in [
        "+026-05",
        "026-05",
        "2026-5",
        "-2026-05",
        "2026-05 ",
        "２０２６-05",
        "2026-+5",
    ] {
        let (status, v) = close(&base, FINANCE, &bad.replace(' ', "%20")).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("YYYY-MM"),
            "{bad}: {v}"
        );
    }
    for early in ["0001-01", "1970-01", "2026-08"] {
        let (status, v) = close(&base, FINANCE, early).await;
        assert_eq!(status, 409, "{early}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("first usage is in 2026-09"),
            "{early}: {v}"
        );
    }
    // refusals changed nothing: the first month with usage still closes, then the next
    let (status, v) = close(&base, FINANCE, "2026-09").await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = close(&base, FINANCE, "2026-10").await;
    assert_eq!(status, 201, "{v}");
}

mod focus12;

/// A month of demo traffic: two orgs (`globex` named by its events, with no tenant rule and
/// no team), teams whose cost centers and projects cross (so every grouping cuts the same
/// rows differently), three vendors, costs as tokens × per-token rates (sub-cent fractions
/// everywhere). Deterministic.
fn demo_rows(partition: i32, first: i64, n: i64, month: &str, seed: u64) -> Vec<Row> {
    // (org, team, cost center, projects)
    const TENANTS: [(&str, Option<&str>, Option<&str>, &[&str]); 5] = [
        ("acme", Some("search"), Some("cc-eng"), &["web", "api"]),
        ("acme", Some("ads"), Some("cc-eng"), &["web"]),
        ("acme", Some("billing"), Some("cc-fin"), &["api", "ledger"]),
        ("acme", Some("risk"), Some("cc-fin"), &["ledger"]),
        ("globex", None, None, &[]),
    ];
    // (provider, model, input rate, output rate) per token
    const MODELS: [(&str, &str, &str, &str); 4] = [
        ("openai", "gpt-4o", "0.0000025", "0.00001"),
        ("openai", "gpt-4o-mini", "0.00000015", "0.0000006"),
        ("anthropic", "claude-sonnet-4", "0.000003", "0.000015"),
        ("mistral", "mistral-large", "0.000002", "0.000006"),
    ];
    let mut s = seed;
    let mut next = |m: u64| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) % m
    };
    (0..n)
        .map(|k| {
            let (org, team, cc, projects) = TENANTS[next(TENANTS.len() as u64) as usize];
            let (provider, model, rin, rout) = MODELS[next(MODELS.len() as u64) as usize];
            let input = 50 + next(4000) as i64;
            let output = 5 + next(900) as i64;
            let project = (!projects.is_empty())
                .then(|| projects[next(projects.len() as u64) as usize].to_string());
            let day = 1 + next(28);
            let offset = first + k;
            let mut event = UsageEvent::example();
            event.event_id = format!("demo-{partition}-{offset}");
            event.provider = provider.into();
            event.model = model.into();
            event.org_id = Some(org.into());
            event.team_id = team.map(str::to_string);
            event.occurred_at = format!("{month}-{day:02}T{:02}:00:00Z", next(24))
                .parse()
                .unwrap();
            event.usage.input_tokens = input;
            event.usage.output_tokens = output;
            let cost_in: Money = (Decimal::from(input) * Decimal::from_str(rin).unwrap())
                .to_string()
                .parse()
                .unwrap();
            let cost_out: Money = (Decimal::from(output) * Decimal::from_str(rout).unwrap())
                .to_string()
                .parse()
                .unwrap();
            let total: Money = (cost_in.decimal() + cost_out.decimal())
                .to_string()
                .parse()
                .unwrap();
            Row {
                priced: PricedUsage {
                    event,
                    tenant: TenantPath {
                        org: org.into(),
                        cost_center: cc.map(str::to_string),
                        team: team.map(str::to_string),
                        project,
                        ..Default::default()
                    },
                    tenant_rule_id: None,
                    price_id: format!("{provider}/{model}"),
                    price_version: 1,
                    price_resolution: "exact".into(),
                    model: String::new(),
                    currency: if org == "globex" && next(3) == 0 {
                        "EUR".into()
                    } else {
                        "USD".into()
                    },
                    cost: CostLines {
                        input: cost_in,
                        output: cost_out,
                        total,
                        ..Default::default()
                    },
                    priced_at: chrono::Utc::now(),
                },
                partition,
                offset,
            }
        })
        .collect()
}

fn demo_flush(dir: &Path, rows: &[Row]) {
    let (p, first, last) = (
        rows[0].partition,
        rows[0].offset,
        rows.last().unwrap().offset,
    );
    Ledger::open(&LedgerConfig::default(), dir)
        .unwrap()
        .append(p, first, last, rows)
        .unwrap();
}

/// Billed total per billing account × charge category × charge class × currency of a FOCUS
/// export.
fn focus_blocks(csv_bytes: &[u8]) -> BTreeMap<(String, String, String, String), Decimal> {
    let x = focus12::Export::parse(csv_bytes);
    let mut out: BTreeMap<_, Decimal> = BTreeMap::new();
    for r in &x.rows {
        let g = |c: &str| r[c].clone().unwrap_or_default();
        *out.entry((
            g("BillingAccountId"),
            g("ChargeCategory"),
            g("ChargeClass"),
            g("BillingCurrency"),
        ))
        .or_default() += Decimal::from_str(&g("BilledCost")).unwrap();
    }
    out
}

/// Billed and exact totals per org × category × currency of a JSON chargeback.
fn json_blocks(c: &Value) -> BTreeMap<(String, String, String), (Decimal, Decimal)> {
    let mut out: BTreeMap<_, (Decimal, Decimal)> = BTreeMap::new();
    for l in c["lines"].as_array().unwrap() {
        let e = out
            .entry((
                l["org"].as_str().unwrap().to_string(),
                l["category"].as_str().unwrap().to_string(),
                l["currency"].as_str().unwrap().to_string(),
            ))
            .or_default();
        e.0 += d(&l["billed_cost"]);
        e.1 += d(&l["list_cost"]);
    }
    out
}

/// Issue 18: a FinOps analyst pulls a month with demo traffic and late usage by cost center,
/// team and project, open and closed, and checks it against FOCUS 1.2: every export is clean
/// under the encoded rules, and what each billing account owes per charge category and
/// currency is the same whatever the grouping.
#[tokio::test]
async fn focus_exports_are_clean_and_cents_do_not_move_with_the_grouping() {
    let dir = tempfile::tempdir().unwrap();
    // September and October traffic; September closes, then September usage arrives late
    demo_flush(dir.path(), &demo_rows(0, 0, 300, "2026-09", 1));
    demo_flush(dir.path(), &demo_rows(1, 0, 400, "2026-10", 2));
    let base = start(dir.path()).await;
    assert_eq!(close(&base, FINANCE, "2026-09").await.0, 201);
    demo_flush(dir.path(), &demo_rows(0, 300, 40, "2026-09", 3));
    // October closes with September's late usage as corrections; then October's and
    // November's own arrive
    assert_eq!(close(&base, FINANCE, "2026-10").await.0, 201);
    demo_flush(dir.path(), &demo_rows(1, 400, 60, "2026-10", 4));
    demo_flush(dir.path(), &demo_rows(0, 340, 500, "2026-11", 5));

    for (month, status) in [("2026-10", "closed"), ("2026-11", "open")] {
        let mut by_grouping = BTreeMap::new();
        for by in ["cost_center", "team", "project"] {
            let q = format!("/v1/reports/chargeback?period={month}&by={by}");
            let (code, json_bytes) = get(&base, FINANCE, &q).await;
            assert_eq!(code, 200);
            let c = chargeback_json(&json_bytes);
            assert_eq!(c["status"], status);
            let (code, focus) = get(&base, FINANCE, &format!("{q}&format=focus")).await;
            assert_eq!(code, 200);
            let v = focus12::check(&focus);
            assert!(
                v.is_empty(),
                "{month} by {by}: FOCUS 1.2 violations: {v:#?}"
            );
            let v = focus12::check_meterline(&focus, "meterline");
            assert!(v.is_empty(), "{month} by {by}: {v:#?}");
            // the FinOps Foundation's validator: as served, only what a CSV cannot say
            // (each listed with its reason); read with FOCUS's types, nothing
            let official = focus12::official::validate(&focus);
            let artefacts: BTreeSet<&str> = focus12::official::CSV_ARTEFACTS
                .iter()
                .map(|(rule, _)| *rule)
                .collect();
            let failures = official.failures();
            let unexplained: Vec<_> = failures
                .keys()
                .filter(|r| !artefacts.contains(r.as_str()))
                .collect();
            assert!(
                unexplained.is_empty() && official.passed.len() > 150,
                "{month} by {by}: focus-validator: {unexplained:?}\n{}",
                official.report
            );
            let typed = focus12::official::validate_typed(&focus);
            assert!(
                typed.failures().is_empty() && typed.passed.len() > 150,
                "{month} by {by}, typed: focus-validator: {:?}\n{}",
                typed.failures(),
                typed.report
            );
            eprintln!(
                "{month} by {by}: focus-validator {} passed, as CSV {:?}; typed {} passed, 0 failed",
                official.passed.len(),
                failures.keys().collect::<Vec<_>>(),
                typed.passed.len()
            );
            check_focus(&focus, &c);
            // per billing account × category × currency: the cents are the block's exact
            // total rounded half away from zero, and the lines sum to them
            let blocks = json_blocks(&c);
            for ((org, cat, cur), (billed, exact)) in &blocks {
                assert_eq!(
                    *billed,
                    exact.round_dp_with_strategy(
                        2,
                        rust_decimal::RoundingStrategy::MidpointAwayFromZero
                    ),
                    "{month} by {by}: {org} {cat} {cur}"
                );
            }
            assert!(
                blocks.keys().any(|(_, cat, _)| cat == "Adjustment"),
                "{month}: late usage is in the report"
            );
            assert!(blocks.keys().any(|(org, _, _)| org == "globex"));
            assert!(!blocks.keys().any(|(org, _, _)| org == "unattributed"));
            by_grouping.insert(by, (blocks, focus_blocks(&focus)));
        }
        let (first_json, first_focus) = &by_grouping["cost_center"];
        for by in ["team", "project"] {
            let (j, f) = &by_grouping[by];
            assert_eq!(j, first_json, "{month}: by {by} ≠ by cost_center");
            assert_eq!(f, first_focus, "{month}: FOCUS by {by} ≠ by cost_center");
        }
    }
}

/// The rule checker is not vacuous: over the FOCUS export meterline produced before issue 18
/// (`fixtures/focus_before_issue18.csv`: October of the demo ledger by cost center, closed
/// with September's late usage) it finds exactly what a FinOps analyst found.
#[test]
fn the_focus_rules_catch_the_export_from_before_issue_18() {
    let old = include_bytes!("fixtures/focus_before_issue18.csv");
    let mut found: BTreeMap<&str, usize> = BTreeMap::new();
    for v in focus12::check(old) {
        *found.entry(v.rule).or_default() += 1;
    }
    let rows = focus12::Export::parse(old).rows;
    let paid = rows
        .iter()
        .filter(|r| r["BilledCost"].as_deref() != Some("0.00"))
        .count();
    let late = rows
        .iter()
        .filter(|r| r["ChargeCategory"].as_deref() == Some("Adjustment"))
        .count();
    assert_eq!(
        found,
        BTreeMap::from([
            // ProviderName (the vendor) ≠ InvoiceIssuerName (meterline) on every paid line
            ("BilledCost-C-005-C", paid),
            // Adjustment rows with quantities
            ("ConsumedQuantity-C-004-C", late),
            // no SubAccountType although there are three kinds of sub account
            ("CostAndUsage-D-067-C", 1),
        ])
    );
    assert_eq!((rows.len(), paid, late), (29, 25, 13));
    // the FinOps Foundation's validator (read with FOCUS's types) finds the same
    let official = focus12::official::validate_typed(old).failures();
    assert_eq!(
        official.get("BilledCost-C-005-C"),
        Some(&paid),
        "{official:?}"
    );
    assert_eq!(official.get("ConsumedQuantity-C-004-C"), Some(&late));
    assert!(
        official.contains_key("CostAndUsage-D-067-C"),
        "{official:?}"
    );
    assert!(
        official.contains_key("CostAndUsage-D-033-O"),
        "{official:?}"
    );
    let mut own: BTreeMap<&str, usize> = BTreeMap::new();
    for v in focus12::check_meterline(old, "meterline") {
        *own.entry(v.rule).or_default() += 1;
    }
    // PricingUnit Requests for token-priced lines; cents as EffectiveCost under ListCost
    assert_eq!(own["meterline:pricing-quantity"], rows.len());
    assert_eq!(own["meterline:provider-is-issuer"], rows.len());
    assert!(own["meterline:effective≤contracted≤list"] > 0);
}

/// A month closed before issue 18 keeps its bytes: closes store the rendered files and a
/// closed month is served from them, so the new allocation and FOCUS mapping never re-render
/// it (its FOCUS file still has PricingUnit=Requests, Adjustment rows and its cents).
#[tokio::test]
async fn a_month_closed_before_the_change_is_served_byte_for_byte() {
    use meterline_api::{CloseRecord, Closes};
    let dir = tempfile::tempdir().unwrap();
    let old = include_bytes!("fixtures/focus_before_issue18.csv").to_vec();
    let name = "chargeback-cost_center.focus.csv";
    Closes::new(dir.path())
        .write(
            CloseRecord {
                period: "2026-10".parse().unwrap(),
                closed_at: "2026-11-01T09:00:00Z".into(),
                closed_by: "carol-finance".into(),
                previous: Some("2026-09".parse().unwrap()),
                watermark: meterline_api::Watermark([(0, 300), (1, 400)].into_iter().collect()),
                delta_version: None,
                files: vec![],
            },
            vec![(name.into(), old.clone())],
        )
        .unwrap();
    let base = start(dir.path()).await;
    let (status, served) = get(
        &base,
        FINANCE,
        "/v1/reports/chargeback?period=2026-10&by=cost_center&format=focus",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(served, old, "a stored close is never re-rendered");
}
