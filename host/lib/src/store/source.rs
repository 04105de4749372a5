//! The read-only view of workflow state that plugins are given.

use std::future::Future;
use std::pin::Pin;

use super::{Page, StoreError, StoreReader};
use crate::model::{Id, StoredDefinition, Token};

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a plugin's `token-reader` import is served from: get a token, list a
/// place, get a workflow. Read-only by construction: there is no method that
/// writes, acknowledges or consumes.
///
/// Implemented by the JetStream [`StoreReader`] and by the plugin test
/// harness's in-memory fixtures; a shared conformance test runs against both.
///
/// A plugin call takes an `Arc<dyn TokenSource>` and nothing else from
/// storage, and the writer is not a `TokenSource`, so no plugin can be given
/// a way to write. This does not compile:
///
/// ```compile_fail
/// fn serve_plugins_from<T: cb_host::store::TokenSource>(_: T) {}
/// fn try_it(writer: cb_host::store::StoreWriter) {
///     serve_plugins_from(writer);
/// }
/// ```
///
/// while the reader does:
///
/// ```
/// fn serve_plugins_from<T: cb_host::store::TokenSource>(_: T) {}
/// fn try_it(reader: cb_host::store::StoreReader) {
///     serve_plugins_from(reader);
/// }
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// The live token `token` of `workflow`.
    fn get_token<'a>(&'a self, workflow: &'a Id, token: &'a Id) -> BoxFuture<'a, Result<Token, StoreError>>;

    /// One page of the tokens in `place`, in storage order: at most `limit`
    /// tokens and, past the first, about `max_bytes` of stored data (the
    /// source asks storage for no more than that).
    fn list_place<'a>(
        &'a self,
        workflow: &'a Id,
        place: &'a Id,
        cursor: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Page<Token>, StoreError>>;

    /// The latest definition of `workflow`.
    fn get_definition<'a>(&'a self, workflow: &'a Id) -> BoxFuture<'a, Result<StoredDefinition, StoreError>>;
}

impl TokenSource for StoreReader {
    fn get_token<'a>(&'a self, workflow: &'a Id, token: &'a Id) -> BoxFuture<'a, Result<Token, StoreError>> {
        Box::pin(StoreReader::get_token(self, workflow, token))
    }

    fn list_place<'a>(
        &'a self,
        workflow: &'a Id,
        place: &'a Id,
        cursor: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Page<Token>, StoreError>> {
        Box::pin(StoreReader::list_place_bounded(
            self, workflow, place, cursor, limit, max_bytes,
        ))
    }

    fn get_definition<'a>(&'a self, workflow: &'a Id) -> BoxFuture<'a, Result<StoredDefinition, StoreError>> {
        Box::pin(StoreReader::get_definition(self, workflow))
    }
}
