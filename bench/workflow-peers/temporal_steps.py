"""The Temporal side of bench/compare-workflows.sh: a workflow of N activities, its worker, and
a small HTTP server that starts it, so the same load generator drives it as every other system.

    python temporal_steps.py worker --server 127.0.0.1:7233
    python temporal_steps.py serve --server 127.0.0.1:7233 --listen 127.0.0.1:9091

`worker` runs the workflow `Steps` and its activity `step` on the task queue TASK_QUEUE (the
SDK's default worker options, workflows in its sandbox). `serve` answers
`POST /workflow/{id}` with `{"steps": N}` (default 10, at most STEPS_MAX): it starts `Steps`
under the workflow id `id`, waits for its result and answers
`{"id": id, "status": "succeeded", "output": {"steps": N, "sum": 1 + ... + N}}`. Each activity
returns its step number; the server records every activity's scheduling and result in the
workflow's history before the workflow goes on, so the steps run one after the other, each
through the server. The server is a minimal asyncio HTTP/1.1 one (keep-alive, one request at
a time per connection). Both connect only to the server they are given; `serve` prints
`listening on http://ADDR` once connected, `worker` prints `worker ready`.
"""

import argparse
import asyncio
import json
import sys
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

TASK_QUEUE = "tally-bench-steps"
STEPS_MAX = 1000
BODY_BYTES_MAX = 1 << 20
ID_CHARS_MAX = 200


@activity.defn
async def step(n: int) -> int:
    return n


@workflow.defn
class Steps:
    @workflow.run
    async def run(self, steps: int) -> dict:
        total = 0
        for n in range(1, steps + 1):
            total += await workflow.execute_activity(
                step, n, start_to_close_timeout=timedelta(seconds=60)
            )
        return {"steps": steps, "sum": total}


async def run_worker(server: str) -> None:
    client = await Client.connect(server)
    worker = Worker(client, task_queue=TASK_QUEUE, workflows=[Steps], activities=[step])
    print("worker ready", flush=True)
    await worker.run()


def parse_steps(body: bytes) -> int:
    try:
        value = json.loads(body or b"{}")
    except ValueError as e:
        raise ValueError(f"the body must be JSON: {e}") from e
    steps = value.get("steps", 10) if isinstance(value, dict) else None
    if not isinstance(steps, int) or not 1 <= steps <= STEPS_MAX:
        raise ValueError(f"steps must be an integer in 1..={STEPS_MAX}, not {steps!r}")
    return steps


async def answer(client: Client, method: str, path: str, body: bytes) -> tuple[str, dict]:
    prefix = "/workflow/"
    workflow_id = path[len(prefix):] if path.startswith(prefix) else ""
    if method != "POST" or not workflow_id or "/" in workflow_id or len(workflow_id) > ID_CHARS_MAX:
        return "404 Not Found", {"error": f"no route {method} {path}; POST /workflow/{{id}}"}
    try:
        steps = parse_steps(body)
    except ValueError as e:
        return "400 Bad Request", {"error": str(e)}
    try:
        output = await client.execute_workflow(
            Steps.run, steps, id=workflow_id, task_queue=TASK_QUEUE
        )
    except Exception as e:  # the workflow's failure, answered rather than dropped
        return "500 Internal Server Error", {
            "id": workflow_id, "status": "failed", "error": repr(e)}
    return "200 OK", {"id": workflow_id, "status": "succeeded", "output": output}


async def serve_connection(client: Client, reader, writer) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            method, path, _ = line.decode("latin-1").split(" ", 2)
            length = 0
            while True:
                header = await reader.readline()
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length > BODY_BYTES_MAX:
                return
            body = await reader.readexactly(length) if length else b""
            status, reply = await answer(client, method, path, body)
            data = json.dumps(reply).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(data)}\r\n\r\n".encode() + data
            )
            await writer.drain()
    except (ConnectionError, ValueError, asyncio.IncompleteReadError):
        pass  # a client that went away or spoke something else: drop the connection
    finally:
        writer.close()


async def run_server(server: str, listen: str) -> None:
    client = await Client.connect(server)
    host, _, port = listen.rpartition(":")
    http = await asyncio.start_server(
        lambda r, w: serve_connection(client, r, w), host, int(port)
    )
    # The script waits for this line.
    print(f"listening on http://{host}:{http.sockets[0].getsockname()[1]}", flush=True)
    async with http:
        await http.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["worker", "serve"])
    parser.add_argument("--server", default="127.0.0.1:7233", help="Temporal's frontend HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:9091", help="serve: HOST:PORT to serve on")
    args = parser.parse_args()
    if args.mode == "worker":
        asyncio.run(run_worker(args.server))
    else:
        asyncio.run(run_server(args.server, args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
