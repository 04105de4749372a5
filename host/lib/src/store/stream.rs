//! Start-up checks: server version, JetStream, and the stream itself.
//!
//! Start-up never deletes, purges or rewrites anything: an absent stream is
//! created; a present one is compared and any difference that would break
//! the storage contract is reported, leaving the stream as it is.

use async_nats::jetstream::{self, stream};

use super::{StorageKind, StoreConfig, StoreError, subjects::Subjects};

/// Oldest server with atomic batch publish (ADR-50).
pub(crate) const MIN_SERVER: (u64, u64) = (2, 12);

/// Parses `2.15.1` / `v2.12.0-beta` into (major, minor).
pub(crate) fn parse_version(v: &str) -> Option<(u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Fails with [`StoreError::ServerTooOld`] unless the server is new enough.
pub(crate) fn check_server(client: &async_nats::Client) -> Result<(), StoreError> {
    let info = client.server_info();
    let ok = parse_version(&info.version).is_some_and(|v| v >= MIN_SERVER);
    if !ok {
        return Err(StoreError::ServerTooOld {
            version: info.version,
            required: format!("{}.{}", MIN_SERVER.0, MIN_SERVER.1),
        });
    }
    Ok(())
}

/// The stream configuration this host creates.
pub(crate) fn desired(config: &StoreConfig, subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        description: Some("Circuit Breaker workflow state: definitions, tokens, events".into()),
        subjects: vec![subjects.stream_filter()],
        retention: stream::RetentionPolicy::Limits,
        storage: match config.storage {
            StorageKind::File => stream::StorageType::File,
            StorageKind::Memory => stream::StorageType::Memory,
        },
        num_replicas: config.replicas,
        allow_direct: true,
        allow_rollup: true,
        allow_atomic_publish: true,
        allow_message_ttl: true,
        duplicate_window: config.duplicate_window,
        ..Default::default()
    }
}

/// Differences between an existing stream and what the storage contract
/// needs; empty when the stream is usable as it is.
pub(crate) fn differences(have: &stream::Config, want: &stream::Config) -> Vec<String> {
    let mut d = Vec::new();
    if !have.subjects.iter().any(|s| s == &want.subjects[0]) {
        d.push(format!(
            "subjects are {:?}, expected to include {:?}",
            have.subjects, want.subjects[0]
        ));
    }
    if have.retention != stream::RetentionPolicy::Limits {
        d.push(format!(
            "retention is {:?}: reads on interest/work-queue streams can delete tokens; must be Limits",
            have.retention
        ));
    }
    for (name, on) in [
        ("allow_direct", have.allow_direct),
        ("allow_rollup_hdrs", have.allow_rollup),
        ("allow_atomic", have.allow_atomic_publish),
        ("allow_msg_ttl", have.allow_message_ttl),
    ] {
        if !on {
            d.push(format!("{name} is off; must be on"));
        }
    }
    if have.deny_purge {
        d.push("deny_purge is on: token moves roll up old states; must be off".into());
    }
    if !have.max_age.is_zero() {
        d.push(format!(
            "max_age is {:?}: it would silently expire tokens and definitions; must be 0 (per-message TTLs are used instead)",
            have.max_age
        ));
    }
    if have.max_messages_per_subject > 0 {
        d.push(format!(
            "max_msgs_per_subject is {}: it would drop definition versions and history; must be unlimited",
            have.max_messages_per_subject
        ));
    }
    if (have.max_messages > 0 || have.max_bytes > 0) && have.discard == stream::DiscardPolicy::Old {
        d.push("max_msgs/max_bytes with discard=old would silently delete the oldest tokens; use discard=new or no limit".into());
    }
    if have.persist_mode == Some(stream::PersistenceMode::Async) {
        d.push("persist_mode is async, which atomic batches do not support".into());
    }
    if have.subject_delete_marker_ttl.is_some() {
        d.push(
            "subject_delete_marker_ttl is set: expiring tombstones would leave marker messages in places"
                .into(),
        );
    }
    if have.mirror.is_some() {
        d.push("the stream is a mirror; writes need the origin stream".into());
    }
    d
}

/// JetStream's refusals of a stream configuration the server cannot give
/// (10074: replicas on a server without a cluster; 10023: not enough
/// servers or resources).
fn is_refused_config(text: &str) -> bool {
    text.contains("not supported in non-clustered mode")
        || text.contains("10074")
        || text.contains("insufficient resources")
        || text.contains("10023")
}

/// Creates the stream if absent; verifies it if present.
pub(crate) async fn ensure(
    js: &jetstream::Context,
    config: &StoreConfig,
    subjects: &Subjects,
) -> Result<stream::Stream, StoreError> {
    let want = desired(config, subjects);
    let op = format!("ensure stream {}", config.stream);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match js.get_stream(&config.stream).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| StoreError::unavailable(&op, e))?;
                let diff = differences(&info.config, &want);
                if !diff.is_empty() {
                    return Err(StoreError::StreamMismatch {
                        stream: config.stream.clone(),
                        differences: diff,
                    });
                }
                if info.config.num_replicas != config.replicas || info.config.storage != want.storage {
                    tracing::warn!(
                        stream = %config.stream,
                        replicas = info.config.num_replicas,
                        storage = ?info.config.storage,
                        "existing stream differs from the configured replicas/storage; using it as it is"
                    );
                }
                return Ok(s);
            }
            Err(e) => {
                let not_found = matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                );
                if not_found {
                    match js.create_stream(want.clone()).await {
                        Ok(s) => {
                            tracing::info!(stream = %config.stream, subjects = ?want.subjects, "created stream");
                            return Ok(s);
                        }
                        // Another host created it first: loop and verify it.
                        Err(e) if e.to_string().contains("already in use") && attempt < 3 => continue,
                        // The server cannot give what is asked: not an
                        // outage, and no retry changes it.
                        Err(e) if is_refused_config(&e.to_string()) => {
                            return Err(StoreError::Configuration(format!(
                                "the server cannot create stream `{}` with {} replicas ({e}): set the replicas \
                                 to what the server has (`--replicas`, `StoreConfig::replicas`; 0 follows the server)",
                                config.stream, config.replicas
                            )));
                        }
                        Err(e) if attempt < config.retry.attempts => {
                            tracing::debug!(error = %e, attempt, "create stream failed; retrying");
                        }
                        Err(e) => return Err(StoreError::unavailable(&op, e)),
                    }
                } else if attempt >= config.retry.attempts {
                    return Err(StoreError::unavailable(&op, e));
                }
                // No meta leader yet (cluster start) or a transient failure.
                tokio::time::sleep(config.retry.backoff(attempt)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15)));
        assert_eq!(parse_version("v2.12.0-beta.1"), Some((2, 12)));
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER);
        assert!(parse_version("2.12.0").unwrap() >= MIN_SERVER);
        assert!(parse_version("10.0.0").unwrap() >= MIN_SERVER);
        assert_eq!(parse_version("junk"), None);
    }

    #[test]
    fn the_desired_stream_has_no_differences() {
        let c = StoreConfig::development();
        let want = desired(&c, &Subjects::new(&c.prefix));
        assert!(differences(&want, &want).is_empty());
        let mut bad = want.clone();
        bad.max_age = std::time::Duration::from_secs(60);
        bad.allow_atomic_publish = false;
        bad.retention = stream::RetentionPolicy::Interest;
        assert_eq!(
            differences(&bad, &want).len(),
            3,
            "{:?}",
            differences(&bad, &want)
        );
    }
}
