"""The rules of a LoRA repo (lora_engine.adapters.repo_rules), as pure units: plain values in, a verdict out.

Whether the catalogue and the engine really apply them alike, on the loopback Hub and on local folders, is
tests/test_repo_rules_agree.py.
"""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import yaml

from lora_engine.adapters import repo_rules
from lora_engine.adapters.repo_rules import (
    MAX_CARD_CHARS,
    MAX_FILES,
    Card,
    RepoVerdict,
    assess_repo,
    base_models_of,
    best_guess_weight_name,
    card_from_hub,
    parse_card,
    read_card,
    says_lora,
    str_values,
    tags_of,
    trigger_words_of,
    widget_items,
)
from lora_engine.errors import (
    AdapterNotFound,
    CorruptAdapter,
    IncompatibleAdapter,
    UnsafeAdapterFile,
    UnsupportedAdapterFormat,
)
from tests.support.facts import load_catalogue_facts

pytestmark = pytest.mark.pure

SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
HUB_TAGS = ("lora", f"base_model:adapter:{SDXL}", f"base_model:{SDXL}")


def hub(card: dict | None = None, files=("lora.safetensors",), tags=HUB_TAGS, **kw) -> RepoVerdict:
    return assess_repo(
        "o/n",
        card=None if card is None else card_from_hub(card),
        files=files,
        tags=tags,
        accepted_base_models=(SDXL,),
        source="hub",
        **kw,
    )


def local(card: dict | None = None, files=("lora.safetensors",)) -> RepoVerdict:
    return assess_repo(
        "o/n",
        card=None if card is None else card_from_hub(card),
        files=files,
        accepted_base_models=(SDXL,),
        source="local",
    )


# --------------------------------------------------------------------------- cards


def test_parse_card_reads_the_real_examples():
    for name, front in load_catalogue_facts()["model_card_examples"].items():
        card = parse_card(f"---\n{front}---\n\n# Title of {name}\n\ntext\n")
        assert card.data == yaml.safe_load(front), name
        assert card.heading == f"Title of {name}" and card.unreadable is None
        assert "tags" in card.data


def test_parse_card_without_front_matter_or_with_broken_yaml():
    assert parse_card("# Just a heading\nbody") == Card({}, "Just a heading")
    assert parse_card("---\nkey: [unclosed\n---\n# H\n").data == {}
    assert parse_card("---\n- a list\n---\n").data == {}
    assert parse_card("---\n7\n---\n").data == {}
    fenced = parse_card("---\na: 1\n---\n```\n# not a heading\n```\n## sub\n# Real\n")
    assert fenced.heading == "Real" and fenced.data == {"a": 1}


def test_absurd_cards_are_bounded_not_errors():
    deep = "---\nx: " + "[" * 20_000 + "]" * 20_000 + "\n---\n# Deep\n"
    assert parse_card(deep) == Card({}, "Deep")  # YAML's own recursion limit: read as a broken card
    # Front matter past MAX_CARD_CHARS is not read (its closing line is never reached): an empty card.
    huge = "---\nbase_model: a/b\nnote: " + "x" * MAX_CARD_CHARS + "\n---\n"
    assert parse_card(huge).data == {}
    # An anchor repeated into an exponential tree is visited within the node budget, and names no file.
    bomb = "---\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(12)
    )
    card = parse_card(bomb + "---\n")
    choice = best_guess_weight_name(["x.safetensors", "y.safetensors"], card)
    assert choice.refusal is not None and choice.refusal.rule == "ambiguous_weight_file"


