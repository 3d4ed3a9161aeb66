"""The Gradio chat: streamed answers with their sources, every guard's verdict and the route;
conversations kept per user, feedback per answer, uploads into the user's own collection.

Document text and model output never reach the page as HTML: model output is Markdown with
every tag escaped and images removed (ui/render.py), passages and names are escaped text, so a
document holding `<script>` or an image URL carrying data never runs or loads anything.
"""

from __future__ import annotations

import asyncio
import html
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import gradio as gr
from fastapi import FastAPI

from guardrails.pii import PLACEHOLDER
from ingest.run import IngestError, IngestProgress
from rag.compose import build_pipeline, start_engines
from rag.pipeline import MAX_QUESTION_CHARS, AskOptions, Conversation, Pipeline, QuestionError
from rag.schema import Answer, ChatMessage, Final, Retraction, StageEvent, TextDelta
from rag.settings import ChatSettings, Settings
from rag.store import SHARED
from ui.auth import (
    Identity,
    identify,
    login_of,
    login_required,
    password_check,
    trusted_header_user,
)
from ui.documents import DocumentLibrary, UploadError, UploadResult
from ui.gradio_safety import (
    blocked_paths,
    discard_upload,
    enforce_path_checks,
    uploaded_path,
    withhold_event_inputs_from_logs,
)
from ui.history import HistoryStore, Rating, StoredTurn
from ui.listen import check_binding, run_server
from ui.render import (
    AnswerView,
    answer_view,
    chips_html,
    details_markdown,
    passage_html,
    safe_markdown,
)
from ui.request_gate import RequestGate

AUTO_MODEL = "auto (router)"
MAX_TOP_K = 20
RETRACTED = "_(answer retracted by the output guard)_"
RESUMED_NOTE = (
    "Resumed conversations show personal data as placeholders (`<PERSON_1>`): only "
    "pseudonymised text is ever written to disk."
)
_CSS = """
.guard-chip { white-space: nowrap; }
.passage mark { background: #fff3b0; padding: 0 2px; }
"""


@dataclass
class ChatSession:
    """One browser session's conversation: the live pseudonym vault, the history row it is
    saved to, and what the side panels show for each answer (by chatbot message index)."""

    conversation: Conversation
    conversation_id: str | None = None
    # What the Chatbot shows, kept here and never read back from the client: the client's copy
    # of a message list could name any file on the server as a "file" part (issue 13).
    messages: list[dict[str, Any]] = field(default_factory=list)
    views: dict[int, AnswerView] = field(default_factory=dict)
    shown: AnswerView | None = None
    rated: tuple[str, Rating] | None = None


def _own_session(who: Identity, session: ChatSession | None) -> ChatSession | None:
    """The session state when it is this user's, else None. Gradio finds state by a session
    hash the client chooses, so a request can name somebody else's session."""
    if session is None or session.conversation.user != who.owner:
        return None
    return session


def _session_for(who: Identity, session: ChatSession | None) -> ChatSession:
    return _own_session(who, session) or ChatSession(Conversation(user=who.owner))


def stored_question(question: str, answer: Answer) -> str:
    """The question as history keeps it: pseudonymised, or not at all without a PII check."""
    pii = next((v for v in answer.verdicts if v.guard == "pii"), None)
    if pii is None or pii.outcome == "unavailable":
        return "(question not stored: the PII check did not run)"
    return pii.sanitized_text if pii.sanitized_text else question


def stored_answer(answer: Answer, conversation: Conversation) -> str:
    """The answer as the model wrote it (placeholders, not the asker's restored values)."""
    if answer.status == "answered" and conversation.turns:
        last = conversation.turns[-1]
        if last.role == "assistant":
            return last.content
    return answer.text


def resumed_conversation(user: str, turns: list[StoredTurn]) -> Conversation:
    """A conversation to continue from history. Its vault first takes the placeholders the
    old turns use (each standing for itself), so new PII gets fresh numbers and `<PERSON_1>`
    never means two people in one conversation."""
    conversation = Conversation(user=user)
    highest: dict[str, int] = {}
    for turn in turns:
        for match in PLACEHOLDER.finditer(turn.content):
            entity, number = match.group(1), int(match.group(2))
            highest[entity] = max(highest.get(entity, 0), number)
    for entity, top in sorted(highest.items()):
        for number in range(1, top + 1):
            conversation.vault.placeholder_for(entity, f"<{entity}_{number}>")
    for question, reply in itertools.pairwise(turns):
        answered = reply.details is not None and reply.details.status == "answered"
        if question.role == "user" and reply.role == "assistant" and answered:
            conversation.turns += [
                ChatMessage("user", question.content),
                ChatMessage("assistant", reply.content),
            ]
    return conversation


