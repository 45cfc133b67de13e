"""Model cards: parameter counts derived from the shapes match the published totals."""

from pathlib import Path

import pytest

from moesim.config import ModelSpec, load_model_card

CARDS = Path(__file__).resolve().parents[2] / "scenarios" / "models"

# (card, published total parameters, MoE layers of the whole model, relative tolerance)
PUBLISHED = [
    ("paper-lm", 52e9, 12, 0.02),  # Huang et al. Table I
    ("paper-lm-dense", 355e6, 0, 0.02),
    ("paper-mt", 54.5e9, 12, 0.02),
    ("paper-mt-dense", 3.3e9, 0, 0.05),
    ("mixtral-8x7b", 46.7e9, 32, 0.01),  # Jiang et al. 2024
    ("qwen3-30b-a3b", 30.5e9, 48, 0.01),  # Qwen3 report
    ("deepseek-v3", 671e9, 58, 0.01),  # DeepSeek-V3 report (without the MTP module)
    # by hand: 4 x (attention 4*512^2 + 8 experts 2*512*1024 + router 512*8) + 4096*512 tied
    ("validation-moe", 39_862_272, 4, 1e-9),
    # by hand: 4 x (q, k+v (2 of 4 heads), o: 3*64^2 + 8 GLU experts 3*64*128 + router 64*8)
    # + untied 2*256*64
    ("tiny-mixtral", 870_400, 4, 1e-9),
]


@pytest.mark.parametrize(("card", "total", "moe_layers", "tolerance"), PUBLISHED)
def test_card_parameter_counts_match_publications(
    card: str, total: float, moe_layers: int, tolerance: float
) -> None:
    model = load_model_card(CARDS / f"{card}.yaml")
    assert model.total_moe_layers == moe_layers
    assert model.total_params == pytest.approx(total, rel=tolerance)


def test_every_card_is_covered() -> None:
    assert {p.stem for p in CARDS.glob("*.yaml")} == {card for card, *_ in PUBLISHED}


def test_paper_expert_sizes_match_the_digest() -> None:
    # SEED-PAPER §1.1: LM expert 2*1024*4096 (+ biases), MT expert 2*2048*8192 (+ biases).
    assert load_model_card(CARDS / "paper-lm.yaml").expert_params == 2 * 1024 * 4096
    assert load_model_card(CARDS / "paper-mt.yaml").expert_params == 2 * 2048 * 8192


def test_moe_layer_rule_follows_fairseq_moe_freq() -> None:
    model = ModelSpec(
        name="m", layers=8, moe_every=2, d_model=8, d_ffn=8, num_experts=4, heads=2, vocab_size=10
    )
    assert [i for i in range(8) if model.is_moe_layer(i)] == [1, 3, 5, 7]
    deepseek_like = model.model_copy(update={"moe_every": 1, "first_dense_layers": 3})
    assert [i for i in range(8) if deepseek_like.is_moe_layer(i)] == [3, 4, 5, 6, 7]


def test_encoder_decoder_counts_cross_attention() -> None:
    mt = load_model_card(CARDS / "paper-mt.yaml")
    assert mt.moe_layers("encoder") == 6 and mt.moe_layers("decoder") == 6
    # 24 encoder self-attention + 24 decoder self + 24 cross = 72 blocks of 4 * 2048^2
    dense_layers = 48 - 12
    expected = 256206 * 2048 + 72 * 4 * 2048**2 + dense_layers * 2 * 2048 * 8192 + 12 * 2048 * 128
    assert mt.non_expert_params == expected
