"""`dermtrl serve`: a real server on 127.0.0.1 over the tiny model, called with the `openai` client and plain HTTP."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from dermtrl.agreement.calibration import Calibration
from dermtrl.cases.synthetic import generate_case
from dermtrl.dermeval.serve import (
    EXTRA_FIELD,
    FIRST_WINDOW_MS,
    WINDOW_SHARE,
    Batcher,
    DermEvalServer,
    ServeConfig,
)
from dermtrl.dimensions import DIMENSIONS

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def evaluator():
    from dermtrl.dermeval.evaluator import DermEval
    from dermtrl.tiny import tiny_llava_path

    return DermEval.from_pretrained(tiny_llava_path(), max_new_tokens=24)


@pytest.fixture(scope="module")
def cases():
    return [generate_case(i, seed=3) for i in range(4)]


def b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def post(url: str, payload, headers=None) -> tuple[int, dict, dict]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def get(url: str, headers=None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_openai_client_gets_the_critique_and_the_scores_in_the_extra_field(evaluator, cases):
    from openai import OpenAI

    calibration = Calibration(quantiles={d: {"0.9": 1.5} for d in DIMENSIONS}, n={d: 50 for d in DIMENSIONS})
    with DermEvalServer(evaluator, ServeConfig(model_name="dermeval-tiny"), calibration=calibration) as server:
        client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["dermeval-tiny"]
        case = cases[0]
        answer = client.chat.completions.create(model="dermeval-tiny", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(case["image"])}},
            {"type": "text", "text": case["narrative"]}]}])
    direct = evaluator.evaluate(case["image"], case["narrative"])
    record = answer.model_extra[EXTRA_FIELD]
    assert answer.choices[0].message.content == direct.critique
    assert record["text"] == direct.text
    assert list(record["scores"]) == list(DIMENSIONS)
    assert record["scores"] == direct.scores.to_dict()
    assert record["expected"] == direct.expected and record["spread"] == direct.spread
    assert set(record["intervals"]) == set(direct.expected)  # one interval per score the model wrote
    for dim, (low, high) in record["intervals"].items():
        assert low <= record["expected"][dim] <= high


def test_the_json_endpoint_batches_one_requests_items_and_answers_as_evaluate_batch(evaluator, cases):
    config = ServeConfig(max_batch_size=8, max_wait_ms=50)
    with DermEvalServer(evaluator, config) as server:
        root = server.base_url
        status, health = get(root.removesuffix("/v1") + "/health")
        assert status == 200 and health["status"] == "ok" and health["calibrated"] is False
        items = [{"image": b64(c["image"]), "narrative": c["narrative"]} for c in cases]
        status, body, _ = post(root + "/evaluate", {"items": items})
        assert server.batcher.batches == [len(cases)]  # the four items shared one generate batch
    assert status == 200 and len(body["results"]) == len(cases)
    direct = evaluator.evaluate_batch([c["image"] for c in cases], [c["narrative"] for c in cases])
    assert [r["text"] for r in body["results"]] == [d.text for d in direct]
    assert "intervals" not in body["results"][0]  # no calibration file: no intervals


def test_concurrent_requests_share_a_batch(evaluator, cases):
    config = ServeConfig(max_batch_size=8, max_wait_ms=1500)
    answers: list[int] = []
    with DermEvalServer(evaluator, config) as server:
        url = server.base_url + "/evaluate"

        def call(case):
            answers.append(post(url, {"items": [{"image": b64(case["image"]), "narrative": case["narrative"]}]})[0])

        threads = [threading.Thread(target=call, args=(c,)) for c in cases]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        batches = list(server.batcher.batches)
        health = get(server.base_url.removesuffix("/v1") + "/health")[1]
    assert health["window_ms"] == 1500.0  # a fixed window is reported as set
    assert answers == [200] * len(cases)
    assert sum(batches) == len(cases) and max(batches) > 1, batches


def test_a_full_queue_answers_429_and_a_slow_request_504_and_the_server_keeps_serving(evaluator, cases):
    items = [{"image": b64(c["image"]), "narrative": c["narrative"]} for c in cases[:3]]
    with DermEvalServer(evaluator, ServeConfig(max_queue=2)) as server:
        status, body, headers = post(server.base_url + "/evaluate", {"items": items})
        assert status == 429 and body["error"]["type"] == "rate_limit_error" and headers["Retry-After"] == "1"
        assert post(server.base_url + "/evaluate", {"items": items[:2]})[0] == 200
    with DermEvalServer(evaluator, ServeConfig(request_timeout_s=0.001)) as server:
        status, body, _ = post(server.base_url + "/evaluate", {"items": items[:1]})
        assert status == 504 and "0.001" in body["error"]["message"]
        assert get(server.base_url.removesuffix("/v1") + "/health")[0] == 200


def test_api_keys_come_from_the_named_environment_variable(evaluator, cases, monkeypatch):
    from openai import AuthenticationError, OpenAI

    monkeypatch.setenv("DERMEVAL_TEST_KEYS", "key-one, key-two")
    with DermEvalServer(evaluator, ServeConfig(api_key_env="DERMEVAL_TEST_KEYS")) as server:
        assert get(server.base_url + "/models")[0] == 401
        assert get(server.base_url + "/models", {"Authorization": "Bearer key-two"})[0] == 200
        status, body, _ = post(server.base_url + "/evaluate", {"items": []}, {"Authorization": "Bearer nope"})
        assert status == 401 and "nope" not in json.dumps(body)
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()
        assert OpenAI(base_url=server.base_url, api_key="key-one", max_retries=0).models.list().data


@pytest.mark.parametrize(("payload", "field"), [
    ({"items": [{"narrative": "x"}]}, "items[0].image"),
    ({"items": [{"image": "not base64!", "narrative": "x"}]}, "items[0].image"),
    ({"items": [{"image": base64.b64encode(b"GIF89a-broken").decode(), "narrative": "x"}]}, "items[0].image"),
    ({"items": [{"image": "file:///etc/passwd", "narrative": "x"}]}, "items[0].image"),
    ({"items": [{"image": "aGk=", "narrative": " "}]}, "items[0].narrative"),
    ({"messages": [{"role": "user", "content": "only text"}]}, "messages[0].content"),
])
def test_bad_requests_get_400_naming_the_field(evaluator, payload, field):
    path = "/chat/completions" if "messages" in payload else "/evaluate"
    with DermEvalServer(evaluator) as server:
        status, body, _ = post(server.base_url + path, payload)
        assert server.batcher.batches == []
    assert status == 400, body
    assert body["error"]["param"] == field and field in body["error"]["message"]


class _FixedTimeEvaluator:
    """An evaluator whose every generate call takes ``seconds`` (the batcher's window follows that time); its
    evaluations are the narratives, and it records every batch it ran."""

    batch_size = 1

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: list[list[str]] = []

    def evaluate_batch(self, images, narratives):
        time.sleep(self.seconds)
        self.calls.append(list(narratives))
        return list(narratives)


def test_the_window_is_a_tenth_of_one_generate_call_and_catches_what_arrives_within_it():
    evaluator = _FixedTimeEvaluator(1.0)
    batcher = Batcher(evaluator, ServeConfig(max_batch_size=4))
    try:
        assert batcher.generate_s is None and batcher.window_s == FIRST_WINDOW_MS / 1000
        assert batcher.submit([(None, "a")])[0].result(30) == "a"
        assert batcher.generate_s >= 1.0 and batcher.window_s == WINDOW_SHARE * batcher.generate_s  # >= 100 ms
        first = batcher.submit([(None, "b")])
        time.sleep(0.01)  # well within the window: "c" joins "b"'s batch
        second = batcher.submit([(None, "c")])
        assert [f.result(30) for f in first + second] == ["b", "c"]
    finally:
        batcher.close()
    assert evaluator.calls == [["a"], ["b", "c"]]
    assert batcher.windows[0] == FIRST_WINDOW_MS / 1000 and batcher.windows[1] >= WINDOW_SHARE * 1.0


def test_a_fixed_window_stays_fixed():
    batcher = Batcher(_FixedTimeEvaluator(0.05), ServeConfig(max_batch_size=4, max_wait_ms=0))
    try:
        batcher.submit([(None, "a")])[0].result(30)
        assert batcher.generate_s >= 0.05 and batcher.window_s == 0.0
    finally:
        batcher.close()


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="request_timeout_s"):
        ServeConfig(request_timeout_s=0)
    for wait in (-1, float("nan"), True):
        with pytest.raises(ValueError, match="max_wait_ms"):
            ServeConfig(max_wait_ms=wait)
    assert ServeConfig().max_wait_ms is None  # the window follows the generate time


def test_serve_is_a_cli_command_and_a_module():
    from dermtrl.cli.dispatch import build_parser

    args = build_parser().parse_args(["serve", "--model", "dermtrl:tiny", "--port", "0", "--max-batch-size", "1"])
    assert args.max_batch_size == 1 and args.host == "127.0.0.1"
    done = subprocess.run([sys.executable, "-m", "dermtrl.dermeval.serve", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--api-key-env" in done.stdout
    done = subprocess.run([sys.executable, "-m", "dermtrl.dermeval.serve", "--model", "dermtrl:tiny", "--api-key-env",
                           "DERMTRL_SURELY_UNSET_VAR"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "DERMTRL_SURELY_UNSET_VAR" in done.stderr
