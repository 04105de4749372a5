//! The plugin test harness: run a guard or action against fixture tokens
//! and expected outcomes, with the production runtime and limits and no
//! NATS. Used by `cb-host plugin test` and from a plugin crate's `cargo test`.
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

use cb_host::model::{Id, Metadata, StoredDefinition, Token, Transition};
use cb_host::plugin::{
    ActionInput, Decision, GuardInput, Plugin, PluginError, PluginRuntime, RuntimeConfig, World,
};
use cb_host::store::{MemorySource, TokenSource};

/// What a plugin's tests name besides the harness: the types of fixtures,
/// limits and an action's follow-up requests, so a plugin crate depends on
/// this crate alone.
pub use cb_host::model::WorkflowDefinition;
pub use cb_host::plugin::{PluginLimits, TransitionRequest};

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
    /// Default: the first place of `marking`, else the transition's first
    /// input place.
    #[serde(default)]
    pub place: Option<Id>,
    /// Every place the token is marked in (after a parallel split).
    /// Default: `[place]`.
    #[serde(default)]
    pub marking: Option<Vec<Id>>,
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
        requests: Vec<TransitionRequest>,
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
    /// Building a plugin crate for `wasm32-wasip2` failed.
    #[error("building {dir} for wasm32-wasip2 failed: {message}")]
    Build {
        /// The crate directory.
        dir: String,
        /// Cargo's error output (its tail), or what else went wrong.
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
    Transition::simple(
        Id::new("t").expect("valid"),
        vec![Id::new("from").expect("valid")],
        Id::new("to").expect("valid"),
    )
}

fn build_token(f: &TokenFixture, transition: &Transition, at: OffsetDateTime) -> Token {
    let workflow_id = f
        .workflow_id
        .clone()
        .unwrap_or_else(|| Id::new("wf").expect("valid"));
    let id = f.id.clone().unwrap_or_else(|| Id::new("t1").expect("valid"));
    let marking = f.marking.clone().filter(|m| !m.is_empty());
    let place = f
        .place
        .clone()
        .or_else(|| marking.as_ref().map(|m| m[0].clone()))
        .unwrap_or_else(|| transition.inputs()[0].clone());
    let marking = marking.unwrap_or_else(|| vec![place.clone()]);
    Token {
        subject: format!("cb.workflows.{workflow_id}.places.{place}.tokens.{id}"),
        id,
        workflow_id,
        definition_version: 1,
        place,
        marking,
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

    /// Builds the plugin crate in `dir` for `wasm32-wasip2` (release) and
    /// loads the component: what a plugin's own `cargo test` calls with
    /// `env!("CARGO_MANIFEST_DIR")`. See [`build_component`].
    pub fn build_crate(dir: impl AsRef<Path>) -> Result<Self, HarnessError> {
        Self::load(&build_component(dir.as_ref(), None)?)
    }

    /// A call of the plugin, to build up and assert on: see [`Call`].
    pub fn call(&self) -> Call<'_> {
        Call {
            harness: self,
            file: CaseFile::default(),
            case: Case {
                name: "call".into(),
                config: None,
                token: None,
                transition: None,
                input: None,
                actor: None,
                fired_at: None,
                limits: None,
                event_sequence: None,
                expect: Expect::Allow,
            },
        }
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
        let source = fixture_source(&file.fixtures);
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
                    from: token.place.clone(),
                    to: transition
                        .outputs()
                        .first()
                        .unwrap_or(&transition.inputs()[0])
                        .clone(),
                    consumed: if transition.join.is_empty() {
                        vec![token.place.clone()]
                    } else {
                        transition.join.clone()
                    },
                    produced: transition.outputs().to_vec(),
                    cancelled: Vec::new(),
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

/// Builds the crate in `dir` with `cargo build --release --target
/// wasm32-wasip2` and returns the path of its component.
///
/// The build uses its own target directory: `target_dir`, else
/// `CB_HARNESS_TARGET_DIR`, else `cb-harness/` inside the crate's usual
/// target directory (a `cargo test` that calls this holds the lock of the
/// usual one, and the wasm build must not wait on it). The outer build's
/// flags (`RUSTFLAGS`, target) are for the host and are not passed on.
pub fn build_component(dir: &Path, target_dir: Option<&Path>) -> Result<PathBuf, HarnessError> {
    let fail = |message: String| HarnessError::Build {
        dir: dir.display().to_string(),
        message,
    };
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(fail(format!("no Cargo.toml in {}", dir.display())));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = match target_dir
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CB_HARNESS_TARGET_DIR").map(PathBuf::from))
    {
        Some(d) => d,
        None => {
            let out = clean_cargo(&cargo)
                .args([
                    "metadata",
                    "--no-deps",
                    "--format-version",
                    "1",
                    "--manifest-path",
                ])
                .arg(&manifest)
                .output()
                .map_err(|e| fail(format!("cannot run cargo: {e}")))?;
            if !out.status.success() {
                return Err(fail(tail(&out.stderr)));
            }
            let meta: Value = serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
            PathBuf::from(meta["target_directory"].as_str().unwrap_or("target")).join("cb-harness")
        }
    };
    let out = clean_cargo(&cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .map_err(|e| fail(format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        return Err(fail(tail(&out.stderr)));
    }
    // The artifact of this crate (not of its dependencies) that is a .wasm.
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["manifest_path"]
                .as_str()
                .is_some_and(|p| Path::new(p) == manifest)
        })
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|x| x == "wasm"))
        .ok_or_else(|| fail("the build produced no .wasm: is the crate a `cdylib`?".into()))
}

