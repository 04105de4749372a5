//! The HTTP API (feature `http`): every operation of the service API as a
//! resource under `/v1`, on axum (hyper underneath), and the Prometheus
//! metrics at `/metrics`.
//!
//! Each route turns its path, query and body into the service API's
//! request and answers through the same request layer as the NATS
//! service ([`Api::answer`]): validation, limits, page budgets and error
//! mapping are written once, so both transports give the same answer to
//! the same request. On top, HTTP's own conventions:
//!
//! - a token's revision is its strong `ETag`; `If-Match` on fire and
//!   complete is a compare-and-swap on it (`412` with the current
//!   revision when it moved);
//! - `Idempotency-Key` (the IETF draft's header) is the service API's
//!   idempotency key;
//! - errors are `application/problem+json` (RFC 9457) carrying the
//!   service API's `code`, `denials`, `findings`, `revision` and
//!   `indeterminate`; `503` answers carry `Retry-After`;
//! - pages carry their `next` cursor in the body and as a `Link: <...>;
//!   rel="next"` header;
//! - bodies are limited ([`HttpConfig::max_body`]); a bigger one is `413`;
//! - at most [`HttpConfig::max_in_flight`] requests are in progress; the
//!   next is answered `503 busy` at once.

use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, oneshot};

use super::openapi::{CompleteBody, CreateBody, FireBody, Problem};
use super::server::{Api, Call};
use super::wire::CommitCounters;
use super::wire::ErrorInfo;
use super::wire::{CompleteReply, EnabledReply, HostStats};
use crate::engine::Fired;
use crate::engine::{Denial, Enabled};
use crate::host::{Applied, Host, HostError};
use crate::model::{Event, Id, StoredDefinition, Token, WorkflowDefinition};
use crate::model::{
    EventKind, Finding, FindingCode, Grants, LimitOverrides, PluginRef, Severity, TokenState, Transition,
};
use crate::plugin::PluginInfo;
use crate::plugin::World;
use crate::store::Page;
use utoipa::OpenApi;

/// How the HTTP API runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where to listen, e.g. `127.0.0.1:8080` (port 0: any free port; see
    /// [`HttpServer::local_addr`]).
    pub listen: SocketAddr,
    /// The largest request body, in bytes (`413` past it).
    pub max_body: usize,
    /// Requests in progress at once; past it a request is answered `503
    /// busy` at once.
    pub max_in_flight: usize,
    /// Serve only `/metrics` (e.g. on an operator-only address).
    pub metrics_only: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body: 4 << 20,
            max_in_flight: 1024,
            metrics_only: false,
        }
    }
}

/// The running HTTP server. [`stop`](Self::stop) stops accepting and
/// waits for the requests in progress.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful stop.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

struct Http {
    api: Api,
    admission: Arc<Semaphore>,
    max_in_flight: usize,
}

type Shared = State<Arc<Http>>;

/// A refusal answered before the request reaches the API (boxed: a
/// `Response` is large).
type Refused = Box<Response>;

/// Serves the HTTP API (and `/metrics`) for `host` on `config.listen`.
pub async fn serve_http(host: &Host, config: HttpConfig) -> Result<HttpServer, HostError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| HostError::Io(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| HostError::Io(format!("listening on {}: {e}", config.listen)))?;
    let state = Arc::new(Http {
        api: Api::new(host.clone()),
        admission: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
        max_in_flight: config.max_in_flight.max(1),
    });
    let mut app = Router::new().route("/metrics", get(metrics));
    if !config.metrics_only {
        app = app
            .route("/v1/workflows", get(list_workflows))
            .route("/v1/workflows/{id}", get(get_workflow).put(apply_workflow))
            .route("/v1/workflows/{wf}/tokens", post(create_token))
            .route("/v1/workflows/{wf}/places/{place}/tokens", get(list_tokens))
            .route("/v1/tokens/{id}", get(get_token))
            .route("/v1/tokens/{id}/history", get(history))
            .route("/v1/tokens/{id}/transitions", get(enabled))
            .route("/v1/tokens/{id}/transitions/{transition}", post(fire))
            .route("/v1/tokens/{id}/complete", post(complete))
            .route("/v1/plugins", get(plugins))
            .route("/v1/stats", get(stats))
            .route("/v1/openapi.json", get(openapi_json));
    }
    let app = app
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(config.max_body))
        .layer(axum::middleware::from_fn(traced))
        .with_state(state);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    tracing::info!(%addr, metrics_only = config.metrics_only, "HTTP API started");
    Ok(HttpServer { addr, stop, task })
}

