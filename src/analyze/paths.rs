//! Page paths as patterns: ids and numbers collapsed, so that
//! `/boards/b-12` and `/boards/b-7` are one candidate, `/boards/:id`; and
//! each pattern as the regular expression a definition's `page_path`
//! signal takes.

use std::borrow::Cow;

/// What a collapsed path segment reads as.
pub const ID: &str = ":id";

/// Whether a path segment is an id or a number rather than a name:
///
/// - digits (`123`);
/// - a UUID (`3f2a...-...`);
/// - hexadecimal of 8+ characters with a digit (hashes, object ids);
/// - a short word, `-` or `_`, then digits (`b-12`, `inv_8812`, `user-42`);
/// - a token of 16+ letters, digits, `-` or `_` with at least two digits
///   and a letter (`cus_9s8d7f6g5h4j3k`).
///
/// Names with a digit in them stay (`v2`, `2fa`, `oauth2`, `h1-2026`).
pub fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() })
    {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if b.len() >= 8 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    if let Some(p) = b.iter().position(|&c| c == b'-' || c == b'_') {
        let (word, rest) = (&b[..p], &b[p + 1..]);
        if (1..=12).contains(&word.len())
            && word.iter().all(u8::is_ascii_alphabetic)
            && !rest.is_empty()
            && rest.iter().all(u8::is_ascii_digit)
        {
            return true;
        }
    }
    b.len() >= 16
        && digits >= 2
        && b.iter().any(u8::is_ascii_alphabetic)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// The path with every id segment replaced by [`ID`]; borrowed when
/// nothing changes.
pub fn collapse(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(is_id) {
        return Cow::Borrowed(path);
    }
    let parts: Vec<&str> = path.split('/').map(|s| if is_id(s) { ID } else { s }).collect();
    Cow::Owned(parts.join("/"))
}

/// The anchored regular expression of a pattern: literal segments as
/// they are, [`ID`] as one segment of anything (`^/boards/[^/]+$`).
pub fn pattern_regex(pattern: &str) -> String {
    format!("^{}$", pattern_body(pattern))
}

/// [`pattern_regex`] without its anchors, to join several with `|`.
pub fn pattern_body(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|s| if s == ID { "[^/]+".to_string() } else { regex::escape(s) })
        .collect::<Vec<_>>()
        .join("/")
}

/// One regular expression matching any of `patterns`.
pub fn patterns_regex(patterns: &[&str]) -> String {
    match patterns {
        [one] => pattern_regex(one),
        many => format!("^(?:{})$", many.iter().map(|p| pattern_body(p)).collect::<Vec<_>>().join("|")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        for id in [
            "123",
            "0",
            "b-12",
            "inv_8812",
            "user-42",
            "3f2a9c4e-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
            "5f8d0d55b54764421b7156c3",
            "deadbeef01",
            "cus_9s8d7f6g5h4j3k2l",
        ] {
            assert!(is_id(id), "{id} is an id");
        }
        for name in [
            "",
            "boards",
            "docs",
            "sso",
            "v2",
            "2fa",
            "oauth2",
            "terms-of-service",
            "h1-2026",
            "deadbeef",
            "getting-started",
        ] {
            assert!(!is_id(name), "{name} is a name");
        }
    }

    #[test]
    fn collapse_and_match() {
        assert_eq!(collapse("/docs/sso"), "/docs/sso");
        assert!(matches!(collapse("/docs/sso"), Cow::Borrowed(_)));
        assert_eq!(collapse("/boards/b-12"), "/boards/:id");
        assert_eq!(collapse("/org/42/projects/7/settings/"), "/org/:id/projects/:id/settings/");
        assert_eq!(collapse("/"), "/");
        for (pattern, yes, no) in [
            ("/docs/sso", vec!["/docs/sso"], vec!["/docs/sso/", "/docs/ssox", "/x/docs/sso", "/docs/sso/setup"]),
            ("/boards/:id", vec!["/boards/b-12", "/boards/7"], vec!["/boards", "/boards/", "/boards/1/cards"]),
            ("/a.b/(x)", vec!["/a.b/(x)"], vec!["/aXb/(x)"]),
        ] {
            let re = regex::Regex::new(&pattern_regex(pattern)).unwrap();
            for y in yes {
                assert!(re.is_match(y), "{pattern} should match {y}");
                assert!(collapse(y).as_ref() == pattern || pattern.contains(ID));
            }
            for n in no {
                assert!(!re.is_match(n), "{pattern} should not match {n}");
            }
        }
        let re = regex::Regex::new(&patterns_regex(&["/docs/sso", "/boards/:id"])).unwrap();
        assert!(re.is_match("/docs/sso") && re.is_match("/boards/b-3") && !re.is_match("/docs/sso/x"));
    }
}
