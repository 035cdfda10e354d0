"""Paper modules, discovered by the registry (`papers.names()`, never a list here): every variant and
preset resolves and builds; claims produce valid verdicts; each DVC pipeline lists its runs once."""
from pathlib import Path

import pytest
import torch
import yaml

import papers
from common.config import resolve
from common.metrics.schema import VERDICTS, claim_specs, judge_all, validate_metrics
from common.models import create_model
from pipelines._cli import known_papers, paper_params

ROOT = Path(__file__).resolve().parents[1]
PAPERS = papers.names()
WITH_REFERENCE = [p for p in PAPERS if "reference" in paper_params(p)]


def _variants(paper):
    return list(paper_params(paper)["variants"])


@pytest.mark.parametrize("paper", PAPERS)
def test_every_variant_and_preset_builds_at_reduced_size(paper):
    from common import data
    from common.diffusion import check_sampler
    from common.train import build_model

    params = paper_params(paper)
    for preset in ["tiny", *params.get("presets", {})]:
        for v in _variants(paper):
            cfg = resolve(params, paper, v, {"preset": preset})
            check_sampler(cfg.diffusion.objective, cfg.sample.sampler)  # e.g. a flow variant under a DDPM preset
            # reduced size: 1 block (paper presets would be hundreds of millions of parameters)
            cfg.model.overrides = dict(cfg.model.overrides, depth=1)
            if isinstance(cfg.model.overrides.get("mixer"), list):
                cfg.model.overrides["mixer"] = cfg.model.overrides["mixer"][:1]
            model = build_model(cfg, data.info(cfg.data.name))
            shape = (2, model.in_channels, model.input_size, model.input_size)
            if model.frames:
                shape = (2, model.frames) + shape[1:]
            out = model(torch.randn(shape), torch.rand(2) * 1000, torch.zeros(2, dtype=torch.long))
            assert out.shape[-3:] == (model.out_channels, model.input_size, model.input_size)


@pytest.mark.parametrize("paper", WITH_REFERENCE)
def test_reference_shares_the_recipe(paper):
    """A paper that reuses another paper's run as its reference arm trains and samples with the same recipe
    (its base sections, before any variant) and the same model size and patch."""
    params = paper_params(paper)
    ref = params["reference"]
    a = resolve(paper_params(ref["paper"]), ref["paper"], ref["variant"])
    b = resolve({**params, "variants": {"base": {}}}, paper, "base")
    assert a.train == b.train and a.sample == b.sample and a.diffusion == b.diffusion and a.data == b.data
    assert a.model.name.split("-")[1] == b.model.name.split("-")[1]  # same size and patch
    assert paper_params(ref["paper"])["seeds"] == params["seeds"]


def test_pom_reference_is_attention_and_dipom_is_pom():
    params = paper_params("pom")
    a = resolve(paper_params(params["reference"]["paper"]), "dit", params["reference"]["variant"])
    assert create_model(a.model.name).mixers[0] == "attention"
    assert create_model(resolve(params, "pom", "dipom").model.name).mixers[0] == "pom"


def test_dipom_is_dit_with_pom_only():
    papers.load("pom")  # registers DiPoM-*

    dit, dipom = create_model("DiT-XL/2", depth=2), create_model("DiPoM-XL/2", depth=2)
    a = {k: v.shape for k, v in dit.named_parameters() if ".attn." not in k}
    b = {k: v.shape for k, v in dipom.named_parameters() if ".attn." not in k}
    assert a == b


def _row(variant, fid, cc=0.9, **kw):
    fids = [fid - 0.1, fid, fid + 0.1]
    return {"variant": variant, "fid": fid, "fid_std": 0.1, "fid_features": "mnist-cnn", "fid_samples": 1000,
            "seeds": [0, 1, 2], "fid_per_seed": fids, "class_consistency": cc,
            "class_consistency_per_seed": [cc] * 3, **kw}


CALIB = {"image": {"fid_real_vs_real": {"300": 0.9, "1000": 0.3}}}


@pytest.mark.parametrize("paper", PAPERS)
def test_claims_give_valid_verdicts(paper):
    """Every paper: title, arXiv id, docstring; its declared claims parse and, judged by the rule over rows of
    its variants (plus the module's own benchmark claims), form a valid metrics.json."""
    mod = papers.load(paper)
    assert mod.TITLE and mod.ARXIV and mod.__doc__
    specs = claim_specs(paper_params(paper))
    variants = set(_variants(paper)) | {r["variant"] for r in _shared(paper)}
    for s in specs:
        assert set(s.compares) <= variants, f"claim {s.key} compares a variant the pipeline does not run"
    rows = [_row(v, 10.0 + i) for i, v in enumerate(sorted(variants))]
    checks = {k: {"passed": True, "detail": "ok"} for k in ("planted-allocation", "kv-size", "kv-growth")}
    extra = {"bench": {"scaling": {"pom_slope": 1.0, "attention_slope": 1.9, "speedup_4096": 3.0, "crossover_n": 512},
                       "video": {"frames_lo": 4, "frames_hi": 32, "growth_mb": {"pom": 0.5, "attention": 168.0},
                                 "checks": checks}}}
    claims = judge_all(specs, rows, CALIB) + (mod.claims(rows, extra) if hasattr(mod, "claims") else [])
    for c in claims:
        assert c["verdict"] in VERDICTS and c["rule"] and "gate" in c
    doc = {"paper": paper, "title": mod.TITLE, "arxiv": mod.ARXIV, "preset": "tiny", "dataset": "mnist5k",
           "rows": rows, "claims": claims}
    assert validate_metrics(doc) == []