/// Runs each request in an `http.request` span (a child of the caller's
/// `traceparent`, if it sent one) that records the route and the status.
async fn traced(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let traceparent = req
        .headers()
        .get(crate::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    crate::trace::set_remote_parent(&span, traceparent);
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", i64::from(response.status().as_u16()));
    response
}

/// An RFC 9457 problem document for `info`.
fn problem(info: &ErrorInfo, status: StatusCode) -> Response {
    let mut body = Map::new();
    body.insert(
        "type".into(),
        json!(format!("urn:circuit-breaker:error:{}", info.code)),
    );
    body.insert("title".into(), json!(info.code));
    body.insert("status".into(), json!(status.as_u16()));
    body.insert("detail".into(), json!(info.message));
    body.insert("code".into(), json!(info.code));
    if let Ok(Value::Object(rest)) = serde_json::to_value(info) {
        for (k, v) in rest {
            if !matches!(k.as_str(), "code" | "message") {
                body.insert(k, v);
            }
        }
    }
    let mut response = (status, Value::Object(body).to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn status_of(info: &ErrorInfo) -> StatusCode {
    StatusCode::from_u16(info.status() as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn invalid(message: impl ToString) -> Response {
    let info = ErrorInfo::new("invalid", message);
    problem(&info, StatusCode::BAD_REQUEST)
}

/// A JSON reply, with the `ETag` of `revision`.
fn json_reply(status: StatusCode, body: Bytes, revision: Option<u64>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(r) = revision
        && let Ok(v) = HeaderValue::from_str(&format!("\"{r}\""))
    {
        headers.insert(header::ETAG, v);
    }
    response
}

/// The revision in a reply body at `pointer` (e.g. `/revision`).
fn revision_at(body: &[u8], pointer: &str) -> Option<u64> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .pointer(pointer)?
        .as_u64()
}

/// `If-Match: "<revision>"` (strong), `*` or absent: the expected revision.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Refused> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            Box::new(invalid(
                "If-Match takes one strong ETag of a token revision, e.g. \"42\", or *",
            ))
        })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Refused> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => match v.to_str() {
            // The draft sends the key as a structured-field string
            // ("..."); a bare token is accepted too.
            Ok(s) => Ok(Some(s.trim().trim_matches('"').to_string())),
            Err(_) => Err(Box::new(invalid("Idempotency-Key must be visible ASCII"))),
        },
    }
}

/// The request body as a JSON object (empty: `{}`), exactly one value.
fn body_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, Refused> {
    let body = body.map_err(|e| {
        let status = e.status();
        let info = ErrorInfo::new("invalid", format!("request body: {e}"));
        Box::new(problem(&info, status))
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Box::new(invalid("the request body must be a JSON object"))),
        Err(e) => Err(Box::new(invalid(format!("invalid request body: {e}")))),
    }
}

/// Adds a field the path gives; the body may not give it too.
fn from_path(body: &mut Map<String, Value>, field: &str, value: &str) -> Result<(), Refused> {
    if body.contains_key(field) {
        return Err(Box::new(invalid(format!(
            "`{field}` is given by the path; leave it out of the body"
        ))));
    }
    body.insert(field.into(), Value::String(value.into()));
    Ok(())
}

