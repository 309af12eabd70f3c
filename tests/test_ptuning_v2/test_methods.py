"""Every registered method (ptuning_v2/methods) on tiny models: what trains, save/load, generation, init, mixing
flags, and the input-level methods' equivalence with prepending embeddings."""

import json

import pytest
import torch

from ptuning_v2.arguments import PrefixArguments
from ptuning_v2.checkpoint import CONFIG_NAME, CheckpointError, load_prefix_model, save_prefix_checkpoint
from ptuning_v2.methods import check_flags_apply, get_method, method_names
from ptuning_v2.prefix_model import PrefixModel
from ptuning_v2.quantization import BaseModelSpec, load_base_model
from tiny_models import batch_with_labels, greedy_by_full_recompute, train_steps, tiny_model, tiny_tokenizer

PAD = 0
# One setting per row of the comparison: (method, flags).
SETTINGS = {
    "ptuning_v2": {"method": "ptuning_v2"},
    "prefix_tuning": {"method": "ptuning_v2", "prefix_projection": True, "prefix_hidden_size": 16},
    "prompt_tuning": {"method": "prompt_tuning"},
    "ptuning_v1_lstm": {"method": "ptuning_v1"},
    "ptuning_v1_mlp": {"method": "ptuning_v1", "prompt_encoder_type": "mlp"},
}


def prefix_args(pre_seq_len=4, **flags):
    return PrefixArguments(pre_seq_len=pre_seq_len, prefix_dropout=0.0, **flags)


def build(base, setting="prompt_tuning", seed=1, tokenizer=None, **flags):
    args = prefix_args(**{**SETTINGS[setting], **flags})
    method = get_method(args.method)
    torch.manual_seed(seed)
    model = PrefixModel(base, method.config_from_args(base.config, args))
    method.initialize(model, tokenizer or tiny_tokenizer(), args, seed)
    return model


def shake(model, scale=0.5):
    """Move every trainable parameter away from its start, as training would."""
    with torch.no_grad():
        for p in model.prefix_encoder.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model



def test_the_three_methods_are_registered():
    assert method_names() == ["ptuning_v2", "prompt_tuning", "ptuning_v1"]
    with pytest.raises(ValueError, match="known methods: ptuning_v2, prompt_tuning, ptuning_v1"):
        get_method("lora")


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_only_the_method_parameters_train_and_the_base_stays_bit_identical(setting):
    model = build(tiny_model("glm", "gqa"), setting).train()
    base_before = {n: t.clone() for n, t in model.base.state_dict().items()}
    start = {n: t.clone() for n, t in model.trainable_state_dict().items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("prefix_encoder.") for n in trainable)
    n_trainable, _ = model.count_parameters()
    assert n_trainable == sum(p.numel() for p in model.prefix_encoder.parameters())
    losses = train_steps(model, *batch_with_labels(), steps=15)
    assert losses[-1] < losses[0], losses
    assert all(not torch.equal(t, start[n]) for n, t in model.trainable_state_dict().items())
    for name, tensor in model.base.state_dict().items():
        assert torch.equal(tensor, base_before[name]), f"base parameter {name} changed"


