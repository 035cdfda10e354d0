"""common.config: validation errors name the dotted key; merge order base <- preset <- variant <- --set."""
from pathlib import Path

import pytest
import yaml

from common.config import ConfigError, RunConfig, deep_merge, from_dict, load_params, parse_set, resolve

ROOT = Path(__file__).resolve().parent.parent

PARAMS = {
    "preset": "tiny",
    "model": {"name": "DiT-T/4"},
    "diffusion": {"objective": "flow"},
    "train": {"steps": 100, "lr": 3.0e-4, "batch_size": 64},
    "sample": {"sampler": "euler", "steps": 50},
    "variants": {
        "a": {},
        "b": {"train": {"lr": 1.0e-3}, "preset_overrides": {"paper": {"train": {"steps": 7}}}},
    },
    "presets": {"paper": {"model": {"name": "DiT-XL/2"}, "train": {"steps": 1000, "lr": 1.0e-4, "batch_size": 256}}},
}


def _resolve(variant="a", sets=None, params=PARAMS):
    return resolve(params, "toy", variant, sets)


def test_defaults_and_identity():
    cfg = _resolve()
    assert isinstance(cfg, RunConfig)
    assert (cfg.paper, cfg.variant, cfg.preset) == ("toy", "a", "tiny")
    assert cfg.train.steps == 100 and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.ema_decay == RunConfig().train.ema_decay  # untouched keys keep the dataclass default
    assert from_dict(cfg.to_dict()) == cfg  # round trip through plain data (as in checkpoints)


@pytest.mark.parametrize("sets, key", [
    ({"train": {"stepz": 3}}, "train.stepz"),
    ({"modle": {"name": "x"}}, "modle"),
    ({"sample": {"cfg": 1.0}}, "sample.cfg"),
])
def test_unknown_key(sets, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        _resolve(sets=sets)


def test_unknown_key_inside_variant():
    params = deep_merge(PARAMS, {"variants": {"c": {"trian": {"steps": 1}}}})
    with pytest.raises(ConfigError, match="'variants.c.trian'"):
        _resolve("c", params=params)


@pytest.mark.parametrize("sets, key", [
    ({"train": {"steps": "many"}}, "train.steps"),
    ({"train": {"steps": 2.5}}, "train.steps"),
    ({"train": {"steps": True}}, "train.steps"),  # a bool is not an int here
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"model": {"overrides": [1, 2]}}, "model.overrides"),
    ({"sample": {"use_ema": "yes"}}, "sample.use_ema"),
    ({"train": 5}, "train"),
])
def test_wrong_type(sets, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        _resolve(sets=sets)


@pytest.mark.parametrize("sets, key", [
    ({"train": {"steps": 0}}, "train.steps"),
    ({"train": {"lr": -1e-3}}, "train.lr"),
    ({"train": {"ema_decay": 1.5}}, "train.ema_decay"),
    ({"sample": {"cfg_scale": -1}}, "sample.cfg_scale"),
    ({"diffusion": {"num_timesteps": 1}}, "diffusion.num_timesteps"),
])
def test_out_of_range(sets, key):
    with pytest.raises(ConfigError, match=f"'{key}'.*out of range"):
        _resolve(sets=sets)


@pytest.mark.parametrize("sets, key", [
    ({"train": {"precision": "fp8"}}, "train.precision"),
    ({"diffusion": {"objective": "score"}}, "diffusion.objective"),
])
def test_bad_choice(sets, key):
    with pytest.raises(ConfigError, match=f"'{key}'.*must be one of"):
        _resolve(sets=sets)


def test_unknown_variant_and_preset():
    with pytest.raises(ConfigError, match="unknown variant 'zzz'.*known: a, b"):
        _resolve("zzz")
    with pytest.raises(ConfigError, match="'preset'.*'huge'"):
        _resolve(sets={"preset": "huge"})


def test_unknown_paper():
    from pipelines._cli import known_papers, paper_params

    with pytest.raises(ConfigError, match="unknown paper 'nopaper'"):
        paper_params("nopaper")
    assert "dit" in known_papers()


def test_numeric_strings_and_ints_become_floats():
    cfg = _resolve(sets={"train": {"lr": "1e-3", "weight_decay": 0}})
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert isinstance(cfg.train.weight_decay, float)


def test_parse_set():
    got = parse_set(["train.steps=200", "model.name=DiT-S/2", "model.overrides.depth=2", "train.lr=1e-4",
                     "sample.use_ema=false", "train.betas=[0.9, 0.95]", "model.mixer_kwargs={order: 2}",
                     "data.name=a=b"])
    assert float(got["train"].pop("lr")) == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string
    assert got == {
        "train": {"steps": 200, "betas": [0.9, 0.95]},
        "model": {"name": "DiT-S/2", "overrides": {"depth": 2}, "mixer_kwargs": {"order": 2}},
        "sample": {"use_ema": False},
        "data": {"name": "a=b"},  # only the first '=' splits
    }
    assert resolve(PARAMS, "toy", "a", parse_set(["train.lr=1e-4"])).train.lr == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["train.steps"])


def test_merge_order():
    # base only
    assert _resolve("a").train.lr == pytest.approx(3e-4)
    # variant beats base
    assert _resolve("b").train.lr == pytest.approx(1e-3)
    # preset beats base; variant beats preset; variant's preset_overrides beat both
    cfg = _resolve("b", sets={"preset": "paper"})
    assert cfg.preset == "paper"
    assert cfg.model.name == "DiT-XL/2" and cfg.train.batch_size == 256
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.steps == 7
    cfg = _resolve("a", sets={"preset": "paper"})
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.steps == 1000
    # --set beats everything
    cfg = _resolve("b", sets={"preset": "paper", "train": {"lr": 5e-5, "steps": 3}})
    assert cfg.train.lr == pytest.approx(5e-5) and cfg.train.steps == 3
    assert cfg.model.name == "DiT-XL/2"  # sibling keys of an overridden section survive (deep merge)


def test_mixer_kwargs_replaced_not_merged():
    params = deep_merge(PARAMS, {"model": {"mixer_kwargs": {"a": 1, "b": 2}}})
    cfg = resolve(params, "toy", "a", {"model": {"mixer_kwargs": {"c": 3}}})
    assert cfg.model.mixer_kwargs == {"c": 3}


def test_resolve_does_not_mutate_params():
    before = yaml.safe_dump(PARAMS)
    _resolve("b", sets={"preset": "paper", "train": {"lr": 5e-5}})
    assert yaml.safe_dump(PARAMS) == before


def test_load_params_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        load_params(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(lst)


def test_dit_params_resolve_every_variant_and_preset():
    params = load_params(ROOT / "papers" / "dit" / "params.yaml")
    for variant in params["variants"]:
        for preset in ["tiny", *params.get("presets", {})]:
            cfg = resolve(params, "dit", variant, {"preset": preset})
            assert cfg.variant == variant and cfg.preset == preset
    paper = resolve(params, "dit", "dit", {"preset": "paper"})
    assert paper.model.name == "DiT-XL/2" and paper.sample.cfg_scale == pytest.approx(1.5)
    assert paper.sample.steps == 250 and paper.train.batch_size == 256 and paper.train.ema_decay == 0.9999
