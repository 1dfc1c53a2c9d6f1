"""Transformer: attention against torch, layers against the official-style twins, attention capture, dropout."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from detr_edu.transformer import (MultiheadAttention, Transformer, TransformerDecoderLayer, TransformerEncoderLayer,
                                  multi_head_attention)


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 4), st.sampled_from([1, 2, 4]), st.integers(1, 7), st.integers(1, 9), st.booleans())
def test_mha_matches_torch(heads, B, L, S, same):
    torch.manual_seed(L * 10 + S)
    d = 4 * heads
    ref = nn.MultiheadAttention(d, heads).eval()
    with torch.no_grad():
        ref.in_proj_bias.normal_(); ref.out_proj.bias.normal_()
    ours = MultiheadAttention(d, heads).eval()
    ours.load_state_dict(ref.state_dict())
    q = torch.randn(L, B, d)
    k = q if same else torch.randn(S, B, d)
    v = torch.randn(k.shape[0], B, d)
    kpm = torch.rand(B, k.shape[0]) > 0.6
    kpm[:, 0] = False  # at least one real key per row (all-padded rows are NaN in torch too)
    want, want_w = ref(q, k, v, key_padding_mask=kpm, need_weights=True, average_attn_weights=False)
    for need in (False, True):
        got, w = ours(q, k, v, key_padding_mask=kpm, need_weights=need)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        if need:
            torch.testing.assert_close(w, want_w, atol=1e-6, rtol=1e-5)
        else:
            assert w is None
    got, w = multi_head_attention(q, k, v, heads, ref.in_proj_weight, ref.in_proj_bias, ref.out_proj.weight,
                                  ref.out_proj.bias, key_padding_mask=kpm)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_mha_dropout_only_in_training():
    m = MultiheadAttention(8, 2, dropout=0.5)
    x = torch.randn(5, 2, 8)
    m.eval()
    torch.testing.assert_close(m(x, x, x)[0], m(x, x, x)[0])
    m.train()
    torch.manual_seed(0); a = m(x, x, x)[0]
    torch.manual_seed(1); b = m(x, x, x)[0]
    assert (a - b).abs().max() > 1e-3


def _official_like(tr: Transformer):
    "torch.nn.MultiheadAttention-based post-norm twin of `tr` (the official transformer.py computation)."
    def enc_layer(l, x, pos, kpm):
        r = nn.MultiheadAttention(x.shape[-1], tr.nhead).eval(); r.load_state_dict(l.self_attn.state_dict())
        x = l.norm1(x + r(x + pos, x + pos, x, key_padding_mask=kpm)[0])
        return l.norm2(x + l.linear2(F.relu(l.linear1(x))))

    def dec_layer(l, t, mem, pos, qpos, kpm):
        sa = nn.MultiheadAttention(t.shape[-1], tr.nhead).eval(); sa.load_state_dict(l.self_attn.state_dict())
        ca = nn.MultiheadAttention(t.shape[-1], tr.nhead).eval(); ca.load_state_dict(l.multihead_attn.state_dict())
        t = l.norm1(t + sa(t + qpos, t + qpos, t)[0])
        t = l.norm2(t + ca(t + qpos, mem + pos, mem, key_padding_mask=kpm)[0])
        return l.norm3(t + l.linear2(F.relu(l.linear1(t))))

    def forward(src, mask, query, pos):
        B, c, h, w = src.shape
        x, p = src.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1)
        qpos, kpm = query[:, None].repeat(1, B, 1), mask.flatten(1)
        for l in tr.encoder.layers: x = enc_layer(l, x, p, kpm)
        t, inter = torch.zeros_like(qpos), []
        for l in tr.decoder.layers:
            t = dec_layer(l, t, x, p, qpos, kpm); inter.append(tr.decoder.norm(t))
        return torch.stack(inter).transpose(1, 2), x.permute(1, 2, 0).view(B, c, h, w)
    return forward


def test_transformer_matches_twin_and_captures_attention():
    torch.manual_seed(0)
    tr = Transformer(32, 4, 2, 3, 64, dropout=0.0, return_intermediate_dec=True).eval()
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if p.dim() == 1: p.normal_(0.5 if "norm" in n and n.endswith("weight") else 0, 0.2)
    src, pos, q = torch.randn(2, 32, 3, 5), torch.randn(2, 32, 3, 5), torch.randn(6, 32)
    mask = torch.zeros(2, 3, 5, dtype=torch.bool); mask[1, 2:] = True; mask[1, :, 3:] = True
    with torch.no_grad():
        hs, mem = tr(src, mask, q, pos)
        hs_ref, mem_ref = _official_like(tr)(src, mask, q, pos)
        hs2, mem2, att = tr(src, mask, q, pos, return_attention=True)
    torch.testing.assert_close(hs, hs_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mem, mem_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hs2, hs, atol=1e-5, rtol=1e-5)
    assert [a.shape for a in att["enc_self"]] == [(2, 4, 15, 15)] * 2
    assert [a.shape for a in att["dec_self"]] == [(2, 4, 6, 6)] * 3
    assert [a.shape for a in att["dec_cross"]] == [(2, 4, 6, 15)] * 3
    padded = mask[1].flatten()
    for a in att["enc_self"] + att["dec_cross"]:
        assert (a[1][..., padded] == 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    # capture matches torch's weights for the first encoder layer
    l = tr.encoder.layers[0]
    r = nn.MultiheadAttention(32, 4).eval(); r.load_state_dict(l.self_attn.state_dict())
    x, p = src.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1)
    w = r(x + p, x + p, x, key_padding_mask=mask.flatten(1), average_attn_weights=False)[1]
    torch.testing.assert_close(att["enc_self"][0], w, atol=1e-6, rtol=1e-5)


def test_no_intermediate_and_prenorm_shapes():
    tr = Transformer(16, 2, 1, 2, 32, normalize_before=True).eval()
    assert tr.encoder.norm is not None
    hs, mem = tr(torch.randn(1, 16, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool), torch.randn(3, 16), torch.randn(1, 16, 2, 2))
    assert hs.shape == (1, 1, 3, 16) and mem.shape == (1, 16, 2, 2)
    assert Transformer(16, 2, 1, 1, 32).encoder.norm is None


def test_official_state_dict_keys():
    keys = set(Transformer(16, 2, 1, 1, 32).state_dict())
    for k in ["encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.0.self_attn.out_proj.bias",
              "encoder.layers.0.linear1.weight", "encoder.layers.0.norm2.bias", "decoder.layers.0.multihead_attn.in_proj_bias",
              "decoder.layers.0.norm3.weight", "decoder.norm.weight"]:
        assert k in keys


def test_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="activation"):
        TransformerEncoderLayer(8, 2, activation="tanh")
    m = MultiheadAttention(8, 2)
    with pytest.raises(ValueError, match="query"):
        m(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4))
    tr = Transformer(16, 2, 1, 1, 32)
    with pytest.raises(ValueError, match="mask"):
        tr(torch.randn(1, 16, 2, 2), torch.zeros(1, 3, 2, dtype=torch.bool), torch.randn(3, 16), torch.randn(1, 16, 2, 2))
    with pytest.raises(NotImplementedError):
        TransformerDecoderLayer(8, 2)(torch.randn(2, 1, 8), torch.randn(3, 1, 8), memory_mask=torch.zeros(2, 3))