def test_read_card_decodes_utf8_only():
    assert read_card("---\ntags: [lora]\n---\n# Café\n".encode()).heading == "Café"
    assert read_card(b"\xef\xbb\xbf---\nbase_model: a/b\n---\n").data == {"base_model": "a/b"}  # a BOM is fine
    bad = read_card("---\ntags: [lora]\n---\n# Caf\xe9\n".encode("latin-1"))
    assert bad.data == {} and bad.unreadable == "README.md is not UTF-8 text (byte 0xe9 at offset 26)"
    # A character cut by the MAX_CARD_CHARS limit is dropped, not taken for a decoding error.
    long = ("---\nbase_model: a/b\n---\n" + "x" * (MAX_CARD_CHARS - 25) + "é" * 10).encode()
    assert len(long) > MAX_CARD_CHARS and read_card(long).data == {"base_model": "a/b"}


def test_card_from_hub_takes_mappings_only():
    assert card_from_hub({"a": 1}).data == {"a": 1}
    for value in (None, 5, "text", ["a"]):
        assert card_from_hub(value) == Card({})


# --------------------------------------------------------------------------- values read by type


def test_str_values_tags_and_lora():
    assert str_values(" a/b ") == ("a/b",)
    assert str_values(["a", 5, {"x": 1}, None, " ", "b"]) == ("a", "b")
    for wrong in (5, 1.5, True, None, {"a": 1}, [{"x": 1}]):
        assert str_values(wrong) == ()
    assert tags_of({"tags": ["lora", "mine"]}, ["lora", "hub"]) == ("lora", "hub", "mine")
    assert tags_of({"tags": "lora"}) == ("lora",)  # a lone string is a list of one, as the Hub reads it
    assert tags_of({"tags": 5}, 7) == () and tags_of(None, None) == ()
    assert says_lora(["x", "lora"]) and says_lora([f"base_model:adapter:{SDXL}"])
    assert not says_lora(["LoRA", "loras", f"base_model:{SDXL}", f"base_model:merge:{SDXL}"])


def test_base_models_from_card_or_tags():
    assert base_models_of({"base_model": SDXL}) == (SDXL,)
    assert base_models_of({"base_model": [SDXL, "other/x", SDXL]}) == (SDXL, "other/x")
    tags = ["lora", f"base_model:{SDXL}", f"base_model:adapter:{SDXL}", "base_model:adapter:b/c", "base_model:"]
    assert base_models_of({}, tags) == (SDXL, "b/c")
    assert base_models_of({"base_model": "card/wins"}, tags) == ("card/wins",)  # the card, when it names any
    assert base_models_of({"base_model": {"a": 1}}, tags) == (SDXL, "b/c")  # a wrong type names none
    assert base_models_of({"base_model": [{"a": 1}]}, ["base_model:sdxl-local"]) == ("sdxl-local",)


def test_trigger_words_and_widgets():
    assert trigger_words_of({"instance_prompt": "pixel art", "widget": [{"text": "w"}]}) == "pixel art"
    assert trigger_words_of({"instance_prompt": ["a", "b"]}) == "a, b"
    assert trigger_words_of({"instance_prompt": None, "widget": [{"text": " first "}, {"text": "2"}]}) == "first"
    assert trigger_words_of({}, widget_data=[{"text": "from widgetData"}]) == "from widgetData"
    assert trigger_words_of({}, widget_data={"text": "one mapping"}) == "one mapping"
    assert trigger_words_of({"instance_prompt": "", "widget": "not a list"}) is None
    assert trigger_words_of({"instance_prompt": [{"x": 1}], "widget": [{"text": 5}, 7, {"text": "ok"}]}) == "ok"
    assert trigger_words_of({}) is None
    assert widget_items({"widget": []}, [{"text": "hub"}]) == ({"text": "hub"},)
    assert widget_items({"widget": 7}, 7) == ()


# --------------------------------------------------------------------------- the weight file


