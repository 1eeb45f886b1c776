//! Webhook: the CloudEvent as JSON, signed the Standard Webhooks way
//! (<https://www.standardwebhooks.com>), for Zapier, n8n, Make or the
//! team's own service.
//!
//! - `webhook-id`: the CloudEvent id. It is the same on every retry and
//!   every redelivery, so a receiver deduplicates on it (as the spec asks).
//! - `webhook-timestamp`: Unix seconds of this attempt.
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
//!   with the key behind the `whsec_` prefix of the secret.
//!
//! Structured content mode (default): the body is the CloudEvent exactly as
//! it is on the topic, `Content-Type: application/cloudevents+json`. Binary
//! mode: the body is `data`, the attributes are `ce-*` headers.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use sha2::Sha256;

use super::event::Announcement;

/// The Standard Webhooks signature of one attempt: `v1,<base64>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// How the CloudEvent travels (CloudEvents HTTP binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    Structured,
    Binary,
}

/// The body and headers of one attempt at `now_s` (Unix seconds).
pub fn request(a: &Announcement, raw: &[u8], key: &[u8], mode: ContentMode, now_s: i64) -> (Vec<u8>, HeaderMap) {
    let mut h = HeaderMap::new();
    let body = match mode {
        ContentMode::Structured => {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/cloudevents+json; charset=utf-8"));
            raw.to_vec()
        }
        ContentMode::Binary => {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            for attr in ["specversion", "id", "type", "source", "subject", "time"] {
                if let Some(v) = a.envelope[attr].as_str().and_then(|v| HeaderValue::from_str(v).ok()) {
                    h.insert(HeaderName::from_bytes(format!("ce-{attr}").as_bytes()).expect("header name"), v);
                }
            }
            serde_json::to_vec(&a.envelope["data"]).expect("JSON")
        }
    };
    let signature = sign(key, &a.id, now_s, &body);
    let value = |s: &str| HeaderValue::from_str(s).expect("ASCII header value");
    h.insert("webhook-id", value(&a.id));
    h.insert("webhook-timestamp", value(&now_s.to_string()));
    h.insert("webhook-signature", value(&signature));
    (body, h)
}

#[cfg(test)]
mod tests {
    use super::super::event::tests::SAMPLE;
    use super::*;
    use crate::config::deliver::decode_whsec;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        // The vector of the Standard Webhooks reference libraries: what a
        // receiver's own library verifies.
        let key = decode_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn structured_mode_sends_the_event_as_it_is_on_the_topic() {
        let a = Announcement::parse(SAMPLE.as_bytes()).unwrap();
        let key = b"0123456789abcdef0123";
        let (body, h) = request(&a, SAMPLE.as_bytes(), key, ContentMode::Structured, 1_700_000_000);
        assert_eq!(body, SAMPLE.as_bytes());
        assert_eq!(h["webhook-id"], "43d35f6cf5cf1dbf4dc31f5f8f96de01");
        assert_eq!(h["webhook-timestamp"], "1700000000");
        assert_eq!(h["webhook-signature"], sign(key, &a.id, 1_700_000_000, &body).as_str());
        assert_eq!(h[CONTENT_TYPE], "application/cloudevents+json; charset=utf-8");
    }

    #[test]
    fn binary_mode_puts_the_attributes_in_headers() {
        let a = Announcement::parse(SAMPLE.as_bytes()).unwrap();
        let (body, h) = request(&a, SAMPLE.as_bytes(), b"0123456789abcdef", ContentMode::Binary, 1);
        let data: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(data["account_id"], "acct-00163");
        assert_eq!(h["ce-type"], "pqa.account.qualified");
        assert_eq!(h["ce-id"], "43d35f6cf5cf1dbf4dc31f5f8f96de01");
        assert_eq!(h["ce-subject"], "acct-00163");
        assert_eq!(h[CONTENT_TYPE], "application/json");
    }
}
