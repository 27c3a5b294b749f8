"""The cap on one execution record's size (``MAX_RECORD_BYTES``), as a pure function.

Each stream of a run is capped by ``max_output_bytes`` while it is read, but a judged run has a
stdout and a stderr per case (up to ``MAX_CASES``), so one small request could make a record of
hundreds of MiB, stored and answered whole. :func:`cap_record` cuts the outputs of a record
over the cap (its own stdout and stderr and every case's) so that its JSON fits, setting the
``*_truncated`` flag of each stream it cut; a record within the cap comes back unchanged.

The size is the UTF-8 length of the record's JSON, as answered (``ExecutionRecord.to_api``).
The room left by everything but the outputs is shared fairly: streams shorter than an equal
share keep everything, the longer ones are cut to what is left, each keeping its beginning.

Artifacts (``out/`` files, base64 in the record: up to ``MAX_ARTIFACT_BYTES`` of files, 13.4 MiB
of JSON at the default 10 MiB) count like everything else, and are kept while they leave the
outputs at least :data:`OUTPUT_SHARE` of the cap (or all the outputs need, if less): past that the
last ones (in path order, as the engine leaves them out past its own caps) are left out and
``artifacts_truncated`` is set. With the defaults (16 MiB, two streams of 1 MiB) they never are.

The engine already keeps each case's output within a share of ``max_output_bytes``
(``executors/_evaluation.py``), so a judged record leaves the executor replica about as large as
one run's; this is the service's own guarantee on the whole record, applied before a record is
stored or answered, whatever its limits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from executors import ExecutionRecord

__all__ = ["OUTPUT_SHARE", "artifact_bytes", "cap_record", "record_bytes"]

STREAMS = ("stdout", "stderr")
OUTPUT_SHARE = 1 / 4
"""The share of the cap the outputs keep (if they need it) before artifacts are left out."""
ARTIFACT_FIELDS_BYTES = 80
"""An artifact's JSON beyond its path, media type and base64: keys, quotes, its size."""
MAX_ATTEMPTS = 4
"""Tries at the fair share; each corrects the estimate by the bytes it was over (JSON escapes
the estimate did not foresee), so the first nearly always fits."""


def record_bytes(record: ExecutionRecord) -> int:
    """The size of ``record`` as the API answers it: bytes of its JSON."""
    return len(_json(record))


def artifact_bytes(record: ExecutionRecord) -> int:
    """At least the bytes ``record``'s artifacts take in its JSON (each character of a path or
    media type counted as 6, as if escaped), without serialising them."""
    return sum(
        len(artifact.base64) + 6 * (len(artifact.path) + len(artifact.media_type))
        for artifact in record.artifacts
    ) + ARTIFACT_FIELDS_BYTES * len(record.artifacts)


def cap_record(record: ExecutionRecord, max_bytes: int) -> ExecutionRecord:
    """``record`` with its outputs cut (and artifacts left out, past their room) so that its
    JSON is at most ``max_bytes`` (the same object if it fits already). If even empty outputs
    and no artifacts do not fit, the outputs are all emptied."""
    size = record_bytes(record)
    if size <= max_bytes:
        return record
    record, size = _within_artifact_room(record, size, max_bytes)
    if size <= max_bytes:
        return record
    texts = list(_outputs(record))
    costs = [_encoded_len(text) for text in texts]
    # Room for the outputs: everything else of the record, with each flag that may flip from
    # false to true (one byte longer) counted as flipped.
    room = max_bytes - (size - sum(costs)) - len(texts)
    capped = record
    for _ in range(MAX_ATTEMPTS):
        allowances = _fair_shares(costs, max(0, room))
        cut = [_cut(*stream) for stream in zip(texts, costs, allowances, strict=True)]
        capped = _with_outputs(record, cut)
        over = record_bytes(capped) - max_bytes
        if over <= 0:
            return capped
        room -= over
    return _with_outputs(
        record, [_cut(text, cost, 0) for text, cost in zip(texts, costs, strict=True)]
    )


def _within_artifact_room(
    record: ExecutionRecord, size: int, max_bytes: int
) -> tuple[ExecutionRecord, int]:
    """``record`` without its last artifacts while they leave the outputs less than their
    share of ``max_bytes`` (:data:`OUTPUT_SHARE`, or all they need), and its size."""
    outputs = sum(_encoded_len(text) for text in _outputs(record))
    wanted = min(outputs, int(max_bytes * OUTPUT_SHARE))
    room = max_bytes - (size - outputs)  # what the outputs may take as the record stands
    kept = list(record.artifacts)
    while kept and room < wanted:
        room += len(kept.pop().model_dump_json()) + 1  # and its comma
    if len(kept) == len(record.artifacts):
        return record, size
    capped = record.model_copy(update={"artifacts": kept, "artifacts_truncated": True})
    return capped, record_bytes(capped)


def _json(record: ExecutionRecord) -> bytes:
    exclude = {"cases"} if record.cases is None else None
    return record.model_dump_json(exclude=exclude).encode()


def _outputs(record: ExecutionRecord) -> Iterator[str]:
    """The record's streams, then each case's, in a fixed order (see :func:`_with_outputs`),
    then a session call's ``result`` (capped like an output by the engine, cut like one here)."""
    for owner in (record, *(record.cases or ())):
        for stream in STREAMS:
            yield getattr(owner, stream)
    if record.result is not None:
        yield record.result


def _with_outputs(record: ExecutionRecord, cut: list[tuple[str, bool]]) -> ExecutionRecord:
    """``record`` with the outputs of :func:`_outputs` replaced (and flagged where cut)."""
    pieces = iter(cut)

    def update(owner_flags: dict[str, bool]) -> dict[str, object]:
        changes: dict[str, object] = {}
        for stream in STREAMS:
            text, was_cut = next(pieces)
            changes[stream] = text
            changes[f"{stream}_truncated"] = owner_flags[stream] or was_cut
        return changes

    def flags(owner: object) -> dict[str, bool]:
        return {stream: bool(getattr(owner, f"{stream}_truncated")) for stream in STREAMS}

    own = update(flags(record))
    cases = None
    if record.cases is not None:
        cases = [case.model_copy(update=update(flags(case))) for case in record.cases]
        own["cases"] = cases
    if record.result is not None:
        own["result"] = next(pieces)[0]  # a repr: no flag of its own, its end shows the cut
    return record.model_copy(update=own)


def _fair_shares(costs: list[int], room: int) -> list[int]:
    """How many JSON bytes each stream may keep: all of it if it is under the equal share of
    what the smaller ones leave, else that share (water filling)."""
    order = sorted(range(len(costs)), key=costs.__getitem__)
    shares = list(costs)
    left = room
    for position, index in enumerate(order):
        share = left // (len(order) - position)
        if costs[index] > share:
            for rest in order[position:]:
                shares[rest] = share
            return shares
        left -= costs[index]
    return shares


def _encoded_len(text: str) -> int:
    """Bytes of ``text`` inside a JSON string (quotes excluded)."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def _cut(text: str, cost: int, allowance: int) -> tuple[str, bool]:
    """The longest beginning of ``text`` whose JSON takes at most ``allowance`` bytes, and
    whether anything was cut."""
    if cost <= allowance:
        return text, False
    # A character takes at least one byte: the answer is at most ``allowance`` characters long.
    low, high = 0, min(len(text), allowance)
    if _encoded_len(text[:high]) <= allowance:
        return text[:high], True  # the common case: plain text, one byte per character
    while low < high:
        middle = (low + high + 1) // 2
        if _encoded_len(text[:middle]) <= allowance:
            low = middle
        else:
            high = middle - 1
    return text[:low], True
