//! Raw baselines more than one benchmark compares with: the messages a
//! move writes, sent straight through async-nats.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;

/// Message `seqno` of raw batch `batch`: the tombstone of a raw move, on
/// the token's old place, purging it, with the CAS on its current sequence.
fn raw_tombstone(batch: &str, seqno: usize, tid: &str, place: &str, seq: u64) -> (String, HeaderMap) {
    let mut h = HeaderMap::new();
    h.insert("Nats-Batch-Id", batch);
    h.insert("Nats-Batch-Sequence", seqno.to_string().as_str());
    h.insert("KV-Operation", "PURGE");
    h.insert("Nats-Rollup", "sub");
    h.insert("Nats-Expected-Last-Subject-Sequence", seq.to_string().as_str());
    h.insert(
        "Nats-Expected-Last-Subject-Sequence-Subject",
        format!("cb.workflows.raw.places.*.tokens.{tid}").as_str(),
    );
    (format!("cb.workflows.raw.places.{place}.tokens.{tid}"), h)
}

/// One token moved back and forth with one raw atomic batch per move: the
/// three messages a move writes (tombstone with rollup and CAS, state with
/// rollup, event), one move per `step`. Its events go to lifecycle
/// subjects, which the action dispatcher does not consume.
pub struct RawMover {
    client: async_nats::Client,
    tid: String,
    place: &'static str,
    seq: u64,
    n: u64,
}

impl RawMover {
    /// Creates token `tid` in place `ping`.
    pub async fn new(client: &async_nats::Client, tid: &str) -> anyhow::Result<RawMover> {
        let ack = jetstream::new(client.clone())
            .publish(format!("cb.workflows.raw.places.ping.tokens.{tid}"), "{}".into())
            .await?
            .await?;
        Ok(RawMover {
            client: client.clone(),
            tid: tid.to_string(),
            place: "ping",
            seq: ack.sequence,
            n: 0,
        })
    }

    /// Moves the token once; returns the batch's latency.
    pub async fn step(&mut self) -> anyhow::Result<Duration> {
        let (tid, to) = (&self.tid, if self.place == "ping" { "pong" } else { "ping" });
        let s = Instant::now();
        let batch = format!("raw-{tid}-{}", self.n);
        self.n += 1;
        let (subject, h) = raw_tombstone(&batch, 1, tid, self.place, self.seq);
        self.client.publish_with_headers(subject, h, Bytes::new()).await?;
        let mut h = HeaderMap::new();
        h.insert("Nats-Batch-Id", batch.as_str());
        h.insert("Nats-Batch-Sequence", "2");
        h.insert("Nats-Rollup", "sub");
        self.client
            .publish_with_headers(
                format!("cb.workflows.raw.places.{to}.tokens.{tid}"),
                h,
                "{}".into(),
            )
            .await?;
        let mut h = HeaderMap::new();
        h.insert("Nats-Batch-Id", batch.as_str());
        h.insert("Nats-Batch-Sequence", "3");
        h.insert("Nats-Batch-Commit", "1");
        let r = self
            .client
            .request_with_headers(format!("cb.workflows.raw.events.lifecycle.{tid}"), h, "{}".into())
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&r.payload)?;
        self.seq = v["seq"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("batch failed: {v}"))?
            - 1;
        self.place = to;
        Ok(s.elapsed())
    }
}

/// The raw limit of group commit: `c` tokens moved together in one atomic
/// batch per round (3 messages each), one batch in flight, with no queueing
/// or bookkeeping. Latency is per batch; throughput is moves/s. The events
/// go to lifecycle subjects, which the action dispatcher does not consume.
pub struct RawGroup {
    client: async_nats::Client,
    c: usize,
    toks: Vec<(String, &'static str, u64)>,
    n: u64,
    /// Batches committed and the time their commits waited on the server
    /// (commit sent to acknowledgement), over every `run`.
    pub batches: u64,
    pub commit_wait: Duration,
}

impl RawGroup {
    pub async fn new(client: &async_nats::Client, c: usize, round: usize) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        let mut toks = Vec::new();
        for i in 0..c {
            let tid = format!("rawg{c}r{round}x{i}");
            let ack = js
                .publish(format!("cb.workflows.raw.places.ping.tokens.{tid}"), "{}".into())
                .await?
                .await?;
            toks.push((tid, "ping", ack.sequence));
        }
        Ok(RawGroup {
            client: client.clone(),
            c,
            toks,
            n: 0,
            batches: 0,
            commit_wait: Duration::ZERO,
        })
    }

    /// Moves every token once per batch for `window`; one latency sample
    /// per move (the batch's), so ops/s counts moves.
    pub async fn run(&mut self, window: Duration) -> anyhow::Result<(Vec<Duration>, Duration)> {
        let mut out = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed() < window {
            let s = Instant::now();
            let batch = format!("rawg-{}-{}", self.c, self.n);
            self.n += 1;
            let mut seqno = 0;
            let total = self.toks.len() * 3;
            let mut reply = None;
            for (tid, place, seq) in &self.toks {
                let to = if *place == "ping" { "pong" } else { "ping" };
                for k in 0..3 {
                    seqno += 1;
                    let (subject, mut h) = match k {
                        0 => raw_tombstone(&batch, seqno, tid, place, *seq),
                        _ => {
                            let mut h = HeaderMap::new();
                            h.insert("Nats-Batch-Id", batch.as_str());
                            h.insert("Nats-Batch-Sequence", seqno.to_string().as_str());
                            let subject = match k {
                                1 => format!("cb.workflows.raw.places.{to}.tokens.{tid}"),
                                _ => format!("cb.workflows.raw.events.lifecycle.{tid}"),
                            };
                            (subject, h)
                        }
                    };
                    let payload: Bytes = if k == 0 { Bytes::new() } else { "{}".into() };
                    if seqno == total {
                        h.insert("Nats-Batch-Commit", "1");
                        let sent = Instant::now();
                        reply = Some(self.client.request_with_headers(subject, h, payload).await?);
                        self.commit_wait += sent.elapsed();
                        self.batches += 1;
                    } else {
                        self.client.publish_with_headers(subject, h, payload).await?;
                    }
                }
            }
            let v: serde_json::Value = serde_json::from_slice(&reply.expect("commit").payload)?;
            let last = v["seq"]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("batch failed: {v}"))?;
            let first = last + 1 - total as u64;
            for (i, (_, place, seq)) in self.toks.iter_mut().enumerate() {
                *place = if *place == "ping" { "pong" } else { "ping" };
                *seq = first + 3 * i as u64 + 1;
            }
            out.extend(std::iter::repeat_n(s.elapsed(), self.c));
        }
        Ok((out, t0.elapsed()))
    }
}
