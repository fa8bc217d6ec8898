//! The continuous-batching scheduler, after vLLM v1: one `step` decodes a token for
//! every running sequence, prefills chunks of waiting prompts within a token budget,
//! admits waiting requests in the order of `--scheduling-policy` (FCFS, or by request
//! priority), and preempts (recompute) the newest sequence when the KV cache runs out.
//! It is synchronous and clock-free: the engine loop supplies "now" and sleeps for the
//! step time it returns.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use tokio::sync::mpsc::UnboundedSender;

use crate::config::{SchedulingPolicy, StepModel};
use crate::kv_cache::{BlockHash, BlockId, BlockPool, extend_block_hashes};
use crate::kv_events::{FullHash, HashAlgo, KvEvent, vllm_block_hash, wire_hash};
use crate::metrics::EngineMetrics;
use crate::tokenizer::{Token, generated_token};

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The simulated model emitted end-of-sequence.
    Stop,
    /// It reached the request's `max_tokens`.
    Length,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a request asks of an engine.
#[derive(Debug)]
pub struct SeqSpec {
    /// Prompt tokens.
    pub prompt: Vec<Token>,
    /// Tokens to generate (0: prefill only, as for embeddings).
    pub max_tokens: u32,
    /// Reason reported when `max_tokens` is reached.
    pub finish_reason: FinishReason,
    /// Seed of the generated text.
    pub seed: u64,
    /// Prompt tokens whose KV arrives from a remote prefill instead of being computed.
    pub remote_kv_tokens: usize,
    /// Simulated arrival time.
    pub arrival: f64,
    /// vLLM's request `priority`: under `--scheduling-policy priority` lower values are
    /// admitted first; ignored under `fcfs`.
    pub priority: i64,
    /// Where this sequence's events go; a closed channel aborts the sequence.
    pub tx: UnboundedSender<SeqEvent>,
}

/// Events a sequence produces, each stamped with the simulated time it happened.
#[derive(Debug)]
pub enum SeqEvent {
    /// One generated token.
    Token { token: Token, time: f64 },
    /// The sequence is over.
    Done(SeqSummary),
}

/// Accounting of a finished sequence (simulated seconds).
#[derive(Clone, Debug)]
pub struct SeqSummary {
    pub prompt_tokens: usize,
    pub completion_tokens: u32,
    pub cached_tokens: usize,
    pub finish_reason: FinishReason,
    pub arrival: f64,
    pub scheduled: f64,
    pub first_token: f64,
    pub finished: f64,
    pub preemptions: u32,
    /// Prompt tokens this engine computed itself (neither found in its prefix cache nor
    /// received from a remote prefill); recomputation after a preemption counts again.
    pub computed_prompt_tokens: usize,
    /// The blocks that held the sequence when it finished (the prefill side of a
    /// prefill/decode split reports them as `remote_block_ids`).
    pub block_ids: Vec<BlockId>,
}

#[derive(Debug)]
struct Seq {
    spec: SeqSpec,
    prompt_len: usize,
    /// Prompt plus generated tokens.
    tokens: Vec<Token>,
    hashes: Vec<BlockHash>,
    /// vLLM's full hashes of the blocks (only kept when publishing `sha256_cbor` events).
    full_hashes: Vec<FullHash>,
    blocks: Vec<BlockId>,
    registered: usize,
    num_computed: usize,
    computed_prompt_tokens: usize,
    output: u32,
    cached_tokens: Option<usize>,
    scheduled_at: Option<f64>,
    first_token_at: Option<f64>,
    last_token_at: f64,
    kv_ready_at: Option<f64>,
    preemptions: u32,
    /// Submission order: the last tie-break of the priority queue (equal priority and
    /// arrival), so that order stays deterministic.
    order: u64,
}

/// A waiting sequence in the priority queue. `BinaryHeap` pops its greatest element,
/// so "greater" here means "admitted sooner": lower `priority`, then earlier arrival,
/// then earlier submission.
struct ByPriority(Seq);

impl ByPriority {
    fn key(&self) -> (i64, f64, u64) {
        let s = &self.0;
        (s.spec.priority, s.spec.arrival, s.order)
    }
}

