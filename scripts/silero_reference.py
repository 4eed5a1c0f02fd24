"""Writes models/silero_vad/reference.json: fixed inputs for each silero_vad version and the
outputs that Python's onnxruntime produces for them. The gateway's tests compare against it."""

import json
import pathlib
import sys

import numpy as np
import onnxruntime

onnxruntime.set_default_logger_severity(3)

SAMPLE_RATE = 16000
SAMPLES = 512  # one 32 ms window at 16 kHz, the size silero-vad expects


def fixed_audio(batch: int, seed: int) -> np.ndarray:
    t = np.arange(SAMPLES, dtype=np.float64) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    rows = [
        0.5 * np.sin(2 * np.pi * (220 + 110 * row) * t) + 0.05 * rng.standard_normal(SAMPLES)
        for row in range(batch)
    ]
    return np.asarray(rows, dtype=np.float32)


def main(model_dir: pathlib.Path) -> None:
    cases = []
    for version in sorted(p.name for p in model_dir.iterdir() if (p / "model.onnx").is_file()):
        session = onnxruntime.InferenceSession(
            str(model_dir / version / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        for batch in (1, 2):
            audio = fixed_audio(batch, seed=batch)
            state = np.zeros((2, batch, 128), dtype=np.float32)
            sr = np.array(SAMPLE_RATE, dtype=np.int64)
            output, state_n = session.run(["output", "stateN"], {"input": audio, "state": state, "sr": sr})
            cases.append(
                {
                    "version": version,
                    "inputs": {
                        "input": {"shape": list(audio.shape), "data": audio.ravel().tolist()},
                        "state": {"shape": list(state.shape), "data": state.ravel().tolist()},
                        "sr": {"shape": [], "data": [int(sr)]},
                    },
                    "outputs": {
                        "output": {"shape": list(output.shape), "data": output.ravel().tolist()},
                        "stateN": {"shape": list(state_n.shape), "data": state_n.ravel().tolist()},
                    },
                }
            )
    path = model_dir / "reference.json"
    path.write_text(json.dumps({"onnxruntime": onnxruntime.__version__, "cases": cases}))
    print(f"wrote {path} ({len(cases)} cases)")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
