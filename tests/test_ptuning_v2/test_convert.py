"""python -m ptuning_v2.convert SRC DST: a ChatGLM-layout checkpoint becomes a native glm directory whose logits
equal an independent reference forward (tests/tiny_chatglm.py); shard by shard; clear refusals."""

import json
import weakref

import pytest
import torch
from transformers import AutoConfig, GlmForCausalLM

from ptuning_v2 import convert
from ptuning_v2.convert import ConvertError, convert_model, main
from ptuning_v2.cli import run
from tiny_chatglm import chatglm_config, reference_logits, write_chatglm_checkpoint

IDS = torch.tensor([[5, 17, 33, 2, 60, 41, 8, 12], [9, 9, 21, 50, 3, 14, 27, 1]])
LEFT_PADDED_MASK = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])


def converted_logits(dst, ids, mask=None):
    model = GlmForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    mask = torch.ones_like(ids) if mask is None else mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens from 0, as the prefix model numbers them
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


@pytest.mark.parametrize("fmt, overrides", [("bin", {}), ("safetensors", {"rope_ratio": 3.0}),
                                            ("bin", {"add_qkv_bias": False, "rope_ratio": 500})])
def test_converted_model_matches_the_reference(tmp_path, fmt, overrides):
    config = chatglm_config(**overrides)
    weights = write_chatglm_checkpoint(tmp_path / "src", config, fmt=fmt)
    convert_model(tmp_path / "src", tmp_path / "dst", progress=False)
    assert AutoConfig.from_pretrained(tmp_path / "dst").model_type == "glm"

    expected = reference_logits(weights, config, IDS)
    actual = converted_logits(tmp_path / "dst", IDS)
    assert (actual - expected).abs().max() <= 1e-5

    expected = reference_logits(weights, config, IDS, LEFT_PADDED_MASK)
    actual = converted_logits(tmp_path / "dst", IDS, LEFT_PADDED_MASK)
    real = LEFT_PADDED_MASK.bool()
    assert (actual[real] - expected[real]).abs().max() <= 1e-5
    # The left-padded row's real tokens give what they give unpadded.
    alone = reference_logits(weights, config, IDS[:1, 3:])
    assert (actual[0, 3:] - alone[0]).abs().max() <= 1e-5


def test_the_reference_notices_a_wrong_rope_theta(tmp_path):
    # Guards the test itself: with rope_ratio 3 a converter that ignored it would be caught.
    config = chatglm_config(rope_ratio=3.0)
    weights = write_chatglm_checkpoint(tmp_path / "src", config)
    convert_model(tmp_path / "src", tmp_path / "dst", progress=False)
    wrong = reference_logits(weights, {**config, "rope_ratio": 1.0}, IDS)
    assert (converted_logits(tmp_path / "dst", IDS) - wrong).abs().max() > 1e-3


