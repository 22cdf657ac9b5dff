//! The local event source mapping driver: plays AWS's pollers against the
//! emulator and invokes the function binaries through the Lambda Invoke API,
//! with the semantics of the real mappings, one poller per mapping of
//! `infra/stack.json`.
//!
//! SQS (<https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html>):
//! receive up to the batch size (system attributes `All`, so
//! `ApproximateReceiveCount` and FIFO group ids are present), invoke with the
//! standard SQS event, delete only the messages not reported in
//! `batchItemFailures`; an invocation error, or a response naming an unknown
//! id, deletes nothing. Failed messages reappear after the visibility timeout;
//! moto itself moves a message to the dead-letter queue once it has been
//! received `maxReceiveCount` times (verified with moto 5.2.5, so the driver
//! does not redrive). FIFO: moto returns a group's messages in order and
//! withholds a group while any of its messages is in flight (verified), as SQS
//! does, so a failed message blocks only its own group. One moto 5.2.5 bug is
//! worked around: when several messages of a group time out together, its
//! receive releases them from its in-flight set one at a time while scanning
//! and so returns the group's *last* message first (seen: a failed `[p, a3,
//! a4]` came back as `[a4]`, then `[p, a3]`). Once their visibility timeout
//! has passed, the driver marks a FIFO batch's failed messages visible itself
//! (`ChangeMessageVisibility` 0, what SQS's own clock does), so moto returns
//! them in order.
//!
//! DynamoDB Streams (<https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html>):
//! each shard is read in order from a checkpoint. Records are fetched with
//! raw JSON calls to the Streams API of the stack's DynamoDB engine
//! (DynamoDB Local, or moto with `--dynamodb moto`) and handed to the
//! function as they come (plus `eventSourceARN`, and `awsRegion` set to the
//! stack's region), so functions see the engine's real record shape rather
//! than an SDK round-trip of it. With moto only, its phantom key-only INSERT
//! records are dropped first ([`drop_phantom_inserts`]). Records the mapping's
//! filter rejects are skipped (and count as processed, as in Lambda). On
//! success the checkpoint moves past the batch; on a reported failure the
//! next attempt starts at the failed sequence number; on an invocation error
//! at the batch start, with the batch halved first when
//! `bisectBatchOnFunctionError` is set. Every failed attempt counts toward
//! `maximumRetryAttempts` (the local simplification of AWS's per-split
//! counting); once exhausted, a description of the failed records goes to the
//! `onFailure` queue in AWS's shape and the shard moves on.
//!
//! Concurrency: by default pollers take turns, one batch at a time, one
//! function instance each. [`Driver::concurrent`] delivers several SQS
//! batches of a queue at once and splits each stream batch by item key into
//! up to a parallelization factor of concurrent batches, as Lambda does once
//! it scales (the local Lambda runs up to `Stack::function_concurrency` processes of each function).
//!
//! Kinesis Data Streams: see [`crate::kinesis`] (batching window, starting
//! position, parallelization factor by partition key, record age and
//! tumbling windows are played there).
//!
//! Not modelled for SQS and DynamoDB streams: `maximumBatchingWindowSeconds`
//! (a latency/batch-size knob that does not change what is delivered).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName,
};
use serde_json::{Value, json};

use crate::dynamodb_local::Engine;
use crate::filter::{Pattern, passes};
use crate::lambda::{Invocation, Lambda};
use crate::spec::{MappingSource, MappingSpec};
use crate::stack::{ACCOUNT_ID, Stack};

/// SQS ReceiveMessage and DeleteMessageBatch take at most 10 messages.
const SQS_MAX_MESSAGES: usize = 10;
/// Pause between rounds in which no poller found anything: the emulator has
/// no push API, so a poller can only ask again.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// What one poller has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappingStats {
    pub invocations: u64,
    /// Records handed to the function (a retried record counts each time).
    pub records: u64,
    /// Records reported in `batchItemFailures`.
    pub item_failures: u64,
    /// Invocations that failed as a whole.
    pub function_errors: u64,
    /// SQS messages deleted after success.
    pub deleted: u64,
    /// Stream records skipped by the filter.
    pub filtered: u64,
    /// Stream batches sent to the on-failure destination.
    pub sent_to_on_failure: u64,
    /// moto's spurious key-only INSERT records, dropped (see
    /// [`drop_phantom_inserts`]; only with [`Engine::Moto`]).
    pub phantom_inserts_dropped: u64,
}

