//! Command-line parsing and the commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use opentelemetry_sdk::trace::SdkTracerProvider;

use anyhow::{Context, bail};
use cb_host::api::{
    ApiClient, ApiError, CompleteReply, EnabledReply, HostStats, TokenCreate, TokenFire, TokenHistory,
    TokenList, TokenRef, WorkflowApply, WorkflowGet,
};
use cb_host::engine::{DispatcherConfig, Fired};
use cb_host::model::{Event, Id, Metadata, StoredDefinition, Token, WorkflowDefinition};
use cb_host::plugin::{PluginInfo, PluginRuntime, RuntimeConfig};
use cb_host::store::{Page, StorageKind, StoreConfig};
use cb_host::{Host, connect};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::embedded::EmbeddedNats;
use crate::output::Out;

/// Exit codes, documented in `--help` and the README.
pub(crate) mod exit {
    pub(crate) const OK: u8 = 0;
    pub(crate) const ERROR: u8 = 1;
    pub(crate) const USAGE: u8 = 2;
    pub(crate) const DENIED: u8 = 3;
    pub(crate) const CONFLICT: u8 = 4;
    pub(crate) const NOT_FOUND: u8 = 5;
}

const AFTER_HELP: &str = "\
Exit codes: 0 ok, 1 error, 2 usage, 3 denied by a guard, 4 conflict, 5 not found.

Client commands find the server through --nats-url, else <data-dir>/nats.url
(written by `cb-host serve` when it starts its own nats-server).

Examples:
  cb-host serve --plugins target/plugins --definitions examples/workflows
  cb-host workflow apply examples/workflows/expense-approval.json
  cb-host token create expense-approval --data '{\"amount\": 120, \"owner\": \"ana\"}'
  cb-host token fire <TOKEN> submit
  cb-host demo";

#[derive(Parser, Debug)]
#[command(
    name = "cb-host",
    version,
    about = "Circuit Breaker: a workflow host with WebAssembly guards and actions, state in NATS JetStream",
    after_help = AFTER_HELP
)]
pub(crate) struct Cli {
    /// NATS server or cluster URL(s), comma separated. Without it, `serve`
    /// and `demo` start a local nats-server, and client commands read
    /// <data-dir>/nats.url.
    #[arg(long, env = "CB_NATS_URL", global = true)]
    nats_url: Option<String>,
    /// Directory for the embedded nats-server's data and URL file.
    #[arg(long, env = "CB_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Subject prefix (everything lives under <prefix>.workflows.>, the API
    /// under <prefix>.api.>).
    #[arg(long, env = "CB_PREFIX", global = true)]
    prefix: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// More log output on stderr: -v info, -vv debug (`RUST_LOG` wins).
    /// Client commands log warnings only by default, `serve` at info, and
    /// `demo` into a file it names.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Request timeout for client commands, in milliseconds.
    #[arg(long, env = "CB_TIMEOUT_MS", default_value_t = 10_000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host: service API, action dispatcher, and (without
    /// --nats-url) a local nats-server.
    ///
    /// Example: cb-host serve --plugins target/plugins --definitions examples/workflows
    Serve(ServeArgs),
    /// Apply, get and list workflow definitions.
    #[command(subcommand)]
    Workflow(WorkflowCmd),
    /// Create, read, list and fire tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// List loaded plugins, inspect and test plugin files.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// What the running host did since it started: token writes, the
    /// atomic batches they shared, and how long those waited on the server.
    Stats,
    /// The whole mission in one command: a local nats-server, example
    /// workflows and plugins, allowed and denied firings, an action, and
    /// proof that reads consume nothing.
    ///
    /// Example: make demo   (or: cb-host demo --plugins target/plugins)
    Demo(crate::demo::DemoArgs),
}

