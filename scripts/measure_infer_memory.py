"""Peak memory of ``resfu-med infer`` on a full-size CT volume (512 x 512 x 300), to check that it stays bounded.

Writes a synthetic int16 CT volume (.nii.gz, slab by slab), trains a small ReSFU U-Net checkpoint for a couple of
iterations on the demo data (the weights do not matter for memory), then runs ``resfu-med infer`` on the volume in a
fresh subprocess and reports that process's peak resident set size (``resource.getrusage``, Linux kB), next to the
sizes of the volume as float32/float64 for reference. Results go in docs/reliability.md.

examples:
  python scripts/measure_infer_memory.py
  python scripts/measure_infer_memory.py --shape 512 512 300 --keep /tmp/mem
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

CHILD = """
import json, resource, sys, time
t = time.time()
from resfu_med.cli import main
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "import_rss_kb": base, "seconds": time.time() - t}))
"""


def write_ct(path: Path, shape: tuple[int, int, int]) -> None:
    """A body-like int16 phantom (HU): air, a soft-tissue ellipse, a brighter organ, noise; written without float64."""
    x, y = np.ogrid[: shape[0], : shape[1]]
    body = ((x - shape[0] / 2) / (0.42 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.35 * shape[1])) ** 2 < 1
    organ = ((x - 0.4 * shape[0]) / (0.12 * shape[0])) ** 2 + ((y - 0.45 * shape[1]) / (0.1 * shape[1])) ** 2 < 1
    data = np.full(shape, -1000, dtype=np.int16)
    rng = np.random.default_rng(0)
    for z in range(shape[2]):
        sl = np.where(body, 40, -1000).astype(np.int16)
        sl[organ] = 150 + (z % 50)
        sl += rng.integers(-20, 20, size=sl.shape, dtype=np.int16)
        data[:, :, z] = sl
    nib.save(nib.Nifti1Image(data, np.diag([0.75, 0.75, 2.5, 1.0])), str(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], metavar=("X", "Y", "Z"))
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--batch-size", type=int, default=8, help="infer --sw-batch-size")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="resfu-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    vol = work / "ct.nii.gz"
    if not vol.exists():
        t = time.time()
        write_ct(vol, tuple(args.shape))
        print(f"wrote {vol} ({vol.stat().st_size / 2**20:.0f} MiB gz) in {time.time() - t:.0f} s", file=sys.stderr)
    ckpt = work / "run" / "last.pt"
    if not ckpt.exists():
        subprocess.run([sys.executable, "-m", "resfu_med", "train", "--dataset", "demo", "--output",
                        str(work / "run"), "--max-iters", "2", "--no-eval", "--device", "cpu", "--no-progress",
                        "--overwrite"], check=True, env=env)
    out = work / "out"
    cmd = [sys.executable, "-c", CHILD, "infer", "-i", str(vol), "-o", str(out), "--checkpoint", str(ckpt),
           "--device", "cpu", "--overwrite", "--no-progress", "--sw-batch-size", str(args.batch_size)]
    res = subprocess.run(cmd, check=True, env=env, stdout=subprocess.PIPE, text=True)
    result = json.loads(res.stdout.strip().splitlines()[-1])
    n = int(np.prod(args.shape))
    result.update(shape=args.shape, float32_volume_mb=n * 4 / 2**20, float64_volume_mb=n * 8 / 2**20,
                  peak_rss_mb=result["peak_rss_kb"] / 1024, import_rss_mb=result["import_rss_kb"] / 1024)
    print(json.dumps(result, indent=2))
    return 0 if result["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
