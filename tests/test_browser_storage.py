"""What a PII conversation leaves in the browser (issue 20, item 1): one conversation through
the real chat (`guardrag chat` over the real pipeline) in Debian's Chromium driven by
Playwright, then every store a page can write scanned for the raw values: localStorage,
sessionStorage, IndexedDB (names and every record), Cache Storage and cookies. The page itself
shows the asker's own words (that is the control that the scan would see them)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from rag.settings import Settings
from tests.conftest import EXAMPLES
from tests.guardrag_processes import guardrag_server, run_cli
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, Visit, playwright_api
from tests.test_pii_leaks import leaks_in

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="apt-get install chromium (see .ci/run)"),
]

# A name, an e-mail address and a phone number, in one question.
QUESTION = (
    "Hi, I am Siobhan Kelly, e-mail siobhan.kelly@example.com, phone +44 20 7946 0958. "
    "How many days of annual leave do I get?"
)

# Everything the page's origin keeps in the browser, as one JSON text.
BROWSER_STORAGE = """async () => {
  const entries = (storage) => Object.fromEntries(
    Array.from({length: storage.length}, (_, i) => storage.key(i))
      .map((key) => [key, storage.getItem(key)]));
  const request = (r) => new Promise((ok, fail) => {
    r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
  const databases = {};
  for (const {name} of await indexedDB.databases()) {
    const db = await request(indexedDB.open(name));
    const stores = {};
    for (const store of Array.from(db.objectStoreNames)) {
      stores[store] = await request(db.transaction(store).objectStore(store).getAll());
    }
    db.close();
    databases[name] = stores;
  }
  const cached = {};
  for (const name of await caches.keys()) {
    cached[name] = (await (await caches.open(name)).keys()).map((r) => decodeURIComponent(r.url));
  }
  return JSON.stringify({local: entries(localStorage), session: entries(sessionStorage),
                         indexedDB: databases, caches: cached});
}"""


# The scan's own control: one value written into each store the scan reads.
PLANT = """async (value) => {
  localStorage.setItem("control-local", value);
  sessionStorage.setItem("control-session", value);
  const db = await new Promise((ok) => {
    const r = indexedDB.open("control-db");
    r.onupgradeneeded = () => r.result.createObjectStore("control-store");
    r.onsuccess = () => ok(r.result);
  });
  await new Promise((ok) => {
    const t = db.transaction("control-store", "readwrite");
    t.objectStore("control-store").put({value}, "control");
    t.oncomplete = ok;
  });
  db.close();
  await (await caches.open("control-cache")).put("/control?" + encodeURIComponent(value),
                                                 new Response("x"));
}"""


@pytest.fixture(scope="module")
def chat_url(provisioned: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The single-user chat (no login) over the ingested handbook."""
    data_dir = tmp_path_factory.mktemp("browser-storage-data")
    env = {**os.environ, "GUARDRAG_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    run_cli(["ingest", str(EXAMPLES)], env)
    with guardrag_server("chat", env, data_dir / "chat.log") as url:
        yield url


def test_a_pii_conversation_leaves_no_raw_value_in_the_browsers_storage(chat_url: str) -> None:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            visit = Visit(browser, chat_url)
            visit.page.goto(chat_url)
            visit.page.wait_for_selector("#question textarea", timeout=60_000)
            _, lengths = visit.ask(QUESTION)
            assert lengths, "the answer streamed into the page"
            page_text = visit.page.inner_text("body")
            stored = str(visit.page.evaluate(BROWSER_STORAGE))
            cookies = json.dumps(visit.context.cookies())
            # The control: the same scan, with the e-mail written into every store, finds it
            # in every store.
            email = "siobhan.kelly@example.com"
            visit.page.evaluate(PLANT, email)
            planted = json.loads(visit.page.evaluate(BROWSER_STORAGE))
        finally:
            browser.close()
    assert {store: email in json.dumps(found) for store, found in planted.items()} == {
        "local": True,
        "session": True,
        "indexedDB": True,
        "caches": True,
    }, planted
    # The control: the asker's own question is on the page, so the scan sees raw values.
    assert set(leaks_in(page_text)) >= {
        "Siobhan Kelly",
        "siobhan.kelly@example.com",
        "+44 20 7946 0958",
    }, page_text[:2000]
    assert leaks_in(stored) == {}, stored[:3000]
    assert leaks_in(cookies) == {}, cookies