/// One invocation, reported to the progress callback.
#[derive(Debug, Clone)]
pub struct InvocationReport {
    /// `function <- source`.
    pub mapping: String,
    pub records: usize,
    pub item_failures: usize,
    /// The function error, when the invocation failed as a whole.
    pub function_error: Option<String>,
    /// A stream batch given up on and sent to the on-failure queue.
    pub sent_to_on_failure: bool,
    /// SQS messages received before (`ApproximateReceiveCount` above 1):
    /// retries, and messages whose visibility timeout ended while another
    /// delivery still held them (with concurrent pollers).
    pub redelivered: usize,
}

/// The driver: one poller per mapping.
pub struct Driver<'a> {
    stack: &'a Stack,
    lambda: &'a Lambda,
    sqs: Vec<SqsPoller>,
    streams: Vec<StreamPoller>,
    kinesis: Vec<crate::kinesis::KinesisPoller>,
    request_seq: u64,
    /// Deliveries each SQS mapping makes at once (Lambda's pollers scaling
    /// up to `MaximumConcurrency`).
    sqs_concurrency: usize,
    /// Concurrent batches per stream shard (`ParallelizationFactor`).
    parallelization: usize,
}

/// One SQS delivery: what was received, what the function answered, what
/// was deleted.
struct SqsDelivery {
    messages: Vec<Message>,
    received_at: Instant,
    failed: HashSet<String>,
    function_error: Option<String>,
    deleted: usize,
}

struct SqsPoller {
    label: String,
    function: String,
    queue_key: String,
    url: String,
    arn: String,
    batch_size: usize,
    report_failures: bool,
    /// FIFO only: failed messages' receipt handles, with the time their
    /// visibility timeout ends (see the module documentation).
    to_release: Vec<(Instant, String)>,
    visibility_timeout: Duration,
    stats: MappingStats,
}

struct StreamPoller {
    label: String,
    function: String,
    stream_arn: String,
    batch_size: usize,
    report_failures: bool,
    patterns: Vec<Pattern>,
    bisect: bool,
    max_retries: Option<u32>,
    on_failure_url: Option<String>,
    shards: BTreeMap<String, ShardState>,
    stats: MappingStats,
}

#[derive(Debug, Clone)]
struct ShardState {
    position: Position,
    /// Failed attempts of the current batch.
    failed_attempts: u32,
    /// Records per batch (lowered by bisection).
    limit: usize,
    /// A closed shard read to its end.
    finished: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    Start,
    At(String),
    After(String),
}

impl<'a> Driver<'a> {
    /// A driver for every mapping of the stack's definition whose function
    /// `lambda` serves.
    pub fn new(stack: &'a Stack, lambda: &'a Lambda) -> Result<Self> {
        let mut sqs = Vec::new();
        let mut streams = Vec::new();
        let mut kinesis = Vec::new();
        for m in stack.spec.mappings.iter().filter(|m| lambda.serves(&m.function)) {
            match &m.source {
                MappingSource::Queue { queue } => sqs.push(SqsPoller {
                    label: format!("{} <- {}", m.function, stack.spec.queue(queue)?.name),
                    function: m.function.clone(),
                    queue_key: queue.clone(),
                    url: stack.queue_url(queue)?.to_owned(),
                    arn: stack.queue_arn(queue)?.to_owned(),
                    batch_size: m.batch_size,
                    report_failures: m.report_batch_item_failures,
                    to_release: Vec::new(),
                    visibility_timeout: Duration::from_secs(stack.spec.local.visibility_timeout_seconds),
                    stats: MappingStats::default(),
                }),
                MappingSource::Table { table } => streams.push(stream_poller(stack, m, table)?),
                MappingSource::Stream { stream } => {
                    kinesis.push(crate::kinesis::KinesisPoller::new(stack, m, stream)?);
                }
            }
        }
        let parallelization = 1;
        Ok(Self { stack, lambda, sqs, streams, kinesis, request_seq: 0, sqs_concurrency: 1, parallelization })
    }

    /// Delivers concurrently, as Lambda does once it scales: `sqs` batches
    /// of each queue at once (each its own receive; SQS hides what one
    /// poller holds from the others, and a FIFO group in flight from all),
    /// and up to `parallelization` batches per stream shard at once, each
    /// holding the shard's records of some item keys in order (records of
    /// one key always go to the same batch: Lambda's parallelization factor
    /// keeps order per key). The functions need as many instances
    /// ([`Stack::function_concurrency`]).
    ///
    /// The local simplification: a failure in one of a shard's concurrent
    /// batches retries the shard from the earliest failed record of any of
    /// them, so records after it that another batch did process are
    /// delivered again (as on any stream retry), where Lambda keeps a
    /// checkpoint per batch. The exactly-once commits turn them into
    /// duplicates.
    pub fn concurrent(mut self, sqs: usize, parallelization: usize) -> Self {
        self.sqs_concurrency = sqs.max(1);
        self.parallelization = parallelization.clamp(1, 10);
        self
    }

