"""llama.cpp as a measured runtime: the cost of a k-token pass (``llama-bench``) and plain
against speculative decoding with an exported draft (``llama-server -md``).

Reads GGUF files (the target's, a draft's from :func:`draftalign.export.export_gguf`) and
llama.cpp's binaries (``tools/build_llama_cpp.sh`` builds them into ``build/llama.cpp/bin``;
``$DRAFTALIGN_LLAMA_CPP`` names another folder); writes nothing but what its caller saves.
``draftalign bench --engine llama.cpp`` runs :func:`bench_servers` and :func:`pass_costs`.

llama-server takes the number of drafted tokens per server (``--draft-max``; this build
ignores a per-request ``speculative.n_max``), so each gamma gets its own server, and the
servers are timed in interleaved, rotated rounds like :func:`draftalign.timing.compare_decoders`.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

__all__ = ["binaries", "pass_costs", "serve", "complete", "bench_servers", "cost_model", "tables", "benchmark"]


def binaries(folder=None) -> dict[str, Path]:
    """``{"server": llama-server, "bench": llama-bench}``: from ``folder``, ``$DRAFTALIGN_LLAMA_CPP``
    or ``build/llama.cpp/bin`` of the project; ``FileNotFoundError`` saying how to build them."""
    candidates = [Path(folder)] if folder else []
    if os.environ.get("DRAFTALIGN_LLAMA_CPP"):
        candidates.append(Path(os.environ["DRAFTALIGN_LLAMA_CPP"]))
    candidates.append(Path(__file__).resolve().parents[2] / "build" / "llama.cpp" / "bin")
    for c in candidates:
        if (c / "llama-server").exists() and (c / "llama-bench").exists():
            return {"server": c / "llama-server", "bench": c / "llama-bench"}
    raise FileNotFoundError("no llama.cpp binaries (llama-server, llama-bench) in " + ", ".join(map(str, candidates))
                            + ": build them with `make llama-cpp` (tools/build_llama_cpp.sh, about 25 minutes)")


def pass_costs(model: Path, ks=(1, 2, 3, 4, 5, 8), *, threads: int = 1, repetitions: int = 5, n_gen: int = 16,
               bins=None) -> list[dict]:
    """ms of one forward pass over ``k`` new tokens for each ``k`` (llama-bench's prompt
    processing of ``k`` tokens, ``repetitions`` times, mean and spread), and of one decoded
    token (its text generation test: ``n_gen`` tokens decoded, the mean per token)."""
    exe = binaries(bins)["bench"]
    cmd = [str(exe), "-m", str(model), "-p", ",".join(map(str, ks)), "-n", str(n_gen), "-t", str(threads),
           "-r", str(repetitions), "-o", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-500:]}")
    rows = []
    for r in json.loads(done.stdout):
        k = int(r.get("n_prompt") or 0)
        gen = int(r.get("n_gen") or 0)
        tokens = k if k else gen
        rows.append({"k": k if k else 1, "test": f"pp{k}" if k else f"tg{gen}", "threads": threads,
                     "ms_per_pass": r["avg_ns"] / 1e6 / (1 if k else gen),
                     "ms_per_pass_sd": r.get("stddev_ns", 0) / 1e6 / (1 if k else gen), "tokens": tokens})
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(target: Path, draft: Path | None = None, *, gamma: int = 4, threads: int = 1, ctx: int = 2048,
          slots: int = 1, bins=None, startup: float = 120.0):
    """A llama-server on the loopback for ``target`` (with ``draft`` drafting ``gamma`` tokens
    per block, always: no minimum, no confidence cut), yielding its URL; stopped on exit.
    ``slots``: requests it decodes at once (each gets ``ctx`` positions)."""
    exe = binaries(bins)["server"]
    port = _free_port()
    cmd = [str(exe), "-m", str(target), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads), "-tb",
           str(threads), "-c", str(ctx * slots), "-np", str(slots), "--no-webui"]
    if draft is not None:
        cmd += ["-md", str(draft), "--spec-type", "draft-simple", "--spec-draft-n-max", str(gamma),
                "--spec-draft-n-min", str(gamma), "--spec-draft-p-min", "0", "-td", str(threads), "-tbd", str(threads)]
    log = open(os.devnull, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {proc.returncode}: {' '.join(cmd)}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if json.loads(r.read()).get("status") == "ok":
                        break
            except OSError:
                pass
            if time.time() - start > startup:
                raise RuntimeError(f"llama-server did not come up in {startup:.0f} s: {' '.join(cmd)}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def complete(url: str, prompt_ids: list[int], *, max_new_tokens: int, topk: int = 0, seed: int = 0) -> dict:
    """One greedy answer from a llama-server: ``tokens``, ``seconds`` (wall, this call),
    ``drafted`` and ``accepted`` (the server's own counts, where it reports them), ``reply``."""
    body = {"prompt": prompt_ids, "n_predict": max_new_tokens, "temperature": 0.0, "top_k": 1, "seed": seed,
            "cache_prompt": False, "return_tokens": True, "n_probs": topk}
    request = urllib.request.Request(url + "/completion", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as r:
        reply = json.loads(r.read())
    seconds = time.perf_counter() - start
    timings = reply.get("timings", {})
    return {"tokens": reply.get("tokens", []), "seconds": seconds, "drafted": timings.get("draft_n"),
            "accepted": timings.get("draft_n_accepted"), "predicted_ms": timings.get("predicted_ms"),
            "reply": reply}


def bench_servers(target: Path, draft: Path, prompts: list[list[int]], *, gammas=(1, 2, 4), threads: int = 1,
                  rounds: int = 3, max_new_tokens: int = 128, bins=None, progress: bool = True) -> dict:
    """Plain decoding against speculative decoding with ``draft`` at each gamma, through
    llama-server, greedy: interleaved and rotated rounds over the same prompts; per method the
    median over rounds of its time on each prompt, tokens/s, acceptance (the server's counts),
    the speed-up over plain (median of per-prompt ratios) and whether its tokens equal plain's."""
    from tqdm.std import tqdm

    methods = ["plain"] + [f"gamma={g}" for g in gammas]
    times = {m: [[] for _ in prompts] for m in methods}
    outputs, drafted, accepted = {}, {m: 0 for m in methods}, {m: 0 for m in methods}
    bar = tqdm(total=rounds * len(methods) * len(prompts), desc=f"llama.cpp ({threads} thread(s))",
               disable=not progress)
    with serve(target, threads=threads, bins=bins) as plain_url:
        urls = {"plain": plain_url}
        servers = []
        try:
            for g in gammas:
                cm = serve(target, draft, gamma=g, threads=threads, bins=bins)
                urls[f"gamma={g}"] = cm.__enter__()
                servers.append(cm)
            for x in prompts[:1]:  # warm-up outside the timed rounds
                for m in methods:
                    complete(urls[m], x, max_new_tokens=8)
            for r in range(rounds):
                shift = r % len(methods)
                for m in methods[shift:] + methods[:shift]:
                    for i, x in enumerate(prompts):
                        res = complete(urls[m], x, max_new_tokens=max_new_tokens)
                        times[m][i].append(res["seconds"])
                        if r == 0:
                            outputs.setdefault(m, []).append(res["tokens"])
                            drafted[m] += res["drafted"] or 0
                            accepted[m] += res["accepted"] or 0
                        bar.update()
        finally:
            for cm in reversed(servers):
                cm.__exit__(None, None, None)
    bar.close()
    tokens = {m: sum(len(t) for t in outputs[m]) for m in methods}
    rows = []
    for m in methods:
        per_prompt = [statistics.median(t) for t in times[m]]
        ratios = [statistics.median(p) / statistics.median(q) for p, q in zip(times["plain"], times[m])]
        rows.append({"method": m, "threads": threads, "tokens": tokens[m], "seconds": sum(per_prompt),
                     "tokens_per_s": tokens[m] / sum(per_prompt),
                     "acceptance": accepted[m] / drafted[m] if drafted[m] else None,
                     "speed_up": statistics.median(ratios),
                     "same_tokens_as_plain": sum(a == b for a, b in zip(outputs[m], outputs["plain"]))})
    return {"threads": threads, "prompts": len(prompts), "rounds": rounds, "max_new_tokens": max_new_tokens,
            "rows": rows}


def cost_model(rows: list[dict], threads: int, model: str = "target"):
    """The cost model of ``model`` from :func:`pass_costs` rows at ``threads``: a
    :class:`draftalign.costmodel.MeasuredCost` through one decoded token (``k = 1``, the
    ``tg`` test: a step with a context, as in decoding) and the k-token passes (``pp`` tests,
    ``k >= 2``), the fitted line beyond them."""
    import pandas as pd

    from .costmodel import MeasuredCost, fit_cost_model

    mine = [r for r in rows if r["threads"] == threads and r.get("model", model) == model]
    points = [(1, r["ms_per_pass"]) for r in mine if r["test"].startswith("tg")]
    points += [(r["k"], r["ms_per_pass"]) for r in mine if r["test"].startswith("pp") and r["k"] >= 2]
    line = fit_cost_model(pd.DataFrame(points, columns=["k", "ms_median"]))
    return MeasuredCost(line.a_ms, line.b_ms, points=tuple(points))


def _one_token_ms(rows, threads, model):
    return next(r["ms_per_pass"] for r in rows
                if r["threads"] == threads and r.get("model") == model and r["test"].startswith("tg"))


def tables(record: dict) -> dict:
    """:func:`benchmark`'s record as tables: ``"export"`` (bytes per GGUF type), ``"pass
    cost"`` (the target's k-token pass in ms and relative to one decoded token, per thread
    count), ``"servers"`` (tok/s, acceptance, speed-up over plain, outputs equal to plain's)
    ``"break-even"`` (the acceptance each gamma needs to pay, from the cost model and the
    draft's measured cost ``c``) and, where measured, ``"draft shapes"`` (a step's cost per
    draft shape) and the same two for PyTorch eager when the record holds them (``"torch"``:
    ``draftalign bench --engine llama.cpp`` measures them in the same run)."""
    import pandas as pd

    from .costmodel import alpha_needed

    costs = record["pass_costs"]
    export = pd.DataFrame({"bytes": record["export_bytes"]}).rename_axis("type")
    export["MB"] = (export["bytes"] / 1e6).round(1)
    rows = []
    for th in record["threads"]:
        one = _one_token_ms(costs, th, "target")
        rows.append({"threads": th, "k": 1, "test": "decode one token", "ms": one, "vs one token": 1.0})
        rows += [{"threads": th, "k": r["k"], "test": f"pass over {r['k']} tokens", "ms": r["ms_per_pass"],
                  "vs one token": r["ms_per_pass"] / one}
                 for r in costs if r["threads"] == th and r["model"] == "target" and r["test"].startswith("pp")
                 and r["k"] >= 2]
    pass_cost = pd.DataFrame(rows).set_index(["threads", "k"]).round(3)
    servers = pd.DataFrame([r for run in record["servers"] for r in run["rows"]]).set_index(["threads", "method"])
    draft = f"draft ({record['served_type']})"
    even = []
    for th in record["threads"]:
        model = cost_model(costs, th)
        c = _one_token_ms(costs, th, draft) / _one_token_ms(costs, th, "target")
        for g in record["gammas"]:
            even.append({"threads": th, "gamma": g, "c": c, "verify t(gamma+1)/t(1)": float(model.verify(g + 1)),
                         "alpha needed": alpha_needed(c, g, model)})
    out = {"export": export, "pass cost": pass_cost, "servers": servers.round(3),
           "break-even": pd.DataFrame(even).set_index(["threads", "gamma"]).round(3)}
    if record.get("shape_costs"):
        out["draft shapes"] = pd.DataFrame(record["shape_costs"]).set_index(["threads", "shape"]).round(3)
    if record.get("torch"):  # PyTorch eager, fp32, measured in the same run
        out["pass cost, PyTorch eager"] = pd.concat(
            {run["threads"]: pd.DataFrame(run["pass_cost"]).set_index("k") for run in record["torch"]},
            names=["threads"]).round(3)
        out["draft shapes, PyTorch eager"] = pd.concat(
            {run["threads"]: pd.DataFrame(run["shape_costs"]).set_index("shape") for run in record["torch"]},
            names=["threads"]).round(3)
    return out


def benchmark(draft_folder, prompts: list[list[int]], *, target_gguf=None, gguf_types=("f32", "f16", "q8_0"),
              served_type: str = "q8_0", gammas=(1, 2, 4), threads=(1, 2), rounds: int = 3,
              max_new_tokens: int = 128, shapes=None, work_dir=None, bins=None, progress: bool = True) -> dict:
    """The whole llama.cpp measurement of a draft folder (a standard export over the target's
    vocabulary, :func:`draftalign.export.export_draft`): its GGUF in each of ``gguf_types``
    (file sizes), ``llama-bench``'s k-token pass costs of the target and of the draft at each
    thread count, and :func:`bench_servers` with the ``served_type`` draft at each thread
    count, and with ``shapes`` (:data:`draftalign.draftcost.SHAPES`) what a step of each
    draft shape costs (:func:`draftalign.draftcost.llama_cpp_costs`). ``target_gguf`` defaults
    to the offline target's own file. ``prompts``: chat
    prompts as token ids. Returns a JSON-ready record with the hardware."""
    import tempfile

    from .gguf_export import export_gguf
    from .models import offline_target_gguf
    from .provenance import versions

    if served_type not in gguf_types:
        raise ValueError(f"served_type {served_type!r} must be one of gguf_types {gguf_types}")
    binaries(bins)  # fail before the exports if llama.cpp is not built
    target_gguf = Path(target_gguf) if target_gguf else offline_target_gguf()
    tmp = tempfile.TemporaryDirectory() if work_dir is None else None
    work = Path(work_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        files = {t: export_gguf(draft_folder, work / f"draft-{t}.gguf", dtype=t, tokenizer_pre="smollm")
                 for t in gguf_types}
        sizes = {t: f.stat().st_size for t, f in files.items()}
        costs, servers, shape_costs = [], [], []
        for th in threads:
            costs += [dict(r, model="target") for r in pass_costs(target_gguf, threads=th, repetitions=10, n_gen=64,
                                                                  bins=bins)]
            costs += [dict(r, model=f"draft ({served_type})")
                      for r in pass_costs(files[served_type], ks=(1,), threads=th, repetitions=10, n_gen=64, bins=bins)]
            servers.append(bench_servers(target_gguf, files[served_type], prompts, gammas=gammas, threads=th,
                                         rounds=rounds, max_new_tokens=max_new_tokens, bins=bins,
                                         progress=progress))
            if shapes:
                from .draftcost import llama_cpp_costs

                def one_token_ms(path, th=th):
                    return next(r["ms_per_pass"] for r in pass_costs(path, ks=(1,), threads=th, repetitions=20,
                                                                     n_gen=256, bins=bins)
                                if r["test"].startswith("tg"))

                table = llama_cpp_costs(draft_folder, shapes, target_gguf=target_gguf, one_token_ms=one_token_ms,
                                        gguf_type=served_type, work_dir=work / "shapes")
                shape_costs += [dict(r, threads=th) for r in table.reset_index().to_dict("records")]
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {"hardware": versions()["hardware"], "target_gguf": target_gguf.name,
            "target_gguf_bytes": target_gguf.stat().st_size, "draft": str(draft_folder),
            "export_bytes": sizes, "served_type": served_type, "pass_costs": costs, "servers": servers,
            "gammas": list(gammas), "threads": list(threads), "shape_costs": shape_costs}
