"""The FLOP formula (trainers/flops.py) against a hand calculation and torch's own counter.

The reference is torch.utils.flop_counter.FlopCounterMode run on the real built-in models and
the real tasks. It counts matmuls (mm, addmm, bmm, sdpa) and ignores elementwise work (biases,
LayerNorm, ReLU, softmax, dropout, residual adds), which is the convention of the formula too,
so on every matmul the two must agree exactly. The one place they differ by design is the
last_only path: models.Block computes its single query's attention with elementwise products
and sums, which the counter does not see but the formula counts (4 T d_model forward). That is
under 0.2% of a modular example's forward, so the overall tolerance is 1%.

On CPU, torch 2.13 dispatches F.scaled_dot_product_attention to
aten._scaled_dot_product_flash_attention_for_cpu, for which FlopCounterMode has no rule: it
counts 0 for attention (checked below). The counter is therefore run under the MATH backend,
which computes the same attention as two bmm's over the full T x T matrix, and the counter
counts those.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from trainers.flops import flops_for_task, flops_per_example
from trainers.models import MLPModel, TransformerModel, build_model
from trainers.tasks import make_task
from trainers.tasks.addition import AdditionTask
from trainers.tasks.charlm import CharLMTask
from trainers.tasks.modular import ModularTask
from trainers.tasks.sparse_parity import SparseParityTask

TOLERANCE = 0.01  # formula / counter; see the module docstring for why 1% and not "a few"
BATCH = 2

# Shapes as the sweeps use them (sweeps/*.yaml), on small tasks.
CASES = {
    # grokking_modular.yaml / grok_fast.yaml: Nanda et al.'s one-layer model, no LayerNorm, last_only.
    "modular_1layer": (
        ModularTask(p=97),
        TransformerModel(n_layer=1, d_model=128, n_head=4, d_mlp=512, layer_norm=False),
    ),
    # Two layers with LayerNorm on a last_only task: one full block, then the one-query block.
    "modular_2layer_ln": (
        ModularTask(p=23),
        TransformerModel(n_layer=2, d_model=64, n_head=2, layer_norm=True),
    ),
    # mirage_addition.yaml: a sequence target, one layer, no LayerNorm, d_mlp = 4 d_model.
    "addition_1layer": (
        AdditionTask(n_digits=3, n_train=8, n_val=8),
        TransformerModel(n_layer=1, d_model=32, n_head=4, layer_norm=False),
    ),
    # scaling_charlm.yaml: byte-level LM, two layers, LayerNorm, 64 positions.
    "charlm_2layer_ln": (
        CharLMTask(n_train_tokens=2000, n_val_tokens=1000, seq_len=64),
        TransformerModel(n_layer=2, d_model=64, n_head=4, d_mlp=192, layer_norm=True),
    ),
    # emergence_parity.yaml: the MLP on sparse parity.
    "parity_mlp": (
        SparseParityTask(n_bits=40, k=3, n_train=8, n_val=8),
        MLPModel(d_embed=4, d_hidden=64, n_hidden=1),
    ),
    # Liu et al.'s MLP on modular arithmetic, two hidden layers.
    "modular_mlp": (ModularTask(p=97), MLPModel(d_embed=32, d_hidden=100, n_hidden=2)),
}


def counted(model: nn.Module, x: torch.Tensor, last_only: bool, backward: bool) -> int:
    """FlopCounterMode's total for a forward (and backward) pass over the batch x."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(x, last_only=last_only)
        if backward:
            logits.sum().backward()  # the loss's own work is elementwise; the counter sees none
    return counter.get_total_flops()


def one_query_attention(cfg, seq_len: int, last_only: bool) -> int:
    """Forward FLOPs the formula counts and the counter cannot see (module docstring)."""
    return 4 * seq_len * cfg.d_model if cfg.family == "transformer" and last_only else 0


