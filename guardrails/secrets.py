"""Secrets: cloud keys, tokens, private keys and passwords, found by detect-secrets' plugins
and replaced by a typed placeholder (`[AWS_ACCESS_KEY]`) before a model, an answer, a cited
passage or the quarantine view can show them.

The detectors are detect-secrets' own (the set LLM Guard's Secrets scanner also runs);
this module decides only which of them suit prose and which of their findings are not
secrets: words, references to where a secret lives, templates and placeholders.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from guardrails.verdict import CheckedAs, GuardContext, Verdict, clean, flagged, unavailable

if TYPE_CHECKING:
    from detect_secrets.plugins.base import BasePlugin

# detect-secrets' type names, as placeholders a reader understands. A password inside a
# connection string (`postgres://app:[PASSWORD]@db`) keeps the rest of the URL readable.
_PLACEHOLDER_NAMES = {
    "Basic Auth Credentials": "PASSWORD",
    "Secret Keyword": "PASSWORD",
    "Base64 High Entropy String": "SECRET",
    "Hex High Entropy String": "SECRET",
    "JSON Web Token": "JWT",
    "Slack Token": "SLACK_TOKEN",
    "NPM tokens": "NPM_TOKEN",
}
# Public IP addresses are not credentials (the PII guard has IP_ADDRESS).
_NOT_SECRETS = frozenset({"Public IP (ipv4)"})
# High-entropy plugins' thresholds: detect-secrets' defaults.
_BASE64_LIMIT = 4.5
_HEX_LIMIT = 3.0
# A value after `password:` that is a plain word ("Password: required") or a stand-in for one.
_WORD = re.compile(r"[A-Za-z]+")
_STAND_INS = re.compile(
    r"^(?:x+|\*+|\.+|-+|changeme|change_me|example\w*|dummy\w*|placeholder\w*|redacted|"
    r"your[_-]?\w+|my[_-]?\w+|none|null|true|false|secret|password|\[[A-Z_]+\])$",
    re.IGNORECASE,
)
_PRIVATE_KEY_END = re.compile(r"-----END[ A-Z0-9]*PRIVATE KEY[ A-Z0-9]*-----")


def _webhook_detector() -> BasePlugin:
    from detect_secrets.plugins.base import RegexBasedDetector

    class WebhookURLDetector(RegexBasedDetector):
        """Incoming-webhook URLs: anyone holding one can post as the integration. Slack's are
        detect-secrets' own (Slack Token); these are the other chat tools' URL shapes."""

        secret_type = "Webhook URL"
        denylist = (
            re.compile(r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[\w-]+"),
            re.compile(r"https://[\w-]+\.webhook\.office\.com/webhookb2/[^\s\"'<>]+"),
            re.compile(r"https://chat\.googleapis\.com/v1/spaces/[\w-]+/messages\?key=[^\s\"'<>]+"),
        )

    return WebhookURLDetector()


@dataclass(frozen=True)
class SecretFinding:
    kind: str
    start: int
    end: int

    @property
    def placeholder(self) -> str:
        return f"[{self.kind}]"


@functools.cache
def placeholder_name(secret_type: str) -> str:
    return _PLACEHOLDER_NAMES.get(secret_type) or re.sub(r"\W+", "_", secret_type).upper()


@functools.cache
def _plugins() -> tuple[BasePlugin, ...]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.high_entropy_strings import (
        Base64HighEntropyString,
        HexHighEntropyString,
    )

    plugins: list[BasePlugin] = []
    mapping: Mapping[str, type[BasePlugin]] = get_mapping_from_secret_type_to_class()
    for secret_type, plugin_class in mapping.items():
        if secret_type in _NOT_SECRETS:
            continue
        if plugin_class is Base64HighEntropyString:
            plugins.append(Base64HighEntropyString(limit=_BASE64_LIMIT))
        elif plugin_class is HexHighEntropyString:
            plugins.append(HexHighEntropyString(limit=_HEX_LIMIT))
        else:
            plugins.append(plugin_class())
    return (*plugins, _webhook_detector())


def _keyword_patterns() -> dict[re.Pattern[str], int]:
    from detect_secrets.plugins import keyword

    # Documents are prose and configuration both: `password: x`, `PASSWORD=x` and the
    # quoted forms of code.
    return {
        **keyword.CONFIG_DENYLIST_REGEX_TO_GROUP,
        **keyword.QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP,
    }


# Types detect-secrets guesses from context (a keyword before a value, a quoted string's
# entropy) rather than from a format the issuer defines: their findings need more filtering.
_GUESSED_TYPES = frozenset(
    {"Secret Keyword", "Base64 High Entropy String", "Hex High Entropy String"}
)
_HAS_DIGIT = re.compile(r"\d")


def _is_not_a_secret(value: str, line: str, plugin: BasePlugin) -> bool:
    """detect-secrets' own false-positive filters, plus the ones prose needs."""
    from detect_secrets.filters import heuristic

    if plugin.secret_type == "Private Key":
        return False
    if len(value) < 4 or any(c.isspace() for c in value):
        return True
    if heuristic.is_templated_secret(value) or _STAND_INS.match(value):
        return True
    if plugin.secret_type in _GUESSED_TYPES:
        # `api_key = os.environ["API_KEY"]`, `token = get_secret('deploy-token')`,
        # `Password: required`, a request id: a reference, an identifier, a word or an id,
        # not a value. (A format an issuer defines, like a webhook URL, may hold a UUID.)
        return (
            not _HAS_DIGIT.search(value)
            or heuristic.is_potential_uuid(value)
            or heuristic.is_sequential_string(value)
            or heuristic.is_prefixed_with_dollar_sign(value)
            or heuristic.is_likely_id_string(value, line, plugin)
            or heuristic.is_not_alphanumeric_string(value)
            # Last and on the words around the value: its pattern backtracks on a long line
            # (a paragraph of prose is one), and cost 60 % of the guard's time there.
            or heuristic.is_indirect_reference(_around(value, line))
        )
    return False


