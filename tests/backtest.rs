//! `pqa-engine backtest`: several definitions on one decode; each one's
//! rows are exactly what `replay` of it alone announces; the report files
//! are written and readable. And `replay` stopped by SIGINT: no temporary
//! state left behind, a `--state-dir` resumed.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// `backtest --outcomes` on a history small enough to count by hand.
///
/// Definition `a` is the shipped one; `b` hears only "Contact Sales
/// Submitted" as a hand raise. Day 0 is Monday 2026-03-02.
///
/// | account | history | a announces | b announces | outcomes |
/// | --- | --- | --- | --- | --- |
/// | acct-1 | d0 10:00 Demo Requested | hand_raiser d0 10:00 | - | accepted d1, opportunity d5 10:00, won d20 |
/// | acct-2 | d1 10:00 Contact Sales Submitted | hand_raiser d1 | hand_raiser d1 | rejected d2 |
/// | acct-3 | d2 Board Created | - | - | won d10 (no one saw it coming) |
/// | acct-4 | d3 10:00 Demo Requested | hand_raiser d3 10:00 | - | opportunity d6 10:00 naming a's event id, lost d30 |
/// | acct-5 | d4 3 users, then /security at 10:30 | enterprise_evaluation d4 10:30 | the same | opportunity d4 22:30 |
#[test]
fn backtest_with_outcomes_counts_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let d = |day: i64, hm: &str| {
        let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap() + chrono::Duration::days(day);
        format!("{}T{hm}:00Z", date.format("%Y-%m-%d"))
    };
    let track = |acct: &str, user: &str, ev: &str, at: String| {
        format!(
            r#"{{"type":"track","event":"{ev}","userId":"{acct}-{user}","timestamp":"{at}","context":{{"groupId":"{acct}"}}}}"#
        )
    };
    let history = [
        track("acct-1", "u1", "Demo Requested", d(0, "10:00")),
        track("acct-2", "u1", "Contact Sales Submitted", d(1, "10:00")),
        track("acct-3", "u1", "Board Created", d(2, "10:00")),
        track("acct-4", "u1", "Demo Requested", d(3, "10:00")),
        track("acct-5", "u1", "Board Viewed", d(4, "10:00")),
        track("acct-5", "u2", "Board Viewed", d(4, "10:05")),
        track("acct-5", "u3", "Board Viewed", d(4, "10:10")),
        format!(
            r#"{{"type":"page","name":"Security","userId":"acct-5-u1","timestamp":"{}","properties":{{"path":"/security"}},"context":{{"groupId":"acct-5"}}}}"#,
            d(4, "10:30")
        ),
    ];
    let input = dir.path().join("history.ndjson");
    std::fs::write(&input, history.join("\n") + "\n").unwrap();
    let shipped = pqa_engine::config::DEFAULT_CONFIG_TOML;
    let def_text = &shipped[shipped.find("[definition]").unwrap()..];
    let a = dir.path().join("a.toml");
    std::fs::write(&a, def_text.replace("default-2026.11.1", "a-1")).unwrap();
    let b = dir.path().join("b.toml");
    std::fs::write(
        &b,
        def_text.replace("default-2026.11.1", "b-1").replace(
            r#"track_events = ["Contact Sales Submitted", "Demo Requested"]"#,
            r#"track_events = ["Contact Sales Submitted"]"#,
        ),
    )
    .unwrap();
    // The id of a's announcement of acct-4, as a CRM would have kept it.
    let ids = replay_alone(&a, &input, dir.path());
    let acct4 = ids.iter().find(|k| k.2 == "acct-4").expect("a announces acct-4").0.clone();
    let outcome = |acct: &str, kind: &str, at: String, extra: &str| {
        format!(r#"{{"account_id":"{acct}","outcome":"{kind}","at":"{at}"{extra}}}"#)
    };
    let outcomes = [
        outcome("acct-1", "accepted", d(1, "09:00"), ""),
        outcome("acct-1", "opportunity", d(5, "10:00"), r#","amount":12000"#),
        outcome("acct-1", "won", d(20, "10:00"), r#","amount":12000"#),
        outcome("acct-2", "rejected", d(2, "09:00"), r#","rule":"hand_raiser""#),
        outcome("acct-3", "won", d(10, "10:00"), ""),
        outcome("acct-4", "opportunity", d(6, "10:00"), &format!(r#","pqa_event_id":"{acct4}""#)),
        r#"{"account_id":"acct-9","outcome":"maybe","at":"2026-03-04T10:00:00Z"}"#.to_string(),
        outcome("acct-4", "lost", d(30, "10:00"), ""),
        outcome("acct-5", "opportunity", d(4, "22:30"), ""),
    ];
    let outcomes_file = dir.path().join("outcomes.ndjson");
    std::fs::write(&outcomes_file, outcomes.join("\n") + "\n").unwrap();

    let out = dir.path().join("report");
    let run = Command::new(BIN)
        .args(["backtest", "-i"])
        .arg(&input)
        .arg("-d")
        .arg(&a)
        .arg("-d")
        .arg(&b)
        .arg("--outcomes")
        .arg(&outcomes_file)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{log}");
    // The bad line is reported with its number, not dropped silently.
    assert!(log.contains("1 of 9 lines are not outcomes") && log.contains("line 7: unknown_outcome"), "{log}");

    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    let a_label = a.display().to_string();
    let b_label = b.display().to_string();
    for line in [
        format!(
            "- **Outcomes:** `{}` (8 records: 1 accepted, 1 rejected, 3 opportunity, 2 won, 1 lost)",
            outcomes_file.display()
        ),
        "- **Left out:** 1 line that is not an outcome: line 7 (unknown_outcome)".to_string(),
        "- **Accounts with an opportunity or a win:** 4".to_string(),
        // a: 4 announcements, all answered; 3 led to an opportunity or a
        // win (acct-1, -4, -5); recall 3 of 4 (not acct-3); lead times 5,
        // 3 and 0.5 days: median 3, p90 3 + 0.8 x 2 = 4.6.
        format!("| `{a_label}` | *any rule* | 4 | 4 | 1 | 1 | 3 | 1 | 1 | 75% (3/4) | 75% (3/4) | 3.0 days | 4.6 days |"),
        format!("| `{a_label}` | `team_adoption` | 0 | 0 | 0 | 0 | 0 | 0 | 0 | - | 0% (0/4) | - | - |"),
        format!("| `{a_label}` | `enterprise_evaluation` | 1 | 1 | 0 | 0 | 1 | 0 | 0 | 100% (1/1) | 25% (1/4) | 0.5 days | 0.5 days |"),
        // hand_raiser: acct-1 (5 days), acct-2 (rejected), acct-4 (3 days).
        format!("| `{a_label}` | `hand_raiser` | 3 | 3 | 1 | 1 | 2 | 1 | 1 | 67% (2/3) | 50% (2/4) | 4.0 days | 4.8 days |"),
        // b: acct-2 (rejected) and acct-5 (opportunity after half a day).
        format!("| `{b_label}` | *any rule* | 2 | 2 | 0 | 1 | 1 | 0 | 0 | 50% (1/2) | 25% (1/4) | 0.5 days | 0.5 days |"),
        format!("| `{b_label}` | `hand_raiser` | 1 | 1 | 0 | 1 | 0 | 0 | 0 | 0% (0/1) | 0% (0/4) | - | - |"),
        format!("`{a_label}`: 7 outcomes answered one of its announcements (1 by `pqa_event_id`, 6 by time)."),
        "| `acct-3` | won | 2026-03-12T10:00:00Z | - | - | none |".to_string(),
    ] {
        assert!(summary.lines().any(|l| l == line), "summary lacks\n{line}\n\n{summary}");
    }
    let mut rd = csv::Reader::from_path(out.join("rules.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    let hand = rows.iter().find(|r| &r[1] == "a-1" && &r[2] == "hand_raiser").unwrap();
    assert_eq!(&hand[10], "0.6667");
    assert_eq!((&hand[13], &hand[14], &hand[15], &hand[16]), ("0.5", "4", "4.8", "3.00 5.00"));
    let mut rd = csv::Reader::from_path(out.join("missed.csv")).unwrap();
    let missed: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    assert_eq!(missed.len(), 1);
    assert_eq!((&missed[0][0], &missed[0][1], &missed[0][2]), ("acct-3", "won", "2026-03-12T10:00:00Z"));
    let png = std::fs::read(out.join("outcomes_by_rule.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
}

/// SIGINT (Ctrl-C) stops a replay between chunks of lines: it exits 130
/// and says so, its temporary state is removed (killed at once, it stayed
/// in the temporary directory), and with `--state-dir` a replay of the
/// whole file resumes after the lines the first applied: the two outputs
/// together are a whole replay's. The input is a pipe held open, so the
/// signal finds the replay in the middle of its input, whatever the
/// machine's speed.
#[test]
fn an_interrupted_replay_leaves_no_temporary_state_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::write_history(
        &dir.path().join("history.ndjson"),
        SimConfig { seed: 7, accounts: 80, start_unix: 1_767_225_600, days: 45 },
    );
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 8_000, "{} lines", lines.len());
    let whole = dir.path().join("whole.ndjson");
    let st = Command::new(BIN).arg("replay").arg("--input").arg(&input).arg("--output").arg(&whole).status().unwrap();
    assert!(st.success());
    let whole = std::fs::read_to_string(&whole).unwrap();
    assert!(!whole.is_empty());

    for keep in [false, true] {
        let tmp = dir.path().join(format!("tmp-{keep}"));
        std::fs::create_dir(&tmp).unwrap();
        let (first, state) = (dir.path().join(format!("first-{keep}.ndjson")), dir.path().join("state"));
        let mut cmd = Command::new(BIN);
        cmd.args(["replay", "--input", "-", "--batch-lines", "100", "--output"])
            .arg(&first)
            .env("TMPDIR", &tmp)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped());
        if keep {
            cmd.arg("--state-dir").arg(&state);
        }
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // Half the history, the pipe left open: the replay applies the
        // chunks it has and waits for more.
        for l in &lines[..lines.len() / 2] {
            writeln!(stdin, "{l}").unwrap();
        }
        stdin.flush().unwrap();
        let opened = if keep { state.join("CURRENT") } else { tmp.clone() };
        let t0 = Instant::now();
        while !(opened.is_file() || (!keep && std::fs::read_dir(&tmp).unwrap().next().is_some())) {
            assert!(t0.elapsed() < Duration::from_secs(60), "the replay never opened its state");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let killed = Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
        assert!(killed.success());
        // It exits with the pipe still open (its reader, waiting on the
        // pipe, is not waited for).
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "keep={keep}: still running with its input pipe open");
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(stdin);
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert_eq!(status.code(), Some(130), "keep={keep}: {stderr}");
        assert!(stderr.contains("interrupted: replayed"), "{stderr}");
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "keep={keep}: left behind in the temporary directory: {left:?}");
        if keep {
            let rest = dir.path().join("rest.ndjson");
            let resumed = Command::new(BIN)
                .arg("replay")
                .arg("--input")
                .arg(&input)
                .arg("--output")
                .arg(&rest)
                .arg("--state-dir")
                .arg(&state)
                .output()
                .unwrap();
            assert!(resumed.status.success());
            // It says how many lines it skipped: those the first applied.
            let number_after = |text: &str, words: &str| -> u64 {
                let at = text.find(words).unwrap_or_else(|| panic!("{words:?} in {text}")) + words.len();
                text[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
            };
            let applied = number_after(&stderr, "interrupted: replayed ");
            let resumed = String::from_utf8_lossy(&resumed.stderr);
            assert!(applied > 0, "{stderr}");
            assert_eq!(number_after(&resumed, "announcements; "), applied, "{resumed}");
            assert_eq!(number_after(&resumed, "lines/s): ") + applied, lines.len() as u64, "{resumed}");
            let both = std::fs::read_to_string(&first).unwrap() + &std::fs::read_to_string(&rest).unwrap();
            assert!(!std::fs::read_to_string(&first).unwrap().is_empty(), "nothing announced before the signal");
            assert_eq!(both, whole, "the interrupted replay and its resumption together are a whole replay");
        }
    }
}
