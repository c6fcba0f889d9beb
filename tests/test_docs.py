"""Every code block of README.md and docs/*.md runs as written, on tiny data and short runs, or says why not.

How a block is run or skipped: tests/docs_blocks.py (the markers) and DEVELOPERS.md ("Docs that run"). What this
file adds is the *world* the blocks run in:

- PATHS: the data paths the docs use, replaced (as text, in every block) by small generated stand-ins: CIFAR-10
  python batches, ImageFolder trees, a folder of photos of different sizes, the official CRATE-MAE fixture;
- SIZES: words appended to each ``crate-mae`` command so that it runs in seconds (a few optimizer steps, small
  batches, no DataLoader workers). Later words win (argparse and ``section.key=value`` both take the last), so a
  command's own values are overridden, never edited.

Each document gets one working directory (with ``configs`` and ``benchmarks`` linked in, as in a checkout) and one
Python namespace; its blocks run in order, and a block first runs the blocks above it that have not run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from docs_blocks import (
    REPO,
    Block,
    check_python,
    check_shell,
    cli_argv,
    data_check_argv,
    documents,
    expand,
    parse,
    shell_commands,
    split_env,
)
from PIL import Image

FIXTURES = REPO / "tests" / "fixtures"
OFFICIAL = str(FIXTURES / "crate_mae_micro.official_state_dict.safetensors")
# doc path -> stand-in ({world} is the generated data folder; relative paths land in the document's folder)
PATHS = {
    "../shared/data/cifar10-dev": "{world}/cifar10-dev",
    "data/cifar10-dev": "{world}/cifar10-dev",
    "../shared/data/flowers12": "{world}/flowers12",
    "/data/cifar10": "{world}/cifar10",
    "/data/imagenet-shards": "imagenet-shards",
    "/data/imagenet": "{world}/imagenet",
    "~/Pictures": "{world}/Pictures",
    # the official CRATE-MAE-Base weights -> a small checkpoint written by the official code (4 heads, width 64)
    "crate_mae_base.pth num_heads=12": OFFICIAL + " num_heads=4",
    "crate_mae_base.pth": OFFICIAL,
    "tests/fixtures/": str(REPO / "tests" / "fixtures") + "/",
    "my_folder": "{world}/cifar10-dev",  # a labelled ImageFolder tree of the user's
}
TRAIN = [
    "run.max_steps=2",
    "optim.batch_size=4",
    "optim.accum_iter=1",
    "data.num_workers=0",
    "run.progress=false",
    "run.fit_to_minutes=null",
    "run.ckpt_every_steps=0",
]
SIZES = {
    "pretrain": TRAIN,
    "finetune": TRAIN + ["optim.epochs=1", "optim.warmup_epochs=0"],
    "demo": ["--quick"],
    "features": ["--workers", "0"],
    "linprobe": ["--workers", "0", "--epochs", "5"],
    "knn": ["--workers", "0"],
    "make-shards": ["--workers", "0"],
    "analyze": ["--num-images", "8"],
}
SCRIPT_TIMEOUT_S = 120  # a benchmark that runs longer belongs in a not-run block


# -- the world --------------------------------------------------------------------------------------------------------
def image(path: Path, size: tuple[int, int], label: int, seed: int) -> None:
    """A noisy image whose colour says its class, so probes have something to find."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, (size[1], size[0], 3)) + np.array([[[60 * label % 256, 120, 200 - 50 * label]]])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


def image_folder(root: Path, classes: int, per_split: dict[str, int], size: tuple[int, int]) -> None:
    for split, n in per_split.items():
        for c in range(classes):
            for i in range(n):
                image(root / split / f"class{c}" / f"{i:04d}.jpg", size, c, hash((split, c, i)) % 2**32)


def cifar_batches(root: Path, per_batch: int = 20) -> None:
    import pickle

    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [r % 10 for r in range(per_batch)]
        data = (rng.integers(0, 80, (per_batch, 3072)) + 17 * np.array(labels)[:, None]).astype(np.uint8)
        with open(base / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)


