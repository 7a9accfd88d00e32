"""Start-up of ``napari-dgc segment`` on a small cube in a fresh process, next to ``import torch``.

Issue 15 item 11: a 256 x 192 cube should segment within ~2x the time a fresh Python takes to
import torch. Each command runs ``--repeats`` times in a fresh process, alternating, and the
medians and their ratio are printed. ``--importtime`` also prints the slowest imports of one
segment run (``python -X importtime``), to see what dominates.

    python benchmarks/bench_startup.py [--repeats 3] [--importtime]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_inputs(root: Path) -> tuple[Path, Path]:
    """A tiny run folder with one checkpoint and a 256 x 192 x 10 cube."""
    import numpy as np
    import torch

    from napari_dgc.config import ModelConfig, TrainConfig
    from napari_dgc.model.network import DGCModel
    from napari_dgc.run_folder import RunDirectory

    config = TrainConfig(model=ModelConfig(n_clusters=4, embed_dim=8, meanshift_iters=1))
    run = RunDirectory.create(root / "run", config, 10, None, [], seed=0)
    model = DGCModel(10, config.model)
    run.save_checkpoint(10, model.state_dict(), torch.optim.AdamW(model.parameters()).state_dict(), {}, {})
    cube = root / "small.npy"
    np.save(cube, np.random.default_rng(0).random((256, 192, 10), dtype=np.float32))
    return run.path, cube


def timed(argv: list[str]) -> float:
    """Wall time of one fresh process running ``argv`` (must exit 0)."""
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--importtime", action="store_true", help="also list the slowest imports")
    args = parser.parse_args()
    cli = Path(sys.executable).with_name("napari-dgc")
    with tempfile.TemporaryDirectory() as folder:
        run, cube = make_inputs(Path(folder))
        segment = [str(cli), "segment", str(run), str(cube), "--out", f"{folder}/out", "--overwrite"]
        torch_only = [sys.executable, "-c", "import torch"]
        timed(segment)  # compiles (or loads) the numba kernels' disk cache once
        torch_times, segment_times = [], []
        for _ in range(args.repeats):
            torch_times.append(timed(torch_only))
            segment_times.append(timed(segment))
        torch_median, segment_median = statistics.median(torch_times), statistics.median(segment_times)
        print(f"import torch:        median {torch_median:.2f} s  {[round(t, 2) for t in torch_times]}")
        print(f"napari-dgc segment:  median {segment_median:.2f} s  {[round(t, 2) for t in segment_times]}")
        print(f"ratio segment / import torch: {segment_median / torch_median:.2f} (target <= ~2)")
        if args.importtime:
            result = subprocess.run(
                [sys.executable, "-X", "importtime", str(cli), *segment[1:]], capture_output=True, text=True
            )
            rows = []
            for line in result.stderr.splitlines():
                if line.startswith("import time:") and "|" in line:
                    _, cumulative, name = line.split("|")
                    if not cumulative.strip().isdigit():
                        continue  # the header line
                    if len(name) - len(name.lstrip()) <= 3:  # imported by us or at top level
                        rows.append((int(cumulative), name.strip()))
            print("slowest top-level imports (cumulative):")
            for cumulative, name in sorted(rows, reverse=True)[:12]:
                print(f"  {cumulative / 1e6:6.2f} s  {name}")


if __name__ == "__main__":
    main()
