//! The continuous-batching scheduler, after vLLM v1: one `step` decodes a token for
//! every running sequence, prefills chunks of waiting prompts within a token budget,
//! admits waiting requests FCFS, and preempts (recompute) the newest sequence when the
//! KV cache runs out. It is synchronous and clock-free: the engine loop supplies "now"
//! and sleeps for the step time it returns.

use std::collections::VecDeque;

use tokio::sync::mpsc::UnboundedSender;

use crate::config::StepModel;
use crate::kv_cache::{BlockHash, BlockId, BlockPool, extend_block_hashes};
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
    blocks: Vec<BlockId>,
    registered: usize,
    num_computed: usize,
    output: u32,
    cached_tokens: Option<usize>,
    scheduled_at: Option<f64>,
    first_token_at: Option<f64>,
    last_token_at: f64,
    kv_ready_at: Option<f64>,
    preemptions: u32,
}

/// Scheduler limits and costs.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub block_size: usize,
    pub num_gpu_blocks: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub prefix_caching: bool,
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
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    metrics: EngineMetrics,
    outbox: Vec<(UnboundedSender<SeqEvent>, SeqEvent)>,
    scheduled: Vec<(usize, usize)>,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, metrics: EngineMetrics) -> Self {
        Scheduler {
            pool: BlockPool::new(cfg.num_gpu_blocks),
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            metrics,
            outbox: Vec::new(),
            scheduled: Vec::new(),
        }
    }

    /// Queues a request (FCFS).
    pub fn add(&mut self, spec: SeqSpec) {
        let mut hashes = Vec::new();
        if self.cfg.prefix_caching {
            extend_block_hashes(&mut hashes, &spec.prompt, self.cfg.block_size);
        }
        let seq = Seq {
            prompt_len: spec.prompt.len(),
            tokens: spec.prompt.clone(),
            hashes,
            blocks: Vec::new(),
            registered: 0,
            num_computed: 0,
            output: 0,
            cached_tokens: None,
            scheduled_at: None,
            first_token_at: None,
            last_token_at: spec.arrival,
            kv_ready_at: None,
            preemptions: 0,
            spec,
        };
        self.waiting.push_back(seq);
        self.metrics.waiting.set(self.waiting.len() as i64);
    }

    /// True when nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Forgets every cached prefix.
    pub fn reset_prefix_cache(&mut self) {
        self.pool.reset();
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

        // 2. Admit waiting requests FCFS while budget, slots and blocks allow.
        while !preempted && budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(seq) = self.waiting.front_mut() else {
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
                break;
            };
            let mut seq = self.waiting.pop_front().expect("front exists");
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

        // 4. Apply the batch: advance, cache full blocks, sample tokens, finish.
        let mut any_finished = false;
        for k in 0..self.scheduled.len() {
            let (idx, n) = self.scheduled[k];
            let bs = self.cfg.block_size;
            let caching = self.cfg.prefix_caching;
            let seq = &mut self.running[idx];
            seq.num_computed += n;
            if caching {
                extend_block_hashes(&mut seq.hashes, &seq.tokens[..seq.num_computed], bs);
                while seq.registered < seq.num_computed / bs {
                    self.pool
                        .cache_block(seq.blocks[seq.registered], seq.hashes[seq.registered]);
                    seq.registered += 1;
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
                    block_ids: seq.blocks,
                };
                self.outbox.push((seq.spec.tx, SeqEvent::Done(summary)));
            } else {
                k += 1;
            }
        }
    }

    fn preempt(&mut self, idx: usize) {
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
        self.waiting.push_front(seq);
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
