"""Execution of CSM on one device (nano-vllm's ``ModelRunner``): everything that touches the KV caches.

Owns, in this one file:

* the **frame step** (``generate.frame_step``, eager or ``torch.compile``'d / CUDA-graphed) and
  the **batch buckets** it runs at (:data:`BUCKETS`, :func:`bucket_for`, :func:`buckets`);
* **warm-up**: every bucket the step can pick is run (on CUDA: captured) before any request;
* **per-slot state in persistent tensors** on the device — backbone state ``h``, position,
  temperature, top-k, RNG key, frame counter and a live flag, ``[max_rows]`` each — written
  per slot when a sequence starts or changes piece, advanced *in place* after each frame; a
  steady-state frame builds no tensor from host data;
* **stable slots**: a sequence keeps its KV-cache slot from admission to the end; the step
  runs slots ``0..n-1`` (``n`` = the highest live slot + 1, rounded up to a bucket on the
  static path), so nothing is ever copied when a row leaves; an idle slot in that range
  computes a dummy row parked on a column nobody needs (column 0 of a free slot, or the next
  column of a slot being prefilled, which its next chunk overwrites);
* **padding** to the bucket and the **lagged read-back** (one frame in flight on CUDA: frame
  t+1 is launched before frame t's codes are read, so the GPU never waits for the host);
* **prefill** of one slot and the **prefix cache** copies (``prefix_cache.py`` decides what is kept).

Policy (who gets a slot, when to prefill, when a row ends) is ``scheduler.py``'s; this file never
looks at a request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import Tensor

from echoforge.csm import generate as G
from echoforge.csm.model import CSM
from echoforge.csm.prefix_cache import PrefixCache

log = logging.getLogger("echoforge.csm.runner")

# Batch-size buckets of the compiled path: one CUDA graph each, the batch padded up to the next.
BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Default memory for cached voice-prompt KV per runner (a 10-s voice on csm-1b in bf16 ≈ 5 MB: 32 KB per position).
PREFIX_CACHE_MB = 256


def bucket_for(rows: int, max_rows: int) -> int:
    """The batch size the compiled step runs ``rows`` rows at: the next bucket, capped at the slots."""
    return min(next((x for x in BUCKETS if x >= rows), max_rows), max_rows)


def buckets(max_rows: int) -> list[int]:
    """Every batch size :func:`bucket_for` can return (one CUDA graph each, captured at warm-up)."""
    return sorted({bucket_for(n, max_rows) for n in range(1, max_rows + 1)})


class ModelRunner:
    """Runs prefill chunks and batched frames of one :class:`CSM` over ``max_rows`` stable slots.

    Args:
        model: the network (its KV caches are grown to ``max_rows`` here if smaller).
        device: where it runs.
        max_rows: KV-cache slots.
        static: fixed-shape step (buckets, full-window mask): what the compiled CUDA path runs.
        compile: ``torch.compile(mode="reduce-overhead")`` the step (CUDA only; implies static).
        lag: one frame in flight before reading codes back (default: static on CUDA).
        prefix_cache_mb: memory for cached voice-prompt KV (0 = no prefix cache).
        attention: the static step's backbone attention: ``"flex"`` (FlexAttention over each row's own
            KV blocks: one fused kernel when compiled), ``"sdpa"`` (SDPA over the whole window under a
            mask) or ``"auto"`` (flex when compiled on CUDA). The eager path slices the KV to the live
            length and needs neither.
        graphs: how the static step is compiled: ``"frame"`` (the whole frame traced as one graph:
            one CUDA-graph launch per frame, ~3,200 ops to compile per bucket) or ``"codebook"``
            (three graphs: codebooks 0-1, one depth-decoder step replayed for codebooks 2..31, the
            backbone step: ~1/6 of the ops to compile, 32 launches per frame); ``"auto"``: codebook
            when compiled, else frame.
    """

    def __init__(self, model: CSM, device: torch.device, max_rows: int = 4, static: bool = False,
                 compile: bool = False, lag: bool | None = None, prefix_cache_mb: float = PREFIX_CACHE_MB,
                 attention: str = "auto", graphs: str = "auto"):  # fmt: skip
        self.model, self.device, self.max_rows = model, device, max_rows
        self.dtype = model.codebook0_head.weight.dtype
        self.window = model.args.backbone.max_seq_len
        use_compile = compile and device.type == "cuda"
        self.static = static or use_compile
        self.lag = (self.static and device.type == "cuda") if lag is None else lag
        if graphs not in ("auto", "frame", "codebook"):
            raise ValueError(f"graphs must be auto, frame or codebook, not {graphs!r}")
        self.graphs = ("codebook" if use_compile else "frame") if graphs == "auto" else graphs
        self.use_compile = use_compile
        self.step_fn = G.frame_step
        self.head_fn, self.codebook_fn, self.backbone_fn = G.codebook_head, G.codebook_step, G.backbone_step
        if use_compile:
            # "reduce-overhead" = CUDA graphs: the sampled frame replays as one launch per graph.
            # fullgraph: sampling is pure tensor code (counter-based RNG), nothing may break the graph.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(BUCKETS))

            def compiled(fn):
                return torch.compile(fn, mode="reduce-overhead", fullgraph=True, dynamic=False)

            if self.graphs == "frame":
                self.step_fn = compiled(G.frame_step)
            else:
                self.head_fn, self.codebook_fn = compiled(G.codebook_head), compiled(G.codebook_step)
                self.backbone_fn = compiled(G.backbone_step)
        if model.max_batch_size < max_rows:  # caches only grow (several runners may share a model in tests)
            model.setup_caches(max_rows, self.dtype)
        dev, r = device, max_rows
        # Persistent per-slot state, updated in place (never rebuilt from lists in the steady state).
        self.h = torch.zeros(r, model.args.backbone.dim, dtype=self.dtype, device=dev)
        self.pos = torch.zeros(r, dtype=torch.long, device=dev)
        self.temperature = torch.zeros(r, dtype=torch.float, device=dev)
        self.topk = torch.ones(r, dtype=torch.long, device=dev)
        self.key = torch.zeros(r, dtype=torch.long, device=dev)
        self.counter = torch.zeros(r, dtype=torch.long, device=dev)
        self.live = torch.zeros(r, dtype=torch.long, device=dev)
        if attention not in ("auto", "flex", "sdpa"):
            raise ValueError(f"attention must be auto, flex or sdpa, not {attention!r}")
        flex = attention == "flex" or (attention == "auto" and use_compile)
        # One mask_mod over the persistent positions: the compiled step is traced once and reads them.
        self.mask_mod = G.length_mask_mod(self.pos) if flex else None
        if self.graphs == "codebook":  # the graphs' inputs and outputs live here between two graphs
            a = model.args
            self.codes = torch.zeros(r, a.audio_num_codebooks, dtype=torch.long, device=dev)
            self.dec_x = torch.zeros(r, 1, a.decoder.dim, dtype=self.dtype, device=dev)
            self.noise = {k: torch.zeros(r, a.audio_num_codebooks, k, device=dev) for k in self.kmax_bounds()}
            self.codebook_index = [
                torch.full((1,), i, dtype=torch.long, device=dev) for i in range(a.audio_num_codebooks)
            ]
        # Host mirrors for the eager path's hints (kv_len, all-greedy, top-k bound): plain Python.
        self._pos_host = [0] * r
        self._temp_host = [0.0] * r
        self._topk_host = [1] * r
        self._live_host = [False] * r
        self._pending: tuple[Any, Tensor, Any] | None = None
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20))
        # The batch sizes the static step runs at (each a captured graph); serving: every bucket.
        # A benchmark may warm fewer (``warmup(buckets=...)``) and restrict the step to them.
        self.buckets: list[int] = buckets(max_rows)
        # One entry per (bucket, top-k bound) warmed: {"bucket", "kmax", "first_s" (trace + compile +
        # first run), "capture_s" (the recording calls)}; measured, for the device check's budgets.
        self.warm_times: list[dict] = []

    # ------------------------------------------------------------------ slots

    def start_row(self, slot: int, h: Tensor, pos: int, temperature: float, topk: int, key: int) -> None:
        """Slot ``slot`` decodes from its next frame on: state ``h [D]``, next column ``pos``, frame counter 0."""
        self.h[slot] = h
        self.pos[slot] = pos
        self.temperature[slot] = temperature
        self.topk[slot] = topk
        self.key[slot] = key
        self.counter[slot] = 0
        self.live[slot] = 1
        self._pos_host[slot], self._temp_host[slot], self._topk_host[slot] = pos, temperature, topk
        self._live_host[slot] = True

    def park(self, slot: int, pos: int = 0) -> None:
        """Slot ``slot`` does not decode; a dummy row of the step may write column ``pos`` only."""
        self.pos[slot] = pos
        self.temperature[slot] = 0.0
        self.topk[slot] = 1
        self.live[slot] = 0
        self._pos_host[slot], self._temp_host[slot], self._topk_host[slot] = pos, 0.0, 1
        self._live_host[slot] = False

    def kmax_bounds(self) -> list[int]:
        """The top-k bounds the static step can be traced with: ``KMAX`` and the whole vocabulary.

        A request may ask for any top-k up to the vocabulary size; both bounds are captured at
        warm-up, so no top-k ever selects a graph that was not.
        """
        return sorted({min(G.KMAX, self.model.args.audio_vocab_size), self.model.args.audio_vocab_size})

    def kmax_for(self, topk: int) -> int:
        """The smallest captured bound that covers ``topk``."""
        return next((k for k in self.kmax_bounds() if topk <= k), self.kmax_bounds()[-1])

    def rows_for(self, hi: int) -> int:
        """Batch rows the step runs for live slots below ``hi`` (static path: the smallest of
        :attr:`buckets` that covers them)."""
        if not self.static:
            return hi
        return next((b for b in self.buckets if b >= hi), bucket_for(hi, self.max_rows))

    # ------------------------------------------------------------------ prefill

    def prefill(self, slot: int, tokens: Tensor, mask: Tensor, start: int) -> Tensor:
        """Write prompt rows ``[T, K+1]`` (CPU) into ``slot`` at columns ``start..``; the last state ``[D]``."""
        dev = self.device
        return G.prefill(self.model, tokens[None].to(dev), mask[None].to(dev), start, slot)[0]

    def load_prefix(self, key: str | None, slot: int, length: int) -> bool:
        """Copy a cached prefix's KV into columns ``0..length-1`` of ``slot``; False on a miss."""
        if key is None or not self.prefix_cache.enabled:
            return False
        kv = self.prefix_cache.get(key)
        if kv is None or kv.shape[3] != length:
            return False
        for i, layer in enumerate(self.model.backbone.layers):
            c = layer.attention.kv_cache
            c.k_cache[slot, :, :length].copy_(kv[i, 0])
            c.v_cache[slot, :, :length].copy_(kv[i, 1])
        return True

    def save_prefix(self, key: str | None, slot: int, length: int) -> None:
        """Keep columns ``0..length-1`` of ``slot`` (just prefilled from column 0) as prefix ``key``."""
        cache = self.prefix_cache
        if key is None or key in cache or not cache.enabled:
            return
        a = self.model.args.backbone
        nbytes = a.n_layer * 2 * a.n_local_heads * length * a.head_dim * self.model.backbone.norm.weight.element_size()
        if not cache.fits(nbytes):
            return
        layers = self.model.backbone.layers
        kv = torch.stack([
            torch.stack([layer.attention.kv_cache.k_cache[slot, :, :length], layer.attention.kv_cache.v_cache[slot, :, :length]])
            for layer in layers
        ])  # fmt: skip  # [L, 2, H_kv, P, hd], a copy
        cache.put(key, kv)

    # ------------------------------------------------------------------ frames

    def _static_step(self, sl: slice, sampler: G.Sampler) -> tuple[Tensor, Tensor]:
        """One static frame of slots ``sl``: one graph (``graphs="frame"``), or three, the codebook
        step replayed for codebooks 2..K-1 with its inputs and outputs in persistent buffers."""
        m = self.model
        if self.graphs == "frame":
            return self.step_fn(m, self.h[sl], self.pos[sl], sampler, None, False, self.mask_mod)
        # Each compiled call is a CUDA-graph replay whose outputs the next replay may overwrite:
        # copy them out at once (the copies are stream-ordered: no sync).
        mark = torch.compiler.cudagraph_mark_step_begin if self.use_compile else (lambda: None)
        codes, x_buf, noise = self.codes[sl], self.dec_x[sl], self.noise[sampler.kmax][sl]
        mark()
        c01, x, nz = self.head_fn(m, self.h[sl], sampler)
        codes[:, :2].copy_(c01)
        x_buf.copy_(x)
        noise.copy_(nz)
        for i in range(2, m.args.audio_num_codebooks):
            mark()
            ci, x = self.codebook_fn(m, x_buf, self.codebook_index[i], sampler, noise)
            codes[:, i].copy_(ci)
            x_buf.copy_(x)
        mark()
        return codes, self.backbone_fn(m, codes, self.pos[sl], self.mask_mod)

    @property
    def pending(self) -> bool:
        """A launched frame whose codes were not read back yet (lag mode)."""
        return self._pending is not None

    def decode(self, hi: int, tag: Any) -> tuple[Any, Tensor] | None:
        """Launch one frame for slots ``0..hi-1`` (+ padding); return a finished frame's ``(tag, codes [rows, K])``.

        Without lag that is this frame; with lag it is the previous one (None on the first).
        Codes are indexed by slot; rows of parked slots are garbage.
        """
        b = self.rows_for(hi)
        sl = slice(0, b)
        if self.static:
            kmax = self.kmax_for(max(self._topk_host[:b]))
            sampler = G.Sampler(self.temperature[sl], self.topk[sl], self.key[sl], self.counter[sl], kmax,
                                greedy=False, any_greedy=True)  # fmt: skip
            frame, h = self._static_step(sl, sampler)
        else:
            temps = self._temp_host[:b]
            greedy = all(t == 0 for t in temps)
            sampler = G.Sampler(self.temperature[sl], self.topk[sl], self.key[sl], self.counter[sl],
                                max(self._topk_host[:b]), greedy, any(t == 0 for t in temps))  # fmt: skip
            pos = self._pos_host[:b]
            kv_len = max(pos) + 1
            # The uncompiled step: a compiled ``step_fn`` is traced for the static shapes only.
            frame, h = G.frame_step(
                self.model, self.h[sl], self.pos[sl], sampler, kv_len, all(p == pos[0] for p in pos)
            )
        self.h[sl].copy_(h)  # CUDA-graph outputs are overwritten by the next replay: copy what we keep
        # In place: live rows advance one column and one frame; parked rows stay where they are. With a
        # frame in flight, a row that just used its last column gets one (dropped) frame more: clamp
        # it into its own last column rather than past the window.
        self.pos[sl].add_(self.live[sl]).clamp_(max=self.window - 1)
        self.counter[sl].add_(self.live[sl])
        for s in range(b):
            if self._live_host[s]:
                self._pos_host[s] = min(self._pos_host[s] + 1, self.window - 1)
        if not self.lag:
            return tag, frame.cpu() if self.device.type != "cpu" else frame.clone()
        host = torch.empty(frame.shape, dtype=frame.dtype, pin_memory=self.device.type == "cuda")
        host.copy_(frame, non_blocking=True)
        done = torch.cuda.Event() if self.device.type == "cuda" else None
        if done is not None:
            done.record()
        prev, self._pending = self._pending, (tag, host, done)
        return None if prev is None else self._read(prev)

    def drain(self) -> tuple[Any, Tensor] | None:
        """The frame still in flight, if any (when no row is left to launch another)."""
        prev, self._pending = self._pending, None
        return None if prev is None else self._read(prev)

    def drop_pending(self) -> None:
        self._pending = None

    @staticmethod
    def _read(pending: tuple[Any, Tensor, Any]) -> tuple[Any, Tensor]:
        tag, host, done = pending
        if done is not None:
            done.synchronize()
        return tag, host

    def pending_tag(self) -> Any:
        return None if self._pending is None else self._pending[0]

    # ------------------------------------------------------------------ warm-up

    def warmup(self, buckets: list[int] | None = None, kmax_bounds: list[int] | None = None) -> float:
        """Run (on CUDA: capture) the sampled step once per bucket and top-k bound it can pick; returns seconds.

        Sampled, not greedy: that is the path real requests take, so nothing compiles on a request.
        Must run on the thread that will run the frames (CUDA graphs are recorded per thread) and
        before any row is live (it runs parked slots). ``buckets`` / ``kmax_bounds`` warm a subset
        (the device check times them one by one); each one's seconds go to :attr:`warm_times`.
        """
        if not self.static:  # the eager path has nothing to compile or capture
            return 0.0
        t0 = time.perf_counter()
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            for b in buckets or self.buckets:
                sl = slice(0, b)
                for kmax in kmax_bounds or self.kmax_bounds():  # top-k <= 256 and top-k up to the vocabulary
                    sampler = G.Sampler(self.temperature[sl], self.topk[sl], self.key[sl], self.counter[sl],
                                        kmax, greedy=False, any_greedy=True)  # fmt: skip
                    times = []
                    for _ in range(3):  # cudagraph trees record on the 2nd/3rd call
                        t1 = time.perf_counter()
                        self._static_step(sl, sampler)
                        if cuda:
                            torch.cuda.synchronize(self.device)
                        times.append(time.perf_counter() - t1)
                    self.warm_times.append(dict(bucket=b, kmax=kmax, first_s=times[0], capture_s=sum(times[1:])))
        return time.perf_counter() - t0
