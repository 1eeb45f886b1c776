//! A simulated product: seeded, deterministic, lazily generated product-usage
//! histories in the Segment Spec format.
//!
//! The simulator models a B2B collaboration tool (boards, cards, comments,
//! integrations) with a self-serve tier. Each account (company / workspace)
//! follows one [`Archetype`] that decides how many users it has, how busy they
//! are and whether it ever shows a buying signal:
//!
//! | archetype      | share | users | behaviour |
//! | -------------- | ----- | ----- | --------- |
//! | `Small`        | ~55%  | 1-4   | low daily activity; never 7 users, never 100 events in a week, no signals |
//! | `Growing`      | ~15%  | 8-15  | starts with 1-3 users and adds one every 1-5 days; busy users |
//! | `Spiking`      | ~10%  | 3-6   | steady 10-30 events/week, then, 38-52 days after sign-up, one week with 5-10x (at least 160) events |
//! | `LegalVisitor` | ~8%   | 3-5   | steady use; 15-45 days after sign-up a user views terms / privacy / security / DPA / SLA pages |
//! | `AdminSwitch`  | ~7%   | 3-5   | steady use; 14-45 days after sign-up `Admin Role Granted` / `Workspace Owner Changed` and an `identify` with role `admin` / `owner` |
//! | `HandRaiser`   | ~5%   | 1-3   | low activity; one user views `/pricing` then sends `Contact Sales Submitted` or `Demo Requested` |
//!
//! For signal discovery (`pqa-engine analyze`), behaviours are planted, each
//! from its own random stream so that the rest of an account's events stay
//! as they were: hand-raisers read `/docs/sso` and hit `Plan Limit Reached`
//! in the days before they raise their hand, and have a `Sales Call
//! Scheduled` in the days after; accounts that become a sales opportunity
//! export the audit log (`Audit Log Exported`) before. A few small accounts
//! do some of it too (noise). [`Simulator::outcomes`] says what sales made
//! of the accounts (accepted, rejected, opportunity, won, lost), as a CRM
//! would export it.
//!
//! Three accounts among the first 100 ids (chosen from the seed) are always
//! hand-raisers that sign up on day 0 and raise their hand on day 0 or 1, so a
//! demo shows a PQA within seconds.
//!
//! Accounts sign up on a random day in the first third of the period. A user's
//! first appearance produces an `identify` (email, role, seniority,
//! department) and a `group` call (company name, employees, industry, plan);
//! later users are preceded by a `User Invited` track from the first user.
//! Initial roles are always `member` (never `admin` / `owner`), so the only
//! role changes are the deliberate admin switches of `AdminSwitch` accounts.
//! Normal page paths never contain `terms`, `privacy`, `security`, `dpa` or
//! `sla`.
//!
//! Activity happens in working hours of the account's time zone (with some
//! evening sessions and a quiet weekend). Usage events (`track`, `page`) carry
//! `context.groupId`; every event carries `userId`, a unique deterministic
//! `messageId` and an RFC 3339 UTC `timestamp` (second precision, `Z`).
//!
//! Generation is lazy, one simulated day at a time: for each day the
//! simulator derives every account's plan from `(seed, account)` and the day's
//! behaviour from `(seed, account, day)`, collects compact 16-byte records,
//! sorts them by time (stable) and renders the JSON of each record only when
//! it is emitted. Memory is bounded by one day of records, whatever the
//! number of days; the same [`SimConfig`] always yields the same sequence.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;

const DAY: i64 = 86_400;
const MAX_USERS: usize = 16;
const NONE: u32 = u32::MAX;

/// Settings of a simulation run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    pub seed: u64,
    /// number of accounts
    pub accounts: usize,
    /// simulated start time, unix seconds (event time of the first events)
    pub start_unix: i64,
    /// how many simulated days to generate
    pub days: u32,
}

impl Default for SimConfig {
    /// Seed 42, 300 accounts, starting 2026-09-01T00:00:00Z, 90 days.
    fn default() -> Self {
        SimConfig {
            seed: 42,
            accounts: 300,
            start_unix: 1_788_220_800, // 2026-09-01T00:00:00Z
            days: 90,
        }
    }
}

/// One generated event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimEvent {
    /// event time, unix seconds
    pub time: i64,
    /// the account id the event belongs to (also the suggested Kafka key)
    pub account: String,
    /// the Segment JSON, one line, no trailing newline
    pub json: String,
}

/// The behaviour an account follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Archetype {
    /// 1-4 users, low activity, never qualifies.
    Small,
    /// Adds users over weeks until 8-15 are active (team adoption).
    Growing,
    /// Steady modest use, then one week with 5-10x the events (usage spike).
    Spiking,
    /// 3-5 users; one views legal / security pages (enterprise evaluation).
    LegalVisitor,
    /// 3-5 users; an admin or owner role is granted (enterprise evaluation).
    AdminSwitch,
    /// 1-3 users; one asks for sales contact or a demo (hand raiser).
    HandRaiser,
}

impl Archetype {
    pub fn as_str(&self) -> &'static str {
        match self {
            Archetype::Small => "small",
            Archetype::Growing => "growing",
            Archetype::Spiking => "spiking",
            Archetype::LegalVisitor => "legal_visitor",
            Archetype::AdminSwitch => "admin_switch",
            Archetype::HandRaiser => "hand_raiser",
        }
    }
}

// ---------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------

const K_TRACK: u8 = 0;
const K_PAGE: u8 = 1;
const K_IDENTIFY: u8 = 2;
const K_GROUP: u8 = 3;

/// Track events; the first `NORMAL_TRACKS` are sampled with `TRACK_WEIGHTS`.
const TRACKS: [&str; 21] = [
    "Board Viewed",
    "Card Moved",
    "Card Created",
    "Comment Added",
    "Board Created",
    "File Uploaded",
    "Search Performed",
    "Label Added",
    "Checklist Completed",
    "Automation Created",
    "Integration Connected",
    "Report Exported",
    "Notification Clicked",
    // specials
    "User Invited",
    "Admin Role Granted",
    "Workspace Owner Changed",
    "Contact Sales Submitted",
    "Demo Requested",
    // planted for signal discovery (see `Extras`)
    "Plan Limit Reached",
    "Sales Call Scheduled",
    "Audit Log Exported",
];
const NORMAL_TRACKS: usize = 13;
const TRACK_WEIGHTS: [u16; NORMAL_TRACKS] = [30, 20, 15, 12, 4, 5, 6, 4, 3, 1, 1, 2, 4];
const T_BOARD_CREATED: u16 = 4;
const T_USER_INVITED: u16 = 13;
const T_ADMIN_GRANTED: u16 = 14;
const T_OWNER_CHANGED: u16 = 15;
const T_CONTACT_SALES: u16 = 16;
const T_DEMO_REQUESTED: u16 = 17;
const T_PLAN_LIMIT: u16 = 18;
const T_SALES_CALL: u16 = 19;
const T_AUDIT_EXPORT: u16 = 20;

/// Pages: (name, path). Paths with `{b}` take a board id. The first
/// `NORMAL_PAGES` are ordinary product pages, the rest legal / trust pages.
const PAGES: [(&str, &str); 18] = [
    ("Home", "/home"),
    ("Boards", "/boards"),
    ("Board", "/boards/b-"),
    ("Templates", "/templates"),
    ("Settings", "/settings"),
    ("Members", "/settings/members"),
    ("Billing", "/settings/billing"),
    ("Pricing", "/pricing"),
    ("Integrations", "/integrations"),
    ("Getting Started", "/docs/getting-started"),
    ("Automations Guide", "/docs/automations"),
    ("API Reference", "/docs/api"),
    // legal / trust pages
    ("Terms of Service", "/legal/terms"),
    ("Privacy Policy", "/privacy"),
    ("Security", "/security"),
    ("Data Processing Addendum", "/dpa"),
    ("Service Level Agreement", "/legal/sla"),
    // planted for signal discovery (see `Extras`)
    ("SSO Setup Guide", "/docs/sso"),
];
const NORMAL_PAGES: usize = 12;
const PAGE_WEIGHTS: [u16; NORMAL_PAGES] = [14, 16, 30, 4, 5, 3, 2, 4, 3, 3, 2, 2];
const P_BOARD: u16 = 2;
const P_PRICING: u16 = 7;
const P_LEGAL_FIRST: u16 = 12;
const LEGAL_WEIGHTS: [u16; 5] = [30, 25, 25, 15, 5];
const P_DOCS_SSO: u16 = 17;

const ROLES: [&str; 3] = ["member", "admin", "owner"];
const ROLE_MEMBER: u16 = 0;
const ROLE_ADMIN: u16 = 1;
const ROLE_OWNER: u16 = 2;

const SENIORITIES: [&str; 6] = ["entry", "senior", "manager", "director", "vp", "c_level"];
const SENIORITY_WEIGHTS: [u16; 6] = [20, 35, 25, 12, 5, 3];
const DEPARTMENTS: [&str; 9] =
    ["engineering", "product", "design", "marketing", "sales", "operations", "finance", "it", "hr"];
