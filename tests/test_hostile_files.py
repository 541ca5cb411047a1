"""Hostile study files: nothing runs, nothing hangs, nothing escapes, memory stays bounded.

One test per class found by the security and fault probe, and one folder holding every
class next to good files (loaded in a separate process, timed and memory-measured).
"""

import json
import os
import time

import numpy as np
import pytest

from medview.core.errors import CancelledError
from medview.imaging import render_slice
from medview.io import load
from tests import hostile
from tests.factory import make_dataset, write, write_series
from tests.timing import generous

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def good(tmp_path):
    write_series(tmp_path, n=3)
    return tmp_path


def _reason(result, name):
    hits = [s.reason for s in result.skipped if os.path.basename(s.path) == name]
    assert len(hits) == 1, result.skipped
    return hits[0]


def _good_loads(result):
    assert 3 in [v.n_slices for v in result.volumes]


def test_every_hostile_class_in_one_folder_in_seconds_and_bounded_memory(tmp_path):
    folder = tmp_path / "study"
    write_series(folder, n=3)
    classes = hostile.every_class(str(folder))
    rc, out, seconds, peak_mib = hostile.run_info_measured(str(folder), ROOT)
    assert rc == 0
    doc = json.loads(out)
    skipped = {os.path.basename(s["path"]): s["reason"] for s in doc["skipped"]}
    for name, what in classes.items():
        assert skipped.get(name), f"{what} ({name}) not listed with a reason: {skipped}"
    assert "not a regular file" in skipped["pipe.dcm"]
    assert "memory limit" in skipped["bomb.png"] and "memory limit" in skipped["rle-bomb.dcm"]
    assert "memory limit" in skipped["bomb.nrrd"]
    assert "decoder crashed: PanicException" in skipped["rle-panic.dcm"]
    assert "outside its folder" in skipped["passwd.mhd"]
    assert "outside its folder" in skipped["passwd.nhdr"]
    assert "absolute path" in skipped["zero.mhd"]
    assert "not a regular file" in skipped["fifo.mhd"]
    shapes = [s["shape"] for s in doc["series"]]
    assert [3, 16, 16] in shapes  # the good series
    assert len(doc["series"]) == 1 + 1 + 5  # + parallel-orientation + numeric-nonsense files
    assert seconds < generous(30)
    assert peak_mib < 1536


def test_fifo_is_never_opened(good):
    name = hostile.fifo(str(good))
    result = load([str(good)])
    assert "not a regular file" in _reason(result, name)
    _good_loads(result)
    # given directly, too
    result = load([str(good / name)])
    assert "not a regular file" in result.skipped[0].reason


def test_parallel_orientation_loads_with_warning_and_does_not_abort_the_study(good):
    hostile.parallel_orientation(str(good))
    result = load([str(good)])
    _good_loads(result)
    (vol,) = [v for v in result.volumes if v.n_slices == 1]
    assert vol.direction is None
    assert any("Orientation" in w for w in vol.warnings)


def test_rgb_photometric_with_one_sample_is_refused(good):
    result = load([str(good)])
    name = hostile.rgb_one_sample(str(good))
    result = load([str(good)])
    assert "SamplesPerPixel" in _reason(result, name)
    _good_loads(result)


def test_rust_panic_in_a_decoder_is_a_skipped_file(good):
    name = hostile.rle_panic(str(good))
    result = load([str(good)])
    assert "PanicException" in _reason(result, name)
    _good_loads(result)


def test_base_exceptions_from_plugins_are_caught_but_interrupts_propagate(good, monkeypatch):
    import medview.io.series as series

    class NativePanic(BaseException):
        pass

    def panic(*_a):
        raise NativePanic("boom")

    def reader(fn):  # both ways a series file's pixels are read
        monkeypatch.setattr(series, "read_pixels", fn)
        monkeypatch.setattr(series, "read_pixels_into", fn)

    reader(panic)
    result = load([str(good)])
    assert result.volumes == [] and len(result.skipped) == 3
    assert all("NativePanic" in s.reason for s in result.skipped)

    def interrupt(*_a):
        raise KeyboardInterrupt

    reader(interrupt)
    with pytest.raises(KeyboardInterrupt):
        load([str(good)])

    def cancel(*_a):
        raise CancelledError("cancelled by the user")

    reader(cancel)
    with pytest.raises(CancelledError):
        load([str(good)])