@pytest.mark.parametrize(
    "files,card,weight,rule",
    [
        (["README.md", "a.safetensors"], {}, "a.safetensors", None),
        (["README.md", "lora.SAFETENSORS"], {}, "lora.SAFETENSORS", None),  # any case
        (["sub/lora.safetensors", "README.md"], {}, "sub/lora.safetensors", None),  # one candidate, in a folder
        (["a.safetensors", "b.safetensors"], {"weight_name": "b.safetensors"}, "b.safetensors", None),
        (["a.safetensors", "sub/b.safetensors"], {"weight_name": "b.safetensors"}, "sub/b.safetensors", None),
        (
            ["a.safetensors", "b.safetensors"],
            {"weight_name": "./a.safetensors", "note": "b.safetensors"},
            "a.safetensors",
            None,
        ),
        (["x-v1.safetensors", "x-v2.safetensors"], {"instance_prompt": "<lora:x-v2:0.8>"}, "x-v2.safetensors", None),
        (
            ["Surreal v1.safetensors", "Surreal v2.safetensors"],
            {"widget": [{"text": "use Surreal v1.safetensors"}]},
            "Surreal v1.safetensors",
            None,
        ),
        (["ba.safetensors", "a.safetensors"], {"note": "ba.safetensors"}, "ba.safetensors", None),
        # the full path wins over the same name in a checkpoint folder
        (["x.safetensors", "ckpt/x.safetensors"], {"note": "ckpt/x.safetensors"}, "ckpt/x.safetensors", None),
        (["x.safetensors", "ckpt/x.safetensors", "y.safetensors"], {"n": "load x.safetensors"}, "x.safetensors", None),
        (["a.safetensors", "pytorch_lora_weights.safetensors"], {}, "pytorch_lora_weights.safetensors", None),
        (["final.safetensors", "checkpoint-1/final.safetensors"], {}, "final.safetensors", None),
        (["lora.safetensors", "unet/diffusion_pytorch_model.safetensors"], {}, "lora.safetensors", None),
        (["a.safetensors", "b.safetensors"], {}, None, "ambiguous_weight_file"),
        (["a.safetensors", "b.safetensors"], {"weight_name": "c.safetensors"}, None, "ambiguous_weight_file"),
        (["pytorch_lora_weights.bin", "README.md"], {}, None, "pickle_only"),
        (["model.ckpt", "unet/diffusion_pytorch_model.bin"], {}, None, "pickle_only"),
        (["lora.safetensors", "lora.bin"], {"weight_name": "lora.bin"}, "lora.safetensors", None),
        (["lora.safetensors", "embeddings.pti"], {}, None, "pivotal_tuning"),
        (["lora.safetensors", "sub/embeddings.safetensors"], {}, None, "pivotal_tuning"),
        (["lora.safetensors", "x_emb.safetensors"], {}, None, "pivotal_tuning"),
        (["unet/diffusion_pytorch_model.safetensors"], {}, None, "no_weight_file"),
        (["unet/diffusion_pytorch_model.bin"], {}, None, "no_weight_file"),
        (["README.md", "image.png"], {}, None, "no_weight_file"),
        ([], {}, None, "no_weight_file"),
    ],
)
def test_best_guess_weight_name(files, card, weight, rule):
    choice = best_guess_weight_name(files, card)
    assert choice.weight_name == weight
    assert (choice.refusal.rule if choice.refusal else None) == rule


def test_widget_data_names_a_file_too_and_refusals_say_why():
    files = ["a.safetensors", "b.safetensors"]
    assert best_guess_weight_name(files, {}, [{"text": "with b.safetensors"}]).weight_name == "b.safetensors"
    ambiguous = best_guess_weight_name(files, {}).refusal
    assert ambiguous.error is AdapterNotFound
    assert ambiguous.reason == (
        "2 .safetensors files (a.safetensors, b.safetensors) and the card names none of them; "
        "the card's `weight_name` decides"
    )
    pickles = best_guess_weight_name(["a.bin", "b.bin", "c.pt", "d.pth"], {}).refusal
    assert pickles.error is UnsafeAdapterFile and pickles.reason.startswith(
        "only pickle weights (a.bin, b.bin, c.pt, +1 more)"
    )
    pti = best_guess_weight_name(["lora.safetensors", "embeddings.pti"], {}).refusal
    assert pti.error is UnsupportedAdapterFormat
    assert pti.reason == (
        "pivotal-tuning LoRA: needs the text embeddings in embeddings.pti, which the server does not load yet"
    )


