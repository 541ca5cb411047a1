"""Screenshots of the reading tools where a radiologist meets them: a CT slice of
pydicom-data's files (a head CT) with a distance and an ellipse ROI drawn with the mouse, the
Measurements list beside it; a coronal reformat and a 40 mm coronal MIP of a synthetic head
phantom series (pydicom-data ships no 3-D CT).

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/reading_screenshots.py docs/screenshots

Drives the real window: opens the file, picks the tools from the Measure menu and drags
on the image through the viewport (as a hand would, via Qt mouse events), then saves
``measure-ct.png``, ``mpr-coronal.png`` and ``mpr-mip.png``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audit_screenshots import wait_for  # this folder: the same wait


def drag(app, view, a, b, steps: int = 12) -> None:
    """A left-button drag from image point ``a`` to ``b``, with the events spaced as a
    hand spaces them (pyqtgraph drops moves closer than 10 ms apart)."""
    import time

    from PySide6.QtCore import QEvent, QPointF, Qt
    from PySide6.QtGui import QMouseEvent

    port = view.graphics.viewport()

    def at(x: float, y: float):
        view.viewbox.updateMatrix()
        return view.graphics.mapFromScene(view.image_item.mapToScene(QPointF(x, y)))

    def send(kind, p, button, buttons) -> None:
        app.sendEvent(port, QMouseEvent(kind, QPointF(p), QPointF(port.mapToGlobal(p)),
                                        button, buttons, Qt.KeyboardModifier.NoModifier))
        app.processEvents()

    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    pa, pb = at(*a), at(*b)
    send(QEvent.Type.MouseButtonPress, pa, left, left)
    for k in range(1, steps + 1):
        time.sleep(0.012)
        send(QEvent.Type.MouseMove, pa + (pb - pa) * (k / steps), none, left)
    send(QEvent.Type.MouseButtonRelease, pb, left, none)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for the PNG files")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    from PySide6.QtCore import QSettings

    from medview.gui.app import create_app
    from medview.gui.main_window import MainWindow
    from tests.testdata import local_file

    app = create_app()
    settings = QSettings(os.path.join(args.out, ".screenshot-settings.ini"),
                         QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win.resize(1400, 900)
    win.show()
    win.open_paths([local_file("693_UNCR.dcm")])  # a 512 x 512 head CT slice
    wait_for(app, win.load_finished, 20000)
    app.processEvents()
    names = [win.preset_box.itemText(k).lower() for k in range(win.preset_box.count())]
    win.apply_preset(next(k for k, n in enumerate(names) if "brain" in n))  # a head CT
    view = win.view
    win.measure_actions["distance"].trigger()
    drag(app, view, (150.0, 250.0), (330.0, 232.0))
    win.measure_actions["ellipse"].trigger()
    drag(app, view, (300.0, 280.0), (380.0, 340.0))
    win.measure_actions["ellipse"].trigger()  # back to navigating
    app.processEvents()
    path = os.path.join(args.out, "measure-ct.png")
    win.grab().save(path)
    print(path, [(m.kind, round(m.points[0][0])) for m in view.measure.store.all()])

    # MPR: pydicom-data ships no 3-D CT, so a synthetic head phantom (ellipsoids with
    # CT numbers, and thin contrast-filled vessels for the MIP) is written as a series
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        write_phantom(folder)
        win.close_all()
        win.open_paths([folder])
        wait_for(app, win.load_finished, 60000)
        app.processEvents()
        names = [win.preset_box.itemText(k).lower() for k in range(win.preset_box.count())]
        win.apply_preset(next(k for k, n in enumerate(names) if "brain" in n))
        win.show_plane("coronal")
        view.set_slice(view.volume.n_slices // 2)
        app.processEvents()
        path = os.path.join(args.out, "mpr-coronal.png")
        win.grab().save(path)
        print(path)
        from medview.core.volume import WindowPreset

        view.set_window(WindowPreset("Custom", 150, 700))  # contrast in the vessels
        win.set_slab("mip", 40.0)
        app.processEvents()
        path = os.path.join(args.out, "mpr-mip.png")
        win.grab().save(path)
        print(path)
        win.close_all()
        win.set_slab("")

    # two series of one study side by side, scrolled together by patient position
    with tempfile.TemporaryDirectory() as folder:
        thin, thick = os.path.join(folder, "thin"), os.path.join(folder, "thick")
        os.makedirs(thin)
        os.makedirs(thick)
        write_phantom(thin)
        write_phantom(thick, n=36, dz=5.0, description="Head 5 mm", series_number=3)
        win.open_paths([thin, thick])
        wait_for(app, win.load_finished, 60000)
        app.processEvents()
        win.show_plane("acquired")
        win.set_layout("1x2")
        wait_for(app, win.layout_filled, 5000)
        for v in win.grid.shown_views():
            names = [win.preset_box.itemText(k).lower() for k in range(win.preset_box.count())]
            win.grid.set_active(win.grid.views.index(v))
            win.apply_preset(next(k for k, n in enumerate(names) if "brain" in n))
        win.grid.set_active(0)
        win.view.set_slice(58)  # the lesion and the ventricles; the 5 mm series follows
        app.processEvents()
        path = os.path.join(args.out, "compare-1x2.png")
        win.grab().save(path)
        print(path, [v.index for v in win.grid.shown_views()])
        win.close_all()
    os.remove(settings.fileName())
    win.close()
    return 0


def write_phantom(folder: str, n: int = 90, size: int = 160, dz: float = 2.0,
                  description: str = "Head 2 mm", series_number: int = 2,
                  frame: str = "1.2.826.0.1.3680043.8.498.4242") -> None:
    """A synthetic axial CT of a head-like phantom: skull 1000 HU, brain 35, ventricles
    5, a 70 HU lesion, and thin 300 HU vessels; 1 mm pixels, ``dz`` mm slices, in
    Frame of Reference ``frame`` (series written with the same one line up)."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    z, y, x = np.mgrid[0:n, 0:size, 0:size].astype(np.float32)
    zc, c = (z - n / 2) * dz, size / 2

    def ellipsoid(cx, cy, cz, a, b, h):
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((zc - cz) / h) ** 2 <= 1

    hu = np.full(z.shape, -1000, np.float32)
    hu[ellipsoid(c, c, 0, 66, 78, 86)] = 1000
    hu[ellipsoid(c, c, 0, 61, 73, 81)] = 35
    hu[ellipsoid(c - 12, c - 6, 5, 7, 22, 18)] = 5
    hu[ellipsoid(c + 12, c - 6, 5, 7, 22, 18)] = 5
    hu[ellipsoid(c + 30, c + 25, -20, 11, 11, 11)] = 70
    for k, (ox, oy) in enumerate(((-25, 5), (22, -6), (2, 12))):
        px = c + ox + 10 * np.sin(zc / 25 + k)
        py = c + oy + 6 * np.cos(zc / 30 + k)
        hu[((x - px) ** 2 + (y - py) ** 2 <= 2.2) & (np.abs(zc) < 70)] = 300
    hu += np.random.default_rng(0).normal(0, 6, hu.shape).astype(np.float32)
    stored = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
    series, study = generate_uid(), "1.2.826.0.1.3680043.8.498.4243"
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series_number, k + 1
        ds.PatientName, ds.PatientID = "Phantom^Head", "PHANTOM-1"
        ds.StudyDescription, ds.SeriesDescription = "Synthetic phantom", description
        ds.ImagePositionPatient = [-80.0, -80.0, (k - n / 2) * dz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], dz
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = stored[n - 1 - k].tobytes()  # slice k from the feet up
        ds.save_as(os.path.join(folder, f"im{k:03d}.dcm"), enforce_file_format=True)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # the PNG is saved and closed: skip tearing down Qt's objects by garbage collection
    # at exit, which can crash a script that made and closed windows (the app itself
    # quits through its event loop and exits normally)
    os._exit(code)
