"""python -m ptuning_v2.convert --ptuning_checkpoint OLD --base CONVERTED DST: a THUDM ptuning checkpoint
(transformer.prefix_encoder.*) on a converted ChatGLM base gives the logits of the reference forward with that
prefix's keys/values prepended (tests/tiny_chatglm.py: prefix unrotated, real tokens from position 0)."""

import json

import pytest
import torch

from ptuning_v2.checkpoint import CheckpointMismatchError, load_prefix_model, load_prefix_weights, read_checkpoint_config
from ptuning_v2.cli import run
from ptuning_v2.convert import ConvertError, convert_model, main
from ptuning_v2.legacy_prefix import import_ptuning_checkpoint
from ptuning_v2.prefix_model import PrefixModel
from ptuning_v2.checkpoint import encoder_config_from
from ptuning_v2.quantization import BaseModelSpec, load_base_model
from tiny_chatglm import chatglm_config, reference_logits, write_chatglm_checkpoint
from tiny_models import tiny_tokenizer

PRE_SEQ_LEN = 3
IDS = torch.tensor([[5, 17, 33, 2, 60, 41], [9, 9, 21, 50, 3, 14]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("chatglm")
    config = chatglm_config()
    weights = write_chatglm_checkpoint(root / "src", config)
    convert_model(root / "src", root / "glm", progress=False)
    tiny_tokenizer().save_pretrained(root / "glm")  # load_prefix_model loads the base's tokenizer too
    return root / "glm", config, weights


def kv_width(config):
    return config["num_layers"] * 2 * config["multi_query_group_num"] * config["kv_channels"]


def write_old_checkpoint(path, config, projection=False, seed=1, pre_seq_len=PRE_SEQ_LEN, width=None):
    """What THUDM's ptuning/ writes: the trainable parameters under transformer.prefix_encoder.*, fp32."""
    g = torch.Generator().manual_seed(seed)
    width = width or kv_width(config)
    if projection:  # ChatGLM2/3: Embedding(P, kv) -> Linear(kv, hidden) -> Tanh -> Linear(hidden, kv)
        hidden = config["hidden_size"]
        state = {"embedding.weight": torch.randn(pre_seq_len, width, generator=g),
                 "trans.0.weight": torch.randn(hidden, width, generator=g) * width ** -0.5,
                 "trans.0.bias": torch.randn(hidden, generator=g) * 0.1,
                 "trans.2.weight": torch.randn(width, hidden, generator=g),
                 "trans.2.bias": torch.randn(width, generator=g) * 0.1}
    else:
        state = {"embedding.weight": torch.randn(pre_seq_len, width, generator=g)}
    path.mkdir(parents=True)
    torch.save({f"transformer.prefix_encoder.{k}": v for k, v in state.items()}, path / "pytorch_model.bin")
    (path / "config.json").write_text(json.dumps({**config, "pre_seq_len": pre_seq_len,
                                                  "prefix_projection": projection}))
    return state


def flat_prefix(state):
    """(P, N*2*G*D): the prefix of each virtual token, computed by hand from the old tensors."""
    if "trans.0.weight" not in state:
        return state["embedding.weight"]
    hidden = torch.tanh(state["embedding.weight"] @ state["trans.0.weight"].T + state["trans.0.bias"])
    return hidden @ state["trans.2.weight"].T + state["trans.2.bias"]


def reference_prefix(state, config):
    """Per layer (key, value), each (G, P, D), from the facts: layer-major, key then value, group-major, channel."""
    flat = flat_prefix(state)
    groups, d = config["multi_query_group_num"], config["kv_channels"]
    block = groups * d
    out = []
    for n in range(config["num_layers"]):
        key = flat[:, (2 * n) * block:(2 * n + 1) * block].reshape(-1, groups, d).transpose(0, 1)
        value = flat[:, (2 * n + 1) * block:(2 * n + 2) * block].reshape(-1, groups, d).transpose(0, 1)
        out.append((key, value))
    return out


@pytest.mark.parametrize("projection", [False, True])
def test_imported_prefix_matches_the_reference(tmp_path, converted, projection):
    base_dir, config, weights = converted
    state = write_old_checkpoint(tmp_path / "old", config, projection)
    import_ptuning_checkpoint(tmp_path / "old", base_dir, tmp_path / "new")
    recorded = read_checkpoint_config(tmp_path / "new")
    assert (recorded["pre_seq_len"], recorded["prefix_projection"], recorded["model_type"]) == (3, projection, "glm")
    assert recorded["base_model"]["model_name_or_path"] == str(base_dir)

    model, _, _ = load_prefix_model(tmp_path / "new", device="cpu")
    expected = reference_logits(weights, config, IDS, MASK, prefix=reference_prefix(state, config))
    with torch.no_grad():
        actual = model(IDS, attention_mask=MASK).logits
    real = MASK.bool()
    assert (actual[real] - expected[real]).abs().max() <= 1e-5
    # The prefix matters: the reference without it is far off.
    plain = reference_logits(weights, config, IDS, MASK)
    assert (actual[real] - plain[real]).abs().max() > 1e-2


def test_imported_prefix_continues_training_like_any_checkpoint(tmp_path, converted):
    base_dir, config, _ = converted
    state = write_old_checkpoint(tmp_path / "old", config, projection=True)
    run(lambda: main(["--ptuning_checkpoint", str(tmp_path / "old"), "--base", str(base_dir), str(tmp_path / "new")]))
    base, spec = load_base_model(BaseModelSpec(str(base_dir)))
    model = PrefixModel(base, encoder_config_from(read_checkpoint_config(tmp_path / "new")), base_spec=spec)
    load_prefix_weights(model, tmp_path / "new")  # what --ptuning_checkpoint does in train.py
    assert torch.equal(model.prefix_encoder.trans[2].weight, state["trans.2.weight"])


def test_shapes_that_do_not_fit_the_base_are_named(tmp_path, converted, capsys):
    base_dir, config, _ = converted
    write_old_checkpoint(tmp_path / "old", config, width=kv_width(config) * 2)   # a model with twice the layers
    with pytest.raises(CheckpointMismatchError) as err:
        import_ptuning_checkpoint(tmp_path / "old", base_dir, tmp_path / "new")
    message = str(err.value)
    assert "transformer.prefix_encoder.embedding.weight has shape (3, 128), expected (3, 64)" in message
    assert "num_layers 2 x 2 (key, value) x num_kv_heads 2 x head_dim 8 = 64" in message
    assert not (tmp_path / "new").exists()

    # pre_seq_len in config.json that disagrees with the tensor.
    write_old_checkpoint(tmp_path / "old5", config, pre_seq_len=3)
    cfg = json.loads((tmp_path / "old5" / "config.json").read_text())
    (tmp_path / "old5" / "config.json").write_text(json.dumps({**cfg, "pre_seq_len": 5}))
    with pytest.raises(SystemExit):
        run(lambda: main(["--ptuning_checkpoint", str(tmp_path / "old5"), "--base", str(base_dir),
                          str(tmp_path / "new")]))
    assert "expected (5, 64)" in capsys.readouterr().err


def test_bad_old_directories_are_named(tmp_path, converted):
    base_dir, config, weights = converted
    (tmp_path / "old").mkdir()
    with pytest.raises(ConvertError, match="config.json: not found"):
        import_ptuning_checkpoint(tmp_path / "old", base_dir, tmp_path / "new")
    (tmp_path / "old" / "config.json").write_text(json.dumps({"prefix_projection": False}))
    with pytest.raises(ConvertError, match="pre_seq_len must be a positive integer"):
        import_ptuning_checkpoint(tmp_path / "old", base_dir, tmp_path / "new")
    (tmp_path / "old" / "config.json").write_text(json.dumps({"pre_seq_len": 3}))
    torch.save({"transformer.encoder.final_layernorm.weight": torch.ones(4)}, tmp_path / "old" / "pytorch_model.bin")
    with pytest.raises(ConvertError, match="no transformer.prefix_encoder"):
        import_ptuning_checkpoint(tmp_path / "old", base_dir, tmp_path / "new")


def test_an_unconverted_base_is_refused_with_the_convert_command(tmp_path, converted):
    from model_patches import UnsupportedModelError

    _, config, _ = converted
    write_chatglm_checkpoint(tmp_path / "chatglm", config)
    write_old_checkpoint(tmp_path / "old", config)
    with pytest.raises(UnsupportedModelError, match="python -m ptuning_v2.convert"):
        import_ptuning_checkpoint(tmp_path / "old", tmp_path / "chatglm", tmp_path / "new")


def test_the_prompt_template_is_recorded(tmp_path, converted):
    base_dir, config, _ = converted
    write_old_checkpoint(tmp_path / "old", config)
    import_ptuning_checkpoint(tmp_path / "old", base_dir, tmp_path / "default")
    assert read_checkpoint_config(tmp_path / "default")["prompt"]["template"]["name"] == "chatglm"
    run(lambda: main(["--ptuning_checkpoint", str(tmp_path / "old"), "--base", str(base_dir),
                      "--prompt_template", "chat", str(tmp_path / "chat")]))
    assert read_checkpoint_config(tmp_path / "chat")["prompt"]["template"]["name"] == "chat"