    /// Per-mapping statistics, by label (`function <- source`).
    pub fn stats(&self) -> BTreeMap<String, MappingStats> {
        self.sqs
            .iter()
            .map(|p| (p.label.clone(), p.stats.clone()))
            .chain(self.streams.iter().map(|p| (p.label.clone(), p.stats.clone())))
            .chain(self.kinesis.iter().map(|p| (p.label.clone(), p.stats.clone())))
            .collect()
    }

    /// One round: every poller fetches at most one batch per queue/shard and
    /// delivers it. Returns whether any poller found records.
    pub async fn poll_once(&mut self, progress: &mut dyn FnMut(&InvocationReport)) -> Result<bool> {
        let mut worked = false;
        for i in 0..self.sqs.len() {
            worked |= self.poll_sqs(i, progress).await?;
        }
        for i in 0..self.streams.len() {
            worked |= self.poll_stream(i, progress).await?;
        }
        for poller in &mut self.kinesis {
            let factor = poller.parallelization.unwrap_or(self.parallelization);
            worked |= poller.poll(self.stack, self.lambda, factor, progress).await?;
        }
        Ok(worked)
    }

    /// Runs the pollers until every source queue is empty (nothing visible or
    /// in flight; dead-letter queues are not sources) and every stream shard
    /// is read to its end, or fails after `timeout`.
    pub async fn drain(
        &mut self,
        timeout: Duration,
        progress: &mut dyn FnMut(&InvocationReport),
    ) -> Result<BTreeMap<String, MappingStats>> {
        let deadline = Instant::now() + timeout;
        loop {
            let worked = self.poll_once(progress).await?;
            if !worked {
                let mut pending = Vec::new();
                let keys: Vec<String> = self.sqs.iter().map(|p| p.queue_key.clone()).collect();
                for key in &keys {
                    let depth = self.stack.queue_depth(key).await?;
                    if depth > 0 {
                        pending.push(format!("{key}: {depth} message(s)"));
                    }
                }
                pending.extend(self.kinesis.iter().flat_map(|p| p.pending()));
                if pending.is_empty() {
                    return Ok(self.stats());
                }
                if Instant::now() >= deadline {
                    bail!("the pipeline did not drain within {timeout:?}; still pending: {}", pending.join(", "));
                }
                tokio::time::sleep(IDLE_POLL).await;
            } else if Instant::now() >= deadline {
                bail!("the pipeline did not drain within {timeout:?}: pollers still busy");
            }
        }
    }

    async fn poll_sqs(&mut self, index: usize, progress: &mut dyn FnMut(&InvocationReport)) -> Result<bool> {
        self.release_timed_out(index).await?;
        let this = &*self;
        let deliveries = futures::future::join_all((0..this.sqs_concurrency).map(|_| this.deliver_sqs(index))).await;
        let mut worked = false;
        for delivery in deliveries {
            if let Some(delivery) = delivery? {
                worked = true;
                self.account_sqs(index, delivery, progress)?;
            }
        }
        Ok(worked)
    }