#[derive(Args, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeArgs {
    /// TOML file with any of: nats_url, data_dir, prefix, stream, replicas,
    /// storage, plugins, definitions, nats_server_bin, action_ack_wait_ms,
    /// max_in_flight, http, metrics. Flags and env win.
    #[arg(long, env = "CB_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Load every .wasm in this directory.
    #[arg(long, env = "CB_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Apply every .json definition in this directory at start.
    #[arg(long, env = "CB_DEFINITIONS")]
    definitions: Option<PathBuf>,
    /// The nats-server to start when no --nats-url is given.
    #[arg(long, env = "CB_NATS_SERVER_BIN")]
    nats_server_bin: Option<PathBuf>,
    /// JetStream stream name.
    #[arg(long, env = "CB_STREAM")]
    stream: Option<String>,
    /// Stream replicas (1 for one server, 3 for a cluster). Default: 1 with
    /// the embedded server; with --nats-url, 3 when the server is in a
    /// cluster of 3 or more, else 1.
    #[arg(long, env = "CB_REPLICAS")]
    replicas: Option<usize>,
    /// Stream storage: file or memory.
    #[arg(long, env = "CB_STORAGE")]
    storage: Option<String>,
    /// How long an action event may stay unacknowledged (e.g. its host
    /// died) before another host gets it, in milliseconds. Set when the
    /// shared consumer is first created.
    #[arg(long, env = "CB_ACTION_ACK_WAIT_MS")]
    action_ack_wait_ms: Option<u64>,
    /// Service API requests in progress at once; past it a request is
    /// answered `busy` at once. Default 1024.
    #[arg(long, env = "CB_MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,
    /// Serve the HTTP API (`/v1/...`, and `/metrics`) on this address,
    /// e.g. 127.0.0.1:8080. Off unless given.
    #[arg(long, env = "CB_HTTP")]
    http: Option<std::net::SocketAddr>,
    /// Serve only the Prometheus metrics (`/metrics`) on this address,
    /// e.g. an operators' port apart from the API's.
    #[arg(long, env = "CB_METRICS")]
    metrics: Option<std::net::SocketAddr>,
    #[arg(skip)]
    nats_url: Option<String>,
    #[arg(skip)]
    data_dir: Option<PathBuf>,
    #[arg(skip)]
    prefix: Option<String>,
}

