"""The tiny GGUF writer, checked by reading the file back with gguf (no llama.cpp needed)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from hermes.testing.tiny_gguf import (
    BOS_TOKEN,
    EOS_TOKEN,
    byte_level_vocab,
    generable_tokens,
    tensor_shapes,
    write_tiny_llama,
)


def _field(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def test_metadata_and_tensors(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "tiny.gguf", n_layers=3, d_model=32, n_heads=4, d_ff=48)
    assert path == tmp_path / "tiny.gguf"
    reader = gguf.GGUFReader(path)

    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == 3
    assert _field(reader, "llama.embedding_length") == 32
    assert _field(reader, "llama.feed_forward_length") == 48
    assert _field(reader, "llama.attention.head_count") == 4
    assert _field(reader, "llama.attention.head_count_kv") == 4
    assert _field(reader, "llama.rope.dimension_count") == 8
    assert _field(reader, "llama.context_length") == 512
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"

    tokens, _, merges = byte_level_vocab()
    assert _field(reader, "tokenizer.ggml.tokens") == tokens
    assert _field(reader, "tokenizer.ggml.merges") == merges
    assert len(merges) >= 1
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tokens.index(BOS_TOKEN)
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tokens.index(EOS_TOKEN)
    assert "<|im_start|>" in str(_field(reader, "tokenizer.chat_template"))

    expected = tensor_shapes(n_layers=3, d_model=32, n_heads=4, n_kv_heads=4, d_ff=48)
    found = {t.name: t for t in reader.tensors}
    assert set(found) == set(expected)
    assert "blk.2.ffn_down.weight" in found
    for name, shape in expected.items():
        tensor = found[name]
        assert tuple(tensor.data.shape) == shape, name
        # GGUF lists dimensions innermost first: the reverse of numpy's order.
        assert tuple(int(d) for d in tensor.shape) == shape[::-1], name
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
    assert found["token_embd.weight"].data.shape == (len(tokens), 32)
    assert found["blk.0.ffn_gate.weight"].data.shape == (48, 32)
    assert np.all(found["output_norm.weight"].data == 1.0)


def test_grouped_query_attention_shapes(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "gqa.gguf", d_model=64, n_heads=8, n_kv_heads=2)
    reader = gguf.GGUFReader(path)
    assert _field(reader, "llama.attention.head_count_kv") == 2
    found = {t.name: t for t in reader.tensors}
    assert found["blk.1.attn_q.weight"].data.shape == (64, 64)
    assert found["blk.1.attn_k.weight"].data.shape == (16, 64)
    assert found["blk.1.attn_v.weight"].data.shape == (16, 64)


def test_same_seed_same_file(tmp_path: Path) -> None:
    a = write_tiny_llama(tmp_path / "a.gguf", seed=7).read_bytes()
    b = write_tiny_llama(tmp_path / "b.gguf", seed=7).read_bytes()
    c = write_tiny_llama(tmp_path / "c.gguf", seed=8).read_bytes()
    assert a == b
    assert a != c


def test_rejects_bad_head_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple"):
        write_tiny_llama(tmp_path / "x.gguf", d_model=64, n_heads=5)
    with pytest.raises(ValueError, match="multiple"):
        write_tiny_llama(tmp_path / "x.gguf", n_heads=4, n_kv_heads=3)


def test_only_printable_ascii_is_generable(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(write_tiny_llama(tmp_path / "tiny.gguf"))
    tokens, _, _ = byte_level_vocab()
    generable = generable_tokens(tokens)
    output = next(t for t in reader.tensors if t.name == "output.weight").data
    for token_id, (token, ok) in enumerate(zip(tokens, generable, strict=True)):
        assert bool(np.any(output[token_id] != 0)) == ok, token
    assert not generable[tokens.index(EOS_TOKEN)]
    assert not generable[tokens.index(BOS_TOKEN)]
    assert generable[tokens.index("a")]
    assert generable[tokens.index("Ġthe")]
    assert not generable[tokens.index("<")]
    assert not generable[tokens.index("Ċ")]  # newline: a control character
    assert not generable[0xC3]  # a byte >= 0x80 (the GPT-2 map keeps 0xA1..0xFF in place)