    /// Receives one batch, invokes the function, deletes what succeeded.
    async fn deliver_sqs(&self, index: usize) -> Result<Option<SqsDelivery>> {
        let sqs = &self.stack.sqs;
        let poller = &self.sqs[index];
        let mut messages: Vec<Message> = Vec::new();
        while messages.len() < poller.batch_size {
            let want = (poller.batch_size - messages.len()).min(SQS_MAX_MESSAGES);
            let out = sqs
                .receive_message()
                .queue_url(&poller.url)
                .max_number_of_messages(i32::try_from(want).unwrap_or(10))
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .wait_time_seconds(0)
                .send()
                .await
                .with_context(|| format!("receiving from queue {}", poller.queue_key))?;
            let got = out.messages().to_vec();
            if got.is_empty() {
                break;
            }
            messages.extend(got);
        }
        if messages.is_empty() {
            return Ok(None);
        }
        // After every receive: no message's timeout ends before this plus it.
        let received_at = Instant::now();
        let region = &self.stack.spec.region;
        let records: Vec<Value> = messages.iter().map(|m| sqs_record(m, &poller.arn, region)).collect();
        let event = json!({ "Records": records });
        let ids: Vec<String> = messages.iter().map(|m| m.message_id().unwrap_or_default().to_owned()).collect();
        let outcome = self.lambda.invoke(&poller.function, &event).await?;
        let (failed, function_error) = match outcome {
            Invocation::Ok(response) => {
                if poller.report_failures {
                    match reported_failures(&response, &ids) {
                        Some(f) => (f, None),
                        // AWS: an unknown or empty id fails the whole batch.
                        None => (ids.iter().cloned().collect(), None),
                    }
                } else {
                    (HashSet::new(), None)
                }
            }
            Invocation::FunctionError { error_type, message } => {
                (ids.iter().cloned().collect(), Some(format!("{error_type}: {message}")))
            }
        };
        let to_delete: Vec<&Message> =
            messages.iter().filter(|m| !failed.contains(m.message_id().unwrap_or_default())).collect();
        for chunk in to_delete.chunks(SQS_MAX_MESSAGES) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .build()
                        .context("delete entry")
                })
                .collect::<Result<Vec<_>>>()?;
            let out = sqs
                .delete_message_batch()
                .queue_url(&poller.url)
                .set_entries(Some(entries))
                .send()
                .await
                .with_context(|| format!("deleting from queue {}", poller.queue_key))?;
            if !out.failed().is_empty() {
                bail!("deleting processed messages from {} failed: {:?}", poller.queue_key, out.failed());
            }
        }
        let deleted = to_delete.len();
        Ok(Some(SqsDelivery { messages, received_at, failed, function_error, deleted }))
    }

    fn account_sqs(
        &mut self,
        index: usize,
        delivery: SqsDelivery,
        progress: &mut dyn FnMut(&InvocationReport),
    ) -> Result<()> {
        let SqsDelivery { messages, received_at, failed, function_error, deleted } = delivery;
        let poller = &mut self.sqs[index];
        if self.stack.spec.queue(&poller.queue_key)?.fifo {
            let visible_again = received_at + poller.visibility_timeout;
            poller.to_release.extend(
                messages
                    .iter()
                    .filter(|m| failed.contains(m.message_id().unwrap_or_default()))
                    .filter_map(|m| Some((visible_again, m.receipt_handle()?.to_owned()))),
            );
        }
        poller.stats.invocations += 1;
        poller.stats.records += messages.len() as u64;
        poller.stats.deleted += deleted as u64;
        if function_error.is_some() {
            poller.stats.function_errors += 1;
        } else {
            poller.stats.item_failures += failed.len() as u64;
        }
        let redelivered = messages
            .iter()
            .filter(|m| {
                m.attributes()
                    .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse::<u64>().ok())
                    .is_some_and(|c| c > 1)
            })
            .count();
        progress(&InvocationReport {
            mapping: poller.label.clone(),
            records: messages.len(),
            item_failures: if function_error.is_some() { 0 } else { failed.len() },
            function_error,
            sent_to_on_failure: false,
            redelivered,
        });
        Ok(())
    }

    /// Marks the FIFO messages whose visibility timeout has passed visible
    /// (see the module documentation). A message that has since gone (to the
    /// dead-letter queue) is no error.
    async fn release_timed_out(&mut self, index: usize) -> Result<()> {
        let poller = &mut self.sqs[index];
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = poller.to_release.drain(..).partition(|(at, _)| *at <= now);
        poller.to_release = later;
        for chunk in due.chunks(SQS_MAX_MESSAGES) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (_, handle))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .visibility_timeout(0)
                        .build()
                        .context("visibility entry")
                })
                .collect::<Result<Vec<_>>>()?;
            self.stack
                .sqs
                .change_message_visibility_batch()
                .queue_url(&poller.url)
                .set_entries(Some(entries))
                .send()
                .await
                .with_context(|| format!("releasing timed-out messages of queue {}", poller.queue_key))?;
        }
        Ok(())
    }

    async fn poll_stream(&mut self, index: usize, progress: &mut dyn FnMut(&InvocationReport)) -> Result<bool> {
        let arn = self.streams[index].stream_arn.clone();
        let description = match self.stack.streams_call("DescribeStream", json!({ "StreamArn": arn })).await {
            Ok(d) => d,
            // The table (and with it the stream) was deleted: nothing to
            // read, as for a mapping whose source is gone. Tests delete
            // tables to make functions fail.
            Err(e) if format!("{e:#}").contains("ResourceNotFoundException") => return Ok(false),
            Err(e) => return Err(e),
        };
        let shard_ids: Vec<String> = description
            .pointer("/StreamDescription/Shards")
            .and_then(Value::as_array)
            .map(|shards| {
                shards.iter().filter_map(|s| s.get("ShardId").and_then(Value::as_str).map(str::to_owned)).collect()
            })
            .unwrap_or_default();
        let mut worked = false;
        for shard in shard_ids {
            worked |= self.poll_shard(index, &shard, progress).await?;
        }
        Ok(worked)
    }

    async fn poll_shard(
        &mut self,
        index: usize,
        shard: &str,
        progress: &mut dyn FnMut(&InvocationReport),
    ) -> Result<bool> {
        let poller = &mut self.streams[index];
        let batch_size = poller.batch_size;
        let state = poller
            .shards
            .entry(shard.to_owned())
            .or_insert_with(|| ShardState {
                position: Position::Start,
                failed_attempts: 0,
                limit: batch_size,
                finished: false,
            })
            .clone();
        if state.finished {
            return Ok(false);
        }
        let arn = poller.stream_arn.clone();
        let (iterator_type, sequence) = match &state.position {
            Position::Start => ("TRIM_HORIZON", None),
            Position::At(s) => ("AT_SEQUENCE_NUMBER", Some(s.clone())),
            Position::After(s) => ("AFTER_SEQUENCE_NUMBER", Some(s.clone())),
        };
        let mut request = json!({
            "StreamArn": arn, "ShardId": shard, "ShardIteratorType": iterator_type,
        });
        if let Some(s) = sequence {
            request["SequenceNumber"] = json!(s);
        }
        let iterator = self.stack.streams_call("GetShardIterator", request).await?;
        let Some(iterator) = iterator.get("ShardIterator").and_then(Value::as_str) else {
            return Ok(false);
        };
        let page =
            self.stack.streams_call("GetRecords", json!({ "ShardIterator": iterator, "Limit": state.limit })).await?;
        let records: Vec<Value> = page.get("Records").and_then(Value::as_array).cloned().unwrap_or_default();
        if records.is_empty() {
            if page.get("NextShardIterator").is_none_or(Value::is_null) {
                // A closed shard read to its end.
                if let Some(s) = self.streams[index].shards.get_mut(shard) {
                    s.finished = true;
                }
            }
            return Ok(false);
        }
        let page_full = records.len() >= state.limit;
        // Only moto writes phantom records; DynamoDB Local writes one record
        // per change, as DynamoDB does, and a key-only item is a real one.
        let (records, phantoms) = match self.stack.engine {
            Engine::Moto => drop_phantom_inserts(records, page_full),
            Engine::Local => (records, 0),
        };
        let poller = &mut self.streams[index];
        poller.stats.phantom_inserts_dropped += phantoms;
        let seq =
            |r: &Value| r.pointer("/dynamodb/SequenceNumber").and_then(Value::as_str).unwrap_or_default().to_owned();
        let last_seq = seq(records.last().expect("not empty"));
        let region = self.stack.spec.region.clone();
        let selected: Vec<Value> = records
            .iter()
            .filter(|r| passes(&poller.patterns, r))
            .map(|r| {
                let mut r = r.clone();
                r["eventSourceARN"] = json!(arn);
                // Lambda's record names the table's region; DynamoDB Local
                // writes `ddblocal` there, moto nothing.
                r["awsRegion"] = json!(region);
                r
            })
            .collect();
        poller.stats.filtered += (records.len() - selected.len()) as u64;
        let state = poller.shards.get_mut(shard).expect("inserted above");
        if selected.is_empty() {
            state.position = Position::After(last_seq);
            return Ok(true);
        }
        let function = poller.function.clone();
        let report_failures = poller.report_failures;
        let seqs: Vec<String> = selected.iter().map(seq).collect();
        // The shard's concurrent batches: positions in `selected`, by key.
        let lanes = lanes(&selected, self.parallelization);
        let lambda = self.lambda;
        let outcomes = futures::future::join_all(lanes.iter().map(|lane| {
            let event = json!({ "Records": lane.iter().map(|&i| &selected[i]).collect::<Vec<_>>() });
            let function = &function;
            async move { lambda.invoke(function, &event).await }
        }))
        .await;
        // Index (in `selected`) of the first record to retry, or None on
        // success: the earliest over the shard's batches.
        let mut retry_from: Option<usize> = None;
        let mut function_error = None;
        for (lane, outcome) in lanes.iter().zip(outcomes) {
            let lane_seqs: Vec<String> = lane.iter().map(|&i| seqs[i].clone()).collect();
            let (from, error) = match outcome? {
                Invocation::Ok(response) => {
                    if report_failures {
                        match reported_failures(&response, &lane_seqs) {
                            // AWS retries from the lowest reported sequence number.
                            Some(f) => (lane_seqs.iter().position(|s| f.contains(s)), None),
                            None => (Some(0), None),
                        }
                    } else {
                        (None, None)
                    }
                }
                Invocation::FunctionError { error_type, message } => {
                    (Some(0), Some(format!("{error_type}: {message}")))
                }
            };
            if let Some(from) = from.map(|f| lane[f])
                && retry_from.is_none_or(|r| from < r)
            {
                retry_from = Some(from);
                function_error = error;
            }
        }
        let poller = &mut self.streams[index];
        poller.stats.invocations += lanes.len() as u64;
        poller.stats.records += selected.len() as u64;
        let mut report = InvocationReport {
            mapping: poller.label.clone(),
            records: selected.len(),
            item_failures: 0,
            function_error: function_error.clone(),
            sent_to_on_failure: false,
            redelivered: 0,
        };
        let state = poller.shards.get_mut(shard).expect("inserted above");
        match retry_from {
            None => {
                state.position = Position::After(last_seq);
                state.failed_attempts = 0;
                state.limit = batch_size;
            }
            Some(from) => {
                if function_error.is_some() {
                    poller.stats.function_errors += 1;
                } else {
                    poller.stats.item_failures += 1;
                    report.item_failures = selected.len() - from;
                }
                state.failed_attempts += 1;
                let exhausted = poller.max_retries.is_some_and(|max| state.failed_attempts > max);
                if exhausted {
                    let failed = &selected[from..];
                    let attempts = state.failed_attempts;
                    state.position = Position::After(last_seq);
                    state.failed_attempts = 0;
                    state.limit = batch_size;
                    poller.stats.sent_to_on_failure += 1;
                    report.sent_to_on_failure = true;
                    let destination = poller.on_failure_url.clone();
                    let message = self.on_failure_message(index, shard, failed, attempts, &function_error);
                    if let Some(url) = destination {
                        self.stack
                            .sqs
                            .send_message()
                            .queue_url(&url)
                            .message_body(message.to_string())
                            .send()
                            .await
                            .context("sending to the stream's on-failure queue")?;
                    }
                } else {
                    state.position = Position::At(seqs[from].clone());
                    if function_error.is_some() && poller.bisect {
                        state.limit = (selected.len() / 2).max(1);
                    }
                }
            }
        }
        progress(&report);
        Ok(true)
    }

    /// The record Lambda sends to a stream mapping's on-failure destination.
    /// <https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html>
    fn on_failure_message(
        &mut self,
        index: usize,
        shard: &str,
        failed: &[Value],
        attempts: u32,
        function_error: &Option<String>,
    ) -> Value {
        self.request_seq += 1;
        let poller = &self.streams[index];
        let seq =
            |r: Option<&Value>| r.and_then(|r| r.pointer("/dynamodb/SequenceNumber")).cloned().unwrap_or(Value::Null);
        let arrival = |r: Option<&Value>| {
            r.and_then(|r| r.pointer("/dynamodb/ApproximateCreationDateTime"))
                .and_then(Value::as_f64)
                .map_or(Value::Null, |t| json!(rfc3339(t)))
        };
        let region = &self.stack.spec.region;
        let mut response_context = json!({ "statusCode": 200, "executedVersion": "$LATEST" });
        if function_error.is_some() {
            response_context["functionError"] = json!("Unhandled");
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        json!({
            "requestContext": {
                "requestId": format!("local-{:08x}-{:04x}", std::process::id(), self.request_seq),
                "functionArn": format!("arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{}", poller.function),
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": attempts,
            },
            "responseContext": response_context,
            "version": "1.0",
            "timestamp": rfc3339(now),
            "DDBStreamBatchInfo": {
                "shardId": shard,
                "startSequenceNumber": seq(failed.first()),
                "endSequenceNumber": seq(failed.last()),
                "approximateArrivalOfFirstRecord": arrival(failed.first()),
                "approximateArrivalOfLastRecord": arrival(failed.last()),
                "batchSize": failed.len(),
                "streamArn": poller.stream_arn,
            }
        })
    }
}

