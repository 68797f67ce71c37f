"""Image content parts: forwarded untouched; malformed data URLs refused before the upstream."""

from __future__ import annotations

import base64

import pytest

PNG_1x1 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
    )
).decode()


def with_image(url, detail=None):
    image = {"url": url} if detail is None else {"url": url, "detail": detail}
    return {
        "model": "mcq",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in the picture? A, B, C or D."},
                    {"type": "image_url", "image_url": image},
                ],
            }
        ],
    }


@pytest.mark.parametrize(
    "url",
    [
        f"data:image/png;base64,{PNG_1x1}",
        "https://example.com/cat.jpg",
        "http://127.0.0.1:9/cat.png?x=1",
    ],
)
def test_image_parts_are_forwarded_untouched(client, double, url):
    body = with_image(url, detail="low")
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert double.last.json["messages"] == body["messages"]


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,not*base64!",
        "data:image/png;base64,QUJD=",  # bad padding
        "data:image/png;base64,",
        "data:text/plain;base64,QUJD",
        "data:image/png,rawbytes",
        "data:;base64,QUJD",
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "",
    ],
)
def test_malformed_image_urls_are_400_and_never_reach_upstream(client, double, url):
    r = client.post("/v1/chat/completions", json=with_image(url))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages[0].content[1].image_url"
    assert double.requests == []


def test_large_image_is_checked_off_the_loop_and_forwarded(client, double):
    payload = base64.b64encode(b"\x89PNG" + b"\0" * 400_000).decode()
    r = client.post("/v1/chat/completions", json=with_image(f"data:image/png;base64,{payload}"))
    assert r.status_code == 200
    assert double.last.json["messages"][0]["content"][1]["image_url"]["url"].endswith(payload[-20:])
