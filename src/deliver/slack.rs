//! Slack: a readable message per announcement, posted to an incoming
//! webhook (`POST <url>` with `{"text": ..., "blocks": [...]}`, Block Kit;
//! Slack answers `200 ok`). `text` is the notification fallback; the blocks
//! hold the account, tier and score, the rules in words with the numbers
//! that fired them, the top leads with their reasons, and a link to
//! `/accounts/{id}` when a public base URL is configured.
//!
//! Incoming webhooks have no idempotency key: see the README on what a
//! crash between Slack's answer and the id being recorded can repeat.

use serde_json::{json, Value};

use super::event::{humanize, lead_line, Announcement, Glossary, Kind};

/// Slack's limits: a section's text up to 3000 characters, a header's 150.
const SECTION_MAX: usize = 3000;
const HEADER_MAX: usize = 150;

/// Escapes the three characters mrkdwn reserves (`&`, `<`, `>`).
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The message body for an incoming webhook.
pub fn message(a: &Announcement, glossary: &Glossary, max_leads: usize, link: Option<&str>) -> Value {
    let name = escape(a.display_name());
    let header = match a.kind {
        Kind::Qualified => format!("New PQA: {}", a.display_name()),
        Kind::TierChanged => format!("PQA tier up: {}", a.display_name()),
        Kind::Disqualified => format!("No longer a PQA: {}", a.display_name()),
    };
    let mut blocks = vec![json!({"type": "header", "text": {"type": "plain_text", "text": cut(&header, HEADER_MAX)}})];

    let mut facts = format!("*{name}* `{}`", escape(&a.account_id));
    if let Some(d) = &a.domain {
        facts.push_str(&format!(" · {}", escape(d)));
    }
    facts.push('\n');
    facts.push_str(&match a.kind {
        Kind::Qualified => format!("Tier *{}* · score *{}*/100", escape(&a.tier), a.score),
        Kind::TierChanged => format!(
            "Tier *{}* (was {}) · score *{}*/100",
            escape(&a.tier),
            escape(a.previous_tier.as_deref().unwrap_or("?")),
            a.score
        ),
        Kind::Disqualified => match &a.previous_tier {
            Some(t) => format!("No rule fires any more (was *{}*)", escape(t)),
            None => "No rule fires any more".to_string(),
        },
    });
    blocks.push(section(&facts));

    if !a.rules.is_empty() {
        let mut why = String::from("*Why*");
        for (rule, desc, nums) in glossary.explain(a) {
            why.push_str(&format!("\n• *{}*", escape(&humanize(&rule))));
            if !desc.is_empty() {
                why.push_str(&format!(": {}", escape(&desc)));
            }
            if !nums.is_empty() {
                why.push_str(&format!(" _({})_", escape(&nums.join(", "))));
            }
        }
        blocks.push(section(&why));
    }
    if !a.leads.is_empty() && max_leads > 0 {
        let mut who = String::from("*Who to talk to*");
        for l in a.leads.iter().take(max_leads) {
            let (person, why) = lead_line(l);
            who.push_str(&format!("\n• {} — {}", escape(&person), escape(&why)));
        }
        if a.leads.len() > max_leads {
            who.push_str(&format!("\n_and {} more_", a.leads.len() - max_leads));
        }
        blocks.push(section(&who));
    }
    if let Some(l) = link {
        blocks.push(section(&format!("<{}|Open {name} in pqa-engine>", l.replace('|', "%7C"))));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(&format!(
        "definition {} · {} · id {}", a.definition_version, a.time, a.id
    ))}]}));
    json!({"text": escape(&a.headline()), "blocks": blocks})
}

fn section(text: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(text, SECTION_MAX)}})
}

/// The message as plain text for a terminal: the blocks' texts, mrkdwn
/// rendered plainly (`*bold*` and `_italic_` marks dropped, `<url|text>` as
/// `text: url`, entities decoded).
pub fn render_plain(message: &Value) -> String {
    let mut lines = Vec::new();
    for b in message["blocks"].as_array().into_iter().flatten() {
        match b["type"].as_str() {
            Some("header") => {
                let t = b["text"]["text"].as_str().unwrap_or_default();
                lines.push(t.to_string());
                lines.push("─".repeat(t.chars().count().min(60)));
            }
            Some("section") => lines.push(plain(b["text"]["text"].as_str().unwrap_or_default())),
            Some("context") => {
                for e in b["elements"].as_array().into_iter().flatten() {
                    lines.push(plain(e["text"].as_str().unwrap_or_default()));
                }
            }
            _ => {}
        }
    }
    lines.join("\n")
}