const INDUSTRIES: [&str; 10] = [
    "software",
    "fintech",
    "healthcare",
    "retail",
    "media",
    "education",
    "manufacturing",
    "logistics",
    "consulting",
    "nonprofit",
];
const PLANS: [&str; 3] = ["free", "trial", "team"];
/// (display prefix, domain prefix)
const COMPANIES: [(&str, &str); 20] = [
    ("Acme", "acme"),
    ("Globex", "globex"),
    ("Initech", "initech"),
    ("Umbrella", "umbrella"),
    ("Hooli", "hooli"),
    ("Stark", "stark"),
    ("Wayne", "wayne"),
    ("Wonka", "wonka"),
    ("Soylent", "soylent"),
    ("Tyrell", "tyrell"),
    ("Cyberdyne", "cyberdyne"),
    ("Vandelay", "vandelay"),
    ("Pied Piper", "piedpiper"),
    ("Aperture", "aperture"),
    ("Monarch", "monarch"),
    ("Oscorp", "oscorp"),
    ("Dunder", "dunder"),
    ("Massive", "massive"),
    ("Sterling", "sterling"),
    ("Bluth", "bluth"),
];
const INTEGRATIONS: [&str; 5] = ["slack", "github", "jira", "google-drive", "figma"];
const LISTS: [&str; 4] = ["Backlog", "To Do", "Doing", "Done"];
const FORMATS: [&str; 3] = ["csv", "pdf", "xlsx"];
/// UTC offsets (hours) accounts work in.
const TZ_HOURS: [i32; 12] = [-8, -7, -5, -5, -4, -3, 0, 1, 1, 2, 5, 9];

// ---------------------------------------------------------------------------
// Hashing helpers
// ---------------------------------------------------------------------------

#[inline]
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    splitmix64(seed ^ splitmix64(a.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ splitmix64(b)))
}

const SALT_PLAN: u64 = 0x504C_414E_0000_0001;
const SALT_COMPANY: u64 = 0x434F_4D50_0000_0002;
const SALT_USER: u64 = 0x5553_4552_0000_0003;
const SALT_EARLY: u64 = 0x4541_524C_0000_0004;
const SALT_EXTRAS: u64 = 0x4558_5452_0000_0005;
const SALT_PLANT: u64 = 0x504C_4E54_0000_0006;

fn pick_weighted<R: Rng>(rng: &mut R, weights: &[u16]) -> usize {
    let total: u32 = weights.iter().map(|&w| w as u32).sum();
    let mut x = rng.random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if x < w as u32 {
            return i;
        }
        x -= w as u32;
    }
    weights.len() - 1
}