def test_work_on_absurd_file_lists_is_bounded():
    # Only the first MAX_FILES files count: a weight file past them is not seen.
    padding = [f"img/{i}.png" for i in range(MAX_FILES)]
    assert best_guess_weight_name([*padding, "late.safetensors"], {}).refusal.rule == "no_weight_file"
    assert best_guess_weight_name(["early.safetensors", *padding], {}).weight_name == "early.safetensors"
    # Many candidates and a long card: still one answer, the named file.
    many = [f"v{i}.safetensors" for i in range(MAX_FILES)]
    card = {"notes": ["nothing here " * 50] * 5000, "weight": "see v9999.safetensors"}
    assert best_guess_weight_name(many, card).weight_name is None  # the naming string is past the string cap
    assert best_guess_weight_name(many, {"a": "see v9999.safetensors"}).weight_name == "v9999.safetensors"
    # Non-string entries in a file list (a hostile API answer) are skipped.
    assert best_guess_weight_name([5, None, {"x": 1}, "w.safetensors"], {}).weight_name == "w.safetensors"


# --------------------------------------------------------------------------- the verdict


def test_a_hub_repo_must_say_lora_and_name_a_base():
    ok = hub({"base_model": SDXL, "instance_prompt": "pixel art"})
    assert ok.servable and ok.weight_name == "lora.safetensors" and ok.base_models == (SDXL,)
    assert ok.trigger_words == "pixel art" and ok.tags == HUB_TAGS and ok.raise_if_refused() == "lora.safetensors"
    assert hub({"tags": ["lora"]}, tags=(f"base_model:{SDXL}",)).servable  # the card's lora tag counts
    assert hub({}, tags=(f"base_model:adapter:{SDXL}",)).servable  # so does the Hub's adapter relation
    assert hub(None).servable  # no card: the Hub's tags say it all
    not_lora = hub({"base_model": SDXL}, tags=("text-to-image", f"base_model:{SDXL}"))
    assert (not_lora.refusal.rule, not_lora.refusal.error) == ("not_a_lora", IncompatibleAdapter)
    assert "do not say it is a LoRA" in not_lora.reason
    no_base = hub({"tags": ["lora"]}, tags=("lora",))
    assert (no_base.refusal.rule, no_base.refusal.error) == ("no_base_model", IncompatibleAdapter)
    assert no_base.refusal.about_card and not_lora.refusal.about_card


def test_another_base_is_refused_naming_both():
    v = hub({"base_model": "runwayml/stable-diffusion-v1-5"})
    assert v.refusal.rule == "other_base_model" and not v.refusal.about_card
    assert v.reason == f"it is a LoRA for runwayml/stable-diffusion-v1-5, not for {SDXL}"
    with pytest.raises(IncompatibleAdapter, match="not for") as e:
        v.raise_if_refused()
    assert e.value.adapter_id == "o/n" and str(e.value).startswith("adapter 'o/n': it is a LoRA for")
    assert hub({"base_model": [REFINER, SDXL]}).servable  # a list naming ours
    # With no accepted list the base is not checked: what routing needs to learn which base a repo is for.
    anyone = assess_repo(
        "o/n",
        card=card_from_hub({"base_model": "x/y"}),
        files=["w.safetensors"],
        tags=["lora"],
        accepted_base_models=None,
    )
    assert anyone.servable and anyone.base_models == ("x/y",)


