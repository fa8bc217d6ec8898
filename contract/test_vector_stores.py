"""Vector Stores and the file_search tool against the official OpenAI Python SDK, with
strict response validation: every object the gateway returns must parse as the SDK's
own types.

Run by crates/switchyard/tests/sdk_contract.rs against a gateway in front of simulated
engines, whose embeddings fill the stores (SQLite + sqlite-vec, then PostgreSQL +
pgvector): SWITCHYARD_URL is the gateway's base URL, SWITCHYARD_MODEL the model (it
chats and embeds). The simulated model calls the offered search function with the
question and quotes result [1] in its answer.
"""

import os
import unittest

import openai
from openai import OpenAI

URL = os.environ["SWITCHYARD_URL"]
MODEL = os.environ["SWITCHYARD_MODEL"]

client = OpenAI(base_url=URL + "/v1", api_key="unused", _strict_response_validation=True)

DOCS = {
    "glaciers.md": "Glaciers carve deep valleys as the ice slowly moves downhill. "
                   "Moraines are the rocks a glacier leaves behind.",
    "bees.txt": "Honey bees dance to tell the hive where the flowers are. "
                "A waggle dance points the way to nectar.",
    "trains.html": "<html><body><p>Night trains carry sleeping passengers between "
                   "distant cities.</p></body></html>",
}
POLL = 20  # ms between the SDK's polls


def upload(name):
    return client.files.create(file=(name, DOCS[name].encode()), purpose="assistants")


