"""Write a tiny Llama-architecture GGUF model with random weights, for serving-stack tests.

Why it works, its tensor layout and its vocabulary: docs/design/tiny-gguf.md.
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
    _check_dims(n_layers, d_model, n_heads, n_kv_heads, d_ff, context)
    out = Path(path)
    tokens, types, merges = byte_level_vocab()
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(out, "llama")
    try:
        _add_model_metadata(writer, n_layers, d_model, n_heads, n_kv_heads, d_ff, context)
        _add_tokenizer(writer, tokens, types, merges)
        shapes = tensor_shapes(
            n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=d_ff
        )
        silent = ~np.array(generable_tokens(tokens))
        for name, shape in shapes.items():
            writer.add_tensor(name, _random_tensor(name, shape, d_model, silent, rng))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out


def _check_dims(
    n_layers: int, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, context: int
) -> None:
    if n_layers < 1 or d_ff < 1 or context < 1:
        raise ValueError("n_layers, d_ff and context must be positive")
    if n_heads < 1 or n_kv_heads < 1 or d_model % n_heads or n_heads % n_kv_heads:
        raise ValueError(
            "d_model must be a multiple of n_heads, and n_heads a multiple of n_kv_heads"
        )
    if (d_model // n_heads) % 2:
        raise ValueError("the head dimension d_model // n_heads must be even (RoPE)")


def _add_model_metadata(
    writer: gguf.GGUFWriter,
    n_layers: int,
    d_model: int,
    n_heads: int,
    n_kv_heads: int,
    d_ff: int,
    context: int,
) -> None:
    writer.add_name("hermes-tiny-llama")
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_context_length(context)
    writer.add_embedding_length(d_model)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(d_ff)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_rope_dimension_count(d_model // n_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)


def _add_tokenizer(
    writer: gguf.GGUFWriter, tokens: list[str], types: list[int], merges: list[str]
) -> None:
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(BOS_TOKEN))
    writer.add_eos_token_id(tokens.index(EOS_TOKEN))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)


def _random_tensor(
    name: str,
    shape: tuple[int, ...],
    d_model: int,
    silent: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One tensor's float32 data, drawn from `rng` (the same order of draws gives the same
    file). `silent` marks the tokens the model must never generate."""
    if len(shape) == 1:  # RMS-norm weights
        return np.ones(shape, dtype=np.float32)
    if name == "token_embd.weight":
        return rng.standard_normal(shape, dtype=np.float32)
    if name == "output.weight":
        # Logits of the generable tokens ~ N(0, 10^2): sharp distributions, and the zero-logit
        # other tokens (EOS included) are practically never sampled.
        data = rng.standard_normal(shape, dtype=np.float32) * np.float32(10.0 / np.sqrt(d_model))
        data[silent] = 0.0
        return data
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(shape[1]))
