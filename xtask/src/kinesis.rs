//! The local Kinesis event source mapping: plays Lambda's Kinesis poller
//! against moto's Kinesis Data Streams and invokes the function binary
//! through the Lambda Invoke API, with the mapping's settings of
//! `infra/stack.json`
//! (<https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html>,
//! <https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-batchfailurereporting.html>,
//! <https://docs.aws.amazon.com/lambda/latest/dg/kinesis-on-failure-destination.html>,
//! <https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-windows.html>):
//!
//! - each shard read in order from a checkpoint, from `TRIM_HORIZON` or, for
//!   `LATEST`, from the moment the mapping started (`AT_TIMESTAMP` then);
//! - up to `batchSize` records per batch, a shorter batch held back until
//!   `maximumBatchingWindowSeconds` has passed since its first record was
//!   seen;
//! - `parallelizationFactor`: a shard's batch split by partition key into
//!   up to that many concurrent invocations, each key's records in order in
//!   one of them;
//! - `ReportBatchItemFailures`: the next attempt starts at the lowest
//!   reported sequence number; an invocation error retries the batch, halved
//!   first with `bisectBatchOnFunctionError`;
//! - `maximumRetryAttempts` and `maximumRecordAgeInSeconds`: a batch that
//!   exhausts its retries, and records older than the age, go to the
//!   `onFailure` queue as `KinesisBatchInfo` (the shard moves on);
//! - `tumblingWindowInSeconds`: records grouped by the window their arrival
//!   time falls in, each invocation given the `state` the window's previous
//!   one returned (a response without `state` is a failed invocation, as on
//!   AWS), and, once the window is over, a final invocation
//!   (`isFinalInvokeForWindow`) with the window's state and no records.
//!   Windows take one batch per shard at a time (no parallelization).
//!
//! The local simplification shared with the DynamoDB stream poller: every
//! failed attempt counts toward `maximumRetryAttempts`, where AWS counts per
//! bisected half.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::driver::{InvocationReport, MappingStats, lanes_by, rfc3339};
use crate::lambda::{Invocation, Lambda};
use crate::spec::MappingSpec;
use crate::stack::{ACCOUNT_ID, Stack};

/// How long after a window's end the poller waits for its last records
/// before the final invocation: moto stamps a record's arrival when it is
/// put, so a record put just before the end may be read a moment after.
const WINDOW_GRACE: Duration = Duration::from_millis(500);

/// A Kinesis mapping's poller.
pub(crate) struct KinesisPoller {
    pub(crate) label: String,
    function: String,
    stream_name: String,
    stream_arn: String,
    batch_size: usize,
    batching_window: Duration,
    report_failures: bool,
    bisect: bool,
    max_retries: Option<u32>,
    max_age: Option<Duration>,
    on_failure_url: Option<String>,
    tumbling: Option<u64>,
    /// The mapping's `parallelizationFactor` (the driver's own otherwise).
    pub(crate) parallelization: Option<usize>,
    /// `LATEST`: records put before this are not delivered.
    latest_from: Option<SystemTime>,
    shards: BTreeMap<String, Shard>,
    pub(crate) stats: MappingStats,
    request_seq: u64,
}

#[derive(Debug, Clone)]
struct Shard {
    position: Position,
    failed_attempts: u32,
    limit: usize,
    /// When a batch shorter than the batch size was first seen.
    pending_since: Option<Instant>,
    /// The open tumbling window: its start (epoch seconds) and state.
    window: Option<(i64, Value)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    Start,
    Since(SystemTime),
    At(String),
    After(String),
}

impl KinesisPoller {
    pub(crate) fn new(stack: &Stack, m: &MappingSpec, stream: &str) -> Result<Self> {
        let spec = stack.spec.stream(stream)?;
        let on_failure_url = match &m.on_failure {
            Some(f) => Some(stack.queue_url(&f.queue)?.to_owned()),
            None => None,
        };
        let latest_from = match m.starting_position.as_deref() {
            Some("LATEST") => Some(SystemTime::now()),
            _ => None,
        };
        Ok(Self {
            label: format!("{} <- Kinesis stream {}", m.function, spec.name),
            function: m.function.clone(),
            stream_name: spec.name.clone(),
            stream_arn: stack.kinesis_arn(stream)?.to_owned(),
            batch_size: m.batch_size,
            batching_window: Duration::from_secs(m.maximum_batching_window_seconds),
            report_failures: m.report_batch_item_failures,
            bisect: m.bisect_batch_on_function_error,
            max_retries: m.maximum_retry_attempts,
            max_age: m
                .maximum_record_age_in_seconds
                .filter(|a| *a > 0)
                .map(|a| Duration::from_secs(u64::try_from(a).unwrap_or(0))),
            on_failure_url,
            tumbling: m.tumbling_window_in_seconds,
            parallelization: m.parallelization_factor.map(|n| n as usize),
            latest_from,
            shards: BTreeMap::new(),
            stats: MappingStats::default(),
            request_seq: 0,
        })
    }

