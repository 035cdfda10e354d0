"""PoM: Efficient Image and Video Generation with the Polynomial Mixer.

Picard & Dufour, https://arxiv.org/abs/2411.12663 (official code: github davidpicard/HoMM; 2026
follow-up arXiv 2604.06129, github davidpicard/pom).

What it changes in the base DiT: the multi-head attention of every block is replaced by the
Polynomial Mixer (`common.mixers.pom`): tokens are projected to k*e*D channels, cumulative Hadamard
products form k polynomial terms, their token mean is a fixed-size state H, and each query token reads
H through a sigmoid gate. Cost is linear in the number of tokens; with a block-causal (per-frame
prefix) mean the state lets a video be generated frame by frame at constant memory.

Claims (paper Tables 1-2 and Figs. on scaling / video), declared in params.yaml and judged by the one rule:
quality parity with attention in a DiT, the degree ablation (HoMM README: order 2 beats order 1, higher
orders add little) and frame-by-frame video parity; the benchmark's linear cost in N is a measurement
(`claims` below).
"""
from __future__ import annotations

from common.models import register_family

TITLE = "PoM: Efficient Image and Video Generation with the Polynomial Mixer"
ARXIV = "2411.12663"

POM_DEFAULTS = {"degree": 2, "expand": 2}

# DiPoM: the DiT of the core with `pom` as its mixer, the rest of the block unchanged.
register_family("DiPoM", mixer="pom", mixer_kwargs=POM_DEFAULTS)


def claims(rows: list[dict], extra: dict) -> list[dict]:
    """The benchmark claim (a measurement, not a seed comparison); the sample-quality claims are declared in
    params.yaml and judged by the one rule. PoM's constant-size state is a unit test (tests/test_video.py):
    the state's byte count is fixed by construction, so it is not a verdict; the peak-memory claim of
    frame-by-frame generation needs the measured-memory harness (not built yet), so it is not judged here."""
    scal = ((extra or {}).get("bench") or {}).get("scaling") or {}
    if not scal:
        return []
    slope, att = scal.get("pom_slope"), scal.get("attention_slope")
    sp4k, sp16k, cross = scal.get("speedup_4096"), scal.get("speedup_16384"), scal.get("crossover_n")
    ok = slope is not None and slope <= LINEAR_SLOPE_MAX
    return [{
        "key": "linear-cost", "claim": "PoM cost is linear in the number of tokens, attention's quadratic",
        "paper": "O(N) vs O(N^2); large speedups at long sequences",
        "compares": ["pom", "attention"], "metric": "loglog_slope", "kind": "measurement",
        "rule": (f"measurement: the log-log slope of one PoM layer's fwd+bwd time over N >= 1024 is at most "
                 f"{LINEAR_SLOPE_MAX} (linear, with timer noise); no seeds or gate: a timing, not a sample"),
        "values": {"pom": [slope] if slope is not None else [], "attention": [att] if att is not None else []},
        "gate": {"passed": None, "detail": "no quality gate: a timing measurement"},
        "measured": (f"log-log slope of PoM fwd+bwd time over N >= 1024: {_f(slope)} (attention {_f(att)}); speedup "
                     f"at N=4096: {_f(sp4k)}x, at N=16384: {_f(sp16k)}x; PoM faster from N = {cross} "
                     f"(CPU, D=256, batch 4){_efficiency(scal)}"),
        "outcome": "inconclusive" if slope is None else ("better" if ok else "worse"),
        "reason": "no slope measured" if slope is None else f"slope {slope:.2f} {'<=' if ok else '>'} {LINEAR_SLOPE_MAX}",
        "verdict": "inconclusive" if slope is None else ("reproduced" if ok else "not reproduced"),
    }]


LINEAR_SLOPE_MAX = 1.15


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _efficiency(scal: dict) -> str:
    """The PoM layer's achieved FLOP/s as a share of a plain matmul's (it should be matmul-bound)."""
    eff = scal.get("pom_flops_efficiency")
    return f"; the PoM layer runs at {eff:.0%} of this machine's matmul FLOP/s" if eff else ""
