//! HTTP: `/metrics` (Prometheus text), `/healthz` (the process is alive),
//! `/readyz` (consuming and able to make progress), and `/accounts/{id}`
//! (the account's counters, signals, score, and for each rule whether it
//! fires and the numbers it looked at), `/definitions` (the live and shadow
//! definitions, their announcements and agreement), and `POST
//! /admin/reload` (only with an admin token configured). Binds to localhost
//! unless configured otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::config::CompiledDefinition;
use crate::definitions::{Definitions, Published};
use crate::detect::{account_to_cel, evaluate, AccountVar, Outcome, TraitFields};
use crate::emit::format_time_ms;
pub use crate::health::Health;
use crate::reload::{ReloadError, Reloader};
use crate::shutdown::Shutdown;
use crate::state::account::bucket_of;
use crate::state::StateReader;
use crate::telemetry::Metrics;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The running definitions (published by the consumer loop).
    pub published: Arc<Published>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    /// `POST /admin/reload` needs `Authorization: Bearer <token>`; without
    /// a token configured the admin endpoints answer 404.
    pub admin_token: Option<String>,
    pub reloader: Option<Arc<Reloader>>,
}

impl AppState {
    /// Handlers for a process running `def` alone (no reload).
    pub fn new(def: Arc<CompiledDefinition>, metrics: Metrics, health: Arc<Health>) -> AppState {
        let published = Published::new();
        *published.definitions.write().expect("lock") = Some(Arc::new(Definitions::single(def)));
        AppState { published, metrics, health, admin_token: None, reloader: None }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/accounts/{id}", get(account))
        .route("/definitions", get(definitions))
        .route("/definitions/{version}/rules", get(definition_rules))
        .route("/admin/reload", post(admin_reload))
        .with_state(state)
}

/// Binds `addr` now (so a busy port is an error at start) and serves on a
/// background thread until `shutdown`.
pub fn spawn(addr: &str, state: AppState, shutdown: Shutdown) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    spawn_router(addr, router(state), shutdown)
}

/// [`spawn`] for any router (`deliver` serves its own endpoints).
pub fn spawn_router(addr: &str, app: Router, shutdown: Shutdown) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let handle = std::thread::Builder::new().name("pqa-http".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let stop = async move {
                while !shutdown.is_triggered() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                tracing::error!(cause = %e, "http server failed");
            }
        });
    })?;
    Ok((local, handle))
}

async fn metrics(State(s): State<AppState>) -> Response {
    // (Workers report their own state's size, merged by `render`.)
    if let (false, Some(r)) = (s.health.has_workers(), s.health.reader()) {
        let (records, bytes) = r.size_estimate();
        s.metrics.state_records.set(records as i64);
        s.metrics.state_bytes.set(bytes as i64);
    }
    s.metrics.ready.set(i64::from(s.health.readiness().is_ok()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    if s.health.is_live() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stopped\n").into_response()
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    let warnings: String = s.health.warnings().iter().map(|w| format!("warning: {w}\n")).collect();
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, format!("ready\n{warnings}")).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n{warnings}")).into_response(),
    }
}

async fn account(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let readers = s.health.readers();
    if readers.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "state not open yet"}))).into_response();
    }
    let Some(defs) = s.published.current() else {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "definitions not loaded yet"}))).into_response();
    };
    let window = match s.published.attribution_window_ms.load(std::sync::atomic::Ordering::Relaxed) {
        0 => crate::outcome::DEFAULT_ATTRIBUTION_WINDOW_MS,
        w => w,
    };
    let result = tokio::task::spawn_blocking(move || {
        let reader = owner(&readers, &id)?;
        account_view(&defs, reader, &id, window)
    })
    .await;
    match result {
        Ok(Ok(Some(v))) => Json(v).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, Json(json!({"error": "unknown account"}))).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e}))).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e.to_string()}))).into_response(),
    }
}

/// The state that holds `id` now: the only one, or, with workers (`run`,
/// `inspect`), the worker's state whose record of it is the latest (a
/// worker that gave the account's partition away keeps the record it had
/// then; the record's sequence number only grows, through the changelog
/// too).
pub fn owner<'r>(readers: &'r [StateReader], id: &str) -> Result<&'r StateReader, String> {
    if readers.len() == 1 {
        return Ok(&readers[0]);
    }
    let mut best = (&readers[0], None);
    for r in readers {
        let seq = r.account(id).map_err(|e| e.to_string())?.map(|a| a.seq);
        if seq > best.1 {
            best = (r, seq);
        }
    }
    Ok(best.0)
}