    /// What keeps the mapping from being drained: records held back by the
    /// batching window, open tumbling windows.
    pub(crate) fn pending(&self) -> Vec<String> {
        self.shards
            .iter()
            .filter_map(|(id, s)| {
                if let Some((start, _)) = &s.window {
                    Some(format!("{}: {id}'s window from {start} is open", self.label))
                } else {
                    s.pending_since.map(|_| format!("{}: {id} holds a batch for its batching window", self.label))
                }
            })
            .collect()
    }

    /// One round over the stream's shards. Returns whether anything was
    /// delivered.
    pub(crate) async fn poll(
        &mut self,
        stack: &Stack,
        lambda: &Lambda,
        parallelization: usize,
        progress: &mut dyn FnMut(&InvocationReport),
    ) -> Result<bool> {
        let shards = stack.kinesis_call("ListShards", json!({ "StreamName": self.stream_name })).await?;
        let ids: Vec<String> = shards
            .get("Shards")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("ShardId").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let mut worked = false;
        for id in ids {
            worked |= self.poll_shard(stack, lambda, &id, parallelization, progress).await?;
        }
        Ok(worked)
    }

    async fn poll_shard(
        &mut self,
        stack: &Stack,
        lambda: &Lambda,
        shard: &str,
        parallelization: usize,
        progress: &mut dyn FnMut(&InvocationReport),
    ) -> Result<bool> {
        let start = self.latest_from.map_or(Position::Start, Position::Since);
        let batch_size = self.batch_size;
        let state = self
            .shards
            .entry(shard.to_owned())
            .or_insert_with(|| Shard {
                position: start,
                failed_attempts: 0,
                limit: batch_size,
                pending_since: None,
                window: None,
            })
            .clone();
        let records = self.read(stack, shard, &state).await?;

        // Records past the maximum age are not delivered: they go to the
        // failure destination and the shard moves past them.
        if let Some(max_age) = self.max_age {
            let now = now_seconds();
            let expired = records.iter().take_while(|r| now - arrival(r) > max_age.as_secs_f64()).count();
            if expired > 0 {
                let attempts = state.failed_attempts;
                self.give_up(stack, shard, &records[..expired], attempts, "RecordAgeExceeded", &None).await?;
                let last = sequence(&records[expired - 1]);
                let s = self.shards.get_mut(shard).expect("inserted above");
                (s.position, s.failed_attempts, s.limit) = (Position::After(last), 0, batch_size);
                progress(&InvocationReport {
                    mapping: self.label.clone(),
                    records: expired,
                    item_failures: 0,
                    function_error: None,
                    sent_to_on_failure: true,
                    redelivered: 0,
                });
                return Ok(true);
            }
        }

        if let Some(seconds) = self.tumbling {
            return self.poll_window(stack, lambda, shard, state, records, seconds, progress).await;
        }
        if records.is_empty() {
            return Ok(false);
        }
        // A short batch waits for the batching window (from when it was first seen).
        if records.len() < state.limit && !self.batching_window.is_zero() {
            let s = self.shards.get_mut(shard).expect("inserted above");
            let since = *s.pending_since.get_or_insert_with(Instant::now);
            if since.elapsed() < self.batching_window {
                return Ok(false);
            }
        }
        let lanes = lanes(&records, parallelization);
        let events: Vec<Value> = lanes
            .iter()
            .map(|lane| {
                let batch: Vec<Value> = lane.iter().map(|&i| self.event_record(stack, shard, &records[i])).collect();
                json!({ "Records": batch })
            })
            .collect();
        let function = self.function.clone();
        let outcomes = futures::future::join_all(events.iter().map(|event| lambda.invoke(&function, event))).await;
        let seqs: Vec<String> = records.iter().map(sequence).collect();
        let mut retry_from: Option<usize> = None;
        let mut function_error = None;
        for (lane, outcome) in lanes.iter().zip(outcomes) {
            let lane_seqs: Vec<&str> = lane.iter().map(|&i| seqs[i].as_str()).collect();
            let (from, error) = self.read_outcome(outcome?, &lane_seqs);
            if let Some(from) = from.map(|f| lane[f])
                && retry_from.is_none_or(|r| from < r)
            {
                retry_from = Some(from);
                function_error = error;
            }
        }
        self.settle(stack, shard, &records, retry_from, function_error, lanes.len(), progress).await
    }

