//! Serving the API over NATS: every request gets a typed answer that fits
//! the server's `max_payload`.
//!
//! - Bodies are parsed strictly: exactly one JSON value, unknown fields
//!   refused with their path; an endpoint without arguments takes an empty
//!   body or `{}`.
//! - Error texts are escaped and bounded; the `Nats-Service-Error` header
//!   carries at most [`HEADER_TEXT`] bytes of it, never a control
//!   character.
//! - Listings and histories are cut by bytes as well as by count (their
//!   `next` cursor continues); a reply that still does not fit is replaced
//!   by a small `internal` error, logged at warn.
//! - At most [`ApiConfig::max_in_flight`] requests are in progress; the
//!   next is answered at once with `busy` (503), not queued.

use std::sync::Arc;
use tracing::Instrument;

use async_nats::HeaderMap;
use async_nats::service::{Request, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::wire::*;
use crate::engine::{Dispatcher, DispatcherConfig, FireRequest};
use crate::host::{ApplyOptions, Host, HostError};
use crate::model::{Event, Token, WorkflowDefinition};
use crate::store::Page;
use crate::text::escape_bounded;

/// The most of an error's text the `Nats-Service-Error` header carries.
pub const HEADER_TEXT: usize = 512;

/// The most the denials of an error reply carry.
const MAX_ERROR_BODY: usize = 256 << 10;

/// Room a reply leaves in `max_payload` for its headers and framing.
const REPLY_ROOM: usize = 4 << 10;

/// How the service API runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Requests in progress at once on this host; past it a request is
    /// answered `busy` at once.
    pub max_in_flight: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { max_in_flight: 1024 }
    }
}

/// What [`serve`] runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeConfig {
    /// The service API.
    pub api: ApiConfig,
    /// The action dispatcher.
    pub dispatcher: DispatcherConfig,
}

/// The running service. [`stop`](Self::stop) stops taking requests and
/// waits for those in progress.
pub struct Service {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    service: async_nats::service::Service,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// Stops taking requests, finishes those in progress, and leaves the
    /// service (it disappears from `$SRV.PING`).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let _ = self.service.stop().await;
    }
}

/// The service API and the action dispatcher, running.
#[derive(Debug)]
pub struct Serving {
    service: Service,
    dispatcher: Dispatcher,
}

impl Serving {
    /// Graceful stop: no new requests or events; those in progress finish.
    pub async fn shutdown(self) {
        self.service.stop().await;
        self.dispatcher.shutdown().await;
    }
}

/// Serves `host`: the service API on its NATS connection and the action
/// dispatcher.
pub async fn serve(host: &Host, config: ServeConfig) -> Result<Serving, HostError> {
    let service = start_service(host.clone(), config.api).await?;
    let dispatcher = Dispatcher::start(host.engine().clone(), config.dispatcher).await?;
    Ok(Serving { service, dispatcher })
}

/// What every request handler shares, whichever transport it serves.
pub(crate) struct Api {
    host: Host,
    /// The reply budget: the server's `max_payload` less room for headers.
    /// The HTTP API uses the same, so both cut pages alike.
    budget: usize,
}

impl Api {
    pub(crate) fn new(host: Host) -> Api {
        let max_payload = host.client().server_info().max_payload;
        Api {
            budget: max_payload.saturating_sub(REPLY_ROOM).max(1024),
            host,
        }
    }
}

