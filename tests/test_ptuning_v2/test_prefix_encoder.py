import pytest
import torch

from ptuning_v2.prefix_encoder import PrefixEncoder, PrefixEncoderConfig


def make(projection: bool, **kw) -> PrefixEncoder:
    cfg = PrefixEncoderConfig(pre_seq_len=4, num_layers=3, num_kv_heads=2, head_dim=5, prefix_projection=projection,
                              embed_dim=7 if projection else 0, prefix_hidden_size=6 if projection else 0, **kw)
    torch.manual_seed(0)
    return PrefixEncoder(cfg)


def test_without_projection_the_prefix_is_the_embedding_table():
    enc = make(False)
    assert [n for n, _ in enc.named_parameters()] == ["embedding.weight"]
    assert enc.embedding.weight.shape == (4, 3 * 2 * 2 * 5)
    kv = enc(batch_size=2)
    # Layer 1's value is the 4th block of 10 = 2 heads * 5 dims in each virtual token's row.
    table = enc.embedding.weight.view(4, 6, 2, 5)
    assert torch.equal(kv[1][1][0], table[:, 3].permute(1, 0, 2))
    assert torch.equal(kv[1][1][0], kv[1][1][1])  # same prefix for every batch row


def test_projection_mlp_shapes_and_output():
    enc = make(True)
    shapes = {n: tuple(p.shape) for n, p in enc.named_parameters()}
    assert shapes == {"embedding.weight": (4, 7), "trans.0.weight": (6, 7), "trans.0.bias": (6,),
                      "trans.2.weight": (60, 6), "trans.2.bias": (60,)}
    kv = enc(batch_size=3)
    assert len(kv) == 3 and all(k.shape == v.shape == (3, 2, 4, 5) for k, v in kv)


def test_projected_export_is_exact_and_has_no_mlp():
    enc = make(True).eval()
    flat = enc.projected().eval()
    assert flat.trans is None and not flat.config.prefix_projection
    for (k1, v1), (k2, v2) in zip(enc(2), flat(2)):
        torch.testing.assert_close(k1, k2, rtol=0, atol=1e-6)
        torch.testing.assert_close(v1, v2, rtol=0, atol=1e-6)


def test_dropout_applies_in_training_only():
    enc = make(False, prefix_dropout=0.5)
    enc.train()
    assert (enc(1)[0][0] == 0).any()
    enc.eval()
    assert not (enc(1)[0][0] == 0).any()


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="pre_seq_len"):
        PrefixEncoderConfig(pre_seq_len=0, num_layers=1, num_kv_heads=1, head_dim=1)
    with pytest.raises(ValueError, match="prefix_projection"):
        PrefixEncoderConfig(pre_seq_len=1, num_layers=1, num_kv_heads=1, head_dim=1, prefix_projection=True)
