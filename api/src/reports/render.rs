//! The chargeback statement as bytes: the JSON document, a flat CSV, FOCUS 1.2 (`focus.rs`).

use axum::http::{header, HeaderMap};

use super::statement::{Chargeback, GroupBy};
use crate::Error;

/// Report formats: the JSON document, flat CSV, FOCUS 1.2 CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Json,
    Csv,
    Focus,
}

impl ReportFormat {
    pub const ALL: [ReportFormat; 3] = [ReportFormat::Json, ReportFormat::Csv, ReportFormat::Focus];

    pub fn negotiate(param: Option<&str>, headers: &HeaderMap) -> Result<ReportFormat, String> {
        match param {
            Some("json") => Ok(ReportFormat::Json),
            Some("csv") => Ok(ReportFormat::Csv),
            Some("focus") => Ok(ReportFormat::Focus),
            Some(o) => Err(format!("format: {o:?} is not one of json, csv, focus")),
            None => {
                let accept = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                Ok(if accept.contains("text/csv") {
                    ReportFormat::Csv
                } else {
                    ReportFormat::Json
                })
            }
        }
    }

    /// Name of this format's file in a close snapshot.
    pub fn file_name(&self, by: GroupBy) -> String {
        let ext = match self {
            ReportFormat::Json => "json",
            ReportFormat::Csv => "csv",
            ReportFormat::Focus => "focus.csv",
        };
        format!("chargeback-{}.{ext}", by.column())
    }

    pub fn content_type(&self) -> &'static str {
        match self {
            ReportFormat::Json => "application/json",
            ReportFormat::Csv | ReportFormat::Focus => "text/csv",
        }
    }
}

/// The bytes of `c` in `format`.
pub fn render(c: &Chargeback, format: ReportFormat, issuer: &str) -> Result<Vec<u8>, Error> {
    match format {
        ReportFormat::Json => serde_json::to_vec_pretty(c).map_err(Error::query),
        ReportFormat::Csv => to_csv(c),
        ReportFormat::Focus => super::focus::to_csv(c, issuer),
    }
}

fn to_csv(c: &Chargeback) -> Result<Vec<u8>, Error> {
    let header = [
        "period",
        "category",
        "charge_period",
        "org",
        c.by.column(),
        "provider",
        "model",
        "currency",
        "events",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "list_cost",
        "billed_cost",
    ];
    let rows = c.lines.iter().map(|l| {
        let mut cells = vec![
            c.period.clone(),
            format!("{:?}", l.category),
            l.charge_period.clone(),
            l.org.clone(),
            l.group.clone().unwrap_or_default(),
            l.provider.clone(),
            l.model.clone(),
            l.currency.clone(),
        ];
        cells.extend(l.count_cells());
        cells.extend([l.list_cost.to_string(), l.billed_cost.to_string()]);
        Ok(cells)
    });
    super::csv_bytes(header, rows)
}