fn stream_poller(stack: &Stack, m: &MappingSpec, table: &str) -> Result<StreamPoller> {
    let stream_arn =
        stack.resources.stream_arns.get(table).with_context(|| format!("table {table} has no stream"))?.clone();
    let patterns = m.filter_patterns.iter().map(|p| Pattern::parse(p)).collect::<Result<Vec<_>>>()?;
    // The driver starts every shard at its beginning: the stack is created
    // empty, so TRIM_HORIZON is the only position that means something here.
    if let Some(p) = m.starting_position.as_deref().filter(|p| *p != "TRIM_HORIZON") {
        bail!("startingPosition {p} is not supported by the local driver (only TRIM_HORIZON)");
    }
    let on_failure_url = match &m.on_failure {
        Some(f) => Some(stack.queue_url(&f.queue)?.to_owned()),
        None => None,
    };
    Ok(StreamPoller {
        label: format!("{} <- {} stream", m.function, stack.spec.table(table)?.name),
        function: m.function.clone(),
        stream_arn,
        batch_size: m.batch_size,
        report_failures: m.report_batch_item_failures,
        patterns,
        bisect: m.bisect_batch_on_function_error,
        max_retries: m.maximum_retry_attempts,
        on_failure_url,
        shards: BTreeMap::new(),
        stats: MappingStats::default(),
    })
}