fn poisson<R: Rng>(rng: &mut R, lambda: f32) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda < 20.0 {
        let l = (-lambda).exp();
        let mut k = 0u32;
        let mut p = 1.0f32;
        loop {
            p *= rng.random::<f32>();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
    // normal approximation (Irwin-Hall with 12 uniforms)
    let mut z = -6.0f32;
    for _ in 0..12 {
        z += rng.random::<f32>();
    }
    (lambda + lambda.sqrt() * z).round().max(0.0) as u32
}

// ---------------------------------------------------------------------------
// Per-account plan
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Plan {
    arch: Archetype,
    /// sign-up day (index into the simulated period)
    start: u32,
    n_users: u8,
    /// age (days since sign-up) at which each user first appears, ascending
    join: [u16; MAX_USERS],
    /// per-user probability of a session on a weekday (per-user archetypes)
    p_active: f32,
    min_session: u8,
    max_session: u8,
    /// expected events per week (steady archetypes)
    weekly: f32,
    /// expected events in the spike week (Spiking)
    spike_weekly: f32,
    /// age of the special event (legal visit, admin switch, hand raise, spike start)
    special: u32,
    variant: u8,
    /// the user performing the special action
    actor: u8,
    /// the user receiving a role (AdminSwitch)
    target: u8,
    /// seconds east of UTC
    tz: i32,
    employees: u32,
    plan_tier: u8,
}

fn log_uniform<R: Rng>(rng: &mut R, lo: f32, hi: f32) -> u32 {
    let u: f32 = rng.random();
    (lo * (hi / lo).powf(u)).round() as u32
}

fn derive_plan(seed: u64, idx: u32, days: u32, early: bool) -> Plan {
    let mut r = SmallRng::seed_from_u64(mix(seed, idx as u64, SALT_PLAN));
    let x: f32 = r.random();
    let arch = if early {
        Archetype::HandRaiser
    } else if x < 0.55 {
        Archetype::Small
    } else if x < 0.70 {
        Archetype::Growing
    } else if x < 0.80 {
        Archetype::Spiking
    } else if x < 0.88 {
        Archetype::LegalVisitor
    } else if x < 0.95 {
        Archetype::AdminSwitch
    } else {
        Archetype::HandRaiser
    };
    let start_span = (days / 3).max(1);
    let start = if early { 0 } else { r.random_range(0..start_span) };
    let tz = TZ_HOURS[r.random_range(0..TZ_HOURS.len())] * 3600;
    let mut p = Plan {
        arch,
        start,
        n_users: 1,
        join: [u16::MAX; MAX_USERS],
        p_active: 0.0,
        min_session: 1,
        max_session: 3,
        weekly: 0.0,
        spike_weekly: 0.0,
        special: NONE,
        variant: 0,
        actor: 0,
        target: 0,
        tz,
        employees: 10,
        plan_tier: 0,
    };
    p.join[0] = 0;
    match arch {
        Archetype::Small => {
            p.n_users = [1u8, 2, 3, 4][pick_weighted(&mut r, &[35, 30, 20, 15])];
            for u in 1..p.n_users as usize {
                p.join[u] = r.random_range(0..=45);
            }
            p.p_active = r.random_range(0.15..0.40);
            p.min_session = 1;
            p.max_session = 3;
            p.employees = log_uniform(&mut r, 2.0, 200.0);
        }
        Archetype::Growing => {
            p.n_users = r.random_range(8..=15);
            let initial = r.random_range(1..=3usize);
            let mut age = 0u16;
            for u in 1..p.n_users as usize {
                if u >= initial {
                    age += r.random_range(1..=5);
                }
                p.join[u] = age;
            }
            p.p_active = r.random_range(0.55..0.85);
            p.min_session = 2;
            p.max_session = 8;
            p.employees = log_uniform(&mut r, 50.0, 5000.0);
        }
        Archetype::Spiking => {
            p.n_users = r.random_range(3..=6);
            for u in 1..p.n_users as usize {
                p.join[u] = r.random_range(0..=14);
            }
            p.weekly = r.random_range(10.0..30.0);
            let mult: f32 = r.random_range(5.0..10.0);
            p.spike_weekly = (p.weekly * mult).max(160.0);
            p.special = r.random_range(38..=52);
            p.employees = log_uniform(&mut r, 20.0, 2000.0);
        }
        Archetype::LegalVisitor | Archetype::AdminSwitch => {
            p.n_users = r.random_range(3..=5);
            for u in 1..p.n_users as usize {
                p.join[u] = r.random_range(0..=10);
            }
            p.weekly = r.random_range(15.0..40.0);
            if arch == Archetype::LegalVisitor {
                p.special = r.random_range(15..=45);
                p.actor = r.random_range(0..p.n_users);
                p.variant = r.random_range(1..=3); // number of legal pages viewed
                p.employees = log_uniform(&mut r, 200.0, 20000.0);
            } else {
                p.special = r.random_range(14..=45);
                p.actor = 0;
                p.target = r.random_range(1..p.n_users);
                // 0: track + identify(admin), 1: identify(admin) only,
                // 2: track "Workspace Owner Changed" + identify(owner)
                p.variant = [0u8, 1, 2][pick_weighted(&mut r, &[40, 40, 20])];
                p.employees = log_uniform(&mut r, 100.0, 10000.0);
            }
        }
        Archetype::HandRaiser => {
            p.n_users = r.random_range(1..=3);
            for u in 1..p.n_users as usize {
                p.join[u] = r.random_range(0..=20);
            }
            p.p_active = r.random_range(0.2..0.5);
            p.min_session = 1;
            p.max_session = 3;
            p.special = if early { r.random_range(0..=1) } else { r.random_range(0..=25) };
            p.actor = 0;
            p.variant = r.random_bool(0.7) as u8; // 1: Contact Sales, 0: Demo Requested
            p.employees = log_uniform(&mut r, 10.0, 5000.0);
        }
    }
    let n = p.n_users as usize;
    p.join[1..n].sort_unstable();
    p.plan_tier = pick_weighted(&mut r, &[70, 20, 10]) as u8;
    p
}

// ---------------------------------------------------------------------------
// Planted behaviours and what sales made of the accounts
// ---------------------------------------------------------------------------

/// Behaviours planted for signal discovery (`pqa-engine analyze`), and the
/// deal each account turns into, derived from `(seed, account)` with their
/// own random streams: every other event of an account stays what it was
/// before they were added. Ages are days since sign-up; [`NONE`] is absent.
///
/// - **Hand-raisers** (those raising their hand on day 2 of their life or
///   later): in the days before, the first user reads `/docs/sso` (80%) and
///   hits `Plan Limit Reached` 1-3 times (70%); 1-3 days *after*, a `Sales
///   Call Scheduled` (90%), a behaviour that follows the label.
/// - **Deals:** an account a default rule announces (hand raise, legal
///   visit or admin switch, the 7th user, a spike) is answered 1-4 days
///   later: accepted or rejected; an accepted one may become an
///   opportunity 3-12 days later, then won or lost. In the 1-7 days before
///   its opportunity, someone exports the audit log (`Audit Log Exported`,
///   75%). About 3% of small accounts are won through another channel (no
///   rule announces them), most (75%) having exported the audit log in the
///   10 days before.
/// - **Noise:** a few small accounts read `/docs/sso` (3%), hit the plan
///   limit (4%) or export the audit log (2%) without any of that following.
#[derive(Clone, Copy, Debug)]
struct Extras {
    sso: u32,
    limit: [u32; 3],
    call: u32,
    audit: [u32; 2],
    /// (age, second of the day, kind) of each outcome, in time order.
    outcomes: [(u32, u32, u8); 3],
}

/// Outcome kinds in `Extras::outcomes`.
const O_NONE: u8 = 0;
const O_ACCEPTED: u8 = 1;
const O_REJECTED: u8 = 2;
const O_OPPORTUNITY: u8 = 3;
const O_WON: u8 = 4;
const O_LOST: u8 = 5;

fn derive_extras(seed: u64, idx: u32, p: &Plan) -> Extras {
    let mut r = SmallRng::seed_from_u64(mix(seed, idx as u64, SALT_EXTRAS));
    let mut e = Extras { sso: NONE, limit: [NONE; 3], call: NONE, audit: [NONE; 2], outcomes: [(NONE, 0, O_NONE); 3] };
    // Every draw is made whatever the branch, so that one choice does not
    // shift the next.
    let u: [f32; 6] = std::array::from_fn(|_| r.random());
    let d_sso = r.random_range(1..=6u32);
    let n_limit = r.random_range(1..=3usize);
    let d_limit: [u32; 3] = std::array::from_fn(|_| r.random_range(1..=10u32));
    let d_call = r.random_range(1..=3u32);
    let noise: [u32; 3] = std::array::from_fn(|_| r.random_range(1..=60u32));
    let special = p.special;
    match p.arch {
        Archetype::HandRaiser if special != NONE && special >= 2 => {
            if u[0] < 0.8 {
                e.sso = special - d_sso.min(special - 1);
            }
            if u[1] < 0.7 {
                for (k, d) in d_limit.iter().take(n_limit).enumerate() {
                    e.limit[k] = special - d.min(&(special - 1));
                }
            }
        }
        Archetype::Small => {
            if u[0] < 0.03 {
                e.sso = noise[0];
            }
            if u[1] < 0.04 {
                e.limit[0] = noise[1];
            }
            if u[2] < 0.02 {
                e.audit[0] = noise[2];
            }
        }
        _ => {}
    }
    if p.arch == Archetype::HandRaiser && special != NONE && u[3] < 0.9 {
        e.call = special + d_call;
    }
    // The deal.
    let announced = match p.arch {
        Archetype::HandRaiser | Archetype::LegalVisitor | Archetype::AdminSwitch => Some(special),
        Archetype::Growing => Some(p.join[6.min(p.n_users as usize - 1)] as u32),
        Archetype::Spiking => Some(special + 3),
        Archetype::Small => None,
    };
    let (p_accept, p_opportunity) = match p.arch {
        Archetype::HandRaiser => (0.8, 0.55),
        Archetype::LegalVisitor | Archetype::AdminSwitch => (0.6, 0.5),
        Archetype::Growing => (0.5, 0.45),
        Archetype::Spiking => (0.35, 0.3),
        Archetype::Small => (0.0, 0.0),
    };
    let v: [f32; 4] = std::array::from_fn(|_| r.random());
    let d_resp = r.random_range(1..=4u32);
    let d_opp = r.random_range(3..=12u32);
    let d_won = r.random_range(14..=45u32);
    let d_lost = r.random_range(10..=40u32);
    let d_audit: [u32; 2] = std::array::from_fn(|_| r.random_range(1..=7u32));
    let n_audit = r.random_range(1..=2usize);
    let secs: [u32; 3] = std::array::from_fn(|_| r.random_range(9 * 3600..18 * 3600));
    let small_won = r.random_range(20..=70u32);
    let d_small_audit: [u32; 2] = std::array::from_fn(|_| r.random_range(1..=10u32));
    // Not every buyer exports the audit log first.
    let audits = r.random::<f32>() < 0.75;
    match announced {
        Some(a) if a != NONE => {
            let resp = a + d_resp;
            if v[0] < p_accept {
                e.outcomes[0] = (resp, secs[0], O_ACCEPTED);
                if v[1] < p_opportunity {
                    let opp = resp + d_opp;
                    e.outcomes[1] = (opp, secs[1], O_OPPORTUNITY);
                    e.outcomes[2] =
                        if v[2] < 0.5 { (opp + d_won, secs[2], O_WON) } else { (opp + d_lost, secs[2], O_LOST) };
                    for (k, d) in d_audit.iter().take(if audits { n_audit } else { 0 }).enumerate() {
                        e.audit[k] = opp - d.min(&(opp - 1));
                    }
                }
            } else {
                e.outcomes[0] = (resp, secs[0], O_REJECTED);
            }
        }
        _ => {
            if p.arch == Archetype::Small && v[3] < 0.03 {
                e.outcomes[0] = (small_won, secs[0], O_WON);
                for (k, d) in d_small_audit.iter().take(if audits { n_audit } else { 0 }).enumerate() {
                    e.audit[k] = small_won - d;
                }
            }
        }
    }
    e
}

// ---------------------------------------------------------------------------
// Compact records
// ---------------------------------------------------------------------------

/// One event before rendering: 16 bytes.
#[derive(Clone, Copy, Debug)]
struct Rec {
    /// seconds since `start_unix`
    t: u32,
    acct: u32,
    user: u8,
    kind: u8,
    code: u16,
    param: u32,
}

/// The seeded, deterministic event generator; an iterator of [`SimEvent`]s.
pub struct Simulator {
    cfg: SimConfig,
    /// accounts that are forced to be early hand-raisers
    early: Vec<u32>,
    day: u32,
    buf: Vec<Rec>,
    pos: usize,
    counter: u64,
    msg_tag: u32,
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Self {
        let m = cfg.accounts.min(100) as u64;
        let mut early = Vec::new();
        let mut k = 0u64;
        while (early.len() as u64) < m.min(3) {
            let idx = (mix(cfg.seed, k, SALT_EARLY) % m) as u32;
            if !early.contains(&idx) {
                early.push(idx);
            }
            k += 1;
        }
        let msg_tag = (splitmix64(cfg.seed) >> 32) as u32;
        Simulator { cfg, early, day: 0, buf: Vec::new(), pos: 0, counter: 0, msg_tag }
    }

    /// The archetype chosen for each account, for tests and for the demo's legend.
    pub fn archetypes(&self) -> Vec<(String, Archetype)> {
        (0..self.cfg.accounts as u32).map(|i| (account_id(i), self.plan(i).arch)).collect()
    }

    /// What sales made of the accounts, as a CRM would export it: each
    /// announced account accepted or rejected a few days after the rule
    /// that announces it fires, some opportunities, won or lost; a few small
    /// accounts won through another channel (see `Extras`). Only what
    /// happened before the end of the simulated period, in time order. No
    /// `pqa_event_id` (the CRM did not keep it: outcomes are matched by
    /// time); `rule` names the rule the account's behaviour fires.
    pub fn outcomes(&self) -> Vec<crate::outcome::Outcome> {
        use crate::outcome::{Outcome, OutcomeKind};
        let end = self.cfg.start_unix + self.cfg.days as i64 * DAY;
        let mut out = Vec::new();
        for idx in 0..self.cfg.accounts as u32 {
            let plan = self.plan(idx);
            let x = derive_extras(self.cfg.seed, idx, &plan);
            let rule = match plan.arch {
                Archetype::HandRaiser => Some("hand_raiser"),
                Archetype::LegalVisitor | Archetype::AdminSwitch => Some("enterprise_evaluation"),
                Archetype::Growing => Some("team_adoption"),
                Archetype::Spiking => Some("usage_spike"),
                Archetype::Small => None,
            };
            let seats = (plan.employees / 10).clamp(5, 500);
            for (age, sec, kind) in x.outcomes {
                let outcome = match kind {
                    O_ACCEPTED => OutcomeKind::Accepted,
                    O_REJECTED => OutcomeKind::Rejected,
                    O_OPPORTUNITY => OutcomeKind::Opportunity,
                    O_WON => OutcomeKind::Won,
                    O_LOST => OutcomeKind::Lost,
                    _ => continue,
                };
                let at = self.cfg.start_unix + (plan.start + age) as i64 * DAY + sec as i64;
                if at >= end {
                    continue;
                }
                out.push(Outcome {
                    account_id: account_id(idx),
                    outcome,
                    at_ms: at * 1000,
                    pqa_event_id: None,
                    rule: rule.map(str::to_string),
                    amount: matches!(outcome, OutcomeKind::Opportunity | OutcomeKind::Won)
                        .then_some(f64::from(seats) * 120.0),
                });
            }
        }
        out.sort_by(|a, b| (a.at_ms, &a.account_id).cmp(&(b.at_ms, &b.account_id)));
        out
    }

    fn plan(&self, idx: u32) -> Plan {
        derive_plan(self.cfg.seed, idx, self.cfg.days, self.early.contains(&idx))
    }

    fn fill_day(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.pos = 0;
        let day = self.day;
        self.day += 1;
        let slot_start = self.cfg.start_unix + day as i64 * DAY;
        let slot_sod = slot_start.rem_euclid(DAY) as i32;
        // 1970-01-01 was a Thursday; 0 = Monday
        let weekday = ((slot_start + DAY / 2).div_euclid(DAY) + 3).rem_euclid(7);
        let weekend = weekday >= 5;
        for idx in 0..self.cfg.accounts as u32 {
            let plan = self.plan(idx);
            self.gen_account_day(idx, &plan, day, slot_sod, weekend, &mut buf);
        }
        // stable: ties keep generation order (account, then session order)
        buf.sort_by_key(|r| r.t);
        self.buf = buf;
    }

    /// Start of a session, as an offset within the day slot.
    fn session_start(rng: &mut SmallRng, plan: &Plan, slot_sod: i32) -> u32 {
        let local = if rng.random_bool(0.08) {
            // evening session 19:00-23:00
            19 * 3600 + rng.random_range(0..4 * 3600)
        } else {
            // working hours 08:00-18:00, peaking around midday
            let a = rng.random_range(0..5 * 3600);
            let b = rng.random_range(0..5 * 3600);
            8 * 3600 + a + b
        };
        (local - plan.tz - slot_sod).rem_euclid(DAY as i32) as u32
    }

    fn gen_account_day(&self, idx: u32, plan: &Plan, day: u32, slot_sod: i32, weekend: bool, out: &mut Vec<Rec>) {
        if day < plan.start {
            return;
        }
        let age = day - plan.start;
        let n = plan.n_users as usize;
        let joined = |u: usize| (plan.join[u] as u32) <= age;
        if !joined(0) {
            return;
        }
        let mut rng = SmallRng::seed_from_u64(mix(self.cfg.seed, idx as u64, day as u64));
        let mut counts = [0u16; MAX_USERS];
        match plan.arch {
            Archetype::Small | Archetype::Growing | Archetype::HandRaiser => {
                for (u, count) in counts.iter_mut().enumerate().take(n) {
                    if !joined(u) {
                        continue;
                    }
                    let mut p = plan.p_active;
                    if u == 0 {
                        p *= 1.2;
                    }
                    if weekend {
                        p *= 0.15;
                    }
                    if rng.random::<f32>() < p {
                        *count = rng.random_range(plan.min_session..=plan.max_session) as u16;
                    }
                }
            }
            Archetype::Spiking | Archetype::LegalVisitor | Archetype::AdminSwitch => {
                let w = if weekend { 0.2 } else { 1.0 };
                let in_spike =
                    plan.arch == Archetype::Spiking && age >= plan.special && age < plan.special.saturating_add(7);
                let weekly = if in_spike { plan.spike_weekly } else { plan.weekly };
                let k = poisson(&mut rng, weekly * w / 5.4);
                let mut active = [0u8; MAX_USERS];
                let mut na = 0;
                for u in 0..n {
                    if joined(u) {
                        active[na] = u as u8;
                        na += 1;
                    }
                }
                for _ in 0..k {
                    let u = active[rng.random_range(0..na)] as usize;
                    counts[u] = counts[u].saturating_add(1);
                }
            }
        }
        let special_today = plan.special == age
            && matches!(plan.arch, Archetype::LegalVisitor | Archetype::AdminSwitch | Archetype::HandRaiser);
        let day_base = day * DAY as u32;
        let mut push = |t: u32, user: usize, kind: u8, code: u16, param: u32| {
            out.push(Rec { t: day_base + t.min(DAY as u32 - 1), acct: idx, user: user as u8, kind, code, param });
        };
        // on sign-up day the founder (user 0) comes first; teammates joining
        // the same day are invited after the founder has signed up
        let mut founder_ready: Option<u32> = None;
        for (u, &count) in counts.iter().enumerate().take(n) {
            if !joined(u) {
                continue;
            }
            let joins_today = plan.join[u] as u32 == age;
            let is_actor = special_today && plan.actor as usize == u;
            let mut cnt = count;
            if joins_today || is_actor {
                cnt = cnt.max(1);
            }
            if cnt == 0 {
                continue;
            }
            let mut t = Self::session_start(&mut rng, plan, slot_sod);
            if joins_today {
                if u > 0 {
                    if let Some(f) = founder_ready {
                        t = t.max(f + rng.random_range(300..=3600));
                    }
                    let mut ti = t.saturating_sub(rng.random_range(120..=1800));
                    if let Some(f) = founder_ready {
                        ti = ti.max(f);
                    }
                    push(ti, 0, K_TRACK, T_USER_INVITED, u as u32);
                }
                push(t, u, K_IDENTIFY, ROLE_MEMBER, 0);
                t += rng.random_range(1..=3);
                let gparam = plan.employees.min(0x00FF_FFFF) | (plan.plan_tier as u32) << 24;
                push(t, u, K_GROUP, 0, gparam);
                t += rng.random_range(2..=20);
                if u == 0 {
                    founder_ready = Some(t);
                }
            }
            for i in 0..cnt {
                if joins_today && u == 0 && i == 0 {
                    push(t, u, K_TRACK, T_BOARD_CREATED, rng.random());
                } else if rng.random::<f32>() < 0.22 {
                    let pg = pick_weighted(&mut rng, &PAGE_WEIGHTS) as u16;
                    push(t, u, K_PAGE, pg, rng.random());
                } else {
                    let tr = pick_weighted(&mut rng, &TRACK_WEIGHTS) as u16;
                    push(t, u, K_TRACK, tr, rng.random());
                }
                t += if rng.random_bool(0.1) { rng.random_range(600..=2400) } else { rng.random_range(15..=400) };
            }
            if is_actor {
                match plan.arch {
                    Archetype::LegalVisitor => {
                        let mut seen = [false; 5];
                        for _ in 0..plan.variant {
                            let l = pick_weighted(&mut rng, &LEGAL_WEIGHTS);
                            if seen[l] {
                                continue;
                            }
                            seen[l] = true;
                            push(t, u, K_PAGE, P_LEGAL_FIRST + l as u16, 0);
                            t += rng.random_range(30..=240);
                        }
                    }
                    Archetype::AdminSwitch => {
                        let target = plan.target as usize;
                        match plan.variant {
                            0 => {
                                push(t, u, K_TRACK, T_ADMIN_GRANTED, target as u32);
                                t += rng.random_range(1..=5);
                                push(t, target, K_IDENTIFY, ROLE_ADMIN, 0);
                            }
                            1 => push(t, target, K_IDENTIFY, ROLE_ADMIN, 0),
                            _ => {
                                push(t, u, K_TRACK, T_OWNER_CHANGED, target as u32);
                                t += rng.random_range(1..=5);
                                push(t, target, K_IDENTIFY, ROLE_OWNER, 0);
                            }
                        }
                    }
                    Archetype::HandRaiser => {
                        push(t, u, K_PAGE, P_PRICING, 0);
                        t += rng.random_range(30..=300);
                        let ev = if plan.variant == 1 { T_CONTACT_SALES } else { T_DEMO_REQUESTED };
                        let seats = (plan.employees / 10).clamp(5, 500);
                        push(t, u, K_TRACK, ev, seats);
                    }
                    _ => {}
                }
            }
        }
        // Planted behaviours, from their own random stream (see `Extras`).
        let x = derive_extras(self.cfg.seed, idx, plan);
        let mut planted = [(0u8, 0u16, 0u32); 8];
        let mut n_planted = 0;
        let mut plant = |on: u32, kind: u8, code: u16| {
            if on == age && n_planted < planted.len() {
                planted[n_planted] = (kind, code, n_planted as u32);
                n_planted += 1;
            }
        };
        plant(x.sso, K_PAGE, P_DOCS_SSO);
        for d in x.limit {
            plant(d, K_TRACK, T_PLAN_LIMIT);
        }
        plant(x.call, K_TRACK, T_SALES_CALL);
        for d in x.audit {
            plant(d, K_TRACK, T_AUDIT_EXPORT);
        }
        if n_planted > 0 {
            let mut prng = SmallRng::seed_from_u64(mix(self.cfg.seed ^ SALT_PLANT, idx as u64, day as u64));
            for &(kind, code, k) in &planted[..n_planted] {
                let t = Self::session_start(&mut prng, plan, slot_sod);
                push(t, 0, kind, code, prng.random::<u32>() ^ k);
            }
        }
    }

    fn render(&mut self, r: Rec) -> SimEvent {
        let time = self.cfg.start_unix + r.t as i64;
        let account = account_id(r.acct);
        let mut s = String::with_capacity(384);
        let msg = self.counter;
        self.counter += 1;
        let acct = r.acct;
        let user = r.user;
        let company = COMPANIES[(mix(self.cfg.seed, acct as u64, SALT_COMPANY) % COMPANIES.len() as u64) as usize];

        // common head
        match r.kind {
            K_TRACK => {
                s.push_str("{\"type\":\"track\",\"event\":\"");
                s.push_str(TRACKS[r.code as usize]);
                s.push_str("\",\"userId\":\"");
            }
            K_PAGE => {
                s.push_str("{\"type\":\"page\",\"name\":\"");
                s.push_str(PAGES[r.code as usize].0);
                s.push_str("\",\"userId\":\"");
            }
            K_IDENTIFY => s.push_str("{\"type\":\"identify\",\"userId\":\""),
            _ => s.push_str("{\"type\":\"group\",\"userId\":\""),
        }
        let _ = write!(s, "acct-{:05}-u{}\",", acct, user);
        if r.kind == K_GROUP {
            let _ = write!(s, "\"groupId\":\"{}\",", account);
        }
        s.push_str("\"timestamp\":\"");
        write_rfc3339(&mut s, time);
        let _ = write!(s, "\",\"messageId\":\"sim-{:08x}-{:010x}\",", self.msg_tag, msg);
        if r.kind != K_GROUP {
            let _ = write!(s, "\"context\":{{\"groupId\":\"{}\"}},", account);
        }

        match r.kind {
            K_TRACK => {
                s.push_str("\"properties\":{");
                self.track_props(&mut s, r);
                s.push('}');
            }
            K_PAGE => {
                let (name, path) = PAGES[r.code as usize];
                let host = if r.code >= P_LEGAL_FIRST || r.code == P_PRICING {
                    "https://www.kanbo.example"
                } else {
                    "https://app.kanbo.example"
                };
                s.push_str("\"properties\":{\"path\":\"");
                let mut full_path = String::new();
                full_path.push_str(path);
                if r.code == P_BOARD {
                    let _ = write!(full_path, "{}", 1 + r.param % 24);
                }
                s.push_str(&full_path);
                let _ = write!(s, "\",\"url\":\"{}{}\",\"title\":\"{} - Kanbo\"}}", host, full_path, name);
            }
            K_IDENTIFY => {
                let h = mix(self.cfg.seed, acct as u64, SALT_USER ^ user as u64);
                let mut hr = SmallRng::seed_from_u64(h);
                let sen = SENIORITIES[pick_weighted(&mut hr, &SENIORITY_WEIGHTS)];
                let dep = DEPARTMENTS[hr.random_range(0..DEPARTMENTS.len())];
                let _ = write!(
                    s,
                    "\"traits\":{{\"email\":\"u{}@{}{}.example\",\"role\":\"{}\",\"seniority\":\"{}\",\"department\":\"{}\"}}",
                    user, company.1, acct, ROLES[r.code as usize], sen, dep
                );
            }
            _ => {
                let employees = r.param & 0x00FF_FFFF;
                let plan = PLANS[((r.param >> 24) as usize).min(PLANS.len() - 1)];
                let industry = INDUSTRIES
                    [(splitmix64(mix(self.cfg.seed, acct as u64, SALT_COMPANY)) % INDUSTRIES.len() as u64) as usize];
                let _ = write!(
                    s,
                    "\"traits\":{{\"name\":\"{} {}\",\"employees\":{},\"industry\":\"{}\",\"plan\":\"{}\"}}",
                    company.0, acct, employees, industry, plan
                );
            }
        }
        s.push('}');
        SimEvent { time, account, json: s }
    }

    fn track_props(&self, s: &mut String, r: Rec) {
        let p = r.param;
        let board = 1 + p % 24;
        match r.code {
            0 | 2 | 3 | 4 | 7 | 8 => {
                let _ = write!(s, "\"boardId\":\"b-{}\"", board);
                if r.code == T_BOARD_CREATED {
                    s.push_str(match (p >> 8) % 3 {
                        0 => ",\"template\":\"blank\"",
                        _ => ",\"template\":\"kanban\"",
                    });
                }
            }
            1 => {
                let from = ((p >> 8) % 3) as usize;
                let _ = write!(
                    s,
                    "\"boardId\":\"b-{}\",\"fromList\":\"{}\",\"toList\":\"{}\"",
                    board,
                    LISTS[from],
                    LISTS[from + 1]
                );
            }
            5 => {
                let _ = write!(s, "\"boardId\":\"b-{}\",\"sizeBytes\":{}", board, 1000 + (p >> 8) % 5_000_000);
            }
            6 => {
                let _ = write!(s, "\"resultCount\":{}", (p >> 8) % 50);
            }
            9 => {
                let _ = write!(s, "\"boardId\":\"b-{}\",\"trigger\":\"card_moved\"", board);
            }
            10 => {
                let _ = write!(s, "\"integration\":\"{}\"", INTEGRATIONS[((p >> 8) % 5) as usize]);
            }
            11 => {
                let _ = write!(s, "\"format\":\"{}\"", FORMATS[((p >> 8) % 3) as usize]);
            }
            12 => {
                s.push_str(if (p >> 8) & 1 == 0 { "\"channel\":\"email\"" } else { "\"channel\":\"in_app\"" });
            }
            T_USER_INVITED => {
                let _ = write!(s, "\"invitedUserId\":\"acct-{:05}-u{}\",\"role\":\"member\"", r.acct, p);
            }
            T_ADMIN_GRANTED => {
                let _ = write!(s, "\"targetUserId\":\"acct-{:05}-u{}\",\"role\":\"admin\"", r.acct, p);
            }
            T_OWNER_CHANGED => {
                let _ = write!(
                    s,
                    "\"previousOwnerId\":\"acct-{:05}-u{}\",\"newOwnerId\":\"acct-{:05}-u{}\"",
                    r.acct, r.user, r.acct, p
                );
            }
            T_PLAN_LIMIT => {
                let _ = write!(
                    s,
                    "\"limit\":\"{}\",\"plan\":\"free\"",
                    ["boards", "automations", "storage"][(p % 3) as usize]
                );
            }
            T_SALES_CALL => {
                let _ = write!(s, "\"source\":\"calendar\",\"durationMinutes\":{}", [30, 45, 60][(p % 3) as usize]);
            }
            T_AUDIT_EXPORT => {
                let _ = write!(
                    s,
                    "\"format\":\"{}\",\"days\":{}",
                    FORMATS[(p % 3) as usize],
                    [30, 90, 365][((p >> 8) % 3) as usize]
                );
            }
            T_CONTACT_SALES => {
                let _ = write!(s, "\"formId\":\"contact-sales\",\"seats\":{},\"source\":\"pricing_page\"", p);
            }
            _ => {
                let _ = write!(s, "\"source\":\"pricing_page\",\"seats\":{}", p);
            }
        }
    }
}

/// Events come out in non-decreasing `time` order.
impl Iterator for Simulator {
    type Item = SimEvent;

    fn next(&mut self) -> Option<SimEvent> {
        loop {
            if self.pos < self.buf.len() {
                let r = self.buf[self.pos];
                self.pos += 1;
                return Some(self.render(r));
            }
            if self.day >= self.cfg.days {
                return None;
            }
            self.fill_day();
        }
    }
}

fn account_id(idx: u32) -> String {
    format!("acct-{:05}", idx)
}

#[inline]
fn push2(s: &mut String, v: u32) {
    s.push((b'0' + (v / 10) as u8) as char);
    s.push((b'0' + (v % 10) as u8) as char);
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a unix time (proleptic Gregorian, UTC).
fn write_rfc3339(s: &mut String, unix: i64) {
    let days = unix.div_euclid(DAY);
    let sod = unix.rem_euclid(DAY) as u32;
    // Howard Hinnant's civil_from_days
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    if (0..10_000).contains(&y) {
        let y = y as u32;
        push2(s, y / 100);
        push2(s, y % 100);
    } else {
        let _ = write!(s, "{:04}", y);
    }
    s.push('-');
    push2(s, m);
    s.push('-');
    push2(s, d);
    s.push('T');
    push2(s, sod / 3600);
    s.push(':');
    push2(s, sod / 60 % 60);
    s.push(':');
    push2(s, sod % 60);
    s.push('Z');
}

// ---------------------------------------------------------------------------
// Output: an NDJSON file (plain or gzip) or a Kafka topic
// ---------------------------------------------------------------------------

impl Simulator {
    /// Simulated days fully generated so far (for progress reports).
    pub fn days_generated(&self) -> u32 {
        self.day
    }

    /// Simulated days in total.
    pub fn days_total(&self) -> u32 {
        self.cfg.days
    }
}

/// Progress of a `simulate` run on stderr: an indicatif bar when stderr is
/// a terminal, a plain line every few seconds when asked for progress while
/// stderr is not a terminal (a log file), nothing otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    started: std::time::Instant,
    last_line: std::time::Instant,
}

impl Progress {
    /// `total`: the number of events when known (`--max-events`); `force`:
    /// report even when stderr is not a terminal.
    pub fn new(total: Option<u64>, force: bool) -> Progress {
        let now = std::time::Instant::now();
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if !tty {
            return Progress { bar: None, lines: force, started: now, last_line: now };
        }
        let bar = match total {
            Some(n) => {
                let b = indicatif::ProgressBar::new(n);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{wide_bar} {human_pos}/{human_len} events  {per_sec}  {elapsed} (eta {eta})  {msg}",
                    )
                    .expect("valid template"),
                );
                b
            }
            None => {
                let b = indicatif::ProgressBar::new_spinner();
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {human_pos} events  {per_sec}  {elapsed}  {msg}",
                    )
                    .expect("valid template"),
                );
                b
            }
        };
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(5));
        Progress { bar: Some(bar), lines: false, started: now, last_line: now }
    }

    /// A progress report that shows nothing.
    pub fn hidden() -> Progress {
        let now = std::time::Instant::now();
        Progress { bar: None, lines: false, started: now, last_line: now }
    }

    /// `n` events written so far, `day` of `days` simulated days generated.
    pub fn update(&mut self, n: u64, day: u32, days: u32) {
        if let Some(b) = &self.bar {
            b.set_position(n);
            b.set_message(format!("day {day}/{days}"));
        } else if self.lines && self.last_line.elapsed() >= std::time::Duration::from_secs(5) {
            self.last_line = std::time::Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            eprintln!("simulate: {n} events, day {day}/{days}, {:.0} events/s", n as f64 / secs.max(1e-9));
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// How often (in events) the progress report is updated.
const PROGRESS_EVERY: u64 = 4096;

/// Writes the simulation as NDJSON (one event a line) to `path`; a path
/// ending in `.gz` (e.g. `history.ndjson.gz`) is gzip-compressed, `-` is
/// standard output. Stops after `max_events` when given. Returns the number
/// of events written.
pub fn write_ndjson(
    sim: &mut Simulator,
    path: &std::path::Path,
    max_events: Option<u64>,
    progress: &mut Progress,
) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let raw: Box<dyn std::io::Write> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?)
    };
    let buffered = std::io::BufWriter::with_capacity(1 << 20, raw);
    let gz = path.extension().is_some_and(|e| e == "gz");
    let mut w = if gz {
        NdjsonOut::Gzip(flate2::write::GzEncoder::new(buffered, flate2::Compression::fast()))
    } else {
        NdjsonOut::Plain(buffered)
    };
    let mut n = 0u64;
    while max_events.is_none_or(|m| n < m) {
        let Some(ev) = sim.next() else { break };
        w.write_all(ev.json.as_bytes()).and_then(|_| w.write_all(b"\n")).context("writing events")?;
        n += 1;
        if n % PROGRESS_EVERY == 0 {
            progress.update(n, sim.days_generated(), sim.days_total());
        }
    }
    // Finish explicitly: a gzip trailer that fails to write is an error, not
    // something a `Drop` swallows.
    let mut inner = match w {
        NdjsonOut::Plain(b) => b,
        NdjsonOut::Gzip(g) => g.finish().context("finishing gzip stream")?,
    };
    inner.flush().context("flushing output")?;
    progress.update(n, sim.days_generated(), sim.days_total());
    Ok(n)
}

