"""Distillation data from a serving engine: the target's answers and its top-k next-token
log-probabilities through HTTP, for a target too large to run in-process.

Reads prompts (templated here with the target's own chat template, sent as token ids) and a
server: an OpenAI-compatible completions API (vLLM, with ``return_tokens_as_token_ids``;
SGLang where it returns ids the same way) or llama.cpp's ``llama-server`` (``/completion``
with ``n_probs``). Writes exactly what :func:`draftalign.answers.generate_distillation_rows`
writes (``settings.json``, ``records.jsonl``, ``topk/batch-NNNNN.npz``), so everything that
reads distillation data reads this, and resume works the same way: a batch is written in one
append after all its answers came back, a killed run continues with the next batch and never
duplicates one. Many requests are in flight at once (``concurrency``).

Faults are handled and named: a refused connection, an HTTP 5xx or a timeout is retried
with exponential backoff, then raised as :class:`ServerError` naming the server; a response
without token ids or top-k log-probabilities is refused with what is missing; a server whose
tokenizer is not the target's is detected on the first answer (its text differs from the
target tokenizer's decoding of its ids) and refused.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.std import tqdm

from .answers import _fingerprint, _read_records, _save_topk, read_distillation_rows
from .artifacts import CorruptFile, SettingsMismatch, atomic_write
from .chat import generation_prefix_ids

__all__ = ["ServerError", "ENGINES", "Server", "generate_from_server"]

ENGINES = ("openai", "llama.cpp")


class ServerError(RuntimeError):
    """The serving engine could not be reached or answered with an error, after retries."""


class Server:
    """One serving engine: ``url`` (e.g. ``http://127.0.0.1:8080``), its dialect ``engine``
    (``openai`` or ``llama.cpp``; ``auto`` asks the server), the served ``model`` name (the
    OpenAI dialect's ``model`` field; asked from ``/v1/models`` when not given)."""

    def __init__(self, url: str, *, engine: str = "auto", model: str | None = None, timeout: float = 120.0,
                 retries: int = 4, backoff: float = 1.0):
        self.url, self.timeout, self.retries, self.backoff = url.rstrip("/"), timeout, retries, backoff
        if engine not in ENGINES + ("auto",):
            raise ValueError(f"engine must be one of {ENGINES} or 'auto', got {engine!r}")
        self.engine = self._detect() if engine == "auto" else engine
        self.model = model
        if self.engine == "openai" and self.model is None:
            self.model = self._request("GET", "/v1/models")["data"][0]["id"]

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One JSON request, retried on a refused connection, a 5xx or a timeout."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        last = None
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url + path, data=data, method=method,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                if exc.code < 500:  # the request is wrong: retrying cannot help
                    detail = exc.read().decode("utf-8", errors="replace")[:300]
                    raise ServerError(f"{self.url}{path} refused the request: HTTP {exc.code} {detail}") from None
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise ServerError(f"the server at {self.url} did not answer {method} {path} after {self.retries + 1} "
                          f"tries ({last}); is it running, and is the address right?")

    def _detect(self) -> str:
        """``llama.cpp`` when ``/props`` answers (llama-server), else ``openai`` when ``/v1/models`` does."""
        for path, engine in (("/props", "llama.cpp"), ("/v1/models", "openai")):
            try:
                self._request("GET", path)
                return engine
            except ServerError as exc:
                if "refused the request" not in str(exc):
                    raise
        raise ServerError(f"{self.url} answers neither /props (llama-server) nor /v1/models (OpenAI-compatible)")

    def complete(self, prompt_ids: list[int], *, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                 topk: int) -> dict:
        """One answer: ``ids`` (the answer's token ids), ``text`` (the server's own text of
        them), ``finished`` (ended on the end-of-turn token) and ``topk`` (``(ids [L, k],
        logprobs [L, k])`` at each answer token, log-probabilities at temperature 1)."""
        if self.engine == "llama.cpp":
            body = {"prompt": prompt_ids, "n_predict": max_new_tokens, "temperature": temperature, "top_p": top_p,
                    "top_k": 0, "min_p": 0.0, "seed": seed, "n_probs": max(topk, 1), "return_tokens": True,
                    "cache_prompt": False, "post_sampling_probs": False}
            return _from_llama_cpp(self._request("POST", "/completion", body), self.url, topk)
        body = {"model": self.model, "prompt": prompt_ids, "max_tokens": max_new_tokens, "temperature": temperature,
                "top_p": top_p, "seed": seed, "logprobs": max(topk, 1), "return_tokens_as_token_ids": True}
        return _from_openai(self._request("POST", "/v1/completions", body), self.url, topk)


def _missing(url: str, what: str, hint: str) -> ValueError:
    return ValueError(f"the server at {url} returned no {what}; {hint}")


def _from_llama_cpp(reply: dict, url: str, topk: int) -> dict:
    probs = reply.get("completion_probabilities")
    ids = reply.get("tokens")
    if not ids and probs:
        ids = [p.get("id") for p in probs]
    if not ids or any(i is None for i in ids):
        raise _missing(url, "token ids", "llama-server returns them with \"return_tokens\": true (a recent build)")
    if topk and not probs:
        raise _missing(url, "top-k log-probabilities", "llama-server returns them with \"n_probs\"")
    rows_ids, rows_lp = [], []
    for p in (probs or [])[: len(ids)]:
        top = p.get("top_logprobs") or p.get("probs") or []
        pairs = [(t["id"], t["logprob"] if "logprob" in t else math.log(max(t.get("prob", 0.0), 1e-30)))
                 for t in top][:topk]
        rows_ids.append([i for i, _ in pairs])
        rows_lp.append([lp for _, lp in pairs])
    finished = reply.get("stop_type") == "eos" or bool(reply.get("stopped_eos"))
    return {"ids": list(ids), "text": reply.get("content", ""), "finished": finished, "topk": (rows_ids, rows_lp)}


def _token_id(token: str, url: str) -> int:
    if not token.startswith("token_id:"):
        raise _missing(url, "token ids", "start vLLM with --return-tokens-as-token-ids (or pass "
                                         "return_tokens_as_token_ids): the answer came back as text only")
    return int(token.removeprefix("token_id:"))


def _from_openai(reply: dict, url: str, topk: int) -> dict:
    choice = reply["choices"][0]
    lp = choice.get("logprobs") or {}
    tokens, top = lp.get("tokens"), lp.get("top_logprobs")
    if not tokens:
        raise _missing(url, "token ids", "ask for logprobs with return_tokens_as_token_ids")
    ids = [_token_id(t, url) for t in tokens]
    if topk and not top:
        raise _missing(url, "top-k log-probabilities", "ask for logprobs (top alternatives)")
    rows_ids, rows_lp = [], []
    for alternatives in (top or []):
        pairs = sorted(((_token_id(t, url), v) for t, v in (alternatives or {}).items()), key=lambda kv: -kv[1])[:topk]
        rows_ids.append([i for i, _ in pairs])
        rows_lp.append([v for _, v in pairs])
    return {"ids": ids, "text": choice.get("text", ""), "finished": choice.get("finish_reason") == "stop",
            "topk": (rows_ids, rows_lp)}


def _check_tokenizer(answer: dict, tokenizer, url: str) -> None:
    """Refuse a server whose tokenizer is not the target's: its ids must be in the target's
    vocabulary and decode, with the target's tokenizer, to the text it sent."""
    ids = [i for i in answer["ids"] if i not in set(tokenizer.all_special_ids)]
    if any(not 0 <= i < len(tokenizer) for i in answer["ids"]):
        raise ValueError(f"the server at {url} answered with ids outside the target's vocabulary ({len(tokenizer)}): "
                         "it serves another model")
    ours = tokenizer.decode(ids, skip_special_tokens=True).strip()
    if answer["text"] and ours != answer["text"].strip():
        raise ValueError(f"the server at {url} does not use the target's tokenizer: its answer reads "
                         f"{answer['text'][:60]!r}, the target's tokenizer reads its ids as {ours[:60]!r}")


def generate_from_server(server: Server | str, tokenizer, prompts: list[str], out_dir, *, max_new_tokens: int,
                         temperature: float, top_p: float, batch_size: int, seed: int,
                         categories: list[str] | None = None, system: str | None = None, topk: int = 0,
                         concurrency: int = 8, progress: bool = True, deadline: float | None = None) -> list[dict]:
    """:func:`draftalign.answers.generate_distillation_rows` through a serving engine: the
    same arguments (``server`` for the target), the same folder, the same rows. Each prompt
    is sampled with seed ``seed + index``; ``concurrency`` requests are in flight at once."""
    server = server if isinstance(server, Server) else Server(server)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    if categories is not None and len(categories) != len(prompts):
        raise ValueError(f"{len(categories)} categories for {len(prompts)} prompts")
    if max_new_tokens < 1 or batch_size < 1 or temperature < 0 or not 0 < top_p <= 1 or concurrency < 1:
        raise ValueError("need max_new_tokens, batch_size, concurrency >= 1, temperature >= 0, 0 < top_p <= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"model": f"server:{server.engine}:{server.model or server.url}", "tokenizer": tokenizer.name_or_path,
                "n_prompts": len(prompts), "prompts_sha256": _fingerprint(prompts), "max_new_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "batch_size": batch_size, "seed": seed, "system": system,
                "topk": topk}
    path = out_dir / "settings.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise CorruptFile(f"{path} is not JSON; delete {out_dir} to start afresh", path) from None
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise SettingsMismatch(f"{out_dir} holds a run with other settings {diff}; use another folder or "
                                   f"delete it", out_dir)
    elif (out_dir / "records.jsonl").exists():
        raise SettingsMismatch(f"{out_dir} holds answers but no settings.json; delete it to start afresh", out_dir)
    else:
        atomic_write(path, json.dumps(settings, indent=2))
    done = _read_records(out_dir / "records.jsonl")
    batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    todo = [(b, idx) for b, idx in enumerate(batches) if not all(i in done for i in idx)]
    bar = tqdm(total=len(prompts), initial=len(prompts) - sum(len(i) for _, i in todo), desc="target answers (server)",
               unit="prompt", disable=not progress, mininterval=10)
    checked = bool(done)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for b, idx in todo:
            if deadline is not None and time.time() > deadline:
                break
            encoded = {i: generation_prefix_ids(tokenizer, prompts[i], system=system) for i in idx}
            answers = dict(zip(idx, pool.map(lambda i: server.complete(
                encoded[i], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed + i,
                topk=topk), idx)))
            if not checked:
                _check_tokenizer(answers[idx[0]], tokenizer, server.url)
                checked = True
            lines, kept = [], []
            for i in idx:
                a = answers[i]
                ids = list(a["ids"])
                eos = tokenizer.eos_token_id
                if a["finished"] and (not ids or ids[-1] != eos):  # the end-of-turn token ends a finished answer
                    ids.append(eos)
                if topk:
                    top_ids, top_lp = a["topk"]
                    if len(top_ids) < len(ids) or any(len(row) != topk for row in top_ids[: len(ids)]):
                        raise ValueError(f"the server at {server.url} returned top-{topk} log-probabilities for "
                                         f"{sum(len(r) == topk for r in top_ids)} of {len(ids)} answer tokens")
                    kept.append((i, np.asarray(top_ids[: len(ids)], dtype=np.int64),
                                 np.asarray(top_lp[: len(ids)], dtype=np.float32)))
                if i in done:
                    continue
                lines.append(json.dumps({"index": i, "prompt": prompts[i], "category": categories[i] if categories else
                                         None, "prompt_ids": encoded[i], "response": tokenizer.decode(
                                             ids, skip_special_tokens=True), "response_ids": ids,
                                         "finish_reason": "stop" if a["finished"] else "length"}, ensure_ascii=False))
            if topk:  # written before the records: a record on disk always has its top-k
                _save_topk(out_dir / "topk" / f"batch-{b:05d}.npz", kept)
            with open(out_dir / "records.jsonl", "a", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
            for i in idx:
                done.setdefault(i, True)
            bar.update(len(lines))
    bar.close()
    return read_distillation_rows(out_dir) if (out_dir / "records.jsonl").exists() else []
