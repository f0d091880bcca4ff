"""Pack what `bench/gpu_train.py` needs on a GPU machine without internet, in parts of a chosen size.

    python bench/offline_bundle.py --out bundle [--python 3.12] [--cuda 130] [--part-mib 48]

The GPU machine is assumed to have a CUDA build of torch and the common scientific stack (numpy, scipy,
matplotlib, pandas, pyarrow, jinja2, psutil, httpx, typer, rich, pyyaml, tokenizers, huggingface_hub,
safetensors, accelerate, xxhash, cloudpickle, markdown-it-py, absl-py). The bundle holds, at the versions installed
here, the rest of what llamalab imports (`NEEDED`): wheels for the GPU machine's Python (`--python`; the compiled
ones, and those made for one Python version, are fetched for it), bitsandbytes with only its library for the named
CUDA version (the full wheel carries one per version: 125 MB unpacked), and the embedded model's tokenizer as a
folder (3 MiB; the bench's models are random, so the 94 MiB GGUF stays behind). It is one tar file cut into
`bundle.tar.partNN` files of at most --part-mib MiB each, plus `unpack.sh` (19 wheels and the tokenizer: 28 MiB,
one part, which fits one transfer with the project's files).

On the GPU machine, with every part and unpack.sh in one folder, and the project's own files as its working copy:

    sh unpack.sh SITE            # joins the parts, installs the wheels into SITE, the tokenizer into SITE/tokenizer
    PYTHONPATH=SITE:src python3 bench/gpu_train.py --tokenizer SITE/tokenizer --out results.json
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
# pydantic, gguf, ... ; transformers and peft at the versions this project pins)
NEEDED = ["transformers", "peft", "trl", "datasets", "dill", "multiprocess", "gguf", "pydantic", "pydantic-core",
          "annotated-types", "typing-inspection", "bibtexparser", "pylatexenc", "rouge-score", "nltk", "submitit",
          "bitsandbytes",
          # the image's versions are not known to meet what pydantic and transformers ask for (pure Python or small)
          "typing-extensions", "regex"]

UNPACK = """#!/bin/sh
# Join the parts and install the wheels into the folder given (default: ./site), without an index or dependencies.
set -e
site="${1:-site}"
here="$(dirname "$0")"
cat "$here"/bundle.tar.part* > "$here/bundle.tar"
mkdir -p "$here/wheels" "$site"
tar xf "$here/bundle.tar" -C "$here/wheels"
python3 -m pip install --quiet --no-index --no-deps --target "$site" "$here"/wheels/*.whl
rm -rf "$site/tokenizer" && mv "$here/wheels/tokenizer" "$site/tokenizer"
echo "installed $(ls "$here"/wheels/*.whl | wc -l) wheels and the tokenizer into $site"
"""


def download(names: list[str], folder: Path, python: str) -> list[Path]:
    """Each package's wheel, at the version installed here, for Python `python` (built here where the index has only
    a source distribution, as for rouge-score: all of those are pure Python)."""
    pins = {name: f"{name}=={metadata.version(name)}" for name in names}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(folder), *pins.values()], check=True)
    for wheel in sorted(folder.glob("*.whl")):
        if not for_any_python(wheel.name):  # compiled, or made for this Python only: fetch the target's
            wheel.unlink()
            subprocess.run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", python,
                            "--implementation", "cp", "--platform", "manylinux_2_17_x86_64", "--platform",
                            "manylinux2014_x86_64", "--dest", str(folder), pins[_package(wheel.name)]], check=True)
    return sorted(folder.glob("*.whl"))


def for_any_python(wheel: str) -> bool:
    """Whether a wheel file name's tags (PEP 427: name-version[-build]-python-abi-platform.whl) fit every Python 3."""
    python, abi = wheel.removesuffix(".whl").split("-")[-3:-1]
    return abi == "none" and set(python.split(".")) <= {"py3", "py2"}


def _package(wheel: str) -> str:
    name = wheel.split("-")[0].lower().replace("_", "-")
    return next(n for n in NEEDED if n.lower() == name)


def save_tokenizer(folder: Path) -> None:
    """The embedded model's tokenizer, as transformers saves it."""
    from llamalab.models import EMBEDDED_NAME, load_tokenizer, resolve_model

    load_tokenizer(resolve_model(EMBEDDED_NAME)).save_pretrained(folder)


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
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python version (its python3)")
    parser.add_argument("--cuda", default="130", help="the GPU machine's CUDA version, as bitsandbytes names it")
    parser.add_argument("--part-mib", type=int, default=48, help="largest part, MiB")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("bundle.tar.part*"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        wheels = download(NEEDED, Path(tmp) / "wheels", args.python)
        for wheel in wheels:
            if wheel.name.startswith("bitsandbytes-"):
                slim_bitsandbytes(wheel, args.cuda)
        bundle = Path(tmp) / "bundle.tar"
        with tarfile.open(bundle, "w") as tar:
            for wheel in wheels:
                tar.add(wheel, arcname=wheel.name)
            save_tokenizer(Path(tmp) / "tokenizer")
            tar.add(Path(tmp) / "tokenizer", arcname="tokenizer")
        data, size = bundle.read_bytes(), args.part_mib * 2**20
        parts = [data[k:k + size] for k in range(0, len(data), size)]
        for k, part in enumerate(parts):
            (args.out / f"bundle.tar.part{k:02d}").write_bytes(part)
    (args.out / "unpack.sh").write_text(UNPACK)
    print(f"{len(wheels)} wheels for Python {args.python} and the tokenizer, {len(data) / 2**20:,.1f} MiB in "
          f"{len(parts)} part(s) of at most {args.part_mib} MiB in {args.out}")
    for wheel in wheels:
        print(f"  {wheel.name}")


if __name__ == "__main__":
    main()
