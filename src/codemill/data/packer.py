"""Packing: a shard's documents into windows of seq_len + 1 tokens, in Algorithm 1's order.

NTP documents continue across windows (aiXcoder's "Transformer-XL style"); a FIM document is never
cut. At context level a FIM/SFIM file that does not fit in what is left of a window is cut at a line
end and the objective applied to the piece that fits (`DocumentBuilder.cut`); at document level the
head of its prefix fills that space as NTP and the document opens the next window. Padding
(`Objective.PADDING`) fills what nothing fits. Windows may hold the end of one unit and the start of
the next. Every window is built within one `__next__`, so the cursor never holds a partial window.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from codemill.data.cursor import StreamCursor, UnitCursor
from codemill.data.document import TokenDoc
from codemill.data.documents import DocumentBuilder
from codemill.data.objectives import Objective
from codemill.errors import UserError

BATCH_DOCS = 64  # plan entries built and tokenized together


class Packer:
    """An iterator of windows {"tokens": int32[seq_len+1], "objective": uint8[seq_len+1]} over the
    builder's units, source by source as their shares of tokens ask; `epochs`: stop after this many
    passes over the code (None: never stop)."""

    def __init__(self, builder: DocumentBuilder, epochs: int | None = None):
        self.docs, self.epochs = builder, epochs
        self.cursor = StreamCursor.start(list(builder.sources))
        self._plan: list[Callable[[], list[TokenDoc]]] | None = None
        self._batch: tuple[int, list[list[TokenDoc]]] = (0, [])

    def state_dict(self) -> dict:
        return self.cursor.to_dict()

    def load_state_dict(self, state: dict) -> None:
        if set(state["pos"]) != set(self.docs.sources):
            raise UserError(
                f"state is for sources {sorted(state['pos'])}, this stream has {sorted(self.docs.sources)}"
            )
        self.cursor = StreamCursor.from_dict(state)
        self._plan = None

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        w, pad_id = self.docs.window_len, self.docs.pad_id
        tokens: list[int] = []
        objective: list[int] = []
        while True:
            cur = self.cursor.current
            if cur is None and not self._next_unit():
                if not tokens:
                    raise StopIteration
                room = w - len(tokens)  # the last window, padded
                return self._emit(tokens + [pad_id] * room, objective + [Objective.PADDING] * room)
            cur = self.cursor.current
            if self._plan is None:
                self._plan = self.docs.plan(cur.source, cur.unit, cur.epoch)
                self._batch = (0, [])
            if cur.doc == len(self._plan):
                self.cursor.current = None
                continue
            take, code, pad = self._place(cur, self._group(cur.doc), w - len(tokens))
            tokens += take.tolist() + [pad_id] * pad
            objective += [code] * len(take) + [Objective.PADDING] * pad
            self.cursor.emitted[cur.source] += len(take)
            if len(tokens) == w:
                return self._emit(tokens, objective)

    # --- units -----------------------------------------------------------------------------------
    def _next_unit(self) -> bool:
        """Move to the next unit of the source furthest behind its share; False when all is done."""
        c, weights = self.cursor, self.docs.weights
        live = [k for k in weights if not self._exhausted(k)]
        if "code" not in live:
            return False
        source = min(live, key=lambda k: (c.emitted[k] / weights[k], k))
        if c.pos[source] == len(self.docs.units(source, c.epoch[source])):  # the epoch's last unit is done
            c.pos[source], c.epoch[source] = 0, c.epoch[source] + 1
        unit, epoch = self.docs.units(source, c.epoch[source])[c.pos[source]], c.epoch[source]
        c.pos[source] += 1
        c.current = UnitCursor(source, unit, epoch)
        self._plan = None
        return True

    def _exhausted(self, source: str) -> bool:
        c = self.cursor
        last = c.pos[source] == len(self.docs.units(source, c.epoch[source])) and c.epoch[source] + 1 >= (
            self.epochs or 0
        )
        return self.epochs is not None and last

    def _group(self, k: int) -> list[TokenDoc]:
        """The documents of plan entry k, building and tokenizing the next batch when needed."""
        start, groups = self._batch
        if not start <= k < start + len(groups):
            made = [make() for make in self._plan[k : k + BATCH_DOCS]]
            flat = iter(self.docs.encode([d for docs in made for d in docs]))
            groups = [[d for _ in docs for d in next(flat)] for docs in made]
            self._batch = (k, groups)
            start = k
        return groups[k - start]

    # --- one document into the window ------------------------------------------------------------
    def _place(self, cur: UnitCursor, group: list[TokenDoc], room: int) -> tuple[np.ndarray, int, int]:
        """What of the cursor's document goes into `room` tokens: (tokens, their objective code,
        padding after them); the cursor moves past what was taken."""
        doc, char = group[cur.part], cur.char
        continued = bool(char or cur.ntp)  # a later piece of a file cut at context level
        if cur.ntp:
            doc = self.docs.rest(doc, char, True)
        elif char and self.docs.tokens_from(doc.file, char) + doc.frame + 4 <= room:
            doc, char = self.docs.rest(doc, char, False), 0  # the rest may fit whole: build it
        if doc.splittable:
            take, done = self._continue(cur, doc, room, char, continued)
            code, pad = Objective.of(doc.objective), 0
        elif not char and len(ids := doc.without_head(cur.offset)) <= room:
            take, code, pad, done = ids, Objective.of(doc.objective), 0, True
            self._stat(doc, continued)
        elif self.docs.cfg.fim_level == "context" and doc.file is not None:
            take, code, pad, done = self._piece(cur, doc, room, continued)
        else:
            take = self._spill_head(cur, doc, room)
            code, pad, done = Objective.NTP, room - len(take), False
        if done:
            cur.part, cur.offset, cur.char, cur.ntp = cur.part + 1, 0, 0, False
            if cur.part == len(group):
                cur.doc, cur.part = cur.doc + 1, 0
        return take, int(code), pad

    def _continue(
        self, cur: UnitCursor, doc: TokenDoc, room: int, char: int, continued: bool
    ) -> tuple[np.ndarray, bool]:
        """An NTP document goes on from where it stopped, across windows; whether it is done."""
        if cur.offset == 0:
            self._stat(doc, continued)
        take = doc.ids[cur.offset : cur.offset + room]
        cur.offset += len(take)
        done = cur.offset == len(doc.ids)
        if done and cur.ntp:  # the long line is packed: the file goes on in pieces
            cur.char, cur.ntp, cur.offset = char + len(doc.sample.prefix), False, 0
            done = cur.char == len(doc.file.text)
        return take, done

    def _piece(
        self, cur: UnitCursor, doc: TokenDoc, room: int, continued: bool
    ) -> tuple[np.ndarray, int, int, bool]:
        """Context level: the objective applies to the piece of the file that fits the room."""
        got = self.docs.cut(doc, room, cur.char)
        if got is not None:
            piece, used = got
            cur.char += used
            self._stat(piece, continued)
            self.docs.count("context_piece")
            return piece.ids, Objective.of(piece.objective), 0, cur.char == len(doc.file.text)
        if room == self.docs.window_len:  # not one line fits a whole window: the rest of the file is NTP
            cur.ntp = True
            self.docs.count("line_longer_than_window")
            return doc.ids[:0], Objective.of(doc.objective), 0, False
        return doc.ids[:0], Objective.of(doc.objective), room, False  # padding: it opens the next window

    def _spill_head(self, cur: UnitCursor, doc: TokenDoc, room: int) -> np.ndarray:
        """Document level: a FIM document is never cut but opens the next window; the room left here
        takes the head of its prefix as NTP, as long as the document keeps a quarter of its prefix (at
        least 64 tokens)."""
        keep = min(doc.prefix_len, max(64, doc.prefix_len // 4))
        n = max(0, min(room - doc.opening, doc.prefix_len - cur.offset - keep))
        n = self.docs.char_cut(doc.ids[doc.prefix_at + cur.offset :], n, -1)
        cur.offset += n
        return doc.head(cur.offset - n, n) if n else doc.ids[:0]

    def _stat(self, d: TokenDoc, continued: bool) -> None:
        """Documents are counted as they are packed, each piece of a file cut at context level too."""
        if self.docs.stats is not None:
            self.docs.stats.doc(d, continued)

    def _emit(self, tokens: list[int], objective: list[int]) -> dict[str, np.ndarray]:
        out = {
            "tokens": np.asarray(tokens, dtype=np.int32),
            "objective": np.asarray(objective, dtype=np.uint8),
        }
        if self.docs.stats is not None:
            self.docs.stats.window(out["objective"])
        return out