/// Writes [`Simulator::outcomes`] as NDJSON (the outcomes format of
/// [`crate::outcome`]) to `path`; `.gz` is gzip-compressed. Returns the
/// number of outcomes.
pub fn write_outcomes(sim: &Simulator, path: &std::path::Path) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let buffered = std::io::BufWriter::new(file);
    let mut w = if path.extension().is_some_and(|e| e == "gz") {
        NdjsonOut::Gzip(flate2::write::GzEncoder::new(buffered, flate2::Compression::fast()))
    } else {
        NdjsonOut::Plain(buffered)
    };
    let outcomes = sim.outcomes();
    for o in &outcomes {
        w.write_all(o.to_json().as_bytes()).and_then(|_| w.write_all(b"\n")).context("writing outcomes")?;
    }
    let mut inner = match w {
        NdjsonOut::Plain(b) => b,
        NdjsonOut::Gzip(g) => g.finish().context("finishing gzip stream")?,
    };
    inner.flush().context("flushing outcomes")?;
    Ok(outcomes.len() as u64)
}

enum NdjsonOut<W: std::io::Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
}

impl<W: std::io::Write> std::io::Write for NdjsonOut<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            NdjsonOut::Plain(w) => w.write(buf),
            NdjsonOut::Gzip(w) => w.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            NdjsonOut::Plain(w) => w.write_all(buf),
            NdjsonOut::Gzip(w) => w.write_all(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            NdjsonOut::Plain(w) => w.flush(),
            NdjsonOut::Gzip(w) => w.flush(),
        }
    }
}

