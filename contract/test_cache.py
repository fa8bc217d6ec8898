"""The response cache (docs/caching.md) against the official OpenAI Python SDK, with
strict response validation: a cached answer, and a cached stream replayed as SSE, must
parse as the SDK's own types and say the same as the engine's first answer.

Run by crates/switchyard/tests/sdk_contract.rs against a gateway with
`--response-cache memory` in front of simulated engines.
"""

import os
import unittest

import openai
from openai import OpenAI

URL = os.environ["SWITCHYARD_URL"]
MODEL = os.environ["SWITCHYARD_MODEL"]

client = OpenAI(base_url=URL + "/v1", api_key="unused", _strict_response_validation=True)


def stream_chat(question, **extra):
    """Streams a deterministic chat request: (x-cache, text, chunks, finish reason, usage)."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": question}],
        temperature=0, max_tokens=16, stream=True, **extra)
    text, chunks, finish, usage = "", 0, None, None
    for chunk in raw.parse():
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return raw.headers.get("x-cache"), text, chunks, finish, usage


class Cache(unittest.TestCase):
    def test_a_stream_replayed_from_the_cache_reads_as_the_first(self):
        first = stream_chat("Tell me about freight yards.")
        second = stream_chat("Tell me about freight yards.")
        self.assertEqual(first[0], "MISS")
        self.assertEqual(second[0], "HIT")
        self.assertTrue(first[1])
        self.assertEqual(second[1], first[1], "the same text")
        self.assertEqual(second[2], first[2], "the same chunks")
        self.assertIsNotNone(second[3])
        self.assertIsNone(second[4], "no usage chunk unless asked")

    def test_a_replayed_stream_carries_usage_when_asked(self):
        stream_chat("Count the wagons.")
        cache, text, _, _, usage = stream_chat("Count the wagons.",
                                               stream_options={"include_usage": True})
        self.assertEqual(cache, "HIT")
        self.assertTrue(text)
        self.assertGreater(usage.completion_tokens, 0)

    def test_a_cached_completion_is_the_same_object(self):
        def ask():
            return client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "Name a shunting engine."}],
                max_tokens=8, temperature=0, user="sdk-contract")
        first, second = ask(), ask()
        self.assertEqual(first.headers.get("x-cache"), "MISS")
        self.assertEqual(second.headers.get("x-cache"), "HIT")
        a, b = first.parse(), second.parse()
        self.assertEqual(b.id, a.id)
        self.assertEqual(b.choices[0].message.content, a.choices[0].message.content)
        self.assertEqual(b.usage.total_tokens, a.usage.total_tokens)

    def test_legacy_completions_stream_from_the_cache(self):
        # A lenient client: vLLM-style /v1/completions chunks carry `finish_reason: null`
        # until the last, which the SDK's strict `Completion` model refuses (the
        # engine's own first stream as much as the replay).
        lenient = OpenAI(base_url=URL + "/v1", api_key="unused")

        def stream():
            raw = lenient.completions.with_raw_response.create(
                model=MODEL, prompt="A hump yard is", max_tokens=8, temperature=0, stream=True)
            return raw.headers.get("x-cache"), "".join(c.choices[0].text for c in raw.parse() if c.choices)
        first, second = stream(), stream()
        self.assertEqual((first[0], second[0]), ("MISS", "HIT"))
        self.assertEqual(second[1], first[1])

    def test_cache_control_through_the_sdk(self):
        def ask(cc):
            return client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "A sampled answer."}],
                max_tokens=8, temperature=0.9, extra_headers={"Cache-Control": cc})
        self.assertEqual(ask("max-age=300").headers.get("x-cache"), "MISS")
        self.assertEqual(ask("max-age=300").headers.get("x-cache"), "HIT")
        self.assertEqual(ask("no-cache").headers.get("x-cache"), "BYPASS")
        with self.assertRaises(openai.BadRequestError) as e:
            ask("max-age=soon")
        self.assertEqual(e.exception.status_code, 400)
        self.assertEqual(e.exception.code, "invalid_request")


if __name__ == "__main__":
    unittest.main()
