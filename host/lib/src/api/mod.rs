//! The NATS service API (async-nats `service`, discoverable through
//! `$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`), and the client the CLI uses.
//!
//! Endpoints live under `{prefix}.api.` (outside the stream's
//! `{prefix}.workflows.>`, so requests are never stored). Bodies are JSON.
//! An error reply carries the `Nats-Service-Error-Code` and
//! `Nats-Service-Error` headers and a JSON body
//! `{"error": {"code", "message", "denials"?}}`; see [`ErrorBody`].

mod client;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
mod openapi;
mod server;
mod wire;

pub use client::{ApiClient, ApiError};
#[cfg(feature = "http")]
pub use http::{HttpConfig, HttpServer, serve_http};
#[cfg(feature = "http")]
pub use openapi::openapi_json;
pub use server::{ApiConfig, HEADER_TEXT, ServeConfig, Service, Serving, serve, start_service};
pub use wire::{
    CommitCounters, CompleteReply, ENDPOINTS, EnabledReply, ErrorBody, ErrorInfo, HostStats, MAX_ERROR_TEXT,
    NoArgs, TokenCreate, TokenFire, TokenHistory, TokenList, TokenRef, WorkflowApply, WorkflowGet,
};