def _around(value: str, line: str, reach: int = 80) -> str:
    """The stretch of `line` an assignment of `value` can span."""
    at = max(line.find(value), 0)
    return line[max(0, at - reach) : at + len(value) + reach]


def _match_span(match: re.Match[str]) -> tuple[int, int]:
    """Where the secret is in a plugin's match: the longest group, unless that group only
    opens the match (`ghp` of a GitHub token), in which case the whole match."""
    groups = [i for i in range(1, (match.re.groups or 0) + 1) if match.group(i)]
    if not groups:
        return match.span()
    longest = max(groups, key=lambda i: len(match.group(i)))
    if match.start(longest) == match.start():
        return match.span()
    return match.span(longest)


_TOKEN_CHARS = re.compile(r"[\w+/=-]*")


def _line_findings(line: str) -> list[tuple[str, int, int]]:
    """(placeholder name, start, end) for each secret in one line."""
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.plugins.high_entropy_strings import HighEntropyStringsPlugin
    from detect_secrets.plugins.keyword import KeywordDetector

    found: list[tuple[str, int, int]] = []
    for plugin in _plugins():
        kind = placeholder_name(plugin.secret_type)
        if isinstance(plugin, RegexBasedDetector):
            for regex in plugin.denylist:
                for match in regex.finditer(line):
                    start, end = _match_span(match)
                    # A format's pattern may stop short of a longer token of the same issuer
                    # (newer Stripe keys): the secret runs to the token's end.
                    if plugin.secret_type != "Basic Auth Credentials":
                        end = _TOKEN_CHARS.match(line, end).end()  # type: ignore[union-attr]
                    if not _is_not_a_secret(line[start:end], line, plugin):
                        found.append((kind, start, end))
            continue
        if isinstance(plugin, KeywordDetector):
            values = plugin.analyze_string(line, denylist_regex_to_group=_keyword_patterns())
        else:
            values = plugin.analyze_string(line)
        for raw in values:
            value = raw.strip().strip("'\"`;,")
            if isinstance(plugin, KeywordDetector) and value:
                # `key: value` patterns run to the end of the line: in prose the secret is the
                # first word after the key ("SMTP_PASSWORD=9fKq2Lx7Vp4Z fails"), without the
                # sentence's closing punctuation.
                value = value.split()[0].rstrip(".,;:?)")
            if not value or _is_not_a_secret(value, line, plugin):
                continue
            if isinstance(plugin, HighEntropyStringsPlugin) and (
                plugin.calculate_shannon_entropy(value) <= plugin.entropy_limit
            ):
                # The plugins apply their entropy limit in analyze_line, not analyze_string:
                # without it every quoted word would be a secret.
                continue
            position = line.find(value)
            while position >= 0:
                found.append((kind, position, position + len(value)))
                position = line.find(value, position + len(value))
    return found


def find_secrets(text: str) -> list[SecretFinding]:
    """Non-overlapping findings in `text`, the longest winning an overlap."""
    spans: list[SecretFinding] = []
    offset = 0
    for line in text.splitlines(keepends=True):
        for kind, start, end in _line_findings(line):
            start, end = offset + start, offset + end
            if kind == "PRIVATE_KEY":
                # The plugin finds the header's words; the key is the whole block.
                while start > 0 and text[start - 1] == "-":
                    start -= 1
                footer = _PRIVATE_KEY_END.search(text, end)
                end = footer.end() if footer else len(text)
            spans.append(SecretFinding(kind, start, end))
        offset += len(line)
    kept: list[SecretFinding] = []
    for span in sorted(spans, key=lambda s: (-(s.end - s.start), s.start)):
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def redact_secrets(text: str) -> tuple[str, list[SecretFinding]]:
    findings = find_secrets(text)
    pieces: list[str] = []
    cursor = 0
    for finding in findings:
        pieces += [text[cursor : finding.start], finding.placeholder]
        cursor = finding.end
    pieces.append(text[cursor:])
    return "".join(pieces), findings


class SecretsGuard:
    """Flags text holding credentials; its verdict carries the text with each replaced."""

    name = "secrets"
    checks: frozenset[CheckedAs] = frozenset({"question", "chunk", "answer"})
    available = True

    def check_sync(self, text: str) -> Verdict:
        started = time.perf_counter()
        try:
            sanitized, findings = redact_secrets(text)
        except (ImportError, re.error, RecursionError) as exc:
            return unavailable(self.name, f"detect-secrets failed: {type(exc).__name__}: {exc}")
        ms = (time.perf_counter() - started) * 1000
        if not findings:
            return clean(self.name).timed(ms)
        kinds = tuple(sorted({f.kind for f in findings}))
        reason = f"{len(findings)} secret(s): {', '.join(kinds)}"
        return flagged(self.name, 1.0, kinds, reason, sanitized=sanitized).timed(ms)

    async def check(self, text: str, context: GuardContext) -> Verdict:
        # Regular expressions over at most a few thousand characters: well under a
        # millisecond, not worth a thread hop.
        return self.check_sync(text)
