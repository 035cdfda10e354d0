"""Shared bits of the stage CLIs: one error path, the `<paper> <variant>` arguments and their config, and
the checks a run directory must pass before a stage reads or writes it.

Every stage's `main(argv=None)` is wrapped by `friendly_errors`: a user's mistake (a
`common.errors.UserError`, a registry's "unknown ..." KeyError, an OS error naming a file) ends in one
line on stderr and exit status 2, Ctrl-C in one line and status 130, and `--debug` shows the traceback
instead. Stages build their parser with `StageParser` (one-line usage errors, the `--debug` flag).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import re
import sys
from pathlib import Path

import papers
from common.config import ConfigError, load_params, parse_set, resolve
from common.errors import UserError
from common.io import read_json

ROOT = Path(__file__).resolve().parent.parent
PAPERS_DIR = ROOT / "papers"
EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130
INTERRUPTED = "interrupted; re-run the same command to resume"


# ---- the one error path ------------------------------------------------------------------------------
def user_message(e: BaseException) -> str | None:
    """The one-line message of an exception a user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(e, UserError):
        msg = str(e)
    elif isinstance(e, KeyError) and e.args and str(e.args[0]).startswith("unknown "):
        msg = str(e.args[0])  # registries (models, mixers, samplers, objectives) say "unknown <kind> '<name>'"
    elif isinstance(e, OSError) and e.filename and e.strerror:
        msg = f"'{e.filename}': {e.strerror}"  # a path that cannot be read or written (permissions, disk)
    else:
        return None
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def friendly_errors(main):
    """Run a stage's `main(argv)`: a user's mistake -> `error: <one line>` on stderr and exit 2; Ctrl-C ->
    one line and exit 130; `--debug` among the arguments re-raises instead (full traceback)."""

    @functools.wraps(main)
    def wrapper(argv=None, *a, **kw):
        debug = "--debug" in (sys.argv[1:] if argv is None else list(argv))
        try:
            return main(argv, *a, **kw)
        except Exception as e:
            if debug:
                raise
            if _interrupted(e):  # Ctrl-C inside a library's cleanup (e.g. torch.save) comes back as its error
                _exit_interrupted()
            msg = user_message(e)
            if msg is None:
                raise
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            if debug:
                raise
            _exit_interrupted()

    return wrapper


def _interrupted(e: BaseException) -> bool:
    """Whether `e` was raised while handling a KeyboardInterrupt (its chain of causes holds one)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _exit_interrupted():
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


class StageParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (like every other error) and that knows `--debug`."""

    def __init__(self, stage: str, description: str | None = None, **kw):
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(prog=f"python -m pipelines.{stage}", description=description, **kw)
        self.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see --help)\n")


# ---- <paper> <variant> and its config -------------------------------------------------------------------
def known_papers() -> list[str]:
    return papers.names()


def paper_params(paper: str, params_path: str | None = None) -> dict:
    """A paper's params (its own file, or `params_path`); imports every paper module first, since any paper
    may register models (e.g. DiPoM-*) that another paper's params name."""
    papers.load_all()
    if params_path:
        return load_params(params_path)
    if paper not in known_papers():
        raise ConfigError(f"unknown paper '{paper}' (known: {', '.join(known_papers())})")
    return load_params(PAPERS_DIR / paper / "params.yaml")


def add_run_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments that pick a run's config: `<paper> <variant> [--seed] [--params] [--set k=v ...]`."""
    ap.add_argument("paper")
    ap.add_argument("variant")
    ap.add_argument("--seed", type=int, default=None, help="sets train.seed and sample.seed")
    ap.add_argument("--params", default=None, help="params file (default papers/<paper>/params.yaml)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key (value read as YAML), e.g. train.steps=200; repeatable")
    return ap


def config_from_args(args):
    """The validated RunConfig of `args` (see `add_run_args`): names, values, sampler and model are all
    checked here, before a stage reads or writes anything."""
    from common.diffusion import check_sampler

    sets = parse_set(args.sets)
    if args.seed is not None:
        for section in ("train", "sample"):
            given = (sets.get(section) or {}).get("seed", args.seed)
            if given != args.seed:
                raise ConfigError(f"--seed {args.seed} conflicts with --set {section}.seed={given}; give one of them")
            sets.setdefault(section, {})["seed"] = args.seed
    cfg = resolve(paper_params(args.paper, args.params), args.paper, args.variant, sets)
    try:
        check_sampler(cfg.diffusion.objective, cfg.sample.sampler)  # fail before training, not after it
    except KeyError as e:
        raise ConfigError(f"params key 'sample.sampler': {e.args[0]}") from None
    check_model(cfg)
    return cfg