def _source_choices(view: AnswerView | None) -> Any:
    choices = [(s.label, s.number) for s in view.sources] if view else []
    return gr.update(choices=choices, value=None)


def _panels(view: AnswerView | None) -> tuple[Any, Any, Any, Any]:
    """Chips, source list, passage and route/timings for one answer (or empty)."""
    if view is None:
        return chips_html(()), _source_choices(None), "", ""
    note = "" if view.sources else "<p><em>No sources for this answer.</em></p>"
    return (
        chips_html(view.chips),
        _source_choices(view),
        note,
        details_markdown(view.route, view.stages, view.first_token_ms, view.sources),
    )


def upload_summary(result: UploadResult) -> str:
    where = "the shared collection" if result.owner == SHARED else "your documents"
    lines = [f"**Into {where}** in {result.seconds:.1f} s:"]
    for label, names in (
        ("added", result.added),
        ("updated", result.updated),
        ("unchanged", result.unchanged),
    ):
        if names:
            lines.append(f"- {label}: {html.escape(', '.join(names))}")
    for name, note in result.notices:
        lines.append(f"- note: {html.escape(name)}: {html.escape(note)}")
    for name, reason in result.failed:
        lines.append(f"- failed: {html.escape(name)}: {html.escape(reason)}")
    if result.chunks_flagged:
        lines.append(
            f"- {result.chunks_flagged} chunk(s) flagged as prompt injection: kept out of answers"
        )
    if result.chunks_unscanned:
        lines.append(
            f"- {result.chunks_unscanned} chunk(s) stored without an injection scan: "
            "the injection guard is off (guards.off)"
        )
    return "\n".join(lines)


def _ask_options(model_choice: Any, top_k: Any) -> AskOptions:
    # Both arrive from the client: a model the profile does not name is refused by the
    # pipeline, and top-k stays within the slider's range whatever number is sent.
    model = model_choice if isinstance(model_choice, str) and model_choice != AUTO_MODEL else None
    try:
        k = min(max(int(top_k), 1), MAX_TOP_K)
    except (TypeError, ValueError, OverflowError):
        k = None
    return AskOptions(model=model, top_k=k)


