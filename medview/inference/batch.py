"""Batch scoring that streams: the inputs are planned from headers, then read, scored and
written one unit (an image file or a DICOM series) at a time, so memory does not grow
with the number of inputs. On many processes each scores every ``world``-th unit into a
part file of its own; rank 0 merges the parts in input order into the one CSV, which is
byte for byte what one process writes.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import sys
import tempfile
from collections.abc import Generator, Iterable, Iterator

from medview.core.progress import CancelToken, Progress, drain
from medview.core.safeio import fsync_dir, plain_text, try_lock
from medview.core.volume import ImageVolume
from medview.inference.rows import prediction_header, prediction_row
from medview.inference.session import InferenceSession, ScoredProgress, score_stream


def iter_score_stream(session: InferenceSession, card, paths: Iterable[str],
                      device: str = "auto", cancel: CancelToken | None = None,
                      rank: int = 0, world: int = 1, backend: str = "auto",
                      chunk: int | None = None, readers: int | None = None
                      ) -> Generator[Progress, None, tuple[list, list]]:
    """Score every ``world``-th unit under ``paths`` from ``rank`` with
    :func:`~medview.inference.session.score_stream`: units are read one at a time as the
    scorer asks for them. Yields :class:`ScoredProgress` steps whose item's ``key`` is the
    unit's index; returns the files skipped when scanning (the same on every rank) and
    those of this rank's units that could not be read.

    ``readers`` threads read and prepare units ahead of the scorer (decoding and resizing
    release the interpreter lock), in order, at most ``2 * readers`` units ahead; the
    default is one (the reading interleaved with scoring, what a CPU wants: its cores
    score) and :func:`default_readers` on a GPU, which would otherwise wait for one host
    thread to decode."""
    from medview.io.loader import iter_read_unit, iter_scan

    units, scan_skipped = drain(iter_scan(paths, cancel))
    skipped: list = []
    mine = list(range(rank, len(units), world))
    yield Progress(0, len(mine), "loading model")

    def read_one(k: int) -> tuple[int, ImageVolume | None, list]:
        volume, bad = drain(iter_read_unit(units[k], cancel))
        return k, volume, bad

    def read() -> Iterator[tuple[int, ImageVolume | None]]:
        for k in mine:
            _k, volume, bad = read_one(k)
            skipped.extend(bad)
            yield k, volume

    n_readers = default_readers(device) if readers is None else max(1, int(readers))
    if chunk is None and on_gpu(device):
        chunk = GPU_SCORING_BATCH
    if n_readers == 1 or len(mine) < 2:
        units_read = read()
        # the first unit is read before waiting for the model, which may be loading on
        # another thread (InferenceSession.preload)
        first = list(itertools.islice(units_read, 1))
        pred = session.predictor(card, device, backend)
        yield from score_stream(pred, itertools.chain(first, units_read), len(mine), cancel,
                                chunk, failed=skipped)
        return scan_skipped, skipped
    from concurrent.futures import Future

    from medview.core.ahead import InOrder

    predictor: Future = Future()

    def read_and_prepare(k: int):
        k, volume, bad = read_one(k)
        if volume is None:
            return k, None, bad, None
        pred = predictor.result()  # the model may still be loading
        return k, volume, bad, pred.prepare(volume, volume.default_index)

    # reading starts now, while the model may still be loading (InferenceSession.preload)
    ahead = InOrder(read_and_prepare, mine, n_readers, 2 * n_readers, "medview-read")

    def in_order() -> Iterator[tuple]:
        for k, volume, bad, prep in ahead:
            skipped.extend(bad)
            yield (k, volume) if prep is None else (k, volume, prep)

    with ahead:
        try:
            predictor.set_result(session.predictor(card, device, backend))
        except BaseException as exc:
            predictor.set_exception(exc)
            raise
        yield from score_stream(predictor.result(), in_order(), len(mine), cancel, chunk,
                                failed=skipped)
    return scan_skipped, skipped


#: films per forward pass when scoring on a GPU (8 on the CPU: SCORING_BATCH)
GPU_SCORING_BATCH = 64


def on_gpu(device: str) -> bool:
    """Whether scoring on ``device`` runs on a GPU ("auto" where one may be present)."""
    from medview.inference.backends import gpu_may_be_present

    d = str(device).split(":")[0]
    return d in ("cuda", "mps") or (d in ("auto", "") and gpu_may_be_present())


def default_readers(device: str) -> int:
    """Reader threads for scoring on ``device``: one on the CPU (its cores score), up to
    8 (the cores less one) on a GPU."""
    from medview.core.ahead import threads_beside_device

    return threads_beside_device(8) if on_gpu(device) else 1


#: The hidden partial CSV a writer fills before renaming it over the target.
PARTIAL_PREFIX = ".medview-partial-"
#: its name for the moment between creation and lock (empty, never cleaned by others)
CREATING_PREFIX = ".medview-creating-"


def clean_stale_partials(folder: str) -> int:
    """Remove partial CSVs (they hold file paths) left in ``folder`` by a writer that was
    killed: each is locked while its writer lives, so one whose lock is free is stale.
    Returns how many were removed."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(PARTIAL_PREFIX)]
    except OSError:
        return 0
    removed = 0
    for name in names:
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if try_lock(fd):
                os.remove(path)
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


