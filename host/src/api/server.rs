//! Serving the API.

use async_nats::HeaderMap;
use async_nats::service::{Request, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::wire::*;
use crate::engine::FireRequest;
use crate::host::{Host, HostError};
use crate::model::WorkflowDefinition;

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

/// Starts the service API for `host` on its NATS connection.
pub async fn start_service(host: Host) -> Result<Service, HostError> {
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
    for name in ENDPOINTS {
        let mut endpoint = group
            .endpoint(*name)
            .await
            .map_err(|e| HostError::Connect(format!("add endpoint {name}: {e}")))?;
        let (host, mut stopped) = (host.clone(), stopped.clone());
        let name = *name;
        tasks.spawn(async move {
            let mut inflight = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    req = endpoint.next() => match req {
                        Some(req) => {
                            let host = host.clone();
                            inflight.spawn(async move { handle(&host, name, req).await });
                        }
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

fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ErrorInfo> {
    let body: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        payload
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ErrorInfo::new("invalid", format!("invalid request at `{path}`: {}", e.inner()))
    })
}

fn ok<T: Serialize>(value: T) -> Result<Bytes, ErrorInfo> {
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| ErrorInfo::new("internal", format!("cannot encode reply: {e}")))
}

async fn dispatch(host: &Host, name: &str, payload: &[u8]) -> Result<Bytes, ErrorInfo> {
    let e = |e: HostError| ErrorInfo::from(&e);
    match name {
        "workflow.apply" => {
            let def = WorkflowDefinition::parse(payload).map_err(|d| ErrorInfo::new("invalid", d))?;
            ok(host.apply_workflow(&def).await.map_err(e)?)
        }
        "workflow.get" => {
            let r: WorkflowGet = parse(payload)?;
            ok(host.get_workflow(&r.id, r.version).await.map_err(e)?)
        }
        "workflow.list" => ok(host.list_workflows().await.map_err(e)?),
        "token.create" => {
            let r: TokenCreate = parse(payload)?;
            ok(host
                .create_token(&r.workflow, r.id, r.data, r.metadata, r.actor)
                .await
                .map_err(e)?)
        }
        "token.get" => {
            let r: TokenRef = parse(payload)?;
            ok(host.get_token(r.workflow.as_ref(), &r.id).await.map_err(e)?)
        }
        "token.list" => {
            let r: TokenList = parse(payload)?;
            let limit = r.limit.unwrap_or(1000).clamp(1, 1000);
            ok(host
                .list_tokens(&r.workflow, &r.place, r.cursor, limit)
                .await
                .map_err(e)?)
        }
        "token.history" => {
            let r: TokenHistory = parse(payload)?;
            let limit = r.limit.unwrap_or(1000).clamp(1, 1000);
            ok(host
                .history(r.workflow.as_ref(), &r.id, r.cursor, limit)
                .await
                .map_err(e)?)
        }
        "token.fire" => {
            let r: TokenFire = parse(payload)?;
            let workflow = host
                .resolve_workflow(r.workflow.as_ref(), &r.id)
                .await
                .map_err(e)?;
            let req = FireRequest {
                input: r.input,
                actor: r.actor,
                ..FireRequest::new(workflow, r.id, r.transition)
            };
            ok(host.fire(req).await.map_err(e)?)
        }
        "token.enabled" => {
            let r: TokenRef = parse(payload)?;
            let (token, transitions) = host.enabled(r.workflow.as_ref(), &r.id).await.map_err(e)?;
            ok(EnabledReply { token, transitions })
        }
        "token.complete" => {
            let r: TokenRef = parse(payload)?;
            let event_sequence = host
                .complete(r.workflow.as_ref(), &r.id, r.actor)
                .await
                .map_err(e)?;
            ok(CompleteReply { event_sequence })
        }
        "plugin.list" => ok(host.plugins()),
        "host.stats" => ok(HostStats {
            commits: host.engine().store().writer().commit_stats().into(),
        }),
        other => Err(ErrorInfo::new("not-found", format!("no endpoint {other}"))),
    }
}

async fn handle(host: &Host, name: &str, req: Request) {
    let result = dispatch(host, name, &req.message.payload).await;
    let sent = match result {
        Ok(body) => req.respond(Ok(body)).await,
        Err(info) => {
            tracing::debug!(endpoint = name, code = %info.code, message = %info.message, "request failed");
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Service-Error", info.message.as_str());
            headers.insert("Nats-Service-Error-Code", info.status().to_string().as_str());
            let body = serde_json::to_vec(&ErrorBody { error: info }).unwrap_or_default();
            req.respond_with_headers(Ok(body.into()), headers).await
        }
    };
    if let Err(e) = sent {
        tracing::debug!(endpoint = name, error = %e, "could not reply");
    }
}