impl Http {
    /// One service API call through the shared request layer, under the
    /// admission limit.
    async fn call(&self, endpoint: &str, request: Value, key: Option<&str>) -> Result<Bytes, ErrorInfo> {
        let Ok(_permit) = self.admission.try_acquire() else {
            crate::metrics::api_busy(endpoint, "http");
            return Err(ErrorInfo::new(
                "busy",
                format!(
                    "the host has {} HTTP requests in progress; retry shortly",
                    self.max_in_flight
                ),
            ));
        };
        let payload = serde_json::to_vec(&request).expect("a JSON value serializes");
        self.api
            .answer(
                endpoint,
                Call {
                    payload: &payload,
                    idempotency_key: key,
                    traceparent: None,
                },
                "http",
            )
            .await
    }

    /// [`call`](Self::call), answered as JSON (`ETag` from the reply at
    /// `etag`) or as a problem.
    async fn reply(
        &self,
        endpoint: &str,
        request: Value,
        key: Option<&str>,
        status: StatusCode,
        etag: Option<&str>,
    ) -> Response {
        match self.call(endpoint, request, key).await {
            Ok(body) => {
                let revision = etag.and_then(|p| revision_at(&body, p));
                json_reply(status, body, revision)
            }
            Err(info) => problem(&info, status_of(&info)),
        }
    }

    /// A conditional write: `If-Match` that no longer holds is `412` with
    /// the token's current revision.
    async fn conditional(
        &self,
        endpoint: &str,
        request: Value,
        key: Option<&str>,
        expected: Option<u64>,
        token: &str,
        workflow: Option<&Value>,
    ) -> Response {
        match self.call(endpoint, request, key).await {
            Ok(body) => {
                let revision = revision_at(&body, "/token/revision");
                json_reply(StatusCode::OK, body, revision)
            }
            Err(mut info) if expected.is_some() && info.code == "conflict" => {
                let mut get = json!({ "id": token });
                if let Some(w) = workflow {
                    get["workflow"] = w.clone();
                }
                info.revision = match self.call("token.get", get, None).await {
                    Ok(body) => revision_at(&body, "/revision"),
                    Err(_) => None,
                };
                info.message = format!(
                    "If-Match {}: the token is now at revision {}",
                    expected.unwrap_or_default(),
                    info.revision
                        .map_or_else(|| "unknown".to_string(), |r| r.to_string())
                );
                problem(&info, StatusCode::PRECONDITION_FAILED)
            }
            Err(info) => problem(&info, status_of(&info)),
        }
    }
}

/// `?workflow=` on the token routes.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct InWorkflow {
    workflow: Option<String>,
}

/// `?version=` on a workflow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Version {
    version: Option<u64>,
}

/// `?cursor=&limit=` (and `workflow` on history).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    cursor: Option<u64>,
    limit: Option<usize>,
    workflow: Option<String>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Refused> {
    q.map(|Query(t)| t)
        .map_err(|e| Box::new(invalid(format!("query: {}", e.body_text()))))
}

/// A page reply, with `Link: <...>; rel="next"` when there is more.
fn paged(result: Result<Bytes, ErrorInfo>, path: &str, extra: &[(&str, String)]) -> Response {
    let body = match result {
        Ok(b) => b,
        Err(info) => return problem(&info, status_of(&info)),
    };
    let next = revision_at(&body, "/next");
    let mut response = json_reply(StatusCode::OK, body, None);
    if let Some(next) = next {
        let mut q: Vec<String> = extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
        q.push(format!("cursor={next}"));
        if let Ok(v) = HeaderValue::from_str(&format!("<{path}?{}>; rel=\"next\"", q.join("&"))) {
            response.headers_mut().insert(header::LINK, v);
        }
    }
    response
}

#[utoipa::path(get, path = "/metrics", tag = "host",
    responses((status = 200, description = "Prometheus text exposition (also served alone with `metrics_only`)", content_type = "text/plain", body = String)))]