/// The explanation of an account, as of the engine's event-time watermark
/// (state as of the last committed batch).
/// [`account_view`] with the account's sequence number and its members
/// (user id, events in the last 90 days, last seen), for `pqa-engine
/// inspect`.
pub fn account_with_members(
    defs: &Definitions,
    reader: &StateReader,
    id: &str,
    window_ms: i64,
) -> Result<Option<Value>, String> {
    let Some(mut view) = account_view(defs, reader, id, window_ms)? else { return Ok(None) };
    let acct = reader.account(id).map_err(|e| e.to_string())?.unwrap_or_default();
    let now = acct.last_seen_ms.max(reader.watermark_ms().map_err(|e| e.to_string())?);
    let mut members = reader.members(id).map_err(|e| e.to_string())?;
    // A visitor's activity (not a user of the account) is not listed, nor
    // the emptied record of an id an alias merged into another.
    members.retain(|m| !m.0.starts_with('\u{0}') && m.1.first_seen_ms > 0);
    members.sort_by(|a, b| a.0.cmp(&b.0));
    let members: Vec<Value> = members
        .iter()
        .map(|(u, m)| {
            json!({"user_id": u, "events_90d": m.events_in_days(now, 90), "last_seen": format_time_ms(m.last_seen_ms)})
        })
        .collect();
    view["seq"] = json!(acct.seq);
    view["members"] = json!(members);
    Ok(Some(view))
}

/// `window_ms`: the attribution window of outcomes (which announcement
/// each outcome answers).
pub fn account_view(
    defs: &Definitions,
    reader: &StateReader,
    id: &str,
    window_ms: i64,
) -> Result<Option<Value>, String> {
    let Some(mut acct) = reader.account(id).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    // Read as the running definitions read it (columns by meaning).
    acct.conform(&defs.layout);
    let def = &defs.live;
    let watermark = reader.watermark_ms().map_err(|e| e.to_string())?;
    let now = acct.last_seen_ms.max(watermark);
    let now_bucket = bucket_of(now, def.bucket_seconds);
    let traits_cel = account_to_cel(&acct, AccountVar { free_mail: &def.free_mail_domains, fields: &TraitFields::All });
    let eval = evaluate(def, &acct, &traits_cel, now);
    let warming_up: Vec<&str> = def
        .metrics
        .iter()
        .filter(|m| acct.warming_up(m, now_bucket, def.bucket_seconds))
        .map(|m| m.name.as_str())
        .collect();
    let shadows: Vec<Value> = defs
        .shadows
        .iter()
        .map(|d| {
            let e = evaluate(d, &acct, &traits_cel, now);
            let announced = acct.shadow_announced.iter().find(|(v, _)| *v == d.version).map(|x| &x.1);
            json!({
                "definition_version": d.version,
                "qualified": !e.fired.is_empty(),
                "score": e.score,
                "tier": if e.fired.is_empty() { None } else { Some(d.tiers[e.tier].0.clone()) },
                "rules": e.fired.iter().map(|&i| d.rules[i].name.clone()).collect::<Vec<_>>(),
                "warming_up": d.metrics.iter().filter(|m| acct.warming_up(m, now_bucket, d.bucket_seconds)).map(|m| m.name.clone()).collect::<Vec<_>>(),
                "announced": announced.map(|a| json!({
                    "active": a.active,
                    "rules": a.rules.iter().map(|(r, t)| json!({"rule": r, "at": format_time_ms(*t)})).collect::<Vec<_>>(),
                })),
            })
        })
        .collect();
    let mut metrics = Map::new();
    for (k, v) in &eval.values {
        metrics.insert(k.clone(), json!(v));
    }
    metrics.insert("account_age_days".into(), json!(eval.account_age_days));
    let rules: Vec<Value> = def
        .rules
        .iter()
        .zip(&eval.outcomes)
        .map(|(r, o)| {
            let inputs: Map<String, Value> = r
                .references
                .iter()
                .filter_map(|name| match name.as_str() {
                    "account_age_days" => Some((name.clone(), json!(eval.account_age_days))),
                    "account" => None,
                    _ => eval.value(name).map(|v| (name.clone(), json!(v))),
                })
                .collect();
            json!({
                "name": r.name,
                "description": r.description,
                "when": r.when,
                "fires": *o == Outcome::Fires,
                "error": match o { Outcome::Error(e) => Some(e.clone()), _ => None },
                "inputs": inputs,
            })
        })
        .collect();
    let signals: Vec<Value> = acct
        .live_signals(def, now_bucket)
        .map(|h| json!({"name": def.signal_name(h.signal), "user_id": h.user, "at": format_time_ms(h.at_ms)}))
        .collect();
    let mut traits: Value = serde_json::from_str(&acct.traits_json).unwrap_or(json!({}));
    let (domain, personal) = acct.identity(&def.free_mail_domains);
    if let (Some(d), Some(t)) = (domain, traits.as_object_mut()) {
        t.insert("domain".into(), json!(d));
    }
    if let Some(t) = traits.as_object_mut() {
        t.insert("personal_account".into(), json!(personal));
    }
    let qualified = !eval.fired.is_empty();
    let mut view = json!({
        "account_id": id,
        "as_of": format_time_ms(now),
        "first_seen": format_time_ms(acct.first_seen_ms),
        "last_seen": format_time_ms(acct.last_seen_ms),
        "definition_version": def.version,
        "qualified": qualified,
        "score": eval.score,
        "tier": if qualified { Some(def.tiers[eval.tier].0.clone()) } else { None },
        "metrics": metrics,
        "warming_up": warming_up,
        "signals": signals,
        "rules": rules,
        "account": traits,
        "announced": {
            "active": acct.announced.active,
            "delivered": acct.announced_out,
            "rules": acct.announced.rules.iter().map(|(r, t)| json!({"rule": r, "at": format_time_ms(*t)})).collect::<Vec<_>>(),
            "tier": acct.announced.tier.as_ref().map(|(t, at)| json!({"tier": t, "at": format_time_ms(*at)})),
        },
        "budget": budget_view(&acct, def),
        "sweep": (acct.sweep_due_ms > 0).then(|| json!({
            "next_check": format_time_ms(acct.sweep_due_ms),
            "why": "the first moment a running definition stops qualifying the account if it sends nothing more; it is disqualified then if it has not sent anything that keeps it qualified",
        })),
        "shadows": shadows,
    });
    feedback_view(defs, &acct, id, window_ms, &mut view);
    Ok(Some(view))
}

