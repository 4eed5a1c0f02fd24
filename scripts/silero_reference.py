"""Reference outputs of silero_vad from Python's onnxruntime, which the gateway's tests compare
against.

    silero_reference.py MODEL_DIR
        writes MODEL_DIR/reference.json: fixed inputs for each version and their outputs;
    silero_reference.py --stream WAV MODEL_DIR OUT
        runs each version over the whole of WAV (16 kHz, mono, 16-bit PCM) in one process, in
        512-sample chunks (each with the 64 samples before it in front, as silero-vad's
        own wrapper sends them) carrying the state from one to the next, as a streaming
        client would; writes OUT (the audio as float32 samples, zero-padded to whole chunks, and each
        version's speech probability per chunk) and OUT with .f32 for .json (the samples as
        raw little-endian float32)."""

import json
import pathlib
import sys
import wave

import numpy as np
import onnxruntime

onnxruntime.set_default_logger_severity(3)

SAMPLE_RATE = 16000
SAMPLES = 512  # one 32 ms window at 16 kHz, the size silero-vad expects
# silero-vad 5 and later see each window with the last 64 samples of the one before in front
# (its own OnnxWrapper does this), so a streaming client sends 576 samples per chunk.
CONTEXT = 64


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


def read_wav(path: pathlib.Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        if wav.getframerate() != SAMPLE_RATE or wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 16 kHz mono 16-bit PCM")
        frames = wav.readframes(wav.getnframes())
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    padded = np.zeros(-(-len(samples) // SAMPLES) * SAMPLES, dtype=np.float32)
    padded[: len(samples)] = samples
    return padded


def stream(wav: pathlib.Path, model_dir: pathlib.Path, out: pathlib.Path) -> None:
    audio = read_wav(wav)
    chunks = audio.reshape(-1, SAMPLES)
    sr = np.array(SAMPLE_RATE, dtype=np.int64)
    probabilities = {}
    for version in sorted(p.name for p in model_dir.iterdir() if (p / "model.onnx").is_file()):
        session = onnxruntime.InferenceSession(
            str(model_dir / version / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        state = np.zeros((2, 1, 128), dtype=np.float32)
        context = np.zeros(CONTEXT, dtype=np.float32)
        per_chunk = []
        for chunk in chunks:
            window = np.concatenate([context, chunk])[None, :]
            output, state = session.run(["output", "stateN"], {"input": window, "state": state, "sr": sr})
            per_chunk.append(float(output.ravel()[0]))
            context = chunk[-CONTEXT:]
        probabilities[version] = per_chunk
    out.with_suffix(".f32").write_bytes(audio.astype("<f4").tobytes())
    out.write_text(
        json.dumps(
            {
                "onnxruntime": onnxruntime.__version__,
                "sample_rate": SAMPLE_RATE,
                "chunk": SAMPLES,
                "context": CONTEXT,
                "chunks": len(chunks),
                "probabilities": probabilities,
            }
        )
    )
    speech = {v: sum(p > 0.5 for p in probs) for v, probs in probabilities.items()}
    print(f"wrote {out}: {len(chunks)} chunks; chunks over 0.5 per version: {speech}")


if __name__ == "__main__":
    if sys.argv[1] == "--stream":
        stream(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4]))
    else:
        main(pathlib.Path(sys.argv[1]))