#[derive(Subcommand, Debug)]
enum WorkflowCmd {
    /// Store a definition from a JSON file (a new version if it changed).
    ///
    /// Example: cb-host workflow apply examples/workflows/expense-approval.json
    Apply {
        file: PathBuf,
        /// A retry with the same key returns the version first stored.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Store it even if plugins it names are not loaded on the host yet.
        #[arg(long)]
        allow_missing_plugins: bool,
    },
    /// Show a definition (the latest, or --version).
    ///
    /// Example: cb-host workflow get expense-approval
    Get {
        id: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// List every workflow's latest definition.
    List,
    /// Check a definition file without storing it (no NATS needed): valid,
    /// and sound: every transition can fire and every place be marked
    /// (errors, which apply refuses), and where a run can get stuck or
    /// double a mark (warnings), each with the firings that lead there.
    /// Exits 1 on errors.
    ///
    /// Example: cb-host workflow check examples/workflows/purchase-order.json
    Check {
        file: PathBuf,
        /// Explore at most this many markings.
        #[arg(long, default_value_t = cb_host::model::DEFAULT_MAX_MARKINGS)]
        max_markings: usize,
    },
    /// Draw a workflow's net: places as circles, transitions as boxes with
    /// their guards and actions, cancel arcs dashed. From a definition file
    /// (marking the initial place), or a stored workflow by id (with the
    /// live count of tokens in each place), or one token's marking with
    /// --token.
    ///
    /// Example: cb-host workflow diagram examples/workflows/purchase-order.json --format dot | dot -Tsvg > po.svg
    Diagram {
        /// A definition file, or the id of a stored workflow.
        workflow: String,
        /// mermaid (renders on GitHub) or dot (Graphviz).
        #[arg(long, default_value = "mermaid")]
        format: cb_host::model::DiagramFormat,
        /// Show this token's marking.
        #[arg(long)]
        token: Option<String>,
    },
    /// Pin the plugins a definition file uses to the builds in a plugin
    /// directory: sets each reference's `digest` to the SHA-256 of
    /// `<DIR>/<plugin>.wasm` (no NATS needed). Prints the definition, or
    /// updates the file with --write. Run it after each rebuild: Python and
    /// JS toolchains do not build the same bytes twice.
    ///
    /// Example: cb-host workflow pin examples/workflows/expense-approval.json --plugins target/plugins --write
    Pin {
        file: PathBuf,
        #[arg(long)]
        plugins: PathBuf,
        /// Update the file in place instead of printing.
        #[arg(long)]
        write: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Create a token in the workflow's initial place.
    ///
    /// Example: cb-host token create expense-approval --data '{"amount": 120}'
    Create {
        workflow: String,
        /// Initial data (JSON; `@FILE` reads a file, `-` standard input).
        #[arg(long)]
        data: Option<String>,
        /// Metadata (a JSON object of strings; `@FILE` or `-` as for --data).
        #[arg(long)]
        metadata: Option<String>,
        /// Choose the id (default: generated).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        /// A retry with the same key returns the token first created
        /// (instead of `duplicate`): safe to repeat after a timeout.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show a token.
    ///
    /// Example: cb-host token get 0mzk3u1h2z8f1k2j3h4g5f6d7s
    Get {
        id: String,
        #[arg(long)]
        workflow: Option<String>,
    },
    /// List the tokens in a place.
    ///
    /// Example: cb-host token list expense-approval --place submitted
    List {
        workflow: String,
        #[arg(long)]
        place: String,
    },
    /// Fire a transition on a token; prints every denial if guards refuse
    /// (exit 3).
    ///
    /// Example: cb-host token fire <TOKEN> approve --input '{"note": "ok"}'
    Fire {
        id: String,
        transition: String,
        /// Input for the guards (JSON; `@FILE` reads a file, `-` standard input).
        #[arg(long)]
        input: Option<String>,
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        /// Fire only if the token is still at this revision (exit 4 if not).
        #[arg(long)]
        if_revision: Option<u64>,
        /// A retry with the same key returns the original firing: safe to
        /// repeat after a timeout.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Which transitions can fire now, and why the others cannot.
    ///
    /// Example: cb-host token enabled <TOKEN>
    Enabled {
        id: String,
        #[arg(long)]
        workflow: Option<String>,
    },
    /// A token's history: its transition and lifecycle events.
    ///
    /// Example: cb-host token history <TOKEN>
    History {
        id: String,
        #[arg(long)]
        workflow: Option<String>,
    },
    /// Complete a token: it leaves its place; its history stays.
    ///
    /// Example: cb-host token complete <TOKEN>
    Complete {
        id: String,
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        /// A retry with the same key returns the original completion.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Complete only if the token is still at this revision (else
        /// `conflict`, exit 4).
        #[arg(long)]
        if_revision: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum PluginCmd {
    /// The plugins the running host has loaded.
    List,
    /// A plugin file's world, imports, exports, WIT version and digest
    /// (no NATS needed).
    ///
    /// Example: cb-host plugin inspect target/plugins/amount-limit.wasm
    Inspect { file: PathBuf },
    /// Compile every plugin in a directory into the compile cache (no NATS
    /// needed), so a host started later loads them in milliseconds. Python
    /// and JS components take seconds each to compile.
    ///
    /// Example: cb-host plugin precompile target/plugins
    Precompile { dir: PathBuf },
    /// Run a plugin against case files (fixtures and expectations; no NATS
    /// needed), with the production runtime and limits. Prints one line per
    /// case, a diff for each failure, and `N passed, M failed`; exits 1 if
    /// any case fails.
    ///
    /// Example: cb-host plugin test target/plugins/amount-limit.wasm plugins/amount-limit/cases
    ///
    /// Example (build the crate first): cb-host plugin test plugins/amount-limit plugins/amount-limit/cases
    Test {
        /// The component (.wasm), or a plugin crate's directory: it is then
        /// built for wasm32-wasip2 (release) first.
        plugin: PathBuf,
        /// Case files, or directories of *.json case files.
        #[arg(required = true)]
        cases: Vec<PathBuf>,
        /// Only run cases whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
    },
}

/// Parses and runs; maps errors to exit codes.
pub(crate) fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    let traces = init_logging(&cli);
    let out = Out { json: cli.json };
    let result = run(cli, out);
    if let Some(provider) = traces
        && let Err(e) = provider.shutdown()
    {
        eprintln!("cb-host: flushing traces: {e}");
    }
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) if e.is::<Reported>() => ExitCode::from(exit::ERROR),
        Err(e) => {
            let code = exit_code(&e);
            if out.json {
                let body = match e.downcast_ref::<ApiError>() {
                    Some(ApiError::Service(info)) => serde_json::json!({ "error": info }),
                    _ => serde_json::json!({ "error": { "code": "error", "message": format!("{e:#}") } }),
                };
                println!("{body}");
            } else {
                out.error(&e);
            }
            ExitCode::from(code)
        }
    }
}

/// Quiet by default: a client command's output is its answer, so only
/// warnings go to stderr; `serve` logs at info; `demo` narrates on stdout
/// and logs into a file. `-v`/`-vv` raise the level, `RUST_LOG` decides
/// when set. Log lines carry their own fields, not the spans around them:
/// spans go only to the trace exporter (see [`tracer`]).
fn init_logging(cli: &Cli) -> Option<SdkTracerProvider> {
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let level = match (cli.verbose, &cli.command) {
        (0, Command::Serve(_)) => "info",
        (0, _) => "warn",
        (1, _) => "info",
        _ => "debug",
    };
    let events = |f: EnvFilter| f.and(filter_fn(|m| m.is_event()));
    let (provider, otel) = match tracer() {
        Ok(Some(provider)) => {
            use opentelemetry::trace::TracerProvider as _;
            let layer = cb_host::otel_layer(provider.tracer("cb-host"));
            (Some(provider), Some(layer))
        }
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("cb-host: traces are not exported: {e}");
            (None, None)
        }
    };
    let registry = tracing_subscriber::registry().with(otel);
    if let Command::Demo(_) = cli.command
        && std::env::var_os("RUST_LOG").is_none()
        && cli.verbose == 0
    {
        let file = crate::demo::log_file();
        if let Ok(f) = std::fs::File::create(&file) {
            let fmt = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .with_filter(events(EnvFilter::new("info")));
            registry.with(fmt).init();
            return provider;
        }
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(events(filter));
    registry.with(fmt).init();
    provider
}

/// An OTLP/HTTP (protobuf) trace exporter, when the standard OpenTelemetry
/// environment asks for one (`OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SERVICE_NAME`, default
/// `cb-host`, and the other `OTEL_*` variables as the SDK reads them).
/// Spans are batched on the exporter's own thread: a slow or absent
/// collector costs the host dropped spans, not latency.
fn tracer() -> anyhow::Result<Option<SdkTracerProvider>> {
    let set = |v: &str| std::env::var_os(v).is_some_and(|v| !v.is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("cb-host");
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter)
            .build(),
    ))
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(UsageError(_)) = e.downcast_ref::<UsageError>() {
        return exit::USAGE;
    }
    match e.downcast_ref::<ApiError>() {
        Some(ApiError::Service(info)) => match info.code.as_str() {
            "denied" => exit::DENIED,
            "conflict" | "duplicate" | "not-enabled" => exit::CONFLICT,
            "not-found" | "unknown-transition" => exit::NOT_FOUND,
            "invalid" => exit::USAGE,
            _ => exit::ERROR,
        },
        Some(ApiError::TooLarge { .. }) => exit::USAGE,
        _ => exit::ERROR,
    }
}

/// The command already printed its outcome (e.g. a failing test report):
/// exit 1 without another message.
#[derive(Debug, thiserror::Error)]
#[error("already reported")]
pub(crate) struct Reported;

/// Bad arguments found after parsing (a bad id, bad JSON): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

fn id(s: &str, what: &str) -> anyhow::Result<Id> {
    Id::new(s).map_err(|e| UsageError(format!("{what}: {e}")).into())
}

/// The text of a JSON argument: the argument itself, `@FILE` for a file's
/// contents, or `-` for standard input (arguments are capped at 128 KiB by
/// the OS; data may be larger).
fn arg_text(s: &str, what: &str) -> anyhow::Result<String> {
    let read = |r: std::io::Result<String>, from: &str| {
        r.map_err(|e| anyhow::Error::from(UsageError(format!("--{what}: cannot read {from}: {e}"))))
    };
    if s == "-" {
        let mut text = String::new();
        read(
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text),
            "stdin",
        )
    } else if let Some(path) = s.strip_prefix('@') {
        read(std::fs::read_to_string(path), path)
    } else {
        Ok(s.to_string())
    }
}

