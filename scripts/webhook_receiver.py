#!/usr/bin/env python3
"""A webhook receiver for the tests: verifies every delivery with the official Standard
Webhooks library (PyPI `standardwebhooks`), the way a tenant's receiver would.

    python3 scripts/webhook_receiver.py        # prints its port, then serves 127.0.0.1

Control, over HTTP from the test:
    POST /control  {"secret": "whsec_...", "fail_next": 5, "always_fail": false}
    GET  /received the deliveries so far: [{"verified", "status", "error", "headers",
                   "body", "payload"}]
Any other POST is a delivery: 400 when verification fails, 500 while told to fail,
else 204.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

lock = threading.Lock()
state = {"secret": None, "fail_next": 0, "always_fail": False, "received": []}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=b""):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with lock:
            body = json.dumps(state["received"]).encode()
        self.reply(200, body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/control":
            with lock:
                state.update(json.loads(body))
            return self.reply(204)
        headers = {k.lower(): v for k, v in self.headers.items()}
        record = {"headers": headers, "body": body.decode(), "verified": False,
                  "payload": None, "error": None}
        with lock:
            secret = state["secret"]
        try:
            record["payload"] = Webhook(secret).verify(body, headers)
            record["verified"] = True
        except (WebhookVerificationError, Exception) as error:  # noqa: BLE001
            record["error"] = f"{type(error).__name__}: {error}"
        with lock:
            if not record["verified"]:
                status = 400
            elif state["always_fail"] or state["fail_next"] > 0:
                state["fail_next"] = max(0, state["fail_next"] - 1)
                status = 500
            else:
                status = 204
            record["status"] = status
            state["received"].append(record)
        self.reply(status, b"verification failed" if status == 400 else b"")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    # Ends with the test: its stdin closes when the test drops the process.
    threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
