"""The LLM side of generation: any OpenAI-compatible chat-completions server through the `openai` SDK.

Configuration comes from the environment, so a run can be resumed by another process:
    KERNELGEN_BASE_URL   e.g. http://localhost:8000/v1 (vLLM, SGLang), http://localhost:11434/v1 (Ollama);
                         unset: the SDK default (OPENAI_BASE_URL, else api.openai.com)
    KERNELGEN_MODEL      model name (default DEFAULT_MODEL)
    OPENAI_API_KEY       key; local servers usually need none
    KERNELGEN_LLM_RETRIES, KERNELGEN_LLM_BACKOFF, KERNELGEN_LLM_TIMEOUT  retry count, first backoff (s), timeout (s)

Retries are ours rather than the SDK's (its max_retries is 0): one loop with exponential backoff that
retries connection errors, timeouts, 429 and 5xx, logs every attempt, and ends in one clear `LLMError`.
Answers are read from fenced code blocks (kernelgen/agents/answers.py): ```python (kernel.py) and ```toml
(spec.toml).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kernelgen.agents.answers import code_blocks, parse_answer  # noqa: F401  (the client's answer readers)
from kernelgen.errors import KernelgenError

DEFAULT_MODEL = "gpt-4.1"
PACKAGE_DIR = Path(__file__).resolve().parent.parent


class LLMError(KernelgenError):
    """The LLM endpoint could not give an answer (unreachable, refused, or kept failing)."""


def llm_configured() -> bool:
    """Whether the environment names an LLM: a key or an endpoint (local servers often need no key)."""
    return bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("KERNELGEN_BASE_URL"))


def _env_number(var: str, default, kind):
    raw = os.environ.get(var, "")
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise KernelgenError(f"{var} must be a non-negative {kind.__name__}, got {raw!r}")
    return value


@dataclass
class LLMConfig:
    base_url: str | None
    model: str
    api_key: str
    timeout: float = 120.0
    retries: int = 3  # retries after the first attempt
    backoff: float = 1.0  # seconds before the first retry; doubles each time

    @classmethod
    def from_env(cls) -> LLMConfig:
        env = os.environ
        return cls(
            base_url=env.get("KERNELGEN_BASE_URL") or None,
            model=env.get("KERNELGEN_MODEL") or DEFAULT_MODEL,
            # the SDK insists on a key; servers such as vLLM or Ollama ignore it
            api_key=env.get("OPENAI_API_KEY") or "not-needed",
            timeout=_env_number("KERNELGEN_LLM_TIMEOUT", 120.0, float),
            retries=_env_number("KERNELGEN_LLM_RETRIES", 3, int),
            backoff=_env_number("KERNELGEN_LLM_BACKOFF", 1.0, float),
        )

    def endpoint(self) -> str:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"


@dataclass
class LLMClient:
    config: LLMConfig = field(default_factory=LLMConfig.from_env)
    attempts: list[str] = field(default_factory=list)  # one line per HTTP attempt, for the run report
    # told of every failed attempt as it happens ("HTTP 500: overloaded; retry 1 of 3 in 1.0 s"), so the
    # progress output shows a slow server rather than a silent wait
    notify: Callable[[str], None] | None = field(default=None, repr=False)
    _client: object = field(default=None, repr=False)

    def _sdk(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(api_key=self.config.api_key, base_url=self.config.base_url,
                                  timeout=self.config.timeout, max_retries=0)
        return self._client

    def complete(self, system: str, user: str, temperature: float = 0.2) -> str:
        """One chat completion; retried with exponential backoff on transient failures."""
        import openai

        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        last = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                wait = self.config.backoff * 2 ** (attempt - 1)
                if self.notify is not None:
                    self.notify(f"LLM attempt {attempt} failed ({last}); retry {attempt} of "
                                f"{self.config.retries} in {wait:g} s")
                time.sleep(wait)
            try:
                resp = self._sdk().chat.completions.create(
                    model=self.config.model, messages=messages, temperature=temperature)
            except openai.APIStatusError as exc:
                last = f"HTTP {exc.status_code}: {_short(_error_text(exc))}"
                self.attempts.append(last)
                if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                    continue
                raise LLMError(f"the LLM endpoint {self.config.endpoint()} refused the request ({last})") from None
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                last = _connection_reason(exc)
                self.attempts.append(last)
                continue
            self.attempts.append("HTTP 200")
            content = resp.choices[0].message.content if resp.choices else None
            if not content:
                raise LLMError(f"the LLM endpoint {self.config.endpoint()} answered with no content")
            return content
        raise LLMError(f"the LLM endpoint {self.config.endpoint()} failed {self.config.retries + 1} times "
                       f"(last: {last})")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_text(exc) -> str:
    """The server's own error message (OpenAI-style {"error": {"message": ...}}), else the SDK's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return re.sub(r"^Error code: \d+ - ", "", str(exc.message))


def _connection_reason(exc: Exception) -> str:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    cause = exc.__cause__ or exc.__context__
    while cause is not None and cause.__cause__ is not None and "refused" not in str(cause).lower():
        cause = cause.__cause__
    reason = str(cause) if cause is not None else str(exc)
    if "refused" in reason.lower():
        return "connection refused"
    return _short(f"cannot connect: {reason}")


# ---- prompt templates ------------------------------------------------------------------------------
PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")


def prompts_dir() -> Path:
    """prompts/ shipped in the wheel (kernelgen/prompts), or at the repository root in a checkout."""
    installed = PACKAGE_DIR / "prompts"
    return installed if installed.is_dir() else PACKAGE_DIR.parent / "prompts"


def render(name: str, **values: str) -> str:
    """Fill the named {placeholders} of prompts/<name>.txt. Only `{word}` is a placeholder, so TOML inline
    tables and code with braces pass through; a placeholder without a value is an error, not a blank."""
    path = prompts_dir() / f"{name}.txt"
    template = path.read_text()

    def fill(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"{path}: placeholder {{{key}}} has no value")
        return str(values[key])

    return PLACEHOLDER_RE.sub(fill, template)


def prompt_placeholders(name: str) -> set[str]:
    return set(PLACEHOLDER_RE.findall((prompts_dir() / f"{name}.txt").read_text()))