def test_memory_error_while_allocating_a_series_costs_only_that_series(good, monkeypatch):
    import medview.io.series as series

    other = good / "other"
    write_series(other, n=2, size=8)
    real_empty = np.empty

    def empty(shape, dtype=float):
        if shape[0] == 3:
            raise MemoryError
        return real_empty(shape, dtype)

    monkeypatch.setattr(series.np, "empty", empty)
    result = load([str(good)])
    assert [v.n_slices for v in result.volumes] == [2]
    assert sum("not enough memory" in s.reason for s in result.skipped) == 3


def test_nifti_vox_offset_nan_or_inf(good):
    for value, name in ((float("nan"), "nan.nii"), (float("inf"), "inf.nii")):
        hostile.nifti(str(good), name, vox_offset=value)
    result = load([str(good)])
    assert "vox_offset" in _reason(result, "nan.nii")
    assert "vox_offset" in _reason(result, "inf.nii")
    _good_loads(result)


@pytest.mark.parametrize("ref", ["../../../../../../etc/passwd", "/etc/passwd", "/dev/zero",
                                 "sub/../../outside.raw"])
def test_detached_data_files_must_stay_in_their_folder(tmp_path, ref):
    study = tmp_path / "study"
    study.mkdir()
    (tmp_path / "outside.raw").write_bytes(bytes(64 * 64))
    hostile.mhd(str(study), "a.mhd", ref)
    hostile.nrrd_detached(str(study), "b.nhdr", ref)
    result = load([str(study)])
    assert result.volumes == []
    for name in ("a.mhd", "b.nhdr"):
        reason = _reason(result, name)
        assert "outside its folder" in reason or "absolute path" in reason