/// Whether the account's announcement waits for budget, and why.
fn budget_view(acct: &crate::state::AccountState, def: &crate::config::CompiledDefinition) -> Value {
    let Some(h) = &acct.held else { return json!({"waiting": false}) };
    let b = &def.budget;
    let mut caps = Vec::new();
    if let Some(n) = b.per_hour {
        caps.push(format!("{n} per hour"));
    }
    if let Some(n) = b.per_day {
        caps.push(format!("{n} per day"));
    }
    for (rule, ph, pd, _) in &b.rules {
        if h.rules.contains(rule) {
            if let Some(n) = ph {
                caps.push(format!("{n} per hour for {rule}"));
            }
            if let Some(n) = pd {
                caps.push(format!("{n} per day for {rule}"));
            }
        }
    }
    let expires = h.queued_at_ms.saturating_add(b.max_wait_seconds * 1000);
    json!({
        "waiting": true,
        "id": h.id,
        "type": h.event_type,
        "rules": h.rules,
        "tier": h.tier,
        "score": h.score,
        "qualified_at": format_time_ms(h.qualified_at_ms),
        "queued_at": format_time_ms(h.queued_at_ms),
        "expires_at": format_time_ms(expires),
        "why": format!(
            "over the budget ({}): waits its turn (higher tiers, then higher scores, then the longest waiting go first) \
             and is dropped if the account stops qualifying or at {}",
            if caps.is_empty() { "none set now: out at the next look".to_string() } else { caps.join(", ") },
            format_time_ms(expires)
        ),
    })
}

/// The account's announcements (of the running definitions) and what sales
/// reported back, each outcome with the announcement it answers per
/// definition.
fn feedback_view(defs: &Definitions, acct: &crate::state::AccountState, id: &str, window_ms: i64, view: &mut Value) {
    let announcements: Vec<Value> = acct
        .sent
        .iter()
        .map(
            |s| json!({"definition_version": s.version, "id": s.id, "rules": s.rules, "time": format_time_ms(s.at_ms)}),
        )
        .collect();
    let outcomes: Vec<Value> = acct
        .outcomes
        .iter()
        .map(|o| {
            let rec = o.outcome(id);
            let mut answers = serde_json::Map::new();
            for d in defs.all() {
                let sent = crate::engine::announcements(&acct.sent, &d.version);
                if let Some((i, by)) = crate::outcome::attribute(&sent, &rec, window_ms) {
                    let by = match by {
                        crate::outcome::AttributedBy::EventId => "event_id",
                        crate::outcome::AttributedBy::Time => "time",
                    };
                    answers.insert(d.version.clone(), json!({"id": sent[i].event_id, "by": by}));
                }
            }
            json!({
                "outcome": o.outcome.as_str(),
                "at": format_time_ms(o.at_ms),
                "pqa_event_id": o.pqa_event_id,
                "rule": o.rule,
                "amount": o.amount,
                "answers": answers,
            })
        })
        .collect();
    view["announcements"] = json!(announcements);
    view["outcomes"] = json!(outcomes);
}

