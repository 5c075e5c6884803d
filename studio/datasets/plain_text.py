"""Plain-text uploads (.txt, .md) as documents for the ``text`` format.

A prose file has no rows of its own, so the user chooses how it becomes rows:

* ``paragraph`` (the default): one document per blank-line-separated paragraph; a line
  holding nothing but whitespace counts as blank. In Markdown, blank lines inside a fenced
  code block (```` ``` ```` or ``~~~``) do not split it, so a code sample stays whole.
* ``file``: the whole file is one document.

Documents are never edited: a paragraph is its lines exactly as written (line ends
included), only the line end that precedes the separating blank line is left out.
Blank paragraphs are dropped. Long documents are kept; training truncates every row to
its ``max_length`` tokens, which :func:`long_document_note` tells the user about.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLIT_CHOICES = ("paragraph", "file")
DEFAULT_SPLIT = "paragraph"
TEXT_KINDS = ("txt", "md")
# Training keeps the first max_length tokens of a row (default 512); English prose runs at
# about four characters a token, so documents longer than this are likely to be cut.
LONG_DOCUMENT_CHARS = 2_000
_FENCES = ("```", "~~~")


@dataclass(frozen=True)
class Document:
    """One document: the 1-based line it starts on, and its text."""

    line: int
    text: str


def check_split(split_by: str) -> str:
    """``split_by`` if it is one of :data:`SPLIT_CHOICES`, else ValueError naming the choices."""
    if split_by not in SPLIT_CHOICES:
        raise ValueError(f"split_by must be one of {', '.join(SPLIT_CHOICES)}, not {split_by!r}")
    return split_by


def split_documents(text: str, split_by: str, markdown: bool = False) -> list[Document]:
    """The documents of a decoded text file, blank ones left out (see the module docstring)."""
    if check_split(split_by) == "file":
        return [Document(1, text)] if text.strip() else []
    documents: list[Document] = []
    current: list[str] = []
    start = 1
    in_fence = False
    # Split at \n only (as JSONL lines are): a CRLF paragraph keeps its \r\n line ends when rejoined.
    for number, line in enumerate(text.split("\n"), start=1):
        blank = not line.strip()
        if markdown and line.lstrip().startswith(_FENCES):
            in_fence = not in_fence
        if blank and not in_fence:
            if current:
                documents.append(Document(start, "\n".join(current)))
                current = []
            continue
        if not current:
            start = number
        current.append(line)
    if current:
        documents.append(Document(start, "\n".join(current)))
    return [_without_trailing_cr(d) for d in documents]


def _without_trailing_cr(document: Document) -> Document:
    # With CRLF line ends the last line of a paragraph ends in the \r of its line end.
    return Document(document.line, document.text.removesuffix("\r")) if document.text.endswith("\r") else document


def long_document_note(texts: list[str]) -> str | None:
    """A note for the report when documents are long enough for training to cut them."""
    long = sum(1 for t in texts if len(t) > LONG_DOCUMENT_CHARS)
    if not long:
        return None
    return (
        f"{long} of {len(texts)} documents are over {LONG_DOCUMENT_CHARS:,} characters; they are kept whole, "
        "but training uses only the first max_length tokens of each (512 by default, roughly "
        f"{LONG_DOCUMENT_CHARS:,} characters of English); split by paragraph to train on all of the text"
    )
