"""Tensor names -> (layer, kind) for every built-in family, checked against mergekit's architecture tables and real
transformers state dicts; user families from a file; bad family files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evomerge.architecture import ENV_VAR, family_for, num_layers, place_of
from evomerge.errors import UserError

MERGEKIT_ARCH = Path(__import__("mergekit").__file__).parent / "_data" / "architectures"


@pytest.mark.parametrize("arch_file", ["llama.json", "mistral.json", "qwen2.json", "qwen3.json", "gemma.json",
                                       "gemma2.json", "gemma3.json"])
def test_layers_match_mergekit_tables(arch_file):
    spec = json.loads((MERGEKIT_ARCH / arch_file).read_text())
    fam = family_for({"architectures": spec["architectures"]})
    assert fam.name == "decoder"
    for w in spec["pre_weights"] + spec["post_weights"]:
        assert place_of(w["name"]).layer is None and fam.layer_of(w["name"]) is None
        if "vocabulary_axis" in w:
            assert fam.is_vocab(w["name"]), w["name"]
        for tied in w.get("tied_names", []):
            assert tied in fam.tied_to(w["name"])
    for i in (0, 7, 31):
        for w in spec["layer_templates"]["weights"]:
            name = w["name"].replace("${layer_index}", str(i))
            place = place_of(name)
            assert place.layer == i and fam.place(name) == place
            assert place.kind == ("attn" if "self_attn" in name else "mlp" if ".mlp." in name else "norm"), name


def _state_dict_names(config) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return list(model.state_dict())


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"])
def test_real_state_dicts_are_placed(family):
    from transformers import AutoConfig

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=64, head_dim=32)
    cfg = AutoConfig.for_model(family, **small)
    names = _state_dict_names(cfg)
    fam = family_for(cfg.to_dict())
    assert fam.unplaced(names) is None
    assert num_layers(cfg.to_dict()) == 3
    layers = {place_of(n).layer for n in names}
    assert layers == {None, 0, 1, 2}
    kinds = {n: place_of(n).kind for n in names}
    assert kinds["model.embed_tokens.weight"] == "embed" and kinds["model.norm.weight"] == "norm"
    assert all(k != "other" for k in kinds.values()), [n for n, k in kinds.items() if k == "other"]
    if "lm_head.weight" in names:
        assert kinds["lm_head.weight"] == "lm_head"


def test_gemma3_multimodal_both_checkpoint_formats():
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
           "text_config": {"num_hidden_layers": 34}, "vision_config": {"num_hidden_layers": 27}}
    fam = family_for(cfg)
    assert fam.name == "gemma3_multimodal" and num_layers(cfg) == 34
    for prefix in ("model.language_model.", "language_model.model."):
        assert place_of(prefix + "layers.5.self_attn.q_norm.weight").layer == 5
        assert place_of(prefix + "layers.5.mlp.down_proj.weight").kind == "mlp"
        assert fam.is_vocab(prefix + "embed_tokens.weight")
    vision = "vision_tower.vision_model.encoder.layers.3.self_attn.q_proj.weight"
    assert place_of(vision).layer is None and place_of("model." + vision).layer is None
    assert fam.unplaced([vision, "multi_modal_projector.mm_soft_emb_norm.weight"]) is None
    assert "language_model.model.embed_tokens.weight" in fam.tied_to("lm_head.weight")


def test_unknown_layout_is_reported():
    fam = family_for({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})  # falls back to Llama's layout
    assert fam.unplaced(["transformer.wte.weight", "transformer.h.0.attn.c_attn.weight"]) == \
        "transformer.h.0.attn.c_attn.weight"


def test_user_family_file_extends_the_table(tmp_path, monkeypatch):
    f = tmp_path / "gpt2.yaml"
    f.write_text(r"""
families:
  gpt2:
    architectures: [GPT2LMHeadModel]
    model_types: [gpt2]
    num_layers_key: n_layer
    layer: '^transformer\.h\.(\d+)\.'
    kinds: {attn: '\.attn\.', mlp: '\.mlp\.', embed: '^transformer\.wte\.', lm_head: '^lm_head\.', norm: '\.ln_'}
    vocab: ['^transformer\.wte\.weight$', '^lm_head\.weight$']
    tied: {lm_head.weight: [transformer.wte.weight]}
""")
    monkeypatch.setenv(ENV_VAR, str(f))
    cfg = {"architectures": ["GPT2LMHeadModel"], "n_layer": 12}
    fam = family_for(cfg)
    assert fam.name == "gpt2" and num_layers(cfg) == 12
    assert place_of("transformer.h.3.attn.c_attn.weight") == place_of("transformer.h.3.attn.c_proj.bias")
    assert place_of("transformer.h.3.attn.c_attn.weight").layer == 3
    assert place_of("transformer.h.11.mlp.c_fc.weight").kind == "mlp"
    assert place_of("transformer.h.11.ln_1.weight").kind == "norm"
    assert fam.tied_to("lm_head.weight") == ("transformer.wte.weight",)
    assert fam.unplaced(["transformer.h.0.attn.c_attn.weight", "transformer.wte.weight"]) is None
    # the built-in families still work beside it
    assert place_of("model.layers.2.mlp.up_proj.weight").layer == 2


@pytest.mark.parametrize("text, field", [
    ("families: {x: {layer: '^a\\.(\\d+)\\.', colour: red}}", "families.x.colour"),
    ("families: {x: {layer: '^a\\.(\\d+\\.'}}", "families.x.layer"),
    ("families: {x: {layer: '^a\\.\\d+\\.'}}", "families.x.layer"),
    ("families: {x: {architectures: [A]}}", "families.x.layer"),
    ("families: {x: {layer: '^a\\.(\\d+)\\.', kinds: {attention: x}}}", "families.x.kinds"),
    ("families: {x: {layer: '^a\\.(\\d+)\\.', tied: {lm_head.weight: emb}}}", "families.x.tied"),
    ("models: []", "arch.yaml"),
])
def test_bad_family_files_name_the_field(tmp_path, monkeypatch, text, field):
    f = tmp_path / "arch.yaml"
    f.write_text(text)
    monkeypatch.setenv(ENV_VAR, str(f))
    with pytest.raises(UserError) as e:
        place_of("model.layers.0.mlp.up_proj.weight")
    assert field in e.value.where
