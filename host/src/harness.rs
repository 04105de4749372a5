//! The plugin test harness: run a guard or action against fixture tokens
//! and expected outcomes, with the production runtime and limits and no
//! NATS. Used by `cb-host plugin test` and from `cargo test`.
//!
//! A case file is JSON:
//!
//! ```json
//! { "config": {"max": 1000},
//!   "fixtures": { "workflows": [ ...definitions... ], "tokens": [ ...tokens... ] },
//!   "cases": [
//!     { "name": "small amounts pass",
//!       "token": {"data": {"amount": 5}},
//!       "expect": "allow" },
//!     { "name": "big amounts are denied",
//!       "token": {"data": {"amount": 5000}},
//!       "expect": {"deny": {"code": "amount-over-limit", "message": "exceeds"}} },
//!     { "name": "a loop times out", "config": {"do": "loop"},
//!       "limits": {"deadline": 50},
//!       "expect": {"error": "timeout"} } ] }
//! ```
//!
//! Top-level `config`, `transition`, `input`, `actor`, `fired_at` and
//! `limits` are defaults for every case; a case may override each. For
//! actions, `expect` is `{"ok": {"requests": [...], "logs": ["substring"]}}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::model::{Id, Metadata, StoredDefinition, Token, Transition, WorkflowDefinition};
use crate::plugin::{
    ActionInput, Decision, GuardInput, Plugin, PluginError, PluginLimits, PluginRuntime, RuntimeConfig, World,
};
use crate::store::{MemorySource, TokenSource};

/// A token in a case: every field optional, with test defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFixture {
    /// Default `t1`.
    #[serde(default)]
    pub id: Option<Id>,
    /// Default `wf`.
    #[serde(default)]
    pub workflow_id: Option<Id>,
    /// Default: the transition's first `from` place.
    #[serde(default)]
    pub place: Option<Id>,
    /// Default `{}`.
    #[serde(default)]
    pub data: Option<Value>,
    /// Default empty.
    #[serde(default)]
    pub metadata: Metadata,
    /// Default 1.
    #[serde(default)]
    pub revision: Option<u64>,
}

/// Fixtures the plugin's `token-reader` serves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    /// Workflow definitions (version 1 each).
    #[serde(default)]
    pub workflows: Vec<WorkflowDefinition>,
    /// Tokens.
    #[serde(default)]
    pub tokens: Vec<TokenFixture>,
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Expect {
    /// The guard allows (also written as the string `"allow"`).
    Allow,
    /// The guard denies with `code`; `message` (if given) must be a
    /// substring of the denial's message.
    Deny {
        /// Expected code.
        code: String,
        /// Expected substring of the message.
        #[serde(default)]
        message: Option<String>,
    },
    /// The call fails with this error kind: `timeout`, `out-of-fuel`,
    /// `memory-limit`, `stack-overflow`, `trap`, `failed`.
    Error(String),
    /// The action succeeds with these requests (exactly) and log lines
    /// containing these substrings.
    Ok {
        /// Expected follow-up requests, in order.
        #[serde(default)]
        requests: Vec<crate::plugin::TransitionRequest>,
        /// Substrings that must each appear in some log line.
        #[serde(default)]
        logs: Vec<String>,
    },
}

fn de_expect<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Expect, D::Error> {
    let v = Value::deserialize(d)?;
    if v == Value::String("allow".into()) {
        return Ok(Expect::Allow);
    }
    serde_json::from_value(v).map_err(serde::de::Error::custom)
}

/// One case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the report.
    pub name: String,
    /// The plugin's config.
    #[serde(default)]
    pub config: Option<Value>,
    /// The token under test.
    #[serde(default)]
    pub token: Option<TokenFixture>,
    /// The transition.
    #[serde(default)]
    pub transition: Option<Transition>,
    /// The caller's input.
    #[serde(default)]
    pub input: Option<Value>,
    /// The actor.
    #[serde(default)]
    pub actor: Option<String>,
    /// The firing time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub fired_at: Option<OffsetDateTime>,
    /// Limits overriding the production defaults.
    #[serde(default)]
    pub limits: Option<PluginLimits>,
    /// For actions: the event sequence.
    #[serde(default)]
    pub event_sequence: Option<u64>,
    /// The expectation.
    #[serde(deserialize_with = "de_expect")]
    pub expect: Expect,
}

/// A case file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Default config.
    #[serde(default)]
    pub config: Option<Value>,
    /// Default transition.
    #[serde(default)]
    pub transition: Option<Transition>,
    /// Default input.
    #[serde(default)]
    pub input: Option<Value>,
    /// Default firing time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub fired_at: Option<OffsetDateTime>,
    /// Default limits.
    #[serde(default)]
    pub limits: Option<PluginLimits>,
    /// Served by `token-reader`.
    #[serde(default)]
    pub fixtures: Fixtures,
    /// The cases.
    pub cases: Vec<Case>,
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseReport {
    /// File it came from.
    pub file: String,
    /// Case name.
    pub name: String,
    /// Whether the expectation held.
    pub passed: bool,
    /// What was expected, as JSON.
    pub expected: Value,
    /// What happened, as JSON.
    pub actual: Value,
    /// Wall time of the call.
    pub micros: u64,
}