async fn metrics() -> Response {
    let mut r = crate::metrics::render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "host",
    responses((status = 200, description = "this document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(super::openapi::openapi_json);
    json_reply(StatusCode::OK, Bytes::from_static(DOC.as_bytes()), None)
}

/// The OpenAPI document: the routes above and the types they read and
/// answer with (see `openapi.rs`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Circuit Breaker",
        description = "The HTTP API of a Circuit Breaker host: workflows (Petri nets), tokens, firings guarded by sandboxed WebAssembly plugins. Every operation is also on the NATS service API, with the same answers. See docs/api.md.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        list_workflows,
        get_workflow,
        apply_workflow,
        create_token,
        get_token,
        list_tokens,
        history,
        enabled,
        fire,
        complete,
        plugins,
        stats,
        openapi_json,
        metrics,
    ),
    components(schemas(
        Id, WorkflowDefinition, Transition, PluginRef, LimitOverrides, Grants, StoredDefinition, Applied,
        Token, TokenState, Event, EventKind, Page<Token>, Page<Event>, Fired, Enabled, Denial, EnabledReply,
        CompleteReply, PluginInfo, World, HostStats, CommitCounters, Finding, FindingCode, Severity,
        CreateBody, FireBody, CompleteBody, Problem,
    )),
    tags((name = "workflows"), (name = "tokens"), (name = "host")),
)]
pub(super) struct ApiDoc;

async fn unknown_route() -> Response {
    let info = ErrorInfo::new("not-found", "no such resource (see docs/api.md)");
    problem(&info, StatusCode::NOT_FOUND)
}

#[utoipa::path(get, path = "/v1/workflows", tag = "workflows",
    responses(
        (status = 200, description = "every workflow, latest version", body = Vec<StoredDefinition>),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")
    ))]
async fn list_workflows(State(h): Shared) -> Response {
    h.reply("workflow.list", json!({}), None, StatusCode::OK, None)
        .await
}

#[utoipa::path(get, path = "/v1/workflows/{id}", tag = "workflows",
    params(("id" = Id, Path, description = "the workflow"), ("version" = Option<u64>, Query, description = "a version; the latest when absent")),
    responses(
        (status = 200, description = "the definition as stored", body = StoredDefinition),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such workflow, version or token (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")
    ))]
async fn get_workflow(
    State(h): Shared,
    Path(id): Path<String>,
    q: Result<Query<Version>, QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    h.reply(
        "workflow.get",
        json!({ "id": id, "version": q.version }),
        None,
        StatusCode::OK,
        None,
    )
    .await
}

/// `PUT /v1/workflows/{id}`: the body is the definition (its `id` must
/// be the path's).
#[utoipa::path(put, path = "/v1/workflows/{id}", tag = "workflows",
    params(("id" = Id, Path, description = "the workflow: the definition's `id`"),
        ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key returns the version first stored")),
    request_body = WorkflowDefinition,
    responses(
        (status = 200, description = "stored: the new version, with the soundness check's warnings", body = Applied),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict` or `duplicate`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "request body too large", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")
    ))]
async fn apply_workflow(
    State(h): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let def = match body_object(body) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    match def.get("id") {
        Some(Value::String(s)) if *s == id => {}
        Some(_) => return invalid(format!("the definition's `id` must be `{id}`, the path's")),
        None => return invalid("the definition has no `id`"),
    }
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    h.reply(
        "workflow.apply",
        json!({ "definition": Value::Object(def) }),
        key.as_deref(),
        StatusCode::OK,
        None,
    )
    .await
}

#[utoipa::path(post, path = "/v1/workflows/{wf}/tokens", tag = "tokens",
    params(("wf" = Id, Path, description = "the workflow"),
        ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key (and body) returns the token as first created")),
    request_body = CreateBody,
    responses(
        (status = 201, description = "created", body = Token,
            headers(("ETag" = String, description = "the revision, e.g. \"42\""), ("Location" = String, description = "/v1/tokens/{id}"))),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such workflow, version or token (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict` or `duplicate`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "request body too large", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")
    ))]
