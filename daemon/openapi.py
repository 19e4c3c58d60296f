"""The speakers API's OpenAPI 3.1 document (served at ``GET /v1/openapi.json``) and its
Markdown rendering (docs/speakers-api.md), both generated from the one definition below:
the operations (:data:`OPERATIONS`), the JSON schemas (:data:`SCHEMAS`), the scopes (from
the request gate's table, :data:`voxguard.daemon.auth.ENDPOINTS`), the speaker name pattern
and the limits (from the code that enforces them).

    python -m voxguard.daemon.openapi --markdown > docs/speakers-api.md
    python -m voxguard.daemon.openapi > openapi.json
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from .auth import ENDPOINTS, SPEAKER_PATTERN
from .speakers import CONSENT_HEADER, MAX_REF_CHARS, MIN_VOICED_S, PAGE_DEFAULT, PAGE_MAX

OPENAPI_PATH = "/v1/openapi.json"
DEFAULT_MAX_UPLOAD = 10 << 20
API_VERSION = "1.0.0"

_NUM_OR_NULL = {"type": ["number", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}


def _obj(props: dict, required: list[str] | None = None, extra: bool = False) -> dict:
    return {"type": "object", "properties": props, "required": required if required is not None else list(props),
            "additionalProperties": extra}


_SUMMARY = {
    "speaker": {"type": "string", "pattern": SPEAKER_PATTERN},
    "genuine": {"type": "integer", "minimum": 0, "description": "genuine samples"},
    "clones": {"type": "integer", "minimum": 0, "description": "known clones"},
    "seconds": {"type": "number", "description": "audio stored, all samples"},
    "created_at": {"type": "number", "description": "Unix time the speaker was enrolled"},
    "updated_at": {**_NUM_OR_NULL, "description": "Unix time of its newest sample"}}

SCHEMAS: dict[str, dict] = {
    "Error": {"type": "object", "description": "Every error answer: `error` says why; some add fields "
                                                "(`reason`, `parameter`, `missing_scope`, ...).",
              "properties": {"error": {"type": "string"}, "reason": {"type": "string"},
                             "missing_scope": {"type": "string"}, "parameter": {"type": "string"}},
              "required": ["error"], "additionalProperties": True},
    "SpeakerSummary": _obj(_SUMMARY),
    "SpeakerPage": _obj({
        "speakers": {"type": "array", "items": {"$ref": "#/components/schemas/SpeakerSummary"}},
        "next": {**_STR_OR_NULL, "description": "pass as `after` for the next page; null on the last"}}),
    "Sample": _obj({
        "id": {"type": "integer"},
        "kind": {"enum": ["genuine", "clone"]},
        "seconds": {"type": "number"},
        "bands": {"type": "array", "items": {"enum": ["wide", "telephone"]},
                  "description": "bands it has window embeddings for"},
        "source": {**_STR_OR_NULL, "description": "file path (CLI) or `upload:NAME` (HTTP)"},
        "provenance": {"type": "object", "description": "how it came: `via`, `source` (what made a clone), ..."},
        "consent": {**_STR_OR_NULL, "description": "the consent reference it was enrolled under"},
        "created_at": {"type": "number"}}),
    "Speaker": _obj({**_SUMMARY, "samples": {"type": "array", "items": {"$ref": "#/components/schemas/Sample"},
                                             "description": "every sample, in id order"}}),
    "Enrolled": _obj({
        "speaker": {"type": "string"},
        "kind": {"enum": ["genuine", "clone"]},
        "added": {"type": "integer", "description": "samples stored (0: the same audio was enrolled already)"},
        "skipped": {"type": "integer"},
        "sample_ids": {"type": "array", "items": {"type": "integer"}},
        "seconds": {**_NUM_OR_NULL, "description": "length of the recording"},
        "voiced_seconds": {**_NUM_OR_NULL, "description": "speech the VAD found in it"},
        "band": {"enum": ["wide", "telephone", None], "description": "the recording's detected band"},
        "consent": _STR_OR_NULL,
        "revision": {"type": "integer", "description": "store revision this daemon now serves"},
        "gates": {"type": "object", "description": "enrolling from a call: what the gates measured "
                                                   "(`speech_seconds`, `consistency`, `clone_level`)"}},
        required=["speaker", "kind", "added", "skipped", "sample_ids", "seconds", "voiced_seconds", "band",
                  "consent", "revision"]),
    "SpeakerRemoved": _obj({"speaker": {"type": "string"}, "removed_samples": {"type": "integer"},
                            "revision": {"type": "integer"}}),
    "SampleRemoved": _obj({"speaker": {"type": "string"}, "removed_sample": {"type": "integer"},
                           "speaker_removed": {"type": "boolean",
                                               "description": "it was the speaker's last sample"},
                           "revision": {"type": "integer"}}),
    "AuditEntry": _obj({
        "id": {"type": "integer"},
        "at": {"type": "number", "description": "Unix time"},
        "action": {"enum": ["enroll", "remove_speaker", "remove_sample"]},
        "speaker": {"type": "string"},
        "sample_ids": {"type": "array", "items": {"type": "integer"}},
        "actor": {"type": "string", "description": "`token:<sha256 prefix>`, `cli:<user>` or `unauthenticated`"},
        "consent": _STR_OR_NULL,
        "detail": {"type": "object", "description": "kind, sources, voiced seconds, ...; never audio or embeddings"}}),
    "AuditPage": _obj({
        "entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}},
        "next": {"type": ["integer", "null"], "description": "pass as `after` for the next page"}}),
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path | query | header
    schema: dict
    description: str
    required: bool = False


@dataclass(frozen=True)
class Op:
    path: str
    method: str
    operation_id: str
    summary: str
    description: str
    ok: tuple[int, str, str]  # status, schema, description
    errors: tuple[int, ...]
    params: tuple[Param, ...] = ()
    body: bool = False
    more_ok: tuple[tuple[int, str, str], ...] = field(default_factory=tuple)


P_SPEAKER = Param("speaker", "path", {"type": "string", "pattern": SPEAKER_PATTERN},
                  f"the speaker's name (pattern `{SPEAKER_PATTERN}`; anything else: 400)", True)
P_LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": PAGE_DEFAULT},
                f"page size (default {PAGE_DEFAULT}, at most {PAGE_MAX})")
P_CONSENT = Param("consent", "query", {"type": "string", "maxLength": MAX_REF_CHARS},
                  f"consent (or erasure request) reference, stored and audited; also the `{CONSENT_HEADER}` header")
P_CONSENT_H = Param(CONSENT_HEADER, "header", {"type": "string", "maxLength": MAX_REF_CHARS},
                    "the consent reference, when not in the query")

ERRORS = {
    400: "a parameter is invalid (the body says which), or the upload has no body",
    401: "no bearer token (`WWW-Authenticate: Bearer`)",
    403: "unknown token, a token without the endpoint's scope (`missing_scope`), or a browser origin not allowed",
    404: "unknown speaker (or sample, or stream: unknown or past its enrollment window)",
    413: "the body is over `--max-upload-bytes` (refused before anything is decoded)",
    422: "nothing was stored: the body is not decodable audio (`reason: undecodable`), holds too little "
         f"speech (`reason: no_speech`, under {MIN_VOICED_S:g} s voiced), or a call failed a gate "
         "(`reason: gate_failed`, `gate`)",
    409: "the store holds embeddings of another model",
    503: "the store cannot be written (read-only, unreachable) or the daemon is shutting down",
}

OPERATIONS: tuple[Op, ...] = (
    Op("/v1/speakers", "GET", "listSpeakers", "List enrolled speakers",
       "Speakers in name order, a page at a time.",
       (200, "SpeakerPage", "a page of speakers"), (400, 401, 403),
       (P_LIMIT, Param("after", "query", {"type": "string"}, "the last name of the previous page (`next`)"),
        Param("q", "query", {"type": "string", "maxLength": MAX_REF_CHARS},
              "only names containing this (case-insensitive)"))),
    Op("/v1/speakers/{speaker}", "GET", "getSpeaker", "One speaker and its samples",
       "Every sample with its id, kind, duration, bands, source, provenance, consent and time.",
       (200, "Speaker", "the speaker"), (400, 401, 403, 404), (P_SPEAKER,)),
    Op("/v1/speakers/{speaker}/samples", "POST", "enrollSample", "Enroll a recording",
       "The body is one audio file (WAV, FLAC, MP3, Ogg/Opus, G.711 WAV: whatever `voxguard enroll add` "
       "decodes). It is decoded, checked for speech, embedded (after the streams' windows) and stored in one "
       "transaction with its audit row, by the same code as the CLI; the speaker is created if new. The "
       "answer comes once this daemon serves the new revision (replicas follow the store by themselves).",
       (201, "Enrolled", "stored"), (400, 401, 403, 409, 413, 422, 503),
       (P_SPEAKER,
        Param("kind", "query", {"enum": ["genuine", "clone"], "default": "genuine"},
              "`clone` for a known clone of the speaker"),
        Param("source", "query", {"type": "string", "maxLength": MAX_REF_CHARS},
              "what made it (a clone's system or vendor), kept in its provenance"),
        Param("filename", "query", {"type": "string", "maxLength": MAX_REF_CHARS},
              "a name for the upload (its `source` becomes `upload:NAME`)"),
        P_CONSENT, P_CONSENT_H),
       body=True, more_ok=((200, "Enrolled", "the same audio was enrolled already: nothing new (`added: 0`)"),)),
    Op("/v1/speakers/{speaker}", "DELETE", "deleteSpeaker", "Erase a speaker",
       "Removes its audio, embeddings, band views and index rows in one audited transaction; an SQLite store "
       "overwrites the freed pages and truncates its WAL (see docs/operations.md, *Erasure*).",
       (200, "SpeakerRemoved", "erased"), (400, 401, 403, 404, 503), (P_SPEAKER, P_CONSENT, P_CONSENT_H)),
    Op("/v1/speakers/{speaker}/samples/{sample_id}", "DELETE", "deleteSample", "Erase one sample",
       "As for a speaker; the speaker goes with its last sample.",
       (200, "SampleRemoved", "erased"), (400, 401, 403, 404, 503),
       (P_SPEAKER, Param("sample_id", "path", {"type": "integer", "minimum": 1}, "the sample's id", True),
        P_CONSENT, P_CONSENT_H)),
    Op("/v1/streams/{stream_id}/enroll", "POST", "enrollFromStream", "Enroll a speaker from a call",
       "Enrolls the voiced audio a stream kept (the newest `--enroll-buffer` seconds of the track, while the "
       "stream lasts and `--enroll-window` seconds after it ends; the `ready` event's `enrollment` says so) as "
       "a genuine sample of `speaker`, only if every gate passes, in this order: `speech` (at least "
       "`--enroll-min-speech` seconds, default 8), `consistency` (one voice: the call's window embeddings split in "
       "two by 2-means, the cosine between the halves' centroids reaches `--enroll-consistency`, default 0.85 — "
       "resemblyzer on AN4, 18 speakers: one voice 0.86-0.94, two alternating voices 0.66-0.87, so similar "
       "voices can pass), `clone` (the stream's clone suspicion stayed below "
       "`medium`), `other_speaker` (the stream never named another enrolled speaker). A refusal (422, "
       "`reason: gate_failed`) names the `gate` that failed.",
       (201, "Enrolled", "stored"), (400, 401, 403, 404, 409, 422, 503),
       (Param("stream_id", "path", {"type": "string"}, "the stream's id (its `start` message's)", True),
        Param("speaker", "query", {"type": "string", "pattern": SPEAKER_PATTERN}, "who the call's speaker is",
              True),
        Param("channel", "query", {"type": "string"},
              "the track of a separate-channel stream: an index or a channel name (Twilio: `inbound`)"),
        P_CONSENT, P_CONSENT_H)),
    Op("/v1/audit", "GET", "getAudit", "The audit trail",
       "Every enrollment change, from this API or the CLI, oldest first.",
       (200, "AuditPage", "a page of audit entries"), (400, 401, 403),
       (P_LIMIT, Param("after", "query", {"type": "integer", "minimum": 0}, "the last id of the previous page"),
        Param("speaker", "query", {"type": "string"}, "only this speaker's entries"))),
)

AUDIO_TYPES = ("audio/wav", "audio/flac", "audio/mpeg", "audio/ogg", "application/octet-stream")


def scope_of(op: Op) -> str:
    for ep in ENDPOINTS:
        if ep.name == op.path:
            if op.method not in ep.methods:
                raise AssertionError(f"the gate does not route {op.method} {op.path}")
            return ep.scope
    raise AssertionError(f"{op.path} is not in the gate's table")


def _responses(op: Op) -> dict:
    out = {}
    for status, schema, desc in (op.ok, *op.more_ok):
        out[str(status)] = {"description": desc, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{schema}"}}}}
    for status in op.errors:
        out[str(status)] = {"description": ERRORS[status], "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}
    return out


def openapi_document(max_upload_bytes: int = DEFAULT_MAX_UPLOAD) -> dict:
    paths: dict = {}
    for op in OPERATIONS:
        scope = scope_of(op)
        entry = {"operationId": op.operation_id, "summary": op.summary,
                 "description": op.description + f" Scope: `{scope}`.",
                 "security": [{"bearer": [scope]}], "responses": _responses(op)}
        if op.params:
            entry["parameters"] = [{"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                                    "description": p.description, "schema": p.schema} for p in op.params]
        if op.body:
            entry["requestBody"] = {
                "required": True,
                "description": f"the audio file, at most {max_upload_bytes} bytes",
                "content": {t: {"schema": {"type": "string", "contentMediaType": t, "maxLength": max_upload_bytes}}
                            for t in AUDIO_TYPES}}
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "voxguard speakers API", "version": API_VERSION,
                 "description": "Enroll and erase voiceprints on a running voxguard daemon, and read the audit "
                                "trail. Every error is JSON: `{\"error\": ...}`."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a token from --token-file / $VOXGUARD_TOKENS with the "
                                                          "operation's scope (`admin` holds every scope)"}}},
    }


def _schema_text(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    if "enum" in schema:
        return " \\| ".join("null" if v is None else f"`{v}`" for v in schema["enum"])
    t = schema.get("type", "object")
    if t == "array":
        return f"array of {_schema_text(schema['items'])}"
    return " or ".join(t) if isinstance(t, list) else t


def markdown(doc: dict | None = None) -> str:
    doc = doc or openapi_document()
    out = ["# Speakers API", "",
           "<!-- generated by `python -m voxguard.daemon.openapi --markdown`; tests/test_speakers_api.py checks it -->",
           "",
           doc["info"]["description"], "",
           f"The daemon serves this API on its port (HTTP, same as `/v1/stream`) and its OpenAPI 3.1 document "
           f"at `GET {OPENAPI_PATH}` (no token). Send the token as `Authorization: Bearer TOKEN`; scopes are "
           f"explained in [protocol.md](protocol.md#authentication-and-origins). The client library and "
           f"`voxguard enroll add --url` call it (see [clients.md](clients.md)).", "",
           "    curl -H \"Authorization: Bearer $T\" --data-binary @alice.flac \\",
           "         'http://127.0.0.1:8765/v1/speakers/alice/samples?consent=REF-123'", "",
           "## Operations", ""]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            out += [f"### `{method.upper()} {path}` — {op['summary']}", "", op["description"], ""]
            if op.get("parameters"):
                out += ["| parameter | in | type | |", "| --- | --- | --- | --- |"]
                out += [f"| `{p['name']}` | {p['in']} | {_schema_text(p['schema'])} | {p['description']} |"
                        for p in op["parameters"]]
                out.append("")
            if "requestBody" in op:
                out += [f"Body: {op['requestBody']['description']} "
                        f"(`Content-Type` any of {', '.join(f'`{t}`' for t in op['requestBody']['content'])}).", ""]
            out += ["| status | answer | |", "| --- | --- | --- |"]
            for status, r in op["responses"].items():
                schema = r["content"]["application/json"]["schema"]
                out.append(f"| {status} | {_schema_text(schema)} | {r['description']} |")
            out.append("")
    out += ["## Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        parts = schema.get("allOf", [schema])
        props = {k: v for p in parts for k, v in p.get("properties", {}).items()}
        base = [_schema_text(p) for p in parts if "$ref" in p]
        out += [f"### {name}", ""]
        if schema.get("description"):
            out += [schema["description"], ""]
        if base:
            out += [f"Everything in {', '.join(base)}, plus:", ""]
        out += ["| field | type | |", "| --- | --- | --- |"]
        out += [f"| `{k}` | {_schema_text(v)} | {v.get('description', '')} |" for k, v in props.items()]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--markdown"]:
        sys.stdout.write(markdown())
    else:
        print(json.dumps(openapi_document(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
