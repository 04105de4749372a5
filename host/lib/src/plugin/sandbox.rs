//! The sandbox: what a component is linked against and what each call's
//! WASI context grants (nothing).
//!
//! - WASI p2 with no preopened directories, environment, arguments,
//!   sockets or name lookups; stdin empty; stdout and stderr feed the call's
//!   log; clocks fixed to the firing's time; randomness seeded per firing.
//! - `wasi:http` is linked so components from toolchains that import it by
//!   default (componentize-js, jco) load as they come; every outgoing
//!   request is refused (`HTTP-request-denied`), as sockets are.
//! - Any other `wasi:*` interface a component imports is linked to a stub
//!   that traps if called, so an unused import does not fail the load.
//!   Imports from other packages, or of a `circuit-breaker:plugin` version
//!   this host does not implement, are refused with
//!   [`PluginError::IncompatibleInterface`] naming them.

use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceType};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx};

use super::PluginError;
use super::bindings::{action, v0_1};
use super::output::{LogPipe, SharedSink};
use super::state::CallState;

/// The `circuit-breaker:plugin` versions this host implements (semver
/// compatible: any `0.2.x`, and `0.1.x` through `compat.rs`).
pub(super) const PLUGIN_PACKAGE_VERSIONS: &[&str] = &["0.2", "0.1"];

/// The linker every component starts from: WASI (nothing granted),
/// `wasi:http` (every request refused) and the plugin interfaces.
pub(super) fn base_linker(engine: &Engine) -> Result<Linker<CallState>, PluginError> {
    let mut linker: Linker<CallState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link_error)?;
    action::Action::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |s| s).map_err(link_error)?;
    v0_1::action::Action::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |s| s).map_err(link_error)?;
    Ok(linker)
}

fn link_error(e: wasmtime::Error) -> PluginError {
    PluginError::Io {
        plugin: "<runtime>".into(),
        reason: format!("linking the plugin interface failed: {e}"),
    }
}

/// What to tell the author of a component whose `import` is refused.
fn hint(import: &str) -> &'static str {
    if import.starts_with("circuit-breaker:plugin/") {
        "rebuild the plugin against this host's wit/ (circuit-breaker:plugin@0.2.x; 0.1.x also loads)"
    } else if import.starts_with("wasi:http/") {
        "this host links wasi:http 0.2 (requests refused); componentize-js can also leave it out with `-d http fetch-event`"
    } else if import.starts_with("wasi:") {
        "this host links WASI 0.2"
    } else {
        "plugins may import only WASI and circuit-breaker:plugin interfaces"
    }
}

/// Links `component`: against the base linker, plus a trapping stub for
/// each `wasi:*` instance it imports that the host does not implement.
/// Refuses imports of any other package, and plugin-interface versions the
/// host does not implement, naming each with a hint.
pub(super) fn instantiate_pre(
    base: &Linker<CallState>,
    engine: &Engine,
    name: &str,
    component: &Component,
) -> Result<InstancePre<CallState>, PluginError> {
    let ty = component.component_type();
    let mut refused = Vec::new();
    for (import, _) in ty.imports(engine) {
        if let Some(rest) = import.strip_prefix("circuit-breaker:plugin/") {
            let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
            let known = PLUGIN_PACKAGE_VERSIONS
                .iter()
                .any(|v| version == *v || version.starts_with(&format!("{v}.")));
            if !known {
                refused.push(format!("import `{import}` ({})", hint(import)));
            }
        } else if !import.starts_with("wasi:") {
            refused.push(format!("import `{import}` ({})", hint(import)));
        }
    }
    if !refused.is_empty() {
        return Err(PluginError::IncompatibleInterface {
            plugin: name.to_string(),
            missing: refused,
        });
    }
    // Usually the base linker has everything. Otherwise each missing WASI
    // instance (named by the error; the linker matches versions by semver,
    // which `Linker::define_unknown_imports_as_traps` does not, so it would
    // shadow what the host does implement) gets a stub, and linking is
    // tried again.
    let mut linker: Option<Linker<CallState>> = None;
    let mut stubbed: Vec<String> = Vec::new();
    loop {
        let e = match linker.as_ref().unwrap_or(base).instantiate_pre(component) {
            Ok(pre) => {
                if !stubbed.is_empty() {
                    tracing::debug!(plugin = name, ?stubbed, "WASI imports linked to trapping stubs");
                }
                return Ok(pre);
            }
            Err(e) => e,
        };
        let text = format!("{e:#}");
        let missing = text
            .strip_prefix("component imports instance `")
            .and_then(|t| t.split_once('`'))
            .map(|(m, _)| m.to_string());
        let Some(missing) = missing.filter(|m| m.starts_with("wasi:") && !stubbed.contains(m)) else {
            return Err(incompatible(name, e));
        };
        let l = linker.get_or_insert_with(|| base.clone());
        stub_instance(l, engine, component, &missing).map_err(|_| incompatible(name, e))?;
        stubbed.push(missing);
    }
}

