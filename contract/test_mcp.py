"""Remote MCP tools against the official OpenAI Python SDK, with strict response
validation: every object the gateway returns must parse as the SDK's own types.

Run by crates/switchyard/tests/sdk_contract.rs against a gateway in front of simulated
engines (the simulated model calls the offered function its prompt names, with
arguments built from the function's schema, and quotes the tool's result), which
allows the fake MCP server at SWITCHYARD_MCP_URL: tools `add` (the sum of integers
`a` and `b`, read-only) and `explode` (always reports an error).
"""

import os
import unittest

import openai
from openai import OpenAI

URL = os.environ["SWITCHYARD_URL"]
MODEL = os.environ["SWITCHYARD_MODEL"]
MCP = os.environ["SWITCHYARD_MCP_URL"]

client = OpenAI(base_url=URL + "/v1", api_key="unused", _strict_response_validation=True)


def tool(**extra):
    return {"type": "mcp", "server_label": "calc", "server_url": MCP,
            "headers": {"X-Api-Key": "k-1"}, **extra}


class Mcp(unittest.TestCase):
    def test_listing_call_and_chain(self):
        r = client.responses.create(model=MODEL, input="Please use add",
                                    tools=[tool(require_approval="never")])
        self.assertEqual([i.type for i in r.output], ["mcp_list_tools", "mcp_call", "message"])
        listing, call, answer = r.output
        self.assertEqual(listing.server_label, "calc")
        self.assertEqual([t.name for t in listing.tools], ["add", "explode"])
        self.assertEqual(call.name, "add")
        self.assertEqual(call.status, "completed")
        self.assertTrue(call.output.startswith("sum: "))
        self.assertIsNone(call.error)
        self.assertIn(call.output, answer.content[0].text)
        self.assertEqual(r.tools[0].type, "mcp")
        self.assertIsNone(r.tools[0].headers)
        # The chain reuses the listing; a failing tool gives a typed error.
        again = client.responses.create(model=MODEL, input="Now use explode", previous_response_id=r.id,
                                        tools=[tool(require_approval="never")])
        self.assertEqual([i.type for i in again.output], ["mcp_call", "message"])
        failed = again.output[0]
        self.assertEqual(failed.status, "failed")
        self.assertEqual(failed.error.type, "mcp_tool_execution_error")
        stored = client.responses.retrieve(r.id)
        self.assertEqual(stored.output[1].id, call.id)
        items = client.responses.input_items.list(again.id)
        self.assertEqual(items.data[0].type, "message")

    def test_approval_round_trip(self):
        r = client.responses.create(model=MODEL, input="Please use add",
                                    tools=[tool(allowed_tools={"tool_names": ["add"]})])
        self.assertEqual([i.type for i in r.output], ["mcp_list_tools", "mcp_approval_request"])
        req = r.output[1]
        self.assertEqual((req.name, req.server_label), ("add", "calc"))
        ok = client.responses.create(model=MODEL, previous_response_id=r.id, tools=[tool()],
                                     input=[{"type": "mcp_approval_response",
                                             "approval_request_id": req.id, "approve": True}])
        self.assertEqual(ok.output[0].type, "mcp_call")
        self.assertEqual(ok.output[0].approval_request_id, req.id)
        self.assertEqual(ok.output[0].arguments, req.arguments)
        self.assertEqual(ok.output[1].type, "message")
        no = client.responses.create(model=MODEL, previous_response_id=r.id, tools=[tool()],
                                     input=[{"type": "mcp_approval_response",
                                             "approval_request_id": req.id, "approve": False,
                                             "reason": "not now"}])
        self.assertEqual([i.type for i in no.output], ["message"])
        with self.assertRaises(openai.BadRequestError) as e:
            client.responses.create(model=MODEL, previous_response_id=ok.id, tools=[tool()],
                                    input=[{"type": "mcp_approval_response",
                                            "approval_request_id": req.id, "approve": True}])
        self.assertEqual(e.exception.body["param"], "input[0].approval_request_id")

    def test_streamed_events_with_the_sdk_helper(self):
        with client.responses.stream(model=MODEL, input="Please use add",
                                     tools=[tool(require_approval="never")]) as stream:
            types = [e.type for e in stream]
            final = stream.get_final_response()
        for name in ("response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
                     "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
                     "response.mcp_call.in_progress", "response.mcp_call.completed"):
            self.assertIn(name, types)
        self.assertLess(types.index("response.mcp_call.completed"),
                        types.index("response.output_text.delta"))
        self.assertEqual([i.type for i in final.output], ["mcp_list_tools", "mcp_call", "message"])

    def test_forcing_a_tool(self):
        r = client.responses.create(model=MODEL, input="hello", tools=[tool(require_approval="never")],
                                    tool_choice={"type": "mcp", "server_label": "calc", "name": "explode"})
        self.assertEqual(r.output[1].name, "explode")
        self.assertEqual(r.tool_choice.type, "mcp")
        self.assertEqual(r.tool_choice.name, "explode")

    def test_refusals_name_their_param(self):
        with self.assertRaises(openai.BadRequestError) as e:
            client.responses.create(model=MODEL, input="hi", tools=[
                {"type": "mcp", "server_label": "x", "server_url": "http://10.1.2.3/mcp"}])
        self.assertEqual(e.exception.body["param"], "tools[0].server_url")
        with self.assertRaises(openai.APIStatusError) as e:
            client.responses.create(model=MODEL, input="hi", tools=[
                {"type": "mcp", "server_label": "x", "server_url": MCP.rsplit("/", 1)[0] + "/nothing-here"}])
        self.assertEqual(e.exception.status_code, 424)
        self.assertEqual(e.exception.body["param"], "tools[0]")


if __name__ == "__main__":
    unittest.main()