fn json_arg(s: Option<&str>, what: &str) -> anyhow::Result<serde_json::Value> {
    match s {
        None => Ok(serde_json::Value::Null),
        Some(arg) => serde_json::from_str(&arg_text(arg, what)?)
            .map_err(|e| UsageError(format!("--{what} is not valid JSON: {e}")).into()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn data_dir(cli: &Cli) -> PathBuf {
    cli.data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./.cb-host"))
}

fn prefix(cli: &Cli) -> String {
    cli.prefix.clone().unwrap_or_else(|| "cb".into())
}

/// The URL for client commands: --nats-url, else <data-dir>/nats.url.
fn client_url(cli: &Cli) -> anyhow::Result<String> {
    if let Some(u) = &cli.nats_url {
        return Ok(u.clone());
    }
    let file = data_dir(cli).join("nats.url");
    std::fs::read_to_string(&file)
        .map(|s| s.trim().to_string())
        .with_context(|| {
            format!(
                "no --nats-url given and no {} (start `cb-host serve` first, or pass --nats-url)",
                file.display()
            )
        })
}

fn run(cli: Cli, out: Out) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(args) => serve(&cli, args),
        Command::Demo(args) => crate::demo::run(&cli.nats_url, args, out),
        Command::Plugin(PluginCmd::Inspect { file }) => inspect(file, out),
        Command::Plugin(PluginCmd::Precompile { dir }) => precompile(dir, out),
        Command::Workflow(WorkflowCmd::Pin { file, plugins, write }) => pin(file, plugins, *write, out),
        Command::Workflow(WorkflowCmd::Check { file, max_markings }) => check(file, *max_markings, out),
        Command::Workflow(WorkflowCmd::Diagram {
            workflow,
            format,
            token: None,
        }) if Path::new(workflow).is_file() => {
            let def = read_definition(Path::new(workflow))?;
            print!("{}", def.diagram(*format, &cb_host::model::Overlay::Initial));
            Ok(())
        }
        Command::Plugin(PluginCmd::Test {
            plugin,
            cases,
            filter,
        }) => plugin_test(plugin, cases, filter.as_deref(), out),
        _ => {
            let rt = runtime()?;
            rt.block_on(client_command(&cli, out))
        }
    }
}

fn inspect(file: &Path, out: Out) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rt = PluginRuntime::new(RuntimeConfig::default())?;
    let info = rt.inspect(&name, &bytes).map_err(|e| UsageError(e.to_string()))?;
    out.inspection(&info);
    if let Some(problem) = &info.problem {
        return Err(UsageError(problem.clone()).into());
    }
    Ok(())
}

