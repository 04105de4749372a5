//! The HTTP API's OpenAPI 3.1 document, generated (utoipa) from the types
//! the API reads and answers with and from the route annotations in
//! `http.rs`. Served at `/v1/openapi.json`; `docs/openapi.json` is a copy a
//! test keeps equal to it.
//!
//! Most bodies are the service API's own types. The few HTTP bodies that
//! differ (a field moved into the path or a header) are declared here, and
//! a test checks each against the service type it stands for, so neither
//! drifts from the other.

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::OpenApi;

use crate::engine::Denial;
use crate::model::{Finding, Id};

/// `POST /v1/workflows/{wf}/tokens`: [`super::TokenCreate`] without
/// `workflow` (the path) and `idempotency_key` (the `Idempotency-Key`
/// header).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only: the body goes to the shared layer as JSON
pub(crate) struct CreateBody {
    /// The token id; generated when absent.
    id: Option<Id>,
    /// Initial data.
    data: Value,
    /// Initial metadata.
    metadata: BTreeMap<String, String>,
    /// Who creates it.
    actor: Option<String>,
}

/// `POST /v1/tokens/{id}/transitions/{t}`: [`super::TokenFire`] without
/// `id` and `transition` (the path) and `idempotency_key` (the header).
/// `expected_revision` may instead come as `If-Match`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct FireBody {
    /// The workflow, if known (saves a lookup).
    workflow: Option<Id>,
    /// Input for the guards.
    input: Value,
    /// Who fires.
    actor: Option<String>,
    /// Fire only at this revision (or send `If-Match: "<revision>"`).
    expected_revision: Option<u64>,
}

/// `POST /v1/tokens/{id}/complete`: [`super::TokenRef`] without `id` (the
/// path) and `idempotency_key` (the header).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct CompleteBody {
    /// The workflow, if known.
    workflow: Option<Id>,
    /// Who completes it.
    actor: Option<String>,
    /// Complete only at this revision (or send `If-Match`).
    expected_revision: Option<u64>,
}

/// An error, as RFC 9457 `application/problem+json`: the standard members
/// plus the service API's [`super::ErrorInfo`] (`code` and, where they
/// apply, `denials`, `indeterminate`, `revision`, `findings`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Problem {
    /// `urn:circuit-breaker:error:<code>`.
    #[schema(rename = "type")]
    kind: String,
    /// The code again, for RFC 9457 clients.
    title: String,
    /// The HTTP status.
    status: u16,
    /// For people: escaped and bounded.
    detail: String,
    /// Stable kind: `invalid`, `not-found`, `unknown-transition`,
    /// `not-enabled`, `denied`, `conflict`, `duplicate`, `plugin-error`,
    /// `unavailable`, `busy`, `internal`.
    code: String,
    /// Every denial, for `denied`.
    denials: Option<Vec<Denial>>,
    /// For `unavailable`: the write's outcome is unknown; retry with the
    /// same `Idempotency-Key`.
    indeterminate: Option<bool>,
    /// For `conflict`, `duplicate` and `412`: the token's current revision.
    revision: Option<u64>,
    /// For an `invalid` definition: what the soundness check found.
    findings: Option<Vec<Finding>>,
}

/// The OpenAPI 3.1 document of the HTTP API, as pretty-printed JSON (what
/// `/v1/openapi.json` serves and `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut doc = super::http::ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut text = doc.to_pretty_json().expect("the document serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::PartialSchema;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;

    use super::*;
    use crate::api::wire::{ErrorInfo, TokenCreate, TokenFire, TokenRef};

    fn properties<T: PartialSchema>() -> BTreeSet<String> {
        match T::schema() {
            RefOr::T(Schema::Object(o)) => o.properties.keys().cloned().collect(),
            other => panic!("not an object schema: {}", serde_json::to_string(&other).unwrap()),
        }
    }

    fn without(mut set: BTreeSet<String>, gone: &[&str]) -> BTreeSet<String> {
        for g in gone {
            assert!(
                set.remove(*g),
                "`{g}` is not a field of the service type any more"
            );
        }
        set
    }

    #[test]
    fn http_bodies_are_the_service_types_minus_path_and_headers() {
        assert_eq!(
            properties::<CreateBody>(),
            without(properties::<TokenCreate>(), &["workflow", "idempotency_key"])
        );
        assert_eq!(
            properties::<FireBody>(),
            without(
                properties::<TokenFire>(),
                &["id", "transition", "idempotency_key"]
            )
        );
        assert_eq!(
            properties::<CompleteBody>(),
            without(properties::<TokenRef>(), &["id", "idempotency_key"])
        );
        let problem = properties::<Problem>();
        let info = without(properties::<ErrorInfo>(), &["message"]);
        assert!(
            info.is_subset(&problem),
            "a problem carries every ErrorInfo field: {info:?} vs {problem:?}"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_and_names_every_route() {
        let doc: Value = serde_json::from_str(&openapi_json()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths: BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for p in [
            "/v1/workflows",
            "/v1/workflows/{id}",
            "/v1/workflows/{wf}/tokens",
            "/v1/workflows/{wf}/places/{place}/tokens",
            "/v1/tokens/{id}",
            "/v1/tokens/{id}/history",
            "/v1/tokens/{id}/transitions",
            "/v1/tokens/{id}/transitions/{transition}",
            "/v1/tokens/{id}/complete",
            "/v1/plugins",
            "/v1/stats",
            "/v1/openapi.json",
            "/metrics",
        ] {
            assert!(paths.contains(p), "{p} is not in the document");
        }
    }
}
