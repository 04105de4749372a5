//! Host bindings generated from `wit/` (`circuit-breaker:plugin@0.2.0`)
//! and from the frozen copy of 0.1.0 in `host/lib/wit-compat/`, which the
//! host still runs (see `compat.rs`).
//!
//! The action world imports everything the guard world does plus
//! `transitions`, so its bindings own the shared interfaces and the guard
//! bindings reuse them (`with`): one host implementation serves both.

#![allow(missing_docs, unreachable_pub)]

pub(crate) mod action {
    wasmtime::component::bindgen!({
        world: "action",
        path: "../../wit",
        imports: { default: async },
        exports: { default: async },
    });
}

pub(crate) mod guard {
    wasmtime::component::bindgen!({
        world: "guard",
        path: "../../wit",
        imports: { default: async },
        exports: { default: async },
        with: {
            "circuit-breaker:plugin/types": super::action::circuit_breaker::plugin::types,
            "circuit-breaker:plugin/token-reader": super::action::circuit_breaker::plugin::token_reader,
            "circuit-breaker:plugin/log": super::action::circuit_breaker::plugin::log,
        },
    });
}

pub(crate) use action::circuit_breaker::plugin::{log, token_reader, transitions, types};

/// `circuit-breaker:plugin@0.1.x`: components built before markings.
pub(crate) mod v0_1 {
    pub(crate) mod action {
        wasmtime::component::bindgen!({
            world: "action",
            path: "wit-compat/0.1.0",
            imports: { default: async },
            exports: { default: async },
        });
    }

    pub(crate) mod guard {
        wasmtime::component::bindgen!({
            world: "guard",
            path: "wit-compat/0.1.0",
            imports: { default: async },
            exports: { default: async },
            with: {
                "circuit-breaker:plugin/types": super::action::circuit_breaker::plugin::types,
                "circuit-breaker:plugin/token-reader": super::action::circuit_breaker::plugin::token_reader,
                "circuit-breaker:plugin/log": super::action::circuit_breaker::plugin::log,
            },
        });
    }

    pub(crate) use action::circuit_breaker::plugin::{log, token_reader, transitions, types};
}