/// Starts the service API alone for `host` on its NATS connection.
pub async fn start_service(host: Host, config: ApiConfig) -> Result<Service, HostError> {
    let prefix = format!("{}.api", host.engine().store().config().prefix);
    let service = host
        .client()
        .service_builder()
        .description("Circuit Breaker workflow host: workflows, tokens, firing, plugins")
        .start("circuit-breaker", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| HostError::Connect(format!("start service: {e}")))?;
    let group = service.group(&prefix);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let api = Arc::new(Api::new(host));
    let admission = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    for name in ENDPOINTS {
        // Named after its subject, so `$SRV.STATS` names what a client calls.
        let mut endpoint = group
            .endpoint_builder()
            .name(format!("{prefix}.{name}"))
            .add(*name)
            .await
            .map_err(|e| HostError::Connect(format!("add endpoint {name}: {e}")))?;
        let (api, admission, mut stopped) = (api.clone(), admission.clone(), stopped.clone());
        let name = *name;
        tasks.spawn(async move {
            let mut inflight = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    req = endpoint.next() => match req {
                        Some(req) => match admission.clone().try_acquire_owned() {
                            Ok(permit) => {
                                let api = api.clone();
                                inflight.spawn(async move {
                                    api.handle(name, req).await;
                                    drop(permit);
                                });
                            }
                            // Over the limit: answered now, never queued.
                            Err(_) => {
                                crate::metrics::api_busy(name, "nats");
                                let info = ErrorInfo::new(
                                    "busy",
                                    format!("the host has {} requests in progress; retry shortly", config.max_in_flight),
                                );
                                respond_error(name, &req, info).await;
                            }
                        },
                        None => break,
                    },
                }
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        });
    }
    tracing::info!(subjects = %format!("{prefix}.>"), "service API started");
    Ok(Service { stop, tasks, service })
}

/// Exactly one JSON value of type `T`: unknown fields and trailing data
/// are refused, naming where. An empty body is `{}`.
pub(crate) fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ErrorInfo> {
    let body: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        payload
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ErrorInfo::new(
            "invalid",
            format!("invalid request at `{path}`: {}", without_position(e.inner())),
        )
    })?;
    de.end().map_err(|e| {
        ErrorInfo::new(
            "invalid",
            format!("invalid request: data after the JSON value ({e})"),
        )
    })?;
    Ok(value)
}

/// serde_json's message without its " at line L column C": the path names
/// the field, and the position would differ between two spellings of the
/// same request (the HTTP API builds its JSON from the path and query), so
/// the same request gets the same answer over either transport.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(t) if e.line() > 0 => t.to_string(),
        _ => text,
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ErrorInfo> {
    serde_json::to_vec(value).map_err(|e| ErrorInfo::new("internal", format!("cannot encode reply: {e}")))
}