def photos(root: Path) -> None:
    """Photos of different sizes and formats, none square: scikit-image's embedded ones, as JPEG and PNG."""
    from crate_mae.data.demo import demo_photos

    root.mkdir(parents=True)
    for i, (name, pixels) in enumerate(demo_photos()[:6]):
        h, w = pixels.shape[:2]
        img = Image.fromarray(pixels).resize((w * (i + 2) // 4, h * (i + 3) // 5))
        img.save(root / f"{name}.{'png' if i % 3 == 2 else 'jpg'}")


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs-world")
    cifar_batches(root / "cifar10")
    image_folder(root / "cifar10-dev", 3, {"train": 8, "val": 4}, (32, 32))
    image_folder(root / "imagenet", 2, {"train": 6, "val": 3}, (56, 48))
    image_folder(root / "flowers12", 2, {"train": 4, "val": 3}, (80, 64))
    photos(root / "Pictures" / "holiday")
    return root


# -- running a document --------------------------------------------------------------------------------------------
class Session:
    """One document's working directory, Python namespace, shell variables and the outcome of each block."""

    def __init__(self, doc: str, blocks: list[Block], world: Path, folder: Path):
        self.doc, self.blocks, self.world, self.cwd = doc, blocks, world, folder
        for name in ("configs", "benchmarks"):
            (folder / name).symlink_to(REPO / name)
        self.namespace: dict[str, object] = {"__name__": "__docs__"}
        self.variables: dict[str, str] = {}
        self.outcome: dict[int, str | None] = {}  # block index -> None (passed) or the error

    def text(self, block: Block) -> str:
        code = block.code
        for old, new in block.subs:
            assert old in code, f"{block.name}: substitution {old!r} not found in the block"
            code = code.replace(old, new)
        # one pass, longest first: a replacement is never replaced again
        pattern = "|".join(re.escape(k) for k in sorted(PATHS, key=len, reverse=True))
        return re.sub(pattern, lambda m: PATHS[m.group(0)].format(world=self.world), code)

    def run_until(self, index: int) -> None:
        for i in range(index + 1):
            block = self.blocks[i]
            if i in self.outcome or block.mode != "run":
                continue
            try:
                with working_directory(self.cwd):
                    self.run(block)
                self.outcome[i] = None
            except BaseException as e:  # noqa: BLE001  (a SystemExit from argparse included)
                self.outcome[i] = f"{block.name}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
            if i < index and self.outcome[i] is not None:
                raise AssertionError(
                    f"an earlier block of {self.doc} failed, so this one cannot run:\n{self.outcome[i]}"
                )
        if self.outcome.get(index):
            raise AssertionError(self.outcome[index])

    def run(self, block: Block) -> None:
        code = self.text(block)
        if block.save_as:
            Path(block.save_as).parent.mkdir(parents=True, exist_ok=True)
            Path(block.save_as).write_text(code + "\n")
        elif block.lang == "python":
            exec(compile(code, block.name, "exec"), self.namespace)
        else:
            self.run_shell(code, block.name)
        missing = [f for f in block.files if not Path(f).exists()]
        assert not missing, f"{block.name}: the block should have written {missing}"

    def run_shell(self, code: str, where: str) -> None:
        commands = shell_commands(code, where)
        i = 0
        while i < len(commands):
            argv = commands[i]
            if argv[0] == "for":  # for VAR in WORDS; do CMD; ...; done
                end = next(j for j in range(i, len(commands)) if commands[j] == ["done"])
                var, words = argv[1], [expand(w, self.variables) for w in argv[3:]]
                body = [commands[i + 1][1:], *commands[i + 2 : end]]
                for w in words:
                    self.variables[var] = w
                    for cmd in body:
                        self.run_command(cmd, where)
                i = end + 1
                continue
            self.run_command(argv, where)
            i += 1

    def run_command(self, argv: list[str], where: str) -> None:
        env, argv = split_env([expand(w, self.variables) for w in argv])
        argv = [
            g
            for w in argv
            for g in (sorted(glob.glob(os.path.expanduser(w))) if set("*?[") & set(w) else [])
            or [os.path.expanduser(w)]
        ]
        if not argv:  # VAR=value
            self.variables.update(env)
            return
        args = cli_argv(argv)
        if args is not None:
            from crate_mae.cli import main

            code = main(args + SIZES.get(args[0] if args else "", []))
            assert code == 0, f"{where}: `crate-mae {' '.join(args)}` exited with {code}"
            return
        args = data_check_argv(argv)
        if args is not None:
            from crate_mae.data.__main__ import main as check

            assert check(args) == 0, f"{where}: `python -m crate_mae.data {' '.join(args)}` failed"
            return
        if Path(argv[0]).name.startswith("python") and len(argv) > 1 and argv[1].startswith("benchmarks/"):
            out = subprocess.run(
                [sys.executable, *argv[1:]],
                cwd=self.cwd,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=SCRIPT_TIMEOUT_S,
            )
            assert out.returncode == 0, f"{where}: `{' '.join(argv)}` failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}"
            print(out.stdout)
            return
        raise AssertionError(
            f"{where}: the docs test cannot run `{' '.join(argv)}`; mark the block "
            "<!-- not-run: REASON --> or run it another way (tests/docs_blocks.py)"
        )


def all_blocks() -> list[Block]:
    """Blocks of every document that parses (test_every_block_is_run_or_says_why_not names those that do not)."""
    out = []
    for doc in documents():
        try:
            out += parse(doc)
        except ValueError:
            pass
    return out


def params():
    for b in all_blocks():
        if b.mode == "text":
            continue
        yield pytest.param(b, id=b.name, marks=[pytest.mark.slow] if b.slow else [])


SESSIONS: dict[str, Session] = {}


@pytest.fixture
def session(request, world, tmp_path_factory):
    block: Block = request.node.callspec.params["block"]
    if block.doc not in SESSIONS:
        blocks = parse(REPO / block.doc)
        folder = tmp_path_factory.mktemp("docs-" + block.doc.replace("/", "-"))
        SESSIONS[block.doc] = Session(block.doc, blocks, world, folder)
    yield SESSIONS[block.doc]


@pytest.mark.parametrize("block", list(params()))
def test_doc_block(block: Block, session: Session):
    if block.mode == "not-run":
        code = session.text(block)
        (check_python if block.lang == "python" else check_shell)(code, block.name)
        pytest.skip(f"not run: {block.reason} (checked: it parses and names what exists)")
    index = next(i for i, b in enumerate(session.blocks) if b.line == block.line)
    session.run_until(index)


def test_every_block_is_run_or_says_why_not():
    """The classification itself: parse() refuses blocks without a language, yaml without save-as / not-run,
    unknown options, and not-run markers without a reason; every document has blocks."""
    for doc in documents():
        assert parse(doc), f"{doc} has no code blocks"


def test_the_mechanism_refuses_what_it_cannot_run(tmp_path, world):
    doc = tmp_path / "x.md"
    doc.write_text("```\nls\n```\n")
    with pytest.raises(ValueError, match="give the block a language"):
        parse_outside(doc)
    doc.write_text("<!-- not-run: -->\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        parse_outside(doc)
    (tmp_path / "s").mkdir()
    s = Session("x.md", [], world, tmp_path / "s")
    with pytest.raises(AssertionError, match="cannot run `ls -l`"):
        s.run_shell("ls -l", "x.md:1")
    with pytest.raises(ValueError, match="uses '&'"):
        s.run_shell("crate-mae models &", "x.md:1")
    with pytest.raises(AssertionError, match="does not parse"):
        check_shell("crate-mae check-data --no-such-flag", "x.md:1")
    with pytest.raises(AssertionError, match="no crate_mae.nope.__main__|cannot run"):
        check_shell("torchrun --nproc_per_node 8 -m crate_mae.nope finetune", "x.md:1")
    with pytest.raises(AssertionError, match="crate_mae.nothing does not exist"):
        check_python("import crate_mae\ncrate_mae.nothing(1)", "x.md:1")


def parse_outside(path: Path) -> list[Block]:
    """parse() for a file outside the repository (the test's own examples)."""
    import docs_blocks

    saved = docs_blocks.REPO
    docs_blocks.REPO = path.parent
    try:
        return parse(path)
    finally:
        docs_blocks.REPO = saved


def inventory() -> str:
    """Counts for the record: blocks run, not run (by reason), text."""
    blocks = all_blocks()
    lines = [
        f"{sum(b.mode == 'run' for b in blocks)} run, {sum(b.mode == 'not-run' for b in blocks)} not run, "
        f"{sum(b.mode == 'text' for b in blocks)} text (not code)"
    ]
    reasons: dict[str, list[str]] = {}
    for b in blocks:
        if b.mode == "not-run":
            reasons.setdefault(b.reason, []).append(b.name)
    lines += [f"  not run ({len(v)}): {k}: {', '.join(v)}" for k, v in sorted(reasons.items())]
    return "\n".join(lines)


@contextlib.contextmanager
def working_directory(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


if __name__ == "__main__":
    print(inventory())