/// A cargo command without the outer build's host-only settings.
fn clean_cargo(cargo: &std::ffi::OsStr) -> std::process::Command {
    let mut cmd = std::process::Command::new(cargo);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The last lines of cargo's stderr: where the error is.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// What a call did, typed: the Rust face of a case's `actual`.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    /// The guard allowed.
    Allow,
    /// The guard denied.
    Deny {
        /// Denial code.
        code: String,
        /// Denial message.
        message: String,
        /// Denial details (JSON).
        details: Value,
    },
    /// The action finished with these follow-up requests and log lines.
    Ok {
        /// Requests, in order.
        requests: Vec<TransitionRequest>,
        /// Log lines.
        logs: Vec<String>,
    },
    /// The call failed: `kind` as in [`PluginError::kind`].
    Error {
        /// `timeout`, `out-of-fuel`, `memory-limit`, `trap`, ...
        kind: String,
        /// The error's text (names the plugin and the limit).
        message: String,
    },
}

impl CallOutcome {
    fn from_json(v: &Value) -> CallOutcome {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        if v == "allow" {
            CallOutcome::Allow
        } else if let Some(d) = v.get("deny") {
            CallOutcome::Deny {
                code: s(&d["code"]),
                message: s(&d["message"]),
                details: d["details"].clone(),
            }
        } else if let Some(ok) = v.get("ok") {
            CallOutcome::Ok {
                requests: serde_json::from_value(ok["requests"].clone()).unwrap_or_default(),
                logs: serde_json::from_value(ok["logs"].clone()).unwrap_or_default(),
            }
        } else {
            CallOutcome::Error {
                kind: s(&v["error"]),
                message: s(&v["message"]),
            }
        }
    }
}

/// One call of the plugin under test, built up in Rust: the `cargo test`
/// face of a case. Defaults are those of case files (token `t1` of
/// workflow `wf` in the transition's first `from` place, transition
/// `t: from -> to`, firing time now, production limits).
///
/// ```no_run
/// # async fn f(h: &cb_harness::Harness) {
/// use serde_json::json;
/// h.call().config(json!({"max": 10})).data(json!({"amount": 5})).assert_allows().await;
/// h.call().config(json!({"max": 10})).data(json!({"amount": 50}))
///     .assert_denies("amount-over-limit").await;
/// # }
/// ```
#[must_use = "a call does nothing until it is run or asserted"]
pub struct Call<'h> {
    harness: &'h Harness,
    file: CaseFile,
    case: Case,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("case", &self.case).finish()
    }
}

impl<'h> Call<'h> {
    /// The plugin's config.
    pub fn config(mut self, config: Value) -> Self {
        self.case.config = Some(config);
        self
    }

