"""The Responses API against the official OpenAI Python SDK, with strict response
validation: every object the gateway returns must parse as the SDK's own types.

Run by crates/switchyard/tests/sdk_contract.rs against a gateway in front of simulated
engines: SWITCHYARD_URL is the gateway's base URL, SWITCHYARD_MODEL the model, and
SWITCHYARD_HELD_MODEL a model whose engine holds every answer after its first events
(a response on it runs until it is cancelled).
"""

import json
import os
import time
import unittest

import openai
from openai import OpenAI

URL = os.environ["SWITCHYARD_URL"]
MODEL = os.environ["SWITCHYARD_MODEL"]
HELD = os.environ["SWITCHYARD_HELD_MODEL"]

client = OpenAI(base_url=URL + "/v1", api_key="unused", _strict_response_validation=True)

TOOLS = [{
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False},
    "strict": True,
}]


class Responses(unittest.TestCase):
    def test_create_retrieve_list_delete(self):
        r = client.responses.create(model=MODEL, input="Hello there", instructions="Be brief.",
                                    max_output_tokens=16, metadata={"suite": "sdk"})
        self.assertEqual(r.object, "response")
        self.assertIn(r.status, ("completed", "incomplete"))
        self.assertTrue(r.output_text)
        self.assertEqual(r.metadata, {"suite": "sdk"})
        self.assertEqual(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens)
        got = client.responses.retrieve(r.id)
        self.assertEqual(got.output_text, r.output_text)
        items = client.responses.input_items.list(r.id)
        self.assertEqual(items.data[0].type, "message")
        deleted = client.responses.delete(r.id)
        self.assertIsNone(deleted)
        with self.assertRaises(openai.NotFoundError):
            client.responses.retrieve(r.id)

    def test_input_items_paginate(self):
        r = client.responses.create(model=MODEL, max_output_tokens=16, input=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "user", "content": "three"},
        ])
        page = client.responses.input_items.list(r.id, limit=2, order="asc")
        self.assertTrue(page.has_more)
        self.assertEqual(len(page.data), 2)
        texts = [i.content[0].text for i in client.responses.input_items.list(r.id, order="asc")]
        self.assertEqual(texts, ["one", "two", "three"])
        after = client.responses.input_items.list(r.id, order="asc", after=page.data[-1].id)
        self.assertEqual([i.content[0].text for i in after.data], ["three"])

    def test_chaining_and_its_errors(self):
        first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=16)
        second = client.responses.create(model=MODEL, input="What is my name?",
                                         previous_response_id=first.id, max_output_tokens=16)
        self.assertEqual(second.previous_response_id, first.id)
        with self.assertRaises(openai.NotFoundError) as e:
            client.responses.create(model=MODEL, input="x", previous_response_id="resp_nope")
        self.assertEqual(e.exception.body["param"], "previous_response_id")
        with self.assertRaises(openai.BadRequestError) as e:
            client.responses.create(model=MODEL, input=[{"role": "robot", "content": "x"}])
        self.assertEqual(e.exception.body["param"], "input[0].role")

    def test_function_tool_round_trip(self):
        r = client.responses.create(model=MODEL, input="What is the weather in Oslo?", tools=TOOLS)
        calls = [o for o in r.output if o.type == "function_call"]
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0].name, "get_weather")
        args = json.loads(calls[0].arguments)
        self.assertIn("city", args)
        answer = client.responses.create(
            model=MODEL, tools=TOOLS, previous_response_id=r.id, max_output_tokens=16,
            input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                    "output": json.dumps({"temperature": 12})}])
        self.assertTrue(answer.output_text)

    def test_streaming_with_the_sdk_helper(self):
        deltas = []
        # Without a token cap, so that it ends `completed` (the helper's final response).
        with client.responses.stream(model=MODEL, input="Tell me a story") as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
            final = stream.get_final_response()
        self.assertEqual("".join(deltas), final.output_text)
        stored = client.responses.retrieve(final.id)
        self.assertEqual(stored.output_text, final.output_text)

    def test_raw_stream_events(self):
        events = list(client.responses.create(model=MODEL, input="Hi", stream=True,
                                              max_output_tokens=16))
        self.assertEqual(events[0].type, "response.created")
        self.assertIn(events[-1].type, ("response.completed", "response.incomplete"))
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))

    def test_streamed_tool_call(self):
        with client.responses.stream(model=MODEL, input="Weather in Oslo?", tools=TOOLS) as stream:
            final = stream.get_final_response()
        calls = [o for o in final.output if o.type == "function_call"]
        self.assertEqual(calls[0].name, "get_weather")

    def test_input_tokens_count_what_a_response_would_send(self):
        first = client.responses.create(model=MODEL, input="Hello there", max_output_tokens=16)
        counted = client.responses.input_tokens.count(
            model=MODEL, input="And now?", previous_response_id=first.id)
        self.assertEqual(counted.object, "response.input_tokens")
        sent = client.responses.create(model=MODEL, input="And now?",
                                       previous_response_id=first.id, max_output_tokens=16)
        self.assertEqual(counted.input_tokens, sent.usage.input_tokens)
        with self.assertRaises(openai.NotFoundError) as e:
            client.responses.input_tokens.count(model=MODEL, input="x",
                                                 previous_response_id="resp_missing")
        self.assertEqual(e.exception.body["param"], "previous_response_id")


