//! `workflow_aware`: keep a workflow's requests on one worker, so its agents share the
//! engine's cache of the workflow's growing context (docs/workflows.md).
//!
//! A workflow's first request is placed by the cache-aware cost (uncached prefill plus
//! queued work). Later requests stay on that worker while it is a candidate (healthy,
//! not draining, breaker closed) and its load stays within the bound set by
//! `--batching-preference` `b`, with `load_w = (in_flight_w + engine_waiting_w) /
//! weight_w` and `min` the lowest load among the candidates:
//!
//! ```text
//! stay  ⇔  load_home ≤ min + k · (1 + min),    k = b / (1 − b)
//! ```
//!
//! `b = 0` places every request by the cache-aware cost (the policy is `cache_aware`);
//! `b = 1` stays while the worker is a candidate at all; the default 0.8 (k = 4) lets the
//! home worker run four requests (plus four per request on the lightest) ahead of
//! the lightest before the workflow moves.
//!
//! Beyond the bound the request goes where the cache-aware cost is lowest, the home
//! included: the home still wins when the prompt it holds outweighs its queue (moving
//! would recompute the workflow's context elsewhere). When another worker is cheaper,
//! the workflow **splits** if it is itself the load — at least two of its own requests
//! are in flight on its home (a fan-out burst): the request goes to that worker, which
//! the workflow keeps as its overflow while it is within the bound; the home stays.
//! Otherwise the workflow **migrates**: the cheaper worker becomes its home. A home
//! that is no longer a candidate (failed, draining, removed) is a migration too. Requests without
//! a workflow are placed by the cache-aware cost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cache_aware::{CacheAware, CacheAwareConfig};
use super::{Pick, Policy, PolicyContext};
use crate::fleet::{Worker, WorkerId};
use crate::request::RequestView;

/// Settings of the workflow-aware policy.
#[derive(Clone, Debug)]
pub struct WorkflowAwareConfig {
    pub cache: CacheAwareConfig,
    pub batching_preference: f64,
    /// A workflow idle this long is forgotten.
    pub ttl: Duration,
    /// Most workflows remembered (least recently active forgotten first).
    pub max_workflows: usize,
}

/// Where one workflow runs.
struct Placement {
    home: WorkerId,
    overflow: Option<WorkerId>,
    /// Its requests in flight, per worker.
    in_flight: HashMap<WorkerId, usize>,
    last: Instant,
}

pub struct WorkflowAware {
    cfg: WorkflowAwareConfig,
    cache: CacheAware,
    placements: Mutex<HashMap<Arc<str>, Placement>>,
    migrations: AtomicU64,
    splits: AtomicU64,
}

/// The load the bound compares: queued work per unit of weight.
fn load(w: &Worker) -> f64 {
    (w.in_flight() + w.engine_load().1 as usize) as f64 / w.weight().max(1) as f64
}

impl WorkflowAware {
    pub fn new(cfg: WorkflowAwareConfig) -> Self {
        WorkflowAware {
            cache: CacheAware::new(cfg.cache.clone()),
            cfg,
            placements: Mutex::new(HashMap::new()),
            migrations: AtomicU64::new(0),
            splits: AtomicU64::new(0),
        }
    }

    /// Whether `w` is within the bound among `candidates`.
    fn within(&self, w: &Worker, candidates: &[Arc<Worker>]) -> bool {
        let b = self.cfg.batching_preference;
        if b >= 1.0 {
            return true;
        }
        let min = candidates
            .iter()
            .map(|c| load(c))
            .fold(f64::INFINITY, f64::min);
        let k = b / (1.0 - b);
        load(w) <= min + k * (1.0 + min)
    }

    /// Workflows moved to another worker, and requests sent to an overflow worker.
    pub fn moves(&self) -> (u64, u64) {
        (
            self.migrations.load(Ordering::Relaxed),
            self.splits.load(Ordering::Relaxed),
        )
    }

    /// Makes `candidates[index]` the workflow's home (a migration, counted).
    fn migrate(&self, p: &mut Placement, candidates: &[Arc<Worker>], index: usize) -> Pick {
        p.home = candidates[index].id.clone();
        p.overflow = None;
        self.migrations.fetch_add(1, Ordering::Relaxed);
        Pick {
            index,
            reason: "workflow_migrated",
        }
    }

