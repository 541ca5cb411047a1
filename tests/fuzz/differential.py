"""Differential check of the two DICOM header parsers: medview's fast walk
(``medview.io.dicomscan.read_wanted``) and pydicom's full reader must agree on every
element medview uses, and on where the pixels are. When the fast walk declines (returns
None) the full reader is used, so that is agreement by construction. A disagreement is
a finding: one file, two patients."""

from __future__ import annotations

import warnings


def _value(elem) -> str:
    if elem is None:
        return "<absent>"
    try:
        value = elem.value
    except Exception as exc:  # a value neither side can convert
        return f"<{type(exc).__name__}>"
    if elem.VR == "SQ":
        return f"<sequence of {len(value)}>"
    return repr(value)


def disagreement(path: str) -> str:
    """"" when the fast walk declines or agrees with the full reader; else what differs."""
    from pydicom import dcmread

    from medview.io import dicomscan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fast = dicomscan.read_wanted(path)
        except Exception:
            return ""  # the fast path raised: the loader falls back to the full reader
        if fast is None:
            return ""
        try:
            full = dcmread(path, defer_size=256, force=True)
        except Exception as exc:
            return f"the fast walk read a file the full reader refuses ({type(exc).__name__})"
    for tag in sorted(dicomscan.wanted_tags() - {dicomscan.PIXEL_DATA}):
        a = _value(fast.get(tag)) if tag in fast else "<absent>"
        b = _value(full.get(tag)) if tag in full else "<absent>"
        if a != b:
            from pydicom.datadict import keyword_for_tag

            return f"{keyword_for_tag(tag) or hex(tag)}: fast {a[:60]} != full {b[:60]}"
    fp = fast.get(dicomscan.PIXEL_DATA) if dicomscan.PIXEL_DATA in fast else None
    pp = full.get(dicomscan.PIXEL_DATA) if dicomscan.PIXEL_DATA in full else None
    if (fp is None) != (pp is None):
        return "Pixel Data: present in one reader only"
    if fp is not None:
        ft = getattr(full.get_item(dicomscan.PIXEL_DATA), "value_tell", None)
        fast_raw = fast.get_item(dicomscan.PIXEL_DATA)
        if ft is not None and (fast_raw.value_tell, fast_raw.length) != (
                ft, full.get_item(dicomscan.PIXEL_DATA).length):
            return "Pixel Data: the readers locate different pixels"
    return ""
