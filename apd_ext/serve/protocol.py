"""The OpenAI API as the server speaks it: request bodies parsed and checked field by field, the
error body, and the response / stream-chunk shapes of /v1/completions and /v1/chat/completions.

Every request field is one of: read (the prompt or messages, max_tokens, the sampling knobs,
seed, stop, stream), accepted and ignored when it asks for nothing (n=1, user, zero penalties, an
empty logit_bias, ...), or refused with a 400 naming it (n > 1, logprobs, echo, tools, unknown
fields, ...). `ApiError` carries the status and the OpenAI error body:

    {"error": {"message": str, "type": "invalid_request_error", "param": str | None, "code": str | None}}

Sampling knobs are checked here with DecodeConfig's rules (apd_ext.decode.config
.check_sampling_knob), so that the message names the OpenAI field; the engine checks them again.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field

from apd_ext.decode.config import check_sampling_knob

MAX_STOP = 4             # stop strings per request (OpenAI's limit)
MAX_SEED = 2**64 - 1     # generate's seeds are unsigned 64-bit


class ApiError(Exception):
    """An error response: HTTP `status` and the OpenAI error body naming `param` (the request
    field at fault, None when none is). type: "invalid_request_error" (4xx), "server_error" (5xx),
    or a more specific OpenAI type; code: a short machine-readable reason or None."""

    def __init__(self, status: int, message: str, param: str | None = None, *,
                 type: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str | None, message: str) -> ApiError:
    """A 400 naming `param`."""
    return ApiError(400, message, param)


# --- the parsed request ----------------------------------------------------------------------------

@dataclass
class GenerationRequest:
    """A /v1/completions or /v1/chat/completions body, checked.

    chat: True for chat completions. prompt: the prompt text (completions), or None;
    prompt_ids: a token-id prompt (completions), or None; messages: the conversation (chat), each
    {"role": str, "content": str} (text parts joined), or None. max_tokens_field: the field
    max_tokens came from (for error messages). max_tokens: None for the server's
    default. temperature / top_p / top_k / mixture_weight / seed: None for the server's default
    (seed None: random). stop: up to 4 non-empty strings. stream, include_usage: SSE and the usage
    chunk (stream_options.include_usage). model: the model field as sent (None if absent)."""

    chat: bool
    model: str | None = None
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    messages: list[dict] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    mixture_weight: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    max_tokens_field: str = "max_tokens"  # the field max_tokens came from (chat: max_completion_tokens)


def parse_json(raw: bytes):
    """The request body as JSON, or a 400."""
    if not raw.strip():
        raise bad(None, "the request body is empty: send a JSON object")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise bad(None, "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise bad(None, f"the request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None


# --- field checks: each returns the value canonical or raises a 400 naming the field ----------------

def _type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(value), type(value).__name__)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(name: str, value, low: int, high: int | None = None) -> int | None:
    if value is None:
        return None
    if not _is_int(value):
        raise bad(name, f"{name} must be an integer, got {_type_name(value)} {value!r:.40}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise bad(name, f"{name} must be an integer {bound}, got {value}")
    return value


def _knob(name: str, value):
    """A sampling knob (temperature, top_p, top_k, mixture_weight) by DecodeConfig's rules."""
    if value is None:
        return None
    if name == "top_k":
        if not _is_int(value):
            raise bad(name, f"top_k must be an integer >= 0 (0: no filter), got {_type_name(value)} {value!r:.40}")
    elif not _is_number(value) or not math.isfinite(value):
        raise bad(name, f"{name} must be a finite number, got {_type_name(value)} {value!r:.40}")
    try:
        return check_sampling_knob(name, value)
    except (ValueError, TypeError) as e:
        raise bad(name, str(e)) from None


def _bool(name: str, value) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(name, f"{name} must be a boolean, got {_type_name(value)} {value!r:.40}")
    return value


def _stop(value) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", f"stop must be a string or an array of strings, got {_type_name(value)}")
    if len(stops) > MAX_STOP:
        raise bad("stop", f"stop takes at most {MAX_STOP} strings, got {len(stops)}")
    if any(not s for s in stops):
        raise bad("stop", "stop strings must not be empty")
    return list(stops)


