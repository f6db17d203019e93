"""The request-level engine with paged KV allocation and preemption by recompute, as vLLM V1 runs by
default (`serve --allocation paged`): where `traffic.run_engine` reserves each request's whole KV cache
at P + G when it is admitted, this engine holds only the KV of the tokens computed so far, and when the
next step's tokens do not fit it preempts the request admitted last: its KV is freed and it goes back
to the front of the queue, to compute its prompt and the tokens it had generated again when it is
admitted next (vLLM's recompute mode). With prefix caching, its full blocks stay among the cache's
free blocks until evicted, and its recompute starts after those it finds (`_RecomputeBlocks`).

The step is composed as `run_engine` composes it, with vLLM V1's memory rules:
- every decoding sequence's next token must fit; while it does not, the request admitted last is
  preempted;
- each running prefill, in the order admitted, takes its chunk if it fits, else the newest request is
  preempted until it does (itself, when it is the newest);
- waiting requests, the preempted first, are admitted only in a step that preempted none, while their
  first chunk (and their prompt blocks no running request holds) fits.

Memory per running request: `fixed` bytes from admission (the KV of sliding-window layers and
recurrent states, whole, as their size barely grows: the request's KV at P + G less `token_bytes` per
token) plus `token_bytes` for each token computed beyond its prompt blocks (those the prefix cache
holds, once). vLLM allocates 16-token blocks; this counts tokens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from simulator.errors import ConfigError
from simulator.prefix_cache import PrefixCache, PromptBlocks
from simulator.traffic import Piece, StepCoster, Trace, _decode_run, _RequestBlocks, _sizes, new_trace


@dataclass
class _Engine:
    """What runs, and what it holds: per request its prompt as it is computed now (the original, or
    with the tokens it had generated before a preemption) and the tokens left to generate."""

    prompt: list[int]
    generate: list[int]
    fixed: list[int]
    covered: list[int]  # prompt tokens its blocks cover (held by the prefix cache, not by it)
    token_bytes: int
    order: list[int] = field(default_factory=list)  # running ids, in the order admitted
    decoding: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (offset, last step)
    prefilled: dict[int, int] = field(default_factory=dict)  # id -> prompt tokens computed so far
    held: int = 0  # bytes of the running requests' own KV and the prompt blocks in use

    def own(self, rid: int, tokens: int) -> int:
        """Bytes request `rid` holds of its own with `tokens` tokens computed."""
        return self.fixed[rid] + self.token_bytes * max(tokens - self.covered[rid], 0)

    def tokens(self, rid: int, step: int) -> int:
        """Tokens computed of running request `rid` before global step `step`."""
        if rid in self.decoding:
            return step - self.decoding[rid][0]
        return self.prefilled[rid]


class _RecomputeBlocks:
    """A preempted request's own full blocks past its named prompt blocks (the rest of its prompt, the
    tokens it generated), left among the prefix cache's free blocks when it is preempted, as vLLM leaves
    every full block it computed: its recompute finds them where they were not evicted meanwhile."""

    def __init__(self, pool: PrefixCache | None) -> None:
        self.pool = pool

    def leave(self, rid: int, covered: int, tokens: int) -> None:
        """Request `rid` preempted with `tokens` computed, `covered` of them in named blocks."""
        if self.pool is None:
            return
        size = self.pool.block_tokens
        for j in range((tokens - covered) // size - 1, -1, -1):  # the tail first, as vLLM frees
            self.pool.free[("own", rid, j)] = None
            self.pool.free.move_to_end(("own", rid, j))

    def found(self, rid: int, hit: int, covered: int, prompt: int) -> list[tuple]:
        """The own blocks request `rid` finds after `hit` tokens of named blocks found: only where it
        found all of those, and at most up to its last token."""
        if self.pool is None or hit < covered:
            return []
        size, keys = self.pool.block_tokens, []
        while hit + size * (len(keys) + 1) <= prompt - 1 and ("own", rid, len(keys)) in self.pool.free:
            keys.append(("own", rid, len(keys)))
        return keys

    def take(self, keys: list[tuple]) -> None:
        for key in keys:
            del self.pool.free[key]


def run_paged_engine(
    coster: StepCoster,
    arrival: np.ndarray,
    generate: int | np.ndarray,
    token_budget: int,
    max_seqs: int,
    *,
    reserve: np.ndarray,
    room: int,
    token_bytes: int,
    prompt: np.ndarray | None = None,
    blocks: PromptBlocks | None = None,
    block_bytes: int = 0,
    recompute_blocks: tuple[int, int] | None = None,
) -> Trace:
    """The engine (module docstring) on requests arriving at `arrival` (sorted), each with its KV bytes
    at P + G (`reserve`) and `token_bytes` per token, in `room` bytes. Returns its `Trace`, with
    `preemptions` counted. `recompute_blocks` (block tokens, block bytes; those of `blocks` where
    given): a preempted request's own full blocks stay cached (`_RecomputeBlocks`); None: prefix
    caching off, it recomputes everything but the named blocks."""
    n = len(arrival)
    size = _sizes(coster, n, generate, prompt, reserve)
    total = np.asarray(size.prompt, dtype=np.int64) + np.asarray(size.generate, dtype=np.int64)
    fixed = np.maximum(np.asarray(reserve, dtype=np.int64) - token_bytes * total, 0)
    covered = [0] * n if blocks is None else (blocks.counts() * blocks.block_tokens).tolist()
    state = _Engine(list(size.prompt), list(size.generate), fixed.tolist(), covered, token_bytes)
    cache = _RequestBlocks(blocks, block_bytes, n, room)
    pool = None
    if recompute_blocks is not None:
        pool = cache.cache if blocks is not None else PrefixCache(*recompute_blocks)
    mine = _RecomputeBlocks(pool)

    def evict(free_room: int) -> None:
        cache.evict_to(free_room)
        if pool is not None:
            pool.evict_to(free_room)

    trace = new_trace(arrival)
    queue: deque[int] = deque()  # preempted requests, ahead of the arrivals not yet admitted
    waiting_since: dict[int, int] = {}  # a preempted request -> its entry in trace.requeued
    t, step, head, done = 0.0, 0, 0, 0

    def alone_too_big(rid: int) -> ConfigError:
        return ConfigError(
            f"request {rid + 1} by arrival: its KV cache does not fit in the memory left for requests"
        )

    def preempt(rid: int) -> None:
        """Free request `rid`'s KV and put it at the front of the queue; a decoding one will compute its
        prompt and the tokens it generated again."""
        tokens = state.tokens(rid, step)
        # a prompt only partly computed leaves its blocks after that uncached
        computed = None if rid in state.decoding else tokens
        mine.leave(rid, state.covered[rid], tokens)
        state.held -= state.own(rid, tokens) + cache.release(rid, computed)
        if rid in state.decoding:
            del state.decoding[rid]
            generated = tokens - state.prompt[rid] + 1  # since it was last admitted
            state.prompt[rid] += generated
            state.generate[rid] -= generated
        else:
            del state.prefilled[rid]
        state.order.remove(rid)
        queue.appendleft(rid)
        trace.preemptions += 1
        waiting_since[rid] = len(trace.requeued)
        trace.requeued.append(t)
        trace.readmitted.append(np.nan)

    def finish(rid: int, tokens: int) -> None:
        nonlocal done
        trace.finish[rid] = t
        state.held -= state.own(rid, tokens) + cache.release(rid)
        state.order.remove(rid)
        done += 1

    while done < n:
        arrived = int(np.searchsorted(arrival, t, side="right"))
        if not state.order and not queue and head == arrived:  # idle until the next request
            t = float(arrival[arrived])
            continue
        preempted = trace.preemptions
        # the queue's head waits for memory with own blocks found: an eviction lowers what it needs
        shrinking = False
        # every decoding sequence's next token must fit
        while state.held + token_bytes * len(state.decoding) > room:
            if len(state.order) == 1:
                raise alone_too_big(state.order[0])
            preempt(state.order[-1])
        left = token_budget - len(state.decoding)
        pieces: list[Piece] = []
        ends: list[int] = []
        growth = token_bytes * len(state.decoding)
        for rid in [r for r in state.order if r in state.prefilled]:
            if rid not in state.prefilled:  # preempted for an earlier prefill's chunk
                continue
            done_tokens = state.prefilled[rid]
            take = min(state.prompt[rid] - done_tokens, left)
            if take <= 0:
                continue
            grow = state.own(rid, done_tokens + take) - state.own(rid, done_tokens)
            while state.held + growth + grow > room and state.order[-1] != rid:
                newest = state.order[-1]
                if newest in state.decoding:
                    growth -= token_bytes
                    left += 1
                preempt(newest)
            if state.held + growth + grow > room:
                if len(state.order) == 1:
                    raise alone_too_big(rid)
                preempt(rid)
                continue
            take = min(take, left)
            pieces.append((take, done_tokens, done_tokens + take == state.prompt[rid]))
            state.prefilled[rid] = done_tokens + take
            growth += grow
            left -= take
            if done_tokens + take == state.prompt[rid]:
                ends.append(rid)
        # admissions, the preempted first, in a step that preempted none
        while trace.preemptions == preempted and left > 0 and len(state.order) < max_seqs:
            if queue:
                rid = queue[0]
            elif head < arrived:
                rid = head
            else:
                break
            hit = cache.hit(rid, state.prompt[rid])
            found = mine.found(rid, hit, state.covered[rid], state.prompt[rid])
            hit += len(found) * (pool.block_tokens if found else 0)
            take = min(state.prompt[rid] - hit, left)
            need = state.own(rid, hit + take) + cache.new_bytes(rid)
            if state.held + growth + need > room:
                if not state.order:
                    raise alone_too_big(rid)
                # evicting its cached hit lowers what it needs wherever the budget then cuts its chunk
                # (it needs the KV of min(prompt, hit + left) tokens)
                shrinking = hit > 0 and left < state.prompt[rid]
                break
            if queue:
                queue.popleft()
                trace.readmitted[waiting_since.pop(rid)] = t
            else:
                head += 1
                trace.admitted[rid] = t
                trace.cached[rid] = hit
            mine.take(found)
            cache.admit(rid, state.prompt[rid], room - state.held - growth - need)
            if pool is not None:
                pool.evict_to(room - state.held - growth - need)
            state.held += need
            state.order.append(rid)
            state.prefilled[rid] = hit + take
            pieces.append((take, hit, hit + take == state.prompt[rid]))
            left -= take
            if hit + take == state.prompt[rid]:
                ends.append(rid)
        state.held += growth
        trace.most_reserved = max(trace.most_reserved, state.held)
        evict(room - state.held)  # the step's tokens take their room from the free blocks
        decoding = len(state.decoding)
        running = len(state.order)
        if pieces:
            offsets = np.array([o for o, _ in state.decoding.values()], dtype=np.int64)
            dt = coster.step_time(step - offsets, pieces)
            end = t + dt
            trace.tally(
                np.array([t]),
                np.array([end]),
                decoding,
                np.array([float(decoding + len(ends))]),
                True,
                running,
            )
            steps, t = 1, end
            for rid in ends:
                if np.isnan(trace.first_token[rid]):
                    trace.first_token[rid] = end
                del state.prefilled[rid]
                if state.generate[rid] == 1:
                    finish(rid, state.prompt[rid])
                else:
                    state.decoding[rid] = (step + 1 - state.prompt[rid], step + state.generate[rid] - 1)
        elif state.decoding:
            # decode only: until the first sequence finishes or the memory left holds no more tokens,
            # or, with nothing waiting, until the step during which the next request arrives
            offsets = np.array([o for o, _ in state.decoding.values()], dtype=np.int64)
            most = min(last for _, last in state.decoding.values()) - step + 1
            fits = (room - state.held) // (token_bytes * decoding) + 1 if token_bytes else most
            # after a preemption the queue may be admitted next step, and a head whose cached hit is
            # being evicted may need less each step: one step, then compose again
            most = 1 if trace.preemptions != preempted or shrinking else max(1, min(most, fits))
            waiting = bool(queue) or head < arrived
            next_arrival = float(arrival[arrived]) if arrived < n else np.inf
            steps, t = _decode_run(coster, trace, offsets, step, most, t, next_arrival, waiting, running)
            state.held += token_bytes * decoding * (steps - 1)  # the first step's tokens counted above
            trace.most_reserved = max(trace.most_reserved, state.held)
            evict(room - state.held)  # as step by step: the targets only fall during the stretch
        else:  # everything running was preempted this step: compose the next one
            continue
        step += steps
        for rid, (offset, last) in list(state.decoding.items()):
            if last < step:
                del state.decoding[rid]
                finish(rid, step - offset)
    return trace