class RowWriter:
    """CSV rows written as they come to a hidden temporary file beside the target (locked
    while written), renamed over it (after fsync) by :meth:`commit`. Partial files of
    writers that were killed are removed when a new one starts in the same folder."""

    def __init__(self, path: str, header: list[str] | None) -> None:
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        clean_stale_partials(folder)
        # created under another name and locked before it takes the partial prefix: a
        # writer starting at the same moment (another rank) must never see it unlocked
        fd, fresh = tempfile.mkstemp(prefix=CREATING_PREFIX, dir=folder)
        try_lock(fd)
        self.tmp = os.path.join(folder, PARTIAL_PREFIX + os.path.basename(fresh)[
            len(CREATING_PREFIX):])
        os.rename(fresh, self.tmp)
        self.f = os.fdopen(fd, "w", newline="", encoding="utf-8")
        self.w = csv.writer(self.f, lineterminator="\n")
        self.rows = 0
        if header is not None:
            self.w.writerow(header)

    def row(self, cells: list[str]) -> None:
        self.w.writerow(cells)
        self.rows += 1

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.f.close()
        with contextlib.suppress(OSError):
            os.remove(self.tmp)


def part_path(csv_path: str, rank: int) -> str:
    folder, name = os.path.split(os.path.abspath(csv_path))
    return os.path.join(folder, f".{name}.part-{rank}")


def merge_parts(csv_path: str, world: int, header: list[str]) -> int:
    """Merge the ranks' part files (``unit index`` first column) into ``csv_path`` in
    input order, streaming (one row per part in memory); the parts are removed."""
    import heapq

    readers = []
    files = []
    for r in range(world):
        f = open(part_path(csv_path, r), newline="", encoding="utf-8")  # noqa: SIM115
        files.append(f)
        readers.append((int(row[0]), row[1:]) for row in csv.reader(f))
    out = RowWriter(csv_path, header)
    try:
        for _k, cells in heapq.merge(*readers, key=lambda t: t[0]):
            out.row(cells)
        out.commit()
    except BaseException:
        out.discard()
        raise
    finally:
        for f in files:
            f.close()
    for r in range(world):
        with contextlib.suppress(OSError):
            os.remove(part_path(csv_path, r))
    return out.rows


def score_shard(paths: list[str], model: str, csv_path: str, comm, device: str = "auto",
                score_out_of_scope: bool = False, backend: str = "auto") -> int:
    """One worker of ``medview predict --nproc N``: score this rank's units into its part
    file, then rank 0 merges the parts into ``csv_path``."""
    from medview.models.registry import discover_models

    session = InferenceSession()
    card = discover_models().get(model)
    from medview.core import audit

    part = RowWriter(part_path(csv_path, comm.rank), None)
    audit_rows: list[tuple[str, dict]] = []

    def on_step(step) -> None:
        _part_row(part, step, score_out_of_scope)
        item = getattr(step, "item", None)
        if item is not None:
            p = item.prediction
            audit_rows.append(("result_exported", {**audit.prediction_fields(
                p, shown_anyway=score_out_of_scope and p.withheld), "output": "csv",
                "rank": comm.rank}))

    try:
        gen = iter_score_stream(session, card, paths, device, rank=comm.rank,
                                world=comm.world, backend=backend)
        scan_skipped, skipped = drain(gen, on_step)
        part.commit()
        audit.record_many(audit_rows)
    except BaseException:
        part.discard()
        raise
    for s in (scan_skipped if comm.is_main else []) + skipped:
        print(f"skipped {plain_text(s.path)}: {plain_text(s.reason)}", file=sys.stderr)
    comm.barrier()  # every part is complete
    if comm.is_main:
        n = merge_parts(csv_path, comm.world, prediction_header(card.classes))
        print(f"wrote {n} rows to {plain_text(csv_path)} ({comm.world} processes)",
              file=sys.stderr)
    return 0


def _part_row(part: RowWriter, step, score_out_of_scope: bool) -> None:
    if isinstance(step, ScoredProgress) and step.item is not None:
        item = step.item
        part.row([str(item.key), *prediction_row(item.path, item.prediction, score_out_of_scope)])