@pytest.mark.parametrize("setting", ["prompt_tuning", "ptuning_v1_lstm", "ptuning_v1_mlp"])
def test_input_level_prompt_equals_prepending_its_embeddings(setting):
    """The soft prompt as a prefix is exactly the base given the prompt embeddings in front of the input."""
    model = shake(build(tiny_model("llama", "gqa"), setting)).eval()
    ids = torch.randint(4, 90, (2, 7))
    with torch.no_grad():
        prompt = model.prefix_encoder.prompt_embeddings()                            # (P, hidden)
        embeds = torch.cat([prompt.expand(2, -1, -1), model.base.get_input_embeddings()(ids)], dim=1)
        reference = model.base(inputs_embeds=embeds).logits[:, prompt.shape[0]:]
        ours = model(ids).logits
    assert (ours - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("setting", ["prompt_tuning", "ptuning_v1_lstm"])
def test_input_level_gradient_checkpointing_gives_the_same_loss_and_gradients(setting):
    def loss_and_grads(checkpointing):
        model = shake(build(tiny_model("glm", "gqa"), setting))
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        ids, mask, labels = batch_with_labels()
        loss = model(ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        assert all(layer.gradient_checkpointing for layer in model.patch.decoder_layers(model.base)) == checkpointing
        return loss.item(), {n: p.grad.clone() for n, p in model.prefix_encoder.named_parameters()}

    loss_off, grads_off = loss_and_grads(False)
    loss_on, grads_on = loss_and_grads(True)
    assert abs(loss_on - loss_off) <= 1e-5 * abs(loss_off)
    for name in grads_off:
        assert grads_off[name].abs().sum() > 0, name
        assert ((grads_on[name] - grads_off[name]).norm() / grads_off[name].norm()).item() <= 1e-5, name


def test_prompt_tuning_from_text_starts_equal_to_the_base_with_that_text_in_front():
    tok = tiny_tokenizer()
    text = "判断好坏："                                                    # 5 tokens, pre_seq_len 5
    base = tiny_model("glm", "gqa")
    model = build(base, "prompt_tuning", tokenizer=tok, pre_seq_len=5, prompt_init="text",
                  prompt_init_text=text).eval()
    text_ids = tok.encode(text, add_special_tokens=False)
    assert len(text_ids) == 5
    ids = torch.randint(4, 90, (2, 6))
    with torch.no_grad():
        reference = base(torch.cat([torch.tensor([text_ids] * 2), ids], 1)).logits[:, 5:]
        ours = model(ids).logits
    assert (ours - reference).abs().max().item() <= 1e-5


def test_prompt_tuning_from_vocab_uses_distinct_ordinary_tokens_per_seed():
    tok = tiny_tokenizer()
    base = tiny_model("glm", "gqa")
    table = base.get_input_embeddings().weight
    rows = {}
    for seed in (1, 2):
        weight = build(base, "prompt_tuning", seed=seed, tokenizer=tok, prompt_init="vocab").prefix_encoder.embedding.weight
        ids = [int((table - row).abs().sum(-1).argmin()) for row in weight]
        assert len(set(ids)) == 4 and not set(ids) & set(tok.all_special_ids)
        assert torch.equal(weight, table[ids])
        rows[seed] = ids
    assert rows[1] != rows[2]
    again = build(base, "prompt_tuning", seed=1, tokenizer=tok, prompt_init="vocab").prefix_encoder.embedding.weight
    assert torch.equal(again, table[rows[1]])


def test_prompt_init_text_without_text_is_refused():
    with pytest.raises(ValueError, match="--prompt_init_text"):
        build(tiny_model("glm", "gqa"), "prompt_tuning", prompt_init="text")


def test_a_flag_of_another_method_is_refused():
    with pytest.raises(ValueError, match="--prefix_projection applies to --method ptuning_v2"):
        check_flags_apply(get_method("prompt_tuning"), prefix_args(method="prompt_tuning", prefix_projection=True))
    with pytest.raises(ValueError, match="--prompt_init applies to --method prompt_tuning"):
        check_flags_apply(get_method("ptuning_v2"), prefix_args(prompt_init="vocab"))
    check_flags_apply(get_method("ptuning_v1"), prefix_args(method="ptuning_v1", prompt_encoder_type="mlp"))



@pytest.mark.parametrize("setting", ["prompt_tuning", "ptuning_v1_lstm"])
def test_generation_on_a_left_padded_batch_equals_a_full_recompute(setting):
    model = shake(build(tiny_model("glm", "gqa", eos_token_id=None), setting), scale=2.0).eval()
    ids = torch.tensor([[PAD, PAD, PAD, 11, 12, 13], [21, 22, 23, 24, 25, 26]])
    mask = (ids != PAD).long()
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, greedy_by_full_recompute(model, ids, mask, 6))
    alone = model.generate(ids[:1, 3:], max_new_tokens=6, do_sample=False)
    assert torch.equal(alone[0, 3:], generated[0, 6:])


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_save_then_load_gives_identical_logits_and_records_the_method(setting, tiny_base_dir, tmp_path):
    base, spec = load_base_model(BaseModelSpec(str(tiny_base_dir)))
    model = shake(build(base, setting)).eval()
    model.base_spec = spec
    save_prefix_checkpoint(model, tmp_path)
    record = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert record["method"] == SETTINGS[setting]["method"]
    loaded, _, _ = load_prefix_model(tmp_path)
    assert loaded.method.name == record["method"] and loaded.encoder_config == model.encoder_config
    ids = torch.randint(4, 80, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_an_unknown_recorded_method_names_the_field(tiny_checkpoint, tmp_path):
    import shutil

    shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / CONFIG_NAME
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "method": "adapter"}))
    with pytest.raises(CheckpointError, match=r"prefix_config.json: field method: unknown method 'adapter'"):
        load_prefix_model(tmp_path / "ckpt")