    /// Drops idle workflows past the TTL, then the least recently active idle ones
    /// until at most `keep` remain.
    fn forget_old(&self, map: &mut HashMap<Arc<str>, Placement>, keep: usize) {
        let ttl = self.cfg.ttl;
        map.retain(|_, p| p.last.elapsed() < ttl || p.in_flight.values().any(|n| *n > 0));
        while map.len() > keep {
            let oldest = map
                .iter()
                .filter(|(_, p)| p.in_flight.values().all(|n| *n == 0))
                .min_by_key(|(_, p)| p.last)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
    }
}

impl Policy for WorkflowAware {
    fn name(&self) -> &'static str {
        "workflow_aware"
    }

    fn pick(
        &self,
        candidates: &[Arc<Worker>],
        req: &RequestView,
        ctx: &PolicyContext,
    ) -> Option<Pick> {
        let Some(wf) = req.workflow.as_ref() else {
            return self.cache.pick(candidates, req, ctx);
        };
        if self.cfg.batching_preference <= 0.0 {
            return self.cache.pick(candidates, req, ctx);
        }
        let mut map = self.placements.lock().expect("placements lock");
        let at = |id: &WorkerId| candidates.iter().position(|w| w.id == *id);
        // Another replica's placement (shared through Redis) is the workflow's home here
        // too, while it is a candidate: replicas agree on one worker.
        let shared = req.workflow_homes[ctx.role.index()]
            .as_ref()
            .and_then(|label| candidates.iter().find(|w| w.label == *label));
        if let Some(w) = shared {
            match map.get_mut(&wf.id) {
                Some(p) if p.home != w.id => {
                    p.home = w.id.clone();
                    p.overflow = None;
                }
                Some(_) => {}
                None => {
                    self.forget_old(&mut map, self.cfg.max_workflows.max(1) - 1);
                    map.insert(
                        wf.id.clone(),
                        Placement {
                            home: w.id.clone(),
                            overflow: None,
                            in_flight: HashMap::new(),
                            last: Instant::now(),
                        },
                    );
                }
            }
        }
        if let Some(p) = map.get_mut(&wf.id) {
            p.last = Instant::now();
            if let Some(i) = at(&p.home) {
                if self.within(&candidates[i], candidates) {
                    return Some(Pick {
                        index: i,
                        reason: "workflow_home",
                    });
                }
                // Over the bound, the workflow leaves only for a worker where the
                // request costs less even counting the prompt it must compute there
                // (the cache-aware cost, home included): a burst of the workflow's own
                // splits to it, anything else moves there.
                let pick = self.cache.pick(candidates, req, ctx)?;
                if pick.index == i {
                    return Some(Pick {
                        index: i,
                        reason: "workflow_home",
                    });
                }
                let own = p.in_flight.get(&p.home).copied().unwrap_or(0);
                if own >= 2 {
                    let j = match p.overflow.as_ref().and_then(at) {
                        Some(j) if self.within(&candidates[j], candidates) => j,
                        _ => pick.index,
                    };
                    p.overflow = Some(candidates[j].id.clone());
                    self.splits.fetch_add(1, Ordering::Relaxed);
                    return Some(Pick {
                        index: j,
                        reason: if j == pick.index {
                            "workflow_split"
                        } else {
                            "workflow_overflow"
                        },
                    });
                }
                return Some(self.migrate(p, candidates, pick.index));
            }
            // The home is gone: move.
            let pick = self.cache.pick(candidates, req, ctx)?;
            return Some(self.migrate(p, candidates, pick.index));
        }
        let pick = self.cache.pick(candidates, req, ctx)?;
        self.forget_old(&mut map, self.cfg.max_workflows.max(1) - 1);
        map.insert(
            wf.id.clone(),
            Placement {
                home: candidates[pick.index].id.clone(),
                overflow: None,
                in_flight: HashMap::new(),
                last: Instant::now(),
            },
        );
        Some(Pick {
            index: pick.index,
            reason: "workflow_placed",
        })
    }

