"""Unpack a reference run brought back from a lent GPU machine into runs/reference/ (tools,
not the package).

    python tools/unpack_reference.py --pieces DIR [--answers answers.npz.xz --pool pool.jsonl]

Reads the pieces written by tools/pack_reference.py (a gzipped tar: manifests, plans,
evaluation, drafts in bf16) and, optionally, a later answers.npz.xz and pool.jsonl (a
longer run of the answers stage); writes the run folder as the stages would have left it
on this machine: the drafts with the target's tokenizer files, every answer shard as
records.jsonl + settings.json (+ manifest.json when the shard is complete), the prompt
pool with its manifest. The device's cache path in the target's name is replaced by the
machine-independent id (draftalign.models.target_id), so the stages here reuse what came back.
"""

import argparse
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from draftalign.artifacts import write_manifest
from draftalign.models import target_id
from draftalign.packed import KINDS, read_packed_answers
from draftalign.book.profiles import get_profile
from draftalign.book.reference_run import Run


def normalise(root: Path, device_source: str, here: str) -> None:
    for path in root.rglob("*.json"):
        text = path.read_text()
        if device_source in text:
            path.write_text(text.replace(device_source, here))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pieces", required=True)
    ap.add_argument("--answers", default=None)
    ap.add_argument("--pool", default=None)
    ap.add_argument("--device-source", default="offline-gguf:/tmp/draftalign-cache/SmolLM2-135M-Instruct-Q4_1")
    args = ap.parse_args()
    P = get_profile("reference")
    run = Run(P)
    target, tok = run.target, run.tokenizer
    here = target_id(target)
    data = b"".join(p.read_bytes() for p in sorted(Path(args.pieces).glob("reference-*.part")))
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        src = Path(tmp) / "reference"
        normalise(src, args.device_source, here)
        answers_blob = (Path(args.answers) if args.answers else src / "answers.npz.xz").read_bytes()
        for item in src.iterdir():
            if item.name in ("answers.npz.xz", "answers-greedy", "answers-sampled"):
                continue
            dest = run.root / item.name
            if dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            shutil.move(str(item), dest)
    # drafts: the target's tokenizer files (left out on the way back)
    for folder in run.root.glob("draft-*"):
        tok.save_pretrained(folder)
    # the prompt pool: the longest one that came back (pools only grow, prefix-stable)
    if args.pool:
        if args.pool.endswith(".gz"):
            import gzip

            (run.root / "prompts" / "pool.jsonl").write_bytes(gzip.decompress(Path(args.pool).read_bytes()))
        else:
            shutil.copy(args.pool, run.root / "prompts" / "pool.jsonl")
    pool = [json.loads(line) for line in (run.root / "prompts" / "pool.jsonl").read_text().splitlines()]
    counts = {s: sum(p["source"] == s for p in pool) for s in ("builtin", "passage", "magpie")}
    if counts["magpie"] >= P.ref_self_instruct:
        write_manifest(run.root / "prompts", {"stage": "prompts", "target": here, "builtin": P.ref_builtin_per_category,
                                              "self_instruct": P.ref_self_instruct, "passages": P.ref_passages,
                                              "batch": P.ref_prompt_batch, "seed": P.seed},
                       results={"prompts": len(pool), **counts, "made_on": "GPU (see plan-*.json)"})
    # the answers, shard by shard (shard k of a kind answers prompts [2048 k, 2048 (k + 1)) of the pool)
    with tempfile.NamedTemporaryFile(suffix=".npz.xz") as blob:
        blob.write(answers_blob)
        blob.flush()
        every = read_packed_answers(None, tok, pool=pool, answers=blob.name)
    for kind in KINDS:
        rows = [r for r in every if r["kind"] == kind]
        temp = 0.0 if kind == "greedy" else P.ref_sampled_temperature
        for s in range(0, len(rows), P.ref_shard):
            shard = s // P.ref_shard
            prompts = pool[shard * P.ref_shard:(shard + 1) * P.ref_shard]
            folder = run.root / f"answers-{kind}" / f"shard-{shard:04d}"
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            part = rows[s:s + P.ref_shard]
            for j, (row, p) in enumerate(zip(part, prompts)):
                if row["prompt"] != p["prompt"]:
                    raise SystemExit(f"{kind} answer {s + j} is not to prompt {shard * P.ref_shard + j} of the pool")
            lines = [json.dumps({**{k: v for k, v in r.items() if k != "kind"}, "index": j}, ensure_ascii=False)
                     for j, r in enumerate(part)]
            (folder / "records.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            settings = {"model": here, "n_prompts": len(prompts),
                        "prompts_sha256": hashlib.sha256("\0".join(p["prompt"] for p in prompts).encode()).hexdigest(),
                        "max_new_tokens": P.ref_answer_max_new_tokens, "temperature": temp,
                        "top_p": 1.0 if temp == 0 else 0.95, "batch_size": P.ref_answer_batch, "seed": P.seed + shard,
                        "system": None, "topk": 0}
            (folder / "settings.json").write_text(json.dumps(settings, indent=2))
            if len(lines) == len(prompts):
                spec = {"stage": "answers", "target": here, "temperature": temp,
                        "max_new_tokens": P.ref_answer_max_new_tokens, "seed": P.seed + shard,
                        "prompts_sha256": hashlib.sha256("\0".join(p["prompt"] for p in prompts).encode("utf-8")).hexdigest()}
                write_manifest(folder, spec, results={"rows": len(lines), "tokens": sum(
                    len(r["response_ids"]) for r in part), "made_on": "GPU (see plan-*.json)"})
            print(f"{folder.relative_to(run.root)}: {len(lines)} of {len(prompts)} answers")


if __name__ == "__main__":
    main()
