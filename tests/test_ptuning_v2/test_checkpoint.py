import json

import pytest
import torch
from safetensors.torch import load_file

from ptuning_v2.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    CheckpointMismatchError,
    export_projected,
    load_prefix_model,
    save_prefix_checkpoint,
)
from ptuning_v2.prefix_model import PrefixModel, encoder_config_for
from ptuning_v2.quantization import BaseModelSpec, load_base_model
from tiny_models import tiny_model


def trained_looking_prefix_model(base_dir, projection=True, pre_seq_len=3):
    base, spec = load_base_model(BaseModelSpec(str(base_dir)))
    cfg = encoder_config_for(base.config, pre_seq_len, prefix_projection=projection, prefix_hidden_size=16)
    torch.manual_seed(3)
    model = PrefixModel(base, cfg, base_spec=spec, prompt_settings={"template": {"name": "plain"}})
    with torch.no_grad():
        for p in model.prefix_encoder.parameters():
            p.normal_(0, 1.0)
    return model.eval()


@pytest.mark.parametrize("projection", [False, True])
def test_round_trip_gives_identical_logits(tiny_base_dir, tmp_path, projection):
    model = trained_looking_prefix_model(tiny_base_dir, projection)
    save_prefix_checkpoint(model, tmp_path)

    saved = load_file(tmp_path / WEIGHTS_NAME)
    assert set(saved) == set(model.prefix_encoder.state_dict())

    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["pre_seq_len"] == 3 and config["prefix_projection"] is projection
    assert (config["model_type"], config["num_layers"], config["num_kv_heads"], config["head_dim"]) == ("glm", 2, 2, 8)
    assert config["base_model"]["model_name_or_path"] == str(tiny_base_dir)
    assert config["base_model"]["torch_dtype"] == "float32" and config["base_model"]["quantization_bit"] is None
    assert config["prompt"] == {"template": {"name": "plain"}}

    # Nothing but the checkpoint directory: the base path and every prefix flag come from the checkpoint.
    loaded, tokenizer, _ = load_prefix_model(tmp_path)
    ids = torch.randint(4, 80, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert tokenizer.pad_token_id == 0
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


def test_projected_export_drops_the_mlp_and_keeps_logits(tiny_base_dir, tmp_path):
    model = trained_looking_prefix_model(tiny_base_dir, projection=True)
    save_prefix_checkpoint(model, tmp_path / "mlp")
    export_projected(tmp_path / "mlp", tmp_path / "flat")
    config = json.loads((tmp_path / "flat" / CONFIG_NAME).read_text())
    assert config["prefix_projection"] is False and config["projected_export"] is True
    assert set(load_file(tmp_path / "flat" / WEIGHTS_NAME)) == {"embedding.weight"}
    flat, _, _ = load_prefix_model(tmp_path / "flat")
    ids = torch.randint(4, 80, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(flat(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError, match="prefix_projection is false"):
        export_projected(tmp_path / "flat", tmp_path / "again")


def test_mismatched_base_names_the_fields(tiny_base_dir, tmp_path):
    model = trained_looking_prefix_model(tiny_base_dir, projection=False)
    save_prefix_checkpoint(model, tmp_path / "ckpt")
    other = tmp_path / "other_base"
    tiny_model("llama", "mqa", num_layers=3).save_pretrained(other)
    with pytest.raises(CheckpointMismatchError) as err:
        load_prefix_model(tmp_path / "ckpt", model_name_or_path=str(other))
    message = str(err.value)
    assert "prefix_config.json" in message
    for line in ("model_type: checkpoint has 'glm', base model has 'llama'",
                 "num_layers: checkpoint has 2, base model has 3",
                 "num_kv_heads: checkpoint has 2, base model has 1"):
        assert line in message
    assert "head_dim" not in message  # only the fields that differ


def test_broken_checkpoint_files_name_file_and_field(tiny_base_dir, tmp_path):
    model = trained_looking_prefix_model(tiny_base_dir, projection=False)
    save_prefix_checkpoint(model, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())

    del config["pre_seq_len"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"prefix_config.json: missing field\(s\) pre_seq_len"):
        load_prefix_model(tmp_path)

    config["pre_seq_len"] = 5  # the weights hold 3 virtual tokens
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"prefix_model.safetensors: tensor embedding.weight has shape \(3, 64\)"):
        load_prefix_model(tmp_path)

    with pytest.raises(CheckpointError, match="not found"):
        load_prefix_model(tmp_path / "nowhere")