class Conversations(unittest.TestCase):
    def test_conversation_lifecycle_and_items(self):
        conv = client.conversations.create(metadata={"topic": "demo"},
                                           items=[{"type": "message", "role": "user",
                                                   "content": "Remember: blue."}])
        self.assertEqual(conv.object, "conversation")
        self.assertEqual(conv.metadata, {"topic": "demo"})
        self.assertEqual(client.conversations.retrieve(conv.id).id, conv.id)
        updated = client.conversations.update(conv.id, metadata={"topic": "changed"})
        self.assertEqual(updated.metadata, {"topic": "changed"})

        # A response in the conversation reads it and appends to it.
        r = client.responses.create(model=MODEL, input="What colour?", conversation=conv.id,
                                    max_output_tokens=16)
        self.assertEqual(r.conversation.id, conv.id)
        items = client.conversations.items.list(conv.id, order="asc")
        self.assertEqual([i.role for i in items.data], ["user", "user", "assistant"])
        self.assertFalse(items.has_more)

        added = client.conversations.items.create(conv.id, items=[
            {"type": "message", "role": "user", "content": "One more thing."}])
        item_id = added.data[0].id
        self.assertEqual(client.conversations.items.retrieve(item_id, conversation_id=conv.id).id,
                         item_id)
        after = client.conversations.items.delete(item_id, conversation_id=conv.id)
        self.assertEqual(after.id, conv.id)
        with self.assertRaises(openai.NotFoundError):
            client.conversations.items.retrieve(item_id, conversation_id=conv.id)

        page = client.conversations.items.list(conv.id, limit=1)
        self.assertEqual(len(page.data), 1)
        self.assertTrue(page.has_more)

        deleted = client.conversations.delete(conv.id)
        self.assertTrue(deleted.deleted)
        with self.assertRaises(openai.NotFoundError):
            client.conversations.retrieve(conv.id)

    def test_bad_conversation_input(self):
        with self.assertRaises(openai.BadRequestError) as e:
            client.conversations.create(items=[{"type": "message", "role": "robot", "content": "x"}])
        self.assertEqual(e.exception.body["param"], "items[0].role")
        with self.assertRaises(openai.NotFoundError):
            client.responses.create(model=MODEL, input="x", conversation="conv_missing")

class Background(unittest.TestCase):
    def settled(self, response_id):
        # Polled until it leaves queued/in_progress (the Rust test bounds the run).
        while True:
            r = client.responses.retrieve(response_id)
            if r.status not in ("queued", "in_progress"):
                return r
            time.sleep(0.05)

    def test_background_runs_and_is_polled(self):
        r = client.responses.create(model=MODEL, input="Tell me a story", background=True)
        self.assertEqual(r.status, "queued")
        self.assertTrue(r.background)
        done = self.settled(r.id)
        self.assertEqual(done.status, "completed")
        self.assertTrue(done.output_text)

    def test_cancel_stops_a_running_response(self):
        r = client.responses.create(model=HELD, input="Never ends", background=True)
        cancelled = client.responses.cancel(r.id)
        self.assertEqual(cancelled.status, "cancelled")
        self.assertEqual(client.responses.retrieve(r.id).status, "cancelled")
        # Cancelling again answers the cancelled response.
        self.assertEqual(client.responses.cancel(r.id).status, "cancelled")

    def test_only_background_responses_cancel_or_stream_again(self):
        r = client.responses.create(model=MODEL, input="x", max_output_tokens=16)
        with self.assertRaises(openai.BadRequestError) as e:
            client.responses.cancel(r.id)
        self.assertEqual(e.exception.body["param"], "response_id")
        with self.assertRaises(openai.BadRequestError) as e:
            list(client.responses.retrieve(r.id, stream=True))
        self.assertEqual(e.exception.body["param"], "stream")
        with self.assertRaises(openai.NotFoundError):
            client.responses.cancel("resp_missing")

    def test_stream_resumes_after_a_sequence_number(self):
        stream = client.responses.create(model=MODEL, input="Tell me a story",
                                         background=True, stream=True)
        first = []
        for event in stream:
            first.append(event)
            if len(first) == 3:
                break
        stream.close()
        self.assertEqual([e.type for e in first[:2]], ["response.created", "response.queued"])
        rest = list(client.responses.retrieve(first[0].response.id, stream=True,
                                              starting_after=2))
        self.assertEqual(rest[0].sequence_number, 3)
        self.assertEqual([e.sequence_number for e in rest], list(range(3, 3 + len(rest))))
        self.assertEqual(rest[-1].type, "response.completed")
        # The SDK's helper over the whole stored stream gives the stored response.
        with client.responses.stream(response_id=first[0].response.id) as again:
            final = again.get_final_response()
        self.assertEqual(final.output_text,
                         client.responses.retrieve(first[0].response.id).output_text)


