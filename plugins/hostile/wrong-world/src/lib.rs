//! Test-only: a component for another world (exports `hello`, not
//! `evaluate` or `run`).

wit_bindgen::generate!({ world: "other", path: "wit" });

struct Other;

impl Guest for Other {
    fn hello() -> String {
        "hello".into()
    }
}

export!(Other);