impl Ord for ByPriority {
    fn cmp(&self, other: &Self) -> Ordering {
        let (p, a, o) = self.key();
        let (q, b, r) = other.key();
        q.cmp(&p)
            .then_with(|| b.total_cmp(&a))
            .then_with(|| r.cmp(&o))
    }
}

impl PartialOrd for ByPriority {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for ByPriority {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for ByPriority {}

/// Requests not yet running, in the order `--scheduling-policy` admits them.
enum Waiting {
    /// Arrival order; a preempted sequence goes back to the front.
    Fcfs(VecDeque<Seq>),
    /// A heap on (priority, arrival, submission order): O(log n) to add or take one,
    /// however long the queue. A preempted sequence returns to its place by that key
    /// (as in vLLM, where "prepending" to the priority queue is a plain insert).
    Priority(BinaryHeap<ByPriority>),
}

impl Waiting {
    fn new(policy: SchedulingPolicy) -> Self {
        match policy {
            SchedulingPolicy::Fcfs => Waiting::Fcfs(VecDeque::new()),
            SchedulingPolicy::Priority => Waiting::Priority(BinaryHeap::new()),
        }
    }

    /// Queues a newly arrived sequence.
    fn push(&mut self, seq: Seq) {
        match self {
            Waiting::Fcfs(q) => q.push_back(seq),
            Waiting::Priority(h) => h.push(ByPriority(seq)),
        }
    }

    /// Puts back a sequence taken by [`Waiting::pop`] (it did not fit) or preempted:
    /// first in line under FCFS, at its priority otherwise.
    fn requeue(&mut self, seq: Seq) {
        match self {
            Waiting::Fcfs(q) => q.push_front(seq),
            Waiting::Priority(h) => h.push(ByPriority(seq)),
        }
    }

    /// Takes the sequence to admit next.
    fn pop(&mut self) -> Option<Seq> {
        match self {
            Waiting::Fcfs(q) => q.pop_front(),
            Waiting::Priority(h) => h.pop().map(|b| b.0),
        }
    }

    fn len(&self) -> usize {
        match self {
            Waiting::Fcfs(q) => q.len(),
            Waiting::Priority(h) => h.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn retain(&mut self, mut keep: impl FnMut(&Seq) -> bool) {
        match self {
            Waiting::Fcfs(q) => q.retain(|s| keep(s)),
            Waiting::Priority(h) => h.retain(|b| keep(&b.0)),
        }
    }
}

/// Scheduler limits and costs.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub block_size: usize,
    pub num_gpu_blocks: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub prefix_caching: bool,
    /// Order in which waiting requests are admitted.
    pub policy: SchedulingPolicy,
    pub step: StepModel,
    /// Multiplies every step time (a slower engine).
    pub step_multiplier: f64,
    pub kv_transfer_base_secs: f64,
    pub kv_transfer_token_secs: f64,
}

/// What one call to [`Scheduler::step`] did.
#[derive(Debug, PartialEq)]
pub enum StepOutcome {
    /// A batch ran; it lasts this many simulated seconds.
    Ran { secs: f64 },
    /// Nothing can run now; wake at this simulated time if nothing arrives first.
    Idle { wake_at: Option<f64> },
}

/// A point-in-time view of the scheduler.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SchedulerStats {
    pub running: usize,
    pub waiting: usize,
    pub free_blocks: usize,
    pub cached_blocks: usize,
    pub kv_usage: f64,
    pub evictions: u64,
}

/// One engine's scheduler and KV cache.
pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    waiting: Waiting,
    running: Vec<Seq>,
    metrics: EngineMetrics,
    outbox: Vec<(UnboundedSender<SeqEvent>, SeqEvent)>,
    scheduled: Vec<(usize, usize)>,
    /// Submission order of the next request added.
    next_order: u64,
    /// KV-cache events of the steps since the last [`take_kv_events`], when published.
    kv: Option<KvRecorder>,
}

/// What the scheduler needs to publish KV-cache events.
struct KvRecorder {
    algo: HashAlgo,
    /// vLLM's `NONE_HASH`: the parent of a sequence's first block.
    none_hash: FullHash,
    events: Vec<KvEvent>,
}

impl KvRecorder {
    /// The published hash of block `i` of `seq` (its hash computed first if needed).
    fn wire(&self, seq: &mut Seq, i: usize, bs: usize) -> u64 {
        match self.algo {
            HashAlgo::Builtin => seq.hashes[i],
            HashAlgo::Sha256Cbor => {
                while seq.full_hashes.len() <= i {
                    let j = seq.full_hashes.len();
                    let parent = seq.full_hashes.last().unwrap_or(&self.none_hash);
                    let h = vllm_block_hash(parent, &seq.tokens[j * bs..(j + 1) * bs]);
                    seq.full_hashes.push(h);
                }
                wire_hash(&seq.full_hashes[i])
            }
        }
    }
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, metrics: EngineMetrics) -> Self {
        Scheduler {
            pool: BlockPool::new(cfg.num_gpu_blocks),
            waiting: Waiting::new(cfg.policy),
            cfg,
            running: Vec::new(),
            metrics,
            outbox: Vec::new(),
            scheduled: Vec::new(),
            next_order: 0,
            kv: None,
        }
    }