class Files(unittest.TestCase):
    def test_upload_list_retrieve_content_delete(self):
        data = "Switchyard keeps files. Ünïcödé too.\n".encode() * 200
        f = client.files.create(file=("notes.txt", data), purpose="assistants")
        self.assertEqual((f.object, f.bytes, f.filename, f.purpose),
                         ("file", len(data), "notes.txt", "assistants"))
        self.assertIsNone(f.expires_at)
        self.assertEqual(client.files.retrieve(f.id).id, f.id)
        self.assertEqual(client.files.content(f.id).read(), data)
        self.assertIn(f.id, [x.id for x in client.files.list(purpose="assistants")])
        deleted = client.files.delete(f.id)
        self.assertTrue(deleted.deleted)
        with self.assertRaises(openai.NotFoundError):
            client.files.retrieve(f.id)
        with self.assertRaises(openai.NotFoundError):
            client.files.content(f.id)

    def test_list_pages_through_every_file(self):
        ids = [client.files.create(file=(f"page{i}.md", f"# Page {i}".encode()),
                                   purpose="user_data").id for i in range(3)]
        seen = [f.id for f in client.files.list(purpose="user_data", limit=1)]
        for i in ids:
            self.assertIn(i, seen)
        newest = client.files.list(purpose="user_data", limit=1, order="desc")
        self.assertEqual(newest.data[0].id, ids[-1])
        self.assertTrue(newest.has_more)

    def test_expiry(self):
        f = client.files.create(file=("a.md", b"# hi"), purpose="user_data",
                                expires_after={"anchor": "created_at", "seconds": 3600})
        self.assertEqual(f.expires_at, f.created_at + 3600)

    def test_a_file_as_response_input(self):
        f = client.files.create(file=("facts.md", b"# Facts\nThe sky is green here.\n" * 20),
                                purpose="user_data")
        content = [{"type": "input_text", "text": "What colour is the sky?"},
                   {"type": "input_file", "file_id": f.id}]
        with_file = client.responses.input_tokens.count(
            model=MODEL, input=[{"role": "user", "content": content}])
        without = client.responses.input_tokens.count(
            model=MODEL, input=[{"role": "user", "content": content[:1]}])
        self.assertGreater(with_file.input_tokens, without.input_tokens + 50)
        r = client.responses.create(model=MODEL, input=[{"role": "user", "content": content}],
                                    max_output_tokens=16)
        self.assertEqual(r.usage.input_tokens, with_file.input_tokens)
        items = client.responses.input_items.list(r.id)
        self.assertEqual(items.data[0].content[1].type, "input_file")
        with self.assertRaises(openai.NotFoundError) as e:
            client.responses.create(model=MODEL, input=[{"role": "user", "content": [
                {"type": "input_file", "file_id": "file-missing"}]}])
        self.assertEqual(e.exception.body["param"], "input[0].content[0].file_id")

    def test_bad_uploads_name_their_param(self):
        cases = [
            (("model.bin", b"\x00\x01"), "assistants", "file", "supported"),
            (("empty.txt", b""), "assistants", "file", "empty"),
            (("latin.txt", b"caf\xe9"), "assistants", "file", "UTF-8"),
            (("ok.txt", b"fine"), "nope", "purpose", "purpose"),
        ]
        for file, purpose, param, words in cases:
            with self.assertRaises(openai.BadRequestError) as e:
                client.files.create(file=file, purpose=purpose)
            self.assertEqual(e.exception.body["param"], param, file)
            self.assertIn(words, e.exception.body["message"])
        with self.assertRaises(openai.BadRequestError) as e:
            client.files.create(file=("a.md", b"x"), purpose="user_data",
                                expires_after={"anchor": "created_at", "seconds": 5})
        self.assertEqual(e.exception.body["param"], "expires_after.seconds")
        with self.assertRaises(openai.NotFoundError):
            client.files.retrieve("file-missing")


if __name__ == "__main__":
    unittest.main(verbosity=2)
