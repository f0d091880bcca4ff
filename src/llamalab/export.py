"""Write a Hugging Face model folder as one GGUF file (f16 or quantized) with llama.cpp's own tools.

Two steps, both llama.cpp's, both run in a child process (so a crash or an abort inside them cannot take the caller
down, and their logs stay out of the console unless they fail):

1. Convert: `convert_hf_to_gguf.py`, llama.cpp's converter, from the llama.cpp source tree that llama-cpp-python's
   sdist vendors -- the same source the installed library was built from. Its wheel does not ship the script, so
   it is unpacked once into the cache (`python -m llamalab.export --install-converter`, or point
   LLAMALAB_GGUF_CONVERTER at a llama.cpp checkout). f16 comes straight out of it; a quantized type starts from an
   f32 file, because the folders hold float32 weights and quantizing them directly avoids rounding to f16 first.
2. Quantize: `llama_model_quantize`, the C function behind the `llama-quantize` tool, through llama-cpp-python's
   ctypes binding, with llama.cpp's default mixture for the type (e.g. q4_k_m keeps some tensors at q6_k).

k-quants (q4_k_m, q5_k_m, q6_k) need rows whose length is a multiple of 256: llama.cpp quantizes any other tensor
to a fallback type instead (q5_0, q5_1 or q8_0), so such a file is larger than its name suggests --
`gguf_tensor_types` says what a file really holds.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from llamalab.config import LlamalabError

# name -> (the converter's --outtype, the llama_ftype to quantize to; None: the converter's output is final)
_TYPES: dict[str, tuple[str, str | None]] = {
    "f16": ("f16", None),
    "q8_0": ("f32", "LLAMA_FTYPE_MOSTLY_Q8_0"),
    "q6_k": ("f32", "LLAMA_FTYPE_MOSTLY_Q6_K"),
    "q5_k_m": ("f32", "LLAMA_FTYPE_MOSTLY_Q5_K_M"),
    "q4_k_m": ("f32", "LLAMA_FTYPE_MOSTLY_Q4_K_M"),
    "q4_1": ("f32", "LLAMA_FTYPE_MOSTLY_Q4_1"),
    "q4_0": ("f32", "LLAMA_FTYPE_MOSTLY_Q4_0"),
}
GGUF_TYPES: tuple[str, ...] = tuple(_TYPES)

CONVERTER_ENV = "LLAMALAB_GGUF_CONVERTER"
_SCRIPT = "convert_hf_to_gguf.py"
# What install_converter keeps from the sdist's vendor/llama.cpp/: the script, the package it imports its model
# classes from, the gguf-py it was written against, and llama.cpp's licence.
_KEEP_FILES = {_SCRIPT, "LICENSE"}
_KEEP_DIRS = ("conversion/", "gguf-py/gguf/")

# Runs the converter with the conversion package and the gguf-py it was written against first on the path.
_CONVERT = """
import runpy, sys
from pathlib import Path
script = Path(sys.argv[1])
sys.argv = sys.argv[1:]
sys.path[:0] = [str(script.parent), str(script.parent / "gguf-py")]
runpy.run_path(str(script), run_name="__main__")
"""

_QUANTIZE = """
import ctypes, sys, llama_cpp
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, sys.argv[3])
params.nthread = 0  # llama.cpp's default: every core
sys.exit(1 if llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)) else 0)
"""


def export_loaded(model, tokenizer, target: Path, quant: str, *, name: str | None = None) -> Path:
    """A loaded Hugging Face model (a fine-tuned run with its LoRA merged in) as a GGUF file at `quant`: saved to a
    temporary folder next to `target`, converted and quantized, then the folder is removed.

    The converter names the model in the file's metadata (general.basename, finetune, size_label) from the folder's
    name, so the model is saved in a subfolder named after `name`, never in the temporary folder itself (whose
    name holds a pid and a random part): two exports of the same weights are then the same bytes."""
    from llamalab.models import save_tokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(target)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.{os.getpid()}.", suffix=".merged",
                                     dir=target.parent) as work:
        merged = Path(work) / _folder_name(name or target.stem)
        model.save_pretrained(merged, safe_serialization=True)
        save_tokenizer(tokenizer, merged)
        return export_gguf(merged, target, quant, name=name)


def _folder_name(name: str) -> str:
    """`name` as one visible folder name (a hub id's "/" and a label's spaces become "-")."""
    return re.sub(r"[^A-Za-z0-9._@+-]+", "-", name).strip(".-") or "model"


def _clear_stale(out: Path) -> None:
    """Remove what a killed export of `out` left next to it (a merged model can take tens of GB): the working
    folders named after a process that is gone."""
    for leftover in out.parent.glob(f".{out.name}.*"):
        parts = leftover.name[len(out.name) + 2:].split(".")
        if not leftover.is_dir() or parts[-1] not in ("merged", "partial") or not parts[0].isdigit():
            continue
        try:
            os.kill(int(parts[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def gguf_type(quant: str) -> str:
    """The canonical name of a GGUF type (case-insensitive), or an error naming the valid ones."""
    name = quant.strip().lower()
    if name not in _TYPES:
        raise LlamalabError(f"unknown GGUF type {quant!r}: choose one of {', '.join(GGUF_TYPES)}")
    return name


def export_gguf(model_dir: Path, out: Path, quant: str, *, name: str | None = None) -> Path:
    """Write the Hugging Face model folder `model_dir` as one GGUF file `out` of type `quant` (see GGUF_TYPES).

    `out` appears whole or not at all: everything is written in a temporary folder next to it, then renamed.
    `name` goes into the file's general.name (default: the file's stem). Returns `out`."""
    quant = gguf_type(quant)
    model_dir, out = Path(model_dir), Path(out)
    if out.suffix.lower() != ".gguf":
        raise LlamalabError(f"{out}: a GGUF file name must end in .gguf")
    if out.is_dir():
        raise LlamalabError(f"{out} is a folder: name a .gguf file")
    if not (model_dir / "config.json").is_file():
        raise LlamalabError(f"{model_dir} has no config.json: not a Hugging Face model folder")
    script = check_tools(quant)
    outtype, ftype = _TYPES[quant]
    out.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    try:
        converted = work / f"model-{outtype}.gguf"
        _run([sys.executable, "-c", _CONVERT, str(script), str(model_dir), "--outtype", outtype,
              "--outfile", str(converted), "--model-name", name or out.stem],
             f"llama.cpp's converter failed on {model_dir}")
        final = converted
        if ftype is not None:
            final = work / out.name
            _run([sys.executable, "-c", _QUANTIZE, str(converted), str(final), ftype],
                 f"llama.cpp's quantizer failed to write {quant}")
            converted.unlink()
        os.replace(final, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def gguf_tensor_types(path: Path) -> dict[str, int]:
    """How many of the file's tensors are stored in each type (e.g. {'Q5_0': 166, 'F32': 61, ...}), most first."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def converter_dir() -> Path:
    """Where llama.cpp's converter is: $LLAMALAB_GGUF_CONVERTER (a llama.cpp checkout, or its script), or the
    cache folder install_converter fills for the installed llama-cpp-python version."""
    if env := os.environ.get(CONVERTER_ENV):
        path = Path(env).expanduser()
        return path.parent if path.name == _SCRIPT else path
    from llamalab.models import cache_dir

    return cache_dir() / "llama.cpp" / f"llama-cpp-python-{_llama_cpp_version()}"