    fn on_routed(&self, worker: &Arc<Worker>, req: &RequestView, _ctx: &PolicyContext) {
        if let Some(wf) = &req.workflow
            && let Some(p) = self
                .placements
                .lock()
                .expect("placements lock")
                .get_mut(&wf.id)
        {
            *p.in_flight.entry(worker.id.clone()).or_default() += 1;
        }
    }

    fn on_finished(&self, worker: &Arc<Worker>, req: &RequestView, _success: bool) {
        if let Some(wf) = &req.workflow
            && let Some(p) = self
                .placements
                .lock()
                .expect("placements lock")
                .get_mut(&wf.id)
            && let Some(n) = p.in_flight.get_mut(&worker.id)
        {
            *n = n.saturating_sub(1);
        }
    }

    fn on_worker_removed(&self, worker: &WorkerId, ctx: &PolicyContext) {
        self.cache.on_worker_removed(worker, ctx);
        for p in self
            .placements
            .lock()
            .expect("placements lock")
            .values_mut()
        {
            if p.overflow.as_ref() == Some(worker) {
                p.overflow = None;
            }
            p.in_flight.remove(worker);
        }
    }

    fn reads_prefixes(&self) -> bool {
        true
    }

    fn wants_engine_load(&self) -> bool {
        true
    }

    fn maintain(&self) {
        let mut map = self.placements.lock().expect("placements lock");
        self.forget_old(&mut map, self.cfg.max_workflows.max(1));
    }

    fn hit_stats(&self) -> (u64, u64) {
        self.cache.hit_stats()
    }