    /// The data of the token under test.
    pub fn data(mut self, data: Value) -> Self {
        self.case.token.get_or_insert_with(Default::default).data = Some(data);
        self
    }

    /// The whole token under test.
    pub fn token(mut self, token: TokenFixture) -> Self {
        self.case.token = Some(token);
        self
    }

    /// The transition being fired.
    pub fn transition(mut self, transition: Transition) -> Self {
        self.case.transition = Some(transition);
        self
    }

    /// The caller's input.
    pub fn input(mut self, input: Value) -> Self {
        self.case.input = Some(input);
        self
    }

    /// The actor.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.case.actor = Some(actor.into());
        self
    }

    /// The firing time (the guest's wall clock).
    pub fn fired_at(mut self, at: OffsetDateTime) -> Self {
        self.case.fired_at = Some(at);
        self
    }

    /// Limits instead of the production defaults.
    pub fn limits(mut self, limits: PluginLimits) -> Self {
        self.case.limits = Some(limits);
        self
    }

    /// For actions: the event sequence the action runs for.
    pub fn event_sequence(mut self, seq: u64) -> Self {
        self.case.event_sequence = Some(seq);
        self
    }

    /// A token the plugin's `token-reader` serves.
    pub fn fixture_token(mut self, token: TokenFixture) -> Self {
        self.file.fixtures.tokens.push(token);
        self
    }

    /// A workflow definition the plugin's `token-reader` serves (version 1).
    pub fn fixture_workflow(mut self, definition: WorkflowDefinition) -> Self {
        self.file.fixtures.workflows.push(definition);
        self
    }

    /// Runs the call.
    pub async fn run(self) -> CallOutcome {
        let source = fixture_source(&self.file.fixtures);
        let report = self.harness.run_case(&self.file, &self.case, source).await;
        CallOutcome::from_json(&report.actual)
    }

    /// Asserts the guard allows.
    pub async fn assert_allows(self) {
        let what = format!("{:?}", self.case);
        match self.run().await {
            CallOutcome::Allow => {}
            other => panic!("expected allow for {what}\n got {other:?}"),
        }
    }

    /// Asserts the guard denies with `code`; returns the message and details
    /// for further checks.
    pub async fn assert_denies(self, code: &str) -> (String, Value) {
        let what = format!("{:?}", self.case);
        match self.run().await {
            CallOutcome::Deny {
                code: c,
                message,
                details,
            } if c == code => (message, details),
            other => panic!("expected deny `{code}` for {what}\n got {other:?}"),
        }
    }

    /// Asserts the call fails with error `kind` (`timeout`, `trap`, ...);
    /// returns the error text.
    pub async fn assert_error(self, kind: &str) -> String {
        let what = format!("{:?}", self.case);
        match self.run().await {
            CallOutcome::Error { kind: k, message } if k == kind => message,
            other => panic!("expected error `{kind}` for {what}\n got {other:?}"),
        }
    }

    /// Asserts the action succeeds with exactly `requests`; returns its log
    /// lines.
    pub async fn assert_requests(self, requests: &[TransitionRequest]) -> Vec<String> {
        let what = format!("{:?}", self.case);
        match self.run().await {
            CallOutcome::Ok { requests: r, logs } if r == requests => logs,
            other => panic!("expected requests {requests:?} for {what}\n got {other:?}"),
        }
    }
}

/// The in-memory `token-reader` for a set of fixtures.
fn fixture_source(fixtures: &Fixtures) -> Arc<dyn TokenSource> {
    let source = MemorySource::new();
    for w in &fixtures.workflows {
        source.insert_definition(StoredDefinition {
            version: 1,
            stored_at: OffsetDateTime::UNIX_EPOCH,
            definition: w.clone(),
        });
    }
    let now = OffsetDateTime::now_utc();
    for (i, f) in fixtures.tokens.iter().enumerate() {
        let mut t = build_token(f, &default_transition(), now);
        if f.revision.is_none() {
            t.revision = 100 + i as u64;
        }
        source.insert_token(t);
    }
    Arc::new(source)
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
