"""Server-side tools (web_search) against the official OpenAI Python SDK, with strict
response validation: every object the gateway returns must parse as the SDK's own types.

Run by crates/switchyard/tests/sdk_contract.rs against a gateway in front of simulated
engines (the simulated model calls the offered web_search function with the question
and quotes result [1]), whose web search provider is a fake search service on
loopback: its first page is SWITCHYARD_SEARCH_FIRST_URL, with the snippet "Puffins
nest in burrows on grassy cliff tops."
"""

import os
import unittest

import openai
from openai import OpenAI

URL = os.environ["SWITCHYARD_URL"]
MODEL = os.environ["SWITCHYARD_MODEL"]
FIRST = os.environ["SWITCHYARD_SEARCH_FIRST_URL"]

client = OpenAI(base_url=URL + "/v1", api_key="unused", _strict_response_validation=True)

QUESTION = "Where do puffins nest?"


class WebSearch(unittest.TestCase):
    def test_answer_with_sources_and_url_citation(self):
        r = client.responses.create(model=MODEL, input=QUESTION,
                                    tools=[{"type": "web_search", "search_context_size": "low"}],
                                    include=["web_search_call.action.sources"])
        self.assertEqual(r.status, "completed")
        call, message = r.output[0], r.output[1]
        self.assertEqual(call.type, "web_search_call")
        self.assertEqual(call.status, "completed")
        self.assertEqual(call.action.type, "search")
        self.assertEqual(call.action.query, QUESTION)
        self.assertEqual(call.action.sources[0].url, FIRST)
        text = message.content[0]
        self.assertIn("Puffins nest in burrows", text.text)
        ann = text.annotations[0]
        self.assertEqual(ann.type, "url_citation")
        self.assertEqual(ann.url, FIRST)
        self.assertEqual(text.text[ann.start_index:ann.end_index], "[1]")
        self.assertEqual(r.tools[0].type, "web_search")
        self.assertEqual(r.tools[0].search_context_size, "low")
        # Usage covers both engine calls of the response.
        self.assertGreater(r.usage.input_tokens, 0)
        # Without include, no sources; the chain goes on after a search.
        again = client.responses.create(model=MODEL, input="And gannets?", previous_response_id=r.id,
                                        tools=[{"type": "web_search"}], tool_choice="none")
        self.assertEqual(again.output[0].type, "message")
        stored = client.responses.retrieve(r.id)
        self.assertEqual(stored.output[0].id, call.id)

    def test_streamed_events_with_the_sdk_helper(self):
        with client.responses.stream(model=MODEL, input=QUESTION,
                                     tools=[{"type": "web_search_preview"}]) as stream:
            types = [e.type for e in stream]
            final = stream.get_final_response()
        for name in ("response.web_search_call.in_progress", "response.web_search_call.searching",
                     "response.web_search_call.completed", "response.output_text.annotation.added"):
            self.assertIn(name, types)
        self.assertLess(types.index("response.web_search_call.completed"),
                        types.index("response.output_text.delta"))
        self.assertEqual(final.output[0].type, "web_search_call")
        self.assertEqual(final.output[1].content[0].annotations[0].type, "url_citation")
        self.assertEqual(final.tools[0].type, "web_search_preview")

    def test_forcing_the_search(self):
        r = client.responses.create(model=MODEL, input="hello", tools=[{"type": "web_search"}],
                                    tool_choice={"type": "web_search_preview"})
        self.assertEqual(r.output[0].type, "web_search_call")
        self.assertEqual(r.tool_choice.type, "web_search_preview")

    def test_bad_tools_name_their_param(self):
        cases = [
            ({"type": "web_search", "search_context_size": "huge"}, "tools[0].search_context_size"),
            ({"type": "web_search", "filters": {"allowed_domains": ["https://a.org/x"]}},
             "tools[0].filters.allowed_domains"),
            # This gateway allows no MCP server (contract/test_mcp.py covers one that does).
            ({"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:1/mcp"},
             "tools[0]"),
        ]
        for tool, param in cases:
            with self.assertRaises(openai.BadRequestError) as e:
                client.responses.create(model=MODEL, input="hi", tools=[tool])
            self.assertEqual(e.exception.body["param"], param)


if __name__ == "__main__":
    unittest.main()
