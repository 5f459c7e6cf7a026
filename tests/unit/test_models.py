"""Parameter counts against hand calculations, the resolver, and the last-position fast path."""

import pytest
import torch

from trainers.gpt import GPTModel
from trainers.models import build_model, count_params, init_weights, resolve_shape
from trainers.spec import MLPModel, TransformerModel


def test_transformer_counts_by_hand_grokking_shape():
    # p = 59: vocab 60 (59 residues and "="), 59 classes, 3 positions, no LayerNorm.
    # embedding: tok 60*64 + pos 3*64 + unembed 64*59 = 3840 + 192 + 3776 = 7808
    # block: qkv 64*192 + proj 64*64 + fc_in 64*256+256 + fc_out 256*64+64
    #      = 12288 + 4096 + 16640 + 16448 = 49472
    cfg = TransformerModel(n_layer=1, d_model=64, n_head=4, d_mlp=256, layer_norm=False)
    counts = count_params(build_model(cfg, vocab_size=60, n_out=59, seq_len=3))
    assert (counts.embedding, counts.non_embedding, counts.total) == (7808, 49472, 57280)


def test_transformer_counts_by_hand_two_layers_with_layer_norm():
    # addition-like: vocab 12, 10 classes, 8 positions, d_mlp defaults to 4 * 32 = 128.
    # embedding: 12*32 + 8*32 + 32*10 = 384 + 256 + 320 = 960
    # block: ln1 64 + ln2 64 + qkv 3072 + proj 1024 + fc_in 4224 + fc_out 4128 = 12576
    # two blocks 25152, final LayerNorm 64 -> 25216
    cfg = TransformerModel(n_layer=2, d_model=32, n_head=2, layer_norm=True)
    counts = count_params(build_model(cfg, vocab_size=12, n_out=10, seq_len=8))
    assert (counts.embedding, counts.non_embedding) == (960, 25216)


def test_mlp_counts_by_hand():
    # parity: vocab 2, 2 classes, 10 inputs. tok 2*8 = 16; layer 80*16+16 = 1296;
    # layer 16*16+16 = 272; readout 16*2+2 = 34. embedding 16 + 34 = 50, non 1568.
    cfg = MLPModel(d_embed=8, d_hidden=16, n_hidden=2)
    counts = count_params(build_model(cfg, vocab_size=2, n_out=2, seq_len=10))
    assert (counts.embedding, counts.non_embedding) == (50, 1568)
    # modular p = 97: tok 98*32 = 3136; layer 96*100+100 = 9700; readout 100*97+97 = 9797.
    cfg = MLPModel(d_embed=32, d_hidden=100, n_hidden=1)
    counts = count_params(build_model(cfg, vocab_size=98, n_out=97, seq_len=3))
    assert (counts.embedding, counts.non_embedding) == (3136 + 9797, 9700)


@pytest.mark.parametrize("target", [20_000, 100_000, 1_000_000])
@pytest.mark.parametrize("convention", ["total", "non_embedding"])
def test_resolver_lands_within_ten_percent(target, convention):
    base = TransformerModel(n_layer=2, n_head=4, layer_norm=False)
    r = resolve_shape(base, target, vocab_size=98, n_out=97, seq_len=3, convention=convention)
    assert r.model.n_layer == 2 and r.model.d_model % 4 == 0
    real = count_params(build_model(r.model, 98, 97, 3))
    assert getattr(real, convention) == getattr(r.n_params, convention)
    assert abs(getattr(real, convention) - target) / target <= 0.10


def test_resolver_mlp_and_unreachable_target():
    r = resolve_shape(MLPModel(n_hidden=2), 50_000, vocab_size=2, n_out=2, seq_len=40)
    assert r.relative_error <= 0.10 and r.model.n_hidden == 2
    with pytest.raises(ValueError, match="within 10%"):
        # The embeddings alone exceed this: no width can reach it.
        resolve_shape(TransformerModel(), 100, vocab_size=98, n_out=97, seq_len=3)


@pytest.mark.parametrize("n_layer", [1, 2])
def test_last_only_matches_full_forward(n_layer):
    torch.manual_seed(0)
    model = build_model(TransformerModel(n_layer=n_layer, d_model=32, n_head=4), 10, 7, 5)
    init_weights(model, 1.0)
    model.eval()
    x = torch.randint(0, 10, (6, 5))
    torch.testing.assert_close(model(x, last_only=True), model(x)[:, -1], atol=1e-5, rtol=1e-5)


def test_init_scale_multiplies_weight_norm():
    norms = []
    for scale in (1.0, 3.0):
        torch.manual_seed(0)
        model = build_model(MLPModel(), 5, 5, 3)
        init_weights(model, scale)
        norms.append(torch.sqrt(sum((p**2).sum() for p in model.parameters())).item())
    assert norms[1] == pytest.approx(3 * norms[0], rel=1e-5)


@pytest.mark.parametrize(
    "cfg",
    [
        TransformerModel(n_layer=2, d_model=32, n_head=2, layer_norm=True),
        TransformerModel(
            n_layer=1, d_model=128, n_head=4, d_mlp=512, layer_norm=False, parametrization="mup"
        ),
        MLPModel(d_embed=16, d_hidden=64, n_hidden=3),
        GPTModel(n_layer=2, aspect=32, head_dim=16, mlp="swiglu"),
        GPTModel(n_layer=3, aspect=64, head_dim=32, tie_embeddings=True),
    ],
    ids=lambda c: c.family,
)
def test_a_small_model_counted_on_the_cpu_counts_as_on_the_meta_device(cfg, monkeypatch):
    """shape_counts builds a small model on the CPU (no meta-device ops: a second of every command)
    and a large one on the meta device; the counts are the same, and no RNG draw leaks out."""
    from trainers import models

    io = (40, 40, 8)  # vocab, classes, positions (tied embeddings need vocab == classes)
    assert models._rough_size(cfg, *io) <= models.CPU_COUNT_MAX
    on_cpu = models.shape_counts(cfg, *io)
    monkeypatch.setattr(models, "CPU_COUNT_MAX", 0)
    assert models.shape_counts(cfg, *io) == on_cpu
    assert on_cpu.total == count_params(build_model(cfg, *io)).total


def test_counting_a_model_draws_nothing_from_the_global_rng():
    from trainers import models

    cfg = TransformerModel(n_layer=1, d_model=32, n_head=2)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    models.shape_counts(cfg, 20, 20, 4)
    assert torch.equal(torch.rand(3), expected)
