//! The compile cache: compiled components on disk, keyed by the source's
//! digest and the engine's compatibility hash, so a restart loads a plugin
//! in milliseconds instead of compiling it again (seconds for a Python or JS
//! component).

use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled artifacts live for one engine configuration.
#[derive(Debug, Clone)]
pub(super) struct CompileCache {
    dir: Option<PathBuf>,
    /// Hex of a hash of `Engine::precompile_compatibility_hash`: an artifact
    /// of another wasmtime version or configuration is never looked up.
    compat: String,
}

impl CompileCache {
    pub(super) fn new(dir: Option<PathBuf>, engine: &Engine) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache {
            dir,
            compat: format!("{:016x}", h.finish()),
        }
    }

    /// The artifact's path for `digest` (`sha256:<hex>`), if caching is on.
    pub(super) fn path(&self, digest: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let hex = digest.trim_start_matches("sha256:");
        Some(dir.join(format!("{hex}-{}.cwasm", self.compat)))
    }

    /// The cached component for `digest`, if there is a usable one.
    pub(super) fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: the artifact was written by this program's own
        // `Component::serialize` for an engine with the same compatibility
        // hash (part of the file name), under a digest of the exact source
        // bytes, and is only ever replaced whole (`persist` renames). A
        // corrupt or foreign file fails wasmtime's header checks and is
        // compiled again by the caller. The directory must be writable by
        // the host's user only (see docs/security.md).
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached component");
                None
            }
        }
    }

    /// Stores `component` for `digest`; failures are logged, not fatal.
    pub(super) fn store(&self, digest: &str, component: &Component) {
        let Some(path) = self.path(digest) else {
            return;
        };
        if let Err(e) = write_atomically(&path, component) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled component");
        }
    }
}

/// Writes a uniquely named temporary file in the cache directory, then
/// renames it over `path`: a reader never sees half a file, and two
/// threads or processes compiling the same plugin at once each write their
/// own temporary file (the last rename wins; both are the same bytes).
fn write_atomically(path: &Path, component: &Component) -> std::io::Result<()> {
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".compiling-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
