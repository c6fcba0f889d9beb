"""The code blocks of README.md and docs/*.md, and how tests/test_docs.py runs them (DEVELOPERS.md, "Docs that run").

A fenced block is run unless an HTML comment right above its fence says otherwise (several such lines may stack):

    <!-- not-run: needs a GPU -->                       not run; the reason is reported (pytest -rs)
    <!-- run: slow -->                                  run, as a test marked slow
    <!-- run: sub num_heads=12 => num_heads=4 -->       replace text in this block before running it
    <!-- run: files results/a.json results/b.json -->   these files must exist after the block
    <!-- run: save-as ft.yaml -->                       write the block to this file instead of running it

Languages: ``python`` blocks run in one namespace per document; ``bash`` blocks run their ``crate-mae ...`` (and
``python -m crate_mae ...``) lines in process, ``python benchmarks/...`` lines as subprocesses, ``VAR=value``
lines and one-line ``for ...; do ...; done`` loops, with ``$VAR`` expanded; ``yaml`` needs ``save-as`` or
``not-run``; ``text`` is not code (directory trees, printed output). Blocks of one document run in order, in one
working directory. A not-run block is still checked: its ``crate-mae`` / ``torchrun -m crate_mae`` lines must parse
with the real argument parser, its Python must compile, import, and name only attributes that exist.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^\s*<!--\s*(run|not-run)\s*:(.*?)-->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
CODE_LANGS = ("python", "bash", "yaml")


@dataclass
class Block:
    doc: str  # path relative to the repository
    line: int  # line of the opening fence (1-based)
    lang: str
    code: str
    mode: str  # "run", "not-run" or "text"
    reason: str = ""  # why not run
    slow: bool = False
    subs: list[tuple[str, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    save_as: str | None = None

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def parse(path: Path) -> list[Block]:
    """Every fenced block of ``path`` with its markers; a ValueError names a block the test cannot classify."""
    lines = path.read_text().splitlines()
    doc = str(path.relative_to(REPO))
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.groups()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        code = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : j])
        block = Block(doc, i + 1, lang, code, "run")
        k = i - 1
        while k >= 0 and MARKER.match(lines[k]):
            kind, text = MARKER.match(lines[k]).groups()
            apply_marker(block, kind, text.strip())
            k -= 1
        if lang == "text":
            block.mode = "text"
        elif lang not in CODE_LANGS:
            raise ValueError(f"{block.name}: give the block a language (python, bash, yaml or text), got {lang!r}")
        elif lang == "yaml" and block.mode == "run" and block.save_as is None:
            raise ValueError(f"{block.name}: a yaml block needs <!-- run: save-as FILE --> or <!-- not-run: ... -->")
        out.append(block)
        i = j + 1
    return out


def apply_marker(block: Block, kind: str, text: str) -> None:
    if kind == "not-run":
        if not text:
            raise ValueError(f"{block.name}: <!-- not-run: ... --> needs a reason")
        block.mode, block.reason = "not-run", text
        return
    for item in filter(None, (s.strip() for s in text.split(";"))):
        word, _, rest = item.partition(" ")
        if word == "slow":
            block.slow = True
        elif word == "sub" and "=>" in rest:
            old, new = (s.strip() for s in rest.split("=>", 1))
            block.subs.append((old, new))
        elif word == "files":
            block.files += rest.split()
        elif word == "save-as":
            block.save_as = rest.strip()
        else:
            raise ValueError(f"{block.name}: unknown run option {item!r} (slow, sub A => B, files ..., save-as F)")


# -- bash: the few shell forms the docs use --------------------------------------------------------------------------
def shell_commands(code: str, where: str, lenient: bool = False) -> list[list[str]]:
    """The block's command lines as argument lists, after joining ``\\`` continuations and dropping comments; a
    line is split at ``;``. Pipes, ``&&`` and background jobs are refused (mark such a block not-run), or with
    ``lenient`` (checking a block that is not run) split there like at ``;``."""
    joined = re.sub(r"\\\n", " ", code)
    out: list[list[str]] = []
    for raw in joined.splitlines():
        lex = shlex.shlex(raw, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        try:
            tokens = list(lex)
        except ValueError as e:
            raise ValueError(f"{where}: cannot split {raw!r}: {e}") from None
        cmd: list[str] = []
        for t in tokens:
            if t == ";" or lenient and set(t) <= set("&|"):
                if cmd:
                    out.append(cmd)
                cmd = []
            elif set(t) <= set("&|"):
                raise ValueError(
                    f"{where}: {raw.strip()!r} uses {t!r}; the docs test runs plain command lines "
                    "(mark the block not-run with a reason)"
                )
            else:
                cmd.append(t)
        if cmd:
            out.append(cmd)
    return out


ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``VAR=value`` words (an environment prefix or a plain assignment) and the rest."""
    env = {}
    while argv and ASSIGN.match(argv[0]):
        key, _, value = argv[0].partition("=")
        env[key] = value
        argv = argv[1:]
    return env, argv


