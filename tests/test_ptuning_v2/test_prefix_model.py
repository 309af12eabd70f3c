"""Behaviour of the prefix model on tiny models: exactness, freezing, training, checkpointing, generation."""

import pytest
import torch

from ptuning_v2.prefix_model import PrefixModel, encoder_config_for, forward_with_prefix, is_trainable
from tiny_models import ARCHITECTURES, batch_with_labels, greedy_by_full_recompute, train_steps, tiny_model

PAD = 0


def prefixed(model_type="glm", attention="gqa", pre_seq_len=4, projection=False, seed=0, **overrides):
    base = tiny_model(model_type, attention, seed=seed, **overrides)
    cfg = encoder_config_for(base.config, pre_seq_len, prefix_projection=projection, prefix_hidden_size=16)
    torch.manual_seed(seed + 1)
    return PrefixModel(base, cfg)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
@pytest.mark.parametrize("attention", ["mha", "gqa", "mqa"])
def test_real_token_keys_as_prefix_reproduce_full_sequence_logits(model_type, attention):
    base = tiny_model(model_type, attention)
    torch.manual_seed(1)
    ids = torch.randint(4, 90, (2, 11))
    p = 4
    with torch.no_grad():
        full = base(ids).logits
        cache = base(ids[:, :p], use_cache=True).past_key_values
        prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        # The continuation sits at positions p.. in the full sequence.
        positions = torch.arange(p, ids.shape[1]).expand(2, -1)
        rest = forward_with_prefix(base, prefix_kv, ids[:, p:], position_ids=positions).logits
    assert (rest - full[:, p:]).abs().max().item() <= 1e-5


def test_every_base_parameter_is_frozen_and_count_matches():
    model = prefixed(projection=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if is_trainable(n)}
    assert trainable == {"prefix_encoder." + k for k in model.trainable_state_dict()}
    assert all(not p.requires_grad for p in model.base.parameters())  # embeddings, norms, lm_head included
    n_trainable, n_total = model.count_parameters()
    assert n_trainable == sum(p.numel() for p in model.prefix_encoder.parameters())
    assert n_total == n_trainable + sum(p.numel() for p in model.base.parameters())


def test_padding_side_does_not_change_real_token_logits():
    model = prefixed().eval()
    ids = torch.randint(4, 90, (1, 7))
    pad = torch.full((1, 3), PAD)
    with torch.no_grad():
        plain = model(ids).logits
        left = model(torch.cat([pad, ids], 1), attention_mask=torch.cat([torch.zeros(1, 3), torch.ones(1, 7)], 1).long()).logits
        right = model(torch.cat([ids, pad], 1), attention_mask=torch.cat([torch.ones(1, 7), torch.zeros(1, 3)], 1).long()).logits
    torch.testing.assert_close(left[:, 3:], plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(right[:, :7], plain, atol=1e-5, rtol=0)



def test_short_training_run_lowers_loss_changes_only_the_prefix():
    model = prefixed(projection=True)
    model.train()
    base_before = {n: t.clone() for n, t in model.base.state_dict().items()}
    prefix_before = {n: t.clone() for n, t in model.trainable_state_dict().items()}
    losses = train_steps(model, *batch_with_labels(), steps=25)
    assert losses[-1] < 0.7 * losses[0], losses
    for name, tensor in model.trainable_state_dict().items():
        assert not torch.equal(tensor, prefix_before[name]), name
    for name, tensor in model.base.state_dict().items():
        assert torch.equal(tensor, base_before[name]), f"base parameter {name} changed"


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_gradient_checkpointing_gives_same_loss_and_prefix_gradients(model_type):
    def loss_and_grads(checkpointing: bool):
        model = prefixed(model_type, projection=True)
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        ids, mask, labels = batch_with_labels()
        loss = model(ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.prefix_encoder.named_parameters()}, model

    loss_off, grads_off, _ = loss_and_grads(False)
    loss_on, grads_on, model = loss_and_grads(True)
    assert all(layer.gradient_checkpointing for layer in model.patch.decoder_layers(model.base))
    assert abs(loss_on - loss_off) <= 1e-5 * abs(loss_off)
    for name in grads_off:
        assert grads_off[name].abs().sum() > 0, f"no gradient reached {name}"
        rel = (grads_on[name] - grads_off[name]).norm() / grads_off[name].norm()
        assert rel <= 1e-5, (name, rel.item())


def test_checkpointing_rejects_reentrant_mode():
    with pytest.raises(ValueError, match="use_reentrant"):
        prefixed().activation_checkpointing_enable({"use_reentrant": True})



@pytest.mark.parametrize("model_type", ["glm", "llama"])
def test_generate_on_left_padded_batch_equals_full_recompute(model_type):
    model = prefixed(model_type, pre_seq_len=3, eos_token_id=None).eval()
    with torch.no_grad():  # a prefix large enough to matter
        model.prefix_encoder.embedding.weight.normal_(0, 2.0)
    ids = torch.tensor([[PAD, PAD, PAD, 11, 12, 13], [21, 22, 23, 24, 25, 26]])
    mask = (ids != PAD).long()
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    expected = greedy_by_full_recompute(model, ids, mask, 6)
    assert torch.equal(generated, expected)
    # Padding does not change a row's continuation.
    alone = model.generate(ids[:1, 3:], max_new_tokens=6, do_sample=False)
    assert torch.equal(alone[0, 3:], generated[0, 6:])


def test_generate_rejects_right_padding():
    model = prefixed().eval()
    with pytest.raises(ValueError, match="left padding"):
        model.generate(torch.tensor([[5, 6, PAD]]), attention_mask=torch.tensor([[1, 1, 0]]), max_new_tokens=2)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_loss_from_the_label_window_equals_the_full_sequence_loss(padding_side):
    """With labels, only the last K positions get logits; loss and prefix gradients equal the full computation."""
    model = prefixed(projection=True)
    model.prefix_encoder.dropout.p = 0.0
    torch.manual_seed(3)
    lengths, answer = [10, 7, 5], 3
    width = max(lengths)
    ids = torch.full((3, width), PAD)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, n in enumerate(lengths):
        span = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[row, span] = torch.randint(4, 90, (n,))
        mask[row, span] = 1
        labels[row, span.stop - answer:span.stop] = ids[row, span.stop - answer:span.stop]

    out = model(ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.prefix_encoder.parameters()]
    model.zero_grad()
    reference = forward_with_prefix(model.base, model.prefix_kv(3), ids, attention_mask=mask, labels=labels)
    reference.loss.backward()

    assert torch.allclose(out.loss, reference.loss, atol=1e-6)
    for got, want in zip(grads, (p.grad for p in model.prefix_encoder.parameters())):
        assert torch.allclose(got, want, atol=1e-6)
    # Left padding lines the answers up at the end: logits for the answer and the token before it only.
    expected_window = answer + 1 if padding_side == "left" else width - (min(lengths) - answer) + 1
    assert out.logits.shape[1] == expected_window
    # The Trainer's num_items_in_batch (gradient accumulation) divides the summed loss instead of the mean.
    summed = model(ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(18)).loss
    assert torch.allclose(summed, reference.loss * 9 / 18, atol=1e-6)