def _assistant_message(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def _final_answer_markdown(answer: Answer) -> str:
    text = safe_markdown(answer.text)
    return text if answer.status == "answered" else f"**{answer.status}:** {text}"


def _message_index(evt: gr.SelectData | gr.LikeData) -> int:
    return evt.index if isinstance(evt.index, int) else evt.index[0]


@dataclass(frozen=True)
class ChatHandlers:
    """What the chat's events call, one method per event. Every method works as the user the
    request names, on that user's conversations and documents only."""

    pipeline: Pipeline
    chat_settings: ChatSettings
    history: HistoryStore
    library: DocumentLibrary

    def _identity(self, request: gr.Request) -> Identity:
        return identify(self.chat_settings, request.username if request else None)

    # ---- the conversation -----------------------------------------------------------------

    def take_question(self, message: str) -> tuple[str, str]:
        # The box empties at once; the question travels on in a state.
        return "", message

    async def stream_answer(
        self,
        message: str,
        session: ChatSession | None,
        model_choice: str,
        top_k: float,
        request: gr.Request,
    ) -> AsyncIterator[tuple[Any, ...]]:
        who = self._identity(request)
        session = _session_for(who, session)
        skip = gr.skip()
        if not isinstance(message, str) or not message.strip():
            yield list(session.messages), session, skip, skip, skip, skip, skip
            return
        messages = [
            *session.messages,
            # Cut to what the pipeline accepts (it refuses the rest with a message): a novel
            # pasted in would otherwise be rendered on the event loop first.
            {"role": "user", "content": safe_markdown(message[: MAX_QUESTION_CHARS + 1])},
            _assistant_message(""),
        ]
        # Kept as it grows: a stream stopped halfway leaves the page and the state agreeing.
        session.messages = messages
        options = _ask_options(model_choice, top_k)
        shown = ""
        progress: list[str] = []
        try:
            async for event in self.pipeline.stream(message, session.conversation, options):
                if isinstance(event, TextDelta):
                    shown += event.text
                    messages[-1] = _assistant_message(safe_markdown(shown))
                    yield messages, session, skip, skip, skip, skip, skip
                elif isinstance(event, Retraction):
                    shown = ""
                    messages[-1] = _assistant_message(RETRACTED)
                    yield messages, session, skip, skip, skip, skip, skip
                elif isinstance(event, StageEvent):
                    progress.append(f"{event.report.name}: {event.report.status}")
                    yield messages, session, skip, skip, skip, " · ".join(progress), skip
                elif isinstance(event, Final):
                    view = await asyncio.to_thread(
                        self._save_turn, who, session, message, event.answer, len(messages) - 1
                    )
                    messages[-1] = _assistant_message(_final_answer_markdown(event.answer))
                    chips, sources, passage, details = _panels(view)
                    conversations = self._conversation_choices(who, session.conversation_id)
                    yield messages, session, chips, sources, passage, details, conversations
        except QuestionError as exc:
            messages[-1] = _assistant_message(f"_{safe_markdown(str(exc))}_")
            yield messages, session, skip, skip, skip, skip, skip

    def _save_turn(
        self, who: Identity, session: ChatSession, question: str, answer: Answer, index: int
    ) -> AnswerView:
        view = answer_view(answer, answer.text)
        session.views[index] = view
        session.shown = view
        asked = stored_question(question, answer)
        if session.conversation_id is None:
            session.conversation_id = self.history.create(who.name, asked)
        self.history.append(
            who.name,
            session.conversation_id,
            [
                StoredTurn("user", asked),
                StoredTurn(
                    "assistant",
                    stored_answer(answer, session.conversation),
                    answer.request_id,
                    # What history keeps of the answer: the placeholders' text, not the
                    # asker's restored values.
                    replace(view, text=stored_answer(answer, session.conversation)),
                ),
            ],
        )
        return view

    def show_answer(
        self, session: ChatSession | None, evt: gr.SelectData, request: gr.Request
    ) -> tuple[Any, ...]:
        mine = _own_session(self._identity(request), session)
        view = mine.views.get(_message_index(evt)) if mine else None
        if mine is None or view is None:
            return (gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        mine.shown = view
        return (mine, *_panels(view))

    def show_passage(
        self, number: int | None, session: ChatSession | None, request: gr.Request
    ) -> str:
        mine = _own_session(self._identity(request), session)
        view = mine.shown if mine else None
        if view is None or number is None:
            return ""
        source = next((s for s in view.sources if s.number == number), None)
        return passage_html(source, view.text) if source else ""

    # ---- feedback -------------------------------------------------------------------------

    def record_rating(
        self, session: ChatSession | None, evt: gr.LikeData, request: gr.Request
    ) -> Any:
        who = self._identity(request)
        session = _own_session(who, session)
        view = session.views.get(_message_index(evt)) if session else None
        if session is None or view is None:
            return gr.skip(), "Feedback is for answers."
        liked = evt.liked if isinstance(evt.liked, bool) else evt.liked == "Like"
        rating: Rating = "up" if liked else "down"
        if not self.history.record_feedback(who.name, view.request_id, rating):
            return session, "This answer is not in your history."
        session.rated = (view.request_id, rating)
        thumb = "👍" if rating == "up" else "👎"
        return session, f"{thumb} recorded for this answer. Add a comment below if you like."

    def record_comment(
        self, text: str, session: ChatSession | None, request: gr.Request
    ) -> tuple[str, str]:
        who = self._identity(request)
        session = _own_session(who, session)
        if session is None or session.rated is None:
            return text, "Rate an answer (👍 or 👎 under it) first, then comment."
        if not text.strip():
            return text, "The comment is empty."
        # A comment may name people or addresses: only its pseudonymised form is stored.
        pseudonymised = self.pipeline.pseudonymise(text.strip()[:2000])
        if pseudonymised is None:
            return text, "Comments are not stored while the PII check cannot run."
        request_id, rating = session.rated
        self.history.record_feedback(who.name, request_id, rating, pseudonymised)
        return "", "Comment stored (personal data replaced by placeholders). Thank you."

    # ---- history --------------------------------------------------------------------------

    def new_conversation(self, request: gr.Request) -> tuple[Any, ...]:
        who = self._identity(request)
        return (
            [],
            ChatSession(Conversation(user=who.owner)),
            *_panels(None),
            self._conversation_choices(who, None),
            "",
        )

    def resume_conversation(
        self, conversation_id: str | None, request: gr.Request
    ) -> tuple[Any, ...]:
        who = self._identity(request)
        if not conversation_id or not self.history.owns(who.name, conversation_id):
            return (gr.skip(),) * 8
        turns = self.history.turns(who.name, conversation_id)
        session = ChatSession(
            resumed_conversation(who.owner, turns), conversation_id=conversation_id
        )
        messages = session.messages
        for index, turn in enumerate(turns):
            messages.append({"role": turn.role, "content": safe_markdown(turn.content)})
            if turn.details is not None:
                session.views[index] = turn.details
        title = next(
            (c.title for c in self.history.conversations(who.name) if c.id == conversation_id),
            "",
        )
        return (list(messages), session, *_panels(None), gr.skip(), title)

    def rename_conversation(
        self, title: str, session: ChatSession | None, request: gr.Request
    ) -> Any:
        who = self._identity(request)
        session = _own_session(who, session)
        if session is None or session.conversation_id is None:
            return gr.skip()
        self.history.rename(who.name, session.conversation_id, title)
        return self._conversation_choices(who, session.conversation_id)

    def delete_conversation(
        self, session: ChatSession | None, request: gr.Request
    ) -> tuple[Any, ...]:
        who = self._identity(request)
        session = _own_session(who, session)
        if session is not None and session.conversation_id is not None:
            self.history.delete(who.name, session.conversation_id)
        return self.new_conversation(request)

    def _conversation_choices(self, who: Identity, selected: str | None) -> Any:
        rows = self.history.conversations(who.name)
        return gr.update(choices=[(r.title, r.id) for r in rows], value=selected)

    # ---- documents ------------------------------------------------------------------------

    def upload_documents(
        self,
        files: list[str] | None,
        to_shared: bool,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's injection idiom
    ) -> tuple[Any, ...]:
        who = self._identity(request)
        # Paths come from the client: only files Gradio itself received are read (and then
        # removed from its cache, which would serve them by URL); never one named by hand.
        received = [uploaded_path(f) if isinstance(f, str) else None for f in files or []]
        pairs = [(path.name, path) for path in received if path is not None]

        def report(p: IngestProgress) -> None:
            progress((p.files_done, p.files_total), desc=p.message)

        try:
            if len(pairs) != len(received):
                raise UploadError("a file was not received by this upload: choose it again")
            result = self.library.upload(who, pairs, shared=to_shared is True, progress=report)
            status = upload_summary(result)
        except (UploadError, IngestError) as exc:
            status = f"**Upload refused:** {html.escape(str(exc))}"
        finally:
            for _name, path in pairs:
                discard_upload(path)
        return status, None, self._documents_table(who), self._deletable_documents(who)

    def delete_document(self, choice: str | None, request: gr.Request) -> tuple[Any, ...]:
        who = self._identity(request)
        status = "Choose a document to delete."
        if isinstance(choice, str) and ":" in choice:
            scope, path = choice.split(":", 1)
            try:
                deleted = self.library.delete(who, path, shared=scope == "shared")
                status = f"Deleted {html.escape(path)}." if deleted else "No such document."
            except UploadError as exc:
                status = html.escape(str(exc))
        return status, self._documents_table(who), self._deletable_documents(who)

    def _documents_table(self, who: Identity) -> list[list[Any]]:
        return [[d.path, d.scope, d.chunks] for d in self.library.documents(who)]

    def _deletable_documents(self, who: Identity) -> Any:
        rows = self.library.documents(who)
        choices = [
            (f"{d.path} ({d.scope})", f"{d.scope}:{d.path}")
            for d in rows
            if d.scope == "mine" or who.admin
        ]
        return gr.update(choices=choices, value=None)

    def _quarantine_rows(self, who: Identity) -> list[list[Any]]:
        if not who.admin:
            return []
        return [
            [
                c.path,
                c.section,
                round(c.injection_score, 2),
                ", ".join(c.injection_categories),
                c.text[:160],
            ]
            for c in self.library.quarantined(who)
        ]

    # ---- the page -------------------------------------------------------------------------

    def fill_page_for_user(self, request: gr.Request) -> tuple[Any, ...]:
        who = self._identity(request)
        login = login_required(self.chat_settings)
        signed_in = (
            f"Signed in as **{html.escape(who.name)}**" + (" (admin)" if who.admin else "")
            if login
            else "Single-user mode (no login configured)."
        )
        return (
            signed_in,
            self._conversation_choices(who, None),
            self._documents_table(who),
            self._deletable_documents(who),
            gr.update(visible=who.admin),
            gr.update(visible=who.admin),
            self._quarantine_rows(who),
        )


def build_chat(
    pipeline: Pipeline,
    settings: Settings,
    *,
    logout_url: str | None = None,
    history: HistoryStore | None = None,
    library: DocumentLibrary | None = None,
) -> gr.Blocks:
    handlers = ChatHandlers(
        pipeline,
        settings.chat,
        history or HistoryStore(settings.history_path),
        library or DocumentLibrary(settings),
    )
    model_names = [AUTO_MODEL, *settings.generation.models]

    # ---- layout ---------------------------------------------------------------------------
    # Files sent to Gradio but never ingested (chosen, then the tab closed) would stay in its
    # cache, served by URL: every hour, those over an hour old go.
    with gr.Blocks(title="guardrag", delete_cache=(3600, 3600)) as chat:
        session = gr.State(None)
        pending = gr.State("")
        with gr.Row():
            gr.Markdown("## guardrag: ask your documents")
            signed_in = gr.Markdown(elem_id="signed-in")
            if logout_url is not None:
                gr.Button("Log out", link=logout_url, size="sm", scale=0, elem_id="logout")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"), gr.Row():
                with gr.Column(scale=1, min_width=200):
                    new = gr.Button("New conversation", elem_id="new-conversation")
                    conversations = gr.Radio(
                        label="Conversations", choices=[], elem_id="conversations"
                    )
                    gr.Markdown(RESUMED_NOTE, elem_classes=["small-note"])
                    title = gr.Textbox(
                        label="Title", placeholder="Rename this conversation", max_lines=1
                    )
                    with gr.Row():
                        rename_button = gr.Button("Rename", size="sm")
                        delete_button = gr.Button("Delete", size="sm", variant="stop")
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(
                        label="chat",
                        height=520,
                        sanitize_html=True,
                        # No KaTeX: model output is text, not formulas to typeset.
                        latex_delimiters=[],
                        feedback_options=("Like", "Dislike"),
                        # Copy only: Gradio's share button posts the chat to a hub.
                        buttons=["copy"],
                        elem_id="chatbot",
                    )
                    question = gr.Textbox(
                        placeholder="Ask about your documents…",
                        show_label=False,
                        autofocus=True,
                        elem_id="question",
                    )
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    with gr.Accordion("Options", open=False):
                        model = gr.Dropdown(
                            model_names, value=AUTO_MODEL, label="Model", elem_id="model"
                        )
                        top_k = gr.Slider(
                            1,
                            MAX_TOP_K,
                            value=settings.retrieval.top_k,
                            step=1,
                            label="Passages (top-k)",
                        )
                        show_details = gr.Checkbox(value=True, label="Show details")
                    with gr.Row():
                        feedback_text = gr.Textbox(
                            placeholder="Comment on the answer you rated",
                            show_label=False,
                            scale=4,
                            elem_id="feedback-comment",
                        )
                        feedback_send = gr.Button(
                            "Send comment", scale=1, size="sm", elem_id="feedback-send"
                        )
                    feedback_status = gr.Markdown(elem_id="feedback-status")
                with gr.Column(scale=2) as side:
                    gr.Markdown("### Guards")
                    chips = gr.HTML(chips_html(()), elem_id="guard-chips")
                    sources = gr.Radio(label="Sources", choices=[], elem_id="sources")
                    passage = gr.HTML("", elem_id="passage")
                    with gr.Accordion("Route and timings", open=False, elem_id="route"):
                        details = gr.Markdown(elem_id="details")
            with gr.Tab("Documents", id="documents"):
                files = gr.File(
                    label="Upload documents",
                    file_count="multiple",
                    file_types=list(settings.ingest.extensions),
                    type="filepath",
                    elem_id="upload",
                )
                to_shared = gr.Checkbox(
                    label="Add to the shared collection (everyone can retrieve it)",
                    visible=False,
                )
                upload_button = gr.Button("Upload and ingest", variant="primary", elem_id="ingest")
                upload_status = gr.Markdown(elem_id="upload-status")
                documents = gr.Dataframe(
                    headers=["document", "collection", "chunks"],
                    interactive=False,
                    elem_id="documents",
                )
                with gr.Row():
                    to_delete = gr.Dropdown(label="Document to delete", choices=[])
                    delete_doc = gr.Button("Delete document", variant="stop")
            with gr.Tab("Quarantine", id="quarantine", visible=False) as quarantine_tab:
                gr.Markdown("Chunks flagged as prompt injection at ingest (admins only).")
                quarantine = gr.Dataframe(
                    headers=["file", "section", "score", "rules", "start of text"],
                    interactive=False,
                )

        # ---- events ---------------------------------------------------------------------
        panel_outputs = [chips, sources, passage, details]
        answer_outputs = [chatbot, session, *panel_outputs, conversations]
        for trigger in (question.submit, send.click):
            trigger(handlers.take_question, question, [question, pending], queue=False).then(
                handlers.stream_answer,
                # Never the chatbot: what it shows is the session's, not the client's.
                [pending, session, model, top_k],
                answer_outputs,
                concurrency_limit=8,
                # Gradio keys concurrency on the function object, and every `handlers.x` is a
                # new bound method: named, both triggers share the one limit of 8.
                concurrency_id="stream_answer",
            )
        chatbot.select(handlers.show_answer, session, [session, *panel_outputs])
        sources.change(handlers.show_passage, [sources, session], passage)
        chatbot.like(handlers.record_rating, session, [session, feedback_status])
        feedback_send.click(
            handlers.record_comment, [feedback_text, session], [feedback_text, feedback_status]
        )
        show_details.change(lambda shown: gr.update(visible=shown), show_details, side)

        conversation_outputs = [chatbot, session, *panel_outputs, conversations, title]
        new.click(handlers.new_conversation, None, conversation_outputs)
        conversations.input(handlers.resume_conversation, conversations, conversation_outputs)
        rename_button.click(handlers.rename_conversation, [title, session], conversations)
        delete_button.click(handlers.delete_conversation, session, conversation_outputs)

        upload_button.click(
            handlers.upload_documents,
            [files, to_shared],
            [upload_status, files, documents, to_delete],
            concurrency_limit=1,
        )
        delete_doc.click(handlers.delete_document, to_delete, [upload_status, documents, to_delete])
        chat.load(
            handlers.fill_page_for_user,
            None,
            [signed_in, conversations, documents, to_delete, to_shared, quarantine_tab, quarantine],
        )
    return chat


def mount_chat(app: FastAPI, pipeline: Pipeline, settings: Settings, path: str = "/") -> FastAPI:
    """Mount the chat on a FastAPI app at `path`, behind the login the settings configure."""
    chat_settings = settings.chat
    check = password_check(chat_settings)
    logout = f"{path.rstrip('/')}/logout" if check is not None else None
    chat = build_chat(pipeline, settings, logout_url=logout)
    withhold_event_inputs_from_logs()
    mounted = gr.mount_gradio_app(
        app,
        chat,
        path=path,
        auth=check,
        auth_dependency=trusted_header_user(chat_settings),
        footer_links=[],
        # Gradio would otherwise keep every run (questions and answers) in the browser's
        # storage, outside the pseudonymised history.
        run_history=False,
        max_file_size=chat_settings.max_upload_bytes,
        blocked_paths=blocked_paths(settings),
        # Gradio's own errors quote the inputs and server paths (a refused file's location,
        # the blocked directories): the page gets "Error", the log the traceback.
        show_error=False,
        # Its dashboard shows every user's event counts and timings to any user.
        enable_monitoring=False,
        ssr_mode=False,
        css=_CSS,
    )
    enforce_path_checks(chat)
    mounted.add_middleware(
        RequestGate,
        max_body_bytes=settings.api.max_body_bytes,
        max_upload_bytes=max_upload_request_bytes(chat_settings),
        caller_of=login_of(chat_settings),
    )
    return mounted


def max_upload_request_bytes(chat: ChatSettings) -> int:
    """The most one upload request may carry: every file the chat takes at once at its
    largest, never more than a user may keep, plus room for the multipart framing."""
    files = min(chat.max_upload_files * chat.max_upload_bytes, chat.max_user_bytes)
    return files + 1_048_576


def serve_chat(settings: Settings, host: str, port: int) -> None:
    # Refused before any model loads, with the same check as `guardrag serve`.
    check_binding(settings, host, serves_api=False)
    pipeline = build_pipeline(settings)
    # Load the model before the page opens, so the first question does not wait for it.
    start_engines(pipeline)
    app = mount_chat(FastAPI(), pipeline, settings, path="/")
    run_server(app, settings, host, port, serves_api=False)
