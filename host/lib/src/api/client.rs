//! Calling the service API (what the CLI uses).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wire::{ErrorBody, ErrorInfo};

/// A failed API call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The service answered with a typed error.
    #[error("{}", .0.message)]
    Service(ErrorInfo),
    /// No service answered (none running, or wrong prefix).
    #[error(
        "no Circuit Breaker service answered on {subject}: is `cb-host serve` running against this NATS server?"
    )]
    NoService {
        /// The subject asked.
        subject: String,
    },
    /// No reply in time.
    #[error("the service did not answer {subject} within {timeout:?}")]
    Timeout {
        /// The subject asked.
        subject: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The request is larger than the server's `max_payload`: it was not
    /// sent.
    #[error(
        "the request is {size} bytes, more than the server's max_payload of {max} bytes; nothing was sent"
    )]
    TooLarge {
        /// The request's size.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// Anything else (connection lost, undecodable reply).
    #[error("{0}")]
    Other(String),
}

/// A client of the service API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    client: async_nats::Client,
    prefix: String,
    timeout: Duration,
}

impl ApiClient {
    /// A client for the service under `{prefix}.api.`.
    pub fn new(client: async_nats::Client, prefix: &str, timeout: Duration) -> Self {
        ApiClient {
            client,
            prefix: format!("{prefix}.api"),
            timeout,
        }
    }

    /// Calls `endpoint` (e.g. `token.fire`) with `body`.
    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: &B,
    ) -> Result<R, ApiError> {
        let payload = serde_json::to_vec(body).map_err(|e| ApiError::Other(e.to_string()))?;
        self.call_raw(endpoint, payload).await
    }

    /// Calls `endpoint` with a raw JSON body.
    pub async fn call_raw<R: DeserializeOwned>(
        &self,
        endpoint: &str,
        payload: Vec<u8>,
    ) -> Result<R, ApiError> {
        let subject = format!("{}.{endpoint}", self.prefix);
        let max = self.client.server_info().max_payload;
        if payload.len() > max {
            return Err(ApiError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        // The request's own timeout: the client's default (10 s) would cut
        // a longer one short.
        let request = async_nats::client::Request::new()
            .payload(payload.into())
            .timeout(Some(self.timeout));
        let fut = self.client.send_request(subject.clone(), request);
        let msg = match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => {
                return Err(ApiError::Timeout {
                    subject,
                    timeout: self.timeout,
                });
            }
            Ok(Err(e)) => {
                return Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => ApiError::NoService { subject },
                    async_nats::RequestErrorKind::TimedOut => ApiError::Timeout {
                        subject,
                        timeout: self.timeout,
                    },
                    _ => ApiError::Other(e.to_string()),
                });
            }
            Ok(Ok(m)) => m,
        };
        let is_error = msg
            .headers
            .as_ref()
            .is_some_and(|h| h.get("Nats-Service-Error-Code").is_some());
        if is_error {
            let info = serde_json::from_slice::<ErrorBody>(&msg.payload)
                .map(|b| b.error)
                .unwrap_or_else(|_| {
                    let h = msg.headers.as_ref().expect("checked");
                    ErrorInfo::new(
                        "internal",
                        h.get("Nats-Service-Error")
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                    )
                });
            return Err(ApiError::Service(info));
        }
        serde_json::from_slice(&msg.payload).map_err(|e| ApiError::Other(format!("undecodable reply: {e}")))
    }
}