def find_converter() -> Path:
    """The converter script, or an error that says how to install it."""
    folder = converter_dir()
    script = folder / _SCRIPT
    if script.is_file():
        return script
    if os.environ.get(CONVERTER_ENV):
        raise LlamalabError(f"{CONVERTER_ENV}={os.environ[CONVERTER_ENV]} has no {_SCRIPT}: "
                            "point it at a llama.cpp checkout (or its convert_hf_to_gguf.py)")
    raise LlamalabError(
        f"GGUF export needs llama.cpp's converter ({_SCRIPT}), which llama-cpp-python's wheel does not ship: "
        f"run `{Path(sys.executable).name} -m llamalab.export --install-converter` once (pip downloads the "
        f"llama-cpp-python {_llama_cpp_version()} source, ~77 MB, and {folder} keeps the converter, ~2 MB), "
        f"or set {CONVERTER_ENV} to a llama.cpp checkout"
    )


def install_converter(sdist: Path | None = None) -> Path:
    """Unpack llama.cpp's converter from llama-cpp-python's sdist (downloaded by pip unless given) into the cache.

    Takes the sdist of the installed llama-cpp-python version, so the converter matches the library that loads
    and quantizes its files. Returns the converter script."""
    from llamalab.runs.files import staged_folder

    if sdist is not None and not Path(sdist).is_file():
        problem = "not a file" if Path(sdist).exists() else "no such file"
        raise LlamalabError(f"--sdist {sdist}: {problem}; {_sdist_advice()}")
    target = converter_dir()
    if (target / _SCRIPT).is_file():
        return target / _SCRIPT
    version = _llama_cpp_version()
    with tempfile.TemporaryDirectory(prefix="llamalab-sdist-") as tmp:
        if sdist is None:
            _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                  f"llama-cpp-python=={version}", "--dest", tmp], "pip could not download llama-cpp-python's source")
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with staged_folder(target, shared=True) as staging:
            _unpack_converter(Path(sdist), staging)
    return target / _SCRIPT