async fn create_token(
    State(h): Shared,
    Path(wf): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut req = match body_object(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Err(r) = from_path(&mut req, "workflow", &wf) {
        return *r;
    }
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let body = match h.call("token.create", Value::Object(req), key.as_deref()).await {
        Ok(b) => b,
        Err(info) => return problem(&info, status_of(&info)),
    };
    let reply: Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut r = json_reply(StatusCode::CREATED, body, reply["revision"].as_u64());
    if let Some(id) = reply["id"].as_str()
        && let Ok(v) = HeaderValue::from_str(&format!("/v1/tokens/{id}"))
    {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[utoipa::path(get, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = Id, Path, description = "the token"), ("workflow" = Option<Id>, Query, description = "its workflow, if known")),
    responses(
        (status = 200, description = "the token with its whole marking", body = Token,
            headers(("ETag" = String, description = "the revision, e.g. \"42\""))),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such workflow, version or token (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")
    ))]
async fn get_token(
    State(h): Shared,
    Path(id): Path<String>,
    q: Result<Query<InWorkflow>, QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    h.reply(
        "token.get",
        json!({ "id": id, "workflow": q.workflow }),
        None,
        StatusCode::OK,
        Some("/revision"),
    )
    .await
}

#[utoipa::path(get, path = "/v1/workflows/{wf}/places/{place}/tokens", tag = "tokens",
    params(("wf" = Id, Path, description = "the workflow"), ("place" = Id, Path, description = "the place"),
        ("cursor" = Option<u64>, Query, description = "`next` of the previous page"),
        ("limit" = Option<usize>, Query, description = "page size, 1-1000 (pages are also cut by bytes)")),
    responses(
        (status = 200, description = "every token marked there, one page", body = Page<Token>,
            headers(("Link" = String, description = "`<...?cursor=N>; rel=\"next\"` when there is more"))),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such workflow, version or token (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")
    ))]
async fn list_tokens(
    State(h): Shared,
    Path((wf, place)): Path<(String, String)>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    if q.workflow.is_some() {
        return invalid("`workflow` is given by the path");
    }
    let r = h
        .call(
            "token.list",
            json!({ "workflow": wf, "place": place, "cursor": q.cursor, "limit": q.limit }),
            None,
        )
        .await;
    let extra: Vec<(&str, String)> = q.limit.map(|l| ("limit", l.to_string())).into_iter().collect();
    paged(r, &format!("/v1/workflows/{wf}/places/{place}/tokens"), &extra)
}

#[utoipa::path(get, path = "/v1/tokens/{id}/history", tag = "tokens",
    params(("id" = Id, Path, description = "the token"), ("workflow" = Option<Id>, Query, description = "its workflow, if known"),
        ("cursor" = Option<u64>, Query, description = "`next` of the previous page"),
        ("limit" = Option<usize>, Query, description = "page size, 1-1000")),
    responses(
        (status = 200, description = "its events, oldest first, one page", body = Page<Event>,
            headers(("Link" = String, description = "`<...?cursor=N>; rel=\"next\"` when there is more"))),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such workflow, version or token (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")
    ))]
async fn history(
    State(h): Shared,
    Path(id): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let r = h
        .call(
            "token.history",
            json!({ "id": id, "workflow": q.workflow, "cursor": q.cursor, "limit": q.limit }),
            None,
        )
        .await;
    let mut extra: Vec<(&str, String)> = Vec::new();
    if let Some(w) = &q.workflow {
        extra.push(("workflow", w.clone()));
    }
    if let Some(l) = q.limit {
        extra.push(("limit", l.to_string()));
    }
    paged(r, &format!("/v1/tokens/{id}/history"), &extra)
}

#[utoipa::path(get, path = "/v1/tokens/{id}/transitions", tag = "tokens",
    params(("id" = Id, Path, description = "the token"), ("workflow" = Option<Id>, Query, description = "its workflow, if known")),
    responses(
        (status = 200, description = "each transition from its marking, with every guard's verdict", body = EnabledReply,
            headers(("ETag" = String, description = "the token's revision"))),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such workflow, version or token (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "a plugin failed (`plugin-error`) or `internal`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")
    ))]
async fn enabled(
    State(h): Shared,
    Path(id): Path<String>,
    q: Result<Query<InWorkflow>, QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    h.reply(
        "token.enabled",
        json!({ "id": id, "workflow": q.workflow }),
        None,
        StatusCode::OK,
        Some("/token/revision"),
    )
    .await
}