/// Defines `import` (an instance the component imports) with every
/// function trapping when called and every resource a placeholder.
fn stub_instance(
    linker: &mut Linker<CallState>,
    engine: &Engine,
    component: &Component,
    import: &str,
) -> wasmtime::Result<()> {
    let ty = component.component_type();
    let Some(ComponentItem::ComponentInstance(instance)) =
        ty.imports(engine).find(|(n, _)| *n == import).map(|(_, e)| e.ty)
    else {
        wasmtime::bail!("`{import}` is not an imported instance");
    };
    let mut stub = linker.instance(import)?;
    for (export, item) in instance.exports(engine) {
        match item.ty {
            ComponentItem::ComponentFunc(_) => {
                let full = format!("{import}#{export}");
                stub.func_new(export, move |_, _, _, _| {
                    wasmtime::bail!("`{full}` is not available to plugins")
                })?;
            }
            ComponentItem::Resource(_) => {
                stub.resource(export, ResourceType::host::<()>(), |_, _| Ok(()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Turns a linking error into the typed error, naming the import and a hint.
fn incompatible(name: &str, e: wasmtime::Error) -> PluginError {
    let text = format!("{e:#}");
    let import = text.split('`').nth(1).unwrap_or("");
    let missing = if import.is_empty() {
        text
    } else {
        format!("{text} ({})", hint(import))
    };
    PluginError::IncompatibleInterface {
        plugin: name.to_string(),
        missing: vec![missing],
    }
}

/// The WASI context of one call: nothing granted, output into the call's
/// log, clocks and randomness fixed by the firing.
pub(super) fn wasi_ctx(sink: &SharedSink, fired_at: Duration, seed: &[u8]) -> WasiCtx {
    let mut rng = SeededRng::new(seed);
    let insecure_seed = (u128::from(rng.next()) << 64) | u128::from(rng.next());
    WasiCtx::builder()
        .stdout(LogPipe::stdout(sink.clone()))
        .stderr(LogPipe::stderr(sink.clone()))
        .wall_clock(FixedClock(fired_at))
        .monotonic_clock(FixedClock(fired_at))
        .secure_random(SeededRng(rng.next()))
        .insecure_random(SeededRng(rng.next()))
        .insecure_random_seed(insecure_seed)
        .allow_ip_name_lookup(false)
        .build()
}

/// `wasi:http` hooks that refuse every outgoing request.
pub(crate) struct DenyHttp;

impl wasmtime_wasi_http::WasiHttpHooks for DenyHttp {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(std::future::ready(Err(
            wasmtime_wasi_http::Error::HttpRequestDenied,
        )))
    }
}

/// A clock stuck at the firing's time.
struct FixedClock(Duration);

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.as_nanos() as u64
    }
}

/// The plugin's randomness: SplitMix64 seeded from a SHA-256 of the
/// plugin digest and the firing, so the same firing always sees the same
/// numbers. Not cryptographic, on purpose: guards must be reproducible.
struct SeededRng(u64);

impl SeededRng {
    fn new(seed: &[u8]) -> Self {
        let h = Sha256::digest(seed);
        SeededRng(u64::from_le_bytes(h[..8].try_into().expect("8 bytes")))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl rand_core_wasi::TryRng for SeededRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.next() as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, buf: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}