    fn workflow_moves(&self) -> (u64, u64) {
        self.moves()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::test_worker;
    use crate::request::workflow::Workflow;
    use crate::routing::tests::{ctx, view};

    fn policy(b: f64) -> WorkflowAware {
        WorkflowAware::new(WorkflowAwareConfig {
            cache: CacheAwareConfig {
                cache_threshold: 0.5,
                balance_abs_threshold: 32,
                balance_rel_threshold: 1.5,
                queue_weight: 1.0,
            },
            batching_preference: b,
            ttl: Duration::from_secs(3600),
            max_workflows: 100,
        })
    }

    fn of(id: &str) -> RequestView {
        let mut v = view(vec![1, 2, 3, 4], None);
        v.workflow = Some(Arc::new(Workflow {
            id: Arc::from(id),
            agent: Some(Arc::from("a")),
            priority: None,
            sharing: None,
        }));
        v
    }

    #[test]
    fn a_workflow_stays_home_within_the_bound_and_moves_beyond_it() {
        let p = policy(0.5); // k = 1: stay while load ≤ min + (1 + min)
        let c = ctx();
        let ws = vec![test_worker(1), test_worker(2), test_worker(3)];
        let req = of("wf");
        let home = p.pick(&ws, &req, &c).unwrap();
        assert_eq!(home.reason, "workflow_placed");
        // One request of other traffic on the home: within the bound (1 ≤ 0 + 1).
        let _one = ws[home.index].begin();
        let again = p.pick(&ws, &req, &c).unwrap();
        assert_eq!((again.index, again.reason), (home.index, "workflow_home"));
        // A second one: beyond it, and not the workflow's own burst → it moves.
        let _two = ws[home.index].begin();
        let moved = p.pick(&ws, &req, &c).unwrap();
        assert_eq!(moved.reason, "workflow_migrated");
        assert_ne!(moved.index, home.index);
        assert_eq!(p.moves(), (1, 0));
        // The new home holds.
        let next = p.pick(&ws, &req, &c).unwrap();
        assert_eq!((next.index, next.reason), (moved.index, "workflow_home"));
    }

    #[test]
    fn beyond_the_bound_a_home_that_holds_the_prompt_stays_while_it_is_cheaper() {
        let p = policy(0.5); // k = 1
        let c = ctx();
        let ws = vec![test_worker(1), test_worker(2), test_worker(3)];
        let req = of("wf");
        let home = p.pick(&ws, &req, &c).unwrap().index;
        c.prefix.record(&req.prefix_blocks, &ws[home].id);
        // Two requests queued on the home: beyond the bound (2 > 0 + 1), but its cost
        // (0 uncached blocks + 2 queued) is below any other's (4 uncached + 0 queued).
        let _two: Vec<_> = (0..2).map(|_| ws[home].begin()).collect();
        let stay = p.pick(&ws, &req, &c).unwrap();
        assert_eq!((stay.index, stay.reason), (home, "workflow_home"));
        // Five queued: now the idle workers are cheaper (4 < 5), and it moves.
        let _three: Vec<_> = (0..3).map(|_| ws[home].begin()).collect();
        let moved = p.pick(&ws, &req, &c).unwrap();
        assert_eq!(moved.reason, "workflow_migrated");
        assert_eq!(p.moves(), (1, 0));
    }

    #[test]
    fn a_failed_home_is_a_migration() {
        let p = policy(0.8);
        let c = ctx();
        let ws = vec![test_worker(1), test_worker(2)];
        let req = of("wf");
        let home = p.pick(&ws, &req, &c).unwrap().index;
        let rest: Vec<Arc<Worker>> = ws.iter().filter(|w| w.id != ws[home].id).cloned().collect();
        let moved = p.pick(&rest, &req, &c).unwrap();
        assert_eq!(moved.reason, "workflow_migrated");
        assert_eq!(p.moves(), (1, 0));
    }

    #[test]
    fn a_burst_of_the_workflows_own_splits_to_a_second_worker() {
        let p = policy(0.5);
        let c = ctx();
        let ws = vec![test_worker(1), test_worker(2), test_worker(3)];
        let req = of("wf");
        let home = p.pick(&ws, &req, &c).unwrap().index;
        // Two of its own requests in flight on the home.
        let _g: Vec<_> = (0..2)
            .map(|_| {
                p.on_routed(&ws[home], &req, &c);
                ws[home].begin()
            })
            .collect();
        let split = p.pick(&ws, &req, &c).unwrap();
        assert_eq!(split.reason, "workflow_split");
        assert_ne!(split.index, home);
        // The overflow worker is kept, and the home is still home.
        let again = p.pick(&ws, &req, &c).unwrap();
        assert_eq!(
            (again.index, again.reason),
            (split.index, "workflow_overflow")
        );
        assert_eq!(p.moves(), (0, 2));
        for _ in 0..2 {
            p.on_finished(&ws[home], &req, true);
        }
        drop(_g);
        assert_eq!(p.pick(&ws, &req, &c).unwrap().index, home);
    }

    #[test]
    fn preference_one_always_stays_and_zero_is_cache_aware() {
        let c = ctx();
        let ws = vec![test_worker(1), test_worker(2)];
        let sticky = policy(1.0);
        let req = of("wf");
        let home = sticky.pick(&ws, &req, &c).unwrap().index;
        let _load: Vec<_> = (0..50).map(|_| ws[home].begin()).collect();
        assert_eq!(sticky.pick(&ws, &req, &c).unwrap().index, home);
        let loose = policy(0.0);
        let pick = loose.pick(&ws, &req, &c).unwrap();
        assert_ne!(pick.index, home, "placed by cost: the idle worker");
        assert!(!pick.reason.starts_with("workflow"));
    }

    #[test]
    fn requests_without_a_workflow_are_placed_by_cost() {
        let p = policy(0.8);
        let c = ctx();
        let ws = vec![test_worker(1), test_worker(2)];
        let _busy = ws[0].begin();
        let pick = p.pick(&ws, &view(vec![9, 8, 7], None), &c).unwrap();
        assert_eq!(pick.index, 1);
        assert!(!pick.reason.starts_with("workflow"));
    }

    #[test]
    fn idle_workflows_are_forgotten_beyond_the_bound() {
        let mut p = policy(0.8);
        p.cfg.max_workflows = 2;
        let c = ctx();
        let ws = vec![test_worker(1)];
        for id in ["a", "b", "c"] {
            p.pick(&ws, &of(id), &c).unwrap();
        }
        let map = p.placements.lock().unwrap();
        assert_eq!(map.len(), 2);
        assert!(!map.contains_key("a"));
    }
}
