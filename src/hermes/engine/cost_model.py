"""Step-time cost model of one continuous-batching iteration (vLLM style).

One iteration runs a forward pass over every scheduled token: prefill chunks plus one token per
decoding sequence. Its time is split the way the calibration data is split
(docs/calibration.md):

- a fixed per-step overhead (scheduler, sampling, launch; BLIS ~126 µs);
- a per-sequence overhead for each sequence in the batch (sampling, block tables and the
  engine's per-sequence Python work: large in 2023-era vLLM; the tp=1 profiles, calibrated
  against vLLM 0.6, leave it at 0);
- the non-attention forward (projections, MLP, norms) as a function of the number of tokens,
  interpolated from Vidur's profiled table;
- under tensor parallelism, two all-reduces of the hidden states per layer, which Vidur's
  table leaves out: a latency each plus the ring's bytes over the interconnect;
- decode attention, bound by reading each decoding sequence's KV cache from HBM;
- prefill attention, bound by the quadratic query-key FLOPs of the chunk;
- a per-output-token streaming overhead (detokenise and send; BLIS ~46 µs).

Pure: the profile numbers arrive as arguments; reading them from package data is the shell's
job (`hermes.profiles`). The simulator calls `step_time_s` once per iteration, so it is scalar
arithmetic plus one bisect, with every coefficient precomputed.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field, fields

import numpy as np

from hermes.types import FloatArray

# fp16/bf16 KV cache and activations: two bytes per element.
KV_ELEMENT_BYTES = 2
ACTIVATION_ELEMENT_BYTES = 2

# Memory kept back per GPU for activations, CUDA graphs, NCCL and cuBLAS workspaces when sizing
# the KV pool. vLLM measures its peak with a dummy forward; for 7-70B models at the default
# max_num_batched_tokens this lands at 1-3 GB per GPU, so 2 GB is a middle figure.
DEFAULT_ACTIVATION_RESERVE_BYTES_PER_GPU = 2.0e9

INT_FIELDS = ("tp", "num_layers", "num_q_heads", "num_kv_heads", "head_dim", "hidden_size")
POSITIVE_FIELDS = (
    "weight_bytes",
    "gpu_memory_bytes",
    "hbm_bytes_per_s",
    "peak_flops",
    "attention_bandwidth_efficiency",
    "prefill_attention_mfu",
)
# Profile fields; a profile file supplies all but the table-derived tail.
PROFILE_NON_NEGATIVE_FIELDS = ("per_step_s", "per_output_token_s")
# Optional profile fields, 0 when absent: profiles calibrated before they existed (and tp=1
# ones, which have no all-reduce) keep their meaning. interconnect_bytes_per_s = 0 means the
# all-reduce bandwidth term is not modelled (not "infinitely slow").
PROFILE_OPTIONAL_NON_NEGATIVE_FIELDS = (
    "per_sequence_s",
    "allreduce_latency_s",
    "interconnect_bytes_per_s",
)
_NON_NEGATIVE_FIELDS = (
    *PROFILE_NON_NEGATIVE_FIELDS,
    *PROFILE_OPTIONAL_NON_NEGATIVE_FIELDS,
    "nonattention_ms_per_token_tail",
)


@dataclass(frozen=True, slots=True, eq=False)
class StepCostModel:
    """Seconds per engine iteration for one (model, GPU, tensor-parallel degree).

    `nonattention_tokens` / `nonattention_ms` is the non-attention forward time (ms) at those
    token counts, strictly increasing tokens and non-decreasing times (so the model is
    monotonic in every argument); beyond the last point it grows by
    `nonattention_ms_per_token_tail` ms per token. Bandwidths and FLOP/s are per GPU.

    `per_sequence_s` is charged per sequence in the batch (each decoding sequence and each
    prefill chunk). With tp > 1 every layer all-reduces its hidden states twice (after the
    attention output and the MLP down projections, Megatron-style), each costing
    `allreduce_latency_s` plus a ring's 2 (tp-1)/tp of the message bytes over
    `interconnect_bytes_per_s` (per-direction link bandwidth; 0 leaves that part out).

    Equality and hashing are by value (arrays compared element-wise), so a model can key a
    cache and two loads of the same profile compare equal.
    """

    name: str
    model: str
    gpu: str
    tp: int
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    weight_bytes: float
    gpu_memory_bytes: float
    hbm_bytes_per_s: float
    peak_flops: float
    attention_bandwidth_efficiency: float
    prefill_attention_mfu: float
    per_step_s: float
    per_output_token_s: float
    nonattention_tokens: FloatArray
    nonattention_ms: FloatArray
    nonattention_ms_per_token_tail: float
    per_sequence_s: float = 0.0
    allreduce_latency_s: float = 0.0
    interconnect_bytes_per_s: float = 0.0
    # Hot-path copies as Python floats: bisect on a tuple beats np.interp on a scalar ~10x.
    _tokens: tuple[float, ...] = field(init=False, repr=False)
    _seconds: tuple[float, ...] = field(init=False, repr=False)
    _slopes_s: tuple[float, ...] = field(init=False, repr=False)
    _tail_s_per_token: float = field(init=False, repr=False)
    _decode_s_per_kv_token: float = field(init=False, repr=False)
    _prefill_s_per_pair: float = field(init=False, repr=False)
    _comm_fixed_s: float = field(init=False, repr=False)
    _comm_s_per_token: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"StepCostModel.{name} must be an integer >= 1, got {value!r}")
        for name in POSITIVE_FIELDS + _NON_NEGATIVE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"StepCostModel.{name} must be a finite number, got {value!r}")
            if value < 0 or (value == 0 and name in POSITIVE_FIELDS):
                bound = "> 0" if name in POSITIVE_FIELDS else ">= 0"
                raise ValueError(f"StepCostModel.{name} must be {bound}, got {value!r}")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(
                f"StepCostModel: num_q_heads {self.num_q_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )

        tokens = np.array(self.nonattention_tokens, dtype=np.float64)
        ms = np.array(self.nonattention_ms, dtype=np.float64)
        if tokens.ndim != 1 or tokens.shape != ms.shape or tokens.size < 2:
            raise ValueError(
                "StepCostModel: nonattention_tokens and nonattention_ms must be 1-D, of equal "
                f"length >= 2, got shapes {tokens.shape} and {ms.shape}"
            )
        if not (np.all(np.isfinite(tokens)) and np.all(np.isfinite(ms))):
            raise ValueError("StepCostModel: the non-attention table must be finite")
        if tokens[0] < 1 or np.any(np.diff(tokens) <= 0):
            raise ValueError(
                f"StepCostModel.nonattention_tokens must start >= 1 and strictly increase, "
                f"got {tokens.tolist()}"
            )
        if ms[0] < 0 or np.any(np.diff(ms) < 0):
            raise ValueError(
                "StepCostModel.nonattention_ms must be >= 0 and non-decreasing (a step with "
                f"more tokens never takes less time), got {ms.tolist()}"
            )
        # Private read-only copies: a frozen model must not change under a caller's feet.
        tokens.setflags(write=False)
        ms.setflags(write=False)
        seconds = ms / 1e3
        slopes = np.diff(seconds) / np.diff(tokens)

        # Per GPU: each of the tp shards holds num_kv_heads / tp heads and reads them in
        # parallel, so bytes (and FLOPs) per GPU are the whole-model figure divided by tp.
        kv_bytes_per_gpu = self.kv_bytes_per_token / self.tp
        decode_s_per_kv_token = kv_bytes_per_gpu / (
            self.attention_bandwidth_efficiency * self.hbm_bytes_per_s
        )
        # QK^T and PV: 2 matmuls x 2 FLOPs per multiply-add, per query-key pair, head dim
        # element, query head and layer.
        prefill_flops_per_pair = 4.0 * self.num_q_heads * self.head_dim * self.num_layers / self.tp
        prefill_s_per_pair = prefill_flops_per_pair / (self.prefill_attention_mfu * self.peak_flops)
        # Tensor-parallel all-reduces: 2 per layer of hidden_size bf16 values per token; a ring
        # moves 2 (tp-1)/tp of the message through each GPU's link. One GPU needs none.
        comm_fixed_s = comm_s_per_token = 0.0
        if self.tp > 1:
            allreduces = 2 * self.num_layers
            comm_fixed_s = allreduces * self.allreduce_latency_s
            if self.interconnect_bytes_per_s > 0:
                ring_bytes_per_token = (
                    self.hidden_size * ACTIVATION_ELEMENT_BYTES * 2.0 * (self.tp - 1) / self.tp
                )
                comm_s_per_token = allreduces * ring_bytes_per_token / self.interconnect_bytes_per_s

        set_ = object.__setattr__
        set_(self, "nonattention_tokens", tokens)
        set_(self, "nonattention_ms", ms)
        set_(self, "_tokens", tuple(tokens.tolist()))
        set_(self, "_seconds", tuple(seconds.tolist()))
        set_(self, "_slopes_s", tuple(slopes.tolist()))
        set_(self, "_tail_s_per_token", self.nonattention_ms_per_token_tail / 1e3)
        set_(self, "_decode_s_per_kv_token", decode_s_per_kv_token)
        set_(self, "_prefill_s_per_pair", prefill_s_per_pair)
        set_(self, "_comm_fixed_s", comm_fixed_s)
        set_(self, "_comm_s_per_token", comm_s_per_token)

    # Identity by value --------------------------------------------------------------------

    def _key(self) -> tuple[object, ...]:
        key: list[object] = []
        for f in fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            key.append(tuple(value.tolist()) if isinstance(value, np.ndarray) else value)
        return tuple(key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepCostModel):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    # Memory --------------------------------------------------------------------------------

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies across all GPUs: K and V, every layer and KV head."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * KV_ELEMENT_BYTES

    def kv_capacity_tokens(
        self,
        gpu_memory_utilization: float = 0.9,
        activation_reserve_bytes: float | None = None,
    ) -> int:
        """Tokens of KV cache that fit beside the weights, as vLLM sizes its block pool.

        `activation_reserve_bytes` is the total over the tp GPUs; by default
        DEFAULT_ACTIVATION_RESERVE_BYTES_PER_GPU per GPU. Returns 0 when nothing fits.
        """
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}"
            )
        reserve = (
            DEFAULT_ACTIVATION_RESERVE_BYTES_PER_GPU * self.tp
            if activation_reserve_bytes is None
            else activation_reserve_bytes
        )
        if not math.isfinite(reserve) or reserve < 0:
            raise ValueError(f"activation_reserve_bytes must be finite and >= 0, got {reserve!r}")
        free = self.gpu_memory_bytes * gpu_memory_utilization * self.tp - self.weight_bytes
        return max(0, math.floor((free - reserve) / self.kv_bytes_per_token))

    # Time ----------------------------------------------------------------------------------

    def nonattention_s(self, num_tokens: float) -> float:
        """Non-attention forward time of an iteration over `num_tokens` tokens (0 -> 0)."""
        if num_tokens <= 0:
            return 0.0
        tokens = self._tokens
        if num_tokens >= tokens[-1]:
            return self._seconds[-1] + (num_tokens - tokens[-1]) * self._tail_s_per_token
        i = bisect_right(tokens, num_tokens) - 1
        if i < 0:  # below the first profiled count (fractional tokens only): flat
            return self._seconds[0]
        return self._seconds[i] + (num_tokens - tokens[i]) * self._slopes_s[i]

    def tp_comm_s(self, num_tokens: float) -> float:
        """Tensor-parallel all-reduce time of an iteration over `num_tokens` tokens (0 -> 0)."""
        if num_tokens <= 0:
            return 0.0
        return self._comm_fixed_s + num_tokens * self._comm_s_per_token

    def step_time_s(
        self,
        num_tokens: int,
        num_decode: int,
        decode_kv_tokens: int,
        prefill_attn_pairs: float,
        num_output_tokens: int,
        num_prefill_seqs: int = 0,
    ) -> float:
        """Seconds one iteration takes.

        num_tokens: every token in the forward pass (prefill chunk tokens + one per decoding
            sequence); num_decode: decoding sequences (counted within num_tokens);
        decode_kv_tokens: sum of the decoding sequences' context lengths (KV tokens read);
        prefill_attn_pairs: sum over prefill chunks of chunk_len * (cached_len + chunk_len / 2),
            the causal query-key pairs; num_output_tokens: tokens emitted this step;
        num_prefill_seqs: sequences with a prefill chunk in this step (each has >= 1 token of
            the num_tokens - num_decode), charged `per_sequence_s` like a decoding sequence.
        """
        if (
            num_decode < 0
            or num_tokens < num_decode
            or decode_kv_tokens < 0
            or prefill_attn_pairs < 0
            or num_output_tokens < 0
            or num_prefill_seqs < 0
            or num_prefill_seqs > num_tokens - num_decode
        ):
            raise ValueError(
                "step_time_s: need 0 <= num_decode <= num_tokens, "
                "0 <= num_prefill_seqs <= num_tokens - num_decode and non-negative work, got "
                f"num_tokens={num_tokens}, num_decode={num_decode}, "
                f"decode_kv_tokens={decode_kv_tokens}, prefill_attn_pairs={prefill_attn_pairs}, "
                f"num_output_tokens={num_output_tokens}, num_prefill_seqs={num_prefill_seqs}"
            )
        # Summed as in decode_step_terms, so a pure-decode step equals its closed form exactly.
        return (
            self._fixed_s(num_tokens, num_decode + num_prefill_seqs, num_output_tokens)
            + decode_kv_tokens * self._decode_s_per_kv_token
            + prefill_attn_pairs * self._prefill_s_per_pair
        )

    def _fixed_s(self, num_tokens: float, num_seqs: float, num_output_tokens: float) -> float:
        """Everything but attention: per step, per sequence, per token and per output token."""
        return (
            self.per_step_s
            + self.nonattention_s(num_tokens)
            + self.tp_comm_s(num_tokens)
            + num_seqs * self.per_sequence_s
            + num_output_tokens * self.per_output_token_s
        )

    def decode_step_terms(self, num_decode: int) -> tuple[float, float]:
        """(fixed_s, s_per_kv_token) of a pure-decode iteration of `num_decode` sequences.

        `step_time_s(n, n, kv, 0, n) == fixed_s + s_per_kv_token * kv`: during a run of decode
        iterations only the KV read grows, so the simulator can time many steps in closed form.
        """
        if num_decode < 1:
            raise ValueError(f"decode_step_terms: num_decode must be >= 1, got {num_decode}")
        return self._fixed_s(num_decode, num_decode, num_decode), self._decode_s_per_kv_token

    # Vectorised forms, for demand costing over many calls at once --------------------------

    def nonattention_s_array(self, num_tokens: FloatArray) -> FloatArray:
        """`nonattention_s` element-wise."""
        n = np.asarray(num_tokens, dtype=np.float64)
        last = self.nonattention_tokens[-1]
        inside = np.interp(n, self.nonattention_tokens, self.nonattention_ms) / 1e3
        tail = self._seconds[-1] + (n - last) * self._tail_s_per_token
        out: FloatArray = np.where(n <= 0, 0.0, np.where(n >= last, tail, inside))
        return out

    def prefill_time_s_array(self, prompt_tokens: FloatArray) -> FloatArray:
        """Time of one iteration prefilling each prompt whole, alone, from an empty cache.

        One sequence and no output token are counted; a zero-token prompt needs no iteration
        and costs 0.
        """
        p = np.asarray(prompt_tokens, dtype=np.float64)
        t = (
            self.per_step_s
            + self.nonattention_s_array(p)
            + (self._comm_fixed_s + p * self._comm_s_per_token)
            + self.per_sequence_s
            + p * (p / 2.0) * self._prefill_s_per_pair
        )
        out: FloatArray = np.where(p > 0, t, 0.0)
        return out

    def decode_step_s_array(self, batch_size: int, context_tokens: FloatArray) -> FloatArray:
        """Time of a pure-decode iteration of `batch_size` sequences, each `context_tokens` long."""
        ctx = np.asarray(context_tokens, dtype=np.float64)
        fixed, s_per_kv_token = self.decode_step_terms(batch_size)
        out: FloatArray = fixed + batch_size * ctx * s_per_kv_token
        return out
