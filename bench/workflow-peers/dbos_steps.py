"""The DBOS side of bench/compare-workflows.sh: a DBOS Transact workflow of N steps behind a
small HTTP server, so the same load generator drives it as every other system.

`POST /workflow/{id}` with `{"steps": N}` (default 10, at most STEPS_MAX) runs the workflow
`steps_workflow` under the workflow id `id` to completion and answers
`{"id": id, "status": "succeeded", "output": {"steps": N, "sum": 1 + ... + N}}`. Each step is a
`@DBOS.step()` returning its step number, so DBOS records its output in PostgreSQL (one
committed write per step) before the next starts; the workflow's start and end are written
too. The id is DBOS's idempotency key: the same id twice runs the workflow once.

The server is the standard library's threaded HTTP/1.1 server (keep-alive, a thread per
connection), the way a synchronous DBOS application serves requests. It listens only where it
is told, connects only to the PostgreSQL it is given, and prints `listening on http://ADDR`
once DBOS has launched.

    python dbos_steps.py --listen 127.0.0.1:9090 --database-url postgresql://...
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dbos import DBOS, DBOSConfig, SetWorkflowID

STEPS_MAX = 1000
BODY_BYTES_MAX = 1 << 20
ID_CHARS_MAX = 200


@DBOS.step()
def step(n: int) -> int:
    return n


@DBOS.workflow()
def steps_workflow(steps: int) -> dict:
    total = 0
    for n in range(1, steps + 1):
        total += step(n)
    return {"steps": steps, "sum": total}


class BadRequest(Exception):
    pass


def parse_steps(body: bytes) -> int:
    try:
        value = json.loads(body or b"{}")
    except ValueError as e:
        raise BadRequest(f"the body must be JSON: {e}") from e
    steps = value.get("steps", 10) if isinstance(value, dict) else None
    if not isinstance(steps, int) or not 1 <= steps <= STEPS_MAX:
        raise BadRequest(f"steps must be an integer in 1..={STEPS_MAX}, not {steps!r}")
    return steps


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes: with Nagle's algorithm on, the body would
    # wait for the client's delayed ACK of the headers, 40 ms on Linux.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length > BODY_BYTES_MAX:
            self.answer(413, {"error": "body too large"})
            self.close_connection = True
            return
        body = self.rfile.read(length)
        prefix = "/workflow/"
        workflow_id = self.path[len(prefix):] if self.path.startswith(prefix) else ""
        if not workflow_id or "/" in workflow_id or len(workflow_id) > ID_CHARS_MAX:
            self.answer(404, {"error": f"no route {self.path}; POST /workflow/{{id}}"})
            return
        try:
            steps = parse_steps(body)
            with SetWorkflowID(workflow_id):
                output = steps_workflow(steps)
        except BadRequest as e:
            self.answer(400, {"error": str(e)})
            return
        except Exception as e:  # the workflow's failure, answered rather than dropped
            self.answer(500, {"id": workflow_id, "status": "failed", "error": repr(e)})
            return
        self.answer(200, {"id": workflow_id, "status": "succeeded", "output": output})

    def answer(self, code: int, reply: dict) -> None:
        data = json.dumps(reply).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        pass  # a line per request would cost more than the request


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog: socketserver's default of 5 drops the connections of all but a few
    # clients that connect at once, which then wait seconds to retry.
    request_queue_size = 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:9090", help="HOST:PORT to serve on")
    parser.add_argument("--database-url", required=True, help="DBOS's system database")
    parser.add_argument(
        "--pool-size", type=int, default=64,
        help="connections to the system database (above the client count, so none waits)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")

    config: DBOSConfig = {
        "name": "tally-bench-steps",
        "system_database_url": args.database_url,
        "sys_db_pool_size": args.pool_size,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    server = Server((host, int(port)), Handler)
    # The script waits for this line.
    print(f"listening on http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        DBOS.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
