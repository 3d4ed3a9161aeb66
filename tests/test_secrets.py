"""The secrets guard on real-format FAKE credentials (written for this file; none was ever
issued) and on prose that only looks like them, with detect-secrets' real plugins; and the
chunk path: ingest stores placeholders, never the credential."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from guardrails.registry import PolicedGuard, screen
from guardrails.secrets import SecretsGuard, find_secrets, redact_secrets
from guardrails.verdict import GuardContext
from ingest.run import build_ingest_parts, ingest_folder
from rag.settings import GuardPolicy, Settings
from tests.conftest import local_settings

# (what it is, the text, the credential in it, the placeholder it must become)
FAKE_CREDENTIALS = [
    (
        "AWS access key id",
        "Deploy with AWS_ACCESS_KEY_ID=AKIAQ7ZK3M5TJ2XW4LPB in CI.",
        "AKIAQ7ZK3M5TJ2XW4LPB",
        "[AWS_ACCESS_KEY]",
    ),
    (
        "AWS secret key in code",
        'aws_secret_access_key = "q8Zr4Tn1Lw7Yb3Kc9Vx2Hs6Md0Pf5Gj8Ra1Ne4Ub"',
        "q8Zr4Tn1Lw7Yb3Kc9Vx2Hs6Md0Pf5Gj8Ra1Ne4Ub",
        "[AWS_ACCESS_KEY]",
    ),
    (
        "GitHub token",
        "Use ghp_R7tK2mW9xQ4vL8nB3cZ6yH1pF5sD0gJ2aE4u to push.",
        "ghp_R7tK2mW9xQ4vL8nB3cZ6yH1pF5sD0gJ2aE4u",
        "[GITHUB_TOKEN]",
    ),
    (
        "GitLab token",
        "export GITLAB_TOKEN=glpat-Xk3v9QmT2wLp7RbN4sYz",
        "glpat-Xk3v9QmT2wLp7RbN4sYz",
        "[GITLAB_TOKEN]",
    ),
    (
        "Slack bot token",
        "The bot uses xoxb-482937561023-5839201746352-QwErTyUiOpAsDfGhJkLzXcVb",
        "xoxb-482937561023-5839201746352-QwErTyUiOpAsDfGhJkLzXcVb",
        "[SLACK_TOKEN]",
    ),
    (
        "Slack webhook",
        "Alerts go to https://hooks.slack.com/services/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",
        "ZxCvBnMaSdFgHjKlQwErTyUi",
        "[SLACK_TOKEN]",
    ),
    (
        "Discord webhook",
        "Releases: https://discord.com/api/webhooks/1182736450918273645/Rt4nLw7Yb3Kc9Vx2Hs6Md0Pf5Gj8Ra1Ne4UbQ7Zk3M5Tj2XwLpBr9Ys6Dq1H",
        "Rt4nLw7Yb3Kc9Vx2Hs6Md0Pf5Gj8Ra1Ne4UbQ7Zk3M5Tj2XwLpBr9Ys6Dq1H",
        "[WEBHOOK_URL]",
    ),
    (
        "Teams webhook",
        "Teams: https://acme.webhook.office.com/webhookb2/3f9a2b7c-4d1e-8f6a-0b5c-9d2e7f4a1b3c@1b3c8d2e/IncomingWebhook/9d2e7f4a1b3c8d2e7f4a/4d1e8f6a",
        "9d2e7f4a1b3c8d2e7f4a/4d1e8f6a",
        "[WEBHOOK_URL]",
    ),
    (
        "Stripe live key",
        "STRIPE_KEY=sk_live_51Hq8ZrT4nLw7Yb3Kc9Vx2Hs6Md0Pf5Gj8Ra1N",
        "sk_live_51Hq8ZrT4nLw7Yb3Kc9Vx2Hs6Md0Pf5Gj8Ra1N",
        "[STRIPE_ACCESS_KEY]",
    ),
    (
        "SendGrid key",
        "SG.Rt4nLw7Yb3Kc9Vx2Hs6Md0.Pf5Gj8Ra1Ne4UbQ7Zk3M5Tj2XwLpBr9Ys6Dq1Hc8Fv3Nm0Gt",
        "Pf5Gj8Ra1Ne4UbQ7Zk3M5Tj2XwLpBr9Ys6Dq1Hc8Fv3Nm0Gt",
        "[SENDGRID_API_KEY]",
    ),
    (
        "OpenAI key in env",
        "OPENAI_API_KEY=sk-proj-Rt4nLw7Yb3Kc9Vx2Hs6Md0Pf5T3BlbkFJGj8Ra1Ne4UbQ7Zk3M5Tj2Xw",
        "Rt4nLw7Yb3Kc9Vx2Hs6Md0Pf5T3BlbkFJ",
        "[PASSWORD]",
    ),
    (
        "JWT",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFkYSIsImlhdCI6MTUxNjIzOTAyMn0."
        "Qv8Kx2Lp9ZrT4nWb7Yc3Hs6Md0Pf5Gj8Ra1Ne4UbQ7",
        "Qv8Kx2Lp9ZrT4nWb7Yc3Hs6Md0Pf5Gj8Ra1Ne4UbQ7",
        "[JWT]",
    ),
    (
        "private key",
        "Deploy key:\n-----BEGIN RSA PRIVATE KEY-----\n"
        "MIIEowIBAAKCAQEAq8Zr4Tn1Lw7Yb3Kc9Vx2Hs6Md0Pf5Gj8Ra1Ne4UbQ7Zk3M5Tj2Xw\n"
        "LpBr9Ys6Dq1Hc8Fv3Nm0Gt5Jw2Ke7Pa4Sx9Uz1Vy6Ob8Ic3Rd0Ql5Hm2Ej7Tf4Wg\n"
        "-----END RSA PRIVATE KEY-----\nKeep it safe.",
        "LpBr9Ys6Dq1Hc8Fv3Nm0Gt5Jw2Ke7Pa4Sx9Uz1Vy6Ob8Ic3Rd0Ql5Hm2Ej7Tf4Wg",
        "[PRIVATE_KEY]",
    ),
    (
        "password in a Postgres URL",
        "DATABASE_URL=postgres://app_user:Tr0ub4dor-x9Q@db.internal:5432/payroll",
        "Tr0ub4dor-x9Q",
        "[PASSWORD]",
    ),
    (
        "password in a MongoDB URL",
        "Connect with mongodb+srv://admin:Zq7vLp2Xk9Wm@cluster0.example.net/test",
        "Zq7vLp2Xk9Wm",
        "[PASSWORD]",
    ),
    (
        "password in YAML",
        "db:\n  password: Sup3rS3cret!2024\n  user: app",
        "Sup3rS3cret!2024",
        "[PASSWORD]",
    ),
    ("password in an env file", "SMTP_PASSWORD=9fKq2Lx7Vp4Z", "9fKq2Lx7Vp4Z", "[PASSWORD]"),
    (
        "npm token",
        "//registry.npmjs.org/:_authToken=npm_Rt4nLw7Yb3Kc9Vx2Hs6Md0Pf5Gj8Ra1Ne4Ub",
        "npm_Rt4nLw7Yb3Kc9Vx2Hs6Md0Pf5Gj8Ra1Ne4Ub",
        "[NPM_TOKEN]",
    ),
    (
        "Azure storage key",
        "DefaultEndpointsProtocol=https;AccountName=acmefiles;AccountKey=q8Zr4Tn1Lw7Yb3Kc9Vx2Hs6Md0Pf5Gj8Ra1Ne4UbQ7Zk3M5Tj2XwLpBr9Ys6Dq1Hc8Fv3Nm0Gt5Jw2Ke7Pa4Sx==;EndpointSuffix=core.windows.net",
        "q8Zr4Tn1Lw7Yb3Kc9Vx2Hs6Md0Pf5Gj8Ra1Ne4UbQ7Zk3M5Tj2XwLpBr9Ys6Dq1Hc8Fv3Nm0Gt5Jw2Ke7Pa4Sx",
        "[PASSWORD]",
    ),
    (
        "Telegram bot token",
        "BOT_TOKEN=5839201746:AAHq8Zr4Tn1Lw7Yb3Kc9Vx2Hs6Md0Pf5Gj8R",
        "AAHq8Zr4Tn1Lw7Yb3Kc9Vx2Hs6Md0Pf5Gj8R",
        "[TELEGRAM_BOT_TOKEN]",
    ),
]
# Known misses, kept here so that a change either way shows: a password only prose
# introduces ("is"), with no key=value or key: value shape for detect-secrets to read.
KNOWN_MISSES = [
    ("password in a sentence", 'The staging admin password is "N7q!vR2p#Lx9"', "N7q!vR2p#Lx9"),
]
LOOK_ALIKES = [
    "Passwords must be at least 12 characters and rotated every 90 days.",
    "Never share your password with anyone, including IT staff.",
    'api_key = os.environ["API_KEY"]',
    "token = get_secret('deploy-token')",
    "Set DB_PASSWORD in your .env file before starting the service.",
    "password: <your-password-here>",
    "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY}",
    "The request id was 3f9a2b7c-4d1e-4f6a-8b5c-9d2e7f4a1b3c.",
    "Password: required",
    "API_KEY=changeme",
    "secret: xxxxxxxx",
    "password = '********'",
    "The commit 9fceb02d0ae598e95dc970b74767f19372d61af8 fixed the leak.",
    "See https://docs.example.com/api/v2/keys for how keys are issued.",
    "How do I reset my VPN password?",
    "Use the AWS console to rotate access keys every 90 days.",
    "The invoice number is INV-2024-000381 and the order id ORD-88123.",
    "Our SSH keys live in the vault; ask the platform team for access.",
]


@pytest.mark.parametrize(
    ("kind", "text", "credential", "placeholder"),
    FAKE_CREDENTIALS,
    ids=[c[0] for c in FAKE_CREDENTIALS],
)
def test_a_real_format_credential_is_replaced_by_its_typed_placeholder(
    kind: str, text: str, credential: str, placeholder: str
) -> None:
    redacted, findings = redact_secrets(text)
    assert credential not in redacted, f"{kind} survived: {redacted!r}"
    assert placeholder in redacted and findings


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_prose_references_ids_and_placeholders_are_not_secrets(text: str) -> None:
    assert find_secrets(text) == []


def test_found_and_missed_on_the_fake_set_are_what_this_file_records() -> None:
    found = [c[0] for c in FAKE_CREDENTIALS if c[2] not in redact_secrets(c[1])[0]]
    missed = [c[0] for c in KNOWN_MISSES if c[2] in redact_secrets(c[1])[0]]
    false = [t for t in LOOK_ALIKES if find_secrets(t)]
    print(
        f"secrets: found {len(found)}/{len(FAKE_CREDENTIALS) + len(KNOWN_MISSES)}, "
        f"missed {missed}; look-alikes flagged {len(false)}/{len(LOOK_ALIKES)}"
    )
    assert len(found) == len(FAKE_CREDENTIALS) and missed == [k[0] for k in KNOWN_MISSES]


def test_the_connection_string_keeps_everything_but_the_password() -> None:
    redacted, _ = redact_secrets("postgres://app_user:Tr0ub4dor-x9Q@db.internal:5432/payroll")
    assert redacted == "postgres://app_user:[PASSWORD]@db.internal:5432/payroll"


def test_the_guard_proposes_the_redacted_text_and_names_the_kinds_not_the_values() -> None:
    text = "Key AKIAQ7ZK3M5TJ2XW4LPB, db postgres://u:Tr0ub4dor-x9Q@db/x"
    verdict = asyncio.run(SecretsGuard().check(text, GuardContext()))
    assert verdict.flagged and verdict.categories == ("AWS_ACCESS_KEY", "PASSWORD")
    assert verdict.sanitized_text == "Key [AWS_ACCESS_KEY], db postgres://u:[PASSWORD]@db/x"
    assert "AKIA" not in verdict.reason and "Tr0ub4dor" not in verdict.reason
    assert not asyncio.run(SecretsGuard().check(LOOK_ALIKES[0], GuardContext())).flagged


def test_policy_decides_between_redacting_and_blocking_a_question() -> None:
    text = "Why does SMTP_PASSWORD=9fKq2Lx7Vp4Z fail?"
    context = GuardContext()
    redacting = PolicedGuard(SecretsGuard(), GuardPolicy(on_flag="redact"))
    blocking = PolicedGuard(SecretsGuard(), GuardPolicy(on_flag="block"))
    redacted = asyncio.run(screen((redacting,), text, context))
    assert redacted.blocking is None and redacted.text == "Why does SMTP_PASSWORD=[PASSWORD] fail?"
    blocked = asyncio.run(screen((blocking,), text, context))
    assert blocked.blocking is not None and blocked.text == text


def test_ingest_stores_placeholders_and_counts_the_chunks(
    provisioned: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "ops"
    folder.mkdir()
    (folder / "runbook.md").write_text(
        "# Deploying\n\nThe CI job signs in with AKIAQ7ZK3M5TJ2XW4LPB and the database is "
        "postgres://app_user:Tr0ub4dor-x9Q@db.internal:5432/payroll.\n\n"
        "# Rotation\n\nPasswords must be at least 12 characters and rotated every 90 days.\n"
    )
    parts = build_ingest_parts(local_settings(tmp_path / "data"))
    report = ingest_folder(folder, parts)
    stored = "\n".join(c.text for c in parts.store.scroll_chunks())
    assert "AKIAQ7ZK3M5TJ2XW4LPB" not in stored and "Tr0ub4dor-x9Q" not in stored
    assert "[AWS_ACCESS_KEY]" in stored and "app_user:[PASSWORD]@db.internal" in stored
    assert report.chunks_redacted >= 1 and report.summary()["chunks_redacted"] >= 1
    # The same file again: nothing to write, so the redaction stays idempotent.
    assert ingest_folder(folder, parts).unchanged == ["ops/runbook.md"]
    parts.store.close()