    /// Records KV-cache events (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`) for
    /// [`take_kv_events`](Self::take_kv_events), with block hashes computed by `algo`.
    pub fn publish_kv_events(&mut self, algo: HashAlgo, none_hash: FullHash) {
        self.pool.record_removals();
        self.kv = Some(KvRecorder {
            algo,
            none_hash,
            events: Vec::new(),
        });
    }

    /// KV-cache events since the last call (empty unless publishing).
    pub fn take_kv_events(&mut self) -> Vec<KvEvent> {
        match &mut self.kv {
            Some(k) => std::mem::take(&mut k.events),
            None => Vec::new(),
        }
    }

    /// The engine process restarted: every cached prefix is gone and nothing is
    /// published about it (a new process starts with an empty cache).
    pub fn restart(&mut self) {
        self.pool.reset();
        self.pool.take_removed();
        if let Some(k) = &mut self.kv {
            k.events.clear();
        }
    }

    /// Queues a request: behind every earlier one under `fcfs`, by its priority under
    /// `priority`.
    pub fn add(&mut self, spec: SeqSpec) {
        let mut hashes = Vec::new();
        if self.cfg.prefix_caching {
            extend_block_hashes(&mut hashes, &spec.prompt, self.cfg.block_size);
        }
        let seq = Seq {
            prompt_len: spec.prompt.len(),
            tokens: spec.prompt.clone(),
            hashes,
            full_hashes: Vec::new(),
            blocks: Vec::new(),
            registered: 0,
            num_computed: 0,
            computed_prompt_tokens: 0,
            output: 0,
            cached_tokens: None,
            scheduled_at: None,
            first_token_at: None,
            last_token_at: spec.arrival,
            kv_ready_at: None,
            preemptions: 0,
            order: self.next_order,
            spec,
        };
        self.next_order += 1;
        self.waiting.push(seq);
        self.metrics.waiting.set(self.waiting.len() as i64);
    }

