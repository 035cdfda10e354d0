"""Per-run results outlive the DVC cache: a tiny paper goes through `dvc repro` (train with kept
checkpoints -> sample -> evaluate -> evaluate_steps -> collect -> results) in a temporary git + DVC repo;
the repo is committed and cloned without its cache and without runs/; in the clone, a changed paper
module makes `dvc repro --allow-missing` rebuild results/metrics.json from the committed per-run files,
training nothing."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.metrics import FeatNetConfig, save_featnet, train_featnet, write_reference

ROOT = Path(__file__).resolve().parent.parent

PARAMS = """\
preset: tiny
data: {name: mnist5k}
model: {name: DiT-M/8, overrides: {depth: 2, hidden_size: 32}}
diffusion: {objective: flow}
train: {steps: 2, batch_size: 8, log_every: 1, ckpt_every: 1, keep_every: 1, threads: 1}
sample: {num_samples: 20, batch_size: 20, steps: 2, grid: 10}
variants:
  a: {}
"""
RUN = "runs/tiny/a/s0"
DVC_YAML = f"""\
stages:
  train:
    wdir: ../..
    cmd: python -m pipelines.train tiny a --seed 0 --out {RUN}
    deps: [common, pipelines/train.py]
    params:
      - papers/tiny/params.yaml: [preset, data, model, diffusion, train, variants.a]
    outs:
      - {RUN}/ckpt
      - {RUN}/dvclive: {{cache: false}}
      - {RUN}/train.json: {{cache: false}}
      - {RUN}/run.json: {{cache: false}}
  sample:
    wdir: ../..
    cmd: python -m pipelines.sample tiny a --seed 0 --run {RUN}
    deps: [common/sampling.py, pipelines/sample.py, {RUN}/ckpt]
    params:
      - papers/tiny/params.yaml: [sample]
    outs:
      - {RUN}/samples.npz
      - {RUN}/samples.json: {{cache: false}}
      - {RUN}/grid.png: {{cache: false}}
  evaluate:
    wdir: ../..
    cmd: python -m pipelines.evaluate {RUN} --featnet data/featnet
    deps: [pipelines/evaluate.py, data/featnet, {RUN}/samples.npz]
    outs:
      - {RUN}/eval.json: {{cache: false}}
  evaluate_steps:
    wdir: ../..
    cmd: python -m pipelines.evaluate_steps tiny a --seed 0 --run {RUN} --featnet data/featnet
    deps: [pipelines/evaluate_steps.py, data/featnet, {RUN}/ckpt]
    params:
      - papers/tiny/params.yaml: [sample]
    outs:
      - {RUN}/eval_steps.json: {{cache: false}}
  collect:
    wdir: ../..
    cmd: python -m pipelines.collect {RUN} papers/tiny/results/runs/a/s0
    deps: [pipelines/collect.py, {RUN}]
    outs:
      - papers/tiny/results/runs/a/s0: {{cache: false}}
  results:
    wdir: ../..
    cmd: python -m pipelines.results tiny --notebooks
    deps: [papers/tiny/__init__.py, pipelines/results.py, papers/tiny/results/runs]
    metrics:
      - papers/tiny/results/metrics.json: {{cache: false}}
    outs:
      - papers/tiny/results/thumbs: {{cache: false}}
      - papers/tiny/results/README.md: {{cache: false}}
"""


def _sh(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{cmd}: {res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.mark.slow
def test_results_rebuild_on_a_fresh_clone_without_training(tmp_path):
    repo = tmp_path / "repo"
    for d in ("common", "pipelines"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "papers" / "tiny").mkdir(parents=True)
    shutil.copyfile(ROOT / "papers" / "__init__.py", repo / "papers" / "__init__.py")
    shutil.copyfile(ROOT / ".gitignore", repo / ".gitignore")
    (repo / "papers" / "tiny" / "__init__.py").write_text('TITLE = "Tiny"\nARXIV = "2212.09748"\n')
    (repo / "papers" / "tiny" / "params.yaml").write_text(PARAMS)
    (repo / "papers" / "tiny" / "dvc.yaml").write_text(DVC_YAML)
    net, _ = train_featnet(FeatNetConfig(channels=(8, 16, 32), feat_dim=32, max_steps=30, batch_size=64, lr=1e-2),
                           log=None, eval_train=False)
    save_featnet(net, repo / "data" / "featnet" / "mnist-cnn.pt")
    write_reference(net, repo / "data" / "featnet")

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", DVCLIVE_OPEN="false", TRITON_INTERPRET="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    env.pop("PYTHONPATH", None)
    dvc = [sys.executable, "-m", "dvc"]
    _sh(["git", "init", "-q"], repo, env)
    _sh([*dvc, "init", "-q"], repo, env)
    _sh(["git", "add", "-A"], repo, env)
    _sh(["git", "commit", "-qm", "a tiny paper"], repo, env)
    _sh([*dvc, "repro", "papers/tiny/dvc.yaml"], repo, env)
    kept = repo / "papers" / "tiny" / "results" / "runs" / "a" / "s0"
    assert sorted(p.name for p in kept.iterdir()) == [
        "dvclive", "eval.json", "eval_steps.json", "grid.png", "run.json", "samples.json", "train.json"]
    assert [c["step"] for c in json.loads((kept / "eval_steps.json").read_text())["checkpoints"]] == [1, 2]
    before = json.loads((repo / "papers" / "tiny" / "results" / "metrics.json").read_text())
    _sh(["git", "add", "-A"], repo, env)
    _sh(["git", "commit", "-qm", "tiny run"], repo, env)
    tracked = _sh(["git", "ls-files"], repo, env).split()
    assert not any(f.startswith("runs/") or f.endswith((".pt", ".npz")) and "featnet" not in f for f in tracked)

    clone = tmp_path / "clone"
    _sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "runs").exists() and not (clone / ".dvc" / "cache").exists()
    out = _sh([*dvc, "repro", "--allow-missing", "papers/tiny/dvc.yaml"], clone, env)
    assert "Running stage" not in out                        # nothing changed: nothing runs, nothing trains
    init = clone / "papers" / "tiny" / "__init__.py"
    init.write_text(init.read_text().replace('"Tiny"', '"Tiny, retitled"'))
    out = _sh([*dvc, "repro", "--allow-missing", "papers/tiny/dvc.yaml"], clone, env)
    assert "Running stage 'papers/tiny/dvc.yaml:results'" in out and out.count("Running stage") == 1
    assert "Stage 'papers/tiny/dvc.yaml:train' didn't change, skipping" in out
    assert not (clone / "runs").exists()                     # no run was trained, sampled or evaluated
    after = json.loads((clone / "papers" / "tiny" / "results" / "metrics.json").read_text())
    assert after["title"] == "Tiny, retitled" and after["rows"] == before["rows"]
    assert (clone / "papers" / "tiny" / "results" / "thumbs" / "a.png").is_file()