/// Compensates a moto 5.2.5 quirk: an `UpdateItem` (alone or in
/// `TransactWriteItems`) that creates an item writes two stream records, an
/// INSERT whose NewImage holds only the key attributes, then an INSERT with
/// the full item. DynamoDB writes one INSERT with the full item. A key-only
/// INSERT followed by a record for the same key is dropped; one that ends a
/// full page is deferred to the next read (its successor may be on the next
/// page); one that ends the shard so far is passed through as it is.
/// Returns the records to deliver and how many were dropped.
pub fn drop_phantom_inserts(records: Vec<Value>, page_full: bool) -> (Vec<Value>, u64) {
    let is_phantom = |r: &Value| {
        let keys = r.pointer("/dynamodb/Keys").and_then(Value::as_object);
        let image = r.pointer("/dynamodb/NewImage").and_then(Value::as_object);
        r.get("eventName").and_then(Value::as_str) == Some("INSERT")
            && r.pointer("/dynamodb/OldImage").is_none()
            && matches!((keys, image), (Some(k), Some(i)) if k.len() == i.len() && k.keys().all(|a| i.contains_key(a)))
    };
    let keys_of = |r: &Value| r.pointer("/dynamodb/Keys").cloned();
    let mut out = Vec::with_capacity(records.len());
    let mut dropped = 0;
    let last = records.len().saturating_sub(1);
    for (i, record) in records.iter().enumerate() {
        if is_phantom(record) {
            if let Some(next) = records.get(i + 1) {
                if keys_of(next) == keys_of(record) {
                    dropped += 1;
                    continue;
                }
            } else if i == last && page_full && !out.is_empty() {
                break;
            }
        }
        out.push(record.clone());
    }
    (out, dropped)
}

