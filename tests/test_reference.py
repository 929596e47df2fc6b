"""Our transformer stage against MEGABYTE-pytorch 0.3.6's (the reference the benchmarks compare with), given the
same weights.

Whole-model logits cannot match without adding parts to our model: the reference's patch embedder wraps its
projection in two LayerNorms and gives it a bias, its projections to the next stage and its output head have
biases, each stage has its own byte-embedding table, and its local stage runs over patch + 1 positions (a start
token in front of every patch's bytes). What the two share is the stage transformer: pre-norm blocks of token
shift, RMSNorm, causal rotary attention and an MLP, and a final RMSNorm. That is checked here, layer by layer and
as a whole stack. (The reference always shifts tokens; its MLP has biases, set to zero here, and GELU, where ours
is squared ReLU: the reference's activation is swapped for ours, the one difference left. Our input skip starts
as the plain stack, so a freshly built stack has none.)
"""

from __future__ import annotations

import torch
from MEGABYTE_pytorch import megabyte as reference

from bytemodels import Megabyte, MegabyteConfig
from bytemodels.layers import relu_squared, token_shift

DIM, HEADS, LAYERS = 32, 4, 2
#: Our switches that the reference has no counterpart for, off; token shift on, as the reference always has it.
AS_THE_REFERENCE = dict(token_shift=True, cross_patch=False, qk_norm=False, dropout=0.0)


class ReluSquared(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_squared(x)


def our_stack() -> torch.nn.Module:
    """The global stage's transformer of a two-stage model configured like the reference."""
    config = MegabyteConfig.preset("tiny", patch_sizes=(4,), dims=(DIM, 16), layers=(LAYERS, 1), heads=(HEADS, 1),
                                   max_seq_len=64, norm_eps=1e-12, **AS_THE_REFERENCE)
    torch.manual_seed(0)
    return Megabyte(config).stages[0].transformer.eval()


def reference_stack() -> torch.nn.Module:
    stack = reference.Transformer(dim=DIM, layers=LAYERS, dim_head=DIM // HEADS, heads=HEADS, ff_mult=4,
                                  rel_pos=True)
    for _, feed_forward in stack.layers:
        feed_forward[2] = ReluSquared()  # see the module docstring
    return stack.eval()


def copy_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Give the reference stack our stack's weights (random norm gains too, so a swapped gain would show)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block, (attention, feed_forward) in zip(ours.blocks, theirs.layers, strict=True):
            for norm in (block.attn_norm, block.mlp_norm):
                norm.weight.copy_(1 + 0.3 * torch.randn(DIM, generator=generator))
            attention.norm.g.copy_(block.attn_norm.weight)
            query, key_value = block.attn.qkv.weight.split((DIM, 2 * DIM))
            attention.to_q.weight.copy_(query)
            attention.to_kv.weight.copy_(key_value)  # keys, then values: the order of both layouts
            attention.to_out.weight.copy_(block.attn.out.weight)
            feed_forward[0].g.copy_(block.mlp_norm.weight)
            feed_forward[1].weight.copy_(block.mlp.up.weight)
            feed_forward[4].weight.copy_(block.mlp.down.weight)
            feed_forward[1].bias.zero_()
            feed_forward[4].bias.zero_()
        ours.norm.weight.copy_(1 + 0.3 * torch.randn(DIM, generator=generator))
        theirs.norm.g.copy_(ours.norm.weight)


def test_a_stage_transformer_equals_the_reference_given_the_same_weights():
    ours, theirs = our_stack(), reference_stack()
    copy_weights(ours, theirs)
    x = torch.randn(3, 24, DIM, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
        # Each part on its own: a mismatch names the part.
        block, (attention, feed_forward) = ours.blocks[0], theirs.layers[0]
        shifted = token_shift(x, None, None)
        torch.testing.assert_close(shifted, reference.token_shift(x), rtol=0, atol=0)
        cos, sin = ours.rotary(torch.arange(x.shape[1]))
        torch.testing.assert_close(block.attn(block.attn_norm(shifted), (cos, sin)),
                                   attention(shifted, rotary_emb=theirs.rotary_emb(x.shape[1])), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(block.mlp(block.mlp_norm(shifted)), feed_forward(shifted), rtol=1e-5, atol=1e-5)
        # The comparison can fail: a model with queries and keys swapped no longer matches.
        block.attn.qkv.weight.copy_(block.attn.qkv.weight[torch.cat((torch.arange(DIM, 2 * DIM), torch.arange(DIM),
                                                                      torch.arange(2 * DIM, 3 * DIM)))])
        assert not torch.allclose(ours(x), expected, atol=1e-3)