def _sdist_advice() -> str:
    """What --sdist takes, for an error about a file that is not it."""
    try:
        version = _llama_cpp_version()
    except LlamalabError:
        version = "VERSION"
    return (f"give llama-cpp-python's source archive, llama_cpp_python-{version}.tar.gz (`pip download --no-deps "
            f"--no-binary :all: llama-cpp-python=={version}`), or leave out --sdist to have it downloaded")


def _unpack_converter(sdist: Path, dest: Path) -> None:
    import tarfile
    import zlib

    kept = 0
    with contextlib.ExitStack() as stack:
        try:
            archive = stack.enter_context(tarfile.open(sdist))
            members = archive.getmembers()  # reads the whole archive: a truncated or corrupt one fails here
        except (tarfile.TarError, OSError, EOFError, zlib.error):
            raise LlamalabError(f"{sdist}: not a readable .tar.gz archive; {_sdist_advice()}") from None
        for member in members:
            parts = member.name.split("/", 1)
            if not member.isfile() or len(parts) < 2 or not parts[1].startswith("vendor/llama.cpp/"):
                continue
            relative = parts[1].removeprefix("vendor/llama.cpp/")
            if ".." in relative.split("/") or not (relative in _KEEP_FILES or relative.startswith(_KEEP_DIRS)):
                continue
            path = dest / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            with source, open(path, "wb") as file:
                shutil.copyfileobj(source, file)
            kept += 1
    if not (dest / _SCRIPT).is_file():
        raise LlamalabError(f"{sdist.name} has no vendor/llama.cpp/{_SCRIPT}: not a llama-cpp-python sdist?")
    from llamalab.tasks.data import sha256_file

    (dest / "SOURCE.txt").write_text(
        f"{kept} files of vendor/llama.cpp/ unpacked from {sdist.name} (sha256 {sha256_file(sdist)})\n")


def check_tools(quant: str) -> Path:
    """The converter script, once llama.cpp's converter (and, for a quantized type, its quantizer) is found to be
    installed: checked before any model is loaded or converted, not after."""
    script = find_converter()
    if _TYPES[gguf_type(quant)][1] is not None:
        _llama_cpp_version()
    return script


def _llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise LlamalabError(
            "GGUF export needs llama-cpp-python (llama.cpp's quantizer; it also runs the files): "
            "run scripts/install-llama-server.sh"
        ) from None


def _run(command: list[str], failure: str) -> None:
    """A converter or quantizer, killed with this process (left running, it went on writing gigabytes next to
    the export, which nothing would clear)."""
    from llamalab.training.distributed import die_with_parent

    done = subprocess.run(command, capture_output=True, text=True, errors="replace",
                          preexec_fn=lambda: die_with_parent(signal.SIGKILL))
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise LlamalabError(f"{failure} (exit status {done.returncode}):\n{tail}")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m llamalab.export",
        description="Install llama.cpp's HF-to-GGUF converter for `llamalab export --gguf`.")
    parser.add_argument("--install-converter", action="store_true", required=True,
                        help="unpack it from llama-cpp-python's source (pip downloads it)")
    parser.add_argument("--sdist", type=Path, help="use this llama_cpp_python-VERSION.tar.gz instead of downloading")
    args = parser.parse_args(argv)
    try:
        print(f"converter installed: {install_converter(args.sdist)}")
    except LlamalabError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