def expand(word: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: variables.get(m.group(1), m.group(0)), word)


def cli_argv(argv: list[str]) -> list[str] | None:
    """The ``crate-mae`` arguments of a command line that runs our CLI (``crate-mae``, ``python -m crate_mae``,
    ``python -m crate_mae.cli``, ``torchrun ... -m crate_mae``), else None."""
    if not argv:
        return None
    if Path(argv[0]).name == "crate-mae":
        return argv[1:]
    if "-m" in argv and (Path(argv[0]).name.startswith("python") or argv[0] == "torchrun"):
        at = argv.index("-m")
        if at + 1 < len(argv) and argv[at + 1] in ("crate_mae", "crate_mae.cli"):
            return argv[at + 2 :]
    return None


def data_check_argv(argv: list[str]) -> list[str] | None:
    """``python -m crate_mae.data ...`` (the dataset check) arguments, else None."""
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "crate_mae.data"]:
        return argv[3:]
    return None


def module_of(argv: list[str]) -> str | None:
    if "-m" in argv and (Path(argv[0]).name.startswith("python") or argv[0] == "torchrun"):
        at = argv.index("-m")
        return argv[at + 1] if at + 1 < len(argv) else None
    return None


# -- checks of blocks that are not run ------------------------------------------------------------------------------
def check_cli_parses(args: list[str], where: str) -> None:
    """Parse a ``crate-mae`` command line with the real parser, as ``crate_mae.cli.main`` does, without running."""
    import contextlib
    import io

    from crate_mae.cli import build_parser

    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            ns, extra = parser.parse_known_args(args)
    except SystemExit as e:
        if e.code:
            raise AssertionError(
                f"{where}: `crate-mae {' '.join(args)}` does not parse: {err.getvalue().strip()}"
            ) from None
        return  # --help
    if extra and not (
        isinstance(getattr(ns, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra)
    ):
        raise AssertionError(f"{where}: `crate-mae {' '.join(args)}`: unrecognized arguments {extra}")
    if not getattr(ns, "func", None):
        raise AssertionError(f"{where}: `crate-mae {' '.join(args)}` names no command")


def check_shell(code: str, where: str) -> None:
    for argv in shell_commands(code, where, lenient=True):
        _, argv = split_env(argv)
        args = cli_argv(argv)
        if args is not None:
            check_cli_parses(args, where)
            continue
        module = module_of(argv)
        if module is not None and module.split(".")[0] == "crate_mae":
            spec = importlib.util.find_spec(module)
            main = spec is not None and (
                spec.submodule_search_locations is None or importlib.util.find_spec(module + ".__main__") is not None
            )
            assert main, f"{where}: `python -m {module}` cannot run: no such module or no {module}.__main__"
        for word in argv:
            if word.startswith("benchmarks/") and word.endswith(".py"):
                assert (REPO / word).is_file(), f"{where}: {word} does not exist"


def check_python(code: str, where: str) -> None:
    """Compiles; its imports import; every ``module.attr.attr`` it names exists."""
    tree = ast.parse(code, where)
    namespace: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            try:
                exec(compile(ast.Module(body=[node], type_ignores=[]), where, "exec"), namespace)
            except ImportError as e:
                raise AssertionError(f"{where}: line {node.lineno}: {e}") from None
    modules = {k: v for k, v in namespace.items() if isinstance(v, type(importlib))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            chain, base = [], node
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                obj, dotted = modules[base.id], base.id
                for attr in reversed(chain):
                    if not isinstance(obj, type(importlib)):
                        break  # attributes of classes / functions are the code's business, not an import's
                    dotted += "." + attr
                    assert hasattr(obj, attr), (
                        f"{where}: line {node.lineno}: {dotted} does not exist after the block's imports"
                    )
                    obj = getattr(obj, attr)
