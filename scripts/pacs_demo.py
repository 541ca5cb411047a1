"""A PACS to try medview against: Orthanc on free localhost ports, holding a chest film
(from an image file you give) and a small CT.

    python scripts/pacs_demo.py --film chest.jpeg            # prints the URLs; Ctrl-C ends
    xvfb-run -a python scripts/pacs_demo.py --film chest.jpeg --screenshots docs/screenshots

With ``--screenshots`` it drives the real window instead: File > Open from PACS, find
the patient, retrieve, score with cxr-pneumonia, send the result, list the study's
series again (the SR and the heat-map are there) and saves the screenshots.
Needs Debian's ``orthanc`` and ``orthanc-dicomweb``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PATIENT_ID = "DEMO-0042"


def film_to_dicom(image_path: str, folder: str) -> str:
    """The film as a DICOM CR of a new study (synthetic identity)."""
    from PIL import Image
    from pydicom.uid import generate_uid

    from tests.orthanc import image_dataset

    grey = np.asarray(Image.open(image_path).convert("L")).astype(np.uint16) * 16
    ds = image_dataset(grey, study_uid=generate_uid(), series_uid=generate_uid(),
                       modality="CR", patient_id=PATIENT_ID, patient_name="Demo^Child",
                       body_part="CHEST", view="AP", age="004Y",
                       description="Chest AP", study_description="XR CHEST 1 VIEW",
                       accession="A20240312")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "film.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path


def wait(signal, timeout_s: float = 120.0):
    """Run the event loop until ``signal`` fires; returns its arguments."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    got = []
    signal.connect(lambda *a: (got.append(a), loop.quit()))
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    if not got:
        raise TimeoutError(f"no {signal} within {timeout_s} s")
    return got[0]


def screenshots(server, out: str) -> None:
    from PySide6.QtCore import QSettings

    from medview.gui.app import create_app
    from medview.gui.main_window import MainWindow
    from medview.pacs import PacsSettings

    app = create_app()
    tmp = tempfile.mkdtemp(prefix="medview-demo-")
    win = MainWindow(QSettings(os.path.join(tmp, "s.ini"), QSettings.Format.IniFormat))
    win.resize(1500, 950)
    win.show()
    if not win.model_panel.models_loaded:
        wait(win.model_panel.models_ready)
    settings = PacsSettings(port=server.medview_port, cache_dir=os.path.join(tmp, "cache"))
    dlg = win.open_pacs_dialog()
    dlg.settings = settings
    dlg.resize(1000, 520)
    dlg.server.setCurrentText(server.dimse_url)
    dlg.patient_id.setText(PATIENT_ID)
    dlg.find_button.click()
    wait(dlg.studies_found)
    study = dlg.tree.topLevelItem(0)
    study.setExpanded(True)
    wait(dlg.series_listed)
    dlg.tree.setCurrentItem(study)
    dlg.retrieve_button.click()
    wait(dlg.retrieve_finished)
    wait(win.load_finished)
    app.processEvents()
    dlg.grab().save(os.path.join(out, "pacs-open.png"))
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("cxr-pneumonia"))
    panel.run_button.click()
    wait(panel.prediction_ready)
    if panel._saliency is None:
        if panel._last.withheld:
            panel.show_anyway.click()
        wait(panel.saliency_ready)
    job = panel.send_result(server.dimse_url, settings)
    wait(job.succeeded)
    app.processEvents()
    time.sleep(0.3)
    app.processEvents()
    win.grab().save(os.path.join(out, "pacs-sent.png"))
    study.takeChildren()
    dlg.list_series(study)
    wait(dlg.series_listed)
    dlg.tree.setCurrentItem(study)
    dlg._say("The SR and the heat-map (Secondary Capture) arrived in the PACS.")
    app.processEvents()
    dlg.grab().save(os.path.join(out, "pacs-arrived.png"))
    dlg.close()
    win.close()


def main() -> int:
    from tests.orthanc import Orthanc, write_study

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--film", required=True, help="a chest X-ray (PNG/JPEG)")
    ap.add_argument("--screenshots", help="folder to save the screenshots into")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="medview-pacs-demo-")
    server = Orthanc(os.path.join(root, "orthanc")).start()
    try:
        film = film_to_dicom(args.film, os.path.join(root, "film"))
        _uid, ct = write_study(os.path.join(root, "ct"), modality="CT", n=30, size=128,
                               patient_id="DEMO-0077", patient_name="Demo^Adult",
                               study_description="CT HEAD")
        server.upload([film, *ct])
        if args.screenshots:
            os.makedirs(args.screenshots, exist_ok=True)
            screenshots(server, args.screenshots)
            return 0
        print(f"DIMSE:    {server.dimse_url}   (medview's AE title MEDVIEW, C-MOVE port "
              f"{server.medview_port})\nDICOMweb: {server.web_url}\n"
              f"try: medview pacs find {server.dimse_url} --patient-id {PATIENT_ID}")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
