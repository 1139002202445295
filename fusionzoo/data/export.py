"""Write the ``avdigits`` data as a manifest folder: the worked example of training on your own data.

``fusionzoo data export-avdigits OUT`` writes ``OUT/items.csv`` (columns ``id, image, audio,
caption, label, split, speaker``), ``OUT/images/<split>/<id>.png`` and ``OUT/audio/<split>/<id>.wav``
with exactly the samples :class:`~fusionzoo.data.avdigits.AVDigits` serves: the same pairs, the same
three splits (``val`` the held-out training speaker, ``test`` the unseen one), the same waveforms
(DC removed, peak-normalised, cut to the clip length; written as 32-bit float WAV, so nothing is
rounded) and the same images (8-bit PNG; lossless for ``clean``, rounded to 8 bits for ``hard``).

``caption`` is a noisy transcript: the spoken digit's word in a short phrase, replaced by another
digit's word with probability ``text_noise``. ``blank`` blanks one modality (image, audio or caption,
uniformly) in that fraction of the rows, to exercise missing modalities. Both are seeded.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from fusionzoo.atomic import write_text_atomic
from fusionzoo.data.avdigits import SAMPLE_RATE, SPLITS, AVDigits

__all__ = ["export_avdigits", "DIGIT_WORDS"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASES = ("{}", "the digit {}", "i heard {}", "sounds like {}", "maybe {}")
COLUMNS = ["id", "image", "audio", "caption", "label", "split", "speaker"]


def export_avdigits(
    out: str | Path,
    root: str | Path | None = None,
    difficulty: str = "clean",
    blank: float = 0.0,
    text_noise: float = 0.3,
    seed: int = 0,
) -> Path:
    """Write the folder (see the module docstring); returns the manifest's path. ``out`` must not
    hold a manifest already; ``items.csv`` is written last and atomically, so a folder without it is
    an interrupted export."""
    import soundfile
    from torchvision.io import write_png

    if not 0 <= blank < 1 or not 0 <= text_noise <= 1:
        raise ValueError(f"export-avdigits: blank must be in [0, 1) and text_noise in [0, 1], got {blank}, {text_noise}")
    out = Path(out)
    manifest = out / "items.csv"
    if manifest.exists():
        raise FileExistsError(f"export-avdigits: {manifest} exists; choose a new folder")
    rng = np.random.default_rng(seed)
    rows = []
    for split in SPLITS:
        data = AVDigits(root=root, split=split, difficulty=difficulty, normalize=False)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.rint(data.images * 255), 0, 255).astype(np.uint8)
        for i, row in enumerate(data.rows):
            sample_id = Path(row["audio_path"]).stem
            image, audio = f"images/{split}/{sample_id}.png", f"audio/{split}/{sample_id}.wav"
            write_png(torch.from_numpy(pixels[i]), str(out / image))
            soundfile.write(str(out / audio), data.audio[i, : data.lengths[i]], SAMPLE_RATE, subtype="FLOAT")
            digit = int(data.labels[i])
            said = digit if rng.random() >= text_noise else int(rng.choice([d for d in range(10) if d != digit]))
            caption = PHRASES[rng.integers(len(PHRASES))].format(DIGIT_WORDS[said])
            cells = {"image": image, "audio": audio, "caption": caption}
            if rng.random() < blank:
                cells[("image", "audio", "caption")[rng.integers(3)]] = ""
            rows.append({"id": sample_id, **cells, "label": digit, "split": split, "speaker": row["speaker"]})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(manifest, text.getvalue())
    return manifest