def _stream_options(value, stream: bool) -> bool:
    """include_usage of stream_options (which only goes with stream=true)."""
    if value is None:
        return False
    if not stream:
        raise bad("stream_options", "stream_options is only allowed with stream=true")
    if not isinstance(value, dict):
        raise bad("stream_options", f"stream_options must be an object, got {_type_name(value)}")
    unknown = sorted(set(value) - {"include_usage", "continuous_usage_stats", "include_obfuscation"})
    if unknown:
        raise bad("stream_options", f"stream_options.{unknown[0]} is not supported (it takes include_usage)")
    if value.get("continuous_usage_stats"):
        raise bad("stream_options", "stream_options.continuous_usage_stats is not supported")
    return _bool("stream_options.include_usage", value.get("include_usage"))


# Fields accepted when they ask for nothing: name -> predicate on the value (None always passes).
def _zero(v):
    return _is_number(v) and v == 0


HARMLESS = {
    "user": lambda v: isinstance(v, str),
    "safety_identifier": lambda v: isinstance(v, str),
    "prompt_cache_key": lambda v: isinstance(v, str),
    "n": lambda v: v == 1 and _is_int(v),
    "best_of": lambda v: v == 1 and _is_int(v),
    "presence_penalty": _zero,
    "frequency_penalty": _zero,
    "logit_bias": lambda v: v == {},
    "echo": lambda v: v is False,
    "suffix": lambda v: v == "",
    "logprobs": lambda v: v is False,          # chat's boolean; completions' integer is refused
    "top_logprobs": lambda v: _zero(v),
    "tools": lambda v: v == [],
    "tool_choice": lambda v: v == "none",
    "functions": lambda v: v == [],
    "function_call": lambda v: v == "none",
    "parallel_tool_calls": lambda v: isinstance(v, bool),
    "response_format": lambda v: isinstance(v, dict) and v.get("type") == "text" and len(v) == 1,
    "store": lambda v: v is False,
    "metadata": lambda v: isinstance(v, dict),
    "service_tier": lambda v: v in ("auto", "default"),
    "modalities": lambda v: v == ["text"],
    "reasoning_effort": lambda v: False,
    "audio": lambda v: False,
    "prediction": lambda v: False,
    "web_search_options": lambda v: False,
}
WHY_NOT = {  # the message for a refused value of a HARMLESS field
    "n": "n > 1 is not supported: send one request per completion",
    "best_of": "best_of > 1 is not supported",
    "presence_penalty": "presence_penalty is not supported (only 0)",
    "frequency_penalty": "frequency_penalty is not supported (only 0)",
    "logit_bias": "logit_bias is not supported (only an empty object)",
    "echo": "echo is not supported",
    "suffix": "suffix (insertion) is not supported",
    "logprobs": "logprobs are not returned by this server",
    "top_logprobs": "top_logprobs are not returned by this server",
    "tools": "tools (function calling) are not supported",
    "tool_choice": "tool_choice is not supported (no tools)",
    "functions": "functions are not supported",
    "function_call": "function_call is not supported",
    "response_format": "response_format other than {\"type\": \"text\"} is not supported",
}
COMMON = ("model", "max_tokens", "temperature", "top_p", "top_k", "mixture_weight", "seed", "stop", "stream",
          "stream_options")
COMPLETION_FIELDS = set(COMMON) | {"prompt"} | {"user", "n", "best_of", "presence_penalty", "frequency_penalty",
                                                "logit_bias", "echo", "suffix", "logprobs"}
CHAT_FIELDS = set(COMMON) | {"messages", "max_completion_tokens"} | (set(HARMLESS) - {"best_of", "echo", "suffix"})


def _check_fields(body: dict, known: set, kind: str) -> None:
    for name in body:
        if name not in known:
            raise bad(name, f"unknown field {name!r} for {kind}")
    for name, ok in HARMLESS.items():
        if name in known and body.get(name) is not None and not ok(body[name]):
            raise bad(name, WHY_NOT.get(name, f"{name} is not supported by this server"))


def _common(body: dict, req: GenerationRequest) -> GenerationRequest:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", f"model must be a string, got {_type_name(model)}")
    req.model = model
    req.max_tokens = _int("max_tokens", body.get("max_tokens"), 1)
    for name in ("temperature", "top_p", "top_k", "mixture_weight"):
        setattr(req, name, _knob(name, body.get(name)))
    req.seed = _int("seed", body.get("seed"), 0, MAX_SEED)
    req.stop = _stop(body.get("stop"))
    req.stream = _bool("stream", body.get("stream"))
    req.include_usage = _stream_options(body.get("stream_options"), req.stream)
    return req


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise bad(None, f"the request body must be a JSON object, got {_type_name(body)}")
    return body


