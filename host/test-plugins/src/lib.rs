//! Paths of the plugin components built from `plugins/` by this crate's
//! build script, for tests and benchmarks.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// Every built plugin: (name, path).
pub const ALL: &[(&str, &str)] = &[
    ("amount-limit", AMOUNT_LIMIT),
    ("require-fields", REQUIRE_FIELDS),
    ("siblings-in-place", SIBLINGS_IN_PLACE),
    ("business-hours", BUSINESS_HOURS),
    ("misbehave", MISBEHAVE),
    ("auto-advance", AUTO_ADVANCE),
    ("audit-log", AUDIT_LOG),
    ("wrong-world", WRONG_WORLD),
    ("misbehave-action", MISBEHAVE_ACTION),
];

/// The Python and JavaScript plugins: (name, path).
pub const GUESTS: &[(&str, &str)] = &[
    ("py-amount-limit", PY_AMOUNT_LIMIT),
    ("py-auto-advance", PY_AUTO_ADVANCE),
    ("js-require-fields", JS_REQUIRE_FIELDS),
    ("js-auto-advance", JS_AUTO_ADVANCE),
    ("py-spin", PY_SPIN),
    ("js-hog", JS_HOG),
];

/// `amount-limit` (with `max` only) built against WIT
/// `circuit-breaker:plugin@0.1.0`, before markings: kept as a binary so the
/// host is held to loading components of the old package.
pub const V0_1_AMOUNT_LIMIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/plugin-0.1.0/amount-limit.wasm"
);

/// `auto-advance` built against WIT `circuit-breaker:plugin@0.1.0`.
pub const V0_1_AUTO_ADVANCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/plugin-0.1.0/auto-advance.wasm"
);
