"""A frozen bitsandbytes int8 / int4 base on the CPU: accuracy, gradients, training, and checkpoints."""

import json

import bitsandbytes as bnb
import pytest
import torch

from ptuning_v2.checkpoint import CONFIG_NAME, load_prefix_model, save_prefix_checkpoint
from ptuning_v2.prefix_model import PrefixModel, encoder_config_for
from ptuning_v2.quantization import BaseModelSpec, load_base_model
from tiny_models import tiny_model, tiny_tokenizer

MODES = [(8, "nf4"), (4, "nf4"), (4, "fp4")]
# Relative error ||quantized - full|| / ||full|| of the logits of a 2-layer random model. int8 (LLM.int8,
# row-wise absmax over 256 levels) keeps ~1%; 4-bit has 16 levels per block of 64 weights, ~10% for NF4 (levels
# placed for normally distributed weights), ~16% for FP4. The bounds leave about 2x headroom.
LOGIT_TOLERANCE = {(8, "nf4"): 0.03, (4, "nf4"): 0.2, (4, "fp4"): 0.3}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_glm_64")
    model = tiny_model("glm", "gqa", hidden_size=64, intermediate_size=128, head_dim=16)
    with torch.no_grad():
        model.lm_head.weight.div_(20.0)  # undo tiny_model's sharpening: moderate logits, a meaningful relative error
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sharp_base_dir(tmp_path_factory):
    """Large output weights (tiny_model's default): the prefix can move the logits far in a few steps."""
    path = tmp_path_factory.mktemp("tiny_glm_64_sharp")
    tiny_model("glm", "gqa", hidden_size=64, intermediate_size=128, head_dim=16).save_pretrained(path)
    return path


def quantized(base_dir, bit, quant_type="nf4", seed=0, pre_seq_len=3):
    base, spec = load_base_model(BaseModelSpec(str(base_dir), quantization_bit=bit, quant_type=quant_type))
    torch.manual_seed(seed)
    return PrefixModel(base, encoder_config_for(base.config, pre_seq_len), base_spec=spec)


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 80, (2, 9), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return ids, labels


@pytest.mark.parametrize("bit, quant_type", MODES)
def test_quantized_logits_close_to_full_precision(base_dir, bit, quant_type):
    full, _ = load_base_model(BaseModelSpec(str(base_dir)))
    model = quantized(base_dir, bit, quant_type)
    layer_cls = bnb.nn.Linear8bitLt if bit == 8 else bnb.nn.Linear4bit
    assert isinstance(model.base.model.layers[0].mlp.down_proj, layer_cls)
    ids, _ = batch()
    with torch.no_grad():
        ref, out = full(ids).logits, model.base(ids).logits
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel <= LOGIT_TOLERANCE[(bit, quant_type)], rel


@pytest.mark.parametrize("bit", [8, 4])
def test_only_the_fp32_prefix_trains(base_dir, bit):
    model = quantized(base_dir, bit)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prefix_encoder.embedding.weight"}
    assert model.prefix_encoder.embedding.weight.dtype == torch.float32
    trainable, total = model.count_parameters()
    full_total = sum(p.numel() for p in load_base_model(BaseModelSpec(str(base_dir)))[0].parameters())
    assert total == full_total + trainable  # 4-bit weights are counted as weights, not packed bytes


def test_int4_prefix_gradients_match_dequantized_weights(base_dir):
    model = quantized(base_dir, 4)
    full, _ = load_base_model(BaseModelSpec(str(base_dir)))
    dequantized = dict(full.named_modules())
    for name, module in model.base.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            dequantized[name].weight.data.copy_(weight.view_as(dequantized[name].weight))
    reference = PrefixModel(full, model.encoder_config)
    reference.prefix_encoder.load_state_dict(model.prefix_encoder.state_dict())
    ids, labels = batch()
    grads = []
    for m in (model, reference):
        m.train()
        m(ids, labels=labels).loss.backward()
        grads.append(m.prefix_encoder.embedding.weight.grad)
    rel = ((grads[0] - grads[1]).norm() / grads[1].norm()).item()
    assert rel <= 1e-4, rel


def test_training_after_an_evaluation_pass_keeps_correct_gradients(base_dir):
    """bitsandbytes would repack 4-bit weights in an eval forward on AVX512-BF16 CPUs and break backward."""
    ids, labels = batch()

    def prefix_grad(evaluate_first: bool):
        model = quantized(base_dir, 4)
        if evaluate_first:
            model.eval()
            with torch.no_grad():
                model(ids)
        model.train()
        model(ids, labels=labels).loss.backward()
        return model.prefix_encoder.embedding.weight.grad

    fresh, after_eval = prefix_grad(False), prefix_grad(True)
    assert torch.allclose(after_eval, fresh, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bit", [8, 4])
def test_short_quantized_training_lowers_loss_and_checkpointing_agrees(sharp_base_dir, bit):
    ids, labels = batch()
    ids[:, 4:] = 7  # an answer the prefix can learn: always token 7
    labels[:, 4:] = 7
    results = {}
    for checkpointing in (False, True):
        model = quantized(sharp_base_dir, bit)
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.3)
        losses = []
        for _ in range(12):
            loss = model(ids, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            if not losses:
                first_grad = model.prefix_encoder.embedding.weight.grad.clone()
            optimizer.step()
            losses.append(loss.item())
        results[checkpointing] = (losses, first_grad)
    losses, grad_off = results[False]
    assert losses[-1] < 0.5 * losses[0], losses
    losses_on, grad_on = results[True]
    assert abs(losses_on[0] - losses[0]) <= 1e-5 * losses[0]
    assert ((grad_on - grad_off).norm() / grad_off.norm()).item() <= 1e-5


def test_checkpoint_records_quantization_and_loading_reuses_it(base_dir, tmp_path):
    model = quantized(base_dir, 4).eval()
    with torch.no_grad():
        model.prefix_encoder.embedding.weight.normal_()
    save_prefix_checkpoint(model, tmp_path)
    recorded = json.loads((tmp_path / CONFIG_NAME).read_text())["base_model"]
    assert (recorded["quantization_bit"], recorded["quant_type"], recorded["torch_dtype"]) == (4, "nf4", "float32")
    loaded, _, _ = load_prefix_model(tmp_path)
    assert isinstance(loaded.base.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    ids, _ = batch()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