def test_a_local_folder_needs_neither_lora_tag_nor_base_but_no_other_base():
    assert local(None).servable and local({}).servable and local({"license": "mit"}).servable
    assert local({"tags": ["text-to-image"], "base_model": SDXL}).servable
    assert local({"tags": [f"base_model:adapter:{SDXL}"]}).base_models == (SDXL,)
    other = local({"base_model": "x/other"})
    assert other.refusal.error is IncompatibleAdapter and other.reason == f"it is a LoRA for x/other, not for {SDXL}"
    # Hidden paths are not repo files; the rest is sorted before the cap, so every reader sees the same list.
    v = local({}, files=[".git/lora.safetensors", "z/w.safetensors", ".cache/x.safetensors"])
    assert v.weight_name == "z/w.safetensors"


def test_an_unreadable_card_is_refused_as_corrupt():
    unreadable = Card(unreadable="README.md is not UTF-8 text (byte 0xe9 at offset 3)")
    for source in ("hub", "local"):
        v = assess_repo(
            "o/n", card=unreadable, files=["w.safetensors"], tags=HUB_TAGS, accepted_base_models=(SDXL,), source=source
        )
        assert v.refusal.rule == "card_unreadable" and v.refusal.error is CorruptAdapter and v.refusal.about_card
        assert v.reason == "its card cannot be read: README.md is not UTF-8 text (byte 0xe9 at offset 3)"


def test_refusals_come_in_a_fixed_order():
    # Not a LoRA is said before the weight file's problems; the embeddings before the pickles.
    assert hub({"base_model": SDXL}, files=["a.bin"], tags=()).refusal.rule == "not_a_lora"
    assert hub({"base_model": SDXL}, files=["a.bin", "embeddings.pti"]).refusal.rule == "pivotal_tuning"
    assert [r for r in repo_rules.REFUSAL_RULES] == [
        "card_unreadable",
        "not_a_lora",
        "no_base_model",
        "other_base_model",
        "pivotal_tuning",
        "pickle_only",
        "no_weight_file",
        "ambiguous_weight_file",
    ]


# Every card key the rules read, each with every wrong type: the verdict is the one without that key.
HOSTILE_VALUES = [7, 1.5, True, {"a": 1}, [{"x": 1}], None, [], ""]
CARD_KEYS = ["tags", "base_model", "weight_name", "instance_prompt", "widget"]


@pytest.mark.parametrize("key", CARD_KEYS)
@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=repr)
@pytest.mark.parametrize("source", ["hub", "local"])
def test_a_card_value_of_the_wrong_type_counts_as_absent(key, value, source):
    card = {
        "tags": ["lora", "pixel"],
        "base_model": SDXL,
        "weight_name": "b.safetensors",
        "instance_prompt": "pixel art",
        "widget": [{"text": "a widget", "output": {"url": "x.png"}}],
    }
    files = ["a.safetensors", "b.safetensors", "x.png"]

    def verdict(data: dict) -> RepoVerdict:
        return assess_repo(
            "o/n",
            card=card_from_hub(data),
            files=files,
            tags=HUB_TAGS,
            widget_data=[{"text": "hub widget"}],
            accepted_base_models=(SDXL,),
            source=source,
        )

    without = {k: v for k, v in card.items() if k != key}
    assert verdict({**card, key: value}) == verdict(without)


def test_hostile_values_from_the_hub_itself_count_as_absent():
    v = assess_repo(
        "o/n",
        card=card_from_hub(["not", "a", "mapping"]),
        files=["w.safetensors", 3],
        tags=5,
        widget_data=7,
        accepted_base_models=(SDXL,),
    )
    assert v.refusal.rule == "not_a_lora"  # tags of the wrong type: none, so nothing says LoRA


def test_verdict_invariants_and_pickling():
    with pytest.raises(ValueError, match="`source` must be one of"):
        assess_repo("o/n", card=None, files=[], accepted_base_models=(), source="web")
    with pytest.raises(ValueError, match="exactly one"):
        RepoVerdict("o/n", "hub", (), (), None, None, None)
    v = hub({"base_model": "x/y"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.weight_name = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(v)) == v  # crosses process boundaries with its error class
    error = v.refusal.to_error("o/n")
    assert type(error) is IncompatibleAdapter and error.reason == v.reason
