//! TEMPORARY placeholder until the report module lands (not to be committed).
use std::path::{Path, PathBuf};
pub struct DefinitionInfo { pub version: String, pub label: String, pub rules: Vec<String> }
pub struct HistoryInfo { pub events: u64, pub first_ms: Option<i64>, pub last_ms: Option<i64>, pub input: String }
#[derive(Debug, Clone)]
pub struct Row { pub definition: usize, pub version: String, pub account: String, pub time_ms: i64, pub event_type: String, pub rules: Vec<String>, pub score: u32, pub tier: String, pub top_lead: String, pub why: String, pub event_id: String, pub warming_up: Vec<String> }
impl Row { pub fn from_cloudevent(definition: usize, payload: &[u8]) -> Result<Row, String> {
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    Ok(Row { definition, version: v["data"]["definition_version"].as_str().unwrap_or("").into(), account: v["subject"].as_str().unwrap_or("").into(), time_ms: 0, event_type: v["type"].as_str().unwrap_or("").into(), rules: vec![], score: 0, tier: String::new(), top_lead: String::new(), why: String::new(), event_id: v["id"].as_str().unwrap_or("").into(), warming_up: vec![] }) } }
#[derive(Debug)]
pub struct ReportFiles { pub csv: PathBuf, pub summary: PathBuf, pub plots: Vec<PathBuf> }
pub fn write_report(dir: &Path, _defs: &[DefinitionInfo], _history: &HistoryInfo, _rows: &[Row]) -> std::io::Result<ReportFiles> {
    Ok(ReportFiles { csv: dir.join("pqas.csv"), summary: dir.join("summary.md"), plots: vec![] }) }