def test_a_checkpoint_without_a_method_field_is_ptuning_v2(tiny_checkpoint):
    record = json.loads((tiny_checkpoint / CONFIG_NAME).read_text())
    record.pop("method", None)
    from ptuning_v2.checkpoint import encoder_config_from

    assert type(encoder_config_from(record)).__name__ == "PrefixEncoderConfig"


@pytest.mark.parametrize("bit", [8, 4])
@pytest.mark.parametrize("setting", ["prompt_tuning", "ptuning_v1_lstm"])
def test_input_level_methods_train_on_a_quantized_base(setting, bit, tiny_base_dir):
    pytest.importorskip("bitsandbytes")
    base, _ = load_base_model(BaseModelSpec(str(tiny_base_dir), quantization_bit=bit))
    model = build(base, setting)
    model.activation_checkpointing_enable()
    model.train()
    ids, mask, labels = batch_with_labels()
    loss = model(ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    grads = [p.grad for p in model.prefix_encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {"prefix_encoder." + k for k in model.trainable_state_dict()}


@pytest.mark.parametrize("setting", ["prompt_tuning", "ptuning_v1_lstm"])
def test_evaluate_and_chat_load_an_input_level_checkpoint(setting, tiny_base_dir, tiny_checkpoint, tmp_path):
    from ptuning_v2 import evaluate
    from ptuning_v2.chat import reply
    from ptuning_v2.inference import load_session

    base, spec = load_base_model(BaseModelSpec(str(tiny_base_dir)))
    model = shake(build(base, setting), scale=2.0).eval()
    model.base_spec = spec
    model.prompt_settings = json.loads((tiny_checkpoint / CONFIG_NAME).read_text())["prompt"]
    save_prefix_checkpoint(model, tmp_path / "ckpt")

    metrics = evaluate.main(["--checkpoint", str(tmp_path / "ckpt"), "--max_new_tokens", "3"])
    assert metrics["num_examples"] == 6 and metrics["model"] == "base + prefix"

    session = load_session(str(tmp_path / "ckpt"))
    assert session.model.method.name == SETTINGS[setting]["method"]
    pieces = []

    class Collect:
        def put(self, value):
            pieces.append(value)

        def end(self):
            pass

    answer = reply(session, "这个好不好", [], Collect(), max_new_tokens=4, do_sample=False)
    prompt = torch.tensor([session.prompt_ids("这个好不好", [])])
    expected = model.generate(prompt, max_new_tokens=4, do_sample=False)[0, prompt.shape[1]:]
    assert session.answer(expected.tolist()) == answer and len(pieces) >= 2
