"""Loading throughput: WebDataset shards (crate-mae make-shards) vs the ImageFolder they were written from.

    python benchmarks/shards_vs_folder.py                    # cifar10-dev/train @ 32 px, flowers12/train @ 224 px
    python benchmarks/shards_vs_folder.py --set imagenet=/data/imagenet/train@224 --workers 0 8 --repeats 2
    python benchmarks/shards_vs_folder.py --index-costs     # only the costs of indexed access (seconds)

Each set is written as shards once (timed), then both readers load it the way pretraining does: EpochSampler order
(a fresh permutation per epoch, so random access across shards), SeededSamples with MAE's pretraining transform,
batches of 64, through a DataLoader with N workers (0 = in this process, one intra-op thread). After one warm-up
epoch (page cache, worker start), the readers are timed in alternation (folder, shards, shards, folder, ...) so that
machine noise hits both alike; the table gives the median images/s over the timed epochs. The two readers yield
identical tensors (checked on the first batch).

``--index-costs`` prints, for the first shard of each set, what indexed access costs a process: the memory of
wids' index per sample (Python allocations while opening the shard, by ``tracemalloc``), the time to open and index
the shard (what an evicted shard costs when touched again) and the time to look one sample up in the open shard
(without decoding it); medians of 5.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from crate_mae.data import build_dataset, make_shards, pretrain_transform
from crate_mae.engine.sampling import EpochSampler, SeededSamples

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_SETS = [f"cifar10-dev={SHARED / 'cifar10-dev' / 'train'}@32", f"flowers12={SHARED / 'flowers12' / 'train'}@224"]


def loader(path: Path, img_size: int, workers: int, batch: int) -> tuple[DataLoader, EpochSampler]:
    ds = SeededSamples(build_dataset(path, transform=pretrain_transform(img_size)), num_patches=4, seed=0)
    sampler = EpochSampler(len(ds), batch_size=batch, seed=0)
    return DataLoader(ds, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0), sampler


def epoch(dl: DataLoader, sampler: EpochSampler, e: int) -> tuple[float, int, torch.Tensor]:
    sampler.set_epoch(e)
    t0, n, first = time.perf_counter(), 0, None
    for x, _ in dl:
        first = x if first is None else first
        n += x.shape[0]
    return time.perf_counter() - t0, n, first


def index_costs(manifest: Path) -> str:
    """Index bytes per sample, open + index time and lookup time of the first shard in ``manifest``."""
    from wids.wids import IndexedTarSamples

    desc = json.loads(manifest.read_text())
    first = desc["shardlist"][0]
    path, n = str(manifest.parent / first["url"]), int(first["nsamples"])
    sizes, opens = [], []
    for _ in range(5):
        tracemalloc.start()
        t0 = time.perf_counter()
        shard = IndexedTarSamples(path=path)
        opens.append(time.perf_counter() - t0)
        sizes.append(tracemalloc.get_traced_memory()[0])
        tracemalloc.stop()
        if _ < 4:
            shard.close()
    rng = random.Random(0)
    picks = [rng.randrange(n) for _ in range(2000)]
    t0 = time.perf_counter()
    for k in picks:
        shard[k]
    lookup = (time.perf_counter() - t0) / len(picks)
    shard.close()
    return (
        f"index {statistics.median(sizes) / n:.0f} bytes per sample, open + index {statistics.median(opens):.2f} s "
        f"for {n} samples, lookup {lookup * 1e6:.1f} us per sample (no decoding)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="NAME=PATH@SIZE",
        help="image folder to compare (repeatable); default: the two development sets in ../shared",
    )
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per reader and worker count")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=5000)
    p.add_argument("--out", default=None, help="where to write the shards (default: a temporary folder)")
    p.add_argument("--index-costs", action="store_true", help="only the costs of indexed access, no loading epochs")
    args = p.parse_args()
    torch.set_num_threads(1)  # what DataLoader workers use; fair to the in-process case on a small machine
    rows = []
    with tempfile.TemporaryDirectory(prefix="shards-bench-") as tmp:
        for spec in args.set or DEFAULT_SETS:
            name, rest = spec.split("=", 1)
            src, size = rest.rsplit("@", 1)
            out = Path(args.out or tmp) / name
            t0 = time.perf_counter()
            desc = make_shards(src, out, shard_size=args.shard_size, progress=False)
            n_img = desc["crate_mae"]["num_samples"]
            mib = sum(s["filesize"] for s in desc["shardlist"]) / 2**20
            print(
                f"{name}: make-shards {n_img} images -> {len(desc['shardlist'])} shard(s), {mib:.1f} MiB in "
                f"{time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            if args.index_costs:
                print(f"  {index_costs(out / 'shards.json')}", flush=True)
                continue
            for w in args.workers:
                loaders = {
                    "folder": loader(Path(src), int(size), w, args.batch),
                    "shards": loader(out, int(size), w, args.batch),
                }
                firsts = {k: epoch(*v, 0)[2] for k, v in loaders.items()}  # warm-up
                assert torch.equal(firsts["folder"], firsts["shards"]), "readers disagree"
                rates: dict[str, list[float]] = {"folder": [], "shards": []}
                for r in range(args.repeats):
                    for k in ("folder", "shards") if r % 2 == 0 else ("shards", "folder"):
                        dt, n, _ = epoch(*loaders[k], r + 1)
                        rates[k].append(n / dt)
                med = {k: statistics.median(v) for k, v in rates.items()}
                rows.append((name, size, n_img, w, med["folder"], med["shards"]))
                print(
                    f"  workers={w}: folder {med['folder']:.0f} img/s, shards {med['shards']:.0f} img/s "
                    f"(x{med['shards'] / med['folder']:.2f}); "
                    f"per epoch folder {[round(v) for v in rates['folder']]}, "
                    f"shards {[round(v) for v in rates['shards']]}",
                    flush=True,
                )
                del loaders
    if not rows:
        return
    print("\n| data set | px | images | workers | ImageFolder img/s | shards img/s | shards / folder |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, size, n, w, f, s in rows:
        print(f"| {name} | {size} | {n:,} | {w} | {f:.0f} | {s:.0f} | {s / f:.2f}x |")


if __name__ == "__main__":
    main()