def default_run_dir(cfg) -> Path:
    return Path(f"runs/{cfg.paper}/{cfg.variant}/s{cfg.train.seed}")


def check_model(cfg) -> None:
    """Build the model of `cfg` on the meta device (no memory, no init time, no random draws): a bad
    `model.name`, `model.mixer`, `model.overrides` or `model.mixer_kwargs` fails here, named."""
    import torch

    from common import data as data_mod
    from common.train import build_model

    settings = {"model.name": cfg.model.name, "model.mixer": cfg.model.mixer,
                **{f"model.overrides.{k}": v for k, v in cfg.model.overrides.items()},
                **{f"model.mixer_kwargs.{k}": v for k, v in cfg.model.mixer_kwargs.items()}}
    check_types(cfg.model.overrides, "params key", "model.overrides.")
    info = data_mod.info(cfg.data.name)
    with explain_build_errors({k: v for k, v in settings.items() if v not in ("", None)}, "params key"), \
            torch.device("meta"):
        build_model(cfg, info)


def check_types(kwargs: dict, label: str, prefix: str = "") -> None:
    """A DiT constructor argument whose default is a number or a bool must get one of that type (a string
    there would fail deep inside the constructor, or not at all)."""
    import inspect

    from common.models import DiT

    params = inspect.signature(DiT).parameters
    for k, v in kwargs.items():
        tp = type(params[k].default) if k in params else None
        if tp is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif tp in (int, bool):
            ok = isinstance(v, tp) and (tp is bool or not isinstance(v, bool))
        else:
            continue
        if not ok:
            raise ConfigError(f"{label} '{prefix}{k}' must be {tp.__name__}, got {type(v).__name__} ({v!r})")


@contextlib.contextmanager
def explain_build_errors(settings: dict, label: str):
    """A TypeError, ValueError or KeyError raised while building a model from `settings` ({key: value})
    becomes a ConfigError naming the setting its message mentions (all of them if it mentions none)."""
    settings = flatten(settings)
    try:
        yield
    except UserError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        if msg.startswith("unknown model"):
            named = [k for k in settings if k.endswith("name")]
        elif msg.startswith("unknown mixer"):
            named = [k for k in settings if k.endswith("mixer")]
        else:
            named = [k for k in settings if re.search(rf"\b{re.escape(k.rsplit('.', 1)[-1])}\b", msg)]
        if not named and (isinstance(e, KeyError) or not settings):
            raise  # an unknown name given elsewhere (e.g. describe's model argument) says so itself
        shown = ", ".join(f"'{k}' = {settings[k]!r}" for k in (named or settings))
        raise ConfigError(f"{label} {shown}: {msg}") from e


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1} (an empty mapping stays as it is)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---- run directories ---------------------------------------------------------------------------------------
RUN_IDENTITY = ("paper", "variant", "model.name", "diffusion.objective")
RUN_JSON_FIX = "delete it and re-run the train command (the checkpoint holds the config)"


def run_identity(cfg: dict) -> dict:
    """{paper, variant, model.name, diffusion.objective} of a config dict (run.json, a checkpoint's config)."""
    out = {}
    for key in RUN_IDENTITY:
        node = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out


def _describe(ident: dict) -> str:
    """`paper/variant (model, objective)`, leaving out what `ident` does not set."""
    extra = ", ".join(str(ident[k]) for k in ("model.name", "diffusion.objective") if ident.get(k) is not None)
    return f"{ident.get('paper')}/{ident.get('variant')}" + (f" ({extra})" if extra else "")


def check_identity(have: dict, want: dict, source) -> None:
    """Refuse a run whose `have` identity (from `source`) differs from the `want` one on a key `want` sets."""
    have = run_identity(have)
    diff = [k for k, v in want.items() if v is not None and have.get(k) != v]
    if diff:
        raise ConfigError(f"'{source}' holds {_describe(have)}, not {_describe(want)} as asked "
                          f"(differs in {', '.join(diff)}). Fix: ask for the variant it holds or use another run")


def check_run_json(run: Path, want: dict, required: bool = False) -> dict | None:
    """Read `<run>/run.json` and check it against `want` ({identity key: value}); None if it is absent and
    not `required`."""
    path = Path(run) / "run.json"
    if not path.exists():
        if required:
            raise ConfigError(f"'{path}' not found: cannot check which variant '{run}' holds")
        return None
    got = read_json(path, fix=RUN_JSON_FIX)
    check_identity(got, want, path)
    return got