@pytest.mark.parametrize("name", CASES)
def test_formula_matches_torch_flop_counter(name):
    task, cfg = CASES[name]
    data = make_task(task, seed=0)
    last_only = data.target == "last"
    torch.manual_seed(0)
    model = build_model(cfg, data.vocab_size, data.n_out, data.seq_len)
    x = data.x_train[:BATCH]
    flops = flops_for_task(cfg, data)
    unseen = one_query_attention(cfg, data.seq_len, last_only)

    forward = counted(model, x, last_only, backward=False) / BATCH
    total = counted(model, x, last_only, backward=True) / BATCH
    # Exact on everything the counter sees; the backward is twice the forward there too.
    assert forward == flops.forward - unseen
    assert total == flops.total - 3 * unseen
    assert flops.forward / forward == pytest.approx(1, rel=TOLERANCE)
    assert flops.total / total == pytest.approx(1, rel=TOLERANCE)


def test_counter_misses_cpu_fused_attention():
    # Why the counter above runs under the MATH backend: torch's fused CPU kernel has no FLOP
    # rule. If a torch upgrade adds one, this fails and the MATH pin can go.
    q = k = v = torch.randn(1, 2, 8, 4)
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as math_counter:
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert counter.get_total_flops() == 0
    assert math_counter.get_total_flops() == 2 * (2 * 8 * 8 * 4 * 2)  # full 8 x 8 matrix, 2 heads


def test_transformer_flops_by_hand():
    # d = 4, d_mlp = 16, T = 3, 5 classes, one layer.
    # N: qkv 48 + proj 16 + fc_in 64 + fc_out 64 + unembed 20 = 212
    # sequence: matmul 2*3*192 = 1152, attention 2*(2*3*3*4) = 144, unembed 2*4*5*3 = 120
    #           forward 1416, backward 2832, total 4248, per token 1416
    cfg = TransformerModel(n_layer=1, d_model=4, n_head=2, d_mlp=16)
    f = flops_per_example(cfg, vocab_size=7, n_out=5, seq_len=3, last_only=False)
    assert (f.n_matmul, f.matmul, f.attention, f.unembed) == (212, 1152, 144, 120)
    assert (f.forward, f.backward, f.total, f.per_token, f.tokens) == (1416, 2832, 4248, 1416, 3)
    # last_only: qkv on 3 positions 2*3*48 = 288, proj + MLP on one 2*(16+128) = 288,
    #            one query 2*(2*3*4) = 48, unembed one position 2*4*5 = 40 -> forward 664
    f = flops_per_example(cfg, vocab_size=7, n_out=5, seq_len=3, last_only=True)
    assert (f.matmul, f.attention, f.unembed, f.forward) == (576, 48, 40, 664)


def test_mlp_flops_by_hand_and_last_only_ignored():
    # 10 inputs of d_embed 8 -> 16 -> 16 -> 2: N = 80*16 + 16*16 + 16*2 = 1568, forward 3136.
    cfg = MLPModel(d_embed=8, d_hidden=16, n_hidden=2)
    f = flops_per_example(cfg, vocab_size=2, n_out=2, seq_len=10, last_only=True)
    assert (f.n_matmul, f.forward, f.attention, f.unembed, f.tokens) == (1568, 3136, 0, 64, 10)
    assert f == flops_per_example(cfg, vocab_size=2, n_out=2, seq_len=10, last_only=False)


@pytest.mark.parametrize("name", CASES)
def test_n_matmul_is_the_linear_weights(name):
    # The stated N convention, against the model: every nn.Linear weight, no biases, no
    # embeddings, no LayerNorm.
    task, cfg = CASES[name]
    data = make_task(task, seed=0)
    model = build_model(cfg, data.vocab_size, data.n_out, data.seq_len)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert flops_for_task(cfg, data).n_matmul == linear


def test_sequence_model_is_kaplan_with_the_full_score_matrix():
    # Per token: 6N + 3 x 4 n_layer n_ctx d_model, i.e. Kaplan's 6N + 6 n_layer n_ctx d_attn with
    # the attention term doubled because the full (not the causal half) matrix is counted.
    cfg = TransformerModel(n_layer=3, d_model=48, n_head=4, d_mlp=100)
    f = flops_per_example(cfg, vocab_size=256, n_out=256, seq_len=32, last_only=False)
    assert f.per_token == 6 * f.n_matmul + 12 * 3 * 32 * 48
    short = flops_per_example(cfg, vocab_size=256, n_out=256, seq_len=32, last_only=True)
    assert short.forward < f.forward and short.tokens == f.tokens


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_example(TransformerModel(), vocab_size=10, n_out=10, seq_len=0, last_only=False)