/// Why the harness itself could not run.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Loading the plugin failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// A case file could not be read or parsed.
    #[error("{path}: {message}")]
    CaseFile {
        /// The file.
        path: String,
        /// What is wrong (with the JSON path).
        message: String,
    },
}

/// Loads a plugin and runs cases against it.
pub struct Harness {
    plugin: Plugin,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("plugin", &self.plugin).finish()
    }
}

fn default_transition() -> Transition {
    Transition {
        id: Id::new("t").expect("valid"),
        from: vec![Id::new("from").expect("valid")],
        to: Id::new("to").expect("valid"),
        guards: vec![],
        actions: vec![],
    }
}

fn build_token(f: &TokenFixture, transition: &Transition, at: OffsetDateTime) -> Token {
    let workflow_id = f
        .workflow_id
        .clone()
        .unwrap_or_else(|| Id::new("wf").expect("valid"));
    let id = f.id.clone().unwrap_or_else(|| Id::new("t1").expect("valid"));
    let place = f.place.clone().unwrap_or_else(|| transition.from[0].clone());
    Token {
        subject: format!("cb.workflows.{workflow_id}.places.{place}.tokens.{id}"),
        id,
        workflow_id,
        definition_version: 1,
        place,
        data: f.data.clone().unwrap_or_else(|| serde_json::json!({})),
        metadata: f.metadata.clone(),
        created_at: at,
        updated_at: at,
        revision: f.revision.unwrap_or(1),
    }
}

impl Harness {
    /// Loads `path` with the production runtime settings (compile cache in
    /// a private temporary directory is not needed: the default cache is
    /// used).
    pub fn load(path: &Path) -> Result<Self, HarnessError> {
        let runtime = PluginRuntime::new(RuntimeConfig::default())?;
        Ok(Harness {
            plugin: runtime.load_file(path)?,
        })
    }

    /// Wraps an already loaded plugin.
    pub fn from_plugin(plugin: Plugin) -> Self {
        Harness { plugin }
    }

    /// The plugin under test.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Parses a case file.
    pub fn read_cases(path: &Path) -> Result<CaseFile, HarnessError> {
        let bytes = std::fs::read(path).map_err(|e| HarnessError::CaseFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de).map_err(|e| HarnessError::CaseFile {
            path: path.display().to_string(),
            message: format!("at `{}`: {}", e.path(), e.inner()),
        })
    }

    /// Case files in `paths` (files, or directories of `*.json`), sorted.
    pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, HarnessError> {
        let mut out = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|e| HarnessError::CaseFile {
                        path: p.display().to_string(),
                        message: e.to_string(),
                    })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "json"))
                    .collect();
                files.sort();
                out.extend(files);
            } else {
                out.push(p.clone());
            }
        }
        Ok(out)
    }

    /// Runs every case of `file` whose name contains `filter`.
    pub async fn run_file(&self, path: &Path, filter: Option<&str>) -> Result<Vec<CaseReport>, HarnessError> {
        let file = Self::read_cases(path)?;
        let source = MemorySource::new();
        for w in &file.fixtures.workflows {
            source.insert_definition(StoredDefinition {
                version: 1,
                stored_at: OffsetDateTime::UNIX_EPOCH,
                definition: w.clone(),
            });
        }
        let now = OffsetDateTime::now_utc();
        for (i, t) in file.fixtures.tokens.iter().enumerate() {
            let mut t = build_token(t, &default_transition(), now);
            if file.fixtures.tokens[i].revision.is_none() {
                t.revision = 100 + i as u64;
            }
            source.insert_token(t);
        }
        let source: Arc<dyn TokenSource> = Arc::new(source);
        let mut reports = Vec::new();
        for case in file
            .cases
            .iter()
            .filter(|c| filter.is_none_or(|f| c.name.contains(f)))
        {
            let mut report = self.run_case(&file, case, source.clone()).await;
            report.file = path.display().to_string();
            reports.push(report);
        }
        Ok(reports)
    }

    /// Runs one case.
    pub async fn run_case(&self, file: &CaseFile, case: &Case, source: Arc<dyn TokenSource>) -> CaseReport {
        let transition = case
            .transition
            .clone()
            .or_else(|| file.transition.clone())
            .unwrap_or_else(default_transition);
        let fired_at = case
            .fired_at
            .or(file.fired_at)
            .unwrap_or_else(OffsetDateTime::now_utc);
        let token = build_token(&case.token.clone().unwrap_or_default(), &transition, fired_at);
        let config = case
            .config
            .clone()
            .or_else(|| file.config.clone())
            .unwrap_or(Value::Null);
        let input = case
            .input
            .clone()
            .or_else(|| file.input.clone())
            .unwrap_or(Value::Null);
        let mut plugin = self.plugin.clone();
        if let Some(l) = case.limits.or(file.limits) {
            plugin = plugin.with_limits(l);
        }
        let started = Instant::now();
        let actual: Result<Value, PluginError> = match plugin.world() {
            World::Guard => {
                let g = GuardInput {
                    token,
                    transition,
                    config,
                    input,
                    actor: case.actor.clone(),
                    fired_at,
                };
                plugin.evaluate(&g, source).await.map(|o| match o.value {
                    Decision::Allow => serde_json::json!("allow"),
                    Decision::Deny {
                        code,
                        message,
                        details,
                    } => {
                        serde_json::json!({"deny": {"code": code, "message": message, "details": details}})
                    }
                })
            }
            World::Action => {
                let a = ActionInput {
                    event_sequence: case.event_sequence.unwrap_or(1),
                    from: transition.from[0].clone(),
                    to: transition.to.clone(),
                    token,
                    transition,
                    actor: case.actor.clone(),
                    input,
                    config,
                    fired_at,
                };
                plugin.run_action(&a, source).await.map(|o| {
                    serde_json::json!({"ok": {"requests": o.value, "logs": o.logs.iter().map(|l| l.message.clone()).collect::<Vec<_>>()}})
                })
            }
        };
        let micros = started.elapsed().as_micros() as u64;
        let actual =
            actual.unwrap_or_else(|e| serde_json::json!({"error": e.kind(), "message": e.to_string()}));
        let passed = matches(&case.expect, &actual);
        CaseReport {
            file: String::new(),
            name: case.name.clone(),
            passed,
            expected: serde_json::to_value(&case.expect).unwrap_or(Value::Null),
            actual,
            micros,
        }
    }
}