fn precompile(dir: &Path, out: Out) -> anyhow::Result<()> {
    use cb_host::plugin::{LoadSource, PluginRegistry};
    let rt = PluginRuntime::new(RuntimeConfig::default())?;
    let runtime = runtime()?;
    let loaded = runtime.block_on(async {
        let mut done = Vec::new();
        for path in PluginRegistry::plugin_files(dir).map_err(|e| UsageError(e.to_string()))? {
            let started = std::time::Instant::now();
            let p = rt
                .load_file_async(&path)
                .await
                .map_err(|e| UsageError(e.to_string()))?;
            done.push(serde_json::json!({
                "name": p.name(), "digest": p.digest(), "size": p.size(),
                "compiled": p.load_source() == LoadSource::Compiled,
                "ms": started.elapsed().as_secs_f64() * 1e3,
            }));
        }
        anyhow::Ok(done)
    })?;
    if out.json {
        println!("{}", serde_json::Value::Array(loaded));
    } else {
        for p in &loaded {
            println!(
                "{:<24} {:>10} bytes  {}  {:.0} ms",
                p["name"].as_str().unwrap_or(""),
                p["size"],
                if p["compiled"] == true {
                    "compiled"
                } else {
                    "cached  "
                },
                p["ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

fn read_definition(file: &Path) -> anyhow::Result<WorkflowDefinition> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(WorkflowDefinition::parse(&bytes).map_err(|e| UsageError(format!("{}: {e}", file.display())))?)
}

fn check(file: &Path, max_markings: usize, out: Out) -> anyhow::Result<()> {
    let def = read_definition(file)?;
    let report = def.check_soundness_bounded(max_markings);
    out.soundness(&def, &report);
    if !report.is_sound() {
        return Err(Reported.into());
    }
    Ok(())
}

fn pin(file: &Path, plugins: &Path, write: bool, out: Out) -> anyhow::Result<()> {
    use cb_host::plugin::digest_of;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut def =
        WorkflowDefinition::parse(&bytes).map_err(|e| UsageError(format!("{}: {e}", file.display())))?;
    let mut changed = Vec::new();
    for t in &mut def.transitions {
        for r in t.guards.iter_mut().chain(t.actions.iter_mut()) {
            let path = plugins.join(format!("{}.wasm", r.plugin));
            let wasm = std::fs::read(&path).map_err(|e| {
                UsageError(format!(
                    "plugin `{}`: cannot read {}: {e}",
                    r.plugin,
                    path.display()
                ))
            })?;
            let digest = digest_of(&wasm);
            if r.digest.as_deref() != Some(digest.as_str()) {
                changed.push(format!("{}.{}: {digest}", t.id, r.plugin));
                r.digest = Some(digest);
            }
        }
    }
    let text = serde_json::to_string_pretty(&def)? + "\n";
    if write {
        std::fs::write(file, &text).with_context(|| format!("cannot write {}", file.display()))?;
        if !out.json {
            eprintln!("{}: {} pin(s) updated", file.display(), changed.len());
            for c in &changed {
                eprintln!("  {c}");
            }
        }
    } else {
        print!("{text}");
    }
    Ok(())
}

fn plugin_test(plugin: &Path, cases: &[PathBuf], filter: Option<&str>, out: Out) -> anyhow::Result<()> {
    use cb_harness::{Harness, line};
    let harness = if plugin.is_dir() {
        Harness::build_crate(plugin)
    } else {
        Harness::load(plugin)
    }
    .map_err(|e| UsageError(e.to_string()))?;
    let files = Harness::collect(cases).map_err(|e| UsageError(e.to_string()))?;
    let rt = runtime()?;
    let mut reports = Vec::new();
    for f in &files {
        let r = rt
            .block_on(harness.run_file(f, filter))
            .map_err(|e| UsageError(e.to_string()))?;
        if !out.json {
            for c in &r {
                println!("{}", line(c));
                if !c.passed {
                    println!("       expected: {}", c.expected);
                    println!("       actual:   {}", c.actual);
                }
            }
        }
        reports.extend(r);
    }
    let failed = reports.iter().filter(|r| !r.passed).count();
    let passed = reports.len() - failed;
    if out.json {
        println!(
            "{}",
            serde_json::json!({ "passed": passed, "failed": failed, "cases": reports })
        );
    } else {
        println!("{passed} passed, {failed} failed");
    }
    if failed > 0 {
        return Err(Reported.into());
    }
    if reports.is_empty() {
        bail!("no cases ran");
    }
    Ok(())
}

/// Every item of a paged listing: asks for pages until the last one.
async fn all_pages<T>(
    mut page: impl AsyncFnMut(Option<u64>) -> Result<Page<T>, ApiError>,
) -> Result<Vec<T>, ApiError> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let p = page(cursor).await?;
        all.extend(p.items);
        match p.next {
            Some(n) => cursor = Some(n),
            None => return Ok(all),
        }
    }
}

async fn client_command(cli: &Cli, out: Out) -> anyhow::Result<()> {
    let url = client_url(cli)?;
    let client = connect(&url).await?;
    let api = ApiClient::new(client, &prefix(cli), Duration::from_millis(cli.timeout_ms));
    let wf = |s: &Option<String>| -> anyhow::Result<Option<Id>> {
        s.as_deref().map(|w| id(w, "workflow")).transpose()
    };
    match &cli.command {
        Command::Workflow(WorkflowCmd::Apply {
            file,
            idempotency_key,
            allow_missing_plugins,
        }) => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            // Validate locally for a precise error before sending.
            WorkflowDefinition::parse(&bytes).map_err(|e| UsageError(format!("{}: {e}", file.display())))?;
            let d: cb_host::Applied = if idempotency_key.is_none() && !allow_missing_plugins {
                api.call_raw("workflow.apply", bytes).await?
            } else {
                let definition: serde_json::Value = serde_json::from_slice(&bytes)?;
                api.call(
                    "workflow.apply",
                    &WorkflowApply {
                        definition,
                        idempotency_key: idempotency_key.clone(),
                        allow_missing_plugins: *allow_missing_plugins,
                    },
                )
                .await?
            };
            out.applied(&d);
        }
        Command::Workflow(WorkflowCmd::Get { id: w, version }) => {
            let d: StoredDefinition = api
                .call(
                    "workflow.get",
                    &WorkflowGet {
                        id: id(w, "workflow")?,
                        version: *version,
                    },
                )
                .await?;
            out.definition(&d);
        }
        Command::Workflow(WorkflowCmd::Diagram {
            workflow,
            format,
            token,
        }) => {
            let def = if Path::new(workflow).is_file() {
                read_definition(Path::new(workflow))?
            } else {
                let d: StoredDefinition = api
                    .call(
                        "workflow.get",
                        &WorkflowGet {
                            id: id(workflow, "workflow")?,
                            version: None,
                        },
                    )
                    .await?;
                d.definition
            };
            let overlay = match token {
                Some(t) => {
                    let t: Token = api
                        .call(
                            "token.get",
                            &TokenRef {
                                workflow: Some(def.id.clone()),
                                id: id(t, "token id")?,
                                actor: None,
                                idempotency_key: None,
                                expected_revision: None,
                            },
                        )
                        .await?;
                    cb_host::model::Overlay::Marking(t.marks())
                }
                None => {
                    let mut counts = std::collections::BTreeMap::new();
                    for place in &def.places {
                        let all: Vec<Token> = all_pages(async |cursor| {
                            let req = TokenList {
                                workflow: def.id.clone(),
                                place: place.clone(),
                                cursor,
                                limit: None,
                            };
                            api.call("token.list", &req).await
                        })
                        .await?;
                        counts.insert(place.clone(), all.len());
                    }
                    cb_host::model::Overlay::Counts(counts)
                }
            };
            print!("{}", def.diagram(*format, &overlay));
        }
        Command::Workflow(WorkflowCmd::List) => {
            let list: Vec<StoredDefinition> = api.call("workflow.list", &serde_json::json!({})).await?;
            out.definitions(&list);
        }
        Command::Token(TokenCmd::Create {
            workflow,
            data,
            metadata,
            id: tid,
            actor,
            idempotency_key,
        }) => {
            let metadata: Metadata = match metadata {
                None => Metadata::new(),
                Some(m) => serde_json::from_str(&arg_text(m, "metadata")?)
                    .map_err(|e| UsageError(format!("--metadata must be a JSON object of strings: {e}")))?,
            };
            let req = TokenCreate {
                workflow: id(workflow, "workflow")?,
                id: tid.as_deref().map(|t| id(t, "token id")).transpose()?,
                data: json_arg(data.as_deref(), "data")?,
                metadata,
                actor: actor.clone(),
                idempotency_key: idempotency_key.clone(),
            };
            let t: Token = api.call("token.create", &req).await?;
            out.token(&t);
        }
        Command::Token(TokenCmd::Get { id: t, workflow }) => {
            let t: Token = api
                .call(
                    "token.get",
                    &TokenRef {
                        workflow: wf(workflow)?,
                        id: id(t, "token id")?,
                        actor: None,
                        idempotency_key: None,
                        expected_revision: None,
                    },
                )
                .await?;
            out.token(&t);
        }
        Command::Token(TokenCmd::List { workflow, place }) => {
            let (workflow, place) = (id(workflow, "workflow")?, id(place, "place")?);
            let all: Vec<Token> = all_pages(async |cursor| {
                let req = TokenList {
                    workflow: workflow.clone(),
                    place: place.clone(),
                    cursor,
                    limit: None,
                };
                api.call("token.list", &req).await
            })
            .await?;
            out.tokens(&all);
        }
        Command::Token(TokenCmd::Fire {
            id: t,
            transition,
            input,
            workflow,
            actor,
            if_revision,
            idempotency_key,
        }) => {
            let req = TokenFire {
                workflow: wf(workflow)?,
                id: id(t, "token id")?,
                transition: id(transition, "transition")?,
                input: json_arg(input.as_deref(), "input")?,
                actor: actor.clone(),
                expected_revision: *if_revision,
                idempotency_key: idempotency_key.clone(),
            };
            let f: Fired = api.call("token.fire", &req).await?;
            out.fired(&f);
        }
        Command::Token(TokenCmd::Enabled { id: t, workflow }) => {
            let r: EnabledReply = api
                .call(
                    "token.enabled",
                    &TokenRef {
                        workflow: wf(workflow)?,
                        id: id(t, "token id")?,
                        actor: None,
                        idempotency_key: None,
                        expected_revision: None,
                    },
                )
                .await?;
            out.enabled(&r);
        }
        Command::Token(TokenCmd::History { id: t, workflow }) => {
            let (tid, workflow) = (id(t, "token id")?, wf(workflow)?);
            let all: Vec<Event> = all_pages(async |cursor| {
                let req = TokenHistory {
                    workflow: workflow.clone(),
                    id: tid.clone(),
                    cursor,
                    limit: None,
                };
                api.call("token.history", &req).await
            })
            .await?;
            out.history(&all);
        }
        Command::Token(TokenCmd::Complete {
            id: t,
            workflow,
            actor,
            idempotency_key,
            if_revision,
        }) => {
            let r: CompleteReply = api
                .call(
                    "token.complete",
                    &TokenRef {
                        workflow: wf(workflow)?,
                        id: id(t, "token id")?,
                        actor: actor.clone(),
                        idempotency_key: idempotency_key.clone(),
                        expected_revision: *if_revision,
                    },
                )
                .await?;
            out.completed(t, &r);
        }
        Command::Plugin(PluginCmd::List) => {
            let list: Vec<PluginInfo> = api.call("plugin.list", &serde_json::json!({})).await?;
            out.plugins(&list);
        }
        Command::Stats => {
            let stats: HostStats = api.call("host.stats", &serde_json::json!({})).await?;
            out.stats(&stats);
        }
        Command::Serve(_)
        | Command::Demo(_)
        | Command::Workflow(WorkflowCmd::Pin { .. } | WorkflowCmd::Check { .. })
        | Command::Plugin(
            PluginCmd::Inspect { .. } | PluginCmd::Test { .. } | PluginCmd::Precompile { .. },
        ) => {
            unreachable!()
        }
    }
    Ok(())
}

/// Settings of `serve` after merging flags/env over the config file.
fn serve_settings(cli: &Cli, args: &ServeArgs) -> anyhow::Result<ServeArgs> {
    let file: ServeArgs = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text).map_err(|e| UsageError(format!("{}: {e}", path.display())))?
        }
        None => ServeArgs::default(),
    };
    Ok(ServeArgs {
        config: args.config.clone(),
        plugins: args.plugins.clone().or(file.plugins),
        definitions: args.definitions.clone().or(file.definitions),
        nats_server_bin: args.nats_server_bin.clone().or(file.nats_server_bin),
        stream: args.stream.clone().or(file.stream),
        replicas: args.replicas.or(file.replicas),
        storage: args.storage.clone().or(file.storage),
        action_ack_wait_ms: args.action_ack_wait_ms.or(file.action_ack_wait_ms),
        max_in_flight: args.max_in_flight.or(file.max_in_flight),
        http: args.http.or(file.http),
        metrics: args.metrics.or(file.metrics),
        nats_url: cli.nats_url.clone().or(file.nats_url),
        data_dir: cli.data_dir.clone().or(file.data_dir),
        prefix: cli.prefix.clone().or(file.prefix),
    })
}