/// `GET /definitions/{version}/rules`: what the announcements of a running
/// definition heard back from sales, per rule and over all rules: counts,
/// precision (opportunities or wins over the announcements with an
/// outcome) and lead time (days from the first announcement to the
/// opportunity or win). Over this instance's partitions.
async fn definition_rules(State(s): State<AppState>, Path(version): Path<String>) -> Response {
    let reports = s.published.rules.lock().expect("lock").clone();
    let window = s.published.attribution_window_ms.load(std::sync::atomic::Ordering::Relaxed);
    let Some(r) = reports.into_iter().find(|r| r.version == version) else {
        let running: Vec<String> =
            s.published.current().map(|d| d.all().map(|d| d.version.clone()).collect()).unwrap_or_default();
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no running definition has version `{version}`"), "running": running})),
        )
            .into_response();
    };
    let row = |name: &str, t: &crate::outcome::RuleTally| {
        json!({
            "rule": name,
            "announced": t.announced,
            "answered": t.answered,
            "accepted": t.accepted,
            "rejected": t.rejected,
            "opportunity": t.opportunity,
            "won": t.won,
            "lost": t.lost,
            "positive": t.positive,
            "precision": t.precision(),
            "lead_time_days": {"median": t.median_lead_days(), "p90": t.p90_lead_days(), "n": t.lead_times_days.len()},
        })
    };
    let rules: Vec<Value> = r.rules.iter().map(|(n, t)| row(n, t)).collect();
    Json(json!({
        "version": r.version,
        "role": r.role,
        "attribution_window_days": window as f64 / 86_400_000.0,
        "rules": rules,
        "all": row("*", &r.all),
    }))
    .into_response()
}

/// `GET /definitions`: each running definition (live first), its
/// announcements since it was loaded, a shadow's agreement with the live
/// one, and where each metric stands on the state.
async fn definitions(State(s): State<AppState>) -> Response {
    let Some(defs) = s.published.current() else {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "definitions not loaded yet"}))).into_response();
    };
    let watermark = s.health.readers().iter().filter_map(|r| r.watermark_ms().ok()).max();
    Json(definitions_view(&defs, &s.published, watermark)).into_response()
}

/// The body of `GET /definitions`; warm-up is judged at `watermark_ms`
/// (the state's event time) when given.
pub fn definitions_view(defs: &Definitions, published: &Published, watermark_ms: Option<i64>) -> Value {
    let stats = published.stats.lock().expect("lock").clone();
    let mut manifest = published.manifest.read().expect("lock").clone();
    if let (Some(m), Some(w)) = (manifest.as_mut(), watermark_ms) {
        m.updated_at_ms = m.updated_at_ms.max(w);
    }
    let live_since = published.live_since.lock().expect("lock").clone();
    let list: Vec<Value> = defs
        .all()
        .enumerate()
        .map(|(i, d)| {
            let st = stats.get(&d.version).cloned().unwrap_or_default();
            let metrics: Vec<Value> = manifest
                .as_ref()
                .map(|m| {
                    m.status(d, None)
                        .into_iter()
                        .map(|x| json!({"name": x.name, "warming_up": x.warming, "warm_at": (x.warm_at_ms > 0).then(|| format_time_ms(x.warm_at_ms)), "counting_since": (x.since_ms > 0).then(|| format_time_ms(x.since_ms))}))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "version": d.version,
                "fingerprint": d.fingerprint,
                "role": Definitions::role(i),
                "source": defs.sources.get(i),
                "rules": d.rules.iter().map(|r| json!({"name": r.name, "description": r.description, "points": r.points})).collect::<Vec<_>>(),
                "announcements": st.announcements,
                "qualified_by_rule_and_tier": st.by_rule,
                "agreement_with_live": st.agreement,
                "metrics": metrics,
            })
        })
        .collect();
    json!({
        "live": defs.live.version,
        "live_from_offsets": live_since.iter().map(|(t, p, o)| json!({"topic": t, "partition": p, "offset": o})).collect::<Vec<_>>(),
        "definitions": list,
    })
}

/// `POST /admin/reload`: reloads the config file (and shadows) now. 401
/// without the right bearer token, 422 with the problems when the new
/// files are invalid or the state cannot serve them.
async fn admin_reload(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (Some(token), Some(reloader)) = (s.admin_token.clone(), s.reloader.clone()) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "admin endpoints are off (set http.admin_token)"})))
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "a valid `Authorization: Bearer <admin token>` header is required"})),
        )
            .into_response();
    }
    match tokio::task::spawn_blocking(move || reloader.reload("HTTP")).await {
        Ok(Ok(outcome)) => Json(json!(outcome)).into_response(),
        Ok(Err(ReloadError::Invalid(problems))) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "the new configuration is invalid; the running definition stays",
                "problems": problems.iter().map(|p| json!({"at": p.path, "problem": p.message})).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
        Ok(Err(ReloadError::Refused(why))) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "the state cannot serve the new definition; the running definition stays", "problems": [{"at": "definition", "problem": why}]})),
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": e.to_string()}))).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e.to_string()}))).into_response(),
    }
}

/// Compares two secrets without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