def test_output_layout_dtype_and_generation_config(tmp_path):
    write_chatglm_checkpoint(tmp_path / "src", chatglm_config(torch_dtype="float16"), dtype=torch.float16)
    convert_model(tmp_path / "src", tmp_path / "dst", progress=False)
    files = sorted(p.name for p in (tmp_path / "dst").iterdir())
    assert files == ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    assert "model.layers.0.self_attn.k_proj.weight" in index["weight_map"]
    assert not any("inv_freq" in k for k in index["weight_map"])
    generation = json.loads((tmp_path / "dst" / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (2, 0)
    model = GlmForCausalLM.from_pretrained(tmp_path / "dst")
    assert model.lm_head.weight.dtype == torch.float16
    assert not list((tmp_path).glob(".dst.partial-*"))  # the working directory was renamed into place


def test_conversion_is_shard_by_shard(tmp_path, monkeypatch):
    """Each output shard is written before the next input shard is read, and source tensors alive at once never
    exceed one input shard's bytes."""
    write_chatglm_checkpoint(tmp_path / "src")
    events, alive, peak = [], {"bytes": 0}, {"bytes": 0}
    shard_bytes = []
    real_load, real_save = convert.load_shard, convert.save_shard

    def release(n):
        alive["bytes"] -= n

    def load(path):
        tensors = real_load(path)
        events.append(("read", path.name))
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        shard_bytes.append(size)
        for t in tensors.values():
            n = t.numel() * t.element_size()
            alive["bytes"] += n
            weakref.finalize(t, release, n)
        peak["bytes"] = max(peak["bytes"], alive["bytes"])
        return tensors

    def save(tensors, path):
        events.append(("write", path.name))
        real_save(tensors, path)

    monkeypatch.setattr(convert, "load_shard", load)
    monkeypatch.setattr(convert, "save_shard", save)
    convert_model(tmp_path / "src", tmp_path / "dst", progress=False)
    assert events == [("read", "pytorch_model-00001-of-00002.bin"), ("write", "model-00001-of-00002.safetensors"),
                      ("read", "pytorch_model-00002-of-00002.bin"), ("write", "model-00002-of-00002.safetensors")]
    assert peak["bytes"] <= max(shard_bytes)
    assert alive["bytes"] == 0


def test_progress_bar_and_cli(tmp_path, capsys):
    write_chatglm_checkpoint(tmp_path / "src")
    run(lambda: main([str(tmp_path / "src"), str(tmp_path / "dst")]))
    captured = capsys.readouterr()
    assert f"converted model written to {tmp_path / 'dst'}" in captured.out
    assert "converting src" in captured.err and "2/2" in captured.err


def one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        run(lambda: main([*argv, "--no_progress"]))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_non_chatglm_directories_are_refused_in_one_line(tmp_path, capsys, tiny_base_dir):
    err = one_line_error(capsys, [str(tiny_base_dir), str(tmp_path / "dst")])
    assert "is not a THUDM ChatGLM checkpoint" in err and "'glm'" in err and "can be used as it is" in err
    err = one_line_error(capsys, [str(tmp_path / "nowhere"), str(tmp_path / "dst")])
    assert "no such directory" in err
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, [str(tmp_path / "empty"), str(tmp_path / "dst")])
    assert "config.json: not found" in err
    assert not (tmp_path / "dst").exists()


def test_unusable_chatglm_inputs_are_refused(tmp_path, capsys):
    write_chatglm_checkpoint(tmp_path / "src")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert "not empty" in one_line_error(capsys, [str(tmp_path / "src"), str(tmp_path / "full")])
    # A shard missing from disk, and a checkpoint whose index leaves out a layer.
    (tmp_path / "src" / "pytorch_model-00002-of-00002.bin").rename(tmp_path / "elsewhere.bin")
    assert "do not exist" in one_line_error(capsys, [str(tmp_path / "src"), str(tmp_path / "dst")])
    (tmp_path / "elsewhere.bin").rename(tmp_path / "src" / "pytorch_model-00002-of-00002.bin")
    index_path = tmp_path / "src" / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v.endswith("00001-of-00002.bin")}
    index_path.write_text(json.dumps(index))
    err = one_line_error(capsys, [str(tmp_path / "src"), str(tmp_path / "dst")])
    assert "lacks tensors" in err and "lm_head.weight" in err
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.partial-*"))
    # First-generation ChatGLM-6B has model_type chatglm too, but another architecture.
    write_chatglm_checkpoint(tmp_path / "v1", chatglm_config(position_encoding_2d=True))
    assert "first-generation" in one_line_error(capsys, [str(tmp_path / "v1"), str(tmp_path / "dst")])


def test_a_pickle_that_is_not_plain_tensors_is_refused(tmp_path):
    import argparse

    write_chatglm_checkpoint(tmp_path / "src")
    shard = tmp_path / "src" / "pytorch_model-00001-of-00002.bin"
    # Any object but plain tensors and containers: torch.load(weights_only=True) refuses to build it.
    torch.save({"transformer.embedding.word_embeddings.weight": argparse.Namespace(x=1)}, shard)
    with pytest.raises(ConvertError, match="weights_only=True"):
        convert_model(tmp_path / "src", tmp_path / "dst", progress=False)
