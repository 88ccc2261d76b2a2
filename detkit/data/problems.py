"""Faults in data files, and the one policy for them: strict raises, lenient repairs and counts.

Real annotation files are messy (zero-size boxes, boxes past the image border, missing images).
Every loader sends each fault it meets to one ``DataProblems`` collector:

* ``strict=True``: the first fault raises ``DataError`` naming the file and the fault;
* ``strict=False`` (lenient, the default): the loader applies its documented repair (drop the box,
  clip it, skip the image, ...), the collector counts the fault by kind with a few example files,
  and at the end the loader emits **one** ``DataWarning`` that sums everything up, e.g.::

      voc:bccd/trainval+test: dropped 2 zero-size boxes (BloodImage_00338.xml, BloodImage_00343.xml)

The kinds and their phrases are listed in ``KINDS``; docs/data.md has the full table.
``parse_coords`` and ``repair_box`` hold the box rules both loaders share.
"""
from __future__ import annotations

import math
import os
import warnings
from collections import Counter

__all__ = ["DataError", "DataWarning", "DataProblems", "KINDS", "parse_coords", "repair_box"]


class DataError(ValueError):
    """A data file is unusable (or, in strict mode, faulty). The message names the file.

    ``DataError(message, file=path)`` renders as ``"<path>: <message>"``; ``.file`` keeps the path.
    """

    def __init__(self, message: str, file: str | os.PathLike | None = None) -> None:
        self.file = None if file is None else os.fspath(file)
        self.detail = message
        super().__init__(f"{self.file}: {message}" if self.file is not None else message)


class DataWarning(UserWarning):
    """Faults repaired or skipped while loading in lenient mode (one warning per load)."""


# kind -> phrase for the summary; ``{n}`` is the count and ``{s}`` the plural ending.
KINDS: dict[str, str] = {
    "zero_size_box": "dropped {n} zero-size box{es}",
    "malformed_object": "dropped {n} object{s} without a name or a box",
    "bad_coordinates": "dropped {n} box{es} with missing, NaN or non-numeric coordinates",
    "outside_box": "dropped {n} box{es} wholly outside the image",
    "clipped_box": "clipped {n} box{es} to the image",
    "unknown_class": "dropped {n} object{s} of classes not in the class list",
    "malformed_line": "dropped {n} label line{s} that are not 'class cx cy w h'",
    "unknown_category": "dropped {n} annotation{s} with unknown category ids",
    "unknown_image": "dropped {n} annotation{s} of unknown image ids",
    "duplicate_id": "kept the first of {n} duplicate image id{s}",
    "malformed_annotation": "skipped {n} image{s} with malformed annotations",
    "missing_annotation": "skipped {n} image{s} without an annotation file",
    "missing_image": "skipped {n} image{s} whose file is missing",
    "corrupt_image": "skipped {n} image{s} that could not be decoded",
    "size_mismatch": "used the decoded size of {n} image{s} whose annotated size was wrong",
}


class DataProblems:
    """Collects the faults of one load and applies the strict/lenient policy.

    Args:
        name: the data set's short name, used as the warning's prefix (``"voc:bccd/test"``).
        strict: raise ``DataError`` at the first fault instead of counting it.
        max_examples: how many example file names to keep (and show) per kind.
    """

    def __init__(self, name: str = "", *, strict: bool = False, max_examples: int = 3) -> None:
        self.name = name
        self.strict = strict
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def report(self, kind: str, file: str | os.PathLike, message: str, *, example: str | None = None) -> None:
        """Record one fault of ``kind`` in ``file``; raise ``DataError`` in strict mode.

        ``message`` says what is wrong (``"object 3 has zero size (xmin=xmax=504)"``); strict mode
        raises with it, lenient mode keeps only the count and the first few examples: ``example``
        (e.g. the image's name when ``file`` is one big COCO JSON), else the file's base name.
        """
        if self.strict:
            raise DataError(message, file=file)
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        base = example if example is not None else (os.path.basename(os.fspath(file)) or os.fspath(file))
        if len(examples) < self.max_examples and base not in examples:
            examples.append(base)

    def __bool__(self) -> bool:
        return bool(self.counts)

    @property
    def total(self) -> int:
        """Number of faults counted."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line: ``"<name>: dropped 2 zero-size boxes (a.xml, b.xml); clipped 5 boxes ..."``.

        Returns ``""`` when nothing was reported.
        """
        if not self.counts:
            return ""
        parts = []
        for kind, n in self.counts.items():  # insertion order: the order faults were first met
            phrase = KINDS.get(kind, kind.replace("_", " ") + " x{n}")
            text = phrase.format(n=n, s="" if n == 1 else "s", es="" if n == 1 else "es")
            examples = self.examples.get(kind, [])
            if examples:
                more = ", ..." if n > len(examples) else ""
                text += f" ({', '.join(examples)}{more})"
            parts.append(text)
        prefix = f"{self.name}: " if self.name else ""
        return prefix + "; ".join(parts)

    def warn_summary(self, stacklevel: int = 3) -> None:
        """Emit the summary as one ``DataWarning`` (nothing when no fault was reported).

        ``stacklevel=3`` points the warning at the caller of the loader that calls this.
        """
        text = self.summary()
        if text:
            warnings.warn(text, DataWarning, stacklevel=stacklevel)


def parse_coords(values, problems: DataProblems, file, where: str, example: str | None = None):
    """Four box numbers from a file (strings or numbers) -> floats, or ``None`` (reported) when one is
    missing, non-numeric, NaN or infinite (kind ``bad_coordinates``)."""
    try:  # a string would iterate character by character: not a box
        out = () if isinstance(values, (str, bytes, dict)) else tuple(float(v) for v in values)
    except (TypeError, ValueError, OverflowError):
        out = ()
    if len(out) != 4 or not all(math.isfinite(v) for v in out):
        shown = list(values) if isinstance(values, (list, tuple)) else values
        problems.report(
            "bad_coordinates", file, f"{where}: box coordinates {shown!r} are not 4 finite numbers", example=example
        )
        return None
    return out


def repair_box(
    box: tuple[float, float, float, float],
    width: int,
    height: int,
    problems: DataProblems,
    file,
    where: str,
    *,
    min_size: float = 0.0,
    example: str | None = None,
) -> tuple[float, float, float, float] | None:
    """Apply the box policy to one continuous xyxy box inside a ``width`` x ``height`` image.

    Returns the (possibly clipped) box, or ``None`` when it is dropped:

    * width or height ``<= min_size`` -> dropped (``zero_size_box``); VOC passes ``min_size=1``
      because its inclusive ``xmin == xmax`` is an annotator's click, not a box;
    * no overlap with the image -> dropped (``outside_box``);
    * partly outside -> clipped to ``[0, width] x [0, height]`` (``clipped_box``).
    """
    x0, y0, x1, y1 = box
    if x1 - x0 <= min_size or y1 - y0 <= min_size:
        problems.report("zero_size_box", file, f"{where}: zero or negative size", example=example)
        return None
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        problems.report("outside_box", file, f"{where}: wholly outside the {width}x{height} image", example=example)
        return None
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        problems.report("clipped_box", file, f"{where}: partly outside the {width}x{height} image", example=example)
        x0, y0 = max(x0, 0.0), max(y0, 0.0)
        x1, y1 = min(x1, float(width)), min(y1, float(height))
    return x0, y0, x1, y1
