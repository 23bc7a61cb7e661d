"""The book's schematic figures: what each draws, and the inputs each refuses."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from draftalign.book import display, schematics  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _kinds(fig) -> dict:
    counts = {}
    for ax in fig.axes:
        for patch in ax.patches:
            if patch.get_gid():
                counts[patch.get_gid()] = counts.get(patch.get_gid(), 0) + 1
    return counts


def _texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


def _font_sizes(fig) -> list:
    sizes = [t.get_fontsize() for ax in fig.axes for t in ax.texts]
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            sizes += [t.get_fontsize() for t in legend.get_texts()]
    return sizes


def test_block_with_a_rejection():
    fig = schematics.draw_block(4, 2)
    assert isinstance(fig, Figure)
    assert _kinds(fig) == {"accepted": 2, "rejected": 1, "correction": 1, "discarded": 1}
    assert "accepted + 1 = 2 + 1 = 3 tokens for one target call" in _texts(fig)


def test_block_with_every_draft_accepted_has_a_bonus():
    fig = schematics.draw_block(4, 4)
    assert _kinds(fig) == {"accepted": 4, "bonus": 1}
    assert "= 5 tokens for one target call" in _texts(fig)


def test_block_rejecting_the_first_draft():
    assert _kinds(schematics.draw_block(3, 0)) == {"rejected": 1, "correction": 1, "discarded": 2}


def test_block_draws_into_a_given_axes():
    fig, ax = plt.subplots()
    assert schematics.draw_block(2, 1, ax=ax) is fig


@pytest.mark.parametrize("gamma, accepted, match", [
    (4, 5, "between 0 and gamma = 4"), (0, 0, "gamma .* >= 1"), (2, -1, "between 0 and gamma"),
    (2.5, 1, "gamma"),
])
def test_block_refuses_bad_input(gamma, accepted, match):
    with pytest.raises(ValueError, match=match):
        schematics.draw_block(gamma, accepted)


def test_token_colours_match_the_html_rendering():
    for kind in ("accepted", "rejected", "correction", "bonus"):
        assert schematics.TOKEN_COLORS[kind] in display._STYLE[kind]
    assert set(schematics.TOKEN_COLORS) == set(display._STYLE)


def test_pipeline_names_the_stages_and_chapters():
    fig = schematics.draw_pipeline()
    assert isinstance(fig, Figure)
    assert _kinds(fig) == {"stage": 4}
    text = _texts(fig)
    for needle in ("Chapter 2", "Chapter 3", "Chapter 4", "Chapters 1 and 5",
                   "FKL, RKL, TVD, TVD++", "target's tokenizer", "instruction prompts"):
        assert needle in text


def test_kv_cache_rows():
    fig = schematics.draw_kv_cache(prefix=5, new=3)
    assert isinstance(fig, Figure)
    # plain step: 5 cached + 1 new; verification: 5 cached + 3 new;
    # rollback (1 of 2 drafts accepted): 5 + 1 + 1 kept, 1 cropped
    assert _kinds(fig) == {"cached": 5 + 5 + 7, "new": 1 + 3, "cropped": 1}
    text = _texts(fig)
    for needle in ("Plain decoding step", "Verification pass", "After the rollback", "7 tokens"):
        assert needle in text


def test_kv_cache_rollback_of_every_draft():
    assert _kinds(schematics.draw_kv_cache(prefix=4, new=4, accepted=0))["cropped"] == 3


@pytest.mark.parametrize("kw, match", [
    ({"prefix": 0}, "prefix"), ({"new": 1}, "new"), ({"new": 3, "accepted": 2}, "between 0 and new - 2"),
])
def test_kv_cache_refuses_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        schematics.draw_kv_cache(**kw)


@pytest.mark.parametrize("draw", [lambda: schematics.draw_block(4, 2), schematics.draw_pipeline,
                                  schematics.draw_kv_cache])
def test_text_is_readable_at_book_width(draw):
    fig = draw()
    assert 9 <= fig.get_figwidth() <= 10.5
    assert min(_font_sizes(fig)) >= 9