    /// Where to retry from in a lane's batch (`None`: it all succeeded), and
    /// the function error, from the invocation's outcome.
    fn read_outcome(&self, outcome: Invocation, seqs: &[&str]) -> (Option<usize>, Option<String>) {
        match outcome {
            Invocation::Ok(response) if self.report_failures => match reported(&response) {
                // AWS retries from the lowest reported sequence number; an
                // id that is not in the batch fails the whole batch.
                Some(ids) if ids.iter().all(|id| seqs.contains(&id.as_str())) => {
                    (seqs.iter().position(|s| ids.iter().any(|id| id == s)), None)
                }
                _ => (Some(0), None),
            },
            Invocation::Ok(_) => (None, None),
            Invocation::FunctionError { error_type, message } => (Some(0), Some(format!("{error_type}: {message}"))),
        }
    }

    /// Moves the shard's checkpoint after a delivery of `records`.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &mut self,
        stack: &Stack,
        shard: &str,
        records: &[Value],
        retry_from: Option<usize>,
        function_error: Option<String>,
        invocations: usize,
        progress: &mut dyn FnMut(&InvocationReport),
    ) -> Result<bool> {
        let batch_size = self.batch_size;
        self.stats.invocations += invocations as u64;
        self.stats.records += records.len() as u64;
        let mut report = InvocationReport {
            mapping: self.label.clone(),
            records: records.len(),
            item_failures: 0,
            function_error: function_error.clone(),
            sent_to_on_failure: false,
            redelivered: 0,
        };
        let last = records.last().map(sequence).unwrap_or_default();
        let state = self.shards.get_mut(shard).expect("inserted above");
        state.pending_since = None;
        match retry_from {
            None => {
                (state.position, state.failed_attempts, state.limit) = (Position::After(last), 0, batch_size);
            }
            Some(from) => {
                if function_error.is_some() {
                    self.stats.function_errors += 1;
                } else {
                    self.stats.item_failures += 1;
                    report.item_failures = records.len() - from;
                }
                state.failed_attempts += 1;
                let attempts = state.failed_attempts;
                if self.max_retries.is_some_and(|max| attempts > max) {
                    (state.position, state.failed_attempts, state.limit) = (Position::After(last), 0, batch_size);
                    report.sent_to_on_failure = true;
                    self.give_up(stack, shard, &records[from..], attempts, "RetryAttemptsExhausted", &function_error)
                        .await?;
                } else {
                    state.position = Position::At(sequence(&records[from]));
                    if function_error.is_some() && self.bisect {
                        state.limit = (records.len() / 2).max(1);
                    }
                }
            }
        }
        progress(&report);
        Ok(true)
    }

    /// One round of a shard read in tumbling windows.
    #[allow(clippy::too_many_arguments)]
    async fn poll_window(
        &mut self,
        stack: &Stack,
        lambda: &Lambda,
        shard: &str,
        state: Shard,
        records: Vec<Value>,
        seconds: u64,
        progress: &mut dyn FnMut(&InvocationReport),
    ) -> Result<bool> {
        let width = i64::try_from(seconds).unwrap_or(i64::MAX);
        let window_of = |r: &Value| (arrival(r).floor() as i64).div_euclid(width) * width;
        let (start, window_state) = match (&state.window, records.first()) {
            (Some((start, s)), _) => (*start, s.clone()),
            (None, Some(first)) => (window_of(first), json!({})),
            (None, None) => return Ok(false),
        };
        let end = start.saturating_add(width);
        let in_window: Vec<Value> = records.iter().take_while(|r| window_of(r) == start).cloned().collect();
        let over = in_window.len() < records.len()
            || (records.is_empty() && now_seconds() >= end as f64 + WINDOW_GRACE.as_secs_f64());
        let function = self.function.clone();
        if in_window.is_empty() && !over {
            return Ok(false);
        }
        let last = in_window.is_empty();
        let batch: Vec<Value> = in_window.iter().map(|r| self.event_record(stack, shard, r)).collect();
        let event = json!({
            "Records": batch,
            "window": { "start": rfc3339(start as f64), "end": rfc3339(end as f64) },
            "state": window_state,
            "shardId": shard,
            "eventSourceARN": self.stream_arn,
            "isFinalInvokeForWindow": last,
            "isWindowTerminatedEarly": false,
        });
        let outcome = lambda.invoke(&function, &event).await?;
        // A window's answer must carry its state; without it the
        // invocation failed.
        let returned = match &outcome {
            Invocation::Ok(response) => response.get("state").filter(|s| s.is_object()).cloned(),
            Invocation::FunctionError { .. } => None,
        };
        let seqs: Vec<String> = in_window.iter().map(sequence).collect();
        let seq_refs: Vec<&str> = seqs.iter().map(String::as_str).collect();
        let (mut retry_from, mut function_error) = self.read_outcome(outcome, &seq_refs);
        if returned.is_none() && function_error.is_none() {
            function_error = Some("the window's response has no state".into());
            retry_from = Some(0);
        }
        if last {
            self.stats.invocations += 1;
            let mut report = InvocationReport {
                mapping: format!("{} (final of window {})", self.label, rfc3339(start as f64)),
                records: 0,
                item_failures: 0,
                function_error: function_error.clone(),
                sent_to_on_failure: false,
                redelivered: 0,
            };
            let max_retries = self.max_retries;
            let s = self.shards.get_mut(shard).expect("inserted above");
            let mut exhausted = None;
            if function_error.is_none() {
                (s.window, s.failed_attempts) = (None, 0);
            } else {
                s.failed_attempts += 1;
                let attempts = s.failed_attempts;
                if max_retries.is_some_and(|max| attempts > max) {
                    (s.window, s.failed_attempts) = (None, 0);
                    exhausted = Some(attempts);
                }
            }
            if function_error.is_some() {
                self.stats.function_errors += 1;
            }
            if let Some(attempts) = exhausted {
                report.sent_to_on_failure = true;
                self.give_up(stack, shard, &[], attempts, "RetryAttemptsExhausted", &function_error).await?;
            }
            progress(&report);
            return Ok(true);
        }
        // The state goes with what succeeded; a failed invocation keeps
        // the window's state as it was.
        let s = self.shards.get_mut(shard).expect("inserted above");
        s.window =
            Some((start, if function_error.is_none() { returned.unwrap_or(window_state) } else { window_state }));
        self.settle(stack, shard, &in_window, retry_from, function_error, 1, progress).await
    }

    /// Reads the shard from its checkpoint: up to its batch limit of records.
    async fn read(&self, stack: &Stack, shard: &str, state: &Shard) -> Result<Vec<Value>> {
        let mut request = json!({ "StreamName": self.stream_name, "ShardId": shard });
        match &state.position {
            Position::Start => request["ShardIteratorType"] = json!("TRIM_HORIZON"),
            Position::Since(t) => {
                request["ShardIteratorType"] = json!("AT_TIMESTAMP");
                request["Timestamp"] = json!(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64());
            }
            Position::At(s) => {
                request["ShardIteratorType"] = json!("AT_SEQUENCE_NUMBER");
                request["StartingSequenceNumber"] = json!(s);
            }
            Position::After(s) => {
                request["ShardIteratorType"] = json!("AFTER_SEQUENCE_NUMBER");
                request["StartingSequenceNumber"] = json!(s);
            }
        }
        let iterator = stack.kinesis_call("GetShardIterator", request).await?;
        let Some(iterator) = iterator.get("ShardIterator").and_then(Value::as_str) else {
            return Ok(Vec::new());
        };
        let page = stack.kinesis_call("GetRecords", json!({ "ShardIterator": iterator, "Limit": state.limit })).await?;
        Ok(page.get("Records").and_then(Value::as_array).cloned().unwrap_or_default())
    }

    /// A record as Lambda's Kinesis event carries it.
    fn event_record(&self, stack: &Stack, shard: &str, r: &Value) -> Value {
        let seq = sequence(r);
        json!({
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": r.get("PartitionKey").cloned().unwrap_or(Value::Null),
                "sequenceNumber": seq,
                "data": r.get("Data").cloned().unwrap_or(Value::Null),
                "approximateArrivalTimestamp": arrival(r),
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": format!("{shard}:{seq}"),
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": format!("arn:aws:iam::{ACCOUNT_ID}:role/{}", self.function),
            "awsRegion": stack.spec.region,
            "eventSourceARN": self.stream_arn,
        })
    }

    /// Sends a description of `failed` to the failure destination
    /// (<https://docs.aws.amazon.com/lambda/latest/dg/kinesis-on-failure-destination.html>).
    async fn give_up(
        &mut self,
        stack: &Stack,
        shard: &str,
        failed: &[Value],
        attempts: u32,
        condition: &str,
        function_error: &Option<String>,
    ) -> Result<()> {
        self.stats.sent_to_on_failure += 1;
        self.request_seq += 1;
        let Some(url) = self.on_failure_url.clone() else { return Ok(()) };
        let region = &stack.spec.region;
        let mut response_context = json!({ "statusCode": 200, "executedVersion": "$LATEST" });
        if function_error.is_some() {
            response_context["functionError"] = json!("Unhandled");
        }
        let first = failed.first();
        let last = failed.last();
        let message = json!({
            "requestContext": {
                "requestId": format!("local-{:08x}-{:04x}", std::process::id(), self.request_seq),
                "functionArn": format!("arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{}", self.function),
                "condition": condition,
                "approximateInvokeCount": attempts,
            },
            "responseContext": response_context,
            "version": "1.0",
            "timestamp": rfc3339(now_seconds()),
            "KinesisBatchInfo": {
                "shardId": shard,
                "startSequenceNumber": first.map(sequence),
                "endSequenceNumber": last.map(sequence),
                "approximateArrivalOfFirstRecord": first.map(|r| rfc3339(arrival(r))),
                "approximateArrivalOfLastRecord": last.map(|r| rfc3339(arrival(r))),
                "batchSize": failed.len(),
                "streamArn": self.stream_arn,
            }
        });
        stack
            .sqs
            .send_message()
            .queue_url(&url)
            .message_body(message.to_string())
            .send()
            .await
            .context("sending to the Kinesis mapping's on-failure queue")?;
        Ok(())
    }
}

