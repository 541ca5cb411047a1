"""Run every benchmark and print one table each (``make bench``)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import (
    bench_backends,
    bench_cpu,
    bench_distributed,
    bench_gui_launch,
    bench_gui_stall,
    bench_hardening,
    bench_inference,
    bench_load,
    bench_pacs,
    bench_reading,
    bench_robustness,
    bench_training,
    bench_trust_gate,
)
from benchmarks.common import print_table

if __name__ == "__main__":
    print_table("Series loading (300 x 512 x 512 int16 CT, best of 3)", bench_load.run())
    print_table("Series of real scanner files (vendor headers kept, 512 x 512, best of 3)",
                bench_load.run_real(matrix=512))
    print_table("Hardening: frame pre-check cost, a folder of hostile files",
                bench_hardening.run_precheck() + bench_hardening.run_hostile_folder())
    print_table("GUI responsiveness while loading (real window, offscreen)",
                bench_gui_stall.run())
    print_table("Reading tools on a 512 x 512 x 300 CT (real window, offscreen)",
                bench_reading.run())
    print_table("Inference and saliency (CPU)", bench_inference.run_latency()
                + bench_inference.run_launch("torch") + bench_inference.run_launch()
                + bench_inference.run_warm_up("torch") + bench_inference.run_warm_up()
                + bench_inference.run_saliency_stall())
    print_table("CPU backends (cxr-pneumonia, same inputs, engines alternated)",
                bench_backends.run_backends())
    print_table("ONNX Runtime threads (batch 1)", bench_backends.run_threads())
    print_table("Saliency on the graph path; Integrated Gradients batching",
                bench_backends.run_cam_and_ig())
    print_table("Cold start (whole process)", bench_backends.run_cold_start())
    print_table("Worklist end to end (whole process)", bench_backends.run_worklist())
    print_table("Cold one-film predict: medview vs a bare script (whole process)",
                bench_cpu.run_cold())
    print_table("Batch predict: medview vs a bare script (whole process)",
                bench_cpu.run_batch())
    print_table("Training: medview vs a plain loop (whole process, CPU)",
                bench_cpu.run_training())
    print_table("Launch, watched from outside (Xvfb screenshots; cxr-pneumonia, one film)",
                bench_gui_launch.run())
    print_table("Training throughput (Lite0, 128 px, batch 16, CPU)", bench_training.run())
    print_table("Trust gate: cost and out-of-distribution benchmark (cxr-pneumonia, CPU)",
                bench_trust_gate.run())
    print_table("Robustness and shortcuts: bundled models vs previous (dev test split)",
                bench_robustness.run())
    print_table(f"PACS retrieve ({bench_pacs.N_INSTANCES} CT instances from a real Orthanc on "
                f"localhost, best of {bench_pacs.ROUNDS})", bench_pacs.run())
    print_table("Several processes (torchrun, gloo, this machine's cores)",
                bench_distributed.run())
