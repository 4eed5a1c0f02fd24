"""Builds a labelled set for silero_vad: short clips of speech synthesised by espeak-ng, with
silence and noise around and between the utterances, mixed by sox. Every 512-sample frame
(32 ms at 16 kHz) is labelled by construction: speech (1) where the clean synthesised signal
has energy in it, else 0.

    build_vad_eval.py OUT_DIR [SILERO_DIR]

writes OUT_DIR/eval.npz, one example per frame, in stream order:
    input     [frames, 1, 576] float32  the frame with the 64 samples before it in front (zeros
                                        at a stream's start), as silero-vad 5+ wants
    sr        [frames] int64            16000
    sequence  [frames] int64            the clip the frame belongs to: one stream each
    labels    [frames] int64            1 speech, 0 not
and OUT_DIR/eval.json: the clips, their sentences and noise, the label counts, and, with
SILERO_DIR (models/silero_vad), what each version scores when ONNX Runtime runs it here directly,
stream by stream with its state carried: precision, recall and F1 of speech at 0.5, accuracy.
"""

import io
import json
import pathlib
import subprocess
import sys
import tempfile
import wave
import zipfile

import numpy as np

RATE = 16000
CHUNK = 512
CONTEXT = 64
# A frame is speech when the clean signal's RMS in it is above this (espeak-ng's speech sits
# around 0.1; the pauses between its words are digital silence).
SPEECH_RMS = 0.01

CLIPS = [
    ("en-us", 150, "The gateway routes every request by a measured policy.", None),
    ("en-gb", 170, "Seven versions of one model can serve at once.", "whitenoise"),
    ("en-us", 130, "Canary rollouts judge themselves, stage after stage.", "pinknoise"),
    ("en-us+f3", 160, "Operators watch the latency in Prometheus.", "brownnoise"),
    ("en-gb+m3", 140, "A stalled client gets a clear error, never a hang.", "whitenoise"),
    ("en-us+f2", 180, "Memory on each device is reserved before a replica loads.", "pinknoise"),
]
# Seconds of silence (or noise) before, between the two halves of, and after each utterance.
LEAD, GAP, TAIL = 0.8, 0.6, 0.7


def run(*command):
    # sox -R: its default random numbers, so that its noise and its dither are the same on
    # every build.
    if command[0] == "sox" and command[1] != "-R":
        command = ("sox", "-R", *command[1:])
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_wav(path: pathlib.Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768


def clip(work: pathlib.Path, index: int, voice: str, speed: int, sentence: str, noise):
    """The mixed clip and its clean speech, the same length."""
    first, second = sentence.split(",", 1) if "," in sentence else (sentence, "")
    parts = []
    for half, text in enumerate([first, second]):
        if not text.strip():
            continue
        raw = work / f"{index}_{half}_raw.wav"
        run("espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text.strip())
        parts.append(work / f"{index}_{half}.wav")
        run("sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(parts[-1]))
    clean = work / f"{index}_clean.wav"
    # Silence around and between the utterances (sox's pad), then the halves joined.
    padded = []
    for number, part in enumerate(parts):
        out = work / f"{index}_{number}_padded.wav"
        before = LEAD if number == 0 else GAP
        after = TAIL if number == len(parts) - 1 else 0
        run("sox", str(part), str(out), "pad", str(before), str(after))
        padded.append(str(out))
    run("sox", *padded, str(clean))
    mixed = work / f"{index}_mixed.wav"
    if noise is None:
        run("sox", str(clean), str(mixed))
    else:
        seconds = len(read_wav(clean)) / RATE
        noise_wav = work / f"{index}_noise.wav"
        # -R: sox's default random numbers, the same noise on every run.
        run("sox", "-R", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(noise_wav), "synth",
            f"{seconds:.4f}", noise, "vol", "0.03")
        run("sox", "-R", "-m", str(clean), str(noise_wav), str(mixed))
    return read_wav(mixed), read_wav(clean)


def save_npz(path: pathlib.Path, arrays) -> None:
    """np.savez with fixed entry times, so that the file (and the SHA-256 that scores name) is
    the same on every build."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                             buffer.getvalue())


def main(out: pathlib.Path, silero=None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    windows, rates, sequences, labels, described = [], [], [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        work = pathlib.Path(scratch)
        for index, (voice, speed, sentence, noise) in enumerate(CLIPS):
            mixed, clean = clip(work, index, voice, speed, sentence, noise)
            length = min(len(mixed), len(clean))
            frames = length // CHUNK
            mixed = mixed[: frames * CHUNK]
            clean = clean[: frames * CHUNK]
            speech = 0
            for frame in range(frames):
                start = frame * CHUNK
                context = mixed[start - CONTEXT : start] if frame > 0 else np.zeros(CONTEXT, np.float32)
                windows.append(np.concatenate([context, mixed[start : start + CHUNK]])[None, :])
                rms = float(np.sqrt(np.mean(clean[start : start + CHUNK] ** 2)))
                label = int(rms > SPEECH_RMS)
                speech += label
                labels.append(label)
                rates.append(RATE)
                sequences.append(index)
            described.append({"voice": voice, "speed": speed, "sentence": sentence,
                              "noise": noise or "none (digital silence)", "frames": frames,
                              "speech_frames": speech})
    save_npz(out / "eval.npz", {"input": np.stack(windows).astype(np.float32),
                                "sr": np.array(rates, np.int64),
                                "sequence": np.array(sequences, np.int64),
                                "labels": np.array(labels, np.int64)})
    summary = {"clips": described, "frames": len(labels), "speech_frames": int(sum(labels)),
               "frame_samples": CHUNK, "rate": RATE, "speech_rms": SPEECH_RMS}
    if silero is not None:
        summary["expected"] = reference(silero, np.stack(windows).astype(np.float32),
                                        np.array(sequences), np.array(labels))
    (out / "eval.json").write_text(json.dumps(summary, indent=1) + "\n")


def reference(silero: pathlib.Path, windows, sequences, labels, threshold=0.5):
    import onnxruntime

    expected = {}
    for version in sorted(p.name for p in silero.iterdir() if (p / "model.onnx").is_file()):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(silero / version / "model.onnx"), options,
                                               providers=["CPUExecutionProvider"])
        probabilities = np.zeros(len(labels))
        state = None
        for index in range(len(labels)):
            if index == 0 or sequences[index] != sequences[index - 1]:
                state = np.zeros((2, 1, 128), np.float32)
            output, state = session.run(None, {"input": windows[index], "state": state,
                                               "sr": np.array(RATE, np.int64)})
            probabilities[index] = float(output.reshape(-1)[0])
        predicted = (probabilities >= threshold).astype(np.int64)
        tp = int(np.sum((predicted == 1) & (labels == 1)))
        fp = int(np.sum((predicted == 1) & (labels == 0)))
        fn = int(np.sum((predicted == 0) & (labels == 1)))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        expected[version] = {
            "accuracy": float(np.mean(predicted == labels)),
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            # How near the threshold the nearest frame is: a frame that close could fall on
            # the other side when the gateway joins streams into one call.
            "closest_to_threshold": float(np.min(np.abs(probabilities - threshold))),
        }
    return expected


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else None)
