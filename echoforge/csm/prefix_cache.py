"""Prefix caching of voice prompts: the backbone KV of a pinned voice prompt, computed once.

A cloned voice is a reference clip (up to 15 s ≈ 190 frames + its transcript) pinned at the
start of every prompt that uses the voice (``prompt.Prompt.prefix_len``). Its keys/values
depend only on those rows and the model, so the runner stores them here after the first
request prefills them and copies them into the slot of every later request with the same
prefix, which then prefills only its own text (vLLM / nano-vllm call this prefix caching,
Sesame's plan "KV-cache sharing").

* **Key**: a digest of the prefix rows themselves (``Prompt.prefix_key``): speaker, transcript
  and Mimi codes. A voice whose clip or transcript changes gets a new key, so a stale entry is
  never hit again (it ages out of the LRU); :meth:`PrefixCache.clear` drops everything. One
  cache belongs to one runner, i.e. one model on one device.
* **Budget**: entries are evicted least-recently-used first when their bytes exceed
  ``budget_bytes`` (an entry larger than the budget is not stored at all).
* **Exact**: the scheduler prefills a prompt in chunks whose boundaries do not depend on the
  cache (the prefix is always its own run of chunks), so a request that loads the prefix runs
  exactly the operations on exactly the values it would have computed: the same codes.

Policy only (what to keep); the copies into and out of the KV caches are ``runner.py``'s.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor


class PrefixCache:
    """LRU map ``prefix key -> KV tensor [layers, 2, H_kv, P, head_dim]`` within a byte budget."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = max(0, int(budget_bytes))
        self._entries: OrderedDict[str, Tensor] = OrderedDict()
        self.bytes = 0
        self.stats = {"hits": 0, "misses": 0, "stored": 0, "evicted": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def get(self, key: str) -> Tensor | None:
        kv = self._entries.get(key)
        if kv is None:
            self.stats["misses"] += 1
            return None
        self._entries.move_to_end(key)
        self.stats["hits"] += 1
        return kv

    def fits(self, nbytes: int) -> bool:
        return 0 < nbytes <= self.budget_bytes

    def put(self, key: str, kv: Tensor) -> None:
        nbytes = kv.numel() * kv.element_size()
        if key in self._entries or not self.fits(nbytes):
            return
        while self._entries and self.bytes + nbytes > self.budget_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
            self.stats["evicted"] += 1
        self._entries[key] = kv
        self.bytes += nbytes
        self.stats["stored"] += 1

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