def parse_completion(body) -> GenerationRequest:
    """A /v1/completions body: prompt is a string, an array of one string, an array of token ids, or
    an array of one such array."""
    body = _object(body)
    _check_fields(body, COMPLETION_FIELDS, "/v1/completions")
    if body.get("logprobs") not in (None, False):  # an integer in the completions API: any value asks for them
        raise bad("logprobs", WHY_NOT["logprobs"])
    req = _common(body, GenerationRequest(chat=False))
    req.prompt, req.prompt_ids = _prompt(body.get("prompt", None), "prompt" in body)
    return req


def _prompt(value, present: bool) -> tuple[str | None, list[int] | None]:
    if not present or value is None:
        raise bad("prompt", "prompt is required (a string, or an array of token ids)")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one
    if isinstance(value, str):
        if not value:
            raise bad("prompt", "prompt must not be empty")
        return value, None
    if isinstance(value, list) and value and all(_is_int(t) for t in value):
        if any(t < 0 for t in value):
            raise bad("prompt", "prompt token ids must be >= 0")
        return None, list(value)
    if isinstance(value, list) and not value:
        raise bad("prompt", "prompt must not be empty")
    if isinstance(value, list) and len(value) > 1 and all(isinstance(p, (str, list)) for p in value):
        raise bad("prompt", "a batch of several prompts is not supported: send one request per prompt")
    raise bad("prompt", f"prompt must be a string or an array of token ids, got {_type_name(value)}")


def parse_chat(body) -> GenerationRequest:
    """A /v1/chat/completions body: messages [{"role", "content"}, ...] (content a string or an
    array of {"type": "text", "text": str} parts); max_completion_tokens is max_tokens' newer name."""
    body = _object(body)
    _check_fields(body, CHAT_FIELDS, "/v1/chat/completions")
    req = _common(body, GenerationRequest(chat=True))
    newer = _int("max_completion_tokens", body.get("max_completion_tokens"), 1)
    if newer is not None:
        if req.max_tokens is not None and req.max_tokens != newer:
            raise bad("max_completion_tokens", "max_tokens and max_completion_tokens differ: send one of them")
        req.max_tokens, req.max_tokens_field = newer, "max_completion_tokens"
    req.messages = _messages(body.get("messages"))
    return req


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise bad("messages", "messages must be a non-empty array of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, f"{where} must be an object with role and content, got {_type_name(m)}")
        unknown = sorted(set(m) - {"role", "content", "name"})
        if unknown:
            raise bad(f"{where}.{unknown[0]}", f"{where}.{unknown[0]} is not supported (messages take role, "
                                               f"content and name)")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise bad(f"{where}.role", f"{where}.role must be a non-empty string (system, user, assistant)")
        out.append({"role": role, "content": _content(m.get("content"), f"{where}.content")})
    return out


def _content(value, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}[{j}]", f"{where}[{j}]: only text parts ({{\"type\": \"text\", \"text\": str}}) "
                                           f"are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(where, f"{where} must be a string or an array of text parts, got {_type_name(value)}")


# --- responses -------------------------------------------------------------------------------------

def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class Shape:
    """The fixed fields of one request's response or chunks."""

    chat: bool
    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def response(self, text: str, finish_reason: str, use: dict) -> dict:
        """The non-streamed response."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            return {**self._head("chat.completion"), "choices": [choice], "usage": use}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": use}

    def chunk(self, text: str | None, finish_reason: str | None = None, *, role: bool = False,
              with_usage: bool = False) -> dict:
        """One stream chunk carrying `text` (chat: a delta; role=True adds the assistant role, text
        None leaves content out); with_usage adds "usage": null (stream_options.include_usage)."""
        if self.chat:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            out = {**self._head("text_completion"), "choices": [choice]}
        if with_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, use: dict) -> dict:
        """The last chunk of a stream with stream_options.include_usage: no choices, the usage."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": use}


def sse(payload) -> bytes:
    """One server-sent event: `data: <json>\\n\\n` (payload "[DONE]" as is)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
