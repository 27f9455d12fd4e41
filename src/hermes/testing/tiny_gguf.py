"""Write a tiny Llama-architecture GGUF model with random weights.

The file loads in llama.cpp (and so in ``llama_cpp.Llama`` and ``python -m llama_cpp.server``)
and generates tokens quickly on a CPU, which is all a test of a serving stack needs: the text
is gibberish. Writing it needs only ``gguf`` and ``numpy``, never llama.cpp itself, and nothing
is downloaded.

Layout (GGUF lists dimensions innermost first, i.e. reversed from numpy's shape; the numpy
shapes are given here):

* ``token_embd.weight`` and ``output.weight``: ``(n_vocab, d_model)``
* ``blk.N.attn_q.weight``: ``(n_heads * head_dim, d_model)``;
  ``blk.N.attn_k.weight`` / ``attn_v.weight``: ``(n_kv_heads * head_dim, d_model)``;
  ``blk.N.attn_output.weight``: ``(d_model, n_heads * head_dim)``
* ``blk.N.ffn_gate.weight`` / ``ffn_up.weight``: ``(d_ff, d_model)``;
  ``blk.N.ffn_down.weight``: ``(d_model, d_ff)``
* ``blk.N.attn_norm.weight``, ``blk.N.ffn_norm.weight``, ``output_norm.weight``: ``(d_model,)``

The vocabulary is GPT-2 style byte-level BPE (``tokenizer.ggml.model = "gpt2"``): the 256
byte tokens, a few merges (llama.cpp needs at least one) with their merged tokens, then the
special tokens ``<|bos|>``, ``<|im_start|>`` and ``<|im_end|>`` (the end-of-sequence token).
A ChatML chat template is embedded.

Only "generable" tokens (printable ASCII bytes other than ``<``, and the merged tokens) get
non-zero rows in ``output.weight``; those rows are scaled so that the logits spread widely
(standard deviation about 10), which leaves the zero logits of every other token (the special
tokens, EOS included, control characters and the bytes >= 0x80) practically never sampled.
Hence the model never ends a sequence on its own, so a request generates exactly
``max_tokens`` tokens; the text is valid UTF-8 (llama-cpp-python keeps generating past
``max_tokens`` while it holds an incomplete multi-byte character, which random bytes would
cause); and it never contains a ChatML stop string such as ``<|im_end|>``.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

__all__ = [
    "BOS_TOKEN",
    "CHATML_TEMPLATE",
    "EOS_TOKEN",
    "IM_START_TOKEN",
    "byte_level_vocab",
    "generable_tokens",
    "tensor_shapes",
    "write_tiny_llama",
]

BOS_TOKEN = "<|bos|>"
IM_START_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Pairs of byte-level symbols to merge ("Ġ" is the space byte, "Ċ" the newline byte).
_MERGES: tuple[tuple[str, str], ...] = (
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("e", "r"),
    ("Ġ", "a"),
    ("o", "n"),
    ("r", "e"),
)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable character map, indexed by byte value."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def generable_tokens(tokens: list[str]) -> list[bool]:
    """Which tokens the model can generate: printable ASCII text without ``<``."""
    decode = {char: byte for byte, char in enumerate(_bytes_to_unicode())}
    allowed = set(range(0x20, 0x7F)) - {ord("<")}
    specials = {BOS_TOKEN, IM_START_TOKEN, EOS_TOKEN}
    return [
        token not in specials and all(decode.get(char, -1) in allowed for char in token)
        for token in tokens
    ]


def byte_level_vocab() -> tuple[list[str], list[int], list[str]]:
    """Return ``(tokens, token_types, merges)`` of the tiny byte-level BPE vocabulary."""
    tokens = _bytes_to_unicode()
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    merges: list[str] = []
    for left, right in _MERGES:
        merges.append(f"{left} {right}")
        tokens.append(left + right)
        types.append(int(gguf.TokenType.NORMAL))
    for special in (BOS_TOKEN, IM_START_TOKEN, EOS_TOKEN):
        tokens.append(special)
        types.append(int(gguf.TokenType.CONTROL))
    return tokens, types, merges


def tensor_shapes(
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 4,
    d_ff: int = 128,
) -> dict[str, tuple[int, ...]]:
    """The numpy shape of every tensor ``write_tiny_llama`` writes, by tensor name."""
    n_vocab = len(byte_level_vocab()[0])
    head_dim = d_model // n_heads
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, d_model)}
    for i in range(n_layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (d_model,),
            f"blk.{i}.attn_q.weight": (n_heads * head_dim, d_model),
            f"blk.{i}.attn_k.weight": (n_kv_heads * head_dim, d_model),
            f"blk.{i}.attn_v.weight": (n_kv_heads * head_dim, d_model),
            f"blk.{i}.attn_output.weight": (d_model, n_heads * head_dim),
            f"blk.{i}.ffn_norm.weight": (d_model,),
            f"blk.{i}.ffn_gate.weight": (d_ff, d_model),
            f"blk.{i}.ffn_up.weight": (d_ff, d_model),
            f"blk.{i}.ffn_down.weight": (d_model, d_ff),
        }
    shapes |= {"output_norm.weight": (d_model,), "output.weight": (n_vocab, d_model)}
    return shapes


def write_tiny_llama(
    path: str | Path,
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 4,
    d_ff: int = 128,
    context: int = 512,
    seed: int = 0,
) -> Path:
    """Write a random-weight Llama model in GGUF format to ``path`` and return the path.

    All tensors are float32. The same arguments always give the same file.
    """
    if n_layers < 1 or d_ff < 1 or context < 1:
        raise ValueError("n_layers, d_ff and context must be positive")
    if n_heads < 1 or n_kv_heads < 1 or d_model % n_heads or n_heads % n_kv_heads:
        raise ValueError(
            "d_model must be a multiple of n_heads, and n_heads a multiple of n_kv_heads"
        )
    head_dim = d_model // n_heads
    if head_dim % 2:
        raise ValueError("the head dimension d_model // n_heads must be even (RoPE)")

    out = Path(path)
    tokens, types, merges = byte_level_vocab()
    n_vocab = len(tokens)
    bos_id, eos_id = tokens.index(BOS_TOKEN), tokens.index(EOS_TOKEN)
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(out, "llama")
    try:
        writer.add_name("hermes-tiny-llama")
        writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
        writer.add_context_length(context)
        writer.add_embedding_length(d_model)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(d_ff)
        writer.add_head_count(n_heads)
        writer.add_head_count_kv(n_kv_heads)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(n_vocab)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(bos_id)
        writer.add_eos_token_id(eos_id)
        writer.add_add_bos_token(False)
        writer.add_chat_template(CHATML_TEMPLATE)

        shapes = tensor_shapes(
            n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=d_ff
        )
        silent = ~np.array(generable_tokens(tokens))
        for name, shape in shapes.items():
            if len(shape) == 1:  # RMS-norm weights
                data = np.ones(shape, dtype=np.float32)
            elif name == "token_embd.weight":
                data = rng.standard_normal(shape, dtype=np.float32)
            elif name == "output.weight":
                # Logits of the generable tokens ~ N(0, 10^2): sharp distributions, and
                # the zero-logit other tokens (EOS included) are practically never sampled.
                data = rng.standard_normal(shape, dtype=np.float32) * np.float32(
                    10.0 / np.sqrt(d_model)
                )
                data[silent] = 0.0
            else:
                data = rng.standard_normal(shape, dtype=np.float32) * np.float32(
                    1.0 / np.sqrt(shape[1])
                )
            writer.add_tensor(name, data)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out
