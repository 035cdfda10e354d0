"""Where code lives (DESIGN.md): papers are found by the registry; `common/` imports nothing from
`papers/` and branches on no paper's name (outside the modules that implement a paper's layer: the PoM
mixer and its kernels); `pipelines/` holds no paper name and no model math. The checks read the source
with `ast`, so docstrings and comments (citations, examples) are free to name papers."""
import ast
import re
from pathlib import Path

import pytest

import papers

ROOT = Path(__file__).resolve().parents[1]
PAPER_LAYERS = {"common/mixers/pom.py", "common/kernels/pom_ref.py", "common/kernels/pom_triton.py"}
NAMES = papers.names()


def sources(folder: str, skip=()):
    files = sorted(p for p in (ROOT / folder).rglob("*.py") if p.relative_to(ROOT).as_posix() not in skip)
    assert files
    return [(p.relative_to(ROOT).as_posix(), ast.parse(p.read_text())) for p in files]


def docstrings(tree) -> set[int]:
    """ids of the Constant nodes that are docstrings (module, class, function)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def strings(tree):
    """Every string constant outside docstrings, with its line."""
    skip = docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def names_a_paper(text: str) -> str | None:
    return next((n for n in NAMES if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w])", text)), None)


def test_papers_found_by_the_registry():
    found = sorted(d.name for d in (ROOT / "papers").iterdir() if (d / "params.yaml").is_file())
    assert NAMES == found and len(NAMES) >= 2
    assert set(papers.load_all()) == set(NAMES)
    with pytest.raises(KeyError, match="unknown paper 'nope'"):
        papers.load("nope")


def test_common_does_not_import_papers():
    bad = []
    for path, tree in sources("common", skip=PAPER_LAYERS):
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{path}:{node.lineno} imports {m}" for m in mods if m.split(".")[0] == "papers"]
        bad += [f"{path}:{line} names module {s!r}" for line, s in strings(tree) if s.startswith("papers.")]
    assert bad == []


def test_common_branches_on_no_paper_name():
    bad = []
    for path, tree in sources("common", skip=PAPER_LAYERS):
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
            elif isinstance(node, ast.match_case):
                operands = [node.pattern]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("startswith", "endswith"):
                operands = node.args
            else:
                continue
            for op in operands:
                for c in ast.walk(op):
                    if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.lower() in NAMES:
                        bad.append(f"{path}:{node.lineno} branches on {c.value!r}")
    assert bad == []


def test_pipelines_name_no_paper():
    bad = [f"{path}:{line} {s!r}" for path, tree in sources("pipelines") for line, s in strings(tree)
           if names_a_paper(s)]
    assert bad == []


MODEL_MATH_IMPORTS = ("torch.nn", "torch.optim", "torch.autograd", "einops", "common.nn", "common.mixers",
                      "common.kernels", "common.models.dit")
MODEL_MATH_CALLS = {"backward", "randn", "rand", "randint", "randn_like", "matmul", "einsum", "softmax",
                    "scaled_dot_product_attention", "training_losses", "step_frame"}


def test_pipelines_hold_no_model_math():
    bad = []
    for path, tree in sources("pipelines"):
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path}:{node.lineno} imports {m}" for m in mods
                    if any(m == f or m.startswith(f + ".") for f in MODEL_MATH_IMPORTS)]
            if isinstance(node, ast.Attribute) and node.attr in MODEL_MATH_CALLS:
                bad.append(f"{path}:{node.lineno} uses .{node.attr}")
    assert bad == []


def test_the_checks_catch_what_they_look_for():
    """The detectors above on small pieces of code that break the rules."""
    def compare_hits(src):
        tree = ast.parse(src)
        return [c.value for n in ast.walk(tree) if isinstance(n, ast.Compare)
                for op in [n.left, *n.comparators] for c in ast.walk(op)
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.lower() in NAMES]

    assert compare_hits(f"if paper == {NAMES[0]!r}: pass") == [NAMES[0]]
    assert compare_hits(f"ok = name not in ({NAMES[-1]!r}, 'x')") == [NAMES[-1]]
    assert names_a_paper(f"runs/{NAMES[0]}/s0") == NAMES[0] and names_a_paper("papers/<p>/bench.py") is None
    tree = ast.parse('"""Docstring naming papers/x."""\nX = "papers.x.bench"\n')
    assert [s for _, s in strings(tree)] == ["papers.x.bench"]