/// `POST /v1/tokens/{id}/transitions/{transition}`: body `{input?,
/// actor?, workflow?}`; `If-Match` and `Idempotency-Key` headers.
#[utoipa::path(post, path = "/v1/tokens/{id}/transitions/{transition}", tag = "tokens",
    params(("id" = Id, Path, description = "the token"), ("transition" = Id, Path, description = "the transition"),
        ("If-Match" = Option<String>, Header, description = "fire only at this revision (a strong ETag, e.g. \"42\"): `412` with the current one otherwise"),
        ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key (and body) returns the original firing")),
    request_body = FireBody,
    responses(
        (status = 200, description = "fired: the token after it", body = Fired,
            headers(("ETag" = String, description = "the token's new revision"))),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such workflow, version or token (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict` or `duplicate`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`not-enabled`, or `If-Match` no longer holds (with the current `revision`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "request body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "a guard refused (`denied`, with every denial)", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "a plugin failed (`plugin-error`) or `internal`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")
    ))]
async fn fire(
    State(h): Shared,
    Path((id, transition)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut req = match body_object(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    for (field, value) in [("id", &id), ("transition", &transition)] {
        if let Err(r) = from_path(&mut req, field, value) {
            return *r;
        }
    }
    let (expected, key) = match (if_match(&headers), idempotency_key(&headers)) {
        (Ok(e), Ok(k)) => (e, k),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    if let Some(e) = expected {
        if req.contains_key("expected_revision") {
            return invalid("give the revision in If-Match or in the body, not both");
        }
        req.insert("expected_revision".into(), json!(e));
    }
    let workflow = req.get("workflow").cloned();
    h.conditional(
        "token.fire",
        Value::Object(req),
        key.as_deref(),
        expected,
        &id,
        workflow.as_ref(),
    )
    .await
}

/// `POST /v1/tokens/{id}/complete`: body `{actor?, workflow?}`;
/// `If-Match` and `Idempotency-Key` headers.
#[utoipa::path(post, path = "/v1/tokens/{id}/complete", tag = "tokens",
    params(("id" = Id, Path, description = "the token"),
        ("If-Match" = Option<String>, Header, description = "complete only at this revision: `412` otherwise"),
        ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key returns the original `completed` event")),
    request_body = CompleteBody,
    responses(
        (status = 200, description = "completed", body = CompleteReply),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such workflow, version or token (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict` or `duplicate`", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`not-enabled`, or `If-Match` no longer holds (with the current `revision`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "request body too large", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")
    ))]
async fn complete(
    State(h): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut req = match body_object(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Err(r) = from_path(&mut req, "id", &id) {
        return *r;
    }
    let (expected, key) = match (if_match(&headers), idempotency_key(&headers)) {
        (Ok(e), Ok(k)) => (e, k),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    if let Some(e) = expected {
        req.insert("expected_revision".into(), json!(e));
    }
    let workflow = req.get("workflow").cloned();
    h.conditional(
        "token.complete",
        Value::Object(req),
        key.as_deref(),
        expected,
        &id,
        workflow.as_ref(),
    )
    .await
}

#[utoipa::path(get, path = "/v1/plugins", tag = "host",
    responses((status = 200, description = "the plugins this host has loaded", body = Vec<PluginInfo>),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")))]
async fn plugins(State(h): Shared) -> Response {
    h.reply("plugin.list", json!({}), None, StatusCode::OK, None)
        .await
}

#[utoipa::path(get, path = "/v1/stats", tag = "host",
    responses((status = 200, description = "what this host committed since it started", body = HostStats),
        (status = 400, description = "invalid request (`invalid`, `unknown-transition`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` or `busy` (with `Retry-After`)", body = Problem, content_type = "application/problem+json")))]
async fn stats(State(h): Shared) -> Response {
    h.reply("host.stats", json!({}), None, StatusCode::OK, None).await
}