def _shared(paper):
    """Rows a paper takes from another (PoM's attention reference)."""
    ref = paper_params(paper).get("reference")
    return [{"variant": "dit-attention"}] if ref else []


def test_dit_claims_are_judged_by_the_rule():
    rows = [_row("sit", 4.0), _row("dit", 40.0, cc=0.3), _row("sit-p8", 9.0)]
    out = {c["key"]: c for c in judge_all(claim_specs(paper_params("dit")), rows, CALIB)}
    flow = out["flow-beats-ddpm"]
    assert flow["verdict"] == "reproduced" and flow["compares"] == ["sit", "dit"]
    assert "dit class-consistency 0.30 < 0.8" in flow["reason"]  # the failed arm's gate is shown beside it
    assert out["smaller-patches-better"]["verdict"] == "reproduced"


def test_pom_parity_claim_reads_the_shared_reference():
    rows = [_row("dit-attention", 10.0), _row("dipom", 10.2)]
    out = {c["key"]: c for c in judge_all(claim_specs(paper_params("pom")), rows, CALIB)}
    assert out["parity"]["verdict"] == "reproduced" and "dipom 10.20" in out["parity"]["measured"]
    deg = out["degree-2-beats-1-matched"]
    assert deg["verdict"] == "inconclusive" and "dipom-o1" in deg["reason"]


def test_known_papers():
    assert known_papers() == PAPERS


@pytest.mark.parametrize("paper", PAPERS)
def test_paper_presets_use_paper_sizes(paper):
    """A variant's own model must not leak a tiny model into the `paper` preset."""
    params = paper_params(paper)
    for v in _variants(paper):
        cfg = resolve(params, paper, v, {"preset": "paper"})
        assert "-T/" not in cfg.model.name and "-M/" not in cfg.model.name, (paper, v, cfg.model.name)


@pytest.mark.parametrize("paper", PAPERS)
def test_dvc_runs_are_listed_once(paper):
    """The variant x seed list is written once (`vars: runs`; sampling-only runs, which train nothing, in
    `resampled`); every per-run stage iterates over one of them, names its variants, and keeps the stage
    names recorded in dvc.lock."""
    from dvc.dvcfile import load_file
    from dvc.repo import Repo

    path = ROOT / "papers" / paper / "dvc.yaml"
    raw = yaml.safe_load(path.read_text())
    lists = {k: v for d in raw.get("vars", []) if isinstance(d, dict) for k, v in d.items() if k in ("runs", "resampled")}
    assert "runs" in lists
    per_run = {name: st["foreach"][2:-1] for name, st in raw["stages"].items() if "foreach" in st}
    assert "${runs}" in {raw["stages"][n]["foreach"] for n in per_run}
    assert all(raw["stages"][n]["foreach"] == f"${{{k}}}" and k in lists for n, k in per_run.items())
    for runs in lists.values():
        assert {r["variant"] for r in runs.values()} <= set(_variants(paper))
        assert all(isinstance(r["seed"], int) for r in runs.values())
    names = set(load_file(Repo(str(ROOT)), str(path.relative_to(ROOT))).stages)
    assert {f"{s}@{key}" for s, k in per_run.items() for key in lists[k]} <= names
    lock = ROOT / "papers" / paper / "dvc.lock"
    if lock.exists():
        recorded = {n for n in yaml.safe_load(lock.read_text())["stages"] if n.startswith(("train@", "sample@"))}
        assert recorded <= names


def test_mixer_pattern_tiles_the_depth():
    m = create_model("DiT-M/8", mixer=["attention", "pom"])
    assert m.mixers == ["attention", "pom"] * 3
    with pytest.raises(ValueError, match="does not tile"):
        create_model("DiT-M/8", mixer=["attention", "pom", "pom", "pom"])


def test_describe_resolves_paper_registered_models():
    """A fresh process: `describe` loads every paper, so a paper's model name (DiPoM-T/4) resolves."""
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "pipelines.describe", "DiPoM-T/4"], cwd=ROOT, capture_output=True,
                         text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["model"] == "DiPoM-T/4" and out["mixers"] == ["pom"] and out["tokens"] == 64
