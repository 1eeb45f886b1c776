//! HubSpot (CRM API v3, private-app token as `Authorization: Bearer`).
//!
//! Per announcement:
//! 1. The company: found by `domain` (`POST /crm/v3/objects/companies/search`)
//!    and updated (`PATCH /crm/v3/objects/companies/{id}`), or, with no
//!    match or no domain, upserted by the unique property holding the
//!    account id (`POST /crm/v3/objects/companies/batch/upsert` with
//!    `idProperty`). Both are idempotent.
//! 2. Its PQA properties: `pqa_tier`, `pqa_score`, `pqa_rules` (`;`
//!    separated, as HubSpot writes multiple values), `pqa_definition_version`,
//!    `pqa_qualified_at` (on `qualified`) and the id property. They must
//!    exist in the portal (see the README).
//! 3. On `qualified` and `tier_changed`, a task for the company's owner (or
//!    `owner_id`), associated with the company (association type 192, task
//!    to company), carrying the CloudEvent id in `task_id_property`: it is
//!    searched for first, so a redelivered event never creates a second
//!    task.

use serde_json::{json, Map, Value};

use super::event::{task_body, Announcement, Kind};
use super::retry::{call, Failure, Response};
use super::Words;
use crate::config::deliver::{DestinationConfig, Secret};

/// HubSpot's association type id for task -> company.
pub const TASK_TO_COMPANY: u32 = 192;

pub struct HubSpot {
    base: String,
    token: Secret,
    match_by_domain: bool,
    id_property: String,
    task_id_property: String,
    create_tasks: bool,
    owner_id: Option<String>,
}

impl HubSpot {
    pub fn new(d: &DestinationConfig, base: Secret, token: Secret) -> HubSpot {
        HubSpot {
            base: base.expose().trim_end_matches('/').to_string(),
            token,
            match_by_domain: d.match_by_domain.unwrap_or(true),
            id_property: d.id_property.clone().unwrap_or_else(|| "pqa_account_id".into()),
            task_id_property: d.task_id_property.clone().unwrap_or_else(|| "pqa_event_id".into()),
            create_tasks: d.create_tasks.unwrap_or(true),
            owner_id: d.owner_id.clone(),
        }
    }

    async fn post(&self, client: &reqwest::Client, path: &str, body: &Value) -> Result<Response, Failure> {
        call(client.post(format!("{}{path}", self.base)).bearer_auth(self.token.expose()).json(body)).await
    }

    /// Delivers one announcement; returns what it made (`company N, task M`).
    pub async fn deliver(&self, client: &reqwest::Client, a: &Announcement, w: &Words<'_>) -> Result<String, Failure> {
        let mut props = Map::new();
        props.insert("pqa_tier".into(), json!(a.tier));
        props.insert("pqa_score".into(), json!(a.score.to_string()));
        props.insert("pqa_rules".into(), json!(a.rules.join(";")));
        props.insert("pqa_definition_version".into(), json!(a.definition_version));
        if a.kind == Kind::Qualified {
            props.insert("pqa_qualified_at".into(), json!(a.qualified_at));
        }
        props.insert(self.id_property.clone(), json!(a.account_id));

        let mut found = None;
        if let (true, Some(domain)) = (self.match_by_domain, &a.domain) {
            let search = json!({
                "filterGroups": [{"filters": [{"propertyName": "domain", "operator": "EQ", "value": domain}]}],
                "properties": ["domain", "name", "hubspot_owner_id", self.id_property],
                "limit": 1,
            });
            let r = self.post(client, "/crm/v3/objects/companies/search", &search).await?;
            found = r.json().and_then(|v| v["results"].get(0).cloned());
        }
        let company = match found {
            Some(c) => {
                let id = object_id(&c, 200, "")?;
                let path = format!("{}/crm/v3/objects/companies/{id}", self.base);
                let req = client.patch(path).bearer_auth(self.token.expose()).json(&json!({"properties": props}));
                call(req).await?;
                c
            }
            None => {
                if let Some(d) = &a.domain {
                    props.insert("domain".into(), json!(d));
                }
                if let Some(n) = &a.account_name {
                    props.insert("name".into(), json!(n));
                }
                let body =
                    json!({"inputs": [{"idProperty": self.id_property, "id": a.account_id, "properties": props}]});
                let r = self.post(client, "/crm/v3/objects/companies/batch/upsert", &body).await?;
                let v = r.json().unwrap_or(Value::Null);
                match v["results"].get(0) {
                    Some(c) => c.clone(),
                    None => return Err(Failure::unexpected("the upsert answered no company", r.status, &r.body)),
                }
            }
        };
        let company_id = object_id(&company, 200, "")?;
        if !self.create_tasks || a.kind == Kind::Disqualified {
            return Ok(format!("company {company_id}"));
        }
        let task = self.task(client, a, w, &company_id, &company).await?;
        Ok(format!("company {company_id}, task {task}"))
    }

    /// The task for this announcement: the one already made (found by the
    /// event id), or a new one.
    async fn task(
        &self,
        client: &reqwest::Client,
        a: &Announcement,
        w: &Words<'_>,
        company_id: &str,
        company: &Value,
    ) -> Result<String, Failure> {
        if !self.task_id_property.is_empty() {
            let search = json!({
                "filterGroups": [{"filters": [{"propertyName": self.task_id_property, "operator": "EQ", "value": a.id}]}],
                "properties": ["hs_task_subject"],
                "limit": 1,
            });
            let r = self.post(client, "/crm/v3/objects/tasks/search", &search).await?;
            if let Some(t) = r.json().and_then(|v| v["results"].get(0).cloned()) {
                return object_id(&t, r.status, &r.body);
            }
        }
        let owner = company["properties"]["hubspot_owner_id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or_else(|| self.owner_id.clone());
        let mut p = Map::new();
        p.insert("hs_timestamp".into(), json!(crate::emit::format_time_ms(chrono::Utc::now().timestamp_millis())));
        p.insert("hs_task_subject".into(), json!(format!("PQA: {}", a.headline())));
        p.insert("hs_task_body".into(), json!(task_body(a, w.glossary, w.max_leads, w.link.as_deref())));
        p.insert("hs_task_status".into(), json!("NOT_STARTED"));
        p.insert("hs_task_priority".into(), json!(if a.tier == w.glossary.top_tier { "HIGH" } else { "MEDIUM" }));
        p.insert("hs_task_type".into(), json!("TODO"));
        if let Some(o) = owner {
            p.insert("hubspot_owner_id".into(), json!(o));
        }
        if !self.task_id_property.is_empty() {
            p.insert(self.task_id_property.clone(), json!(a.id));
        }
        let body = json!({
            "properties": p,
            "associations": [{
                "to": {"id": company_id},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_COMPANY}],
            }],
        });
        let r = self.post(client, "/crm/v3/objects/tasks", &body).await?;
        object_id(&r.json().unwrap_or(Value::Null), r.status, &r.body)
    }
}

/// The `id` of a HubSpot object (a string in their JSON).
fn object_id(v: &Value, status: u16, body: &str) -> Result<String, Failure> {
    match &v["id"] {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(Failure::unexpected("HubSpot answered an object without an id", status, body)),
    }
}