/// A page encoded within `budget` bytes: items are kept while they fit, and
/// `next` then points at the first one left out (`cursor` of it). A single
/// item larger than the budget is an error naming it.
fn fit_page<T: Serialize>(
    page: Page<T>,
    budget: usize,
    cursor: impl Fn(&T) -> u64,
    name: impl Fn(&T) -> String,
) -> Result<Bytes, ErrorInfo> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"{\"items\":[");
    // Room for `],"next":<u64>}`.
    let tail = 40;
    let mut next = page.next;
    for (i, item) in page.items.iter().enumerate() {
        let bytes = encode(item)?;
        if out.len() + bytes.len() + 1 + tail > budget {
            if i == 0 {
                return Err(ErrorInfo::new(
                    "internal",
                    format!(
                        "{} is {} bytes as JSON, more than a reply can carry ({budget})",
                        name(item),
                        bytes.len()
                    ),
                ));
            }
            next = Some(cursor(item));
            break;
        }
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(b"],\"next\":");
    match next {
        Some(n) => out.extend_from_slice(n.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    Ok(out.into())
}

/// The request's idempotency key: the body's, else the `Idempotency-Key`
/// header's (both given and different: `invalid`).
fn key(body: Option<String>, header: Option<&str>) -> Result<Option<String>, ErrorInfo> {
    match (body, header) {
        (Some(b), Some(h)) if b != h => Err(ErrorInfo::new(
            "invalid",
            "the idempotency_key of the body and the Idempotency-Key header differ",
        )),
        (b, h) => Ok(b.or(h.map(str::to_string))),
    }
}

/// One request to the API, from whichever transport carried it.
pub(crate) struct Call<'a> {
    /// The body: one JSON value (or empty).
    pub(crate) payload: &'a [u8],
    /// The `Idempotency-Key` header, if the transport had one.
    pub(crate) idempotency_key: Option<&'a str>,
    /// The caller's W3C `traceparent` header, if any: the request's span
    /// joins that trace. (HTTP requests run inside a span of their own that
    /// already has it, and pass `None`.)
    pub(crate) traceparent: Option<&'a str>,
}

impl Api {
    /// [`dispatch`](Self::dispatch), counted in the metrics (in flight,
    /// and by endpoint, code and `transport`).
    pub(crate) async fn answer(
        &self,
        name: &str,
        call: Call<'_>,
        transport: &str,
    ) -> Result<Bytes, ErrorInfo> {
        let m = crate::metrics::metrics();
        let span = tracing::info_span!(
            "api.request",
            otel.name = name,
            otel.kind = "server",
            endpoint = name,
            transport,
            code = tracing::field::Empty,
        );
        crate::trace::set_remote_parent(&span, call.traceparent);
        m.api_in_flight.inc();
        let r = self.dispatch(name, call).instrument(span.clone()).await;
        m.api_in_flight.dec();
        let code = match &r {
            Ok(_) => "ok",
            Err(info) => info.code.as_str(),
        };
        span.record("code", code);
        crate::metrics::api_request(name, code, transport);
        r
    }

    /// Answers one request: the reply body, or the typed error. The NATS
    /// service and the HTTP API both call this, so validation, limits and
    /// error mapping are written once.
    pub(crate) async fn dispatch(&self, name: &str, call: Call<'_>) -> Result<Bytes, ErrorInfo> {
        let host = &self.host;
        let payload = call.payload;
        let req = call.idempotency_key;
        let e = |e: HostError| ErrorInfo::from(&e);
        let ok = |v: Vec<u8>| Ok(Bytes::from(v));
        match name {
            "workflow.apply" => {
                let (def, options) = apply_request(payload)?;
                let options = ApplyOptions {
                    idempotency_key: key(options.idempotency_key, req)?,
                    ..options
                };
                ok(encode(
                    &host.apply_workflow_with(&def, &options).await.map_err(e)?,
                )?)
            }
            "workflow.get" => {
                let r: WorkflowGet = parse(payload)?;
                ok(encode(&host.get_workflow(&r.id, r.version).await.map_err(e)?)?)
            }
            "workflow.list" => {
                let NoArgs {} = parse(payload)?;
                ok(encode(&host.list_workflows().await.map_err(e)?)?)
            }
            "token.create" => {
                let r: TokenCreate = parse(payload)?;
                let k = key(r.idempotency_key, req)?;
                let t = host
                    .create_token_keyed(&r.workflow, r.id, r.data, r.metadata, r.actor, k.as_deref())
                    .await
                    .map_err(e)?;
                ok(encode(&t)?)
            }
            "token.get" => {
                let r: TokenRef = parse(payload)?;
                ok(encode(
                    &host.get_token(r.workflow.as_ref(), &r.id).await.map_err(e)?,
                )?)
            }
            "token.list" => {
                let r: TokenList = parse(payload)?;
                let limit = r.limit.unwrap_or(1000).clamp(1, 1000);
                let page = host
                    .list_tokens_bounded(&r.workflow, &r.place, r.cursor, limit, self.budget / 2)
                    .await
                    .map_err(e)?;
                fit_page(
                    page,
                    self.budget,
                    |t: &Token| t.revision,
                    |t| format!("token `{}`", t.id),
                )
            }
            "token.history" => {
                let r: TokenHistory = parse(payload)?;
                let limit = r.limit.unwrap_or(1000).clamp(1, 1000);
                let page = host
                    .history_bounded(r.workflow.as_ref(), &r.id, r.cursor, limit, self.budget / 2)
                    .await
                    .map_err(e)?;
                fit_page(
                    page,
                    self.budget,
                    |ev: &Event| ev.sequence,
                    |ev| format!("event {}", ev.sequence),
                )
            }
            "token.fire" => {
                let r: TokenFire = parse(payload)?;
                let idempotency_key = key(r.idempotency_key, req)?;
                let workflow = host
                    .resolve_workflow(r.workflow.as_ref(), &r.id)
                    .await
                    .map_err(e)?;
                let fire = FireRequest {
                    input: r.input,
                    actor: r.actor,
                    expected_revision: r.expected_revision,
                    idempotency_key,
                    ..FireRequest::new(workflow, r.id, r.transition)
                };
                ok(encode(&host.fire(fire).await.map_err(e)?)?)
            }
            "token.enabled" => {
                let r: TokenRef = parse(payload)?;
                let (token, transitions) = host.enabled(r.workflow.as_ref(), &r.id).await.map_err(e)?;
                ok(encode(&EnabledReply { token, transitions })?)
            }
            "token.complete" => {
                let r: TokenRef = parse(payload)?;
                let k = key(r.idempotency_key, req)?;
                let event_sequence = host
                    .complete_expecting(
                        r.workflow.as_ref(),
                        &r.id,
                        r.actor,
                        k.as_deref(),
                        r.expected_revision,
                    )
                    .await
                    .map_err(e)?;
                ok(encode(&CompleteReply { event_sequence })?)
            }
            "plugin.list" => {
                let NoArgs {} = parse(payload)?;
                ok(encode(&host.plugins())?)
            }
            "host.stats" => {
                let NoArgs {} = parse(payload)?;
                ok(encode(&HostStats {
                    commits: host.engine().store().writer().commit_stats().into(),
                })?)
            }
            other => Err(ErrorInfo::new("not-found", format!("no endpoint {other}"))),
        }
    }

    async fn handle(&self, name: &str, req: Request) {
        let headers = req.message.headers.as_ref();
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
        let (key, traceparent) = (header("Idempotency-Key"), header(crate::trace::TRACEPARENT));
        let call = Call {
            payload: &req.message.payload,
            idempotency_key: key.as_deref(),
            traceparent: traceparent.as_deref(),
        };
        match self.answer(name, call, "nats").await {
            Ok(body) if body.len() <= self.budget => {
                if let Err(e) = req.respond(Ok(body)).await {
                    tracing::warn!(endpoint = name, error = %e, "could not reply");
                }
            }
            Ok(body) => {
                tracing::warn!(
                    endpoint = name,
                    size = body.len(),
                    budget = self.budget,
                    "reply too large; answered with an error"
                );
                let info = ErrorInfo::new(
                    "internal",
                    format!(
                        "the reply is {} bytes, more than the server's max_payload allows",
                        body.len()
                    ),
                );
                respond_error(name, &req, info).await;
            }
            Err(info) => respond_error(name, &req, info).await,
        }
    }
}

/// The definition of a `workflow.apply` body, and its options: the body is
/// the bare definition, or `{"definition": ..., "idempotency_key"?,
/// "allow_missing_plugins"?}`.
fn apply_request(payload: &[u8]) -> Result<(WorkflowDefinition, ApplyOptions), ErrorInfo> {
    let invalid = |d: crate::model::DefinitionError| ErrorInfo::new("invalid", d);
    // The first JSON value says which form it is (what follows it is
    // refused either way).
    let wrapped = serde_json::Deserializer::from_slice(payload)
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
        .is_some_and(|v| v.get("definition").is_some());
    if !wrapped {
        return Ok((
            WorkflowDefinition::parse(payload).map_err(invalid)?,
            ApplyOptions::default(),
        ));
    }
    let r: WorkflowApply = parse(payload)?;
    let def = WorkflowDefinition::parse(r.definition.to_string().as_bytes()).map_err(invalid)?;
    Ok((
        def,
        ApplyOptions {
            idempotency_key: r.idempotency_key,
            allow_missing_plugins: r.allow_missing_plugins,
        },
    ))
}

/// Answers `req` with `info`: the body in full (bounded), the headers with
/// the code and an escaped prefix of the message.
async fn respond_error(name: &str, req: &Request, mut info: ErrorInfo) {
    tracing::debug!(endpoint = name, code = %info.code, message = %info.message, "request failed");
    // Denials are bounded one by one (by the plugin limits); many guards
    // could still add up: keep the body well within any max_payload.
    let mut dropped = 0;
    while info.denials.len() > 1 && serde_json::to_vec(&info.denials).map_or(0, |v| v.len()) > MAX_ERROR_BODY
    {
        info.denials.pop();
        dropped += 1;
    }
    if dropped > 0 {
        info.message = escape_bounded(
            &format!("{} ({dropped} more denials not shown)", info.message),
            MAX_ERROR_TEXT,
        );
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Service-Error",
        escape_bounded(&info.message, HEADER_TEXT).as_str(),
    );
    headers.insert("Nats-Service-Error-Code", info.status().to_string().as_str());
    let body = serde_json::to_vec(&ErrorBody { error: info }).unwrap_or_default();
    if let Err(e) = req.respond_with_headers(Ok(body.into()), headers).await {
        tracing::warn!(endpoint = name, error = %e, "could not reply");
    }
}
