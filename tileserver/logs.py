"""Log lines without secrets: `tileserver serve` runs every handler through RedactSecrets.

A request line keeps its path and query with `api_key=***`; `Authorization` values, URL
passwords (`postgresql://user:***@host`) and the values of the credential variables
(vsi.SECRET_VARIABLES: AWS secret and session token, the GCS key) become `***`, in the
message, its arguments and a traceback alike.

Query parameter names are compared as the server reads them (percent-decoded, `+` as a
space, any letter case, surrounding spaces ignored), so `api%5Fkey=`, `API_KEY=` and a
repeated parameter are all masked; and anything shaped like one of our API keys
(`tsk_<12 hex>_<secret>`, catalog.keys.TOKEN), plain or percent-encoded, is masked wherever
it appears (a Referer, a URL in an error).
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any
from urllib.parse import unquote_plus

from tileserver.ingest.vsi import redact

# query parameters that carry a credential: ours, and presigned S3 / GCS URLs'
SECRET_PARAMETERS = frozenset(
    {
        "api_key",
        "apikey",
        "api-key",
        "access_token",
        "x-amz-signature",
        "x-amz-security-token",
        "x-amz-credential",
        "x-goog-signature",
        "x-goog-credential",
    }
)
QUERY_SECRETS = re.compile(  # the plain spellings (kept: other modules and tests use it)
    r"(?i)\b(api_key|apikey|access_token|x-amz-signature|x-amz-security-token|"
    r"x-amz-credential|x-goog-signature|x-goog-credential)=[^&\s\"'#]+"
)
# any `name=value` of a query string; a name may hold percent escapes and `+`
QUERY_PAIR = re.compile(r"([^\s?&;=#\"'<>]+)=([^&;\s\"'#<>]*)")
# a run of URL characters (percent escapes included) that may hold a key, encoded or not
URL_RUN = re.compile(r"[A-Za-z0-9_.~+%-]{20,}")
API_TOKEN = re.compile(r"(?i)tsk_[0-9a-f]{12}_[A-Za-z0-9_-]{8,}")  # catalog.keys.TOKEN's shape
MASK = "***"
AUTHORIZATION = re.compile(  # a header as text: `Authorization: Bearer x`, `{"x-api-key": ...`
    r"(?i)(\b(?:(?:proxy-)?authorization|x-api-key|api[_-]?key)[\"']?\s*[:=,]\s*[\"']?"
    r"(?:(?:bearer|basic|token|digest)\s+)?)[^\s\"',;&)}\]]+"
)
SCHEMES = re.compile(r"(?i)(\bbearer\s+)[^\s\"',;)}\]]+|(\bbasic\s+)[A-Za-z0-9+/]{8,}=*")
# a URL with a password inside a logged query string: percent-encoded
ENCODED_PASSWORD = re.compile(r"(?i)(%3A%2F%2F[^:/@%\s&]+%3A)[^@/\s&]*?(%40)")
PLAIN = (int, float, bool, type(None))  # arguments formatted as numbers keep their type


def redact_url(url: str) -> str:
    """`url` (or any text holding URLs) without the passwords of its `user:password@`."""
    return re.sub(r"(://[^:/@\s]*):[^/\s]*@", r"\1:***@", url)  # to the last @: p@ss too


def decoded(text: str, rounds: int = 3) -> str:
    """`text` percent-decoded (`+` as a space) until it no longer changes, at most `rounds`."""
    for _ in range(rounds):
        plain = unquote_plus(text)
        if plain == text:
            break
        text = plain
    return text


def _masked_pair(match: re.Match) -> str:
    """A query `name=value` with the value masked when the decoded name is a credential's."""
    name, value = match.group(1), match.group(2)
    if value and decoded(name).strip().lower() in SECRET_PARAMETERS:
        return f"{name}={MASK}"
    return match.group(0)


def _masked_run(match: re.Match) -> str:
    """A run of URL characters, masked when it holds an API key once decoded."""
    run = match.group(0)
    return MASK if API_TOKEN.search(decoded(run)) else run


def scrub(text: str) -> str:
    """`text` with every secret this module knows of replaced by `***`."""
    text = ENCODED_PASSWORD.sub(r"\1***\2", redact_url(redact(text)))
    text = QUERY_SECRETS.sub(r"\1=***", text)
    text = QUERY_PAIR.sub(_masked_pair, text)
    text = API_TOKEN.sub(MASK, text)
    text = URL_RUN.sub(_masked_run, text)
    text = AUTHORIZATION.sub(r"\1***", text)
    return SCHEMES.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


class RedactSecrets(logging.Filter):
    """A handler filter scrubbing each record's message, arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; every record is kept."""
        record.msg = scrub(record.msg if isinstance(record.msg, str) else str(record.msg))
        if isinstance(record.args, dict):
            record.args = {k: _scrubbed(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(_scrubbed(arg) for arg in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


def _scrubbed(arg: Any) -> Any:
    """An argument as logged, scrubbed (objects as their text: an exception names a URL)."""
    return arg if isinstance(arg, PLAIN) else scrub(str(arg))


def log_config() -> dict:
    """uvicorn's logging setup with RedactSecrets on its handlers, the root logger's too."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": "tileserver.logs.RedactSecrets"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    # the app's own loggers (tileserver, rasterio) through the same handler, WARNING and up
    # as Python's last-resort handler showed them before
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    # one JSON line per request with its timings (metrics.RequestMetrics)
    config["loggers"]["tileserver.requests"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    return config
