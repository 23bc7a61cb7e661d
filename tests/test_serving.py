"""Distillation data from a serving engine (:mod:`draftalign.serving`), against an engine
stood in for on the loopback: a tiny model behind both dialects (llama-server's
``/completion`` and the OpenAI-compatible ``/v1/completions`` with token ids), and the
faults a real one has (refused, 5xx, slow, answers without ids or top-k, another tokenizer).
A test with llama.cpp's own server is in tests/test_llama_server.py."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from draftalign.answers import generate_distillation_rows, load_topk
from draftalign.serving import Server, ServerError, generate_from_server

PROMPTS = ["Name three rivers.", "Why is the sea salty?", "Write one line about tea.", "What is 2 + 3?",
           "Say hello.", "List two colours."]


class Engine:
    """A tiny model served over HTTP in one of two dialects, with faults on demand."""

    def __init__(self, model, tokenizer, dialect: str):
        self.model, self.tokenizer, self.dialect = model, tokenizer, dialect
        self.fail_first = 0  # answer this many requests with HTTP 500 first
        self.delay = 0.0
        self.drop = None  # "ids" or "topk": leave that out of the answers
        self.garble = False  # send a text that is not the target tokenizer's reading of the ids
        self.requests = 0
        self.lock = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/props" and engine.dialect == "llama.cpp":
                    return self._send(200, {"n_ctx": 512})
                if self.path == "/v1/models" and engine.dialect == "openai":
                    return self._send(200, {"data": [{"id": "tiny"}]})
                return self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with engine.lock:
                    engine.requests += 1
                    fail = engine.requests <= engine.fail_first
                if fail:
                    return self._send(500, {"error": "overloaded"})
                time.sleep(engine.delay)
                return self._send(200, engine.answer(body))

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @torch.inference_mode()
    def answer(self, body):
        prompt = body["prompt"]
        n = body.get("n_predict", body.get("max_tokens"))
        temp = body.get("temperature", 0.0)
        k = body.get("n_probs", body.get("logprobs"))
        gen = torch.Generator().manual_seed(body["seed"])
        ids, tops, finished = [], [], False
        for _ in range(n):
            logits = self.model(torch.tensor([prompt + ids])).logits[0, -1].float()
            lp = logits.log_softmax(-1)
            values, tokens = lp.topk(k)
            tok = int(logits.argmax()) if temp == 0 else int(torch.multinomial((logits / temp).softmax(-1), 1,
                                                                                 generator=gen))
            if tok == self.tokenizer.eos_token_id:
                finished = True
                tops.append((tokens.tolist(), values.tolist()))
                break
            ids.append(tok)
            tops.append((tokens.tolist(), values.tolist()))
        text = self.tokenizer.decode(ids, skip_special_tokens=True) + (" (garbled)" if self.garble else "")
        if self.dialect == "llama.cpp":
            reply = {"content": text, "stop_type": "eos" if finished else "limit",
                     "completion_probabilities": [{"id": t[0][0], "top_logprobs": [
                         {"id": i, "logprob": v} for i, v in zip(*t)]} for t in tops]}
            if self.drop != "ids":
                reply["tokens"] = ids
            else:
                for p in reply["completion_probabilities"]:
                    p["id"] = None
            if self.drop == "topk":
                reply.pop("completion_probabilities")
            return reply
        all_ids = ids + ([self.tokenizer.eos_token_id] if finished else [])
        logprobs = {"tokens": [f"token_id:{i}" if self.drop != "ids" else self.tokenizer.decode([i]) for i in all_ids],
                    "top_logprobs": [{f"token_id:{i}": v for i, v in zip(*t)} for t in tops]}
        if self.drop == "topk":
            logprobs.pop("top_logprobs")
        return {"choices": [{"text": text, "finish_reason": "stop" if finished else "length", "logprobs": logprobs}]}

    def close(self):
        self.http.shutdown()


@pytest.fixture(scope="module")
def target(tiny_llama):
    model = tiny_llama(vocab_size=49152, hidden_size=16, num_layers=1, eos_token_id=2, max_position_embeddings=256,
                       seed=5, init_std=0.05)
    with torch.no_grad():
        model.lm_head.weight[2] += 0.08  # answers that end now and then
    return model


@pytest.fixture(params=["llama.cpp", "openai"])
def engine(request, target, tokenizer):
    served = Engine(target, tokenizer, request.param)
    yield served
    served.close()


KW = dict(max_new_tokens=6, temperature=0.0, top_p=1.0, batch_size=4, seed=0, topk=4, progress=False)


def test_greedy_answers_and_top_k_match_the_in_process_target(engine, target, tokenizer, tmp_path):
    rows = generate_from_server(engine.url, tokenizer, PROMPTS, tmp_path / "served", concurrency=3, **KW)
    local = generate_distillation_rows(target, tokenizer, PROMPTS, tmp_path / "local",
                                       **{**KW, "batch_size": 1})  # unpadded, like the server
    assert [r["response_ids"] for r in rows] == [r["response_ids"] for r in local]
    assert [r["finish_reason"] for r in rows] == [r["finish_reason"] for r in local]
    served, mine = load_topk(tmp_path / "served"), load_topk(tmp_path / "local")
    for i in served:
        assert torch.equal(served[i][0], mine[i][0])
        torch.testing.assert_close(served[i][1], mine[i][1], atol=2e-3, rtol=0)  # both stored in fp16
    assert json.loads((tmp_path / "served" / "settings.json").read_text())["model"].startswith(
        f"server:{engine.dialect}")


def test_a_killed_run_resumes_without_losing_or_duplicating_a_row(engine, tokenizer, tmp_path):
    straight = generate_from_server(engine.url, tokenizer, PROMPTS, tmp_path / "a", **KW)
    part = generate_from_server(engine.url, tokenizer, PROMPTS, tmp_path / "b", deadline=time.time() - 1, **KW)
    assert part == []  # stopped before the first batch
    generate_from_server(Server(engine.url), tokenizer, PROMPTS[:4], tmp_path / "c", **KW)  # another set: its own
    with pytest.raises(Exception, match="other settings"):
        generate_from_server(engine.url, tokenizer, PROMPTS, tmp_path / "c", **KW)
    first = generate_from_server(engine.url, tokenizer, PROMPTS[:4] + PROMPTS[4:], tmp_path / "b", **KW)
    assert [r["index"] for r in first] == list(range(len(PROMPTS))) and first == straight
    lines = (tmp_path / "b" / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(PROMPTS)


def test_server_faults_are_retried_then_named(engine, tokenizer, tmp_path):
    engine.fail_first = 2  # two 5xx, then answers: retried through
    assert len(generate_from_server(Server(engine.url, backoff=0.01), tokenizer, PROMPTS[:2], tmp_path / "a", **KW)) == 2
    engine.fail_first, engine.requests = 10**6, 0
    with pytest.raises(ServerError, match=f"{engine.url} did not answer POST .* after 3 tries .*HTTP 500"):
        generate_from_server(Server(engine.url, backoff=0.01, retries=2), tokenizer, PROMPTS[:2], tmp_path / "b", **KW)
    engine.fail_first, engine.delay = 0, 0.5
    with pytest.raises(ServerError, match="did not answer .*(timed out|Timeout)"):
        generate_from_server(Server(engine.url, timeout=0.1, retries=1, backoff=0.01), tokenizer, PROMPTS[:1],
                             tmp_path / "c", **KW)


def test_a_refused_connection_names_the_server(tokenizer, tmp_path):
    with pytest.raises(ServerError, match=r"http://127.0.0.1:9 .*is it running"):
        Server("http://127.0.0.1:9", engine="llama.cpp", retries=1, backoff=0.01).complete(
            [1, 2], max_new_tokens=2, temperature=0, top_p=1, seed=0, topk=2)


@pytest.mark.parametrize("drop", ["ids", "topk"])
def test_an_answer_without_ids_or_top_k_is_refused_with_what_is_missing(engine, tokenizer, tmp_path, drop):
    engine.drop = drop
    with pytest.raises(ValueError, match="token ids" if drop == "ids" else "top-k log-probabilities"):
        generate_from_server(engine.url, tokenizer, PROMPTS[:2], tmp_path / "x", **KW)


def test_a_server_with_another_tokenizer_is_refused_on_its_first_answer(engine, tokenizer, tmp_path):
    engine.garble = True
    with pytest.raises(ValueError, match="does not use the target's tokenizer"):
        generate_from_server(engine.url, tokenizer, PROMPTS, tmp_path / "x", **KW)
    assert not (tmp_path / "x" / "records.jsonl").exists()  # nothing written from a wrong server


def test_the_command_takes_the_answers_from_a_server(engine, tmp_path):
    from pathlib import Path

    from draftalign import cli

    tokenizer_folder = Path(__file__).resolve().parents[1] / "data" / "drafts" / "smollm2-135m-instruct-pretrained"
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "category": "qa", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    assert cli.main(["generate", "--target", str(tokenizer_folder), "--server", engine.url, "--prompts", str(prompts),
                     "--out", str(tmp_path / "out"), "--max-new-tokens", "5", "--temperature", "0", "--topk", "4",
                     "--concurrency", "2"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert len(rows) == len(PROMPTS) and all(r["response_ids"] for r in rows)
    assert "server" in json.loads((tmp_path / "out" / "provenance.json").read_text())["model"]
