"""torch.hub entry points: ``torch.hub.load(repo_dir, "avdigits_concat_hard", source="local", pretrained=True)``.

One function per shipped pretrained model (``fusionzoo list models``); the weights come from the
package (``fusionzoo/zoo/``), so nothing is downloaded.
"""

dependencies = ["torch", "torchvision", "torchaudio", "einops", "yaml", "safetensors", "soundfile"]

import fusionzoo as _fz  # noqa: E402

for _name in _fz.MODELS.list(tag="pretrained"):
    globals()[_name] = _fz.MODELS.get(_name).fn

del _name
