//! The web dashboard in a real browser: Debian's `chromium`, headless, against a running API
//! over a ledger with the lead's team and other teams (`common`). Each page is loaded with a
//! token handed over in the URL fragment; Chromium runs the page's scripts until the network
//! is idle (`--virtual-time-budget`) and dumps the DOM, which the page marks `data-ready` when
//! its API calls have been answered and `data-errors` when a script error or a console error
//! happened. Asserted: every page renders without errors, charts hold data points with the
//! API's exact values, a team lead's pages hold nothing of another team, downloads carry the
//! API's bytes, API errors are shown as the API words them. Screenshots go to
//! `$CARGO_TARGET_TMPDIR/dashboard/`.
//!
//! Chromium missing is a failure, not a skip: `scripts/setup` installs it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_no_secret, budget_snapshot, write_ledger, FINANCE, LEAD};
use meterline_runtime::auth::{hash_token, Role, TokenConfig};
use sha2::{Digest, Sha256};

const ADMIN: &str = "admin-token";
const VIEWER: &str = "viewer-token";

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "chromium is not installed (not on PATH): the dashboard's browser test needs Debian's \
         `chromium` package; run scripts/setup (apt-get install chromium)"
    );
}

/// What the browser made of a page.
struct Page {
    dom: String,
    stderr: String,
}

impl Page {
    fn attr(&self, name: &str) -> Option<&str> {
        let at = self.dom.find(&format!("{name}=\""))? + name.len() + 2;
        let end = self.dom[at..].find('"')?;
        Some(&self.dom[at..at + end])
    }

    /// The DOM without what differs from run to run (blob URLs, timings, `<time>` texts), for
    /// the check that nothing of another team is in it.
    fn content(&self) -> String {
        let mut out = self.dom.clone();
        for (open, close) in [
            ("href=\"blob:", "\""),
            ("data-sha256=\"", "\""),
            ("-ms=\"", "\""),
            ("<time>", "</time>"),
        ] {
            let mut from = 0;
            while let Some(at) = out[from..].find(open) {
                let start = from + at + open.len();
                let end = start + out[start..].find(close).expect("closed");
                out.replace_range(start..end, "");
                from = start;
            }
        }
        out
    }

    fn count(&self, needle: &str) -> usize {
        self.dom.matches(needle).count()
    }
}

/// Runs headless Chromium once on `url`: `--dump-dom`, or a screenshot into `shot`.
async fn chromium_run(url: &str, shot: Option<&Path>) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=20000",
        "--window-size=1400,1000",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match shot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    cmd.arg(url).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("chromium did not finish {url} within 120 s"))
        .expect("chromium runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed on {url}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// Loads `page` (with `params`) as `token`, asserts it finished as that page without errors,
/// and writes a screenshot named `shot`.
async fn open(base: &str, token: &str, page: &str, params: &str, shot: Option<&str>) -> Page {
    let p = load(base, token, page, params, shot).await;
    assert_eq!(
        p.attr("data-ready"),
        Some(page),
        "{page}?{params} as {token}: the page never finished: {}",
        p.dom
    );
    p
}

/// Loads a page and asserts no script or console error happened.
async fn load(base: &str, token: &str, page: &str, params: &str, shot: Option<&str>) -> Page {
    let url = format!("{base}/#token={token}&page={page}&{params}");
    let (dom, stderr) = chromium_run(&url, None).await;
    let p = Page { dom, stderr };
    let what = format!("{page}?{params} as {token}");
    assert!(
        !p.dom.contains("data-errors"),
        "{what}: the page recorded errors: {}",
        p.dom
    );
    // console messages and uncaught exceptions reach chromium's log as CONSOLE lines
    for line in p.stderr.lines() {
        assert!(
            !line.contains(":CONSOLE") && !line.contains("Uncaught"),
            "{what}: console: {line}"
        );
    }
    assert!(
        p.attr("data-ready").is_some(),
        "{what}: never finished: {}",
        p.dom
    );
    for junk in [">null<", "undefined", "NaN", "[object "] {
        assert!(
            !p.dom.contains(junk),
            "{what}: {junk:?} in the page: {}",
            p.dom
        );
    }
    if let Some(name) = shot {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}.png"));
        let _ = std::fs::remove_file(&file);
        chromium_run(&url, Some(&file)).await;
        let png = std::fs::read(&file).expect("screenshot written");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{file:?}"
        );
        println!("screenshot {}", file.display());
    }
    p
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Text as the DOM dump escapes it.
fn escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

