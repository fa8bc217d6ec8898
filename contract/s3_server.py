"""An S3-compatible server of its own for the tests (PyPI moto[server]), on a free
loopback port, with one empty bucket: prints `http://127.0.0.1:PORT BUCKET` on the
first line of stdout; stops when stdin closes (the test dropping its handle)."""

import logging
import sys
import urllib.request

from moto.server import ThreadedMotoServer

# The server's request log would fill the tests' output.
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
endpoint = f"http://{host}:{port}"
bucket = "switchyard-test"
urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")).read()
print(f"{endpoint} {bucket}", flush=True)
sys.stdin.read()
server.stop()
