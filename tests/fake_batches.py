"""The Files and Batches endpoints of the fake OpenAI server (tests/fake_openai.py), as the real API
documents them, for testing `convrec.llm.batch` through the official client.

- ``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``;
- ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``, ``metadata``),
  ``GET /v1/batches/{id}``, ``GET /v1/batches`` (newest first, ``limit`` / ``after`` paging),
  ``POST /v1/batches/{id}/cancel``.

A batch moves one step per retrieve: ``validating`` -> ``in_progress`` (for ``in_progress_polls``
retrieves) -> ``finalizing`` -> its fate, taken in creation order from ``fates`` (then
``completed``): ``completed``; ``expired`` (the first ``partial`` share of its lines answered, the
rest in the error file as ``batch_expired``); ``cancelled`` (the same, ``batch_cancelled``);
``failed`` (input validation failed: no output at all); ``token_limit_exceeded`` (fails that
way after validating, as when the account has too many tokens enqueued). An input file that breaks the documented
format or limits fails validation the same way. In a completed batch a share ``line_errors`` of the
lines (seeded by custom id) get a 500 in the error file, and custom ids whose messages contain one
of ``rejected`` get a 400. The output file lists the answered lines in a shuffled order, as the
real API does not promise input order.

``lines`` logs every submitted line (batch id, custom id, messages key) at creation, so a test can
prove that no request was submitted twice.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from email import policy
from email.parser import BytesParser
from urllib.parse import parse_qs, urlparse

MAX_LINES, MAX_BYTES = 50_000, 200 * 1000 * 1000
ENDPOINTS = ("/v1/chat/completions",)


class FakeBatches:
    def __init__(self, server) -> None:
        self.server = server  # a FlakyServer: answers each line with its `respond`
        self.lock = threading.Lock()
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.fates: list[str] = []
        self.partial = 0.5
        self.line_errors = 0.0
        self.rejected: tuple[str, ...] = ()
        self.in_progress_polls = 2
        self.lines: list[dict] = []
        self.created: list[str] = []  # batch ids in creation order
        self.uploads = 0

    # -- HTTP -----------------------------------------------------------------------------------
    def post(self, h, raw: bytes) -> None:
        path = urlparse(h.path).path
        if path == "/v1/files":
            return self._json(h, 200, self._upload(h.headers.get("content-type", ""), raw))
        if path == "/v1/batches":
            return self._json(h, *self._create(json.loads(raw or b"{}")))
        m = re.fullmatch(r"/v1/batches/([^/]+)/cancel", path)
        if m and m.group(1) in self.batches:
            with self.lock:
                b = self.batches[m.group(1)]
                if b["status"] not in ("completed", "failed", "expired", "cancelled"):
                    b["status"], b["cancelling_at"] = "cancelling", int(time.time())
            return self._json(h, 200, self._public(b))
        return self._json(h, 404, {"error": {"message": f"no route {path}"}})

    def get(self, h) -> None:
        url = urlparse(h.path)
        if url.path == "/v1/batches":
            return self._json(h, 200, self._list(parse_qs(url.query)))
        m = re.fullmatch(r"/v1/batches/([^/]+)", url.path)
        if m and m.group(1) in self.batches:
            return self._json(h, 200, self._advance(m.group(1)))
        m = re.fullmatch(r"/v1/files/([^/]+)(/content)?", url.path)
        if m and m.group(1) in self.files:
            f = self.files[m.group(1)]
            if m.group(2):
                return self.server._send(h, 200, f["data"], {"content-type": "application/octet-stream"})
            return self._json(h, 200, self._file_object(m.group(1)))
        return self._json(h, 404, {"error": {"message": f"no such object {url.path}"}})

    def _json(self, h, status: int, obj: dict) -> None:
        self.server._send(h, status, json.dumps(obj).encode())

    # -- files ----------------------------------------------------------------------------------
    def _upload(self, ctype: str, raw: bytes) -> dict:
        msg = BytesParser(policy=policy.default).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
        fields = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True))
        with self.lock:
            self.uploads += 1
            fid = f"file-{len(self.files) + 1:04d}"
            purpose = fields.get("purpose", (None, b""))[1].decode()
            name, data = fields["file"]
            self.files[fid] = {"data": data, "purpose": purpose, "filename": name or "upload.jsonl"}
        return self._file_object(fid)

    def _file_object(self, fid: str) -> dict:
        f = self.files[fid]
        return {
            "id": fid,
            "object": "file",
            "bytes": len(f["data"]),
            "created_at": int(time.time()),
            "filename": f["filename"],
            "purpose": f["purpose"],
            "status": "processed",
        }

    def _add_file(self, lines: list[dict], purpose: str) -> str | None:
        if not lines:
            return None
        fid = f"file-{len(self.files) + 1:04d}"
        self.files[fid] = {"data": "".join(json.dumps(x) + "\n" for x in lines).encode(), "purpose": purpose}
        self.files[fid]["filename"] = f"{fid}.jsonl"
        return fid

    # -- batches --------------------------------------------------------------------------------
    def _create(self, body: dict) -> tuple[int, dict]:
        fid = body.get("input_file_id")
        if fid not in self.files:
            return 404, {"error": {"message": f"No such File object: {fid}"}}
        if body.get("completion_window") != "24h" or body.get("endpoint") not in ENDPOINTS:
            return 400, {"error": {"message": "bad completion_window or endpoint"}}
        with self.lock:
            bid = f"batch_{len(self.batches) + 1:04d}"
            fate = self.fates[len(self.batches)] if len(self.batches) < len(self.fates) else "completed"
            lines, problem = self._parse(self.files[fid], body["endpoint"])
            self.batches[bid] = {
                "id": bid,
                "object": "batch",
                "endpoint": body["endpoint"],
                "input_file_id": fid,
                "completion_window": "24h",
                "status": "validating",
                "created_at": int(time.time()),
                "metadata": body.get("metadata"),
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "_fate": "failed" if problem else fate,
                "_problem": problem,
                "_lines": lines,
                "_polls": 0,
            }
            self.created.append(bid)
            for ln in lines:
                key = self.server.key(ln["body"].get("messages", []))
                self.lines.append({"batch": bid, "custom_id": ln["custom_id"], "key": key})
        return 200, self._public(self.batches[bid])

    def _parse(self, f: dict, endpoint: str) -> tuple[list[dict], dict | None]:
        """The input lines, or the validation error the real API reports for a malformed file."""
        if f["purpose"] != "batch":
            return [], {"code": "invalid_file", "message": "file purpose must be batch", "line": None}
        if len(f["data"]) > MAX_BYTES:
            return [], {"code": "file_too_large", "message": "over 200 MB", "line": None}
        lines, ids = [], set()
        for n, raw in enumerate(f["data"].decode().splitlines(), 1):
            try:
                ln = json.loads(raw)
                ok = ln["method"] == "POST" and ln["url"] == endpoint and isinstance(ln["body"], dict)
                cid = ln["custom_id"]
            except (ValueError, KeyError, TypeError):
                ok, cid = False, None
            if not ok or not isinstance(cid, str) or cid in ids:
                return [], {"code": "invalid_request", "message": "malformed or duplicate line", "line": n}
            ids.add(cid)
            lines.append(ln)
        if len(lines) > MAX_LINES:
            return [], {"code": "too_many_requests", "message": "over 50,000 requests", "line": None}
        return lines, None

    def _advance(self, bid: str) -> dict:
        """One step of the batch's life per retrieve."""
        with self.lock:
            b = self.batches[bid]
            b["_polls"] += 1
            if b["status"] == "validating":
                b["status"] = "failed" if b["_fate"] == "failed" else "in_progress"
                if b["status"] == "failed":
                    b["errors"] = {"object": "list", "data": [b["_problem"] or {"code": "invalid_request"}]}
                    b["failed_at"] = int(time.time())
            elif b["status"] == "in_progress" and b["_fate"] == "token_limit_exceeded":
                b["status"], b["failed_at"] = "failed", int(time.time())
                limit = {"code": "token_limit_exceeded", "message": "Enqueued token limit reached", "line": None}
                b["errors"] = {"object": "list", "data": [limit]}
            elif b["status"] == "in_progress" and b["_polls"] > 1 + self.in_progress_polls:
                b["status"] = "finalizing"
            elif b["status"] in ("finalizing", "cancelling"):
                self._finish(b, "cancelled" if b["status"] == "cancelling" else b["_fate"])
            return self._public(b)

    def _finish(self, b: dict, fate: str) -> None:
        lines = b["_lines"]
        done = len(lines) if fate == "completed" else int(len(lines) * self.partial)
        out, err = [], []
        for i, ln in enumerate(lines):
            cid = ln["custom_id"]
            rid = {"id": f"batch_req_{b['id']}_{i}", "custom_id": cid}
            if i >= done:
                code = "batch_expired" if fate == "expired" else "batch_cancelled"
                err.append({**rid, "response": None, "error": {"code": code, "message": "not executed in time"}})
            elif any(r in json.dumps(ln["body"]) for r in self.rejected):
                body = {"error": {"message": "Invalid request: content rejected", "type": "invalid_request_error"}}
                err.append({**rid, "response": {"status_code": 400, "request_id": "r", "body": body}, "error": None})
            elif random.Random(f"{cid}:{b['id']}").random() < self.line_errors:
                body = {"error": {"message": "The server had an error", "type": "server_error"}}
                err.append({**rid, "response": {"status_code": 500, "request_id": "r", "body": body}, "error": None})
            else:
                resp = {"status_code": 200, "request_id": "r", "body": self.server.respond(ln["body"])}
                out.append({**rid, "response": resp, "error": None})
                self.server.count("batch answered")
        random.Random(b["id"]).shuffle(out)  # the API does not keep input order
        b["output_file_id"] = self._add_file(out, "batch_output")
        b["error_file_id"] = self._add_file(err, "batch_output")
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        b["status"] = fate
        b[f"{fate}_at"] = int(time.time())

    def _public(self, b: dict) -> dict:
        return {k: v for k, v in b.items() if not k.startswith("_")}

    def _list(self, query: dict) -> dict:
        limit = int(query.get("limit", ["20"])[0])
        after = query.get("after", [None])[0]
        ids = list(reversed(self.created))
        if after in ids:
            ids = ids[ids.index(after) + 1 :]
        page = [self._public(self.batches[i]) for i in ids[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ids) > limit,
        }

    def submitted_twice(self) -> list[str]:
        """Messages keys that went out in more than one batch line."""
        seen, twice = set(), []
        for ln in self.lines:
            if ln["key"] in seen:
                twice.append(ln["key"])
            seen.add(ln["key"])
        return twice
