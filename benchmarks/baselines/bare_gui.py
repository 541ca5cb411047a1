"""A bare PySide6 window, written as a user would write it outside medview: it shows the
film, scores it with ONNX Runtime on a thread, and draws the class activation map
(the graph's last feature maps weighted by the classifier, as Grad-CAM of a global-pool
head) over the film in warm colours, with the probabilities as text. The benchmarks
launch it and medview on the same film and watch the X display from outside."""

import json
import os
import sys
import threading

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QApplication, QHBoxLayout, QLabel, QMainWindow, QWidget


class Scorer(QObject):
    done = Signal(object, object)

    def run(self, folder: str, path: str) -> None:
        import numpy as np
        import onnxruntime as ort
        from PIL import Image
        from safetensors.numpy import load_file

        with open(os.path.join(folder, "card.json")) as f:
            card = json.load(f)
        pre = card["preprocessing"]
        h, w = pre["size"]
        grey = np.asarray(Image.open(path).convert("L").resize((w, h),
                                                                Image.Resampling.BILINEAR))
        x = np.repeat(grey[None, None].astype(np.float32) / np.float32(255.0), 3, axis=1)
        x = (x - np.array(pre["mean"], np.float32).reshape(1, -1, 1, 1)) / np.array(
            pre["std"], np.float32).reshape(1, -1, 1, 1)
        session = ort.InferenceSession(os.path.join(folder, "graph.onnx"),
                                       providers=["CPUExecutionProvider"])
        logits, maps = session.run(["logits", "feature_maps"], {"x": x})
        z = logits[0].astype(np.float64) / card["calibration"]["temperature"]
        p = np.exp(z - z.max())
        p /= p.sum()
        head = load_file(os.path.join(folder, "weights.safetensors"))[
            card["graph"]["cam_head"] + ".weight"]
        k = int(np.argmax(p))
        cam = np.maximum(np.tensordot(head[k], maps[0], axes=(0, 0)), 0)
        cam = cam / max(float(cam.max()), 1e-12)
        self.done.emit(p, cam)


def main() -> None:
    folder, path = sys.argv[1], sys.argv[2]
    app = QApplication(sys.argv[:1])
    win = QMainWindow()
    win.setWindowTitle("bare")
    body = QWidget()
    row = QHBoxLayout(body)
    film = QLabel()
    text = QLabel("scoring...")
    row.addWidget(film, 1)
    row.addWidget(text)
    win.setCentralWidget(body)
    image = QImage(path)
    film.setPixmap(QPixmap.fromImage(image).scaled(
        700, 700, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))
    win.resize(1000, 760)
    win.show()
    scorer = Scorer()

    def shown(p, cam) -> None:
        import numpy as np
        from PIL import Image

        grey = np.asarray(Image.open(path).convert("L"), np.float32)
        heat = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize(
            (grey.shape[1], grey.shape[0]), Image.Resampling.BILINEAR), np.float32) / 255
        rgb = np.stack([255 * np.clip(1.5 * heat, 0, 1), 255 * np.clip(1.5 * heat - 0.5, 0, 1),
                        40 * (1 - heat)], -1)
        out = np.ascontiguousarray((0.4 * grey[..., None] + 0.6 * rgb).astype(np.uint8))
        img = QImage(out.data, out.shape[1], out.shape[0], out.strides[0],
                     QImage.Format.Format_RGB888).copy()
        film.setPixmap(QPixmap.fromImage(img).scaled(
            700, 700, Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation))
        with open(os.path.join(folder, "card.json")) as f:
            classes = json.load(f)["classes"]
        text.setText("\n".join(f"{c['name']}: {v:.2f}" for c, v in zip(classes, p,
                                                                      strict=True)))

    scorer.done.connect(shown)
    threading.Thread(target=scorer.run, args=(folder, path), daemon=True).start()
    app.exec()


if __name__ == "__main__":
    main()