async fn server() -> (tempfile::TempDir, common::Server) {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), true);
    let server = common::start(dir.path(), |cfg| {
        for (principal, token, role) in
            [("root", ADMIN, Role::Admin), ("eye", VIEWER, Role::Viewer)]
        {
            cfg.tokens.push(TokenConfig {
                principal: principal.into(),
                sha256: hash_token(token),
                role,
                teams: vec![],
            })
        }
    })
    .await;
    server.budgets.set(budget_snapshot(true));
    (dir, server)
}

#[tokio::test]
async fn me_names_the_callers_role_and_scope() {
    let (_dir, server) = server().await;
    let client = reqwest::Client::new();
    let me = |token: &'static str| {
        let rq = client
            .get(format!("{}/v1/me", server.base))
            .bearer_auth(token);
        async move {
            rq.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        me(LEAD).await,
        serde_json::json!({"principal": "lead", "role": "team_lead", "teams": ["search"]})
    );
    assert_eq!(
        me(FINANCE).await,
        serde_json::json!({"principal": "fin", "role": "finance", "teams": []})
    );
    let r = client
        .get(format!("{}/v1/me", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// The page and its assets: served without a token, under a CSP that admits this origin
/// only, and small.
#[tokio::test]
async fn assets_are_public_small_and_locked_to_this_origin() {
    let (_dir, server) = server().await;
    let client = reqwest::Client::new();
    let mut weight = 0;
    for (path, ctype) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let r = client
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(ctype));
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"));
        let body = r.bytes().await.unwrap();
        // nothing from elsewhere: no CDN, works offline
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("http://") || path != "/",
            "{path} names another host"
        );
        assert!(!text.contains("https://"), "{path} names another host");
        weight += body.len();
    }
    assert_eq!(weight, meterline_api::page_weight());
    println!("page weight: {weight} bytes (html + js + css, uncompressed)");
    assert!(weight < 64 * 1024, "page weight {weight} bytes");
    let r = client
        .get(format!("{}/assets/nope.js", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_in_a_real_browser() {
    let (_dir, server) = server().await;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let started = Instant::now();

    // signed out: the sign-in form; a refused token: the API's 401 message
    let (dom, _) = chromium_run(&format!("{base}/"), None).await;
    assert!(
        dom.contains("data-ready=\"signin\"") && dom.contains("type=\"password\""),
        "{dom}"
    );
    let p = load(&base, "not-a-token", "overview", "", Some("signin-refused")).await;
    assert_eq!(p.attr("data-ready"), Some("signin"));
    assert!(
        p.dom.contains("missing or unknown bearer token"),
        "{}",
        p.dom
    );

    // overview as finance: every team, charts with data points
    let range = "from=2026-11-14&to=2026-11-24";
    let fin = open(&base, FINANCE, "overview", range, Some("overview-finance")).await;
    for team in ["search", "data-science", "ads-secret"] {
        assert!(
            fin.dom.contains(&format!("data-series=\"{team}\"")),
            "finance sees {team}"
        );
    }
    assert!(fin.count("class=\"pt\"") >= 8, "{}", fin.dom);
    assert!(fin.dom.contains("key-ds-4243"), "top keys");
    // the same page as the lead: its team only
    let lead = open(&base, LEAD, "overview", range, Some("overview-lead")).await;
    assert_no_secret("overview", &lead.content());
    assert!(lead.dom.contains("data-series=\"search\""));
    assert!(lead.dom.contains("data-value=\"2.5\""), "gpt-4o-mini's day");
    assert!(lead.dom.contains("key-search-7"));
    assert!(
        !lead.dom.contains(">Chargeback<"),
        "no chargeback for a lead"
    );
    println!(
        "first contentful paint {:?} ms, DOMContentLoaded {:?} ms, overview rendered in {:?} ms",
        lead.attr("data-first-paint-ms"),
        lead.attr("data-dom-content-loaded-ms"),
        lead.attr("data-render-ms")
    );

    // budgets: the lead's own budget only; finance all three
    let lead = open(&base, LEAD, "budgets", "", Some("budgets-lead")).await;
    assert_no_secret("budgets", &lead.content());
    assert!(lead.dom.contains("data-budget-id=\"b-search\""));
    assert!(lead.count("data-threshold=") >= 1 && lead.dom.contains("data-elapsed="));
    let fin = open(&base, FINANCE, "budgets", "", None).await;
    assert_eq!(fin.count("data-budget-id="), 3);

    // anomalies: the series of the lead's anomaly holds the ledger's exact hourly spend
    let lead = open(
        &base,
        LEAD,
        "anomalies",
        "from=2026-11-19&to=2026-11-22",
        Some("anomalies-lead"),
    )
    .await;
    assert_no_secret("anomalies", &lead.content());
    assert_eq!(lead.count("data-anomaly="), 1, "{}", lead.dom);
    assert!(
        lead.dom.contains("data-value=\"1.250000000000000001\""),
        "the window's spend: {}",
        lead.dom
    );
    assert!(lead.dom.contains("data-band="));
    let fin = open(
        &base,
        FINANCE,
        "anomalies",
        "from=2026-11-19&to=2026-11-22",
        None,
    )
    .await;
    assert_eq!(fin.count("data-anomaly="), 3);

    // chargeback as finance: totals as the API says them, downloads carry the API's bytes
    for (format, name) in [("csv", "chargeback-finance"), ("focus", "chargeback-focus")] {
        let p = open(
            &base,
            FINANCE,
            "chargeback",
            &format!("period=2026-11&by=team&prepare={format}"),
            Some(name).filter(|_| format == "csv"),
        )
        .await;
        let json: serde_json::Value = client
            .get(format!(
                "{base}/v1/reports/chargeback?period=2026-11&by=team&format=json"
            ))
            .bearer_auth(FINANCE)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let billed = json["totals"][0]["billed_cost"].as_str().unwrap();
        assert!(p.dom.contains(&format!(">{billed}<")), "total {billed}");
        let bytes = client
            .get(format!(
                "{base}/v1/reports/chargeback?period=2026-11&by=team&format={format}"
            ))
            .bearer_auth(FINANCE)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            p.attr("data-sha256"),
            Some(sha256(&bytes).as_str()),
            "{format} download"
        );
        assert_eq!(p.attr("data-bytes"), Some(bytes.len().to_string().as_str()));
        assert!(p.count("class=\"pt\"") >= 3, "billed by team bars");
        assert!(p.dom.contains("Close the month"), "finance may close");
    }

    // a viewer reads the chargeback but may not close it
    let p = open(
        &base,
        VIEWER,
        "chargeback",
        "period=2026-11&by=project",
        None,
    )
    .await;
    assert!(!p.dom.contains("Close the month") && p.dom.contains("Download FOCUS"));

    // SQL console as the lead: scoped rows, the CSV download is the API's CSV
    let q = "SELECT team, model, api_key_id, cost_total FROM usage ORDER BY cost_total";
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let lead = open(
        &base,
        LEAD,
        "sql",
        &format!("q={}&run=1&prepare=csv", enc(q)),
        Some("sql-lead"),
    )
    .await;
    assert_no_secret("sql", &lead.content());
    assert!(lead.dom.contains("3 rows"), "{}", lead.dom);
    assert!(lead.dom.contains("only rows of teams search"));
    let csv = client
        .post(format!("{base}/v1/sql"))
        .bearer_auth(LEAD)
        .header("accept", "text/csv")
        .json(&serde_json::json!({ "sql": q }))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(lead.attr("data-sha256"), Some(sha256(&csv).as_str()));
    // an error is shown as the API words it
    let bad = "SELECT no_such_column FROM usage";
    let (status, body) = common::sql(&base, LEAD, bad).await;
    let msg: serde_json::Value = serde_json::from_str(&body).unwrap();
    let p = open(&base, LEAD, "sql", &format!("q={}&run=1", enc(bad)), None).await;
    assert!(
        p.dom.contains(&format!("data-status=\"{status}\""))
            && p.dom.contains(&escaped(msg["error"].as_str().unwrap())),
        "{status} {body} in {}",
        p.dom
    );

    // prices and tenants (admin): this API runs without a broker, and says so
    for page in ["prices", "tenants"] {
        let p = open(&base, ADMIN, page, "", None).await;
        assert!(p.dom.contains("data-status=\"503\""), "{}", p.dom);
        assert!(p.dom.contains("this API runs without a broker"));
    }
    // a lead asking for a finance page gets no data
    let p = open(&base, LEAD, "chargeback", "period=2026-11&by=team", None).await;
    assert!(p.dom.contains("is not available to the role team_lead"));
    assert_no_secret("chargeback", &p.content());
    println!("browser test took {:?}", started.elapsed());
}