/// The ids a partial batch response reports, or `None` when the response is
/// invalid in a way that makes Lambda fail the whole batch (an id that is not
/// in the batch, or not a non-empty string).
fn reported_failures(response: &Value, ids: &[String]) -> Option<HashSet<String>> {
    let Some(failures) = response.get("batchItemFailures") else {
        return Some(HashSet::new());
    };
    if failures.is_null() {
        return Some(HashSet::new());
    }
    let mut out = HashSet::new();
    for f in failures.as_array()? {
        let id = f.get("itemIdentifier")?.as_str()?;
        if id.is_empty() || !ids.iter().any(|i| i == id) {
            return None;
        }
        out.insert(id.to_owned());
    }
    Some(out)
}

/// The SQS event record of a received message, as Lambda builds it.
fn sqs_record(m: &Message, queue_arn: &str, region: &str) -> Value {
    let attributes: serde_json::Map<String, Value> =
        m.attributes().map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), json!(v))).collect()).unwrap_or_default();
    let message_attributes: serde_json::Map<String, Value> = m
        .message_attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| {
                    let mut attr = json!({
                        "stringListValues": v.string_list_values(),
                        "binaryListValues": v
                            .binary_list_values()
                            .iter()
                            .map(|b| aws_smithy_types::base64::encode(b.as_ref()))
                            .collect::<Vec<_>>(),
                        "dataType": v.data_type(),
                    });
                    if let Some(s) = v.string_value() {
                        attr["stringValue"] = json!(s);
                    }
                    if let Some(b) = v.binary_value() {
                        attr["binaryValue"] = json!(aws_smithy_types::base64::encode(b.as_ref()));
                    }
                    (k.clone(), attr)
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "messageId": m.message_id(),
        "receiptHandle": m.receipt_handle(),
        "body": m.body().unwrap_or_default(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": m.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    })
}

/// Seconds since the epoch as RFC 3339 (UTC, milliseconds).
pub(crate) fn rfc3339(seconds: f64) -> String {
    let millis = (seconds * 1000.0) as i64;
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Splits a shard's batch into at most `factor` concurrent batches by item
/// key (`dynamodb.Keys`), keeping each key's records in order: positions in
/// `records`, each batch in record order, empty batches left out.
fn lanes(records: &[Value], factor: usize) -> Vec<Vec<usize>> {
    lanes_by(records, factor, |record| record.pointer("/dynamodb/Keys").map(Value::to_string).unwrap_or_default())
}

/// Splits a shard's batch into at most `factor` concurrent batches by the
/// key `key` reads from each record (a DynamoDB stream's item key, a
/// Kinesis record's partition key), as Lambda's parallelization factor
/// does: each key's records in order in one batch, empty batches left out.
pub(crate) fn lanes_by(records: &[Value], factor: usize, key: impl Fn(&Value) -> String) -> Vec<Vec<usize>> {
    use std::hash::{Hash, Hasher};
    let factor = factor.max(1);
    let mut lanes = vec![Vec::new(); factor];
    for (i, record) in records.iter().enumerate() {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key(record).hash(&mut hasher);
        let lane = usize::try_from(hasher.finish() % factor as u64).unwrap_or(0);
        lanes[lane].push(i);
    }
    lanes.retain(|l| !l.is_empty());
    lanes
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shard_batch_splits_by_key_keeping_each_keys_order() {
        let record = |key: &str, n: u32| serde_json::json!({ "dynamodb": { "Keys": { "pk": { "S": key } }, "n": n } });
        let records: Vec<serde_json::Value> =
            ["a", "b", "a", "c", "b", "a", "d", "e"].iter().zip(0..).map(|(k, n)| record(k, n)).collect();
        let lanes = super::lanes(&records, 3);
        assert!(lanes.len() <= 3 && lanes.len() > 1, "{lanes:?}");
        let mut all: Vec<usize> = lanes.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..records.len()).collect::<Vec<_>>(), "every record in exactly one batch");
        for lane in &lanes {
            assert!(lane.windows(2).all(|w| w[0] < w[1]), "record order within a batch: {lane:?}");
        }
        let lane_of = |i: usize| lanes.iter().position(|l| l.contains(&i));
        assert_eq!(lane_of(0), lane_of(2));
        assert_eq!(lane_of(0), lane_of(5));
        assert_eq!(lane_of(1), lane_of(4));
        assert_eq!(super::lanes(&records, 1), vec![(0..records.len()).collect::<Vec<_>>()]);
    }

    use super::*;

    #[test]
    fn partial_batch_response_validation() {
        let ids = vec!["a".to_owned(), "b".to_owned()];
        let ok = json!({"batchItemFailures": [{"itemIdentifier": "b"}]});
        assert_eq!(reported_failures(&ok, &ids), Some(HashSet::from(["b".to_owned()])));
        assert_eq!(reported_failures(&json!({}), &ids), Some(HashSet::new()));
        assert_eq!(reported_failures(&Value::Null, &ids), Some(HashSet::new()));
        let unknown = json!({"batchItemFailures": [{"itemIdentifier": "zzz"}]});
        assert_eq!(reported_failures(&unknown, &ids), None);
        let empty = json!({"batchItemFailures": [{"itemIdentifier": ""}]});
        assert_eq!(reported_failures(&empty, &ids), None);
    }

    fn record(name: &str, seq: &str, pk: &str, image: Value) -> Value {
        json!({
            "eventName": name,
            "dynamodb": {
                "Keys": {"pk": {"S": pk}, "sk": {"S": "ORDER"}},
                "NewImage": image,
                "SequenceNumber": seq,
            }
        })
    }

    #[test]
    fn moto_phantom_inserts_are_dropped_or_deferred() {
        let key_only = |pk: &str| json!({"pk": {"S": pk}, "sk": {"S": "ORDER"}});
        let full = |pk: &str| json!({"pk": {"S": pk}, "sk": {"S": "ORDER"}, "status": {"S": "PAID"}});
        let page = vec![
            record("INSERT", "1", "ORDER#a", key_only("ORDER#a")),
            record("INSERT", "2", "ORDER#a", full("ORDER#a")),
            record("INSERT", "3", "ORDER#b", key_only("ORDER#b")),
        ];
        let seqs = |v: &[Value]| -> Vec<String> {
            v.iter().map(|r| r["dynamodb"]["SequenceNumber"].as_str().unwrap().to_owned()).collect()
        };
        let (full_page, dropped) = drop_phantom_inserts(page.clone(), true);
        assert_eq!((seqs(&full_page), dropped), (vec!["2".to_owned()], 1));
        let (end_of_shard, _) = drop_phantom_inserts(page, false);
        assert_eq!(seqs(&end_of_shard), vec!["2", "3"]);
        // A real key-only item followed by another key is kept.
        let other = vec![
            record("INSERT", "1", "ORDER#a", key_only("ORDER#a")),
            record("INSERT", "2", "ORDER#b", full("ORDER#b")),
        ];
        assert_eq!(drop_phantom_inserts(other, true).0.len(), 2);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(1_573_689_886.021), "2019-11-14T00:04:46.021Z");
    }
}
