//! The workflow control-flow patterns (van der Aalst, ter Hofstede,
//! Kiepuszewski, Barros; workflowpatterns.com), one test per pattern, each
//! running its example definition from `examples/patterns/` on a real host
//! against a real nats-server. Every definition applies with no soundness
//! warning; every firing the pattern describes moves the case's marking as
//! the pattern says, and every place lists the case exactly when it is
//! marked there.

mod common;

use std::path::PathBuf;

use cb_host::engine::{FireError, FireRequest, Fired};
use cb_host::model::{Event, EventKind, Id, WorkflowDefinition};
use cb_host::plugin::RuntimeConfig;
use cb_host::store::StoreError;
use cb_host::{ApplyOptions, Host, HostError};
use cb_test_support::NatsServer;
use common::*;
use serde_json::{Value, json};

/// One pattern's definition, applied on its own host and server.
struct Net {
    host: Host,
    def: WorkflowDefinition,
    _server: NatsServer,
    _plugins: tempfile::TempDir,
}

impl Net {
    async fn start(pattern: &str) -> Net {
        let path = format!("{}/examples/patterns/{pattern}.json", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let def = WorkflowDefinition::parse(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(def.id, pattern, "{path}: the id is the file's name");
        let server = NatsServer::start();
        let plugins = tempfile::tempdir().unwrap();
        let (_, wasm) = cb_test_plugins::ALL
            .iter()
            .find(|(n, _)| *n == "amount-limit")
            .expect("amount-limit is a test plugin");
        std::fs::copy(wasm, plugins.path().join("amount-limit.wasm")).unwrap();
        let host = Host::builder()
            .nats_url(server.url())
            .store(config())
            .runtime(RuntimeConfig {
                cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("patterns-cache")),
                ..Default::default()
            })
            .plugin_dir(plugins.path())
            .build()
            .await
            .unwrap();
        let applied = host
            .apply_workflow_with(&def, &ApplyOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{pattern} does not apply: {e}"));
        assert!(
            applied.warnings.is_empty(),
            "{pattern} applies with warnings: {:?}",
            applied.warnings
        );
        Net {
            host,
            def,
            _server: server,
            _plugins: plugins,
        }
    }

    fn wf(&self) -> &Id {
        &self.def.id
    }

    async fn case(&self, data: Value) -> Id {
        let t = self
            .host
            .create_token(self.wf(), None, data, Default::default(), None)
            .await
            .unwrap();
        assert_eq!(t.marks(), vec![self.def.initial_place.clone()]);
        t.id
    }

    async fn try_fire(&self, token: &Id, transition: &str) -> Result<Fired, HostError> {
        self.host
            .fire(FireRequest::new(self.wf().clone(), token.clone(), id(transition)))
            .await
    }

    async fn fire(&self, token: &Id, transition: &str) -> Fired {
        self.try_fire(token, transition)
            .await
            .unwrap_or_else(|e| panic!("{}: `{transition}` did not fire: {e}", self.wf()))
    }

    /// `transition` is refused as not enabled, and the marking is unchanged.
    async fn not_enabled(&self, token: &Id, transition: &str) {
        let before = self.marking(token).await;
        match self.try_fire(token, transition).await {
            Err(HostError::Fire(FireError::NotEnabled { marking, .. })) => {
                assert_eq!(sorted(&marking), before, "the error names the marking");
            }
            other => panic!("{}: `{transition}` should not be enabled: {other:?}", self.wf()),
        }
        assert_eq!(self.marking(token).await, before);
    }

    /// `transition` is refused by a guard with `code`.
    async fn denied(&self, token: &Id, transition: &str, code: &str) {
        match self.try_fire(token, transition).await {
            Err(HostError::Fire(FireError::Denied { denials, .. })) => {
                assert_eq!(denials.len(), 1);
                assert_eq!(denials[0].code, code);
            }
            other => panic!("{}: `{transition}` should be denied: {other:?}", self.wf()),
        }
    }

    async fn marking(&self, token: &Id) -> Vec<String> {
        let t = self.host.get_token(Some(self.wf()), token).await.unwrap();
        sorted(&t.marks())
    }

    /// The places whose listing holds `token`.
    async fn listed_in(&self, token: &Id) -> Vec<String> {
        let mut out = Vec::new();
        for place in &self.def.places {
            let page = self.host.list_tokens(self.wf(), place, None, 1000).await.unwrap();
            if page.items.iter().any(|t| t.id == *token) {
                out.push(place.to_string());
            }
        }
        out.sort();
        out
    }

    /// The case is marked in exactly `want`, by get and by listing.
    async fn at(&self, token: &Id, want: &[&str]) {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(self.marking(token).await, want, "{}: marking", self.wf());
        assert_eq!(self.listed_in(token).await, want, "{}: listings", self.wf());
    }

    /// The case completed: no longer readable or listed, its last event
    /// says so.
    async fn done(&self, token: &Id) {
        match self.host.get_token(Some(self.wf()), token).await {
            Err(HostError::Store(StoreError::NotFound(_))) => {}
            other => panic!("{}: a completed case is gone: {other:?}", self.wf()),
        }
        assert!(self.listed_in(token).await.is_empty());
        let last = self.transitions(token).await.pop().expect("events");
        assert!(matches!(last.kind, EventKind::Transition { completed: true, .. }));
    }

    async fn transitions(&self, token: &Id) -> Vec<Event> {
        let page = self
            .host
            .history(Some(self.wf()), token, None, 1000)
            .await
            .unwrap();
        page.items
            .into_iter()
            .filter(|e| matches!(e.kind, EventKind::Transition { .. }))
            .collect()
    }
}

fn sorted(ids: &[Id]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    v.sort();
    v
}

/// (transition, consumed, produced, cancelled) of a transition event,
/// every list sorted.
fn arcs(e: &Event) -> (String, Vec<String>, Vec<String>, Vec<String>) {
    match &e.kind {
        EventKind::Transition {
            transition,
            from,
            to,
            consumed,
            produced,
            cancelled,
            ..
        } => (
            transition.to_string(),
            sorted(consumed.as_deref().unwrap_or(std::slice::from_ref(from))),
            sorted(produced.as_deref().unwrap_or(std::slice::from_ref(to))),
            sorted(cancelled),
        ),
        other => panic!("not a transition: {other:?}"),
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn wcp01_sequence() {
    let n = Net::start("wcp01-sequence").await;
    let c = n.case(json!({})).await;
    n.not_enabled(&c, "ship").await;
    n.fire(&c, "check").await;
    n.at(&c, &["checked"]).await;
    n.not_enabled(&c, "check").await;
    assert!(n.fire(&c, "ship").await.completed);
    n.done(&c).await;
    let names: Vec<String> = n.transitions(&c).await.iter().map(|e| arcs(e).0).collect();
    assert_eq!(names, strs(&["check", "ship"]));
}

#[tokio::test]
async fn wcp02_parallel_split() {
    let n = Net::start("wcp02-parallel-split").await;
    let c = n.case(json!({})).await;
    let f = n.fire(&c, "accept").await;
    assert!(!f.completed);
    assert_eq!(sorted(&f.token.marking), strs(&["invoicing", "picking"]));
    n.at(&c, &["picking", "invoicing"]).await;
    // Either branch moves alone; the other stays where it is.
    n.fire(&c, "invoice").await;
    n.at(&c, &["picking", "invoiced"]).await;
    assert!(n.fire(&c, "pick").await.completed, "every mark is final");
    n.done(&c).await;
    let events = n.transitions(&c).await;
    assert_eq!(
        arcs(&events[0]),
        (
            "accept".into(),
            strs(&["ordered"]),
            strs(&["invoicing", "picking"]),
            vec![]
        )
    );
}

#[tokio::test]
async fn wcp03_synchronization() {
    let n = Net::start("wcp03-synchronization").await;
    let c = n.case(json!({})).await;
    n.fire(&c, "accept").await;
    n.fire(&c, "pick").await;
    n.not_enabled(&c, "ship").await;
    n.fire(&c, "invoice").await;
    n.at(&c, &["picked", "invoiced"]).await;
    let f = n.fire(&c, "ship").await;
    assert!(f.completed);
    assert_eq!(sorted(&f.token.marking), strs(&["shipped"]));
    n.done(&c).await;
    let events = n.transitions(&c).await;
    assert_eq!(
        arcs(events.last().unwrap()),
        (
            "ship".into(),
            strs(&["invoiced", "picked"]),
            strs(&["shipped"]),
            vec![]
        )
    );
}

#[tokio::test]
async fn wcp04_exclusive_choice() {
    let n = Net::start("wcp04-exclusive-choice").await;
    let small = n.case(json!({ "amount": 500 })).await;
    let large = n.case(json!({ "amount": 5000 })).await;
    n.denied(&small, "escalate", "amount-not-above").await;
    n.denied(&large, "approve", "amount-over-limit").await;
    assert!(n.fire(&small, "approve").await.completed);
    assert!(n.fire(&large, "escalate").await.completed);
    let (_, enabled) = {
        let third = n.case(json!({ "amount": 1000 })).await;
        n.host.enabled(Some(n.wf()), &third).await.unwrap()
    };
    // Exactly one branch is open for any amount.
    let open: Vec<String> = enabled
        .iter()
        .filter(|e| e.enabled)
        .map(|e| e.transition.to_string())
        .collect();
    assert_eq!(open, strs(&["approve"]));
}

#[tokio::test]
async fn wcp05_simple_merge() {
    let n = Net::start("wcp05-simple-merge").await;
    let fast = n.case(json!({})).await;
    let slow = n.case(json!({})).await;
    n.fire(&fast, "auto_check").await;
    n.fire(&slow, "send_to_review").await;
    n.not_enabled(&slow, "pay").await;
    n.fire(&slow, "review").await;
    for c in [&fast, &slow] {
        assert!(n.fire(c, "pay").await.completed);
        n.done(c).await;
    }
    let consumed = |events: Vec<Event>| arcs(events.last().unwrap()).1;
    assert_eq!(consumed(n.transitions(&fast).await), strs(&["fast_track"]));
    assert_eq!(consumed(n.transitions(&slow).await), strs(&["reviewed"]));
}

#[tokio::test]
async fn wcp06_multi_choice() {
    let n = Net::start("wcp06-multi-choice").await;
    let minor = n.case(json!({ "amount": 800 })).await;
    let major = n.case(json!({ "amount": 80000 })).await;
    n.denied(&minor, "major", "amount-not-above").await;
    n.denied(&major, "minor", "amount-over-limit").await;
    n.fire(&minor, "minor").await;
    n.fire(&major, "major").await;
    n.at(&minor, &["insurer"]).await;
    n.at(&major, &["insurer", "police"]).await;
    assert!(n.fire(&minor, "tell_insurer").await.completed);
    assert!(!n.fire(&major, "tell_insurer").await.completed);
    assert!(n.fire(&major, "tell_police").await.completed);
    n.done(&major).await;
}

#[tokio::test]
async fn wcp07_structured_synchronizing_merge() {
    let n = Net::start("wcp07-structured-synchronizing-merge").await;
    let minor = n.case(json!({ "amount": 800 })).await;
    n.fire(&minor, "minor").await;
    n.fire(&minor, "tell_insurer").await;
    n.not_enabled(&minor, "close_two").await;
    assert!(n.fire(&minor, "close_one").await.completed);

    let major = n.case(json!({ "amount": 80000 })).await;
    n.fire(&major, "major").await;
    n.fire(&major, "tell_insurer").await;
    // One branch done: the merge waits for the other the choice started.
    n.not_enabled(&major, "close_one").await;
    n.not_enabled(&major, "close_two").await;
    n.fire(&major, "tell_police").await;
    n.not_enabled(&major, "close_one").await;
    assert!(n.fire(&major, "close_two").await.completed);
    n.done(&major).await;
}

#[tokio::test]
async fn wcp09_structured_discriminator() {
    let n = Net::start("wcp09-structured-discriminator").await;
    let c = n.case(json!({})).await;
    n.fire(&c, "ask").await;
    n.at(&c, &["supplier_a", "supplier_b", "waiting"]).await;
    // Both quotes arrive at once: exactly one moves the case on.
    let (a, b) = tokio::join!(n.try_fire(&c, "a_first"), n.try_fire(&c, "b_first"));
    assert!(a.is_ok() != b.is_ok(), "exactly one first: {a:?} / {b:?}");
    let late = if a.is_ok() { "b_second" } else { "a_second" };
    let early_place = if a.is_ok() { "supplier_b" } else { "supplier_a" };
    n.at(&c, &["deciding", "second_due", early_place]).await;
    n.fire(&c, "decide").await;
    // The later quote is absorbed; that ends the case.
    assert!(n.fire(&c, late).await.completed);
    n.done(&c).await;
}

#[tokio::test]
async fn wcp10_arbitrary_cycles() {
    let n = Net::start("wcp10-arbitrary-cycles").await;
    let c = n.case(json!({})).await;
    for _ in 0..3 {
        n.fire(&c, "submit").await;
        n.fire(&c, "reject").await;
        n.fire(&c, "rework").await;
        n.at(&c, &["draft"]).await;
    }
    n.fire(&c, "submit").await;
    assert!(n.fire(&c, "approve").await.completed);
    assert_eq!(n.transitions(&c).await.len(), 11);
}

#[tokio::test]
async fn wcp11_implicit_termination() {
    let n = Net::start("wcp11-implicit-termination").await;
    assert!(n.def.final_places.is_empty(), "no end place is declared");
    let c = n.case(json!({})).await;
    n.fire(&c, "prepare").await;
    let f = n.fire(&c, "pack").await;
    assert!(!f.completed, "labelling is still to do");
    n.at(&c, &["labelling"]).await;
    let f = n.fire(&c, "label").await;
    assert!(f.completed, "no work left: the case is done");
    assert!(f.token.marking.is_empty());
    n.done(&c).await;
}

#[tokio::test]
async fn wcp13_multiple_instances_design_time() {
    let n = Net::start("wcp13-multiple-instances-design-time").await;
    let c = n.case(json!({})).await;
    n.fire(&c, "assign").await;
    n.at(&c, &["review_1", "review_2", "review_3"]).await;
    // The three reviewers finish at once: each firing lands (conflicts are
    // re-read and re-evaluated), none is lost.
    let (a, b, d) = tokio::join!(
        n.try_fire(&c, "review_1"),
        n.try_fire(&c, "review_2"),
        n.try_fire(&c, "review_3")
    );
    for r in [a, b, d] {
        r.unwrap();
    }
    n.at(&c, &["reviewed_1", "reviewed_2", "reviewed_3"]).await;
    assert!(n.fire(&c, "decide").await.completed);
}

#[tokio::test]
async fn wcp16_deferred_choice() {
    let n = Net::start("wcp16-deferred-choice").await;
    for _ in 0..5 {
        let c = n.case(json!({})).await;
        // The customer accepts as the timer expires: one of them wins.
        let (a, e) = tokio::join!(n.try_fire(&c, "accept"), n.try_fire(&c, "expire"));
        let (won, lost) = match (a, e) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            other => panic!("exactly one wins: {other:?}"),
        };
        assert!(won.completed);
        assert!(
            matches!(
                lost,
                HostError::Fire(FireError::NotEnabled { .. } | FireError::NotFound(_))
            ),
            "the loser sees the case moved on: {lost:?}"
        );
        assert_eq!(n.transitions(&c).await.len(), 1);
    }
}

#[tokio::test]
async fn wcp17_interleaved_parallel_routing() {
    let n = Net::start("wcp17-interleaved-parallel-routing").await;
    let c = n.case(json!({})).await;
    n.fire(&c, "open").await;
    n.fire(&c, "start_count").await;
    n.at(&c, &["audit_todo", "counting"]).await;
    // Never at once: the audit waits for the count to end.
    n.not_enabled(&c, "start_audit").await;
    n.fire(&c, "end_count").await;
    n.fire(&c, "start_audit").await;
    n.not_enabled(&c, "close").await;
    n.fire(&c, "end_audit").await;
    n.at(&c, &["audited", "counted", "free"]).await;
    assert!(n.fire(&c, "close").await.completed);
}

#[tokio::test]
async fn wcp18_milestone() {
    let n = Net::start("wcp18-milestone").await;
    let c = n.case(json!({})).await;
    n.fire(&c, "confirm").await;
    for _ in 0..2 {
        n.fire(&c, "amend").await;
        n.at(&c, &["open", "order"]).await;
    }
    assert!(n.fire(&c, "ship").await.completed);
    // Past the milestone: no amending a shipped order.
    assert!(matches!(
        n.try_fire(&c, "amend").await,
        Err(HostError::Fire(FireError::NotFound(_)))
    ));
}

#[tokio::test]
async fn wcp19_cancel_task() {
    let n = Net::start("wcp19-cancel-task").await;
    // Paid upfront while the credit check is pending: the check is withdrawn.
    let upfront = n.case(json!({})).await;
    n.fire(&upfront, "start").await;
    let f = n.fire(&upfront, "pay_upfront").await;
    assert!(f.completed);
    assert_eq!(sorted(&f.token.marking), strs(&["paid"]));
    assert_eq!(
        arcs(n.transitions(&upfront).await.last().unwrap()),
        (
            "pay_upfront".into(),
            strs(&["payment"]),
            strs(&["paid"]),
            strs(&["credit_check"])
        )
    );
    n.done(&upfront).await;
    // Credit checked first: the cancellation has nothing to clear.
    let checked = n.case(json!({})).await;
    n.fire(&checked, "start").await;
    n.fire(&checked, "check_credit").await;
    let f = n.fire(&checked, "pay_upfront").await;
    assert!(f.completed);
    assert_eq!(sorted(&f.token.marking), strs(&["credit_ok", "paid"]));
    assert!(arcs(n.transitions(&checked).await.last().unwrap()).3.is_empty());
    // Or paid on account once the credit is fine.
    let account = n.case(json!({})).await;
    n.fire(&account, "start").await;
    n.not_enabled(&account, "pay_on_account").await;
    n.fire(&account, "check_credit").await;
    assert!(n.fire(&account, "pay_on_account").await.completed);
}

#[tokio::test]
async fn wcp20_cancel_case() {
    let n = Net::start("wcp20-cancel-case").await;
    let c = n.case(json!({})).await;
    n.fire(&c, "start").await;
    n.fire(&c, "legal_check").await;
    n.at(&c, &["finance", "legal_ok"]).await;
    let f = n.fire(&c, "withdraw").await;
    assert!(f.completed);
    assert_eq!(sorted(&f.token.marking), strs(&["withdrawn"]));
    n.done(&c).await;
    // One mark consumed, every other outstanding one cleared.
    let (_, consumed, _, cancelled) = arcs(n.transitions(&c).await.last().unwrap());
    let mut cleared = [consumed, cancelled].concat();
    cleared.sort();
    assert_eq!(cleared, strs(&["finance", "legal_ok"]));
    // Without withdrawal both checks grant it.
    let g = n.case(json!({})).await;
    n.fire(&g, "start").await;
    n.fire(&g, "legal_check").await;
    n.fire(&g, "finance_check").await;
    assert!(n.fire(&g, "grant").await.completed);
}