fn matches(expect: &Expect, actual: &Value) -> bool {
    match expect {
        Expect::Allow => actual == "allow",
        Expect::Deny { code, message } => {
            actual["deny"]["code"] == code.as_str()
                && message.as_ref().is_none_or(|m| {
                    actual["deny"]["message"]
                        .as_str()
                        .is_some_and(|a| a.contains(m.as_str()))
                })
        }
        Expect::Error(kind) => actual["error"] == kind.as_str(),
        Expect::Ok { requests, logs } => {
            let Some(ok) = actual.get("ok") else { return false };
            let reqs = serde_json::to_value(requests).unwrap_or(Value::Null);
            let lines: Vec<&str> = ok["logs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            ok["requests"] == reqs
                && logs
                    .iter()
                    .all(|want| lines.iter().any(|l| l.contains(want.as_str())))
        }
    }
}

/// `cargo test` helpers: assertions that print the plugin's answer on
/// failure.
impl Harness {
    async fn guard(&self, token: Value, config: Value) -> Result<Decision, PluginError> {
        let transition = default_transition();
        let fixture = TokenFixture {
            data: Some(token),
            ..Default::default()
        };
        let g = GuardInput {
            token: build_token(&fixture, &transition, OffsetDateTime::now_utc()),
            transition,
            config,
            input: Value::Null,
            actor: None,
            fired_at: OffsetDateTime::now_utc(),
        };
        let source: Arc<dyn TokenSource> = Arc::new(MemorySource::new());
        self.plugin.evaluate(&g, source).await.map(|o| o.value)
    }

    /// Asserts the guard allows a token with `data` under `config`.
    pub async fn assert_allows(&self, data: Value, config: Value) {
        match self.guard(data.clone(), config.clone()).await {
            Ok(Decision::Allow) => {}
            other => panic!("expected allow for data {data} config {config}, got {other:?}"),
        }
    }

    /// Asserts the guard denies with `code`.
    pub async fn assert_denies(&self, data: Value, config: Value, code: &str) {
        match self.guard(data.clone(), config.clone()).await {
            Ok(Decision::Deny { code: c, .. }) if c == code => {}
            other => panic!("expected deny `{code}` for data {data} config {config}, got {other:?}"),
        }
    }

    /// Asserts the call fails with error `kind` (`timeout`, `trap`, ...).
    pub async fn assert_error(&self, data: Value, config: Value, kind: &str) {
        match self.guard(data.clone(), config.clone()).await {
            Err(e) if e.kind() == kind => {}
            other => panic!("expected error `{kind}` for data {data} config {config}, got {other:?}"),
        }
    }
}

/// Formats the per-case line: `ok   file: name (1.2 ms)`.
pub fn line(r: &CaseReport) -> String {
    let ms = Duration::from_micros(r.micros).as_secs_f64() * 1e3;
    format!(
        "{} {}: {} ({ms:.1} ms)",
        if r.passed { "ok  " } else { "FAIL" },
        r.file,
        r.name
    )
}
