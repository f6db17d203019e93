"""Automatic prefix caching for the request-level engine (`serve --rate --shared-prefix`, and traces
whose requests name their prompt blocks: Mooncake's `hash_ids`).

A prompt is cut into blocks of `block_tokens` tokens; a full block is known by a hash of everything up
to its end, so two prompts share a block only where they share the whole prefix before it. The engine
keeps, as vLLM V1's block pool does:
- blocks in use, with a count of the running requests using them: their KV is held once however many
  requests share it, and a request admitted after another has cached a block computes its prompt only
  from the first block missing (at most up to its last token, which is always computed: it yields the
  first output token);
- blocks no running request uses, kept in HBM in least-recently-used order and evicted, oldest first,
  when the requests' reservations need the room.

What the engine charges a request at admission is its own part of the KV cache (its output, the tail of
its prompt past the last full block) reserved whole, plus each prompt block no running request holds
yet. Simplifications:
- one block of any request holds `block_bytes`: what its tokens add to the KV of the longest request
  (`traffic.block_kv_bytes`), so a sliding-window layer keeps its KV with its request;
- blocks are cached when their request is admitted, where vLLM caches them as their tokens are
  scheduled: the same, since a request is admitted only while budget is left, when every prompt before
  it has been scheduled whole;
- blocks of generated tokens are not cached (a trace names prompt blocks only).
Models with a recurrent mixer keep no per-token state to share, so they run without it
(`prefix_cacheable`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from simulator.config import RECURRENT_KINDS, ModelConfig
from simulator.errors import ConfigError

VLLM_BLOCK_TOKENS = 16  # vLLM's default block size on GPUs
MOONCAKE_BLOCK_TOKENS = 512  # the Mooncake traces hash prompts in blocks of 512 tokens


def prefix_cacheable(model: ModelConfig) -> bool:
    """Whether a cached prompt prefix lets the model skip computing it: false where a block has a
    recurrent mixer, whose state after the prefix is one tensor per sequence, not per-token KV."""
    return not any(m.kind in RECURRENT_KINDS for b in model.blocks for m in b.mixers)


class PromptBlocks(Protocol):
    """Per request, by its index in arrival order, the hashes of its prompt's full blocks in order."""

    block_tokens: int

    def __len__(self) -> int: ...

    def of(self, i: int) -> list[int]: ...

    def counts(self) -> np.ndarray: ...


@dataclass(frozen=True)
class ListedBlocks:
    """Blocks a trace lists: request i's are `ids[starts[i]:starts[i + 1]]`."""

    block_tokens: int
    ids: np.ndarray  # int64
    starts: np.ndarray  # int64, one more than there are requests

    def __len__(self) -> int:
        return len(self.starts) - 1

    def of(self, i: int) -> list[int]:
        return self.ids[self.starts[i] : self.starts[i + 1]].tolist()

    def counts(self) -> np.ndarray:
        return np.diff(self.starts)

    @classmethod
    def from_lists(cls, block_tokens: int, per_request: list[list[int]], prompt: np.ndarray) -> ListedBlocks:
        """From each request's block hashes (a partial last block included, as Mooncake lists it): the
        full blocks of each prompt are kept."""
        full = np.asarray(prompt, dtype=np.int64) // block_tokens
        kept = [h[: int(n)] for h, n in zip(per_request, full, strict=True)]
        counts = np.array([len(h) for h in kept], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        ids = np.fromiter((x for h in kept for x in h), dtype=np.int64, count=int(counts.sum()))
        return cls(block_tokens, ids, starts)


@dataclass(frozen=True)
class SharedPrefixBlocks:
    """`requests` prompts of `prompt` tokens that all begin with the same `shared_tokens` (a system
    prompt) and differ after it: the shared full blocks have hashes 0 .. k - 1, every other block a hash
    of its own (made on demand: a million requests' blocks would not fit in memory as a table)."""

    block_tokens: int
    requests: int
    prompt: int
    shared_tokens: int

    def __post_init__(self) -> None:
        if not 0 <= self.shared_tokens <= self.prompt:
            raise ConfigError(
                f"--shared-prefix {self.shared_tokens}: from 0 to the prompt's {self.prompt} tokens"
            )

    def __len__(self) -> int:
        return self.requests

    def of(self, i: int) -> list[int]:
        per, k = self.prompt // self.block_tokens, self.shared_tokens // self.block_tokens
        first = k + i * (per - k)
        return [*range(k), *range(first, first + per - k)]

    def counts(self) -> np.ndarray:
        return np.full(self.requests, self.prompt // self.block_tokens, dtype=np.int64)


class PrefixCache:
    """The blocks held in HBM (module docstring): `held` maps a block in use to its users, `free` keeps
    the unused ones oldest first. `held_bytes` is what the blocks in use hold."""

    def __init__(self, block_tokens: int, block_bytes: int) -> None:
        self.block_tokens = block_tokens
        self.block_bytes = block_bytes
        self.held: dict[int, int] = {}
        self.free: OrderedDict[int, None] = OrderedDict()

    @property
    def held_bytes(self) -> int:
        return len(self.held) * self.block_bytes

    @property
    def free_bytes(self) -> int:
        return len(self.free) * self.block_bytes

    def hit_tokens(self, blocks: list[int], prompt: int) -> int:
        """Prompt tokens a request finds cached: its leading blocks that are held or free, at most up to
        its last token (which is always computed)."""
        most = (prompt - 1) // self.block_tokens
        n = 0
        for h in blocks[:most]:
            if h not in self.held and h not in self.free:
                break
            n += 1
        return n * self.block_tokens

    def new_bytes(self, blocks: list[int]) -> int:
        """What a request's blocks add to the bytes in use: each no running request holds yet."""
        return sum(self.block_bytes for h in blocks if h not in self.held)

    def take(self, blocks: list[int]) -> None:
        """A request admitted: its blocks are in use (cached, where they were not)."""
        for h in blocks:
            if h in self.held:
                self.held[h] += 1
            else:
                self.free.pop(h, None)
                self.held[h] = 1

    def give_back(self, blocks: list[int], computed: int | None = None) -> int:
        """A request finished (or was preempted with only its first `computed` blocks computed): a block
        nobody else uses becomes a free one, the newest, or is dropped where it was never computed.
        Returns the bytes that leave the blocks in use."""
        freed = 0
        kept = len(blocks) if computed is None else computed
        for i in range(len(blocks) - 1, -1, -1):  # the tail first: evicted before the prefix
            h = blocks[i]
            left = self.held[h] - 1
            if left:
                self.held[h] = left
            else:
                del self.held[h]
                if i < kept:
                    self.free[h] = None
                freed += self.block_bytes
        return freed

    def evict_to(self, most_free_bytes: int) -> None:
        """Evict free blocks, oldest first, until those kept take at most `most_free_bytes`."""
        keep = max(most_free_bytes, 0) // self.block_bytes if self.block_bytes else len(self.free)
        while len(self.free) > keep:
            self.free.popitem(last=False)
