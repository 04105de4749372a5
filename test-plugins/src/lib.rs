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
];