fn serve(cli: &Cli, args: &ServeArgs) -> anyhow::Result<()> {
    let s = serve_settings(cli, args)?;
    let data_dir = s.data_dir.clone().unwrap_or_else(|| PathBuf::from("./.cb-host"));
    // Start the embedded server on the main thread, before the runtime:
    // PR_SET_PDEATHSIG follows the thread that spawned the child.
    let mut embedded = match &s.nats_url {
        Some(_) => None,
        None => {
            let bin = s
                .nats_server_bin
                .clone()
                .unwrap_or_else(|| PathBuf::from("nats-server"));
            Some(EmbeddedNats::start(&bin, &data_dir)?)
        }
    };
    let url = s
        .nats_url
        .clone()
        .or_else(|| embedded.as_ref().map(|e| e.url().to_string()))
        .expect("one of both");
    let mut store = if embedded.is_some() {
        StoreConfig::development()
    } else {
        // Replicas follow the server unless --replicas says.
        StoreConfig::production().with_replicas(0)
    };
    if let Some(p) = &s.prefix {
        store.prefix = p.clone();
    }
    if let Some(st) = &s.stream {
        store.stream = st.clone();
    }
    if let Some(r) = s.replicas {
        store.replicas = r;
    }
    match s.storage.as_deref() {
        None | Some("file") => {}
        Some("memory") => store.storage = StorageKind::Memory,
        Some(other) => {
            return Err(UsageError(format!("--storage must be file or memory, not {other:?}")).into());
        }
    }
    let rt = runtime()?;
    let result = rt.block_on(async {
        // Plugins compile in the background: the API answers at once, and a
        // firing that needs a plugin still compiling waits for it.
        let mut builder = Host::builder()
            .nats_url(&url)
            .store(store)
            .load_plugins_in_background(true);
        if let Some(dir) = &s.plugins {
            builder = builder.plugin_dir(dir);
        }
        let host = builder.build().await?;
        if let Some(dir) = &s.definitions {
            for d in host.apply_dir(dir).await? {
                tracing::info!(workflow = %d.definition.id, version = d.version, "definition ready");
            }
        }
        let mut dispatcher = DispatcherConfig::default();
        if let Some(ms) = s.action_ack_wait_ms {
            dispatcher.ack_wait = Duration::from_millis(ms);
        }
        let mut api = cb_host::api::ApiConfig::default();
        if let Some(n) = s.max_in_flight {
            api.max_in_flight = n;
        }
        let max_in_flight = api.max_in_flight;
        let serving = cb_host::serve(&host, cb_host::ServeConfig { api, dispatcher }).await?;
        let mut http_servers = Vec::new();
        for (listen, metrics_only) in [(s.http, false), (s.metrics, true)] {
            if let Some(listen) = listen {
                let config = cb_host::api::HttpConfig {
                    listen,
                    max_in_flight,
                    metrics_only,
                    ..Default::default()
                };
                let server = cb_host::api::serve_http(&host, config).await?;
                tracing::info!(
                    addr = %server.local_addr(),
                    "{}",
                    if metrics_only { "metrics at /metrics" } else { "HTTP API at /v1, metrics at /metrics" }
                );
                http_servers.push(server);
            }
        }
        tracing::info!(
            nats = %cb_host::redact_credentials(&url),
            "cb-host serving; Ctrl-C or SIGTERM to stop"
        );
        // A plugin of the directory that fails to load stops the host (the
        // API answered meanwhile): it was asked to run with it.
        let failed = tokio::select! {
            _ = shutdown_signal() => None,
            r = host.plugins_loaded() => match r {
                Ok(()) => {
                    tracing::info!("every plugin loaded");
                    shutdown_signal().await;
                    None
                }
                Err(e) => Some(e),
            },
        };
        tracing::info!("shutting down: finishing requests and actions in progress");
        for server in http_servers {
            server.stop().await;
        }
        serving.shutdown().await;
        if let Some(e) = failed {
            return Err(anyhow::Error::new(e).context("a plugin failed to load"));
        }
        let commits = host.engine().store().writer().commit_stats();
        tracing::info!(
            writes = commits.writes,
            batches = commits.batches,
            writes_per_batch = format!("{:.1}", commits.writes_per_batch()),
            mean_commit_ms = format!("{:.2}", commits.mean_commit_time().as_secs_f64() * 1e3),
            "token writes committed since start"
        );
        host.client().flush().await.ok();
        anyhow::Ok(())
    });
    drop(rt);
    if let Some(e) = embedded.as_mut() {
        e.stop();
    }
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