/// A Kafka topic to write the simulation into.
#[derive(Clone, Debug)]
pub struct TopicTarget {
    pub bootstrap_servers: String,
    pub topic: String,
    /// librdkafka producer properties, applied over the defaults of
    /// [`produce_to_topic`].
    pub properties: Vec<(String, String)>,
}

/// The outcome of [`produce_to_topic`].
#[derive(Clone, Debug)]
pub struct ProduceStats {
    /// Events sent and acknowledged by the broker.
    pub events: u64,
    pub bytes: u64,
    pub elapsed: std::time::Duration,
    /// Next offset after the last acknowledged record, per partition (the
    /// end a consumer of this topic must reach, if it was empty before).
    pub partition_ends: std::collections::BTreeMap<i32, i64>,
}

/// Counts delivery reports; keeps the first error.
#[derive(Default)]
struct DeliveryCounter {
    delivered: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    ends: std::sync::Mutex<std::collections::BTreeMap<i32, i64>>,
}

impl rdkafka::ClientContext for DeliveryCounter {}

impl rdkafka::producer::ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        use std::sync::atomic::Ordering::Relaxed;
        match result {
            Ok(m) => {
                use rdkafka::message::Message;
                self.delivered.fetch_add(1, Relaxed);
                let mut ends = self.ends.lock().expect("lock");
                let end = ends.entry(m.partition()).or_insert(0);
                *end = (*end).max(m.offset() + 1);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Relaxed);
                let mut first = self.first_error.lock().expect("lock");
                if first.is_none() {
                    *first = Some(e.to_string());
                }
            }
        }
    }
}