def test_detached_data_file_links_out_of_the_folder_are_refused(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (tmp_path / "outside.raw").write_bytes(bytes(64 * 64))
    os.symlink(tmp_path / "outside.raw", study / "img.raw")
    hostile.mhd(str(study), "a.mhd", "img.raw")
    result = load([str(study / "a.mhd")])
    assert "outside its folder" in result.skipped[0].reason


def test_detached_data_in_the_same_folder_still_loads(tmp_path):
    data = (np.arange(64 * 64) % 251).astype(np.uint8)
    (tmp_path / "img.raw").write_bytes(data.tobytes())
    hostile.mhd(str(tmp_path), "a.mhd", "img.raw")
    hostile.nrrd_detached(str(tmp_path), "b.nhdr", "img.raw")
    result = load([str(tmp_path)])
    assert result.skipped == []  # the .raw is a companion, not a skipped file
    assert len(result.volumes) == 2
    for v in result.volumes:
        assert sorted(np.unique(v.pixels).tolist()) == sorted(np.unique(data).tolist())


def test_detached_fifo_is_refused_before_the_reader_opens_it(tmp_path):
    os.mkfifo(tmp_path / "img.raw")
    hostile.mhd(str(tmp_path), "a.mhd", "img.raw")
    result = load([str(tmp_path / "a.mhd")])
    assert "not a regular file" in result.skipped[0].reason


def test_nifti_pair_with_fifo_image_is_refused(tmp_path):
    hostile.nifti(str(tmp_path), "pair.hdr", magic=b"ni1\0", data=b"")
    os.mkfifo(tmp_path / "pair.img")
    result = load([str(tmp_path / "pair.hdr")])
    assert "not a regular file" in result.skipped[0].reason


@pytest.mark.parametrize("builder", [hostile.rle_bomb, hostile.png_bomb,
                                     hostile.nrrd_gzip_bomb])
def test_decompression_bombs_are_refused_from_the_header(tmp_path, builder):
    name = builder(str(tmp_path))
    t = time.perf_counter()
    result = load([str(tmp_path / name)])
    assert time.perf_counter() - t < generous(2)  # decoding the bomb takes minutes
    assert "memory limit" in result.skipped[0].reason
    assert "MEDVIEW_MAX_IMAGE_MEMORY" in result.skipped[0].reason


def test_memory_budget_is_configurable(tmp_path, monkeypatch):
    write(make_dataset(np.zeros((512, 512), np.int16)), tmp_path / "a.dcm")
    assert len(load([str(tmp_path)]).volumes) == 1
    monkeypatch.setenv("MEDVIEW_MAX_IMAGE_MEMORY", "16M")
    assert len(load([str(tmp_path)]).volumes) == 1  # 0.5 MiB x 2 copies fits
    write(make_dataset(np.zeros((3000, 3000), np.int16)), tmp_path / "b.dcm")
    result = load([str(tmp_path / "b.dcm")])
    assert "memory limit is 16.0 MiB" in result.skipped[0].reason


def test_compressed_frame_that_disagrees_with_the_header_is_refused_before_decoding(
        tmp_path, monkeypatch):
    import pydicom

    import medview.io.dicom as dicom
    from tests.testdata import local_file

    path = local_file("MR_small_jp2klossless.dcm")  # shipped inside pydicom
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Rows // 2
    ds.save_as(tmp_path / "lie.dcm")

    def never(*_a, **_k):
        raise AssertionError("the decoder must not run")

    monkeypatch.setattr("pydicom.pixels.pixel_array", never)
    result = load([str(tmp_path / "lie.dcm")])
    assert "compressed frame 1 declares 64x64" in result.skipped[0].reason
    assert dicom.check_frames is not None


def test_numeric_nonsense_warns_and_never_shows_a_blank_image(tmp_path):
    names = hostile.numeric_nonsense(str(tmp_path))
    result = load([str(tmp_path)])
    assert result.skipped == []
    by_name = {os.path.basename(v.source_paths[0]): v for v in result.volumes}
    assert sorted(by_name) == sorted(names)
    for name, v in by_name.items():
        shown = render_slice(v, 0, None)
        assert np.unique(shown).size > 10, name  # the ramp is visible, not a flat image
        assert np.all(np.isfinite(v.rescale_slope)) and np.all(np.abs(v.rescale_slope) < 1e30)
        assert v.warnings, name
    assert all(np.isnan(by_name["spacing-1e308.dcm"].spacing[1:]))
    assert any("Window" in w for w in by_name["window-1e308.dcm"].warnings)
    assert any("Rescale" in w for w in by_name["slope-denormal.dcm"].warnings)


def test_deflated_dataset_bomb_is_refused_before_pydicom_inflates_it(good, monkeypatch):
    monkeypatch.setenv("MEDVIEW_MAX_IMAGE_MEMORY", "64M")
    name = hostile.deflate_bomb(str(good), 100 * 1024**2)  # 100 MiB of zeros in ~100 kB
    assert os.path.getsize(good / name) < 1024**2

    def never(*_a, **_k):
        raise AssertionError("pydicom must not inflate the bomb")

    import medview.io.dicom as dicom

    real = dicom.pydicom.dcmread
    monkeypatch.setattr(dicom.pydicom, "dcmread",
                        lambda p, *a, **k: never() if p.endswith(name) else real(p, *a, **k))
    result = load([str(good)])
    assert "memory limit" in _reason(result, name)
    _good_loads(result)


def test_small_deflated_file_still_loads(tmp_path):
    name = hostile.deflate_bomb(str(tmp_path), 1024)
    (vol,) = load([str(tmp_path / name)]).volumes
    assert vol.shape == (1, 8, 8)


def _nrrd(path, extra: bytes) -> str:
    data = np.zeros((4, 4), np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 4 4\nencoding: raw\n" + extra
                + b"\n" + data)
    return str(path)


@pytest.mark.parametrize(("name", "extra", "why"), [
    ("long-space.nrrd", b"space: " + b"x" * 1030 + b"\n", "longer than"),
    ("long-content.nrrd", b"content: " + b"y" * 5000 + b"\n", "longer than"),
    ("many-pairs.nrrd", b"".join(b"k%d:=v\n" % i for i in range(300)), "more than"),
    ("many-labels.nrrd", b"labels: " + b'"a" ' * 120 + b"\n", "more entries than"),
    ("unknown-field.nrrd", b"evil field: 1\n", "not one NRRD defines"),
    ("control.nrrd", b"content: a\x01b\n", "control characters"),
])
def test_nrrd_headers_that_crash_the_native_reader_never_reach_it(tmp_path, name, extra, why):
    """A NRRD field of about 1 KiB segfaulted SimpleITK (exit 139, nothing printed): the
    header is validated in Python first. Run as a process: a native crash would kill it."""
    folder = tmp_path / "study"
    write_series(folder, n=3)
    _nrrd(folder / name, extra)
    _nrrd(folder / "good.nrrd", b"content: a fine 2-D image\n")
    rc, out, _seconds, _peak = hostile.run_info_measured(str(folder), ROOT)
    assert rc == 0, out  # the process survived and loaded the rest
    doc = json.loads(out)
    skipped = {os.path.basename(s["path"]): s["reason"] for s in doc["skipped"]}
    assert why in skipped[name]
    assert len(doc["series"]) == 2  # the DICOM series and the good NRRD


def test_skip_reasons_are_capped():
    from medview.core.volume import MAX_REASON, SkippedFile

    assert len(SkippedFile("x", "y" * 73146).reason) == MAX_REASON


def test_a_native_crash_in_a_reader_costs_one_file_not_the_process(tmp_path):
    """The next unknown native crash: the reader runs in a child process, so a segfault
    or an abort there is that file's refusal. Shown with SimpleITK's own reader on the
    NRRD that segfaulted it (its header check bypassed), and with an abort."""
    from medview.core.errors import LoadError
    from medview.io import isolate

    if not isolate.enabled():
        pytest.skip("reader isolation is off here (a frozen bundle or Windows)")
    crasher = _nrrd(tmp_path / "crash.nrrd", b"space: " + b"x" * 1030 + b"\n")
    with pytest.raises(LoadError, match=r"crashed the native reader \(SIGSEGV\)"):
        isolate.run(crasher, "SimpleITK", "ReadImage", crasher)
    with pytest.raises(LoadError, match=r"crashed the native reader \(SIGABRT\)"):
        isolate.run(crasher, "os", "abort")
    good = _nrrd(tmp_path / "good.nrrd", b"content: fine\n")
    assert isolate.run(good, "medview.io.itk", "read_itk_here", good, "nrrd").shape == (
        1, 4, 4)  # and the next file reads


def test_the_childs_budget_is_the_callers(tmp_path, monkeypatch):
    """A setting made after the reader process started still applies to the next read."""
    from medview.io import isolate, load

    if not isolate.enabled():
        pytest.skip("reader isolation is off here")
    good = _nrrd(tmp_path / "a.nrrd", b"content: fine\n")
    assert load([good]).volumes  # the reader process is running now
    monkeypatch.setenv("MEDVIEW_MAX_IMAGE_MEMORY", "123M")
    assert isolate.run(good, "os", "getenv", "MEDVIEW_MAX_IMAGE_MEMORY") == "123M"


def test_an_unguarded_script_reading_a_volume_is_not_run_again(tmp_path):
    """The reader's child never imports the caller's main script: a script without an
    ``if __name__ == "__main__"`` guard reads a NRRD once, and is not run twice."""
    import subprocess
    import sys

    good = _nrrd(tmp_path / "a.nrrd", b"content: fine\n")
    script = tmp_path / "unguarded.py"
    runs = tmp_path / "runs.txt"
    script.write_text(f"open({str(runs)!r}, 'a').write('ran\\n')\n"
                      "from medview.io import load\n"
                      f"print('volumes', len(load([{good!r}]).volumes))\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "volumes 1" in r.stdout
    assert runs.read_text().count("ran") == 1  # not again in the reader's child
