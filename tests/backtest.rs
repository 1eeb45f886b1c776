//! `pqa-engine backtest`: several definitions on one decode; each one's
//! rows are exactly what `replay` of it alone announces; the report files
//! are written and readable.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use pqa_engine::sim::SimConfig;
use serde_json::Value;

use common::BIN;

/// (event id, type, account, time, score, tier, rules)
type Key = (String, String, String, String, u64, String, String);

fn replay_alone(def: &Path, input: &Path, dir: &Path) -> BTreeSet<Key> {
    let out = dir.join(format!("{}.replay", def.file_name().unwrap().to_string_lossy()));
    let st = Command::new(BIN)
        .arg("replay")
        .arg("--config")
        .arg(def)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            common::assert_valid_event(&v, "replay");
            let short = v["type"].as_str().unwrap().trim_start_matches("pqa.account.").to_string();
            let rules: Vec<&str> = v["data"]["rules"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
            (
                v["id"].as_str().unwrap().to_string(),
                short,
                v["subject"].as_str().unwrap().to_string(),
                v["time"].as_str().unwrap().to_string(),
                v["data"]["score"].as_u64().unwrap(),
                v["data"]["tier"].as_str().unwrap().to_string(),
                rules.join(", "),
            )
        })
        .collect()
}

#[test]
fn backtest_rows_equal_each_definition_replayed_alone() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::write_history(
        &dir.path().join("history.ndjson"),
        SimConfig { seed: 5, accounts: 120, start_unix: 1_767_225_600, days: 60 },
    );
    // The shipped definition; a stricter team rule with a shorter cooldown;
    // a bare [definition] with only a new version (the rest shipped).
    let shipped = pqa_engine::config::DEFAULT_CONFIG_TOML;
    let def_text = &shipped[shipped.find("[definition]").unwrap()..];
    let a = dir.path().join("a.toml");
    std::fs::write(&a, def_text.replace("default-2026.11.1", "a-1")).unwrap();
    let b = dir.path().join("b.toml");
    std::fs::write(
        &b,
        def_text
            .replace("default-2026.11.1", "b-1")
            .replace("active_users_28d >= 7\"", "active_users_28d >= 9\"")
            .replace("cooldown = \"30d\"", "cooldown = \"10d\""),
    )
    .unwrap();
    let c = dir.path().join("c.toml");
    std::fs::write(&c, "[definition]\nversion = \"c-1\"\nmax_leads = 2\n").unwrap();

    let out = dir.path().join("report");
    let run = Command::new(BIN)
        .arg("backtest")
        .arg("--input")
        .arg(&input)
        .args(["--definition"])
        .arg(&a)
        .args(["--definition"])
        .arg(&b)
        .args(["-d"])
        .arg(&c)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{log}");

    let mut reader = csv::Reader::from_path(out.join("pqas.csv")).unwrap();
    let header: Vec<String> =
        reader.headers().unwrap().iter().map(|h| h.trim_start_matches('\u{feff}').to_string()).collect();
    assert_eq!(
        header,
        [
            "event_time",
            "definition",
            "definition_version",
            "account",
            "type",
            "tier",
            "score",
            "rules",
            "top_lead",
            "why",
            "warming_up",
            "event_id"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    for (file, version) in [(&a, "a-1"), (&b, "b-1"), (&c, "c-1")] {
        let got: BTreeSet<Key> = rows
            .iter()
            .filter(|r| &r[2] == version)
            .map(|r| {
                (
                    r[11].to_string(),
                    r[4].to_string(),
                    r[3].to_string(),
                    r[0].to_string(),
                    r[6].parse().unwrap(),
                    r[5].to_string(),
                    r[7].to_string(),
                )
            })
            .collect();
        let want = replay_alone(file, &input, dir.path());
        assert!(want.len() > 20, "{version}: {} announcements say little", want.len());
        assert_eq!(got, want, "{version}: backtest rows differ from `replay` of the definition alone");
    }
    // The stricter definition differs from the baseline, so the comparison
    // has something to say; the summary says it.
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for want in ["## Announcements per definition", "## Announcements per rule", "### `", "Only in", "Earlier", "Later"]
    {
        assert!(summary.contains(want), "summary lacks {want}:\n{summary}");
    }
    for png in ["announcements_per_week.png", "score_distribution.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000, "{png}");
    }
    // A rule's `why` names the numbers it read.
    assert!(rows.iter().any(|r| r[9].starts_with("team_adoption (active_users_28d=")), "why");

    // Same version twice: refused with the way out.
    let same = Command::new(BIN)
        .arg("backtest")
        .arg("-i")
        .arg(&input)
        .arg("-d")
        .arg(&a)
        .arg("-d")
        .arg(&a)
        .arg("--out")
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&same.stderr);
    assert!(!same.status.success() && err.contains("its own version"), "{err}");
}