/// Writes the simulation into a Kafka topic: key = account id (so all of an
/// account's events land in one partition, in time order), value = the
/// Segment JSON, record timestamp = the time it is produced. The producer is
/// idempotent (no duplicates or reordering on retries); a full local queue is
/// backpressure (wait for deliveries, then send again), not an error. The
/// topic must exist. Returns once every event is acknowledged; any failed
/// delivery is an error.
///
/// Defaults (overridable by `target.properties`): `enable.idempotence=true`,
/// `acks=all`, `linger.ms=20`, `compression.type=lz4`.
pub fn produce_to_topic(
    sim: &mut Simulator,
    target: &TopicTarget,
    max_events: Option<u64>,
    progress: &mut Progress,
) -> anyhow::Result<ProduceStats> {
    use anyhow::{bail, Context as _};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};

    let mut cc = rdkafka::ClientConfig::new();
    cc.set("bootstrap.servers", &target.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        // The topic must exist: its partition count is the benchmark's choice.
        .set("allow.auto.create.topics", "false");
    for (k, v) in &target.properties {
        cc.set(k, v);
    }
    let producer: BaseProducer<DeliveryCounter> =
        cc.create_with_context(DeliveryCounter::default()).context("creating the Kafka producer")?;

    // Fail fast on a missing topic instead of waiting out message.timeout.ms.
    let md = producer
        .client()
        .fetch_metadata(Some(&target.topic), Duration::from_secs(30))
        .with_context(|| format!("fetching metadata of topic {} from {}", target.topic, target.bootstrap_servers))?;
    let partitions = md.topics().iter().find(|t| t.name() == target.topic).map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        bail!("topic {} does not exist on {}: create it first", target.topic, target.bootstrap_servers);
    }

    let started = Instant::now();
    let ctx = producer.context();
    let check_failures = |ctx: &DeliveryCounter| -> anyhow::Result<()> {
        if ctx.failed.load(Relaxed) > 0 {
            let e = ctx.first_error.lock().expect("lock").clone().unwrap_or_default();
            bail!("{} event(s) could not be delivered to {}: {e}", ctx.failed.load(Relaxed), target.topic);
        }
        Ok(())
    };
    let mut n = 0u64;
    let mut bytes = 0u64;
    while max_events.is_none_or(|m| n < m) {
        let Some(ev) = sim.next() else { break };
        let record = BaseRecord::to(&target.topic).key(ev.account.as_bytes()).payload(ev.json.as_bytes());
        // A delivery that failed stops the run (checked while waiting for
        // room, and every PROGRESS_EVERY records).
        let failed = || ctx.failed.load(Relaxed) > 0;
        match crate::kafka::produce::send(&producer, record, crate::kafka::produce::Transient::Fail, &failed) {
            Ok(()) | Err(crate::kafka::produce::SendError::Stopped) => {}
            Err(e) => return Err(e).with_context(|| format!("producing to {}", target.topic)),
        }
        check_failures(ctx)?;
        n += 1;
        bytes += ev.json.len() as u64;
        if n % PROGRESS_EVERY == 0 {
            producer.poll(Duration::ZERO);
            check_failures(ctx)?;
            progress.update(ctx.delivered.load(Relaxed), sim.days_generated(), sim.days_total());
        }
    }
    // Wait for every acknowledgement, reporting progress meanwhile.
    let deadline = Instant::now() + Duration::from_secs(300);
    while producer.in_flight_count() > 0 {
        if Instant::now() > deadline {
            bail!("{} event(s) still unacknowledged after 300 s", producer.in_flight_count());
        }
        producer.poll(Duration::from_millis(100));
        check_failures(ctx)?;
        progress.update(ctx.delivered.load(Relaxed), sim.days_generated(), sim.days_total());
    }
    producer.flush(Duration::from_secs(30)).context("flushing the producer")?;
    check_failures(ctx)?;
    let delivered = ctx.delivered.load(Relaxed);
    if delivered != n {
        bail!("sent {n} events but {delivered} were acknowledged");
    }
    let partition_ends = ctx.ends.lock().expect("lock").clone();
    Ok(ProduceStats { events: n, bytes, elapsed: started.elapsed(), partition_ends })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap, HashSet};

    fn small_cfg() -> SimConfig {
        SimConfig { seed: 7, accounts: 60, start_unix: 1_788_220_800, days: 30 }
    }

    fn user_of(json: &str) -> &str {
        let k = "\"userId\":\"";
        let i = json.find(k).unwrap() + k.len();
        let j = json[i..].find('"').unwrap();
        &json[i..i + j]
    }

    fn is_usage(json: &str) -> bool {
        json.starts_with("{\"type\":\"track\"") || json.starts_with("{\"type\":\"page\"")
    }

    #[test]
    fn deterministic() {
        let a: Vec<SimEvent> = Simulator::new(small_cfg()).collect();
        let b: Vec<SimEvent> = Simulator::new(small_cfg()).collect();
        assert!(!a.is_empty());
        assert_eq!(a, b);
        let c: Vec<SimEvent> = Simulator::new(SimConfig { seed: 8, ..small_cfg() }).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn time_order_non_decreasing() {
        let cfg = SimConfig::default();
        let end = cfg.start_unix + cfg.days as i64 * DAY;
        let mut last = i64::MIN;
        let mut n = 0;
        for e in Simulator::new(cfg.clone()) {
            assert!(e.time >= last, "out of order: {} < {}", e.time, last);
            assert!(e.time >= cfg.start_unix && e.time < end);
            last = e.time;
            n += 1;
        }
        assert!(n > 10_000, "only {n} events");
    }

    #[test]
    fn rfc3339_matches_chrono() {
        for &t in &[0i64, 1_788_220_800, 1_788_220_800 + 86_399, 951_782_400, 4_102_444_800, 1_709_208_000] {
            let mut s = String::new();
            write_rfc3339(&mut s, t);
            let c = chrono::DateTime::from_timestamp(t, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            assert_eq!(s, c);
        }
    }

    #[test]
    fn every_line_is_valid_segment_json() {
        let cfg = SimConfig { seed: 3, accounts: 80, start_unix: 1_788_220_800, days: 40 };
        let mut ids = HashSet::new();
        let mut kinds: HashMap<String, usize> = HashMap::new();
        for e in Simulator::new(cfg) {
            assert!(!e.json.contains('\n'));
            let v: serde_json::Value = serde_json::from_str(&e.json).expect(&e.json);
            let ty = v["type"].as_str().unwrap().to_string();
            let uid = v["userId"].as_str().unwrap();
            assert!(uid.starts_with(&format!("{}-u", e.account)), "{}", e.json);
            let ts = v["timestamp"].as_str().unwrap();
            assert!(ts.ends_with('Z'));
            let parsed = chrono::DateTime::parse_from_rfc3339(ts).unwrap();
            assert_eq!(parsed.timestamp(), e.time);
            assert!(ids.insert(v["messageId"].as_str().unwrap().to_string()), "duplicate messageId");
            match ty.as_str() {
                "track" => {
                    assert!(v["event"].is_string());
                    assert_eq!(v["context"]["groupId"], e.account.as_str());
                    assert!(v["properties"].is_object());
                }
                "page" => {
                    assert!(v["name"].is_string());
                    assert_eq!(v["context"]["groupId"], e.account.as_str());
                    let path = v["properties"]["path"].as_str().unwrap();
                    assert!(path.starts_with('/'));
                    assert!(v["properties"]["url"].as_str().unwrap().ends_with(path));
                }
                "identify" => {
                    let t = &v["traits"];
                    assert!(t["email"].as_str().unwrap().contains('@'));
                    assert!(["member", "admin", "owner"].contains(&t["role"].as_str().unwrap()));
                    assert!(t["seniority"].is_string() && t["department"].is_string());
                }
                "group" => {
                    assert_eq!(v["groupId"], e.account.as_str());
                    let t = &v["traits"];
                    assert!(t["name"].is_string() && t["industry"].is_string() && t["plan"].is_string());
                    assert!(t["employees"].as_u64().unwrap() >= 1);
                }
                other => panic!("unexpected type {other}"),
            }
            *kinds.entry(ty).or_default() += 1;
        }
        for k in ["track", "page", "identify", "group"] {
            assert!(kinds.get(k).copied().unwrap_or(0) > 0, "no {k} events");
        }
    }

    #[test]
    fn identify_and_group_once_per_user_before_usage() {
        let mut seen_identify: HashSet<String> = HashSet::new();
        let mut seen_group: HashSet<String> = HashSet::new();
        for e in Simulator::new(small_cfg()) {
            let u = user_of(&e.json).to_string();
            if e.json.starts_with("{\"type\":\"group\"") {
                assert!(seen_group.insert(u), "group sent twice");
            } else if e.json.starts_with("{\"type\":\"identify\"") {
                if e.json.contains("\"role\":\"member\"") {
                    assert!(seen_identify.insert(u), "initial identify sent twice");
                }
            } else {
                assert!(
                    seen_identify.contains(&u) && seen_group.contains(&u),
                    "usage before identify/group: {}",
                    e.json
                );
            }
        }
    }

    #[test]
    fn archetype_mix() {
        let sim = Simulator::new(SimConfig { accounts: 1000, ..SimConfig::default() });
        let arch = sim.archetypes();
        assert_eq!(arch.len(), 1000);
        assert_eq!(arch[42].0, "acct-00042");
        let mut c: HashMap<Archetype, usize> = HashMap::new();
        for (_, a) in &arch {
            *c.entry(*a).or_default() += 1;
        }
        let frac = |a: Archetype| c.get(&a).copied().unwrap_or(0) as f64 / 1000.0;
        for (a, want) in [
            (Archetype::Small, 0.55),
            (Archetype::Growing, 0.15),
            (Archetype::Spiking, 0.10),
            (Archetype::LegalVisitor, 0.08),
            (Archetype::AdminSwitch, 0.07),
            (Archetype::HandRaiser, 0.05),
        ] {
            assert!((frac(a) - want).abs() < 0.05, "{:?}: {} vs {}", a, frac(a), want);
        }
    }

    #[test]
    fn hand_raisers_act_in_first_three_days() {
        for seed in [42, 0, 1, 2, 3, 4, 5] {
            check_early_hand_raisers(SimConfig { seed, ..SimConfig::default() });
        }
    }

    fn check_early_hand_raisers(cfg: SimConfig) {
        let limit = cfg.start_unix + 3 * DAY;
        let mut accounts = HashSet::new();
        for e in Simulator::new(cfg).take_while(|e| e.time < limit) {
            if e.json.contains("\"event\":\"Contact Sales Submitted\"")
                || e.json.contains("\"event\":\"Demo Requested\"")
            {
                accounts.insert(e.account);
            }
        }
        assert!(accounts.len() >= 2, "hand raisers in first 3 days: {accounts:?}");
    }

    /// Per account: sorted (time, user) of usage events.
    fn usage_by_account(cfg: SimConfig) -> HashMap<String, Vec<(i64, String)>> {
        let mut m: HashMap<String, Vec<(i64, String)>> = HashMap::new();
        for e in Simulator::new(cfg) {
            if is_usage(&e.json) {
                let u = user_of(&e.json).to_string();
                m.entry(e.account).or_default().push((e.time, u));
            }
        }
        m
    }

    fn max_distinct_users_28d(ev: &[(i64, String)]) -> usize {
        let mut best = 0;
        let mut j = 0;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for i in 0..ev.len() {
            *counts.entry(ev[i].1.as_str()).or_default() += 1;
            while ev[i].0 - ev[j].0 >= 28 * DAY {
                let c = counts.get_mut(ev[j].1.as_str()).unwrap();
                *c -= 1;
                if *c == 0 {
                    counts.remove(ev[j].1.as_str());
                }
                j += 1;
            }
            best = best.max(counts.len());
        }
        best
    }

    fn max_events_7d(ev: &[(i64, String)]) -> usize {
        let mut best = 0;
        let mut j = 0;
        for i in 0..ev.len() {
            while ev[i].0 - ev[j].0 >= 7 * DAY {
                j += 1;
            }
            best = best.max(i + 1 - j);
        }
        best
    }

    #[test]
    fn archetypes_behave() {
        for seed in [42, 1, 2, 3] {
            check_archetypes(SimConfig { seed, ..SimConfig::default() });
        }
    }

    fn check_archetypes(cfg: SimConfig) {
        let arch: BTreeMap<String, Archetype> = Simulator::new(cfg.clone()).archetypes().into_iter().collect();
        let usage = usage_by_account(cfg.clone());
        let mut growing = 0;
        let mut spiking = 0;
        for (acct, a) in &arch {
            let empty = Vec::new();
            let ev = usage.get(acct).unwrap_or(&empty);
            match a {
                Archetype::Growing => {
                    growing += 1;
                    assert!(max_distinct_users_28d(ev) >= 7, "{acct} growing never reaches 7 users");
                }
                Archetype::Small | Archetype::HandRaiser => {
                    assert!(max_distinct_users_28d(ev) <= 4, "{acct}");
                    assert!(max_events_7d(ev) < 100, "{acct}");
                }
                Archetype::Spiking => {
                    spiking += 1;
                    assert!(max_events_7d(ev) >= 100, "{acct} never spikes");
                }
                _ => {}
            }
        }
        assert!(growing > 10 && spiking > 5);

        // signals only where intended
        let legal = ["/legal/terms\"", "/privacy\"", "/security\"", "/dpa\"", "/legal/sla\""];
        let mut legal_accounts = HashSet::new();
        let mut admin_accounts = HashSet::new();
        let mut hand_accounts = HashSet::new();
        for e in Simulator::new(cfg) {
            if legal.iter().any(|p| e.json.contains(&format!("\"path\":\"{p}"))) {
                legal_accounts.insert(e.account.clone());
            }
            if e.json.contains("\"role\":\"admin\"")
                || e.json.contains("\"role\":\"owner\"")
                || e.json.contains("Workspace Owner Changed")
            {
                admin_accounts.insert(e.account.clone());
            }
            if e.json.contains("Contact Sales Submitted") || e.json.contains("Demo Requested") {
                hand_accounts.insert(e.account.clone());
            }
            if e.json.starts_with("{\"type\":\"page\"") && !legal_accounts.contains(&e.account) {
                let k = "\"path\":\"";
                let i = e.json.find(k).unwrap() + k.len();
                let path = &e.json[i..i + e.json[i..].find('"').unwrap()];
                for w in ["terms", "privacy", "security", "dpa", "sla"] {
                    assert!(!path.contains(w), "{}", e.json);
                }
            }
        }
        for a in &legal_accounts {
            assert_eq!(arch[a], Archetype::LegalVisitor);
        }
        for a in &admin_accounts {
            assert_eq!(arch[a], Archetype::AdminSwitch);
        }
        for a in &hand_accounts {
            assert_eq!(arch[a], Archetype::HandRaiser);
        }
        let count = |x: Archetype| arch.values().filter(|&&a| a == x).count();
        assert_eq!(legal_accounts.len(), count(Archetype::LegalVisitor));
        assert_eq!(admin_accounts.len(), count(Archetype::AdminSwitch));
        assert_eq!(hand_accounts.len(), count(Archetype::HandRaiser));
    }

    /// The signals of LegalVisitor / AdminSwitch / Spiking accounts happen in a
    /// context where the default rules can fire (3+ users in 28 days, account
    /// older than 35 days for a spike, 2x the previous weekly average).
    #[test]
    fn signals_meet_default_rule_preconditions() {
        for seed in [42, 9] {
            let cfg = SimConfig { seed, ..SimConfig::default() };
            let arch: HashMap<String, Archetype> = Simulator::new(cfg.clone()).archetypes().into_iter().collect();
            let mut usage: HashMap<String, Vec<(i64, String)>> = HashMap::new();
            let mut first_seen: HashMap<String, i64> = HashMap::new();
            let mut signal_ok: HashMap<String, bool> = HashMap::new();
            for e in Simulator::new(cfg) {
                first_seen.entry(e.account.clone()).or_insert(e.time);
                let signal = e.json.contains("\"path\":\"/legal/")
                    || e.json.contains("\"path\":\"/privacy\"")
                    || e.json.contains("\"path\":\"/security\"")
                    || e.json.contains("\"path\":\"/dpa\"")
                    || e.json.contains("\"role\":\"admin\"")
                    || e.json.contains("\"role\":\"owner\"");
                let ev = usage.entry(e.account.clone()).or_default();
                if is_usage(&e.json) {
                    ev.push((e.time, user_of(&e.json).to_string()));
                }
                if signal {
                    let users: HashSet<&str> =
                        ev.iter().filter(|(t, _)| *t > e.time - 28 * DAY).map(|(_, u)| u.as_str()).collect();
                    let ok = signal_ok.entry(e.account.clone()).or_insert(false);
                    *ok |= users.len() >= 3;
                }
            }
            for (acct, a) in &arch {
                match a {
                    Archetype::LegalVisitor | Archetype::AdminSwitch => {
                        assert_eq!(signal_ok.get(acct), Some(&true), "{acct} {a:?}");
                    }
                    Archetype::Spiking => {
                        let ev = &usage[acct];
                        let fs = first_seen[acct];
                        let fired = (0..ev.len()).any(|i| {
                            let t = ev[i].0;
                            let last7 = ev.iter().filter(|(x, _)| *x > t - 7 * DAY && *x <= t).count();
                            let prev28 = ev.iter().filter(|(x, _)| *x > t - 35 * DAY && *x <= t - 7 * DAY).count();
                            let users: HashSet<&str> = ev
                                .iter()
                                .filter(|(x, _)| *x > t - 28 * DAY && *x <= t)
                                .map(|(_, u)| u.as_str())
                                .collect();
                            t - fs >= 35 * DAY
                                && last7 >= 100
                                && last7 as f64 >= 2.0 * prev28 as f64 / 4.0
                                && users.len() >= 3
                        });
                        assert!(fired, "{acct} spike never meets usage_spike");
                    }
                    _ => {}
                }
            }
        }
    }

    /// Hand-raisers read /docs/sso and hit the plan limit before their
    /// hand raise, never after it first; the sales call only follows it.
    #[test]
    fn planted_behaviours_come_before_the_hand_raise() {
        let cfg = SimConfig { seed: 21, accounts: 600, start_unix: 1_788_220_800, days: 60 };
        let arch: HashMap<String, Archetype> = Simulator::new(cfg.clone()).archetypes().into_iter().collect();
        let mut raised: HashMap<String, i64> = HashMap::new();
        let (mut before, mut planted_small, mut calls) = (HashSet::new(), HashSet::new(), 0);
        for e in Simulator::new(cfg.clone()) {
            let planted =
                e.json.contains("\"path\":\"/docs/sso\"") || e.json.contains("\"event\":\"Plan Limit Reached\"");
            if e.json.contains("\"event\":\"Contact Sales Submitted\"")
                || e.json.contains("\"event\":\"Demo Requested\"")
            {
                raised.entry(e.account.clone()).or_insert(e.time);
            }
            if e.json.contains("\"event\":\"Sales Call Scheduled\"") {
                assert!(
                    raised.get(&e.account).is_some_and(|&t| t < e.time),
                    "a sales call before the hand raise: {}",
                    e.json
                );
                calls += 1;
            }
            if planted {
                match arch[&e.account] {
                    Archetype::HandRaiser => {
                        assert!(!raised.contains_key(&e.account), "planted after the hand raise: {}", e.json);
                        before.insert(e.account.clone());
                    }
                    Archetype::Small => {
                        planted_small.insert(e.account.clone());
                    }
                    a => panic!("planted in a {a:?} account: {}", e.json),
                }
            }
        }
        let hand = arch.values().filter(|&&a| a == Archetype::HandRaiser).count();
        assert!(before.len() * 2 > hand, "{} of {hand} hand-raisers show planted behaviour", before.len());
        assert!(!planted_small.is_empty() && planted_small.len() * 10 < 600, "noise: {}", planted_small.len());
        assert!(calls * 2 > hand, "{calls} calls");
    }

    #[test]
    fn outcomes_follow_the_deals() {
        use crate::outcome::OutcomeKind;
        let cfg = SimConfig { seed: 21, accounts: 600, start_unix: 1_788_220_800, days: 60 };
        let sim = Simulator::new(cfg.clone());
        let outcomes = sim.outcomes();
        assert_eq!(outcomes, Simulator::new(cfg.clone()).outcomes(), "deterministic");
        let end = (cfg.start_unix + 60 * DAY) * 1000;
        assert!(outcomes.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(outcomes.iter().all(|o| o.at_ms >= cfg.start_unix * 1000 && o.at_ms < end));
        let arch: HashMap<String, Archetype> = sim.archetypes().into_iter().collect();
        let count = |k: OutcomeKind| outcomes.iter().filter(|o| o.outcome == k).count();
        for k in OutcomeKind::ALL {
            assert!(count(k) > 0, "no {k}");
        }
        // Per account: at most one first answer, an opportunity only after
        // an acceptance, won or lost only after an opportunity.
        let mut by: HashMap<&str, Vec<OutcomeKind>> = HashMap::new();
        for o in &outcomes {
            by.entry(o.account_id.as_str()).or_default().push(o.outcome);
            // Every line reads back.
            assert_eq!(&crate::outcome::parse_outcome(o.to_json().as_bytes()).unwrap(), o);
        }
        for (acct, ks) in &by {
            match ks.as_slice() {
                [OutcomeKind::Won] => assert_eq!(arch[*acct], Archetype::Small, "{acct}"),
                [OutcomeKind::Rejected]
                | [OutcomeKind::Accepted]
                | [OutcomeKind::Accepted, OutcomeKind::Opportunity] => {}
                [OutcomeKind::Accepted, OutcomeKind::Opportunity, OutcomeKind::Won | OutcomeKind::Lost] => {}
                other => panic!("{acct}: {other:?}"),
            }
        }
    }

    #[test]
    fn lazy_with_a_million_accounts() {
        let cfg = SimConfig { accounts: 1_000_000, days: 90, ..SimConfig::default() };
        let first: Vec<SimEvent> = Simulator::new(cfg).take(1000).collect();
        assert_eq!(first.len(), 1000);
        assert!(first.iter().any(|e| e.account.len() > "acct-00000".len()));
    }
}