/// The ids a partial batch response reports; `None` when it is not a valid
/// response (Lambda then fails the whole batch).
fn reported(response: &Value) -> Option<Vec<String>> {
    let Some(failures) = response.get("batchItemFailures").filter(|f| !f.is_null()) else {
        return Some(Vec::new());
    };
    failures
        .as_array()?
        .iter()
        .map(|f| f.get("itemIdentifier").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned))
        .collect()
}

fn sequence(r: &Value) -> String {
    r.get("SequenceNumber").and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// A record's `ApproximateArrivalTimestamp`, epoch seconds.
fn arrival(r: &Value) -> f64 {
    r.get("ApproximateArrivalTimestamp").and_then(Value::as_f64).unwrap_or(0.0)
}

fn now_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// Splits a shard's batch by partition key into at most `factor`
/// concurrent batches, each key's records in order in one of them.
fn lanes(records: &[Value], factor: usize) -> Vec<Vec<usize>> {
    lanes_by(records, factor, |record| {
        record.get("PartitionKey").and_then(Value::as_str).unwrap_or_default().to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_by_partition_key_keeping_each_keys_order() {
        let records: Vec<Value> = ["a", "b", "a", "c", "b", "a"].iter().map(|k| json!({ "PartitionKey": k })).collect();
        let lanes = lanes(&records, 4);
        let lane_of = |i: usize| lanes.iter().position(|l| l.contains(&i));
        assert_eq!((lane_of(0), lane_of(0)), (lane_of(2), lane_of(5)));
        assert_eq!(lane_of(1), lane_of(4));
        assert!(lanes.iter().all(|l| l.windows(2).all(|w| w[0] < w[1])));
        assert_eq!(lanes.iter().map(Vec::len).sum::<usize>(), records.len());
    }

    #[test]
    fn a_response_reports_ids_or_is_invalid() {
        assert_eq!(reported(&json!({})), Some(vec![]));
        assert_eq!(reported(&json!({"batchItemFailures": [{"itemIdentifier": "5"}]})), Some(vec!["5".into()]));
        assert_eq!(reported(&json!({"batchItemFailures": [{"itemIdentifier": ""}]})), None);
        assert_eq!(reported(&json!({"batchItemFailures": [{"id": "5"}]})), None);
    }
}