    /// True when nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Forgets every cached prefix (published as `AllBlocksCleared`).
    pub fn reset_prefix_cache(&mut self) {
        self.pool.reset();
        if let Some(k) = &mut self.kv {
            k.events.push(KvEvent::AllBlocksCleared {});
        }
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            free_blocks: self.pool.num_free(),
            cached_blocks: self.pool.num_cached(),
            kv_usage: self.pool.usage(),
            evictions: self.pool.evictions(),
        }
    }

    /// Events produced by the last step, to deliver once its simulated time has passed.
    pub fn take_events(&mut self) -> std::vec::Drain<'_, (UnboundedSender<SeqEvent>, SeqEvent)> {
        self.outbox.drain(..)
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.cfg.block_size)
    }

    /// Plans and applies one engine step starting at simulated time `now`.
    pub fn step(&mut self, now: f64) -> StepOutcome {
        self.drop_cancelled();
        let mut budget = self.cfg.max_num_batched_tokens;
        self.scheduled.clear();
        let mut preempted = false;

        // 1. Running sequences first, oldest first; preempt the newest when out of blocks.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if let Some(t) = self.running[i].kv_ready_at {
                if t > now {
                    i += 1;
                    continue;
                }
                self.running[i].kv_ready_at = None;
            }
            let seq = &self.running[i];
            let num_new = (seq.tokens.len() - seq.num_computed).min(budget);
            let need = self
                .blocks_for(seq.num_computed + num_new)
                .saturating_sub(seq.blocks.len());
            let mut fits = true;
            while self.pool.num_free() < need {
                let victim = self.running.len() - 1;
                preempted = true;
                self.preempt(victim);
                if victim == i {
                    fits = false;
                    break;
                }
            }
            if !fits {
                break;
            }
            let new_blocks = self.pool.allocate(need).expect("checked free blocks");
            self.running[i].blocks.extend(new_blocks);
            budget -= num_new;
            self.scheduled.push((i, num_new));
            i += 1;
        }

        // 2. Admit waiting requests in policy order (FCFS, or lowest priority value then
        // earliest arrival) while budget, slots and blocks allow. Priority only orders
        // this queue: running sequences are never preempted to make room for a
        // higher-priority waiting one (vLLM does that under KV pressure; the simulator
        // keeps preempting the newest running sequence, as in step 1).
        while !preempted && budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(mut seq) = self.waiting.pop() else {
                break;
            };
            let bs = self.cfg.block_size;
            if self.cfg.prefix_caching {
                extend_block_hashes(&mut seq.hashes, &seq.tokens, bs);
            }
            let len = seq.tokens.len();
            // At least one token must be computed to produce logits.
            let max_hit_blocks = (len - 1) / bs;
            let hits = if self.cfg.prefix_caching {
                self.pool
                    .lookup(&seq.hashes[..max_hit_blocks.min(seq.hashes.len())])
            } else {
                Vec::new()
            };
            let hit_tokens = hits.len() * bs;
            let remote = seq.spec.remote_kv_tokens > 0 && seq.output == 0;
            let (computed, num_new) = if remote {
                (len - 1, 0)
            } else {
                (hit_tokens, (len - hit_tokens).min(budget))
            };
            let total_blocks = if remote {
                len.div_ceil(bs)
            } else {
                (computed + num_new).div_ceil(bs)
            };
            let need = total_blocks.saturating_sub(hits.len());
            self.pool.touch(&hits);
            let Some(new_blocks) = self.pool.allocate(need) else {
                self.pool.free(&hits);
                // Still first in line: it is retried at the next step.
                self.waiting.requeue(seq);
                break;
            };
            self.metrics.queries.inc_by(len as u64);
            self.metrics.hits.inc_by(hit_tokens as u64);
            seq.cached_tokens.get_or_insert(hit_tokens);
            if seq.scheduled_at.is_none() {
                seq.scheduled_at = Some(now);
                self.metrics.queue.observe(now - seq.spec.arrival);
            }
            seq.registered = hits.len();
            seq.blocks = hits;
            seq.blocks.extend(new_blocks);
            seq.num_computed = computed;
            if remote {
                let transferred = len.saturating_sub(hit_tokens);
                seq.kv_ready_at = Some(
                    now + self.cfg.kv_transfer_base_secs
                        + self.cfg.kv_transfer_token_secs * transferred as f64,
                );
            } else {
                budget -= num_new;
                self.scheduled.push((self.running.len(), num_new));
            }
            self.running.push(seq);
        }

        self.metrics.running.set(self.running.len() as i64);
        self.metrics.waiting.set(self.waiting.len() as i64);
        self.metrics.kv_usage.set(self.pool.usage());

        if self.scheduled.is_empty() {
            let wake_at = self
                .running
                .iter()
                .filter_map(|s| s.kv_ready_at)
                .min_by(f64::total_cmp);
            return StepOutcome::Idle { wake_at };
        }

        // 3. Cost of the batch.
        let (mut prefill, mut decode, mut context) = (0usize, 0usize, 0usize);
        for &(idx, n) in &self.scheduled {
            let s = &self.running[idx];
            if n == 1 && s.output > 0 && s.num_computed + 1 == s.tokens.len() {
                decode += 1;
            } else {
                prefill += n;
            }
            context += s.num_computed + n;
        }
        let secs = self.cfg.step.step_secs(prefill, decode, context) * self.cfg.step_multiplier;
        let end = now + secs;

        // 4. Apply the batch: advance, cache full blocks, sample tokens, finish. Blocks
        // evicted to make room for this batch are published before those it fills.
        if let Some(k) = &mut self.kv {
            let removed = self.pool.take_removed();
            k.events.extend(removed.into_iter().map(KvEvent::removed));
        }
        let mut any_finished = false;
        for k in 0..self.scheduled.len() {
            let (idx, n) = self.scheduled[k];
            let bs = self.cfg.block_size;
            let caching = self.cfg.prefix_caching;
            let seq = &mut self.running[idx];
            seq.computed_prompt_tokens += n.min(seq.prompt_len.saturating_sub(seq.num_computed));
            seq.num_computed += n;
            if caching {
                extend_block_hashes(&mut seq.hashes, &seq.tokens[..seq.num_computed], bs);
                // Each run of consecutive newly cached blocks is one `BlockStored`.
                let mut run: Option<(usize, Vec<u64>)> = None;
                while seq.registered < seq.num_computed / bs {
                    let i = seq.registered;
                    let wire = self.kv.as_ref().map_or(0, |k| k.wire(seq, i, bs));
                    let cached = self.pool.cache_block(seq.blocks[i], seq.hashes[i], wire);
                    seq.registered += 1;
                    let Some(k) = &mut self.kv else { continue };
                    match (&mut run, cached) {
                        (Some((_, hashes)), true) => hashes.push(wire),
                        (None, true) => run = Some((i, vec![wire])),
                        (Some(_), false) => stored_event(k, seq, run.take(), bs),
                        (None, false) => {}
                    }
                }
                if let Some(k) = &mut self.kv {
                    stored_event(k, seq, run, bs);
                }
            }
            if seq.num_computed < seq.tokens.len() {
                continue; // prompt chunk still in progress
            }
            if seq.output < seq.spec.max_tokens {
                let token = generated_token(seq.spec.seed, seq.output);
                seq.tokens.push(token);
                seq.output += 1;
                if seq.first_token_at.is_none() {
                    seq.first_token_at = Some(end);
                    self.metrics.ttft.observe(end - seq.spec.arrival);
                    self.metrics.prompt_tokens.inc_by(seq.prompt_len as u64);
                } else {
                    self.metrics.itl.observe(end - seq.last_token_at);
                }
                seq.last_token_at = end;
                self.metrics.generation_tokens.inc();
                self.outbox
                    .push((seq.spec.tx.clone(), SeqEvent::Token { token, time: end }));
            } else if seq.first_token_at.is_none() {
                seq.first_token_at = Some(end);
                self.metrics.prompt_tokens.inc_by(seq.prompt_len as u64);
            }
            if seq.output >= seq.spec.max_tokens {
                any_finished = true;
            }
        }
        if any_finished {
            self.finish_done(end);
        }
        self.metrics.running.set(self.running.len() as i64);
        self.metrics.kv_usage.set(self.pool.usage());
        StepOutcome::Ran { secs }
    }

    fn finish_done(&mut self, end: f64) {
        let mut k = 0;
        while k < self.running.len() {
            let s = &self.running[k];
            if s.output >= s.spec.max_tokens && s.first_token_at.is_some() {
                let seq = self.running.remove(k);
                self.pool.free(&seq.blocks);
                self.metrics.e2e.observe(end - seq.spec.arrival);
                match seq.spec.finish_reason {
                    FinishReason::Stop => self.metrics.finished_stop.inc(),
                    FinishReason::Length => self.metrics.finished_length.inc(),
                };
                let summary = SeqSummary {
                    prompt_tokens: seq.prompt_len,
                    completion_tokens: seq.output,
                    cached_tokens: seq.cached_tokens.unwrap_or(0),
                    finish_reason: seq.spec.finish_reason,
                    arrival: seq.spec.arrival,
                    scheduled: seq.scheduled_at.unwrap_or(end),
                    first_token: seq.first_token_at.unwrap_or(end),
                    finished: end,
                    preemptions: seq.preemptions,
                    computed_prompt_tokens: seq.computed_prompt_tokens,
                    block_ids: seq.blocks,
                };
                self.outbox.push((seq.spec.tx, SeqEvent::Done(summary)));
            } else {
                k += 1;
            }
        }
    }

    fn preempt(&mut self, idx: usize) {
        // Freed blocks stay cached: preemption publishes nothing.
        let mut seq = self.running.remove(idx);
        self.pool.free(&seq.blocks);
        seq.blocks.clear();
        seq.registered = 0;
        seq.num_computed = 0;
        seq.kv_ready_at = None;
        // The transferred KV is gone with the blocks: recompute locally.
        seq.spec.remote_kv_tokens = 0;
        seq.preemptions += 1;
        self.metrics.preemptions.inc();
        self.waiting.requeue(seq);
    }

    fn drop_cancelled(&mut self) {
        let pool = &mut self.pool;
        let metrics = &self.metrics;
        self.running.retain(|s| {
            let gone = s.spec.tx.is_closed();
            if gone {
                pool.free(&s.blocks);
                metrics.finished_abort.inc();
            }
            !gone
        });
        self.waiting.retain(|s| {
            let gone = s.spec.tx.is_closed();
            if gone {
                metrics.finished_abort.inc();
            }
            !gone
        });
    }
}

