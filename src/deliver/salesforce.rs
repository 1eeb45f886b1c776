//! Salesforce (REST API, OAuth access token as `Authorization: Bearer`).
//!
//! Per announcement:
//! 1. The Account, by its external-id field holding the account id
//!    (`GET /services/data/vXX.X/sobjects/Account/<Field__c>/<id>?fields=Id,OwnerId`):
//!    an existing one gets its PQA fields (`PATCH .../sobjects/Account/<Id>`,
//!    its name left as sales keeps it); a missing one is created by upsert
//!    (`PATCH .../sobjects/Account/<Field__c>/<id>` with `Name` and
//!    `Website`), which is idempotent.
//! 2. Its PQA fields: `PQA_Tier__c`, `PQA_Score__c`, `PQA_Rules__c`,
//!    `PQA_Definition_Version__c`, `PQA_Qualified_At__c` (on `qualified`).
//! 3. On `qualified` and `tier_changed`, a Task on the account (`WhatId`)
//!    for its owner (or `owner_id`), upserted by its own external-id field
//!    holding the CloudEvent id (`PATCH .../sobjects/Task/<Field__c>/<event id>`):
//!    a redelivered event updates the same task, never makes a second.

use serde_json::{json, Map, Value};

use super::event::{task_body, Announcement, Kind};
use super::retry::{call, Failure};
use super::Words;
use crate::config::deliver::{DestinationConfig, Secret};

pub struct Salesforce {
    /// `<instance>/services/data/vXX.X`.
    base: String,
    token: Secret,
    account_field: String,
    task_field: String,
    create_tasks: bool,
    owner_id: Option<String>,
}

/// A path segment, percent-encoded (account ids may hold any character).
fn segment(s: &str) -> String {
    let mut u = reqwest::Url::parse("http://x/").expect("URL");
    u.path_segments_mut().expect("base").push(s);
    u.path()[1..].to_string()
}

impl Salesforce {
    pub fn new(d: &DestinationConfig, instance: Secret, token: Secret) -> Salesforce {
        let version = d.api_version.clone().unwrap_or_else(|| "v62.0".into());
        Salesforce {
            base: format!("{}/services/data/{version}", instance.expose().trim_end_matches('/')),
            token,
            account_field: d.account_external_id_field.clone().unwrap_or_else(|| "PQA_Account_Id__c".into()),
            task_field: d.task_external_id_field.clone().unwrap_or_else(|| "PQA_Event_Id__c".into()),
            create_tasks: d.create_tasks.unwrap_or(true),
            owner_id: d.owner_id.clone(),
        }
    }

    pub async fn deliver(&self, client: &reqwest::Client, a: &Announcement, w: &Words<'_>) -> Result<String, Failure> {
        let mut fields = Map::new();
        fields.insert("PQA_Tier__c".into(), json!(a.tier));
        fields.insert("PQA_Score__c".into(), json!(a.score));
        fields.insert("PQA_Rules__c".into(), json!(a.rules.join(";")));
        fields.insert("PQA_Definition_Version__c".into(), json!(a.definition_version));
        if a.kind == Kind::Qualified {
            fields.insert("PQA_Qualified_At__c".into(), json!(a.qualified_at));
        }
        let by_ext = format!("{}/sobjects/Account/{}/{}", self.base, self.account_field, segment(&a.account_id));
        let existing =
            match call(client.get(format!("{by_ext}?fields=Id,OwnerId")).bearer_auth(self.token.expose())).await {
                Ok(r) => Some(r.json().unwrap_or(Value::Null)),
                Err(f) if f.status == Some(404) => None,
                Err(f) => return Err(f),
            };
        let (account_id, owner) = match existing {
            Some(acc) => {
                let id = record_id(&acc, "Id")?;
                let url = format!("{}/sobjects/Account/{}", self.base, segment(&id));
                call(client.patch(url).bearer_auth(self.token.expose()).json(&fields)).await?;
                (id, acc["OwnerId"].as_str().map(str::to_string))
            }
            None => {
                fields.insert("Name".into(), json!(a.display_name()));
                if let Some(d) = &a.domain {
                    fields.insert("Website".into(), json!(d));
                }
                let r = call(client.patch(&by_ext).bearer_auth(self.token.expose()).json(&fields)).await?;
                match r.json() {
                    Some(v) => (record_id(&v, "id")?, None),
                    // 204: an update (API versions before 46.0); read the id.
                    None => {
                        let r =
                            call(client.get(format!("{by_ext}?fields=Id,OwnerId")).bearer_auth(self.token.expose()))
                                .await?;
                        let v = r.json().unwrap_or(Value::Null);
                        (record_id(&v, "Id")?, v["OwnerId"].as_str().map(str::to_string))
                    }
                }
            }
        };
        if !self.create_tasks || a.kind == Kind::Disqualified {
            return Ok(format!("account {account_id}"));
        }
        let mut task = Map::new();
        task.insert("Subject".into(), json!(cut(&format!("PQA: {}", a.headline()), 255)));
        task.insert("Description".into(), json!(task_body(a, w.glossary, w.max_leads, w.link.as_deref())));
        task.insert("WhatId".into(), json!(account_id));
        task.insert("Status".into(), json!("Not Started"));
        task.insert("Priority".into(), json!(if a.tier == w.glossary.top_tier { "High" } else { "Normal" }));
        task.insert("ActivityDate".into(), json!(chrono::Utc::now().format("%Y-%m-%d").to_string()));
        // The configured owner only for an account without one we know of
        // (a new account is owned by the API user until sales assigns it).
        if let Some(o) = self.owner_id.clone().filter(|_| owner.is_none()).or(owner) {
            task.insert("OwnerId".into(), json!(o));
        }
        let url = format!("{}/sobjects/Task/{}/{}", self.base, self.task_field, segment(&a.id));
        let r = call(client.patch(url).bearer_auth(self.token.expose()).json(&task)).await?;
        let task_id = r.json().and_then(|v| v["id"].as_str().map(str::to_string)).unwrap_or_else(|| "updated".into());
        Ok(format!("account {account_id}, task {task_id}"))
    }
}

fn record_id(v: &Value, key: &str) -> Result<String, Failure> {
    v[key].as_str().filter(|s| !s.is_empty()).map(str::to_string).ok_or_else(|| {
        Failure::unexpected(format!("Salesforce answered a record without `{key}`"), 200, &v.to_string())
    })
}

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(super::segment("acct-42"), "acct-42");
        assert_eq!(super::segment("a/b c?d"), "a%2Fb%20c%3Fd");
    }
}