fn plain(mrkdwn: &str) -> String {
    let mut out = String::new();
    let mut rest = mrkdwn;
    // Links first: `<url|text>` and `<url>`.
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('>') {
            Some(end) => {
                let inner = &after[..end];
                match inner.split_once('|') {
                    Some((url, text)) => out.push_str(&format!("{text}: {url}")),
                    None => out.push_str(inner),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    let out = strip_marks(&out, '*');
    let out = strip_marks(&out, '_');
    out.replace('`', "").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Drops `*`/`_` pairs that open at a word start and close at a word end
/// (what mrkdwn renders as bold/italic); other characters stay.
fn strip_marks(s: &str, mark: char) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut drop = vec![false; chars.len()];
    let mut open: Option<usize> = None;
    for (i, &c) in chars.iter().enumerate() {
        if c != mark {
            continue;
        }
        let before = if i == 0 { None } else { Some(chars[i - 1]) };
        let after = chars.get(i + 1).copied();
        match open {
            None if before.is_none_or(|b| !b.is_alphanumeric()) && after.is_some_and(|a| !a.is_whitespace()) => {
                open = Some(i)
            }
            Some(o) if after.is_none_or(|a| !a.is_alphanumeric()) && before.is_some_and(|b| !b.is_whitespace()) => {
                drop[o] = true;
                drop[i] = true;
                open = None;
            }
            _ => {}
        }
    }
    chars.iter().zip(drop).filter(|(_, d)| !d).map(|(c, _)| *c).collect()
}

#[cfg(test)]
mod tests {
    use super::super::event::tests::{glossary, SAMPLE};
    use super::*;

    #[test]
    fn the_message_is_block_kit_with_a_fallback_text() {
        let a = Announcement::parse(SAMPLE.as_bytes()).unwrap();
        let m = message(&a, &glossary(), 1, Some("https://pqa.example.com/accounts/acct-00163"));
        assert_eq!(m["text"], "Aperture 163 (acct-00163) is a PQA: hot tier, score 80");
        let blocks = m["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        for b in &blocks[1..] {
            assert!(b["type"] == "section" || b["type"] == "context", "{b}");
        }
        let all = m.to_string();
        // Reserved characters of a trait are escaped, not markup.
        assert!(all.contains("Ada &lt;Lovelace&gt; &amp; co"), "{all}");
        assert!(all.contains("and 1 more"), "{all}");
        assert!(all.contains("<https://pqa.example.com/accounts/acct-00163|Open Aperture 163 in pqa-engine>"), "{all}");
        assert!(all.contains("id 43d35f6cf5cf1dbf4dc31f5f8f96de01"), "{all}");
    }

    #[test]
    fn plain_rendering_reads_well_in_a_terminal() {
        let a = Announcement::parse(SAMPLE.as_bytes()).unwrap();
        let m = message(&a, &glossary(), 3, Some("https://pqa.example.com/accounts/acct-00163"));
        let text = render_plain(&m);
        let want = "New PQA: Aperture 163\n\
                    ─────────────────────\n\
                    Aperture 163 acct-00163 · aperture163.example\n\
                    Tier hot · score 80/100\n\
                    Why\n\
                    • Team adoption: 7 or more distinct users active in the trailing 28 days (active_users_28d 10)\n";
        assert!(text.starts_with(want), "{text}");
        assert!(
            text.contains(
                "• u7@aperture163.example (Ada <Lovelace> & co) — vp (seniority); 25 events in the last 28 days"
            ),
            "{text}"
        );
        assert!(
            text.contains("Open Aperture 163 in pqa-engine: https://pqa.example.com/accounts/acct-00163"),
            "{text}"
        );
        assert!(
            text.ends_with("definition default-2026.11.1 · 2026-02-08T11:57:03Z · id 43d35f6cf5cf1dbf4dc31f5f8f96de01"),
            "{text}"
        );
    }

    #[test]
    fn marks_inside_words_stay() {
        assert_eq!(plain("*bold* and events_7d _it_"), "bold and events_7d it");
        assert_eq!(plain("a * b"), "a * b");
    }
}
