"""String options on the real engine, through the gateway: both scorings (issue 20).

Country -> capital questions whose options share prefixes ("San José" / "San Juan", "Port
Louis" / "Port Moresby", "Mexico" / "Mexico City"), plus the "Q." trap. For every answer, an
independent reading of the text decides which option it names; the gateway must score exactly
that option (probabilities summing to 1), and nothing when it names none. The likelihood
scoring is checked against the engine's own echo logprobs of each option's text.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest

from service.datasets.countries import normalize
from tests.integration.conftest import ENGINE_TEST_TIMEOUT_S, RunningEngine, gateway_client

pytestmark = [pytest.mark.engine, pytest.mark.timeout(ENGINE_TEST_TIMEOUT_S)]

SHOTS = (
    "Q: What is the capital of Germany?\nA: Berlin\n"
    "Q: What is the capital of Japan?\nA: Tokyo\n"
    "Q: What is the capital of Italy?\nA: Rome\n"
)
QUESTIONS = [
    ("Colombia", ["Bogotá", "Lima", "Quito"]),
    ("Costa Rica", ["San Juan", "San José", "San Salvador"]),
    ("Puerto Rico", ["San Juan", "San José", "Santo Domingo"]),
    ("Papua New Guinea", ["Port Louis", "Port Moresby", "Port Vila"]),
    ("Mexico", ["Mexico", "Mexico City", "Guadalajara"]),
    ("Bolivia", ["La Paz", "La Plata", "Lima"]),
    ("Paraguay", ["Asunción", "Buenos Aires", "Montevideo"]),
    ("Guatemala", ["Guatemala City", "San Juan", "San Salvador"]),
    ("Iceland", ["Reykjavík", "Oslo", "Helsinki"]),
    ("Ecuador", ["Quito", "Lima", "Bogotá"]),
]


@pytest.fixture(scope="module")
def gw(engine: RunningEngine, tmp_path_factory) -> Iterator[httpx.Client]:
    db = tmp_path_factory.mktemp("gw-options") / "calib.db"
    with gateway_client(
        engine.base_url, db, upstream_timeout_s=120.0, client_timeout_s=180.0
    ) as client:
        yield client


def named(text: str, options: list[str]) -> list[str]:
    """Independent reading: options whose normalized text starts the first line (longest)."""
    line = normalize(text.strip().splitlines()[0] if text.strip() else "")
    hits = [o for o in options if line == normalize(o) or line.startswith(normalize(o) + " ")]
    return [
        o for o in hits if not any(o != h and normalize(h).startswith(normalize(o)) for h in hits)
    ]


def ask(gw: httpx.Client, model: str, prompt: str, options: list[str], scoring: str, **extra):
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": 8,
        "temperature": 0,
        "stop": ["\n"],
        "calibration": {"options": options, "scoring": scoring},
        **extra,
    }
    r = gw.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("scoring", ["path", "likelihood"])
def test_every_answer_naming_one_option_is_scored_as_it(
    gw: httpx.Client, engine: RunningEngine, scoring: str
) -> None:
    scored = 0
    for country, options in QUESTIONS:
        prompt = f"{SHOTS}Q: What is the capital of {country}?\nA:"
        body = ask(gw, engine.model, prompt, options, scoring)
        text = body["choices"][0]["text"]
        cal = body["calibration"]
        names = named(text, options)
        if len(names) == 1:
            scored += 1
            assert cal["answer"] == names[0], (country, text)
            assert cal["scoring"] == scoring
            assert sum(cal["option_probs"].values()) == pytest.approx(1.0)
            assert cal["confidence"] == pytest.approx(cal["option_probs"][names[0]])
        elif not names:
            assert cal["answer"] is None, (country, text)
            assert cal["confidence"] is None
            assert cal["reason"] == "answer_names_no_option"
    assert scored >= len(QUESTIONS) // 2  # the model knows most of these capitals


def test_the_next_question_is_not_read_as_an_answer(gw: httpx.Client, engine: RunningEngine):
    prompt = "Q. What is the capital of Ecuador?\nA. Quito\n"
    body = ask(gw, engine.model, prompt, ["Quito", "Lima", "Bogota"], "path", stop=None)
    text = body["choices"][0]["text"]
    assert not named(text, ["Quito", "Lima", "Bogota"]), text
    assert body["calibration"]["answer"] is None
    assert body["calibration"]["reason"] == "answer_names_no_option"


def echo_loglikelihood(engine: RunningEngine, prompt: str, option: str) -> float:
    """The engine's own logprobs of ' ' + option after the prompt (echo, legacy shape)."""
    body = {
        "model": engine.model,
        "prompt": prompt + " " + option,
        "max_tokens": 1,
        "echo": True,
        "logprobs": 0,
        "temperature": 0,
    }
    r = httpx.post(f"{engine.base_url}/completions", json=body, timeout=120)
    r.raise_for_status()
    data = r.json()
    lp = data["choices"][0]["logprobs"]
    n_prompt = data["usage"]["prompt_tokens"]
    tokens, values = lp["tokens"][:n_prompt], lp["token_logprobs"][:n_prompt]
    text, total = "", 0.0
    for token, value in zip(reversed(tokens), reversed(values), strict=True):
        text, total = token + text, total + value
        if text == " " + option:
            return total
    raise AssertionError(f"the echoed prompt does not end with {option!r}")