/// Publishes the run of blocks `start..start + hashes.len()` of `seq` as one `BlockStored`.
fn stored_event(k: &mut KvRecorder, seq: &mut Seq, run: Option<(usize, Vec<u64>)>, bs: usize) {
    let Some((start, hashes)) = run else { return };
    let parent = (start > 0).then(|| k.wire(seq, start - 1, bs));
    let tokens = seq.tokens[start * bs..(start + hashes.len()) * bs].to_vec();
    k.events.push(KvEvent::stored(hashes, parent, tokens, bs));
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::*;

    /// One sequence at a time, so the waiting queue's order is the order of service.
    fn scheduler(policy: SchedulingPolicy) -> Scheduler {
        let cfg = SchedulerConfig {
            block_size: 16,
            num_gpu_blocks: 1000,
            max_num_seqs: 1,
            max_num_batched_tokens: 8192,
            prefix_caching: true,
            policy,
            step: StepModel::default(),
            step_multiplier: 1.0,
            kv_transfer_base_secs: 0.0,
            kv_transfer_token_secs: 0.0,
        };
        Scheduler::new(cfg, EngineMetrics::default())
    }

    /// A request with a distinct prompt, arriving at `arrival` with `priority`.
    fn spec(
        id: u32,
        priority: i64,
        arrival: f64,
        max_tokens: u32,
    ) -> (SeqSpec, UnboundedReceiver<SeqEvent>) {
        let (tx, rx) = unbounded_channel();
        let spec = SeqSpec {
            prompt: (0..40).map(|i| id * 1000 + i).collect(),
            max_tokens,
            finish_reason: FinishReason::Length,
            seed: u64::from(id),
            remote_kv_tokens: 0,
            arrival,
            priority,
            tx,
        };
        (spec, rx)
    }

    /// Runs a holder (already running) and then `queued` requests `(name, priority,
    /// arrival)` that wait behind it; returns their names in the order they were
    /// scheduled.
    fn service_order(
        policy: SchedulingPolicy,
        queued: &[(&'static str, i64, f64)],
    ) -> Vec<&'static str> {
        let mut sched = scheduler(policy);
        let mut now = 0.0;
        let (holder, _holder_rx) = spec(0, 0, now, 5);
        sched.add(holder);
        let StepOutcome::Ran { secs } = sched.step(now) else {
            panic!("the holder runs");
        };
        now += secs;
        let mut rxs = Vec::new();
        for (i, &(name, priority, arrival)) in queued.iter().enumerate() {
            let (s, rx) = spec(i as u32 + 1, priority, now + arrival, 2);
            sched.add(s);
            rxs.push((name, rx));
        }
        assert_eq!(sched.stats().running, 1);
        assert_eq!(sched.stats().waiting, queued.len());
        while !sched.is_idle() {
            match sched.step(now) {
                StepOutcome::Ran { secs } => now += secs,
                StepOutcome::Idle { .. } => panic!("nothing blocks these requests"),
            }
            for (tx, event) in sched.take_events() {
                let _ = tx.send(event);
            }
        }
        let mut scheduled: Vec<(f64, &'static str)> = rxs
            .iter_mut()
            .map(|(name, rx)| {
                let mut at = None;
                while let Ok(event) = rx.try_recv() {
                    if let SeqEvent::Done(s) = event {
                        at = Some(s.scheduled);
                    }
                }
                (at.expect("every request finishes"), *name)
            })
            .collect();
        scheduled.sort_by(|a, b| a.0.total_cmp(&b.0));
        // One slot: no two requests can have been admitted in the same step.
        assert!(
            scheduled.windows(2).all(|w| w[0].0 < w[1].0),
            "{scheduled:?}"
        );
        scheduled.into_iter().map(|(_, name)| name).collect()
    }

    #[test]
    fn priority_policy_admits_the_lowest_priority_value_first() {
        let order = service_order(
            SchedulingPolicy::Priority,
            &[("p5", 5, 0.0), ("p0", 0, 0.001)],
        );
        assert_eq!(order, ["p0", "p5"]);
    }

    #[test]
    fn fcfs_policy_ignores_priority() {
        let order = service_order(SchedulingPolicy::Fcfs, &[("p5", 5, 0.0), ("p0", 0, 0.001)]);
        assert_eq!(order, ["p5", "p0"]);
    }

    #[test]
    fn priority_ties_go_to_the_earlier_arrival_then_the_earlier_submission() {
        let order = service_order(
            SchedulingPolicy::Priority,
            &[
                ("p3 late", 3, 0.002),
                ("p3 early", 3, 0.001),
                ("p3 early, submitted later", 3, 0.001),
                ("p-1", -1, 0.003),
                ("p7", 7, 0.0),
            ],
        );
        assert_eq!(
            order,
            [
                "p-1",
                "p3 early",
                "p3 early, submitted later",
                "p3 late",
                "p7"
            ]
        );
    }

    #[test]
    fn a_waiting_request_that_does_not_fit_keeps_its_place() {
        // 9 blocks of 16 tokens and two slots: the holder (40 prompt tokens) takes 3
        // blocks; the p1 request's 100-token prompt needs 7, which are free only once
        // the holder is gone. The p9 request behind it (3 blocks) would fit at once but
        // must not overtake it.
        let mut sched = Scheduler::new(
            SchedulerConfig {
                num_gpu_blocks: 9,
                max_num_seqs: 2,
                ..scheduler(SchedulingPolicy::Priority).cfg
            },
            EngineMetrics::default(),
        );
        let (holder, _holder_rx) = spec(0, 0, 0.0, 5);
        sched.add(holder);
        let StepOutcome::Ran { secs } = sched.step(0.0) else {
            panic!("the holder runs");
        };
        let mut now = secs;
        let (mut big, mut big_rx) = spec(1, 1, now, 1);
        big.prompt = (0..100).map(|i| 50_000 + i).collect();
        let (small, mut small_rx) = spec(2, 9, now, 1);
        sched.add(big);
        sched.add(small);
        let StepOutcome::Ran { secs } = sched.step(now) else {
            panic!("the holder decodes");
        };
        now += secs;
        let stats = sched.stats();
        assert_eq!((stats.running, stats.waiting), (1, 2), "{stats:?}");
        while !sched.is_idle() {
            let StepOutcome::Ran { secs } = sched.step(now) else {
                panic!("nothing blocks these requests once the holder is done");
            };
            now += secs;
            for (tx, event) in sched.take_events() {
                let _ = tx.send(event);
            }
        }
        let scheduled_at = |rx: &mut UnboundedReceiver<SeqEvent>| loop {
            match rx.try_recv() {
                Ok(SeqEvent::Done(s)) => return s.scheduled,
                Ok(SeqEvent::Token { .. }) => continue,
                Err(e) => panic!("no summary: {e}"),
            }
        };
        assert!(scheduled_at(&mut big_rx) < scheduled_at(&mut small_rx));
    }
}
