//! The subject layout. Every subject the store reads or writes is built here.
//!
//! ```text
//! {prefix}.workflows.{wf}.definition                      definition versions
//! {prefix}.workflows.{wf}.places.{place}.tokens.{token}   one message: state or tombstone
//! {prefix}.workflows.{wf}.events.transitions.{token}      transition events with actions (the action feed)
//! {prefix}.workflows.{wf}.events.moves.{token}            transition events of transitions without actions
//! {prefix}.workflows.{wf}.events.lifecycle.{token}        created/updated/completed/...
//! ```

use crate::model::Id;

/// Builds and parses subjects for one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
}

/// Kind of event subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventStream {
    /// Transition events with actions to run: what the action feed
    /// delivers.
    Transitions,
    /// Transition events of transitions without actions: history only.
    Moves,
    Lifecycle,
}

impl Subjects {
    /// `prefix` must already be validated.
    pub(crate) fn new(prefix: &str) -> Self {
        Subjects {
            prefix: prefix.to_owned(),
        }
    }

    /// Checks a prefix: dot-separated segments, each a valid [`Id`].
    pub(crate) fn validate_prefix(prefix: &str) -> Result<(), String> {
        if prefix.is_empty() {
            return Err("prefix is empty".into());
        }
        for seg in prefix.split('.') {
            Id::new(seg).map_err(|e| format!("prefix {prefix:?}: {e}"))?;
        }
        Ok(())
    }

    /// The stream's one subject filter.
    pub(crate) fn stream_filter(&self) -> String {
        format!("{}.workflows.>", self.prefix)
    }

    pub(crate) fn definition(&self, wf: &Id) -> String {
        format!("{}.workflows.{wf}.definition", self.prefix)
    }

    pub(crate) fn all_definitions(&self) -> String {
        format!("{}.workflows.*.definition", self.prefix)
    }

    pub(crate) fn token(&self, wf: &Id, place: &Id, token: &Id) -> String {
        format!("{}.workflows.{wf}.places.{place}.tokens.{token}", self.prefix)
    }

    /// The canonical CAS scope of a token: every place, one spelling.
    pub(crate) fn token_any_place(&self, wf: &Id, token: &Id) -> String {
        format!("{}.workflows.{wf}.places.*.tokens.{token}", self.prefix)
    }

    /// A token in any workflow (for lookups by id alone).
    pub(crate) fn token_anywhere(&self, token: &Id) -> String {
        format!("{}.workflows.*.places.*.tokens.{token}", self.prefix)
    }

    pub(crate) fn place(&self, wf: &Id, place: &Id) -> String {
        format!("{}.workflows.{wf}.places.{place}.tokens.*", self.prefix)
    }

    pub(crate) fn event(&self, wf: &Id, kind: EventStream, token: &Id) -> String {
        let kind = match kind {
            EventStream::Transitions => "transitions",
            EventStream::Moves => "moves",
            EventStream::Lifecycle => "lifecycle",
        };
        format!("{}.workflows.{wf}.events.{kind}.{token}", self.prefix)
    }

    /// The idempotency record of `key` in `wf`: a digest of the key, so any
    /// key makes a subject-safe token.
    pub(crate) fn key_record(&self, wf: &Id, key: &str) -> String {
        use sha2::Digest;
        let h = sha2::Sha256::digest(key.as_bytes());
        format!("{}.workflows.{wf}.keys.{}", self.prefix, hex::encode(&h[..16]))
    }

    /// Every transition event with actions, of every workflow: the action
    /// feed's filter.
    pub(crate) fn all_transition_events(&self) -> String {
        format!("{}.workflows.*.events.transitions.*", self.prefix)
    }

    /// A token's events in any workflow (to find the workflow of a token
    /// that may have completed).
    pub(crate) fn token_events_anywhere(&self, token: &Id) -> String {
        format!("{}.workflows.*.events.*.{token}", self.prefix)
    }

    pub(crate) fn token_events(&self, wf: &Id, token: &Id) -> String {
        format!("{}.workflows.{wf}.events.*.{token}", self.prefix)
    }

    /// The segments after `{prefix}.workflows.`, if `subject` is ours.
    fn rest<'a>(&self, subject: &'a str) -> Option<Vec<&'a str>> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".workflows.")?;
        Some(rest.split('.').collect())
    }

    /// `(workflow, place, token)` of a token subject.
    pub(crate) fn parse_token(&self, subject: &str) -> Option<(Id, Id, Id)> {
        match self.rest(subject)?.as_slice() {
            [wf, "places", place, "tokens", token] => {
                Some((Id::new(*wf).ok()?, Id::new(*place).ok()?, Id::new(*token).ok()?))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    #[test]
    fn builds_and_parses() {
        let s = Subjects::new("acme.cb");
        let t = s.token(&id("wf"), &id("draft"), &id("t1"));
        assert_eq!(t, "acme.cb.workflows.wf.places.draft.tokens.t1");
        assert_eq!(s.parse_token(&t), Some((id("wf"), id("draft"), id("t1"))));
        assert_eq!(
            s.event(&id("wf"), EventStream::Lifecycle, &id("t1")),
            "acme.cb.workflows.wf.events.lifecycle.t1"
        );
        assert_eq!(s.parse_token("other.workflows.wf.places.p.tokens.t"), None);
        assert_eq!(s.parse_token(&s.definition(&id("wf"))), None);
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(Subjects::validate_prefix("cb").is_ok());
        assert!(Subjects::validate_prefix("acme.cb").is_ok());
        for bad in ["", "a..b", "cb.*", "cb.>", "c b", "cb."] {
            assert!(Subjects::validate_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