class VectorStores(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.files = {name: upload(name) for name in DOCS}
        cls.store = client.vector_stores.create(
            name="nature", metadata={"team": "docs"},
            file_ids=[cls.files["glaciers.md"].id, cls.files["bees.txt"].id])
        for f in cls.files.values():
            if f.filename != "trains.html":
                client.vector_stores.files.poll(f.id, vector_store_id=cls.store.id,
                                                poll_interval_ms=POLL)

    def test_store_lifecycle(self):
        vs = client.vector_stores.retrieve(self.store.id)
        self.assertEqual((vs.object, vs.name, vs.status), ("vector_store", "nature", "completed"))
        self.assertEqual(vs.file_counts.completed, 2)
        self.assertEqual(vs.file_counts.total, 2)
        self.assertGreater(vs.usage_bytes, 0)
        self.assertEqual(vs.metadata, {"team": "docs"})
        renamed = client.vector_stores.update(self.store.id, name="outdoors",
                                              expires_after={"anchor": "last_active_at", "days": 7})
        self.assertEqual(renamed.name, "outdoors")
        self.assertEqual(renamed.expires_after.days, 7)
        self.assertIsNotNone(renamed.expires_at)
        self.assertIn(self.store.id, [v.id for v in client.vector_stores.list(limit=100)])
        temp = client.vector_stores.create(name="temp")
        deleted = client.vector_stores.delete(temp.id)
        self.assertTrue(deleted.deleted)
        with self.assertRaises(openai.NotFoundError):
            client.vector_stores.retrieve(temp.id)

    def test_files_in_a_store(self):
        vs = client.vector_stores.create(name="files")
        f = client.vector_stores.files.create_and_poll(
            vector_store_id=vs.id, file_id=self.files["trains.html"].id,
            attributes={"kind": "travel", "year": 2024},
            chunking_strategy={"type": "static", "static": {
                "max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50}},
            poll_interval_ms=POLL)
        self.assertEqual((f.object, f.status, f.vector_store_id),
                         ("vector_store.file", "completed", vs.id))
        self.assertIsNone(f.last_error)
        self.assertEqual(f.attributes, {"kind": "travel", "year": 2024})
        self.assertEqual(f.chunking_strategy.static.max_chunk_size_tokens, 200)
        listed = client.vector_stores.files.list(vector_store_id=vs.id, filter="completed")
        self.assertEqual([x.id for x in listed], [f.id])
        content = list(client.vector_stores.files.content(f.id, vector_store_id=vs.id))
        self.assertIn("Night trains", content[0].text)
        self.assertNotIn("<p>", content[0].text)
        updated = client.vector_stores.files.update(f.id, vector_store_id=vs.id,
                                                    attributes={"kind": "rail"})
        self.assertEqual(updated.attributes, {"kind": "rail"})
        gone = client.vector_stores.files.delete(f.id, vector_store_id=vs.id)
        self.assertTrue(gone.deleted)
        with self.assertRaises(openai.NotFoundError):
            client.vector_stores.files.retrieve(f.id, vector_store_id=vs.id)

    def test_batches(self):
        vs = client.vector_stores.create(name="batches")
        ids = [self.files["bees.txt"].id, self.files["trains.html"].id]
        batch = client.vector_stores.file_batches.create_and_poll(
            vector_store_id=vs.id, file_ids=ids, attributes={"source": "notes"},
            poll_interval_ms=POLL)
        self.assertEqual((batch.object, batch.status), ("vector_store.files_batch", "completed"))
        self.assertEqual(batch.file_counts.completed, 2)
        files = client.vector_stores.file_batches.list_files(batch.id, vector_store_id=vs.id)
        self.assertEqual(sorted(f.id for f in files), sorted(ids))
        self.assertTrue(all(f.attributes == {"source": "notes"} for f in files))
        other = client.vector_stores.file_batches.create(vector_store_id=vs.id, files=[
            {"file_id": self.files["glaciers.md"].id, "attributes": {"n": 1}}])
        cancelled = client.vector_stores.file_batches.cancel(other.id, vector_store_id=vs.id)
        self.assertIn(cancelled.status, ("cancelled", "completed"))
        again = client.vector_stores.file_batches.retrieve(other.id, vector_store_id=vs.id)
        self.assertEqual(again.id, other.id)

    def test_search_with_filters(self):
        page = client.vector_stores.search(self.store.id, query="where are the flowers?",
                                           max_num_results=2)
        results = list(page)
        self.assertEqual(results[0].file_id, self.files["bees.txt"].id)
        self.assertEqual(results[0].filename, "bees.txt")
        self.assertEqual(results[0].content[0].type, "text")
        self.assertTrue(0 < results[0].score <= 1)
        client.vector_stores.files.update(self.files["glaciers.md"].id,
                                          vector_store_id=self.store.id,
                                          attributes={"topic": "ice", "pages": 3})
        only_ice = list(client.vector_stores.search(
            self.store.id, query="flowers",
            filters={"type": "and", "filters": [
                {"type": "eq", "key": "topic", "value": "ice"},
                {"type": "gte", "key": "pages", "value": 2}]}))
        self.assertEqual([r.file_id for r in only_ice], [self.files["glaciers.md"].id])
        several = list(client.vector_stores.search(
            self.store.id, query=["glacier valleys", "waggle dance"], rewrite_query=True,
            ranking_options={"ranker": "auto", "score_threshold": 0.0}))
        self.assertEqual(len({r.file_id for r in several}), 2)

    def test_bad_input_names_its_param(self):
        cases = [
            (lambda: client.vector_stores.search(self.store.id, query="x", max_num_results=51),
             openai.BadRequestError, "max_num_results"),
            (lambda: client.vector_stores.search(self.store.id, query="x",
                                                 filters={"type": "eq", "key": "a"}),
             openai.BadRequestError, "filters.value"),
            (lambda: client.vector_stores.search("vs_missing", query="x"),
             openai.NotFoundError, "vector_store_id"),
            (lambda: client.vector_stores.files.create(vector_store_id=self.store.id,
                                                       file_id="file-missing"),
             openai.NotFoundError, "file_id"),
            (lambda: client.vector_stores.create(expires_after={"anchor": "last_active_at",
                                                                "days": 0}),
             openai.BadRequestError, "expires_after.days"),
            (lambda: client.responses.create(model=MODEL, input="hi", tools=[
                {"type": "file_search", "vector_store_ids": ["vs_missing"]}]),
             openai.NotFoundError, "tools[0].vector_store_ids"),
        ]
        for call, error, param in cases:
            with self.assertRaises(error) as e:
                call()
            self.assertEqual(e.exception.body["param"], param)

    def test_a_corrupt_pdf_fails_and_says_why(self):
        bad = client.files.create(file=("broken.pdf", b"%PDF-1.4 garbage"), purpose="assistants")
        vs = client.vector_stores.create(name="pdf")
        f = client.vector_stores.files.create_and_poll(vector_store_id=vs.id, file_id=bad.id,
                                                       poll_interval_ms=POLL)
        self.assertEqual(f.status, "failed")
        self.assertEqual(f.last_error.code, "invalid_file")
        self.assertEqual(client.vector_stores.retrieve(vs.id).file_counts.failed, 1)


class FileSearch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bees = upload("bees.txt")
        cls.store = client.vector_stores.create(name="search", file_ids=[cls.bees.id])
        client.vector_stores.files.poll(cls.bees.id, vector_store_id=cls.store.id,
                                        poll_interval_ms=POLL)
        cls.tool = {"type": "file_search", "vector_store_ids": [cls.store.id],
                    "max_num_results": 3}

    def test_answer_with_results_and_citations(self):
        r = client.responses.create(model=MODEL, input="Where are the flowers?",
                                    tools=[self.tool], include=["file_search_call.results"])
        self.assertEqual(r.status, "completed")
        call, message = r.output[0], r.output[1]
        self.assertEqual(call.type, "file_search_call")
        self.assertEqual(call.status, "completed")
        self.assertEqual(call.queries, ["Where are the flowers?"])
        self.assertEqual(call.results[0].file_id, self.bees.id)
        self.assertIn("Honey bees", call.results[0].text)
        text = message.content[0]
        self.assertIn("Honey bees dance", text.text)
        self.assertEqual(text.annotations[0].type, "file_citation")
        self.assertEqual(text.annotations[0].file_id, self.bees.id)
        self.assertEqual(text.annotations[0].filename, "bees.txt")
        self.assertEqual(text.text[text.annotations[0].index:][:3], "[1]")
        self.assertEqual(r.tools[0].type, "file_search")
        stored = client.responses.retrieve(r.id)
        self.assertEqual(stored.output[0].type, "file_search_call")

    def test_results_only_when_included_and_forced_search(self):
        r = client.responses.create(model=MODEL, input="hello", tools=[self.tool],
                                    tool_choice={"type": "file_search"})
        self.assertEqual(r.output[0].type, "file_search_call")
        self.assertIsNone(r.output[0].results)
        self.assertEqual(r.tool_choice.type, "file_search")

    def test_streamed_file_search_events(self):
        names = []
        with client.responses.stream(model=MODEL, input="Where are the flowers?",
                                     tools=[self.tool]) as stream:
            for event in stream:
                names.append(event.type)
            final = stream.get_final_response()
        for expected in ["response.file_search_call.in_progress",
                         "response.file_search_call.searching",
                         "response.file_search_call.completed",
                         "response.output_text.annotation.added"]:
            self.assertIn(expected, names)
        self.assertLess(names.index("response.file_search_call.completed"),
                        names.index("response.output_text.delta"))
        self.assertEqual(final.output[0].type, "file_search_call")
        self.assertEqual(final.output[1].content[0].annotations[0].file_id, self.bees.id)


if __name__ == "__main__":
    unittest.main(verbosity=2)