def test_likelihood_scoring_matches_the_engines_echo_logprobs(
    gw: httpx.Client, engine: RunningEngine
) -> None:
    options = ["Mexico", "Mexico City", "Guadalajara"]
    prompt = f"{SHOTS}Q: What is the capital of Mexico?\nA:"
    cal = ask(gw, engine.model, prompt, options, "likelihood")["calibration"]
    assert cal["scoring"] == "likelihood"
    lls = {o: echo_loglikelihood(engine, prompt, o) for o in options}
    # "Mexico" keeps only the mass that does not go on into "Mexico City".
    lls["Mexico"] = math.log(math.exp(lls["Mexico"]) - math.exp(lls["Mexico City"]))
    total = sum(math.exp(v) for v in lls.values())
    for option in options:
        assert cal["option_probs"][option] == pytest.approx(math.exp(lls[option]) / total, rel=1e-3)


def test_likelihood_scoring_in_chat(gw: httpx.Client, engine: RunningEngine) -> None:
    messages = [
        {"role": "user", "content": "What is the capital of Germany? Answer with the city."},
        {"role": "assistant", "content": "Berlin"},
        {"role": "user", "content": "What is the capital of Colombia? Answer with the city."},
    ]
    options = ["Bogotá", "Lima", "Quito"]
    body = {"model": engine.model, "messages": messages, "max_tokens": 6, "temperature": 0,
            "calibration": {"options": options, "scoring": "likelihood"}}  # fmt: skip
    r = gw.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    cal = data["calibration"]
    names = named(data["choices"][0]["message"]["content"] or "", options)
    if len(names) == 1:
        assert cal["answer"] == names[0]
        assert cal["scoring"] == "likelihood"
        assert sum(cal["option_probs"].values()) == pytest.approx(1.0)
    elif not names:
        assert cal["answer"] is None


def test_chat_likelihoods_from_the_real_engine_rank_the_capital_first(
    engine: RunningEngine,
) -> None:
    import asyncio
    import json as jsonlib

    from service.proxy import Upstream, option_likelihoods
    from service.settings import Settings

    messages = [
        {"role": "user", "content": "What is the capital of Germany? Answer with the city."},
        {"role": "assistant", "content": "Berlin"},
        {"role": "user", "content": "What is the capital of Colombia? Answer with the city."},
    ]
    content = jsonlib.dumps({"model": engine.model, "messages": messages}).encode()

    async def score() -> list[float] | None:
        upstream = Upstream(Settings(upstream=engine.base_url))
        try:
            return await option_likelihoods(
                upstream, None, content, False, ["Bogotá", "Xylophone", "Tokyo"]
            )
        finally:
            await upstream.aclose()

    lls = asyncio.run(score())
    assert lls is not None
    assert all(math.isfinite(v) and v < 0 for v in lls)
    assert lls[0] > lls[1]  # the capital over a word that is no city
    assert lls[0] > lls[2]  # and over another capital
